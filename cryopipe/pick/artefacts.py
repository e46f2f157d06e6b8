"""Artefact regions of a micrograph: where its local mean or texture stands out from the ice that holds the picks.

Carbon film, ice contaminants and aggregates differ from the ice around the particles by their mean (thicker or
denser: darker; ethane or holes: brighter) and their texture (s.d.), over areas larger than one particle. The
correlator gives the micrograph's mean and s.d. in a Gaussian window of about the particle's size at every
position (:class:`cryopipe.pick.ncc.Correlation`); a single particle is diluted in it, a region of carbon is
not. Each map is taken relative to the micrograph's own trend (the plane most of it follows, so that an ice
gradient is not an artefact) in units of its own fluctuation (:func:`robust_residual`).

The reference is what the picks themselves see: positions whose value differs from the picks' median by more
than ``k`` times the larger of 1 and the picks' own spread, darker or brighter for the mean, above for the s.d.,
form the artefact regions (grown by a particle radius: a particle at a contaminant's edge is not measurable
either). So strong particles that all darken their surroundings alike are not artefacts, and a carbon region
that holds a minority of the picks is. Without picks to compare with, the background's median is the reference.
A region ``BACKGROUND_FACTOR`` times further from the ice itself is an artefact even when the first picks
gathered there (blobs match contaminants better than particles).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

OUTLIER_REASONS = {1: "dark", 2: "bright", 3: "texture"}  # codes of :func:`artefact_map`, as written to the STARs
BACKGROUND_FACTOR = 2.0  # this many times k from the ice itself, a region is an artefact whatever the picks say


def robust_residual(values: np.ndarray, valid: np.ndarray, lag: int) -> np.ndarray:
    """``values`` (H, W) minus the plane that most valid positions follow, in units of the map's own fluctuation.

    The unit is 1.4826 x MAD of the differences between positions ``lag`` pixels apart, over sqrt(2): steps and
    gradients barely touch it (they change few of the differences, or all alike). The plane is the consensus of
    100 planes through random triples of valid positions (RANSAC: the one with the most positions within 3
    units), refitted by least squares to its inliers, so that up to about half the micrograph may be carbon
    without tilting it. Deterministic (a fixed seed).
    """
    H, W = values.shape
    v = values.astype(np.float64)
    diffs = np.concatenate([(v[lag:, :] - v[:-lag, :])[valid[lag:, :] & valid[:-lag, :]],
                            (v[:, lag:] - v[:, :-lag])[valid[:, lag:] & valid[:, :-lag]]])
    diffs = diffs[:: max(1, len(diffs) // 40_000)]  # a regular subsample is plenty for a median
    unit = (1.4826 * np.median(np.abs(diffs - np.median(diffs))) / np.sqrt(2.0)) if len(diffs) else 0.0
    unit = unit or float(np.std(v[valid])) or 1.0
    iy, ix = np.nonzero(valid)
    sel = np.arange(len(iy))[:: max(1, len(iy) // 2000)]
    basis = np.stack([np.ones(len(sel)), ix[sel] / W, iy[sel] / H], axis=1)
    target = v[iy[sel], ix[sel]]
    rng = np.random.default_rng(0)
    triples = rng.integers(0, len(sel), (100, 3))  # repeated positions give singular systems, dropped
    systems = basis[triples]  # (100, 3, 3)
    ok = np.abs(np.linalg.det(systems)) > 1e-12
    best = np.array([np.median(target), 0.0, 0.0])
    if ok.any():
        planes = np.linalg.solve(systems[ok], target[triples[ok]][..., None])[..., 0]  # (n, 3)
        counts = (np.abs(target[None, :] - planes @ basis.T) < 3.0 * unit).sum(axis=1)
        best = planes[int(np.argmax(counts))]
    inliers = np.abs(target - basis @ best) < 3.0 * unit
    if inliers.sum() >= 3:
        best = np.linalg.lstsq(basis[inliers], target[inliers], rcond=None)[0]
    plane = best[0] + best[1] * (np.arange(W) / W)[None, :] + best[2] * (np.arange(H) / H)[:, None]
    return (v - plane) / unit


def artefact_map(mean: np.ndarray, sd: np.ndarray, valid: np.ndarray, iy: np.ndarray, ix: np.ndarray, k: float,
                 grow_px: float = 0.0) -> np.ndarray:
    """Artefact code at every position (H, W) uint8: 0 none, 1 dark, 2 bright, 3 texture (OUTLIER_REASONS).

    mean, sd : (H, W) the micrograph's mean and s.d. in the context window. valid : (H, W) bool, where picks may
    lie. iy, ix : (P,) the preliminary picks' positions (the reference; with fewer than 3, the background's).
    k : threshold. grow_px : grow each region by this radius (map pixels); the grown ring takes the nearest code.
    """
    code = np.zeros(mean.shape, np.uint8)
    lag = max(1, int(round(2.0 * grow_px)))
    z_mean, z_sd = robust_residual(mean, valid, lag), robust_residual(sd, valid, lag)

    def reference(z: np.ndarray) -> tuple[float, float]:
        if len(iy) < 3:
            return 0.0, 1.0
        values = z[iy, ix]
        med = float(np.median(values))
        return med, max(1.0, 1.4826 * float(np.median(np.abs(values - med))))

    (m0, ms), (s0, ss) = reference(z_mean), reference(z_sd)
    far = BACKGROUND_FACTOR * k  # so far from the ice that even picks made mostly there cannot vouch for it
    code[(z_sd - s0 > k * ss) | (z_sd > far)] = 3
    code[(z_mean - m0 > k * ms) | (z_mean > far)] = 2
    code[(z_mean - m0 < -k * ms) | (z_mean < -far)] = 1
    code[~valid] = 0
    if grow_px > 0 and code.any():
        dist, (ny, nx) = ndimage.distance_transform_edt(code == 0, return_indices=True)
        code = np.where(dist <= grow_px, code[ny, nx], 0).astype(np.uint8)
    return code
