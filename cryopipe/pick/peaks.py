"""Peaks of an NCC map: the automatic threshold, local maxima, non-maximum suppression, sub-pixel refinement.

The automatic threshold comes from a null search. The micrograph is also searched with the contrast-inverted
templates (``max_k -NCC_k``, from the same correlations): they see the micrograph's noise, ice, texture and
filtering exactly as the real templates do (noise is symmetric in sign, however coloured or quantised), but
cannot match a particle of the right contrast. The candidate peaks of both maps (local maxima at least the
minimum distance apart) give, for any threshold ``t``, the number of picks ``N(t)`` and an estimate of how many
of them are background, ``N0(t)`` (:func:`background_count`: the null's count above ``t``, extended beyond its
highest peaks by an exponential tail, and scaled down where particles crowd the micrograph). The default
threshold is where the estimated F1 is best (:func:`f1_threshold`); with a false-discovery rate asked for, the
lowest candidate height where ``N0(t) / N(t) <= fdr`` (:func:`fdr_threshold`, Benjamini-Hochberg's step-up rule
over the candidates). Unlike a threshold from the map's pixel statistics neither assumes that particles are
rare: they hold from an empty micrograph (no picks: every real peak looks like a null one) to one covered by
particles.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree


@dataclass(frozen=True)
class Threshold:
    """The NCC threshold chosen for one micrograph.

    value : minimum NCC of a pick (inf: nothing passes). fdr : estimated false-discovery rate of the picks
    above it (NaN for a fixed threshold). status : "f1" (the estimated F1's best), "fdr" (the FDR's), "fixed"
    (given by the user),
    "no peak above the background" (nothing reaches the FDR: empty micrograph or particles too faint), or
    "no candidates". background : null candidates (0 for a fixed threshold). candidates : real candidates.
    """

    value: float
    fdr: float
    status: str
    candidates: int = 0
    background: int = 0


def local_maxima(score: np.ndarray, valid: np.ndarray, min_distance: tuple[float, float]) -> np.ndarray:
    """(H, W) bool: the candidate peaks of ``score`` (H, W) at ``valid`` positions, maxima of the square inscribed
    in the exclusion ellipse of ``min_distance`` (dy, dx) map pixels (a fast separable filter that keeps every
    maximum of the ellipse; :func:`find_peaks` then suppresses exactly)."""
    masked = np.where(valid, score, -np.inf).astype(np.float32)
    local_max = ndimage.maximum_filter(masked, size=_inscribed_square(min_distance), mode="constant", cval=-np.inf)
    return (masked == local_max) & valid & np.isfinite(masked)


def null_exceedance(null: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Expected number of null candidates at or above each ``t``, from the null's heights ``null`` (P,).

    Within the null's top decile (at least 10 peaks) the count is the empirical one; beyond, an exponential tail
    fitted to that decile (peaks over a threshold: ``m exp(-(t - u) / sigma)``, sigma the mean excess over u).
    Peak heights are maxima of many correlations, whose tail falls a little faster than exponential, so the
    extrapolation errs high (measured 1.5-3x at a tenth of one expected peak): the FDR stays an upper bound.
    """
    t = np.asarray(t, dtype=np.float64)
    s = np.sort(np.asarray(null, dtype=np.float64))
    if len(s) == 0:
        return np.zeros_like(t)
    m = min(len(s), max(10, len(s) // 10))
    u = s[-m]
    sigma = max(float(np.mean(s[-m:] - u)), 1e-12)
    empirical = len(s) - np.searchsorted(s, t, side="left")
    return np.where(t > u, m * np.exp(-(t - u) / sigma), empirical)


def background_count(real: np.ndarray, null: np.ndarray) -> np.ndarray:
    """Estimated number of background peaks among the real candidates at or above each height in ``real`` (P,).

    The null's count above the height (:func:`null_exceedance`) times the ratio of background candidates in the
    real map to candidates in the null. Particles sit high, so the candidates below the null's upper quartile are
    background in both maps, and the ratio ``r`` of their counts estimates it (Storey's estimate): where
    particles crowd the micrograph the real map has fewer background peaks than the null (they cannot sit on
    particles). ``r`` is noisy for the few candidates of a small micrograph, so it is used conservatively:
    ``min(P / P0, 2 r)`` with ``P / P0`` the ratio of all candidates (every real candidate background), so it
    corrects only micrographs where particles hold more than about half the candidates.
    """
    real, null = np.asarray(real, dtype=np.float64), np.asarray(null, dtype=np.float64)
    low = np.percentile(null, 75)
    ratio = np.count_nonzero(real < low) / max(1, np.count_nonzero(null < low))
    return min(len(real) / len(null), 2.0 * ratio) * null_exceedance(null, real)


def fdr_threshold(real: np.ndarray, null: np.ndarray, fdr: float) -> Threshold:
    """The lowest real candidate height ``t`` with ``N0(t) / N(t) <= fdr`` (step-up rule).

    real, null : candidate peak heights (P,), (P0,) of the real and the null map over the same positions.
    ``N(t)`` counts real candidates >= t; ``N0(t)`` is :func:`background_count`.
    """
    real = np.sort(np.asarray(real, dtype=np.float64))[::-1]
    null = np.asarray(null, dtype=np.float64)
    if len(real) == 0:
        return Threshold(float("inf"), float("nan"), "no candidates")
    if len(null) == 0:
        return Threshold(float("inf"), float("nan"), "no candidates", len(real))
    expected = background_count(real, null)
    rate = expected / np.arange(1, len(real) + 1)
    passing = np.flatnonzero(rate <= fdr)
    if len(passing) == 0:
        return Threshold(float("inf"), float(rate.min()), "no peak above the background", len(real), len(null))
    k = int(passing[-1])
    return Threshold(float(real[k]), float(rate[k]), "fdr", len(real), len(null))


def f1_threshold(real: np.ndarray, null: np.ndarray, min_excess: float = 5.0) -> Threshold:
    """The candidate height that maximises the estimated F1 of the picks above it.

    real, null : candidate peak heights (P,), (P0,) of the real and the null map over the same positions. Above a
    height ``t`` there are ``N(t)`` picks, of which ``N0(t)`` are estimated background (:func:`background_count`)
    and ``TP(t) = N(t) - N0(t)`` particles; the particles among
    all candidates number about ``P = TP(t50)`` at the null's median height ``t50`` (hardly a particle scores
    lower; a fixed point, where the maximum of TP would be biased up by its noise); so
    ``F1(t) = 2 TP(t) / (N(t) + P)``. Where the particles
    stand clear of the background this keeps nearly all of them at a small FDR; where they overlap it (low
    SNR) it trades precision for recall as the best fixed threshold would. The excess must be significant,
    ``TP >= max(1, min_excess * sqrt(N0))``, else nothing is picked ("no peak above the background").
    """
    real = np.sort(np.asarray(real, dtype=np.float64))[::-1]
    null = np.asarray(null, dtype=np.float64)
    if len(real) == 0 or len(null) == 0:
        return Threshold(float("inf"), float("nan"), "no candidates", len(real), len(null))
    n = np.arange(1, len(real) + 1)
    background = background_count(real, null)
    tp = np.maximum(n - background, 0.0)
    particles = max(float(np.interp(-np.median(null), -real, tp)), 1.0)  # TP at the null's median height
    f1 = 2.0 * tp / (n + particles)
    k = int(np.argmax(f1))
    rate = float(background[k] / n[k])
    if tp[k] < max(1.0, min_excess * float(np.sqrt(background[k]))):
        return Threshold(float("inf"), rate, "no peak above the background", len(real), len(null))
    return Threshold(float(real[k]), rate, "f1", len(real), len(null))


def _inscribed_square(min_distance: tuple[float, float]) -> tuple[int, int]:
    dy, dx = (max(float(d), 1e-9) for d in min_distance)
    return 2 * int(dy / np.sqrt(2)) + 1, 2 * int(dx / np.sqrt(2)) + 1


def _subpixel(score: np.ndarray, iy: np.ndarray, ix: np.ndarray, axis: int) -> np.ndarray:
    """Parabola vertex offset in [-0.5, 0.5] along ``axis`` through each peak and its two neighbours."""
    n = score.shape[axis]
    idx = iy if axis == 0 else ix
    inner = (idx > 0) & (idx < n - 1)
    lo, hi = np.clip(idx - 1, 0, n - 1), np.clip(idx + 1, 0, n - 1)
    a = score[lo, ix] if axis == 0 else score[iy, lo]
    c = score[hi, ix] if axis == 0 else score[iy, hi]
    b = score[iy, ix]
    den = a - 2.0 * b + c
    off = np.where(inner & (den < 0), 0.5 * (a - c) / np.where(den < 0, den, -1.0), 0.0)
    return np.clip(off, -0.5, 0.5)


def find_peaks(
    score: np.ndarray,
    valid: np.ndarray,
    threshold: float,
    min_distance: tuple[float, float],
    max_peaks: int | None = None,
    maxima: np.ndarray | None = None,
) -> tuple[np.ndarray, ...]:
    """Local maxima of ``score`` above ``threshold`` at allowed positions, at least ``min_distance`` apart.

    Parameters
    ----------
    score : (H, W) float map. valid : (H, W) bool, where a pick may lie.
    threshold : minimum score (inclusive).
    min_distance : (dy, dx) minimum distance in map pixels along rows and columns (an ellipse: the distance
        is measured as hypot(Δy/dy, Δx/dx) >= 1), so anisotropic working pixels are handled.
    max_peaks : keep at most this many (the highest).
    maxima : the candidates, :func:`local_maxima` of ``score`` (computed here when None; restricted to ``valid``).

    Returns
    -------
    y, x : (P,) sub-pixel positions in map pixels (row, column), highest score first.
    value : (P,) scores at the integer maxima. iy, ix : (P,) the integer maxima.
    """
    dy, dx = (max(float(d), 1e-9) for d in min_distance)
    # candidates (:func:`local_maxima`), then exact greedy suppression with the ellipse
    maxima = local_maxima(score, valid, min_distance) if maxima is None else maxima & valid
    masked = np.where(maxima, score, -np.inf).astype(np.float32)
    iy, ix = np.nonzero(maxima & (masked >= threshold))
    order = np.argsort(-masked[iy, ix], kind="stable")
    iy, ix = iy[order], ix[order]
    pts = np.column_stack([iy / dy, ix / dx])
    pairs = cKDTree(pts).query_pairs(1.0, output_type="ndarray")
    pairs = pairs[np.hypot(*(pts[pairs[:, 0]] - pts[pairs[:, 1]]).T) < 1.0]
    neighbours: list[list[int]] = [[] for _ in range(len(iy))]
    for a, b in pairs.tolist():
        neighbours[a].append(b)
        neighbours[b].append(a)
    suppressed = np.zeros(len(iy), dtype=bool)
    keep: list[int] = []
    for k in range(len(iy)):  # highest first: keep it, suppress its neighbours
        if suppressed[k]:
            continue
        keep.append(k)
        suppressed[neighbours[k]] = True
        if max_peaks is not None and len(keep) >= max_peaks:
            break
    iy, ix = iy[keep], ix[keep]
    y = iy + _subpixel(score, iy, ix, 0)
    x = ix + _subpixel(score, iy, ix, 1)
    return y, x, score[iy, ix], iy, ix
