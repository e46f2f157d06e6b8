"""Numerical integration over orientations, CTF points and displacements (BioEM's Fourier variant).

For each image i, orientation o, CTF point c and displacement d the calculated image is the projection
P_o times the CTF kernel K_ic, shifted by d; the closed form of :mod:`cryopipe.bioem.likelihood` needs

    Cc  = Re P_o[0, 0] K_ic[0, 0]                             (matrix-free, per (o, i, c))
    Ccc = sum_k w_k |P_ok|^2 K_ick^2 / Np                     (one matrix product: (O x k) @ (k x IC))
    Cco(d) = irfft2(P_o K_ic conj(I_i))[d]                    (one inverse FFT per (o, i, c), all shifts)

with w the half-spectrum multiplicities. The log-likelihood of each grid point plus its log prior is summed
over the grid with a max-shifted log-sum-exp in float64; the maximising grid point (first strict maximum
in the order orientation, CTF, displacement) is kept.

MPI: ranks split the orientations (every rank holds all images) and :func:`reduce_ranks` combines their
partial sums with a max-shifted sum, as BioEM does. GPU: the inverse FFTs run in float32 on cuFFT and the
displacement gather, closed form and reductions in one fused kernel (:mod:`cryopipe.bioem.kernels`).

Cco(d) is only needed at the displacements: ``transform="pruned"`` (see :mod:`cryopipe.bioem.pruned`) evaluates
the inverse DFT at those rows and columns only, as folded real GEMMs per batch of grid points, instead of a full
inverse FFT; ``transform="factored"`` (:mod:`cryopipe.bioem.factored`, the default choice when the pruned DFT is
cheaper than the FFT and no orientation priors set the batches, :func:`orientation_batches`) does the same sums with the
CTF moved into the row matrices, batching orientations instead of grid points (measured faster than the folded
transform with mirror-symmetric and with per-image astigmatic kernels alike, benchmarks/RESULTS.md). The
numbers are the same to rounding. Sharing the images of a rank between the GPU and a CPU backend:
:mod:`cryopipe.bioem.split`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from cryopipe.bioem import pruned
from cryopipe.bioem.factored import FactoredTransform
from cryopipe.bioem.likelihood import log_kernel
from cryopipe.bioem.pruned import CorrelationTransform, FFTTransform, PrunedTransform
from cryopipe.fourier import hermitian_weights
from cryopipe.parallel import split_range
from cryopipe.progress import Progress

log = logging.getLogger(__name__)


@dataclass
class Problem:
    """Everything the integration needs, for one model.

    spectra : (I, N, N//2+1) complex device array, the images' rfft2 (in the layout of the projections).
    co, coo : (I,) float64 host, the images' sums of I and I^2 (real space).
    ctf : (1 or I, C, N, N//2+1) real device array, CTF kernels (shared by all images, or per image).
    ctf_log_prior : (1 or I, C) float64 host, log prior (times volume element) of each CTF point.
    shifts : (D, 2) int host, correlation indices (row, column) of the displacements, in loop order.
    n_orientations : O. project : (o_start, o_stop) -> (B, N, N//2+1) projection spectra on the device.
    orientation_log_prior : (I, O) float64 host or None; -inf skips an (image, orientation) pair.
    project_on : optional factory backend -> ``project`` on that backend (to score part of the images on a
    CPU backend beside the GPU, :mod:`cryopipe.bioem.split`); without it projections are copied over.
    """

    spectra: object
    co: np.ndarray
    coo: np.ndarray
    ctf: object
    ctf_log_prior: np.ndarray
    shifts: np.ndarray
    n_orientations: int
    project: Callable[[int, int], object]
    orientation_log_prior: np.ndarray | None = None
    project_on: Callable[[object], Callable[[int, int], object]] | None = None

    @property
    def n_images(self) -> int:
        return len(self.co)


@dataclass
class Result:
    """Per image (I,) float64/int arrays, before the image-independent constants.

    log_sum : ln sum over grid of exp(l + log priors). best_l : the largest l + log priors; best_orientation,
    best_ctf, best_shift : its indices (into the orientation list, CTF grid, shifts); best_cc, best_ccc,
    best_cco : the sums there (for N^ and mu^). orientation_log_sum : (I, O) per-orientation sums or None.
    """

    log_sum: np.ndarray
    best_l: np.ndarray
    best_orientation: np.ndarray
    best_ctf: np.ndarray
    best_shift: np.ndarray
    best_cc: np.ndarray
    best_ccc: np.ndarray
    best_cco: np.ndarray
    orientation_log_sum: np.ndarray | None = field(default=None)

    @classmethod
    def empty(cls, n_images: int, n_orientations: int | None) -> Result:
        f = np.full(n_images, -np.inf)
        z = np.zeros(n_images)
        i = np.full(n_images, -1, dtype=np.int64)
        orient = None if n_orientations is None else np.full((n_images, n_orientations), -np.inf)
        return cls(f, f.copy(), i, i.copy(), i.copy(), z, z.copy(), z.copy(), orient)

    def update(self, images, log_sum, best_l, orientation, ctf, shift, cc, ccc, cco) -> None:
        """Fold a later block (orientations after all seen so far) into this result, for ``images``."""
        old = self.log_sum[images]
        m = np.maximum(old, log_sum)
        finite = np.isfinite(m)
        total = np.where(finite, m + np.log(np.exp(np.where(finite, old - m, 0.0))
                                            + np.exp(np.where(finite, log_sum - m, 0.0))), -np.inf)
        self.log_sum[images] = total
        better = best_l > self.best_l[images]  # strict: the first maximum in loop order wins
        sel = images[better]
        self.best_l[sel] = best_l[better]
        for name, v in (("best_orientation", orientation), ("best_ctf", ctf), ("best_shift", shift),
                        ("best_cc", cc), ("best_ccc", ccc), ("best_cco", cco)):
            getattr(self, name)[sel] = v[better]


def _logsumexp(a, axis, xp):
    m = a.max(axis=axis)
    safe = xp.where(xp.isfinite(m), m, 0.0)
    s = xp.exp(a - xp.expand_dims(safe, axis)).sum(axis=axis)
    return xp.where(xp.isfinite(m), safe + xp.log(s), -xp.inf)


def _ctf_sums(P, K, bk):
    """Cc (B, Ik, C) and Ccc (B, Ik, C) float64 for projections P (B, N, H) and kernels K (Ik, C, N, H)."""
    xp = bk.xp
    n = P.shape[-2]
    w = bk.asarray(hermitian_weights(n), dtype=xp.float64) / (n * n)
    p2 = ((P.real.astype(xp.float64) ** 2 + P.imag.astype(xp.float64) ** 2) * w).reshape(len(P), -1)
    k2 = (K.astype(xp.float64) ** 2).reshape(-1, p2.shape[1])
    ccc = (p2 @ k2.T).reshape(len(P), *K.shape[:2])
    cc = P[:, 0, 0].real.astype(xp.float64)[:, None, None] * K[:, :, 0, 0].astype(xp.float64)[None]
    return cc, ccc


def score_block(prob: Problem, P, images, bk, fused, keep_orientations: bool, o_start: int,
                transform: CorrelationTransform | None = None) -> dict:
    """Grid points of orientations P (B, N, H) x the given images; returns per-image block results (host).

    transform : the :class:`~cryopipe.bioem.pruned.CorrelationTransform` that computes the correlations (default
    :class:`~cryopipe.bioem.pruned.FFTTransform`), read at the displacements (loop order) by its ``at_shifts`` or
    by the fused kernel. fused : the reduction of :func:`cryopipe.bioem.kernels.fused_reduction` or None (array
    code). Returns a dict of (ni,) arrays: log_sum, best_l, orientation (within the block), ctf, shift, cc, ccc,
    cco, and per_orientation (ni, B) when ``keep_orientations``.
    """
    xp = bk.xp
    n = P.shape[-2]
    b, ni = len(P), len(images)
    idx = bk.asarray(images)
    shared = prob.ctf.shape[0] == 1
    K = prob.ctf if shared else prob.ctf[idx]  # (1 or ni, C, N, H)
    c = K.shape[1]
    cc, ccc = (xp.broadcast_to(a, (b, ni, c)) for a in _ctf_sums(P, K, bk))
    if transform is None:
        transform = FFTTransform(n, prob.shifts, bk)
    corr = transform.correlate(P, K, xp.conj(prob.spectra[idx]), shared)
    prior = bk.asarray(prob.ctf_log_prior[images if len(prob.ctf_log_prior) > 1 else np.zeros(ni, int)])
    prior = xp.broadcast_to(prior[None], (b, ni, c))
    if prob.orientation_log_prior is not None:
        prior = prior + bk.asarray(prob.orientation_log_prior[images, o_start:o_start + b].T)[:, :, None]
    co, coo = (bk.asarray(a[images])[None, :, None] for a in (prob.co, prob.coo))
    if fused is not None:
        return fused(transform, corr, co, coo, cc, ccc, prior, n * n, keep_orientations)
    cco = transform.at_shifts(corr).astype(xp.float64)  # (B, ni, C, D)
    l = log_kernel(co[..., None], coo[..., None], cc[..., None], ccc[..., None], cco, n * n) + prior[..., None]
    lt = xp.moveaxis(l, 1, 0).reshape(ni, -1)  # (ni, B*C*D): orientation, CTF, shift order
    arg = xp.argmax(lt, axis=1)
    d = len(prob.shifts)
    o, rest = arg // (c * d), arg % (c * d)
    ci, si = rest // d, rest % d
    rows = xp.arange(ni)
    out = dict(log_sum=_logsumexp(lt, 1, xp), best_l=lt[rows, arg], orientation=o, ctf=ci, shift=si,
               cc=cc[o, rows, ci], ccc=ccc[o, rows, ci], cco=cco[o, rows, ci, si])
    out = {k: bk.asnumpy(v) for k, v in out.items()}
    if keep_orientations:
        out["per_orientation"] = bk.asnumpy(_logsumexp(l.reshape(b, ni, -1), 2, xp)).T  # (ni, B)
    return out


def integrate(prob: Problem, bk, comm=None, keep_orientations: bool = False, fused: bool | None = None,
              memory_fraction: float = 0.3, transform: str = "auto", stats: dict | None = None,
              progress: Progress | None = None) -> Result:
    """Integrate this rank's share of the orientations for all images (see module docstring).

    fused : use the GPU kernel for the displacement reduction (default: on the GPU). transform : "fft" (one
    inverse FFT per grid point), "pruned" (the inverse DFT at the displacements only, as GEMMs, exploiting
    exact zeros of the spectra outside a band), "factored" (the same with the CTF in the GEMMs' matrices,
    batching up to 256 orientations, 1,024 with per-image CTF kernels) or "auto" (fft or pruned by the cost
    model of :mod:`cryopipe.bioem.pruned`, pruned as factored unless there are orientation priors); all give the
    same numbers to rounding.
    stats : a dict that receives the transform used and its counts.
    progress : told each batch's orientations as steps (:class:`cryopipe.progress.Progress`).
    Returns this rank's :class:`Result` (combine ranks with :func:`reduce_ranks`).
    """
    from cryopipe.bioem.kernels import fused_reduction

    rank, size = (0, 1) if comm is None else (comm.Get_rank(), comm.Get_size())
    mine = split_range(prob.n_orientations, rank, size)
    res = Result.empty(prob.n_images, prob.n_orientations if keep_orientations else None)
    fused_fn = fused_reduction(bk) if (bk.is_gpu if fused is None else fused) else None
    n = prob.spectra.shape[-2]
    c = prob.ctf.shape[1]
    if transform not in ("auto", "fft", "pruned", "factored"):
        raise ValueError(f"transform must be auto, fft, pruned or factored, got {transform!r}")
    # the pruned DFT is factored unless orientation priors set the batches (orientation_batches)
    factored = transform == "factored" or (transform == "auto" and prob.orientation_log_prior is None)
    # blocks sized by the factored transform's needs, else by the FFT path's (PrunedTransform keeps those defaults)
    real = np.float32 if prob.spectra.dtype.itemsize == 8 else np.float64
    sizing = FactoredTransform(n, prob.shifts, bk, real) if factored else FFTTransform(n, prob.shifts, bk)
    shared = prob.ctf.shape[0] == 1
    item = sizing.bytes_per_pair(c)  # bytes per (orientation, image) pair and per image's own matrices
    per_image = 0 if shared else sizing.bytes_per_kernel_image(c)
    o_cap = sizing.max_orientations(shared)
    budget = bk.free_bytes() * memory_fraction  # one image's matrices and o_step orientations must fit
    o_step = int(max(1, min(mine.stop - mine.start, o_cap, (budget - per_image) // item)))
    i_steps: dict[int, int] = {}  # images per block, by the number of orientations in the batch
    shared_mask = None  # where the CTF kernels and the image spectra can be non-zero (band limit)
    if transform != "fft":
        shared_mask = pruned.support_mask(prob.ctf, bk, (0, 1)) & pruned.support_mask(prob.spectra, bk, 0)
    transforms: dict = {}
    for o0, o1 in orientation_batches(prob.orientation_log_prior, mine.start, mine.stop, o_step):
        P = prob.project(o0, o1)
        tr = _transform_for(transform, factored, P, shared_mask, prob, bk, transforms)
        active = np.arange(prob.n_images)
        if prob.orientation_log_prior is not None:
            active = active[np.isfinite(prob.orientation_log_prior[:, o0:o1]).any(axis=1)]
        if o1 - o0 not in i_steps:
            i_steps[o1 - o0] = bk.batch_size((o1 - o0) * item + per_image, fraction=memory_fraction)
        i_step = i_steps[o1 - o0]
        for i0 in range(0, len(active), i_step):
            images = active[i0:i0 + i_step]
            out = score_block(prob, P, images, bk, fused_fn, keep_orientations, o0, tr)
            res.update(images, out["log_sum"], out["best_l"], out["orientation"] + o0, out["ctf"], out["shift"],
                       out["cc"], out["ccc"], out["cco"])
            if keep_orientations:
                res.orientation_log_sum[images, o0:o1] = out["per_orientation"]
        log.debug("orientations %d-%d of %d done", o0, o1, prob.n_orientations)
        if progress is not None:
            progress.step(n=o1 - o0)
    if stats is not None and transforms:
        stats.update(next(reversed(transforms.values())).stats())
    return res


def orientation_batches(log_prior: np.ndarray | None, start: int, stop: int, cap: int) -> list[tuple[int, int]]:
    """Batches [o0, o1) of the orientations [start, stop), at most ``cap`` each.

    Without priors, consecutive runs of ``cap``. With (I, O) priors a batch holds consecutive orientations that
    the same images may see (the same pattern of finite priors), so no (image, orientation) pair outside the
    priors is scored: scattered priors give one orientation per batch, a local grid (each particle's own block
    of orientations, :mod:`cryopipe.bioem.local`) one particle's block.
    """
    if stop <= start:
        return []
    if log_prior is None:
        return [(o, min(stop, o + cap)) for o in range(start, stop, cap)]
    keys = np.packbits(np.isfinite(log_prior[:, start:stop]), axis=0)  # one column of bits per orientation
    new = np.ones(stop - start, dtype=bool)
    new[1:] = (keys[:, 1:] != keys[:, :-1]).any(axis=0)
    runs = np.append(np.flatnonzero(new), stop - start) + start
    return [(o, min(b, o + cap)) for a, b in zip(runs[:-1], runs[1:], strict=True) for o in range(a, b, cap)]


def _transform_for(kind: str, factored: bool, P, shared_mask, prob: Problem, bk, cache: dict) -> CorrelationTransform:
    """The correlation transform of ``kind`` for projections P: FFT, or the pruned DFT (``factored`` or folded)
    on the rows/columns where the product P K conj(I) can be non-zero (cached per support pattern)."""
    n = P.shape[-2]
    real = np.float32 if P.dtype.itemsize == 8 else np.float64
    if kind == "fft":
        key = "fft"
    else:
        mask = shared_mask & pruned.support_mask(P, bk, 0)
        if pruned.choose("auto" if kind == "auto" else "pruned", n, prob.shifts, bk, mask) == "fft":
            key, mask = "fft", None
        else:
            rows, cols = mask.any(axis=1), mask.any(axis=0)
            key = (factored, rows.tobytes(), cols.tobytes())
            mask = rows[:, None] & cols[None]
    if key not in cache:
        if key == "fft":
            cache[key] = FFTTransform(n, prob.shifts, bk)
        else:
            cache[key] = (FactoredTransform if key[0] else PrunedTransform)(n, prob.shifts, bk, real, mask)
    return cache[key]


def reduce_ranks(res: Result, comm) -> Result:
    """Combine the ranks' results (orientations split over ranks) on every rank, by a max-shifted sum."""
    if comm is None or comm.Get_size() == 1:
        return res
    parts = comm.allgather(res)  # rank order = orientation order
    out = parts[0]
    for part in parts[1:]:
        out.update(np.arange(len(out.log_sum)), part.log_sum, part.best_l, part.best_orientation, part.best_ctf,
                   part.best_shift, part.best_cc, part.best_ccc, part.best_cco)
        if out.orientation_log_sum is not None:
            out.orientation_log_sum = np.maximum(out.orientation_log_sum, part.orientation_log_sum)
    return out
