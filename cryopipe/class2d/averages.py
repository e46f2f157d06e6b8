"""Class sums and averages: exact accumulation, Wiener or plain averaging, re-centring, FRC resolution.

Sums are accumulated per class and group in 64-bit fixed point (units of 2**-32), so they are exact: the
result does not depend on the order of the particles, on the batch size or on how the particles are split
across MPI ranks, and 2 ranks give bitwise the same averages as one. (|values| * particles must stay below
2**31, far above normalised images.) The 4 groups of a class cross the half-sets (even and odd global
particle index; for the FRC) with the low-score flag (score below the class's previous mean; for splitting
a class into its better- and worse-fitting particles).
"""

from __future__ import annotations

import numpy as np

from cryopipe.backend import Backend
from cryopipe.fourier import fsc, resolution_at, shift_phase
from cryopipe.parallel import allreduce_sum

FIXED_SCALE = 2.0**32


def _to_fixed(values, xp):
    return xp.rint(values.astype(xp.float64) * FIXED_SCALE).astype(xp.int64)


def _segment_sum(values, labels, n_labels: int, xp):
    """Per-label sums of integer ``values`` (B, L) for ``labels`` (B,) in [0, n_labels): (n_labels, L) int64."""
    order = xp.argsort(labels)
    lab = labels[order]
    cumulative = xp.cumsum(values[order], axis=0)
    last = xp.nonzero(xp.concatenate([lab[1:] != lab[:-1], xp.ones(1, dtype=bool)]))[0]
    seg = cumulative[last]
    seg[1:] -= cumulative[last[:-1]]
    out = xp.zeros((n_labels,) + values.shape[1:], dtype=xp.int64)
    out[lab[last]] = seg
    return out


class ClassSums:
    """Exact sums of aligned images (and, for Wiener averaging, aligned CTF^2) per class and group.

    n_classes : K. box : N. with_ctf : also sum CTF^2 (centred full grids, see :func:`class_averages`).
    Device arrays accumulate on ``bk``; counts and score sums on the host. Row ``4 k + 2 low + half``.
    """

    def __init__(self, n_classes: int, box: int, bk: Backend, with_ctf: bool = False):
        xp = bk.xp
        self.n_classes, self.box, self.bk = n_classes, box, bk
        self.images = xp.zeros((4 * n_classes, box * box), dtype=xp.int64)
        self.ctf2 = xp.zeros_like(self.images) if with_ctf else None
        self.count = np.zeros(4 * n_classes, dtype=np.int64)
        self.score = np.zeros(4 * n_classes, dtype=np.int64)

    def add(self, aligned, classes: np.ndarray, halves: np.ndarray, low: np.ndarray, scores: np.ndarray,
            ctf2=None) -> None:
        """Add a batch: aligned (B, N, N) device images; host arrays classes (B,), halves (B,) in {0, 1},
        low (B,) bool, scores (B,); ctf2 (B, N, N) aligned centred CTF^2 when summing for Wiener averages."""
        xp = self.bk.xp
        labels = 4 * np.asarray(classes, dtype=np.int64) + 2 * np.asarray(low, dtype=np.int64) + halves
        dev_labels = self.bk.asarray(labels)
        n = 4 * self.n_classes
        self.images += _segment_sum(_to_fixed(aligned.reshape(len(labels), -1), xp), dev_labels, n, xp)
        if self.ctf2 is not None:
            self.ctf2 += _segment_sum(_to_fixed(ctf2.reshape(len(labels), -1), xp), dev_labels, n, xp)
        self.count += np.bincount(labels, minlength=n)
        np.add.at(self.score, labels, _to_fixed(np.asarray(scores), np))

    def allreduce(self, comm) -> None:
        """Sum over MPI ranks (exact); afterwards all arrays are on the host."""
        self.images = allreduce_sum(comm, self.bk.asnumpy(self.images).copy())
        if self.ctf2 is not None:
            self.ctf2 = allreduce_sum(comm, self.bk.asnumpy(self.ctf2).copy())
        allreduce_sum(comm, self.count)
        allreduce_sum(comm, self.score)

    def sizes(self) -> np.ndarray:
        """(K,) particles per class."""
        return self.count.reshape(-1, 4).sum(1)

    def mean_scores(self) -> np.ndarray:
        """(K,) mean score per class (NaN for an empty class)."""
        total = self.score.reshape(-1, 4).sum(1) / FIXED_SCALE
        size = self.sizes()
        return np.where(size > 0, total / np.maximum(size, 1), np.nan)


def _subsets(a: np.ndarray) -> np.ndarray:
    """Per-class group values (K, 2 low, 2 half, ...) -> (K, 5, ...): all, half 0, half 1, high, low."""
    return np.concatenate([a.sum((1, 2))[:, None], a.sum(1), a.sum(2)], axis=1)


def class_averages(sums: ClassSums, wiener_snr: float | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Averages (K, N, N), half-set averages (K, 2, N, N) and high/low-score averages (K, 2, N, N): float64
    host arrays, zeros where a subset is empty.

    Plain: sum / count. Wiener (``sums.ctf2`` present): irfft2(rfft2(sum CTF x) / (sum CTF^2 + 1/wiener_snr)),
    where ``x`` are phase-flipped particles multiplied by |CTF| (i.e. CTF x the raw particle).
    """
    k, n = sums.n_classes, sums.box
    images = _subsets(np.asarray(sums.images, dtype=np.float64).reshape(k, 2, 2, n, n) / FIXED_SCALE)
    if sums.ctf2 is None:
        count = _subsets(sums.count.reshape(k, 2, 2).astype(np.float64))
        out = images / np.maximum(count, 1)[..., None, None]
    else:
        ctf2 = _subsets(np.asarray(sums.ctf2, dtype=np.float64).reshape(k, 2, 2, n, n) / FIXED_SCALE)
        den = np.fft.ifftshift(ctf2, axes=(-2, -1))[..., : n // 2 + 1] + 1.0 / wiener_snr
        out = np.fft.irfft2(np.fft.rfft2(images) / den, s=(n, n))
    return out[:, 0], out[:, 1:3], out[:, 3:5]


def shift_images(images: np.ndarray, shift_px: np.ndarray) -> np.ndarray:
    """Move real images (..., N, N) by ``shift_px`` (..., 2) (sx, sy) px (sub-pixel, Fourier); same shape."""
    n = images.shape[-1]
    return np.fft.irfft2(shift_phase(np.fft.rfft2(images), shift_px, n), s=(n, n))


def frc_resolution(halves: np.ndarray, mask: np.ndarray, angpix: float, threshold: float = 0.143) -> np.ndarray:
    """(K,) resolution in Angstrom where the FRC of the masked half-set averages (K, 2, N, N) falls below
    ``threshold`` (inf where a half is empty). The halves share references, so this is an optimistic estimate."""
    n = halves.shape[-1]
    curves = fsc(halves[:, 0] * mask, halves[:, 1] * mask, ndim=2)
    empty = ~(np.abs(halves).reshape(len(halves), 2, -1).max(-1) > 0).all(1)
    return np.array([np.inf if e else resolution_at(c, n, angpix, threshold) for c, e in zip(curves, empty,
                                                                                               strict=True)])
