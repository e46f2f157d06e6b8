"""Align one 3D map onto another: rotation, shift and hand (enantiomer), and the FSC of the result.

Conventions (see DESIGN.md and :mod:`cryopipe.geometry`): maps are ``vol[z, y, x]``, cubic with an even box ``N``
and their origin (the rotation centre) at index ``N // 2``; points and shifts are ``(x, y, z)``.

An alignment ``(R, s, hand)`` of ``moving`` onto ``reference`` makes the aligned map

    aligned(r) = moving_h(R.T @ (r - s)),        moving_h = moving (hand +1) or mirror(moving) (hand -1),

i.e. ``moving`` (mirrored first when hand is -1) is rotated by ``R`` about the box centre and then moved by ``s``.
:func:`mirror` flips z about the centre, ``mirror(v)(x, y, z) = v(x, y, -z)``: a map of the other enantiomer aligns
with hand -1. ``R`` is RELION's ``Euler_angles2matrix`` of the reported Euler angles (:func:`euler_to_matrix`),
so projecting ``moving_h`` at these angles gives the reference's projection at angles (0, 0, 0), up to the shift.

Method:

1. Search: both maps are Fourier-cropped to a small working box whose pixel is ``lowpass_A / 2.5`` (so the low-pass
   at ``lowpass_A`` lies at 0.8 x the working Nyquist), low-pass filtered there, and masked by a soft sphere
   (diameter ``diameter_A``, zero mean inside). Every rotation of RELION's HEALPix grid (:func:`so3_grid` of
   ``healpix_order``) is scored for both hands: the rotated moving map (trilinear interpolation in a 2x
   Fourier-oversampled copy) is cross-correlated with the reference by 3D FFT, and the peak within ``max_shift_A``
   gives the shift and the score, the normalised cross-correlation (NCC) inside the mask. The peak is located to a
   fraction of a voxel by Newton's steps on the Fourier series of the correlation (its band-limited interpolation,
   started from a parabola through the highest sample), so that the score varies smoothly with the rotation.
2. Local refinement at the working box of the ``candidates`` best distinct grid rotations of each hand: around
   each, a stencil of 19 small rotations (the centre, 6 along the axes, 12 along the face diagonals of a cube of
   half-width ``step`` degrees) is scored, a quadratic fitted to it proposes the optimum, the best point becomes the
   centre and the step shrinks threefold (half the grid sampling, a sixth and an eighteenth of it).
3. Final refinement of each hand's best candidate with the same stencil on the unfiltered maps at the full box
   (Fourier-cropped to ``refine_box`` when larger), steps 2, 0.67 and 0.22 degrees. The hand that correlates better
   there wins: the hand shows in the finer detail more than at the search's low resolution.

The reported correlation is the NCC inside the mask of the aligned map (the moving map resampled once at the final
rotation and shift, at the full box and resolution) with the reference; the FSC is taken between the two maps
multiplied by the soft mask.

Arrays live on the device of ``bk`` (NumPy or CuPy through :mod:`cryopipe.backend`); rotations, Euler angles and
shifts are host float64.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np

from cryopipe.backend import Backend
from cryopipe.errors import InputError, require
from cryopipe.fourier import (
    backend_of,
    backend_or_cpu,
    fourier_crop,
    fourier_pad,
    fsc,
    lowpass,
    next_fast_size,
    resize,
    resolution_at,
    soft_circular_mask,
)
from cryopipe.geometry import (
    angular_sampling_deg,
    axis_angle_to_matrix,
    euler_to_matrix,
    matrix_to_euler,
    rotation_angle_between,
    so3_grid,
)

log = logging.getLogger(__name__)

WORK_PIXEL_FRACTION = 2.5  # working pixel = lowpass / this: the low-pass edge ends below the working Nyquist
MIN_WORK_BOX = 16
MASK_DIAMETER_FRACTION = 0.8  # default mask diameter, of the box
MASK_EDGE_FRACTION = 0.05  # soft-edge width, of the box
MAX_SHIFT_FRACTION = 0.1  # default largest shift, of the box
NEWTON_STEPS = 2  # sub-voxel shift: Newton's steps on the Fourier series of the correlation
WORK_LEVELS = 3  # local refinement at the working box: steps of 1/2, 1/6 and 1/18 of the grid sampling
FINAL_STEPS_DEG = (2.0, 2.0 / 3.0, 2.0 / 9.0)
_POINTS_PER_BATCH = 1 << 21  # interpolated voxels per batch of rotations (~100 B each)


@dataclass
class MapAlignment:
    """The result of :func:`align` (see the module docstring for the meaning of ``rotation``, ``shift_A``, ``hand``).

    rotation : (3, 3) float64 rotation matrix ``R``.
    shift_A : (3,) float64 shift ``s`` (x, y, z) in Angstrom.
    hand : +1, or -1 when the mirrored moving map (the other enantiomer) aligns better.
    correlation : NCC inside the soft spherical mask of the aligned map with the reference.
    aligned : (N, N, N) float32 host array, ``moving`` resampled onto the reference's grid.
    fsc : (N//2 + 1,) float64 FSC per shell of the masked aligned map and reference.
    resolution_05_A, resolution_0143_A : where the FSC drops below 0.5 and 0.143 (A; 2 x angpix if never, inf if
        below from shell 1).
    angpix : pixel size (A).
    hand_correlations : {+1: NCC, -1: NCC}, the score of each hand's best alignment after the final refinement (step 3,
        the NCC of the search at the refinement box); the higher one chose ``hand``.
    """

    rotation: np.ndarray
    shift_A: np.ndarray
    hand: int
    correlation: float
    aligned: np.ndarray
    fsc: np.ndarray
    resolution_05_A: float
    resolution_0143_A: float
    angpix: float
    hand_correlations: dict[int, float] = field(default_factory=dict)

    @property
    def euler(self) -> tuple[float, float, float]:
        """RELION (rot, tilt, psi) in degrees of ``rotation``."""
        rot, tilt, psi = matrix_to_euler(self.rotation)
        return float(rot), float(tilt), float(psi)

    @property
    def frequencies(self) -> np.ndarray:
        """(N//2 + 1,) spatial frequency of each FSC shell, 1/A."""
        return np.arange(self.fsc.size) / (2 * (self.fsc.size - 1) * self.angpix)


def mirror(vol):
    """The map of the other hand: z flipped about the centre, ``out[i] = vol[(N - i) % N]`` along axis 0, so that
    ``out(x, y, z) = vol(x, y, -z)`` with the origin at N//2. (N, N, N) in, same shape and device out."""
    return backend_of(vol).xp.roll(vol[::-1], 1, axis=0)


class _Oversampled:
    """A map (N, N, N) held 2x Fourier-oversampled (band-limited interpolation to a (2N)^3 grid) for trilinear
    sampling at arbitrary points; trilinear interpolation in the oversampled grid is nearly that of the band-limited
    map (the map's spectrum fills half the oversampled band, so the kernel's aliases are ~1% of the power)."""

    def __init__(self, vol, xp):
        self.n = vol.shape[0]
        self.p = 2 * self.n
        self.flat = fourier_pad(vol, self.p, ndim=3).astype(xp.float32).reshape(-1)
        self.xp = xp

    def sample(self, points, inside: bool = False):
        """Values at ``points`` (..., 3) = (x, y, z) in voxels of the original box relative to its centre; 0 outside
        the box. ``inside``: the caller guarantees every point lies within N/2 - 1 of the centre (no bounds checks).
        Returns (...) float32 on the device."""
        xp, p = self.xp, self.p
        u = points * 2.0
        u += float(self.n)  # oversampled grid units, centre at index p // 2 = n
        if not inside:
            valid = xp.all((u >= 0) & (u <= p - 1), axis=-1)
            u = xp.clip(u, 0, p - 1)
        i0 = xp.floor(u) if inside else xp.minimum(xp.floor(u), p - 2)
        t = u - i0
        i = i0.astype(xp.int32 if p**3 < 2**31 else xp.int64)
        base = (i[..., 2] * p + i[..., 1]) * p + i[..., 0]
        tx, ty, tz = t[..., 0], t[..., 1], t[..., 2]
        out = None
        for dz, wz in ((0, 1 - tz), (p * p, tz)):
            for dy, wy in ((0, 1 - ty), (p, ty)):
                idx = base + (dz + dy)
                lo = xp.take(self.flat, idx)
                idx += 1
                row = xp.take(self.flat, idx)
                row -= lo
                row *= tx
                row += lo
                row *= wz * wy
                out = row if out is None else out + row
        return out if inside else out * valid


def _centred_points(n: int, xp, radius: float):
    """(x, y, z) positions relative to N//2 (float32, (M, 3)) of the voxels within ``radius`` voxels of it, and their
    flat indices into (N, N, N)."""
    c = np.arange(n, dtype=np.float32) - n // 2
    z, y, x = np.meshgrid(c, c, c, indexing="ij")
    pts = np.stack([x.ravel(), y.ravel(), z.ravel()], axis=-1)
    keep = np.flatnonzero(np.einsum("mi,mi->m", pts, pts) <= radius * radius)
    return xp.asarray(pts[keep]), xp.asarray(keep)


def rotate_map(vol, rotation, shift_px=(0.0, 0.0, 0.0), bk: Backend | None = None):
    """``out(r) = vol(R.T @ (r - s))``: ``vol`` (N, N, N) rotated by ``rotation`` (3, 3) about N//2, then moved by
    ``shift_px`` (x, y, z) voxels; trilinear in a 2x Fourier-oversampled copy, 0 where the source lies outside the
    box. Returns (N, N, N) float32 on ``bk``'s device (CPU when None). Works through slabs of z (the oversampled copy,
    8 N^3 float32, is the largest array)."""
    bk = backend_or_cpu(bk)
    xp = bk.xp
    vol = bk.asarray(vol, dtype=xp.float32)
    n = vol.shape[0]
    grid = _Oversampled(vol, xp)
    rot_t = xp.asarray(np.asarray(rotation, dtype=np.float64), dtype=xp.float32)
    c = xp.arange(n, dtype=xp.float32) - n // 2
    y, x = xp.meshgrid(c, c, indexing="ij")
    plane = xp.stack([x.ravel(), y.ravel(), xp.zeros(n * n, dtype=xp.float32)], axis=-1)  # (N^2, 3) at z = 0
    start = plane - xp.asarray(np.asarray(shift_px, dtype=np.float32))
    out = xp.empty((n, n * n), dtype=xp.float32)
    slab = max(1, _POINTS_PER_BATCH // (n * n))
    for z0 in range(0, n, slab):
        z = c[z0:z0 + slab, None, None] * xp.asarray([0.0, 0.0, 1.0], dtype=xp.float32)
        out[z0:z0 + slab] = grid.sample((start[None] + z) @ rot_t)  # rows: (R.T @ (r - s)).T
    return out.reshape(n, n, n)


def _masked(vol, mask, xp):
    """``mask * (vol - mean)``, the mean taken inside ``mask``; None when nothing varies inside the mask."""
    mean = (vol * mask).sum() / mask.sum()
    out = mask * (vol - mean)
    return out if float((out * out).sum()) > 1e-12 * max(float((vol * vol).sum()), 1e-30) else None


def masked_ncc(a, b, mask) -> float:
    """Normalised cross-correlation of maps ``a`` and ``b`` weighted by ``mask`` (same shape, same device):
    ``sum m (a - <a>)(b - <b>) / sqrt(sum m (a - <a>)^2 sum m (b - <b>)^2)`` with mask-weighted means."""
    xp = backend_of(a).xp
    w = mask.astype(xp.float64)
    a, b = a.astype(xp.float64), b.astype(xp.float64)
    a = a - (w * a).sum() / w.sum()
    b = b - (w * b).sum() / w.sum()
    den = float(xp.sqrt((w * a * a).sum() * (w * b * b).sum()))
    return float((w * a * b).sum()) / den if den > 0 else 0.0


class _Scorer:
    """Scores rotations of ``moving`` against ``reference`` (both (n, n, n) on the device) at one box: NCC inside a
    soft sphere of ``radius`` + ``edge`` voxels, maximised over shifts within ``max_shift`` voxels by 3D FFT
    cross-correlation (zero-padded so that no shift in range wraps around)."""

    def __init__(self, moving, reference, radius: float, edge: float, max_shift: float, bk: Backend):
        xp = self.xp = bk.xp
        self.bk = bk
        n = self.n = reference.shape[0]
        mask = soft_circular_mask(n, radius, edge, ndim=3, bk=bk)
        ref, mov = _masked(reference, mask, xp), _masked(moving, mask, xp)
        if ref is None or mov is None:
            raise InputError("map holds no signal inside the mask", field="reference" if ref is None else "moving")
        outer = min(radius + edge, n / 2 - 1)  # the mask's support, within the box
        self.grid = _Oversampled(mov, xp)
        self.points, self.flat = _centred_points(n, xp, outer)
        # masked maps span 2 floor(outer) + 1 voxels: no lag within max_shift wraps around in a box of p
        p = self.p = max(n, next_fast_size(2 * math.floor(outer) + math.floor(max_shift) + 1))
        self.ref_ft = bk.fft.rfftn(ref, s=(p,) * 3)
        self.ref_norm = float(xp.sqrt((ref * ref).sum()))
        r = int(math.floor(max_shift))
        t = np.arange(-r, r + 1)
        tz, ty, tx = np.meshgrid(t, t, t, indexing="ij")
        lags = np.stack([tx.ravel(), ty.ravel(), tz.ravel()], axis=-1)
        lags = lags[(lags**2).sum(axis=1) <= max_shift**2 + 1e-9]
        self.lags = lags  # (L, 3) (x, y, z) voxels, host
        self.lag_flat = xp.asarray(self._flat_index(lags))
        k = np.fft.fftfreq(p, 1.0 / p)
        self.kyz, self.kx = xp.asarray(k), xp.asarray(np.arange(p // 2 + 1, dtype=np.float64))
        wx = np.full(p // 2 + 1, 2.0)  # the half spectrum's columns count twice in the full sum, but for kx = 0, P/2
        wx[0] = 1.0
        if p % 2 == 0:
            wx[-1] = 1.0
        self.wx = xp.asarray(wx)
        self.batch = max(1, _POINTS_PER_BATCH // max(1, self.points.shape[0]))

    def _flat_index(self, lags):
        p = self.p
        m = np.mod(lags, p)
        return (m[..., 2] * p + m[..., 1]) * p + m[..., 0]

    def score(self, rotations) -> tuple[np.ndarray, np.ndarray]:
        """rotations (B, 3, 3) host -> (NCC (B,), best shift (B, 3) (x, y, z) voxels with sub-voxel refinement)."""
        rotations = np.asarray(rotations, dtype=np.float64).reshape(-1, 3, 3)
        scores, shifts = [], []
        for start in range(0, len(rotations), self.batch):
            s, t = self._score_batch(rotations[start:start + self.batch])
            scores.append(s)
            shifts.append(t)
        return np.concatenate(scores), np.concatenate(shifts)

    def _score_batch(self, rotations):
        xp, bk, n, p = self.xp, self.bk, self.n, self.p
        b = len(rotations)
        rot = xp.asarray(rotations, dtype=xp.float32)
        vals = self.grid.sample(xp.matmul(self.points[None], rot), inside=True)  # (B, M): mov(R.T @ r)
        norms = xp.sqrt((vals.astype(xp.float64) ** 2).sum(axis=1))
        vol = xp.zeros((b, n**3), dtype=xp.float32)
        vol[:, self.flat] = vals
        ft = bk.fft.rfftn(vol.reshape(b, n, n, n), s=(p,) * 3, axes=(1, 2, 3))
        x_ft = self.ref_ft[None] * ft.conj()
        cc = bk.fft.irfftn(x_ft, s=(p,) * 3, axes=(1, 2, 3)).reshape(b, -1)
        # cc[t] = sum_r ref(r) rot(r - t): the reference matches the rotated map moved by +t
        best = xp.argmax(cc[:, self.lag_flat], axis=1)
        lag = self.lags[bk.asnumpy(best)]  # (B, 3) host
        offsets = np.array([(0, 0, 0)] + [tuple(s * e) for e in np.eye(3, dtype=int) for s in (-1, 1)])
        idx = xp.asarray(self._flat_index(lag[:, None, :] + offsets[None]))
        y = bk.asnumpy(xp.take_along_axis(cc, idx, axis=1)).astype(np.float64)  # (B, 7): peak, then -x, +x, -y, ...
        y0, lo, hi = y[:, :1], y[:, 1::2], y[:, 2::2]
        curv = lo - 2 * y0 + hi
        delta = np.where(curv < 0, 0.5 * (lo - hi) / np.where(curv < 0, curv, -1.0), 0.0)
        t = lag + np.clip(delta, -0.5, 0.5)  # parabola through the peak: the start of Newton's steps
        for step in range(NEWTON_STEPS + 1):
            height, grad, hess = self._peak_terms(x_ft, t)
            if step < NEWTON_STEPS:
                t = _newton_step(t, grad, hess, lag)
        den = self.ref_norm * bk.asnumpy(norms)
        ncc = np.where(den > 0, height / np.where(den > 0, den, 1.0), 0.0)
        return ncc, t

    def _peak_terms(self, x_ft, t):
        """The cross-correlation ``cc(t) = irfftn(x_ft)(t)`` at sub-voxel lags, evaluated as its Fourier series (the
        band-limited interpolation of the FFT's samples), with its gradient and Hessian in t.

        x_ft : (B, P, P, P//2 + 1) complex ``F_ref conj(F_rot)``; t : (B, 3) host (x, y, z) voxels.
        Returns (B,), (B, 3), (B, 3, 3) host float64.
        """
        xp, p, b = self.xp, self.p, len(t)
        tt = xp.asarray(t, dtype=xp.float64)

        def factors(k, ti, weight):  # (B, K, 3): weight * exp(2 pi i k t / P) * (1, k, k^2)
            phase = weight * xp.exp((2j * np.pi / p) * ti[:, None] * k[None, :])
            return (phase[..., None] * xp.stack([xp.ones_like(k), k, k * k], axis=-1)[None]).astype(x_ft.dtype)

        fx = factors(self.kx, tt[:, 0], self.wx)
        fy, fz = factors(self.kyz, tt[:, 1], 1.0), factors(self.kyz, tt[:, 2], 1.0)
        m = xp.matmul(x_ft, fx[:, None])  # (B, z, y, a): sum over kx of ... kx^a
        m = xp.matmul(xp.swapaxes(m, 2, 3), fy[:, None])  # (B, z, a, b)
        m = xp.matmul(xp.swapaxes(m.reshape(b, p, 9), 1, 2), fz)  # (B, (a, b), c)
        m = self.bk.asnumpy(m).astype(np.complex128).reshape(b, 3, 3, 3) / float(p) ** 3  # sum X e^(..) kx^a ky^b kz^c
        w = 2 * np.pi / p
        grad = -w * np.stack([m[:, 1, 0, 0].imag, m[:, 0, 1, 0].imag, m[:, 0, 0, 1].imag], axis=-1)
        second = [[m[:, 2, 0, 0], m[:, 1, 1, 0], m[:, 1, 0, 1]], [m[:, 1, 1, 0], m[:, 0, 2, 0], m[:, 0, 1, 1]],
                  [m[:, 1, 0, 1], m[:, 0, 1, 1], m[:, 0, 0, 2]]]
        hess = -(w**2) * np.moveaxis(np.array(second).real, (0, 1), (1, 2))
        return m[:, 0, 0, 0].real, grad, hess


def _newton_step(t, grad, hess, lag):
    """One Newton step towards the peak for each row of ``t`` (B, 3) where the Hessian (B, 3, 3) is negative
    definite, staying within one voxel of the integer peak ``lag``; other rows stay."""
    ok = np.linalg.eigvalsh(hess).max(axis=-1) < 0
    safe = np.where(ok[:, None, None], hess, -np.eye(3))
    moved = t - np.linalg.solve(safe, grad[..., None])[..., 0]
    return np.where(ok[:, None], np.clip(moved, lag - 1.0, lag + 1.0), t)


# 19 stencil points: centre, +-axes, +-face diagonals (units of the step)
_STENCIL = np.array([(0, 0, 0)]
                    + [tuple(s * e) for e in np.eye(3, dtype=int) for s in (-1, 1)]
                    + [tuple(sa * np.eye(3, dtype=int)[a] + sb * np.eye(3, dtype=int)[b])
                       for a in range(3) for b in range(a + 1, 3) for sa in (-1, 1) for sb in (-1, 1)], dtype=float)


def _quadratic_terms(u):
    """(K, 3) -> (K, 10) terms of a full quadratic in 3 variables: 1, x, y, z, x^2, y^2, z^2, xy, xz, yz."""
    x, y, z = u[:, 0], u[:, 1], u[:, 2]
    return np.stack([np.ones_like(x), x, y, z, x * x, y * y, z * z, x * y, x * z, y * z], axis=-1)


_STENCIL_PINV = np.linalg.pinv(_quadratic_terms(_STENCIL))


def _quadratic_optimum(values) -> np.ndarray | None:
    """The maximum (3,) in step units, within [-1, 1]^3, of the quadratic fitted to ``values`` (19,) at ``_STENCIL``;
    None where the fit has no maximum."""
    c = _STENCIL_PINV @ values
    g = c[1:4]
    h = np.array([[2 * c[4], c[7], c[8]], [c[7], 2 * c[5], c[9]], [c[8], c[9], 2 * c[6]]])
    if np.linalg.eigvalsh(h).max() >= 0:
        return None
    return np.clip(np.linalg.solve(h, -g), -1.0, 1.0)


def _perturbed(rotation, omegas_deg) -> np.ndarray:
    """Rotations ``exp([omega]) @ rotation`` for rotation vectors ``omegas_deg`` (K, 3) (degrees) -> (K, 3, 3)."""
    omegas_deg = np.asarray(omegas_deg, dtype=np.float64).reshape(-1, 3)
    angle = np.linalg.norm(omegas_deg, axis=1)
    axis = np.where(angle[:, None] > 0, omegas_deg, [0.0, 0.0, 1.0])
    return axis_angle_to_matrix(axis, angle) @ rotation


def _refine(scorer: _Scorer, rotations, steps_deg) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Local refinement of each of ``rotations`` (K, 3, 3) by the stencil search of the module docstring, one level
    per step of ``steps_deg``. Returns (rotations (K, 3, 3), NCC (K,), shifts (K, 3) voxels)."""
    rots = np.array(rotations, dtype=np.float64).reshape(-1, 3, 3)
    k = len(rots)
    scores, shifts = np.full(k, -np.inf), np.zeros((k, 3))
    for step in steps_deg:
        trial = np.concatenate([_perturbed(r, _STENCIL * step) for r in rots])
        s, t = scorer.score(trial)
        s, t = s.reshape(k, len(_STENCIL)), t.reshape(k, len(_STENCIL), 3)
        proposals = [(i, _quadratic_optimum(s[i])) for i in range(k)]
        proposals = [(i, u) for i, u in proposals if u is not None]
        best = np.argmax(s, axis=1)
        new_rots = np.stack([_perturbed(rots[i], _STENCIL[best[i]] * step)[0] for i in range(k)])
        scores, shifts = s[np.arange(k), best], t[np.arange(k), best]
        if proposals:
            opt = np.concatenate([_perturbed(rots[i], u * step) for i, u in proposals])
            so, to = scorer.score(opt)
            for j, (i, _) in enumerate(proposals):
                if so[j] > scores[i]:
                    new_rots[i], scores[i], shifts[i] = opt[j], so[j], to[j]
        rots = new_rots
    return rots, scores, shifts


def _distinct_best(rotations, scores, count: int, separation_deg: float) -> np.ndarray:
    """Indices of up to ``count`` highest ``scores`` whose rotations are more than ``separation_deg`` apart."""
    chosen: list[int] = []
    for i in np.argsort(-scores):
        if all(rotation_angle_between(rotations[i], rotations[j]) > separation_deg for j in chosen):
            chosen.append(int(i))
            if len(chosen) == count:
                break
    return np.asarray(chosen, dtype=int)


def _check_maps(moving, reference, angpix: float) -> int:
    for name, vol in (("moving", moving), ("reference", reference)):
        require(vol.ndim == 3 and len(set(vol.shape)) == 1 and vol.shape[0] % 2 == 0 and vol.shape[0] >= 8,
                f"expected a cubic map with an even box >= 8, got shape {vol.shape}", field=f"{name} shape")
    require(moving.shape == reference.shape,
            f"the maps differ in box: moving {moving.shape[0]}, reference {reference.shape[0]} (resample one onto the "
            "other's grid first)", field="shape")
    require(angpix is not None and angpix > 0, f"pixel size must be positive, got {angpix}", field="angpix")
    return int(reference.shape[0])


def align(moving, reference, angpix: float, *, lowpass_A: float = 20.0, diameter_A: float | None = None,
          max_shift_A: float | None = None, healpix_order: int = 2, candidates: int = 3, refine_box: int = 128,
          bk: Backend | None = None) -> MapAlignment:
    """Align ``moving`` onto ``reference`` (see the module docstring for the method and the meaning of the result).

    Parameters
    ----------
    moving, reference : (N, N, N) real maps (host or device), same box, N even; ``angpix`` (A/px) for both.
    lowpass_A : resolution (A) of the global search; sets the working box.
    diameter_A : diameter (A) of the soft spherical mask (default 0.8 x the box); its soft edge is 0.05 x the box.
    max_shift_A : largest shift searched, A (default 0.1 x the box).
    healpix_order : order of the global rotation grid (1: 30 deg, 576 rotations; 2: 15 deg, 4608).
    candidates : grid rotations per hand refined locally.
    refine_box : largest box of the final refinement (bigger maps are Fourier-cropped to it for that step).
    bk : backend (CPU when None).

    Raises :class:`InputError` (naming the field) for maps of different boxes, non-cubic maps, impossible parameters
    and maps without signal inside the mask.
    """
    bk = backend_or_cpu(bk)
    xp = bk.xp
    n = _check_maps(moving, reference, angpix)
    fov = n * angpix
    require(lowpass_A >= 2 * angpix, f"{lowpass_A:g} A is finer than Nyquist ({2 * angpix:g} A)", field="--lowpass")
    diameter_A = MASK_DIAMETER_FRACTION * fov if diameter_A is None else float(diameter_A)
    max_shift_A = MAX_SHIFT_FRACTION * fov if max_shift_A is None else float(max_shift_A)
    require(0 < diameter_A <= fov, f"mask diameter must be in (0, {fov:g}] A, got {diameter_A:g}", field="--diameter")
    require(max_shift_A >= 0, f"must be >= 0, got {max_shift_A:g}", field="--max-shift")
    require(int(healpix_order) == healpix_order and 0 <= healpix_order <= 3, "must be 0, 1, 2 or 3",
            field="--healpix-order")
    require(candidates >= 1, "must be >= 1", field="--candidates")
    require(refine_box >= MIN_WORK_BOX and refine_box % 2 == 0, f"must be an even box >= {MIN_WORK_BOX}",
            field="--refine-box")
    mov = bk.asarray(moving, dtype=xp.float32)
    ref = bk.asarray(reference, dtype=xp.float32)
    for name, vol in (("moving", mov), ("reference", ref)):
        require(bool(xp.isfinite(vol).all()), "map holds NaN or Inf values", field=name)

    def scorer(m, r, box):
        apix = fov / box
        edge = MASK_EDGE_FRACTION * box
        return _Scorer(m, r, 0.5 * diameter_A / apix, edge, max_shift_A / apix, bk)

    # 1-3. per hand: global search and local refinement at the working box, final refinement at the full box
    work = min(n, max(MIN_WORK_BOX, 2 * math.ceil(fov / (lowpass_A / WORK_PIXEL_FRACTION) / 2)))
    apix_w = fov / work
    ref_w = lowpass(fourier_crop(ref, work, ndim=3), apix_w, lowpass_A, ndim=3)
    fine = min(n, refine_box)
    ref_f = resize(ref, fine, ndim=3)
    grid = euler_to_matrix(*so3_grid(int(healpix_order)).T)
    sampling = angular_sampling_deg(int(healpix_order))
    steps = [sampling / 2 / 3**i for i in range(WORK_LEVELS)]
    best = {}
    for hand in (1, -1):
        mov_h = mov if hand == 1 else mirror(mov)
        s = scorer(lowpass(fourier_crop(mov_h, work, ndim=3), apix_w, lowpass_A, ndim=3), ref_w, work)
        grid_scores, _ = s.score(grid)
        start = grid[_distinct_best(grid, grid_scores, candidates, 2 * sampling)]
        rots, scores, _ = _refine(s, start, steps)
        i = int(np.argmax(scores))
        rot_f, score_f, shift_f = _refine(scorer(resize(mov_h, fine, ndim=3), ref_f, fine), rots[i][None],
                                          FINAL_STEPS_DEG)
        best[hand] = (rot_f[0], float(score_f[0]), shift_f[0] * (fov / fine))
        log.info("hand %+d: NCC %.3f on the best grid rotation, %.3f refined at %g A, %.3f refined at the full box",
                 hand, float(grid_scores.max()), scores[i], lowpass_A, score_f[0])
    hand = max(best, key=lambda h: best[h][1])  # +1 on a tie
    rotation, shift_A = best[hand][0], best[hand][2]
    mov_h = mov if hand == 1 else mirror(mov)

    aligned = rotate_map(mov_h, rotation, shift_A / angpix, bk)
    mask = soft_circular_mask(n, 0.5 * diameter_A / angpix, MASK_EDGE_FRACTION * n, ndim=3, bk=bk)
    curve = bk.asnumpy(fsc(aligned * mask, ref * mask))
    result = MapAlignment(rotation=rotation, shift_A=shift_A, hand=hand, correlation=masked_ncc(aligned, ref, mask),
                          aligned=bk.asnumpy(aligned).astype(np.float32), fsc=np.asarray(curve, dtype=np.float64),
                          resolution_05_A=resolution_at(curve, n, angpix, 0.5),
                          resolution_0143_A=resolution_at(curve, n, angpix, 0.143), angpix=float(angpix),
                          hand_correlations={h: v[1] for h, v in best.items()})
    log.info("aligned: hand %+d, Euler (%.2f, %.2f, %.2f) deg, shift (%.2f, %.2f, %.2f) A, NCC %.3f, FSC 0.5 at %.1f A",
             hand, *result.euler, *shift_A, result.correlation, result.resolution_05_A)
    return result
