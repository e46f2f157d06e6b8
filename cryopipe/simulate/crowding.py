"""Crowded particle placement: random sequential addition (RSA) of touching-allowed discs up to a stated coverage.

RSA places discs one at a time at uniformly random free positions, never moving them; it jams at ~0.547 of the
plane, so coverages up to ~0.5 are reached. Sampling is done on a raster of the positions still free (pixels whose
centre is at least a diameter from every placed centre and where a centre is allowed), many candidates per round,
each checked exactly against the placed centres before it is taken: the cost is about one pass over the raster per
round plus a disc stamp per particle, not a quadratic number of tries.

Coverage is measured over the *accessible* area: the pixels that some particle's disc could cover (within a radius
of a pixel where a centre is allowed), i.e. the micrograph less its edge margins and less the excluded regions
(carbon, contaminants, aggregates) with their rims.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import distance_transform_edt

RSA_BATCH = 256  # candidates drawn per pass over the raster


def allowed_centres(shape: tuple[int, int], margin: int, excluded: np.ndarray | None, radius: float) -> np.ndarray:
    """(H, W) bool: pixels where a particle's centre may lie.

    At least ``margin`` px from the edges (x, y in [margin, W-1-margin] x [margin, H-1-margin]) and, where
    ``excluded`` (H, W) bool is given, more than ``radius`` px from every excluded pixel.
    """
    h, w = shape
    allowed = np.zeros(shape, bool)
    allowed[margin : h - margin, margin : w - margin] = True
    if excluded is not None and excluded.any():
        allowed &= distance_transform_edt(~excluded) > radius
    return allowed


def accessible_area(allowed: np.ndarray, radius: float) -> np.ndarray:
    """(H, W) bool: pixels within ``radius`` px of an allowed centre pixel (what particles' discs can cover)."""
    if not allowed.any():
        return np.zeros_like(allowed)
    return distance_transform_edt(~allowed) <= radius


def disc_mask(shape: tuple[int, int], xy: np.ndarray, radius: float) -> np.ndarray:
    """(H, W) bool: the union of discs of ``radius`` px about the (n, 2) centres ``xy`` = (x, y) px."""
    mask = np.zeros(shape, bool)
    r = int(np.ceil(radius))
    for x, y in np.asarray(xy, dtype=np.float64).reshape(-1, 2):
        x0, y0 = max(0, int(np.floor(x)) - r), max(0, int(np.floor(y)) - r)
        x1, y1 = min(shape[1], int(np.floor(x)) + r + 2), min(shape[0], int(np.floor(y)) + r + 2)
        if x0 >= x1 or y0 >= y1:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1]
        mask[y0:y1, x0:x1] |= (xx - x) ** 2 + (yy - y) ** 2 <= radius**2
    return mask


def covered_fraction(xy: np.ndarray, radius: float, accessible: np.ndarray) -> float:
    """Fraction of the ``accessible`` (H, W) pixels inside the discs of ``radius`` px about ``xy`` (n, 2) px."""
    total = int(accessible.sum())
    if total == 0:
        return 0.0
    return float((disc_mask(accessible.shape, xy, radius) & accessible).sum() / total)


def rsa_positions(rng: np.random.Generator, coverage: float, allowed: np.ndarray, radius: float) -> np.ndarray:
    """Random sequential addition: (n, 2) centres (x, y) px, at least 2 ``radius`` apart, in ``allowed`` (H, W).

    Stops when the discs (radius px) cover ``coverage`` of :func:`accessible_area` (n = ceil(coverage *
    accessible / (pi radius^2))) or when no free position is left (jammed: fewer particles). A candidate is a
    uniformly drawn free pixel plus a uniform sub-pixel offset; one that fails the exact distance check blocks its
    pixel, so every candidate takes or removes a pixel and the loop ends.
    """
    h, w = allowed.shape
    d = 2.0 * radius
    target = int(np.ceil(coverage * accessible_area(allowed, radius).sum() / (np.pi * radius**2)))
    pts = np.empty((target, 2))
    n = 0
    blocked = ~allowed
    r = int(np.ceil(d))
    while n < target:
        free = np.flatnonzero(~blocked)
        if free.size == 0:
            break
        picks = free[rng.integers(0, free.size, size=RSA_BATCH)]
        offsets = rng.uniform(-0.5, 0.5, size=(RSA_BATCH, 2))
        for idx, (dx, dy) in zip(picks, offsets, strict=True):
            iy, ix = divmod(int(idx), w)
            if blocked[iy, ix]:
                continue
            p = np.array([ix + dx, iy + dy])
            if n and np.min(((pts[:n] - p) ** 2).sum(1)) < d * d:
                blocked[iy, ix] = True
                continue
            pts[n] = p
            n += 1
            y0, y1, x0, x1 = max(0, iy - r), min(h, iy + r + 1), max(0, ix - r), min(w, ix + r + 1)
            yy, xx = np.mgrid[y0:y1, x0:x1]
            blocked[y0:y1, x0:x1] |= (xx - p[0]) ** 2 + (yy - p[1]) ** 2 < d * d
            if n == target:
                break
    return pts[:n]
