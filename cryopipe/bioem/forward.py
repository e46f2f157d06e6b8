"""Forward model: a structural model, rotated and projected, as half spectra of calculated images.

Two kinds of model:

* :class:`PointModel`: points (atoms, or one point per residue) with electrons as weights, each a
  pixel-integrated Gaussian (``shape="gaussian"``, ``size`` = sigma in A, exact projection by
  differences of error functions) or a uniform sphere (``shape="sphere"``, ``size`` = radius in A, as
  BioEM projects it: chord lengths on the pixels around the rounded centre, see :func:`project_spheres`).
* :class:`MapModel`: a 3D map, projected by the Fourier-slice theorem (:class:`cryopipe.projection.Projector`).

Image axes: the rotated coordinate ``axes[k]`` runs along image axis ``k``. cryopipe images are
``img[y, x]`` (``axes=(1, 0)``, rotation by RELION's matrix ``A``: a point ``r`` lands at ``(A r)[:2]``);
BioEM's images are ``I[x][y]`` (``axes=(0, 1)``). The rotation centre is pixel ``N//2`` on both axes.

Device rule: arrays live on ``bk``'s device; rotations are host (B, 3, 3) float64.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import numpy as np
import scipy.special

from cryopipe.errors import InputError
from cryopipe.projection import Projector, scatter_add

log = logging.getLogger(__name__)

_BYTES_PER_PROFILE = 32  # two (B, n, N) profile arrays in float64 plus the product, per element


@functools.cache
def _gpu_erf(xp):
    return xp.ElementwiseKernel("T x", "T y", "y = erf(x)", "cryopipe_bioem_erf")


def _erf(x, bk):
    return _gpu_erf(bk.xp)(x) if bk.is_gpu else scipy.special.erf(x)


@dataclass
class PointModel:
    """Points of a structural model.

    xyz : (n, 3) Angstrom, relative to the rotation centre. weight : (n,) electrons.
    size : (n,) Angstrom, Gaussian sigma or sphere radius. shape : "gaussian" or "sphere".
    """

    xyz: np.ndarray
    weight: np.ndarray
    size: np.ndarray
    shape: str = "gaussian"

    def __post_init__(self):
        self.xyz = np.asarray(self.xyz, dtype=np.float64).reshape(-1, 3)
        n = len(self.xyz)
        self.weight = np.broadcast_to(np.asarray(self.weight, dtype=np.float64), (n,)).copy()
        self.size = np.broadcast_to(np.asarray(self.size, dtype=np.float64), (n,)).copy()
        if n == 0:
            raise InputError("model has no points (atoms)", field="model")
        if self.shape not in ("gaussian", "sphere"):
            raise InputError(f"unknown point shape {self.shape!r}; use gaussian or sphere", field="shape")
        if not (np.isfinite(self.xyz).all() and np.isfinite(self.weight).all() and (self.size >= 0).all()):
            raise InputError("model points need finite coordinates, weights and sizes >= 0", field="model")

    def centred(self) -> PointModel:
        """The model moved to its weight-centred origin (as BioEM does unless NO_CENTEROFMASS)."""
        c = (self.weight[:, None] * self.xyz).sum(0) / self.weight.sum()
        return PointModel(self.xyz - c, self.weight, self.size, self.shape)

    def project(self, rotations, box: int, angpix: float, bk, axes=(1, 0), dtype=np.float64, shift=(0, 0)):
        """Real projection images (B, box, box) on ``bk``'s device for rotations (B, 3, 3).

        ``shift`` (pixels, spheres only) is BioEM's SHIFT_X/SHIFT_Y: subtracted from the centre pixel.
        """
        rot = np.asarray(rotations, dtype=np.float64).reshape(-1, 3, 3)
        u = np.einsum("bij,nj->bni", rot[:, list(axes), :], self.xyz) / angpix  # (B, n, 2) pixels
        if self.shape == "sphere":
            return project_spheres(u, self.weight, self.size, angpix, box, bk, dtype, shift)
        return project_gaussians(u, self.weight, self.size / angpix, box, bk, dtype)


    def render(self, box: int, angpix: float) -> np.ndarray:
        """The model as a map vol[z, y, x] (box^3 float64, origin box//2, host): each Gaussian point integrated
        over the voxels (separable differences of error functions), so the map's projections along an axis are
        :meth:`project`'s images (:func:`cryopipe.simulate.render.render_volume`, the simulator's). For projecting
        many orientations through the Fourier slice (:class:`MapModel`); Gaussian points only."""
        from cryopipe.simulate.render import render_volume

        if self.shape != "gaussian":
            raise InputError("only Gaussian points can be rendered into a map (use --points atom --shape gaussian)",
                             field="--shape")
        return render_volume(self.xyz, self.weight, self.size, box, angpix, dtype=np.float64)


def project_gaussians(u, weight, sigma_px, box: int, bk, dtype=np.float64):
    """Pixel-integrated projections of Gaussian points.

    u : (B, n, 2) host positions in pixels from the centre pixel box//2 along image axes 0 and 1.
    weight : (n,). sigma_px : (n,) > 0. Returns (B, box, box) on ``bk``'s device, each image summing to
    ``weight.sum()`` when the points lie inside.
    """
    xp = bk.xp
    b_total, n = u.shape[:2]
    if np.any(sigma_px <= 0):
        raise InputError("Gaussian points need sigma > 0", field="size")
    out = xp.empty((b_total, box, box), dtype=dtype)
    edges = xp.arange(box + 1, dtype=dtype) - 0.5 - box // 2
    inv = xp.asarray(1.0 / (np.sqrt(2.0) * sigma_px), dtype=dtype)[None, :, None]
    w = xp.asarray(weight, dtype=dtype)[None, :, None]
    step = max(1, min(b_total, bk.batch_size(_BYTES_PER_PROFILE * n * (box + 1), fraction=0.2)))
    for b0 in range(0, b_total, step):
        c = bk.asarray(u[b0:b0 + step], dtype=dtype)
        prof = [0.5 * xp.diff(_erf((edges[None, None, :] - c[:, :, k, None]) * inv, bk), axis=-1) for k in (0, 1)]
        out[b0:b0 + step] = xp.matmul((w * prof[0]).transpose(0, 2, 1), prof[1])
    return out


def project_spheres(u, weight, radius, angpix: float, box: int, bk, dtype=np.float64, shift=(0, 0)):
    """BioEM 2.1's projection of uniform spheres (u, weight as :func:`project_gaussians`; radius (n,) in A).

    The centre pixel is ``floor(u + box/2 + 0.5)``. A sphere of radius a <= angpix adds its weight to that
    pixel; a larger one (``shift`` subtracted from its centre pixel) adds its chord length times density,
    ``p^2 2 sqrt(a^2 - d^2) * 3 w / (4 pi a^3)``, to every pixel whose centre lies at d < a from the centre
    pixel, within ``r = int(a / p) + 1`` pixels, and is dropped unless ``r <= centre < box - r``. Points off
    the image are dropped; each image is then scaled to sum to ``weight.sum()``. Returns (B, box, box) on
    ``bk``'s device.
    """
    xp = bk.xp
    b_total, n = u.shape[:2]
    centre = np.floor(u + box / 2.0 + 0.5).astype(np.int64)  # (B, n, 2)
    flat = xp.zeros(b_total * box * box, dtype=dtype)
    deposited = np.zeros(b_total)
    dropped = 0
    groups = np.where(radius <= angpix, 0, (radius / angpix).astype(np.int64) + 1)  # 0: single pixel
    for r in np.unique(groups):
        pts = np.flatnonzero(groups == r)
        c = centre[:, pts, :]
        if r == 0:
            offsets, vals = np.zeros((1, 2), np.int64), weight[pts][:, None]
            keep = ((c >= 0) & (c < box)).all(-1)
        else:
            c = c - np.asarray(shift, dtype=np.int64)
            o = np.arange(-r, r + 1)
            offsets = np.stack(np.meshgrid(o, o, indexing="ij"), -1).reshape(-1, 2)
            a2 = radius[pts, None] ** 2
            d2 = (offsets ** 2).sum(-1)[None, :] * angpix * angpix
            vals = np.where(d2 < a2, angpix * angpix * 2.0 * np.sqrt(np.maximum(a2 - d2, 0.0)) * weight[pts, None]
                            * 3.0 / (4.0 * np.pi * radius[pts, None] * a2), 0.0)
            keep = ((c >= r) & (c < box - r)).all(-1)
        dropped += int((~keep).sum())
        deposited += (keep[:, :, None] * vals[None]).sum(axis=(1, 2))
        pix = c[:, :, None, :] + offsets[None, None]  # (B, m, S, 2)
        idx = (np.arange(b_total)[:, None, None] * box + pix[..., 0]) * box + pix[..., 1]
        sel = np.broadcast_to(keep[:, :, None], idx.shape) & (np.broadcast_to(vals[None], idx.shape) != 0)
        scatter_add(flat, bk.asarray(idx[sel]), bk.asarray(np.broadcast_to(vals[None], idx.shape)[sel], dtype=dtype),
                    bk.xp)
    if dropped:
        log.warning("%d projected model points fell outside the %d px image and were dropped", dropped, box)
    scale = np.where(deposited > 0, weight.sum() / np.where(deposited > 0, deposited, 1.0), 0.0)
    return flat.reshape(b_total, box, box) * bk.asarray(scale, dtype=dtype)[:, None, None]


@dataclass
class MapModel:
    """A 3D map ``vol[z, y, x]`` (box N, origin N//2) with its pixel size (A), projected in Fourier space."""

    volume: np.ndarray
    angpix: float

    def spectra(self, rotations, bk, axes=(1, 0)):
        """Half spectra (B, N, N//2+1) complex64 of the projections, origin at index 0 (unshifted layout)."""
        if tuple(axes) != (1, 0):
            raise InputError("maps are projected in cryopipe's img[y, x] layout only", field="--compat")
        proj = getattr(self, "_projector", None)
        if proj is None or proj.bk is not bk:
            proj = self._projector = Projector(self.volume, bk)
        return proj.project(rotations)
