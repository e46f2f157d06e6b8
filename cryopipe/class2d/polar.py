"""Bilinear resampling of image batches: polar grids (for rotational alignment) and rigid 2D transforms.

Conventions (as :mod:`cryopipe.fourier`): images are ``img[..., y, x]`` with the origin at index ``N // 2``;
a "point" ``p = (x, y)`` is in pixels from that origin. Polar samples lie on rings of radius
``r = 1 .. n_rings`` px at angles ``theta_j = 2 pi j / P`` (``j = 0 .. P-1``), measured from the +x axis
(columns) towards +y (rows), i.e. at ``p = (r cos theta, r sin theta)``.

Bilinear interpolation is exact for images linear within each pixel cell; samples falling outside the box
read zeros. Everything runs on the device that holds the images (NumPy or CuPy arrays alike).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cryopipe.backend import Backend
from cryopipe.errors import InputError
from cryopipe.fourier import backend_of, next_fast_size


@dataclass(frozen=True)
class PolarGrid:
    """Rings at radii 1..``n_rings`` px and ``n_angles`` (even) angles per ring."""

    n_rings: int
    n_angles: int

    @classmethod
    def make(cls, radius_px: float, angular_sampling_deg: float | None = None) -> PolarGrid:
        """Rings out to ``radius_px``; angular step ``angular_sampling_deg`` (rounded so that P is even), or
        by default the smallest even FFT-friendly P that keeps the arc step on the outer ring <= 1 px."""
        n_rings = int(np.floor(radius_px))
        if n_rings < 2:
            raise InputError(f"alignment radius {radius_px:.1f} px is too small (need >= 2 px)", field="radius")
        if angular_sampling_deg is None:
            half = int(np.ceil(np.pi * radius_px))
        else:
            if not 0 < angular_sampling_deg <= 90:
                raise InputError(f"must lie in (0, 90] degrees, got {angular_sampling_deg}",
                                 field="--angular-sampling")
            half = int(np.ceil(180.0 / angular_sampling_deg))
        return cls(n_rings, 2 * next_fast_size(max(half, 2)))

    @property
    def radii(self) -> np.ndarray:
        """(R,) ring radii in px, float64."""
        return np.arange(1, self.n_rings + 1, dtype=np.float64)

    @property
    def step_deg(self) -> float:
        return 360.0 / self.n_angles

    def points(self) -> tuple[np.ndarray, np.ndarray]:
        """(x, y) of all samples, each (R, P) float64 px from the origin."""
        theta = 2.0 * np.pi * np.arange(self.n_angles) / self.n_angles
        r = self.radii[:, None]
        return r * np.cos(theta), r * np.sin(theta)


def _corners(y, x, n: int, xp):
    """Flat indices (4, ...) into an n x n image and bilinear weights (4, ...) of points (y, x) in index units.

    Corners outside the image get weight 0 (and index 0), so those samples read zeros.
    """
    y0, x0 = xp.floor(y), xp.floor(x)
    fy, fx = y - y0, x - x0
    y0, x0 = y0.astype(xp.int64), x0.astype(xp.int64)
    index, weight = [], []
    for dy, wy in ((0, 1 - fy), (1, fy)):
        for dx, wx in ((0, 1 - fx), (1, fx)):
            yy, xx = y0 + dy, x0 + dx
            inside = (yy >= 0) & (yy < n) & (xx >= 0) & (xx < n)
            index.append(xp.where(inside, yy * n + xx, 0))
            weight.append(xp.where(inside, wy * wx, 0).astype(y.dtype))
    return xp.stack(index), xp.stack(weight)


class PolarSampler:
    """Polar samples of image batches, for a fixed set of trial shifts.

    For shift ``s = (sx, sy)`` px the sample at ring r, angle theta reads the image at point
    ``s + r (cos theta, sin theta)``: the polar grid of the image translated by ``-s`` (a particle displaced
    by ``+s`` from the centre looks centred). The interpolation tables are built once.

    grid : the polar grid. shifts_px : (S, 2) trial shifts (sx, sy) in px. box : image size N.
    """

    def __init__(self, grid: PolarGrid, shifts_px: np.ndarray, box: int, bk: Backend):
        self.grid, self.box, self.bk = grid, box, bk
        self.shifts = np.asarray(shifts_px, dtype=np.float64).reshape(-1, 2)
        px, py = grid.points()
        c = box // 2
        x = c + px.T[:, :, None] + self.shifts[None, None, :, 0]  # (P, R, S) column coordinates
        y = c + py.T[:, :, None] + self.shifts[None, None, :, 1]
        index, weight = _corners(y.ravel(), x.ravel(), box, np)
        self._index = bk.asarray(index)
        self._weight = bk.asarray(weight[:, :, None], dtype=np.float32)

    def __call__(self, images):
        """images (B, N, N) -> samples (P, R, S, B) float32 (the particle index fastest)."""
        xp = self.bk.xp
        b = images.shape[0]
        columns = xp.ascontiguousarray(images.reshape(b, -1).astype(xp.float32, copy=False).T)  # (N*N, B)
        out = xp.take(columns, self._index[0], axis=0)
        out *= self._weight[0]
        for idx, w in zip(self._index[1:], self._weight[1:], strict=True):
            term = xp.take(columns, idx, axis=0)
            term *= w
            out += term
        return out.reshape(self.grid.n_angles, self.grid.n_rings, len(self.shifts), b)


def transform_images(images, psi_deg, shift_px, mirror):
    """Bring particles into their reference's frame with one interpolation: ``out(p) = img(A(psi) F p + s)``.

    With ``A(psi) = [[cos psi, sin psi], [-sin psi, cos psi]]`` (RELION's in-plane matrix), ``F = diag(-1, 1)``
    where ``mirror`` else the identity, and ``s`` the shift. This inverts the model
    ``particle = shift(rotate(F ref, psi), s)`` used by :mod:`cryopipe.class2d.align`.

    images : (B, N, N) real. psi_deg : (B,) degrees. shift_px : (B, 2) as (sx, sy) px. mirror : (B,) bool.
    All on the images' device (host arrays are moved). Returns (B, N, N), the images' dtype.
    """
    bk = backend_of(images)
    xp = bk.xp
    b, n = images.shape[0], images.shape[-1]
    real = images.dtype
    psi = xp.deg2rad(bk.asarray(psi_deg, dtype=xp.float64)).astype(real)[:, None, None]
    s = bk.asarray(shift_px, dtype=real).reshape(b, 2)
    f = xp.where(bk.asarray(mirror, dtype=bool), -1.0, 1.0).astype(real)[:, None, None]
    grid = xp.arange(n, dtype=real) - n // 2
    px, py = f * grid[None, None, :], grid[None, :, None]
    cos, sin = xp.cos(psi), xp.sin(psi)
    x = n // 2 + cos * px + sin * py + s[:, 0, None, None]
    y = n // 2 - sin * px + cos * py + s[:, 1, None, None]
    index, weight = _corners(y, x, n, xp)
    flat = images.reshape(-1)
    offset = (xp.arange(b, dtype=xp.int64) * (n * n))[:, None, None]
    return sum(w * xp.take(flat, idx + offset) for idx, w in zip(index, weight, strict=True)).astype(real)
