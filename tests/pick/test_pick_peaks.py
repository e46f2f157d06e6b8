"""Peak finding: threshold, suppression distance, allowed area, cap, sub-pixel positions; automatic threshold."""

import numpy as np
import pytest

from cryopipe.pick.peaks import auto_threshold, find_peaks


def _bumps(shape, peaks, sigma=2.0):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return sum(a * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * sigma**2)) for y, x, a in peaks).astype(np.float32)


def test_peaks_subpixel_threshold_distance_area_and_cap():
    peaks = [(20.3, 30.6, 1.0), (60.0, 70.0, 0.8), (64.0, 74.0, 0.9), (90.0, 15.0, 0.3), (3.0, 50.0, 1.0)]
    score = _bumps((100, 120), peaks)
    valid = np.ones_like(score, bool)
    valid[:8] = False  # the peak at row 3 lies in the forbidden border
    y, x, v, iy, ix = find_peaks(score, valid, 0.5, (10.0, 10.0))
    assert (iy.tolist(), ix.tolist()) == ([20, 64], [31, 74])
    assert len(y) == 2  # (60, 70) is suppressed by the higher (64, 74); (90, 15) is below threshold
    np.testing.assert_allclose([y[0], x[0]], [20.3, 30.6], atol=0.15)
    np.testing.assert_allclose([y[1], x[1]], [64.0, 74.0], atol=0.15)
    assert v[0] > v[1]
    assert len(find_peaks(score, valid, 0.5, (4.0, 4.0))[0]) == 3  # closer allowed: both survive
    assert len(find_peaks(score, valid, 0.5, (4.0, 4.0), max_peaks=1)[0]) == 1


def test_plateau_gives_one_peak():
    score = np.zeros((40, 40), np.float32)
    score[10:13, 10:13] = 1.0
    y = find_peaks(score, np.ones_like(score, bool), 0.5, (5.0, 5.0))[0]
    assert len(y) == 1


def test_auto_threshold_is_median_plus_k_robust_sd(rng):
    score = rng.normal(0.2, 0.05, (300, 300)).astype(np.float32)
    score[:30, :30] = 0.9  # a minority of particle positions barely moves it
    valid = np.ones_like(score, bool)
    assert auto_threshold(score, valid, 4.0) == pytest.approx(0.2 + 4 * 0.05, abs=0.01)
    assert auto_threshold(score, np.zeros_like(valid), 4.0) == np.inf
