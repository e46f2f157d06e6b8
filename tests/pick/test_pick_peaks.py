"""Peak finding: threshold, suppression distance, allowed area, cap, sub-pixel positions; automatic threshold."""

import numpy as np
import pytest

from cryopipe.pick.peaks import candidate_heights, fdr_threshold, find_peaks, null_exceedance


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


def test_null_tail_follows_maxima_and_errs_high(rng):
    """Null peaks = maxima of 200 Gaussians (3000 of them): the expected count above the true 99th percentile is
    within 30% of the truth (30), above the 99.99th it errs high but within 5x (truth 0.3)."""
    null = rng.standard_normal((3000, 200)).max(axis=1)
    big = rng.standard_normal((200_000, 200)).max(axis=1)
    assert null_exceedance(null, np.percentile(big, 99.0)) == pytest.approx(30, rel=0.3)
    far = null_exceedance(null, np.percentile(big, 99.99))
    assert 0.3 <= far <= 1.5
    assert null_exceedance(null, null.min()) == len(null)


def test_fdr_threshold_separates_particles_from_background(rng):
    """400 background peaks (as the null's) plus 100 particle peaks above most of them, 20 trials: the stated FDR
    is <= the asked one, the realised FDR is <= 0.05 on average and nearly all particles are kept."""
    def background(n):
        return rng.standard_normal((n, 100)).max(axis=1) * 0.05 + 0.2

    realised, recall = [], []
    for _ in range(20):
        particles = rng.normal(0.5, 0.05, 100)
        real = np.concatenate([background(400), particles])
        t = fdr_threshold(real, background(2000), 0.05)
        assert t.status == "fdr" and t.fdr <= 0.05
        kept_particles, kept_background = (particles >= t.value).sum(), (real[:400] >= t.value).sum()
        realised.append(kept_background / (kept_particles + kept_background))
        recall.append(kept_particles / 100)
    assert np.mean(realised) <= 0.05
    assert np.mean(recall) >= 0.9


def test_fdr_threshold_holds_when_particles_cover_everything(rng):
    """Particles everywhere (every real candidate a particle, higher than any null peak): all are kept."""
    real = rng.normal(0.6, 0.08, 300)
    null = rng.standard_normal((300, 100)).max(axis=1) * 0.05 + 0.2
    t = fdr_threshold(real, null, 0.05)
    assert t.status == "fdr" and (real >= t.value).sum() >= 295


def test_fdr_threshold_picks_nothing_on_background_alone(rng):
    """An empty micrograph: real and null candidates come from the same law; nothing passes, and it says so."""
    def background(n):
        return rng.standard_normal((n, 100)).max(axis=1)

    statuses = [fdr_threshold(background(500), background(500), 0.05) for _ in range(20)]
    assert sum(t.status == "fdr" for t in statuses) <= 1
    assert {t.status for t in statuses} <= {"fdr", "no peak above the background"}
    assert fdr_threshold(np.array([]), background(10), 0.05).status == "no candidates"


def test_candidate_heights_are_the_local_maxima(rng):
    score = np.zeros((60, 60), np.float32)
    score[10, 10], score[40, 40], score[41, 41] = 0.9, 0.8, 0.7  # the last is within the 10 px square of the second
    valid = np.ones_like(score, bool)
    h = candidate_heights(score, valid, (10.0, 10.0))
    assert sorted(h[h > 0]) == pytest.approx([0.8, 0.9])
    valid[:20, :20] = False
    h = candidate_heights(score, valid, (10.0, 10.0))
    assert sorted(h[h > 0]) == pytest.approx([0.8])
