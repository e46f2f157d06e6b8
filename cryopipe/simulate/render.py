"""Exact images of Gaussian atoms: pixel-integrated projections and voxel-integrated maps.

Each atom is an isotropic 3D Gaussian of ``sigma`` Angstrom holding ``weight``
electrons. Its line integral along z is a 2D Gaussian with the same sigma, and
the integral of a Gaussian over a pixel is a difference of error functions, so
both the map (mass per voxel) and the projection (mass per pixel column) are
exact and separable: a projection is one matrix product ``Gy.T @ (w * Gx)``.

Geometry follows the project convention (cryopipe.geometry): for rotation A the
atom at r (Angstrom, x y z) projects to (A @ r)[:2]; images are img[y, x] and
volumes vol[z, y, x] with the origin at index N//2.
"""

from __future__ import annotations

import numpy as np
from scipy.special import erf


def _pixel_profiles(centres_px: np.ndarray, sigma_px: np.ndarray, n: int) -> np.ndarray:
    """(atoms, n) fraction of each 1D Gaussian (centre in pixels from index 0) falling in each pixel."""
    edges = np.arange(n + 1, dtype=np.float64) - 0.5
    z = (edges[None, :] - centres_px[:, None]) / (np.sqrt(2.0) * sigma_px[:, None])
    return 0.5 * np.diff(erf(z), axis=1)


def project_atoms(
    xyz: np.ndarray,
    weights: np.ndarray,
    sigma: float | np.ndarray,
    rotation: np.ndarray,
    box: int,
    angpix: float,
    offset_px: tuple[float, float] = (0.0, 0.0),
) -> np.ndarray:
    """Projection image (box, box) float64 of atoms rotated by ``rotation``.

    Parameters
    ----------
    xyz : (n, 3) atom positions in Angstrom relative to the rotation centre.
    weights : (n,) electrons per atom; the image sums to their total when the atoms fit in the box.
    sigma : Gaussian width in Angstrom (scalar or (n,)).
    rotation : (3, 3) RELION rotation matrix A.
    offset_px : (dx, dy) sub-pixel position of the rotation centre relative to index box//2.
    """
    r = xyz @ np.asarray(rotation, dtype=np.float64).T
    s = np.broadcast_to(np.asarray(sigma, dtype=np.float64) / angpix, (len(xyz),))
    gx = _pixel_profiles(r[:, 0] / angpix + box // 2 + offset_px[0], s, box)
    gy = _pixel_profiles(r[:, 1] / angpix + box // 2 + offset_px[1], s, box)
    return gy.T @ (np.asarray(weights, dtype=np.float64)[:, None] * gx)


def render_volume(xyz: np.ndarray, weights: np.ndarray, sigma, box: int, angpix: float, dtype=np.float32) -> np.ndarray:
    """Map (box, box, box) of ``dtype``, vol[z, y, x] = electrons in each voxel, origin at box//2."""
    s = np.broadcast_to(np.asarray(sigma, dtype=np.float64) / angpix, (len(xyz),))
    g = [_pixel_profiles(xyz[:, k] / angpix + box // 2, s, box) for k in range(3)]
    w = np.asarray(weights, dtype=np.float64)[:, None]
    yx = (g[1][:, :, None] * g[0][:, None, :]).reshape(len(xyz), box * box)
    return ((w * g[2]).T @ yx).reshape(box, box, box).astype(dtype, copy=False)
