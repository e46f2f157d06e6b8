"""Peak finding: threshold, suppression distance, allowed area, cap, sub-pixel positions; automatic threshold."""

import numpy as np
import pytest

from cryopipe.pick.peaks import f1_threshold, fdr_threshold, find_peaks, local_maxima, null_exceedance


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


def background_peaks(rng, n: int, scale: float = 0.05, offset: float = 0.2) -> np.ndarray:
    """(n,) background peak heights: maxima of 100 Gaussians, times ``scale`` plus ``offset``."""
    return rng.standard_normal((n, 100)).max(axis=1) * scale + offset


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
    realised, recall = [], []
    for _ in range(20):
        particles = rng.normal(0.5, 0.05, 100)
        real = np.concatenate([background_peaks(rng, 400), particles])
        t = fdr_threshold(real, background_peaks(rng, 2000), 0.05)
        assert t.status == "fdr" and t.fdr <= 0.05
        kept_particles, kept_background = (particles >= t.value).sum(), (real[:400] >= t.value).sum()
        realised.append(kept_background / (kept_particles + kept_background))
        recall.append(kept_particles / 100)
    assert np.mean(realised) <= 0.05
    assert np.mean(recall) >= 0.9


def test_fdr_threshold_holds_when_particles_cover_everything(rng):
    """Particles everywhere (every real candidate a particle, higher than any null peak): all are kept."""
    real = rng.normal(0.6, 0.08, 300)
    null = background_peaks(rng, 300)
    t = fdr_threshold(real, null, 0.05)
    assert t.status == "fdr" and (real >= t.value).sum() >= 295


def test_fdr_threshold_picks_nothing_on_background_alone(rng):
    """An empty micrograph: real and null candidates come from the same law; nothing passes, and it says so."""
    statuses = [fdr_threshold(background_peaks(rng, 500, 1.0, 0.0), background_peaks(rng, 500, 1.0, 0.0), 0.05)
                for _ in range(20)]
    assert sum(t.status == "fdr" for t in statuses) <= 1
    assert {t.status for t in statuses} <= {"fdr", "no peak above the background"}
    assert fdr_threshold(np.array([]), background_peaks(rng, 10, 1.0, 0.0), 0.05).status == "no candidates"


def test_candidates_are_the_local_maxima(rng):
    score = np.zeros((60, 60), np.float32)
    score[10, 10], score[40, 40], score[41, 41] = 0.9, 0.8, 0.7  # the last is within the 10 px square of the second
    valid = np.ones_like(score, bool)
    h = score[local_maxima(score, valid, (10.0, 10.0))]
    assert sorted(h[h > 0]) == pytest.approx([0.8, 0.9])
    valid[:20, :20] = False
    h = score[local_maxima(score, valid, (10.0, 10.0))]
    assert sorted(h[h > 0]) == pytest.approx([0.8])


def test_f1_threshold_trades_precision_for_recall_where_particles_overlap_the_background(rng):
    """Particles partly inside the background's tail, 20 trials: the F1 rule keeps more particles than the FDR rule
    at 0.05 and its realised F1 is within 0.05 of the best fixed threshold's; on background alone it picks nothing."""
    gaps, recalls = [], []
    for _ in range(20):
        particles = rng.normal(0.4, 0.05, 100)
        real = np.concatenate([background_peaks(rng, 400), particles])
        is_particle = np.r_[np.zeros(400, bool), np.ones(100, bool)]
        null = background_peaks(rng, 500)
        t = f1_threshold(real, null)
        kept = real >= t.value
        f1 = 2 * (kept & is_particle).sum() / (kept.sum() + 100)
        best = max(2 * ((real >= v) & is_particle).sum() / ((real >= v).sum() + 100) for v in real)
        gaps.append(best - f1)
        recalls.append(((kept & is_particle).sum(), (particles >= fdr_threshold(real, null, 0.05).value).sum()))
    assert np.mean(gaps) <= 0.05
    assert np.mean([a for a, _ in recalls]) > np.mean([b for _, b in recalls])
    assert f1_threshold(background_peaks(rng, 500), background_peaks(rng, 500)).status == "no peak above the background"
