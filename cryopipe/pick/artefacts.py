"""Artefact regions of a micrograph: where its local mean or s.d. under the picking mask is an outlier.

Carbon film, ice contaminants and aggregates differ from the ice that holds the particles by their mean (thicker
or denser: darker; ethane or holes: brighter) and their texture (s.d.), on the scale of the particle. The
correlation maps already hold the micrograph's mean and s.d. under the mask at every position
(:class:`cryopipe.pick.ncc.Correlation`). Each is compared with the micrograph's own smooth trend (a robust
quadratic surface, so an ice gradient is not an artefact) in units of the robust s.d. of the residuals
(1.4826 x MAD over the positions where a pick may lie). A pick whose neighbourhood (one mask radius: a particle
beside a contaminant's edge is not measurable either) lies more than ``k`` units from the other picks' values,
on either side for the mean or above for the s.d., is set aside.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

OUTLIER_REASONS = {1: "dark", 2: "bright", 3: "texture"}  # codes of :func:`outliers`, as written to the STARs


def _robust_residual(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """``values`` (H, W) minus a quadratic surface fitted to ``values[valid]`` by iteratively reweighted least
    squares (two rounds of Tukey's biweight), in units of 1.4826 x MAD of the valid residuals."""
    H, W = values.shape
    yy, xx = np.mgrid[:H, :W]
    y, x = (yy / H - 0.5).ravel(), (xx / W - 0.5).ravel()
    basis = np.stack([np.ones_like(x), x, y, x * x, x * y, y * y], axis=1)
    v = values.ravel().astype(np.float64)
    sel = np.flatnonzero(valid.ravel())
    sel = sel[:: max(1, len(sel) // 40_000)]  # a regular subsample is plenty for six coefficients
    weights = np.ones(len(sel))
    for _ in range(3):
        coef = np.linalg.lstsq(basis[sel] * weights[:, None], v[sel] * weights, rcond=None)[0]
        r = v[sel] - basis[sel] @ coef
        scale = 1.4826 * np.median(np.abs(r - np.median(r))) or 1.0
        u = r / (4.685 * scale)
        weights = np.where(np.abs(u) < 1.0, (1.0 - u * u) ** 2, 0.0)
    residual = v - basis @ coef
    r = residual[sel]
    med = np.median(r)
    scale = 1.4826 * np.median(np.abs(r - med)) or 1.0
    return ((residual - med) / scale).reshape(H, W)


def outliers(mean: np.ndarray, sd: np.ndarray, valid: np.ndarray, iy: np.ndarray, ix: np.ndarray, k: float,
             grow_px: float = 0.0) -> np.ndarray:
    """Artefact code of each pick (P,) uint8: 0 none, 1 dark, 2 bright, 3 texture (see OUTLIER_REASONS).

    mean, sd : (H, W) local mean and s.d. of the micrograph under the mask. valid : (H, W) bool, where picks may
    lie (the trend and the background scale come from there). iy, ix : (P,) the picks' map positions.
    k : threshold. grow_px : each pick is judged by the most extreme value within this radius (map pixels), so a
    particle at a contaminant's edge goes with the contaminant.

    The scale is the larger of the background's robust s.d. and the picks' own spread (1.4826 x MAD about their
    median), so strong particles that all darken their neighbourhood alike are not outliers: a pick is one when it
    differs from the other picks, by more than ``k`` background s.d.
    """
    code = np.zeros(len(iy), np.uint8)
    if len(iy) == 0:
        return code
    size = 2 * int(grow_px) + 1
    zm = _robust_residual(mean, valid)
    zs = _robust_residual(sd, valid)
    lowest = ndimage.minimum_filter(zm, size=size)[iy, ix]
    highest = ndimage.maximum_filter(zm, size=size)[iy, ix]
    texture = ndimage.maximum_filter(zs, size=size)[iy, ix]

    def centre_scale(values):
        med = np.median(values)
        return med, max(1.0, 1.4826 * float(np.median(np.abs(values - med))))

    for values, sign, c in ((texture, 1, 3), (highest, 1, 2), (lowest, -1, 1)):
        med, scale = centre_scale(values)
        code[sign * (values - med) > k * scale] = c
    return code
