"""Picking templates: load or project, rescale to the micrograph pixel size, rotate in-plane, mask, normalise.

Pipeline (RELION autopick / gEMpicker):

1. :func:`load_templates` (2D images, e.g. class averages), :func:`project_reference` (projections of a 3D
   map along ``n`` directions spread evenly over the sphere) or :func:`blob_templates` (a disc or a ring of the
   particle diameter, for picking without any reference, as cryoSPARC's blob picker).
2. :func:`rescale_templates` Fourier-crops/pads them to the micrograph pixel size (as RELION does with the
   reference pixel size).
3. :func:`build_bank` low-passes them, then samples every in-plane rotation ``psi`` directly on the shrunk
   working grid of the micrographs (cubic spline: one interpolation for rotation and shrink), applies the
   mask (circular, a little wider than the particle, or the given masks rotated alike) and normalises each
   template-rotation under its mask to zero mean and unit variance (Roseman's ``t'``).

Rotation convention (RELION, :func:`cryopipe.geometry.euler_to_matrix`): the template rotated by ``psi`` is
``T_psi(x) = T(A^T x)`` with ``A = euler_to_matrix(0, 0, psi)[:2, :2]``, so the projection of a map at
``(rot, tilt, 0)`` rotated by ``psi`` is its projection at ``(rot, tilt, psi)``: a pick's ``rlnAnglePsi``
is the particle's in-plane angle.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from cryopipe.errors import InputError, require
from cryopipe.fourier import highpass, lowpass, resize
from cryopipe.geometry import euler_to_matrix
from cryopipe.io.mrc import read_mrc

log = logging.getLogger(__name__)


@dataclass
class TemplateStack:
    """2D templates: ``images`` (T, b, b) float32 at ``angpix`` (A/px), centre b//2; ``masks`` (T, b, b) in
    [0, 1] or None (circular mask of the particle diameter); ``angles`` (T, 3) (rot, tilt, psi) degrees of
    projections, or None."""

    images: np.ndarray
    angpix: float
    masks: np.ndarray | None = None
    angles: np.ndarray | None = None


@dataclass
class TemplateBank:
    """All template-rotations on the working grid, ready to correlate.

    images : (K, n, n) float32, zero outside the mask, mean 0 and variance 1 under the mask (weights m).
    masks : (n, n) shared mask or (K, n, n) per template-rotation, weights in [0, 1].
    template : (K,) int, 0-based template index. psi : (K,) float, in-plane angle in degrees.
    """

    images: np.ndarray
    masks: np.ndarray
    template: np.ndarray
    psi: np.ndarray

    @property
    def shared_mask(self) -> bool:
        return self.masks.ndim == 2

    def __len__(self) -> int:
        return len(self.images)


def _header_angpix(path, angpix: float | None, fallback: float | None, what: str) -> tuple[np.ndarray, float]:
    data, apix = read_mrc(path, angpix=angpix)
    if apix is None:
        require(fallback is not None, f"{what} pixel size unknown: not in the header and not given", path, "angpix")
        log.warning("%s: no pixel size in the header, assuming the micrographs' %.4g A/px", path, fallback)
        apix = fallback
    return data, float(apix)


def load_templates(paths, angpix: float | None = None, masks_path=None, fallback_angpix: float | None = None
                   ) -> TemplateStack:
    """Read 2D templates from one or more MRCS stacks / MRC images (same box and pixel size) and optional masks
    (one per template, or one for all).

    ``angpix`` overrides the headers; without either, ``fallback_angpix`` (the micrographs') is assumed.
    """
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    stacks, apixes = [], []
    for path in paths:
        images, apix = _header_angpix(path, angpix, fallback_angpix, "template")
        images = images.reshape((-1,) + images.shape[-2:])
        require(images.shape[1] == images.shape[2] and images.shape[1] % 2 == 0,
                f"templates must be square with an even box, got {images.shape[2]}x{images.shape[1]}", path, "nx/ny")
        if stacks and (images.shape[1:] != stacks[0].shape[1:] or abs(apix - apixes[0]) > 1e-4 * apix):
            raise InputError(f"templates of different sizes: {images.shape[-1]} px at {apix:.4g} A/px here, "
                             f"{stacks[0].shape[-1]} px at {apixes[0]:.4g} A/px in {paths[0]}", path, "nx/ny")
        stacks.append(images)
        apixes.append(apix)
    images = np.concatenate(stacks)
    masks = None
    if masks_path is not None:
        masks, _ = read_mrc(masks_path)
        masks = masks.reshape((-1,) + masks.shape[-2:])
        require(masks.shape[1:] == images.shape[1:] and len(masks) in (1, len(images)),
                f"masks {masks.shape} do not match the templates {images.shape}", masks_path, "nx/ny/nz")
        require(bool((masks >= -1e-6).all() and (masks <= 1 + 1e-6).all()), "mask values must lie in [0, 1]",
                masks_path, "data")
        masks = np.broadcast_to(np.clip(masks, 0, 1), images.shape).copy()
    return TemplateStack(images, apixes[0], masks)


def fibonacci_directions(n: int) -> np.ndarray:
    """``n`` directions spread evenly over the sphere (Fibonacci lattice): (n, 2) (rot, tilt) degrees."""
    require(n >= 1, f"need at least one direction, got {n}", field="--directions")
    i = np.arange(n)
    z = 1.0 - (2.0 * i + 1.0) / n
    rot = np.rad2deg(i * np.pi * (3.0 - np.sqrt(5.0)))
    return np.stack([(rot + 180.0) % 360.0 - 180.0, np.rad2deg(np.arccos(z))], axis=-1)


def project_reference(path, bk, directions=12, angpix: float | None = None, fallback_angpix: float | None = None
                      ) -> TemplateStack:
    """Projections of a 3D map (MRC) as templates.

    directions : an int ``n`` (Fibonacci directions, psi = 0) or an (n, 2|3) array of (rot, tilt[, psi]) degrees.
    """
    from cryopipe.projection import Projector

    volume, apix = _header_angpix(path, angpix, fallback_angpix, "reference")
    require(volume.ndim == 3 and len(set(volume.shape)) == 1 and volume.shape[0] % 2 == 0,
            f"reference must be a cubic map with an even box, got {volume.shape}", path, "nx/ny/nz")
    angles = np.asarray(fibonacci_directions(int(directions)) if np.ndim(directions) == 0 else directions, float)
    angles = np.column_stack([angles[:, :2], angles[:, 2] if angles.shape[1] > 2 else np.zeros(len(angles))])
    images = bk.asnumpy(Projector(volume, bk).project_real(euler_to_matrix(*angles.T)))
    return TemplateStack(np.asarray(images, np.float32), apix, None, angles)


BLOB_KINDS = ("disc", "ring")
BLOB_SIZES = {"disc": (0.35, 0.5, 0.65, 0.8), "ring": (0.9, 1.0, 1.1, 1.2)}  # blob diameters / particle diameter
RING_INNER = 0.75  # a ring blob's inner diameter / its outer one


def blob_templates(diameter_A: float, angpix: float, kind: str = "disc") -> TemplateStack:
    """White blob templates for a particle of ``diameter_A`` at ``angpix`` (A/px), in a box of 1.5 diameters.

    kind : "disc": projections of uniform spheres of 0.35 to 0.8 particle diameters (``BLOB_SIZES``): the
        particle's largest dimension overstates the size of its dense core, and a range of sizes matches compact
        and lumpy particles alike (as cryoSPARC's blob picker takes a size range); "ring": projections of shells
        of 0.9 to 1.2 diameters whose inner diameter is ``RING_INNER`` (0.75) of the outer one (hollow particles
        such as ferritin). Real apoferritin images as a dark ring near its outer edge, not at the projected shell's
        inner radius: on its 19 annotated real micrographs (benchmarks/pick_real.py, RESULTS.md) these shells pick
        at F1 0.93 with the defaults, where shells of 0.8-1 diameters with inner 0.6 picked none (0.42 at the
        best fixed threshold, on 6 of them).
    Returns one template per size, (S, box, box) float32.
    """
    require(kind in BLOB_KINDS, f"unknown blob kind {kind!r}; choose from {', '.join(BLOB_KINDS)}", field="--blob")
    require(diameter_A > 0 and angpix > 0, "diameter and pixel size must be positive", field="--diameter")
    box = _even(1.5 * diameter_A / angpix + 4)
    yy, xx = np.mgrid[:box, :box] - box // 2
    r_px = np.hypot(yy, xx)

    def chord(radius_px: float) -> np.ndarray:
        return np.sqrt(np.clip(radius_px * radius_px - r_px * r_px, 0.0, None))

    images = []
    for size in BLOB_SIZES[kind]:
        radius = 0.5 * size * diameter_A / angpix
        images.append(chord(radius) - (chord(RING_INNER * radius) if kind == "ring" else 0.0))
    return TemplateStack(np.stack(images).astype(np.float32), float(angpix))


def _even(x: float) -> int:
    return max(2, 2 * int(round(x / 2)))


def rescale_templates(stack: TemplateStack, angpix: float) -> TemplateStack:
    """Fourier-crop or pad templates (and masks) to the micrograph pixel size ``angpix`` (A/px)."""
    box = stack.images.shape[-1]
    new_box = _even(box * stack.angpix / angpix)
    if new_box == box:
        return stack
    log.info("templates rescaled from %d px at %.4g A/px to %d px at %.4g A/px", box, stack.angpix, new_box, angpix)
    masks = None if stack.masks is None else np.clip(resize(stack.masks, new_box), 0, 1)
    return TemplateStack(resize(stack.images, new_box), stack.angpix * box / new_box, masks, stack.angles)


def psi_angles(step: float) -> np.ndarray:
    """In-plane angles 0, step', 2 step', ... < 360 degrees with step' = 360 / ceil(360 / step)."""
    require(0 < step <= 360, f"angular step must be in (0, 360] degrees, got {step}", field="--angular-step")
    n = int(np.ceil(360.0 / step - 1e-9))
    return np.arange(n) * (360.0 / n)


def _soft_disc(r, radius: float, edge: float) -> np.ndarray:
    return np.where(r <= radius, 1.0, 0.5 + 0.5 * np.cos(np.pi * np.clip((r - radius) / edge, 0.0, 1.0)))


def build_bank(
    stack: TemplateStack,
    scale: tuple[float, float],
    diameter_A: float,
    angular_step: float = 5.0,
    lowpass_A: float | None = None,
    highpass_A: float | None = None,
    invert: bool = True,
    mask_edge_px: float = 1.0,
    mask_diameter_A: float | None = None,
) -> TemplateBank:
    """Rotated, masked, normalised templates on the working grid.

    Parameters
    ----------
    stack : templates at the micrograph pixel size (see :func:`rescale_templates`).
    scale : (sy, sx) micrograph pixels per working pixel along rows and columns (>= 1 when shrunk).
    diameter_A : particle diameter. mask_diameter_A : diameter of the default circular mask (plus a soft edge;
        None: the particle diameter). Given masks (``stack.masks``) are rotated with their templates and used as
        they are.
    angular_step : in-plane rotation step, degrees. lowpass_A, highpass_A : filters as for the micrographs.
    invert : flip the templates' contrast (white-protein templates against dark-protein micrographs).
    mask_edge_px : width of the mask's raised-cosine edge in working pixels.
    """
    images = stack.images.astype(np.float32)
    box, apix = images.shape[-1], stack.angpix
    sy, sx = scale
    work_apix = apix * min(sy, sx)
    if lowpass_A or max(sy, sx) > 1.0:
        images = lowpass(images, apix, max(lowpass_A or 0.0, 2.0 * apix * max(sy, sx)))
    if highpass_A:
        images = highpass(images, apix, highpass_A)
    require(diameter_A > 0, f"particle diameter must be positive, got {diameter_A}", field="--diameter")
    mask_diameter_A = mask_diameter_A or diameter_A
    radius = 0.5 * mask_diameter_A / apix  # micrograph px
    require(radius <= box / 2, f"the {mask_diameter_A:g} A mask does not fit the {box} px templates at "
            f"{apix:.4g} A/px ({box * apix:.4g} A); use a smaller --mask-diameter or larger templates",
            field="--mask-diameter")
    edge = mask_edge_px * work_apix / apix
    extent = radius + edge if stack.masks is None else box / 2  # micrograph px from the centre to keep
    n = 2 * int(np.ceil(extent / min(sy, sx) + 1))  # working box
    c = n // 2
    gy, gx = np.meshgrid((np.arange(n) - c) * sy, (np.arange(n) - c) * sx, indexing="ij")  # micrograph px
    circle = _soft_disc(np.hypot(gy, gx), radius, edge).astype(np.float32)
    psis = psi_angles(angular_step)
    rot = euler_to_matrix(0.0, 0.0, psis)[:, :2, :2]  # (R, 2, 2) acting on (x, y)
    # source position q = A^T p of each working pixel p, in template pixel indices (row, col)
    qx = rot[:, 0, 0, None, None] * gx + rot[:, 1, 0, None, None] * gy + box // 2
    qy = rot[:, 0, 1, None, None] * gx + rot[:, 1, 1, None, None] * gy + box // 2
    coords = np.stack([qy, qx])
    sign = -1.0 if invert else 1.0
    out, masks = [], []
    for t in range(len(images)):
        rotated = ndimage.map_coordinates(images[t].astype(np.float64), coords, order=3, mode="constant")
        m = circle[None] if stack.masks is None else \
            ndimage.map_coordinates(stack.masks[t].astype(np.float64), coords, order=1, mode="constant")
        msum = m.sum(axis=(-2, -1), keepdims=True)
        mean = (m * rotated).sum(axis=(-2, -1), keepdims=True) / msum
        sd = np.sqrt((m * (rotated - mean) ** 2).sum(axis=(-2, -1), keepdims=True) / msum)
        if not np.all(sd > 1e-6 * max(np.abs(images[t]).max(), 1e-30)):
            raise InputError(f"template {t + 1} is flat under its mask", field="--templates")
        out.append((sign * m * (rotated - mean) / sd).astype(np.float32))
        if stack.masks is not None:
            masks.append(m.astype(np.float32))
    return TemplateBank(
        images=np.concatenate(out),
        masks=circle if stack.masks is None else np.concatenate(masks),
        template=np.repeat(np.arange(len(images)), len(psis)),
        psi=np.tile(psis, len(images)),
    )
