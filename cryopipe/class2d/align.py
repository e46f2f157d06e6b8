"""Multi-reference alignment by rotational cross-correlation of polar spectra (Cryo-RALib / EMAN2 RPC).

Model and conventions (RELION's in-plane convention, see :mod:`cryopipe.geometry`): a particle matching
reference ``ref`` is ``particle = shift(rotate(F ref, psi), s)``, where

* ``rotate(img, psi)(p) = img(A(psi)^T p)`` with ``A(psi) = [[cos psi, sin psi], [-sin psi, cos psi]]``, the
  2D part of RELION's ``Euler_angles2matrix(0, 0, psi)``: the reference's point ``q`` appears at ``A(psi) q``.
  This is RELION's rlnAnglePsi for 2D classes, and a particle simulated with Euler angles (rot, tilt, psi)
  gets psi back (up to its class average's own in-plane rotation);
* ``F`` is the identity, or with ``mirror`` the flip ``x -> -x`` about the centre column (applied first);
* ``shift(img, s)(p) = img(p - s)`` moves the content by ``s = (sx, sy)`` px. RELION's origin is the
  translation that re-centres the particle: ``rlnOriginX/YAngst = -s * angpix``.

Score: the normalised cross-correlation (NCC, in [-1, 1]) over the disc of the polar grid with the area
element ``r dr dtheta``, after removing each image's disc mean. For every particle, trial shift and
reference it comes for all P angles at once:

    c(psi_j) = sum_r r sum_theta x_s(r, theta) y(r, theta + psi_j) = irfft_m( sum_r r conj(X_s[r, m]) Y[r, m] )

where ``X_s`` and ``Y`` are FFTs along the angle of the polar samples of the particle translated by ``-s``
and of the reference. The sum over rings is one batched matrix product per angular frequency ``m``:
``(mirrors x references, rings) @ (rings, shifts x particles)``, computed as ``r conj(Y) @ X`` (which gives
c at -psi, so no copy of X is conjugated). A mirrored particle needs no resampling: its spectrum is
``(-1)^m conj(X[m])``, so its correlations come from the same X with ``r (-1)^m Y`` as the left operand.
The best (reference, shift, mirror, angle) is refined by parabolas through the neighbouring angles and shifts
(not beyond the outermost trial shifts: choose a range a little larger than the expected displacements).
Arrays keep the particle index fastest (samples (P, R, S, B)), so gathers and reductions stream.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cryopipe.backend import Backend
from cryopipe.class2d.polar import PolarGrid, PolarSampler
from cryopipe.errors import InputError


@dataclass
class Alignment:
    """Best match per particle (host arrays of length B).

    ref : int64 reference index. psi : float64 degrees in (-180, 180]. shift : (B, 2) float64 (sx, sy) px,
    the particle's displacement (RELION origin = -shift * angpix). mirror : bool. score : float32 NCC.
    """

    ref: np.ndarray
    psi: np.ndarray
    shift: np.ndarray
    mirror: np.ndarray
    score: np.ndarray

    @classmethod
    def concat(cls, parts: list[Alignment]) -> Alignment:
        fields = ("ref", "psi", "shift", "mirror", "score")
        return cls(*(np.concatenate([getattr(p, f) for p in parts]) for f in fields))

    @classmethod
    def empty(cls) -> Alignment:
        return cls(np.empty(0, np.int64), np.empty(0), np.empty((0, 2)), np.empty(0, bool), np.empty(0, np.float32))

    def __len__(self) -> int:
        return len(self.ref)


def shift_grid(shift_range: float, shift_step: float) -> np.ndarray:
    """The square grid of trial shifts: (S, 2) as (sx, sy) px, sy major, symmetric about 0.

    Offsets per axis are ``shift_step * (-n..n)`` with ``n = floor(shift_range / shift_step)``.
    """
    if shift_range < 0:
        raise InputError(f"must be >= 0, got {shift_range}", field="--shift-range")
    if shift_range > 0 and not 0 < shift_step <= shift_range:
        raise InputError(f"must lie in (0, shift range {shift_range:g}], got {shift_step}", field="--shift-step")
    n = int(np.floor(shift_range / shift_step + 1e-9)) if shift_range > 0 else 0
    offsets = shift_step * np.arange(-n, n + 1, dtype=np.float64)
    sy, sx = np.meshgrid(offsets, offsets, indexing="ij")
    return np.stack([sx.ravel(), sy.ravel()], axis=1)


def _parabola(cm, c0, cp, xp):
    """Sub-sample offset in [-0.5, 0.5] of the vertex of the parabola through (-1, cm), (0, c0), (1, cp)."""
    den = cm - 2.0 * c0 + cp
    curved = den < 0
    return xp.where(curved, xp.clip(0.5 * (cm - cp) / xp.where(curved, den, -1.0), -0.5, 0.5), 0.0)


class Aligner:
    """Aligns particle batches to a set of references on one device.

    grid : polar grid. box : image size N (px). shift_range, shift_step : trial shifts in px (see
    :func:`shift_grid`). mirrors : also try mirrored particles.
    """

    def __init__(self, grid: PolarGrid, box: int, shift_range: float, shift_step: float, bk: Backend,
                 mirrors: bool = False):
        self.grid, self.box, self.bk, self.mirrors = grid, box, bk, mirrors
        self.shifts = shift_grid(shift_range, shift_step)
        self.shift_step = shift_step
        self._side = int(round(np.sqrt(len(self.shifts))))
        self._particles = PolarSampler(grid, self.shifts, box, bk)
        self._refs = PolarSampler(grid, np.zeros((1, 2)), box, bk)
        xp = bk.xp
        m = grid.n_angles // 2 + 1
        self._w = bk.asarray(grid.radii, dtype=xp.float32)
        self._alt = bk.asarray((-1.0) ** np.arange(m), dtype=xp.float32)

    @property
    def n_shifts(self) -> int:
        return len(self.shifts)

    @property
    def n_flips(self) -> int:
        return 2 if self.mirrors else 1

    def _spectra(self, samples):
        """Polar samples (P, R, S, B) -> angular spectra (M, R, S, B) complex64, each (shift, image) with its
        weighted disc mean removed and unit weighted norm (sum_r r sum_theta x^2 = 1).

        Mean and norm come from the real samples (sum_r r sum_theta x and x^2), the scaling is applied
        before the FFT and the mean to the m = 0 term after it: fewer passes over the large arrays.
        """
        xp = self.bk.xp
        p, w = self.grid.n_angles, self._w
        total = p * w.sum()
        mean = xp.tensordot(w, samples.sum(axis=0), axes=(0, 0)) / total  # (S, B)
        norm2 = xp.tensordot(w, (samples * samples).sum(axis=0), axes=(0, 0)) - total * mean * mean
        scale = 1.0 / xp.sqrt(xp.where(norm2 > 0, norm2, 1.0))
        spec = self.bk.fft.rfft(samples * scale, axis=0).astype(xp.complex64, copy=False)
        spec[0] -= p * mean * scale
        return spec

    def references(self, refs):
        """References (K, N, N) real on the device -> (M, F*K, R) complex64 left operand of the ring contraction:
        ``r conj(Y)`` (and ``r (-1)^m Y`` for mirrored particles)."""
        xp = self.bk.xp
        spec = self._spectra(self._refs(refs))[:, :, 0]  # (M, R, K)
        spec *= self._w[None, :, None]
        spec = spec.transpose(0, 2, 1)  # (M, K, R)
        parts = [spec.conj()] + ([spec * self._alt[:, None, None]] if self.mirrors else [])
        return xp.ascontiguousarray(xp.concatenate(parts, axis=1))

    def scores(self, images, refs_ft):
        """Raw correlations (P, F*K, S, B) float32 of every angle x (mirror, reference) x shift x particle.

        images : (B, N, N) masked particles on the device. refs_ft : from :meth:`references`. Entry ``j`` of
        the unmirrored block (f = 0) is the NCC at psi = -j * step (it correlates X with conj(Y), the reverse
        of c(psi)); of the mirrored block, the NCC of the flipped particle at psi = +j * step. Either way the
        recorded psi (:class:`Alignment`) is ``-j * step``.
        """
        xp = self.bk.xp
        b = images.shape[0]
        spec = self._spectra(self._particles(images))  # (M, R, S, B)
        m, r = spec.shape[:2]
        c = xp.matmul(refs_ft, spec.reshape(m, r, -1))  # (M, F*K, S*B): the contraction over rings
        out = self.bk.fft.irfft(c, n=self.grid.n_angles, axis=0).astype(xp.float32, copy=False)
        return out.reshape(self.grid.n_angles, refs_ft.shape[1], self.n_shifts, b)

    def align(self, images, refs_ft) -> Alignment:
        """Best reference, angle, shift and mirror of each particle (B, N, N) -> :class:`Alignment`."""
        xp, bk = self.bk.xp, self.bk
        cc = self.scores(images, refs_ft)
        p, fk, ns, b = cc.shape
        cols = xp.arange(b)
        table = cc.max(axis=0)  # (F*K, S, B): best over angles
        best = xp.argmax(table.reshape(fk * ns, b), axis=0)
        g, s = best // ns, best % ns  # g = f * K + k
        column = cc.reshape(p, -1)[:, (g * ns + s) * b + cols]  # (P, B) at the best (mirror, reference, shift)
        j = xp.argmax(column, axis=0)
        top = column[j, cols]
        dj = _parabola(column[(j - 1) % p, cols], top, column[(j + 1) % p, cols], xp)
        side = self._side
        iy, ix = s // side, s % side
        offsets = []
        for i, di, dx in ((ix, 0, 1), (iy, 1, 0)):
            lo = xp.clip(iy - di, 0, side - 1) * side + xp.clip(ix - dx, 0, side - 1)
            hi = xp.clip(iy + di, 0, side - 1) * side + xp.clip(ix + dx, 0, side - 1)
            d = _parabola(table[g, lo, cols], top, table[g, hi, cols], xp)
            offsets.append(xp.where((i > 0) & (i < side - 1), d, 0.0))
        k = refs_ft.shape[1] // self.n_flips
        g, s = bk.asnumpy(g), bk.asnumpy(s)
        psi = -(bk.asnumpy(j) + bk.asnumpy(dj)) * self.grid.step_deg
        shift = self.shifts[s] + self.shift_step * np.stack([bk.asnumpy(o) for o in offsets], axis=1)
        return Alignment((g % k).astype(np.int64), 180.0 - np.mod(180.0 - psi, 360.0), shift.astype(np.float64),
                         g >= k, bk.asnumpy(top).astype(np.float32))

    def flops(self, n_particles: int, n_refs: int) -> float:
        """Real floating-point operations of the ring contraction (complex multiply-add = 8) for a pass."""
        m = self.grid.n_angles // 2 + 1
        return 8.0 * m * n_particles * self.n_flips * self.n_shifts * self.grid.n_rings * n_refs

    def bytes_per_particle(self, n_refs: int) -> int:
        """Device memory one particle of a batch needs in :meth:`align` (an upper estimate)."""
        s, r, p, f = self.n_shifts, self.grid.n_rings, self.grid.n_angles, self.n_flips
        m = p // 2 + 1
        return int(4 * p * r * s * 3 + 8 * m * r * s * 2 + f * n_refs * s * (8 * m * 2 + 4 * p * 2 + 4))
