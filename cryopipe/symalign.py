"""Find a map's symmetry axes and impose its point group (as RELION's ``relion_align_symmetry`` after InitialModel).

A map ``V`` has point group G in RELION's orientation (:func:`cryopipe.geometry.symmetry_operators`: the n-fold
axis along z, D's 2-fold along x, ...) when ``V(g r) = V(r)`` for every ``g`` in G, ``r`` relative to the box centre
``N // 2``. A map optimised in C1 (a de novo initial model) has its axes anywhere and its centre of mass off the box
centre by a few voxels. The frame ``(R, c)`` brings them into RELION's orientation::

    framed(r) = V(R.T @ r + c)          (rotate_map(V, R, shift_px=-R @ c))

``c`` is the centre of mass of the map's positive density inside the mask (relative to the box centre), so the
axes, which pass through the centre of mass, pass through the box centre; ``R`` maximises the symmetry score

    S(R) = mean over g != identity of NCC( V_c(r), V_c(R.T g R r) )      over a soft sphere, V_c(r) = V(r + c)

as ``framed(g r) = V_c(R.T g R R.T r)``: ``framed`` is invariant under every g exactly when ``V_c`` is invariant
under every ``R.T g R``. S is near 1 for a map that has the symmetry and well below for one that does not (the
log and the result give it: check it). Search as :func:`cryopipe.mapalign.align`: at a working box where the pixel is
``lowpass_A / 2.5``, every rotation of a HEALPix grid (for C<n> only the axis direction matters: the directions of
the grid), the best few refined locally by the stencil search, the best of them refined at the full box.

Imposing the group averages the framed map over G (:func:`symmetrise`). A particle pose ``A`` (RELION's Euler
matrix) and origin ``o`` (Angstrom, RELION's: the image content sits at ``-o``) against ``V`` become ``A R.T`` and
``o - (A c)_xy`` against ``framed`` (:func:`framed_poses`): the same projections.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from cryopipe.backend import Backend
from cryopipe.errors import require
from cryopipe.fourier import backend_or_cpu, fourier_crop, lowpass, resize, soft_circular_mask
from cryopipe.geometry import (
    angular_sampling_deg,
    centre_of_mass,
    euler_to_matrix,
    healpix_directions,
    matrix_to_euler,
    so3_grid,
    symmetry_operators,
)
from cryopipe.mapalign import (
    FINAL_STEPS_DEG,
    MIN_WORK_BOX,
    WORK_LEVELS,
    WORK_PIXEL_FRACTION,
    _centred_points,
    _distinct_best,
    _Oversampled,
    _refine,
    rotate_map,
)

log = logging.getLogger(__name__)

CANDIDATES = 4  # grid rotations refined locally
_SAMPLES_PER_BATCH = 1 << 22  # interpolated voxels per batch of conjugated operators


@dataclass
class SymmetryFrame:
    """The result of :func:`find_frame`.

    symmetry : the point group (upper case). rotation : (3, 3) ``R``. centre_px : (3,) ``c`` (x, y, z) voxels.
    score : the symmetry score S of the frame; baseline : the median S over the global search's rotations (what a
    frame that is not the map's own scores: smooth, round maps score high anywhere). Both at the search's resolution.
    """

    symmetry: str
    rotation: np.ndarray
    centre_px: np.ndarray
    score: float
    baseline: float

    @property
    def contrast(self) -> float:
        """(S - baseline) / (1 - baseline): about 1 when the map has the symmetry, near 0 when it has not."""
        return (self.score - self.baseline) / max(1.0 - self.baseline, 1e-6)

    @property
    def euler(self) -> tuple[float, float, float]:
        """RELION (rot, tilt, psi), degrees, of ``rotation``."""
        return tuple(float(a) for a in matrix_to_euler(self.rotation))


class _SymmetryScorer:
    """S(R) for batches of rotations R of one map (n, n, n), inside a sphere of ``radius`` voxels; ``score``
    returns (S (B,), zero shifts (B, 3)) as :func:`cryopipe.mapalign._refine` expects."""

    def __init__(self, vol, ops: np.ndarray, radius: float, edge: float, bk: Backend):
        xp = self.xp = bk.xp
        self.bk = bk
        n = vol.shape[0]
        mask = soft_circular_mask(n, radius, edge, ndim=3, bk=bk)
        self.grid = _Oversampled(vol * mask, xp)
        self.points, _ = _centred_points(n, xp, min(radius + edge, n / 2 - 1))
        ref = self.grid.sample(self.points, inside=True).astype(xp.float64)
        ref -= ref.mean()
        self.ref = ref / max(float(xp.sqrt((ref * ref).sum())), 1e-30)
        self.ops = np.asarray(ops[1:], dtype=np.float64)  # identity first: left out
        self.batch = max(1, _SAMPLES_PER_BATCH // (len(self.points) * len(self.ops)))

    def score(self, rotations) -> tuple[np.ndarray, np.ndarray]:
        xp = self.xp
        rotations = np.asarray(rotations, dtype=np.float64).reshape(-1, 3, 3)
        out = []
        for start in range(0, len(rotations), self.batch):
            r = rotations[start:start + self.batch]
            q = np.swapaxes(r, 1, 2)[:, None] @ self.ops[None] @ r[:, None]  # (B, G-1, 3, 3): R.T g R
            # sample(points @ M) reads V at M.T r: M = Q.T reads V(Q r)
            m = xp.asarray(np.swapaxes(q, 2, 3).reshape(-1, 3, 3), dtype=xp.float32)
            vals = self.grid.sample(xp.matmul(self.points[None], m), inside=True).astype(xp.float64)
            vals -= vals.mean(axis=1, keepdims=True)
            ncc = (vals @ self.ref) / xp.maximum(xp.sqrt((vals * vals).sum(axis=1)), 1e-30)
            out.append(self.bk.asnumpy(ncc.reshape(len(r), -1).mean(axis=1)))
        scores = np.concatenate(out) if out else np.zeros(0)
        return scores, np.zeros((len(scores), 3))


def _candidates(symmetry: str, ops: np.ndarray, order: int) -> np.ndarray:
    """Rotations (K, 3, 3) of the global search, one per frame that scores differently. For C<n> one per HEALPix
    direction of ``order + 1`` (the axis direction is all that matters). Otherwise RELION's SO(3) grid, of ``order +
    1`` for groups of more than 8 rotations, each reduced to one representative of its class ``{g R}`` (``g R``
    scores as ``R``: its conjugates ``R.T g.T g' g R`` are the same set), the one nearest the identity, keeping
    those half a grid step apart."""
    if symmetry.startswith("C"):
        rot_tilt = healpix_directions(order + 1)
        return euler_to_matrix(rot_tilt[:, 0], rot_tilt[:, 1], np.zeros(len(rot_tilt)))
    order += len(ops) > 8
    grid = euler_to_matrix(*so3_grid(order).T)
    copies = ops[None] @ grid[:, None]  # (K, G, 3, 3)
    reps = copies[np.arange(len(grid)), np.argmax(np.trace(copies, axis1=2, axis2=3), axis=1)]
    min_cos = np.cos(np.deg2rad(0.5 * angular_sampling_deg(order)))  # keep those half a grid step apart
    kept = [reps[0]]
    for r in reps[1:]:
        if ((np.einsum("kij,ij->k", np.asarray(kept), r) - 1) / 2).max() < min_cos:
            kept.append(r)
    return np.asarray(kept)


def find_frame(vol, symmetry: str, angpix: float, *, diameter_A: float | None = None, lowpass_A: float = 20.0,
               healpix_order: int = 1, bk: Backend | None = None) -> SymmetryFrame:
    """The frame ``(R, c)`` that puts the symmetry axes of ``vol`` (N, N, N) into RELION's orientation for
    ``symmetry`` (see the module docstring). ``diameter_A``: the soft sphere of the score (default 0.8 x the box).
    The search runs at ``lowpass_A``, the final refinement at twice that resolution (at most the map's box). C1 gives
    the identity frame."""
    bk = backend_or_cpu(bk)
    xp = bk.xp
    ops = symmetry_operators(symmetry)
    key = str(symmetry).strip().upper()
    n = vol.shape[0]
    require(vol.ndim == 3 and len(set(vol.shape)) == 1 and n % 2 == 0, f"expected a cubic map with an even box, got "
            f"shape {vol.shape}", field="map")
    fov = n * angpix
    diameter_A = 0.8 * fov if diameter_A is None else float(diameter_A)
    vol = bk.asarray(vol, dtype=xp.float32)
    edge = 0.05 * n
    mask = soft_circular_mask(n, 0.5 * diameter_A / angpix, edge, ndim=3, bk=bk)
    centre = centre_of_mass(lowpass(vol, angpix, lowpass_A, ndim=3), mask, 3, bk)
    if len(ops) == 1:
        return SymmetryFrame(key, np.eye(3), centre, 1.0, 0.0)
    centred = rotate_map(vol, np.eye(3), -centre, bk)

    def scorer(v, box):
        apix = fov / box
        return _SymmetryScorer(v, ops, 0.5 * diameter_A / apix, 0.05 * box, bk)

    work = min(n, max(MIN_WORK_BOX, 2 * math.ceil(fov / (lowpass_A / WORK_PIXEL_FRACTION) / 2)))
    s = scorer(lowpass(fourier_crop(centred, work, ndim=3), fov / work, lowpass_A, ndim=3), work)
    grid = _candidates(key, ops, healpix_order)
    grid_scores, _ = s.score(grid)
    sampling = angular_sampling_deg(healpix_order)
    start = grid[_distinct_best(grid, grid_scores, CANDIDATES, sampling)]
    rots, scores, _ = _refine(s, start, [sampling / 2 / 3**i for i in range(WORK_LEVELS)])
    best = int(np.argmax(scores))
    box = min(n, 2 * work)
    fine = scorer(lowpass(resize(centred, box, ndim=3), fov / box, lowpass_A / 2, ndim=3), box)
    rot, _, _ = _refine(fine, rots[best][None], FINAL_STEPS_DEG)
    frame = SymmetryFrame(key, rot[0], centre, float(s.score(rot)[0][0]), float(np.median(grid_scores)))
    log.info("%s axes: Euler (%.1f, %.1f, %.1f) deg, centre of mass (%.1f, %.1f, %.1f) px from the box centre; "
             "symmetry score %.3f against %.3f for other frames (contrast %.2f: near 1 when the map has %s, near 0 "
             "when not)", key, *frame.euler, *centre, frame.score, frame.baseline, frame.contrast, key)
    return frame


def apply_frame(vol, frame: SymmetryFrame, bk: Backend | None = None):
    """``framed(r) = V(R.T r + c)``: (N, N, N) float32 on ``bk``'s device."""
    return rotate_map(vol, frame.rotation, -(frame.rotation @ frame.centre_px), bk)


def symmetrise(vol, symmetry: str, bk: Backend | None = None):
    """The average of ``vol`` (N, N, N) over the point group's rotations about the box centre (float32)."""
    bk = backend_or_cpu(bk)
    ops = symmetry_operators(symmetry)
    out = bk.asarray(vol, dtype=bk.xp.float32).copy()
    for g in ops[1:]:
        out += rotate_map(vol, g, bk=bk)
    return out / len(ops)


def framed_poses(rot, tilt, psi, origin_x_A, origin_y_A, frame: SymmetryFrame, angpix: float):
    """Particle poses against ``V`` -> the same projections of ``apply_frame(V, frame)``: Euler angles (degrees)
    of ``A R.T`` and origins (Angstrom) ``o - (A c)_xy``. Arrays of (n,) in, a tuple of five (n,) float64 out."""
    a = euler_to_matrix(np.asarray(rot, float), np.asarray(tilt, float), np.asarray(psi, float))
    new = matrix_to_euler(a @ frame.rotation.T)
    moved = (a @ frame.centre_px) * angpix  # (n, 3) Angstrom
    return (*new, np.asarray(origin_x_A, float) - moved[:, 0], np.asarray(origin_y_A, float) - moved[:, 1])
