"""E-step of RELION's regularised likelihood optimisation, as matrix products (RELION-2 / GeRelion on GPUs).

For particle spectrum X (shifted by its previous origin), CTF C, noise power sigma2(shell) and the central
slice P of class k in orientation phi, the score of translation t is

    diff2 = sum_p w_p |X_p e_t,p - C_p P_p|^2,   w_p = 1 / (2 sigma2(shell(p)))  (0 at the origin)
          = x2 - sum_p Re[(2 w C X e_t)_p conj(P_p)] + sum_p (w C^2)_p |P_p|^2

over the Fourier pixels p within the current resolution limit ``r_max``. The cross term is one real matrix
product (particles x translations, 2 n_pix) @ (2 n_pix, classes x orientations) of the stacked real and
imaginary parts; the CTF^2 term is (particles, n_pix) @ (n_pix, classes x orientations). The log posterior
adds log class priors, the Gaussian translation prior on the total origin and, for local searches, a Gaussian
prior on the angle to the previous orientation.

Passes (RELION's adaptive oversampling): a coarse pass over all orientations x translations (or, in local
searches, over the orientations near each particle's previous one), then a fine pass over the children of
the coarse samples holding the top ``significant`` fraction of the posterior. M-step sums come from the fine
weights above their own 99.9% threshold: for each fine orientation the weighted data sum_{i,t} w C X e_t and
weights sum_i w C^2 (both times 1/sigma2) are scatter-added per orientation, then back-projected once per
orientation (times the symmetry operators); sigma2, class and offset sums are accumulated alongside.

Units: translations and origins in pixels of the particle box N; frequencies in cycles per box (the same in
any Fourier-cropped working box, whose pixel size is angpix * N / n_work).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
from scipy.sparse import csr_matrix

from cryopipe.ctf import ctf_2d
from cryopipe.em3d.particles import ParticleSet
from cryopipe.em3d.sampling import ORIENTATION_CHILDREN, TRANSLATION_CHILDREN, OrientationGrid, fine_translations
from cryopipe.fourier import fourier_crop, fourier_pad
from cryopipe.geometry import euler_to_direction, healpix_directions, matrix_to_euler
from cryopipe.projection import BackProjector, Projector

log = logging.getLogger(__name__)


@dataclass
class SearchSpace:
    """What the E-step searches.

    grid : coarse orientations and their children. translations : (T, 2) coarse translations, px, relative to
    each particle's previous origin. offset_step : px. local_sigma_deg : None for global searches, else the s.d.
    of the Gaussian prior on the angle to the previous orientation (samples beyond 3 s.d. are skipped).
    significant : posterior mass kept by the coarse pass. max_significant : cap on coarse samples per particle
    (RELION's --maxsig; bounds the fine pass when low-resolution posteriors are broad). min_significant : coarse
    samples every particle keeps at least (the best ones): a coarse sample up to half a step from the truth can
    score well below a wrong one, so the coarse posterior's 99.9% alone misses the right region for some
    particles (measured: the best sample within 12 deg of the truth ranked <= 20 for ~95% of those).
    symmetry_ops : (G, 3, 3) operators applied in back-projection. particle_diameter_A : sets the coarse pass's
    resolution limit (:func:`coarse_limit`); None = the coarse pass uses the full limit ``r_max``.
    """

    grid: OrientationGrid
    translations: np.ndarray
    offset_step: float
    local_sigma_deg: float | None = None
    significant: float = 0.999
    max_significant: int = 500
    min_significant: int = 20
    symmetry_ops: np.ndarray = field(default_factory=lambda: np.eye(3)[None])
    particle_diameter_A: float | None = None


@dataclass
class EStepResult:
    """Per particle (aligned with the indices given): best class (0-based), Euler angles (deg), origin (px),
    log-likelihood, maximum posterior probability, number of significant coarse samples; and the sums the
    M-step needs: two back-projectors per class (``backprojectors[k][h]``, particle half h), ``sigma2_sum``
    (G, N//2+1) and ``sigma2_count`` (G, N//2+1)
    (weighted |X - C P|^2 and weighted pixel counts per shell), ``class_weight`` (K,), ``offset2_sum``
    (sum of w |origin|^2 in px^2) and ``n`` (particles)."""

    best_class: np.ndarray
    euler: np.ndarray
    origin_px: np.ndarray
    loglik: np.ndarray
    max_prob: np.ndarray
    n_significant: np.ndarray
    backprojectors: list
    sigma2_sum: np.ndarray
    sigma2_count: np.ndarray
    class_weight: np.ndarray
    offset2_sum: float
    n: int


def working_box(box: int, r_max: int) -> int:
    """Even Fourier-cropped box holding frequencies up to ``r_max`` with a margin of 2 px (at most ``box``)."""
    return int(min(box, 2 * (int(r_max) + 2)))


def coarse_limit(sampling_deg: float, diameter_A: float | None, box: int, angpix: float, r_max: int) -> int:
    """Resolution limit (Fourier px) of the coarse pass (RELION's coarse_size).

    A coarse sample is up to half a step from the true orientation; at frequencies where that moves the
    particle's rim by a sizeable part of a period, coarse scores measure sampling error rather than fit. One step
    moves the rim by ``arc = sampling_deg / 360 * pi * diameter_A``; as RELION, the coarse pass stops at a
    resolution of arc / 1.2. Measured with the true map as reference (40 px, 4 A/px, SNR 0.3, HEALPix order 2):
    scoring the coarse pass at the full limit left 17% of particles more than 30 deg off, this limit 8%, and
    with :attr:`SearchSpace.min_significant` 20 as well, 4% (a twice lower coarse limit gave no further gain).
    """
    if diameter_A is None:
        return int(r_max)
    coarse_resolution_A = sampling_deg / 360.0 * np.pi * diameter_A / 1.2
    return int(min(r_max, max(2, np.ceil(box * angpix / coarse_resolution_A))))


def crop_map(volume, n_work: int):
    """Map (N, N, N) -> (n, n, n) whose rfftn holds the same Fourier coefficients (cropped)."""
    n = volume.shape[-1]
    return volume if n_work == n else fourier_crop(volume, n_work, ndim=3) * (n / n_work) ** 3


def pad_map(volume, box: int):
    """Inverse of :func:`crop_map`: zero-pad the Fourier coefficients of an (n, n, n) map to ``box``."""
    n = volume.shape[-1]
    return volume if box == n else fourier_pad(volume, box, ndim=3) * (n / box) ** 3


class FourierPixels:
    """The half-plane pixels within ``r_max``: (kx, ky) integers, shells, flat indices in box ``n`` and ``n_work``.

    Pixels are ordered by shell, so those within a lower limit r are the first ``count_within(r)``.
    """

    def __init__(self, box: int, n_work: int, r_max: int):
        ky = np.fft.fftfreq(box, 1.0 / box).astype(np.int64)
        kx = np.arange(box // 2 + 1)
        kyy, kxx = np.meshgrid(ky, kx, indexing="ij")
        keep = kxx**2 + kyy**2 <= r_max**2
        kx, ky = kxx[keep], kyy[keep]
        order = np.argsort(kx**2 + ky**2, kind="stable")
        self.kx, self.ky = kx[order], ky[order]
        self.n_pix = int(keep.sum())
        self.shell = np.rint(np.hypot(self.kx, self.ky)).astype(np.int64)
        self.flat = (self.ky % box) * (box // 2 + 1) + self.kx
        self.flat_work = (self.ky % n_work) * (n_work // 2 + 1) + self.kx
        self.box, self.n_work = box, n_work

    def count_within(self, r: float) -> int:
        """Number of leading pixels with kx^2 + ky^2 <= r^2."""
        return int(np.count_nonzero(self.kx**2 + self.ky**2 <= r * r))

    def phases(self, shifts_px, xp):
        """(S, n_pix) complex64 factors exp(-2 pi i k.s / N) that shift images by +s (px of box N), computed in
        double precision on the device of ``xp``."""
        s = xp.asarray(np.asarray(shifts_px, dtype=np.float64).reshape(-1, 2))
        kx, ky = xp.asarray(self.kx, dtype=xp.float64), xp.asarray(self.ky, dtype=xp.float64)
        ang = (-2 * np.pi / self.box) * (s[:, :1] * kx[None] + s[:, 1:] * ky[None])
        return (xp.cos(ang) + 1j * xp.sin(ang)).astype(xp.complex64)


def project_pixels(projector: Projector, rotations, kxy, bk):
    """Central-slice values (B, n_pix) complex64 at pixels ``kxy`` (n_pix, 2) float32 (device) for (B, 3, 3)."""
    xp = bk.xp
    rot = np.asarray(rotations, dtype=np.float64).reshape(-1, 3, 3)
    out = xp.empty((len(rot), kxy.shape[0]), dtype=xp.complex64)
    step = max(1, min(4096, bk.batch_size(200 * kxy.shape[0], fraction=0.1)))
    for b0 in range(0, len(rot), step):
        out[b0 : b0 + step] = projector.slice_values(rot[b0 : b0 + step], kxy)
    return out


def orientation_cell(rotations) -> np.ndarray:
    """(B,) int cell of (B, 3, 3) rotations in a coarse partition of SO(3): the nearest of the 48 HEALPix order-1
    viewing directions x 12 in-plane bins of 30 deg (about 30 deg across). Sorting by it puts rotations close to
    each other next to each other."""
    rot = np.asarray(rotations, dtype=np.float64)
    dirs = healpix_directions(1)
    d = (rot[:, 2, :] @ euler_to_direction(dirs[:, 0], dirs[:, 1]).T).argmax(axis=1)
    psi = matrix_to_euler(rot)[2]
    return d * 12 + np.floor(np.mod(psi, 360.0) / 30.0).astype(np.int64) % 12


def _stack_real(z, xp):
    """Complex (..., n) -> real (..., 2n) [Re, Im], so that Re(a conj b) = stack(a) . stack(b)."""
    return xp.concatenate([z.real, z.imag], axis=-1)


def _angles_to(prior_rot, rot, xp):
    """Angles (deg) between prior rotations (B, 3, 3) and candidate rotations (B, M, 3, 3) or (M, 3, 3)."""
    if rot.ndim == 3:
        tr = xp.einsum("bij,mij->bm", prior_rot, rot)
    else:
        tr = xp.einsum("bij,bmij->bm", prior_rot, rot)
    return xp.degrees(xp.arccos(xp.clip((tr - 1) / 2, -1.0, 1.0)))


def local_candidates(prior, grid: OrientationGrid, sigma_deg: float, n_classes: int):
    """Coarse candidates of a local search around prior rotations (B, 3, 3): the orientations within 3 s.d. of each
    prior (and always its nearest), for every class.

    Only directions within 3 s.d. of the prior's viewing direction (or within the nearest direction's best angle,
    if that is larger) are searched: two rotations' angle is at least the angle between their viewing directions,
    so the rest cannot qualify (B x n_dir dot products, then about B x 30 directions x n_psi rotation angles,
    instead of B x n_orient rotation angles).

    Returns host arrays: cand (B, M) columns into ctab, valid (B, M) bool, ctab (U,) sorted coarse ids
    k * n_orient + o of the union, crot (U, 3, 3) their rotations.
    """
    table = grid.rotation_table()  # (n_dir, n_psi, 3, 3)
    n_psi = table.shape[1]
    prior = np.asarray(prior, dtype=np.float64)
    b = len(prior)
    limit = 3 * sigma_deg
    cos_dir = prior[:, 2, :] @ table[:, 0, 2, :].T  # (B, n_dir) cosines between viewing directions
    # the nearest orientation is no farther than the nearest one of the nearest direction (a1), so its direction
    # is within a1 too
    a1 = _angles_to(prior, table[cos_dir.argmax(axis=1)], np).min(axis=1)  # (B,)
    reach = np.minimum(np.maximum(limit, a1) + 1e-6, 180.0)
    near_dir = cos_dir >= np.cos(np.radians(reach))[:, None]
    pb, pd = np.nonzero(near_dir)  # (P,) particle and direction of each pair, sorted by particle
    ang = _angles_to(prior[pb], table[pd], np)  # (P, n_psi)
    nearest = np.minimum.reduceat(ang.min(axis=1), np.searchsorted(pb, np.arange(b)))  # (B,)
    pi, psi = np.nonzero((ang <= limit) | (ang <= nearest[pb][:, None]))
    ids = ((pd[pi] * n_psi + psi)[:, None] + grid.size * np.arange(n_classes)).ravel()  # (S * K,) by particle
    part = np.repeat(pb[pi], n_classes)
    ctab, pos = np.unique(ids, return_inverse=True)
    counts = np.bincount(part, minlength=b)
    rank = np.arange(len(part)) - np.repeat(np.cumsum(counts) - counts, counts)
    cand = np.zeros((b, max(1, int(counts.max()))), dtype=np.int64)
    valid = np.zeros(cand.shape, dtype=bool)
    cand[part, rank], valid[part, rank] = pos, True
    return cand, valid, ctab, grid.rotations(ctab % grid.size)


def _top_significant(w, fraction: float, cap: int, xp, floor: int = 1, total=None):
    """Each row's largest entries of ``w`` (B, S) that hold ``fraction`` of the row sum (at least ``floor`` (or all
    positive entries, if fewer), at most ``cap``). ``total`` (B,): the row sums, if ``w`` is a subset of the row.

    Returns (B, J) column indices sorted by decreasing weight and (B, J) validity, J = the largest count.
    """
    cap = int(min(cap, w.shape[1]))
    top = xp.argpartition(-w, cap - 1, axis=1)[:, :cap] if cap < w.shape[1] else xp.broadcast_to(
        xp.arange(w.shape[1]), w.shape)
    tw = xp.take_along_axis(w, top, axis=1)
    order = xp.argsort(-tw, axis=1)
    top, tw = xp.take_along_axis(top, order, axis=1), xp.take_along_axis(tw, order, axis=1)
    total = w.sum(axis=1, keepdims=True) if total is None else total[:, None]
    count = xp.clip((xp.cumsum(tw, axis=1) < fraction * total).sum(axis=1) + 1, min(floor, cap), cap)
    j = max(1, int(count.max()))
    valid = (xp.arange(j)[None] < count[:, None]) & (tw[:, :j] > 0)
    return top[:, :j], valid


def _top_significant_by_orientation(w, fraction: float, cap: int, xp, floor: int = 1):
    """:func:`_top_significant` of weights (B, T, Q) (translations x orientations) flattened to (B, T * Q), without
    sorting all T * Q entries: the ``cap`` largest entries of a row lie in the ``cap`` orientations with the
    largest maximum over translations, so only those (B, T, cap) entries are ranked.

    Returns flat column indices t * Q + q (B, J) sorted by decreasing weight and (B, J) validity.
    """
    b, n_t, n_q = w.shape
    cap = int(min(cap, n_t * n_q))
    if cap >= n_q:
        return _top_significant(w.reshape(b, -1), fraction, cap, xp, floor)
    cols = xp.argpartition(-w.max(axis=1), cap - 1, axis=1)[:, :cap]  # (B, cap) orientations
    sub = xp.take_along_axis(w, cols[:, None, :], axis=2).reshape(b, -1)  # (B, T * cap)
    total = w.sum(axis=(1, 2))
    top, valid = _top_significant(sub, fraction, cap, xp, floor, total=total)
    t, j = xp.divmod(top, cap)
    return t * n_q + xp.take_along_axis(cols, j, axis=1), valid


class SliceTable:
    """Weighted slices summed per fine orientation, only for the orientations that received weight.

    Back-projecting once per orientation and iteration instead of once per particle batch; rows are allotted as
    orientations first receive weight (storage grows by doubling up to ``max_rows``). ``ids`` (n_rows,) fine ids,
    ``data`` (n_rows, n_pix) complex128, ``weight`` (n_rows, n_pix) float64 (device).
    """

    def __init__(self, n_ids: int, n_pix: int, max_rows: int, bk):
        self.bk, self.n_pix, self.max_rows = bk, n_pix, int(max_rows)
        self.row_of = np.full(n_ids, -1, dtype=np.int64)
        self.clear()

    def clear(self) -> None:
        xp = self.bk.xp
        self.row_of[:] = -1
        self.ids = np.zeros(0, dtype=np.int64)
        self.data = xp.zeros((0, self.n_pix), dtype=xp.complex128)
        self.weight = xp.zeros((0, self.n_pix), dtype=xp.float64)

    @property
    def n_rows(self) -> int:
        return len(self.ids)

    def add(self, ids, data, weight) -> bool:
        """Add rows for distinct ``ids`` (M,); False (nothing added) if the table would exceed ``max_rows``."""
        xp = self.bk.xp
        ids = np.asarray(ids, dtype=np.int64)
        new = ids[self.row_of[ids] < 0]
        n_new = self.n_rows + len(new)
        if n_new > self.max_rows:
            return False
        if n_new > self.data.shape[0]:
            size = min(self.max_rows, max(n_new, 2 * self.data.shape[0], 256))
            self.data = xp.concatenate([self.data, xp.zeros((size - self.data.shape[0], self.n_pix), self.data.dtype)])
            self.weight = xp.concatenate([self.weight,
                                          xp.zeros((size - self.weight.shape[0], self.n_pix), self.weight.dtype)])
        self.row_of[new] = np.arange(self.n_rows, n_new)
        self.ids = np.concatenate([self.ids, new])
        rows = xp.asarray(self.row_of[ids])
        self.data[rows] += data
        self.weight[rows] += weight
        return True


def _count_groups(counts, ratio: float = 2.0, minimum: int = 8) -> list:
    """Split rows into groups of similar ``counts`` (B,) (each group's largest count <= ratio x its smallest, or
    <= minimum), so that padding every row of a group to its largest count wastes little. Returns index arrays."""
    order = np.argsort(counts, kind="stable")
    sorted_counts = np.asarray(counts)[order]
    groups, start = [], 0
    while start < len(order):
        limit = max(ratio * sorted_counts[start], minimum)
        stop = start + int(np.searchsorted(sorted_counts[start:], limit, side="right"))
        groups.append(order[start : max(stop, start + 1)])
        start = max(stop, start + 1)
    return groups


def _weighted_row_sums(idx, owner, w, dense, n_rows, xp):
    """out[idx[k]] += w[k] * dense[owner[k]] in float64: (n_rows, n) from dense (B, n), idx, owner, w (M,).

    On the CPU a sparse (n_rows, B) matrix times ``dense``, without the (M, n) rows; on the GPU
    :func:`_bincount_rows` of those rows."""
    if xp is np:
        return csr_matrix((np.asarray(w, dtype=np.float64), (np.asarray(idx), np.asarray(owner))),
                          shape=(n_rows, len(dense))) @ dense.astype(np.float64)
    return _bincount_rows(idx, (w[:, None] * dense[owner]).astype(xp.float64), n_rows, xp)


def _bincount_rows(idx, rows, n_rows, xp):
    """Sum rows (M, n) (real) into (n_rows, n) by row index idx (M,).

    On the CPU as a sparse (n_rows, M) 0/1 matrix times the rows (one compiled pass, ~4x faster than a bincount
    over M x n flat indices); on the GPU as that bincount (atomic adds)."""
    if xp is np:
        m = len(idx)
        return csr_matrix((np.ones(m), (np.asarray(idx), np.arange(m))), shape=(n_rows, m)) @ rows
    n = rows.shape[1]
    flat = (idx[:, None] * n + xp.arange(n)[None]).ravel()
    return xp.bincount(flat, weights=rows.ravel(), minlength=n_rows * n).reshape(n_rows, n)


class EStep:
    """One iteration's E-step over the particles of this rank.

    Parameters
    ----------
    particles : the data. maps : (K, N, N, N) float32 host class maps. log_prior_class : (K,) log class priors.
    sigma2 : (G, N//2+1) noise power per optics group and shell. sigma_offset_px : s.d. of the translation prior.
    r_max : resolution limit in Fourier px (cycles per box). search : :class:`SearchSpace`. bk : backend.
    """

    def __init__(self, particles: ParticleSet, maps, log_prior_class, sigma2, sigma_offset_px: float, r_max: int,
                 search: SearchSpace, bk):
        xp = bk.xp
        self.p, self.search, self.bk = particles, search, bk
        self.n_classes = len(maps)
        self.box = particles.box
        self.r_max = int(min(r_max, self.box // 2))
        self.n_work = working_box(self.box, self.r_max)
        self.angpix_work = particles.angpix * self.box / self.n_work
        self.pix = FourierPixels(self.box, self.n_work, self.r_max)
        self.kxy = xp.asarray(np.column_stack([self.pix.kx, self.pix.ky]), dtype=xp.float32)
        # maps travel in their own precision (float32) and are cropped in double on the device
        self.projectors = [Projector(crop_map(bk.asarray(m).astype(xp.float64), self.n_work), bk) for m in maps]
        self.log_prior_class = np.asarray(log_prior_class, dtype=np.float64)
        w = 0.5 / np.asarray(sigma2, dtype=np.float64)[:, self.pix.shell]
        w[:, self.pix.shell == 0] = 0.0
        self.wpix = xp.asarray(w, dtype=xp.float32)  # (G, n_pix)
        self.sigma_offset = float(sigma_offset_px)
        self.origins = particles.origins_px()  # replaced by run()
        self.trans = np.asarray(search.translations, dtype=np.float64)
        self.fine_trans = fine_translations(self.trans, search.offset_step)
        self.r_coarse = coarse_limit(search.grid.sampling_deg, search.particle_diameter_A, self.box,
                                     particles.angpix, self.r_max)
        self.n_coarse = self.pix.count_within(self.r_coarse)  # the coarse pass uses pixels [:n_coarse]
        self.phase_c = self.pix.phases(self.trans, xp)[:, : self.n_coarse]
        self.phase_f = self.pix.phases(self.fine_trans, xp)
        n_o = search.grid.size
        self.n_orient = n_o
        self.class_of_coarse = np.repeat(np.arange(self.n_classes), n_o)
        n_fine = self.n_classes * n_o * ORIENTATION_CHILDREN
        free = bk.free_bytes()
        fits = 8 * n_fine * self.pix.n_pix < 0.15 * free  # projections of every fine orientation, complex64
        self.fine_cache = xp.zeros((n_fine, self.pix.n_pix), dtype=xp.complex64) if fits else None
        self.fine_done = np.zeros(n_fine, dtype=bool)
        self.table_max_rows = max(1, int(0.1 * free / (24 * self.pix.n_pix)))  # per half; complex128 + float64
        self.coarse = None
        if search.local_sigma_deg is None:  # global: project every class x coarse orientation once
            rot = search.grid.rotations(np.arange(n_o))
            kxy = self.kxy[: self.n_coarse]
            self.coarse = xp.concatenate([project_pixels(pr, rot, kxy, bk) for pr in self.projectors])

    # ------------------------------------------------------------------ helpers
    def _project_fine(self, fine_ids):
        """Projections (M, n_pix) and rotations (M, 3, 3) of fine ids = (k * n_orient + o) * 8 + child (cached)."""
        xp = self.bk.xp
        if self.fine_cache is not None:
            todo = fine_ids[~self.fine_done[fine_ids]]
            if len(todo):
                self.fine_cache[xp.asarray(todo)] = self._project_fine_now(todo)[0]
                self.fine_done[todo] = True
            coarse, child = np.divmod(fine_ids, ORIENTATION_CHILDREN)
            rot = self.search.grid.fine_rotations((coarse % self.n_orient) * ORIENTATION_CHILDREN + child)
            return self.fine_cache[xp.asarray(fine_ids)], rot
        return self._project_fine_now(fine_ids)

    def _project_fine_now(self, fine_ids):
        xp = self.bk.xp
        coarse, child = np.divmod(fine_ids, ORIENTATION_CHILDREN)
        k, o = np.divmod(coarse, self.n_orient)
        rot = self.search.grid.fine_rotations(o * ORIENTATION_CHILDREN + child)
        out = xp.empty((len(fine_ids), self.pix.n_pix), dtype=xp.complex64)
        for c in np.unique(k):
            sel = np.flatnonzero(k == c)
            out[xp.asarray(sel)] = project_pixels(self.projectors[c], rot[sel], self.kxy, self.bk)
        return out, rot

    def _project_coarse(self, ids):
        """Projections (M, n_coarse) at the coarse pass's pixels and rotations (M, 3, 3) of coarse ids."""
        xp = self.bk.xp
        k, o = np.divmod(ids, self.n_orient)
        rot = self.search.grid.rotations(o)
        out = xp.empty((len(ids), self.n_coarse), dtype=xp.complex64)
        for c in np.unique(k):
            sel = np.flatnonzero(k == c)
            out[xp.asarray(sel)] = project_pixels(self.projectors[c], rot[sel], self.kxy[: self.n_coarse], self.bk)
        return out, rot

    def batch_data(self, idx):
        """Device arrays for particles idx: X (B, n_pix) shifted by the old origin, C (B, n_pix), w (B, n_pix)."""
        xp, pix = self.bk.xp, self.pix
        spec = self.p.spectra.reshape(len(self.p), -1)[np.asarray(idx)[:, None], pix.flat[None]]  # no full copy
        x = xp.asarray(spec) * pix.phases(self.origins[idx], xp)
        if self.p.ctf is None:
            c = xp.ones((len(idx), pix.n_pix), dtype=xp.float32)
        else:
            ctf = ctf_2d(self.p.ctf_subset(idx), self.n_work, self.angpix_work, self.bk)
            c = ctf.reshape(len(idx), -1)[:, xp.asarray(pix.flat_work)]
        w = self.wpix[xp.asarray(self.p.group[idx])]
        return x, c, w

    # ------------------------------------------------------------------ main loop
    def run(self, indices, origins_px, prior_rotations=None, class_mask=None, half=None) -> EStepResult:
        """E-step over particles ``indices`` (host int array) with previous origins (n_all, 2) px, previous
        rotations (n_all, 3, 3) (local searches), an optional allowed-class mask (n_all, K) bool and the random
        half (n_all,) 0/1 of each particle (default index % 2), which picks its back-projector."""
        bk = self.bk
        self.origins = np.asarray(origins_px, dtype=np.float64)
        self.prior_rot = prior_rotations
        self.class_mask = class_mask
        nsh = self.box // 2 + 1
        k = self.n_classes
        self.bps = [[BackProjector(self.n_work, bk, double=True) for _ in range(2)] for _ in range(k)]
        self.table = [SliceTable(len(self.fine_done), self.pix.n_pix, self.table_max_rows, bk) for _ in range(2)]
        self.sigma2_sum = np.zeros((self.p.n_groups, nsh))
        self.sigma2_count = np.zeros((self.p.n_groups, nsh))
        self.class_weight = np.zeros(k)
        self.offset2 = 0.0
        n = len(indices)
        out = {"best_class": np.zeros(n, np.int64), "euler": np.zeros((n, 3)), "origin_px": np.zeros((n, 2)),
               "loglik": np.zeros(n), "max_prob": np.zeros(n), "n_significant": np.zeros(n, np.int64)}
        indices = np.asarray(indices, dtype=np.int64)
        self.half = np.arange(len(self.p)) % 2 if half is None else np.asarray(half, dtype=np.int64)
        batch_key = 2 * self.p.group[indices] + self.half[indices]  # batches of one optics group and one half
        order = np.argsort(batch_key, kind="stable")
        if self.search.local_sigma_deg is not None:  # neighbours in one batch share their candidates' projections
            order = np.lexsort((orientation_cell(self.prior_rot[indices]), batch_key))
        q = self.coarse.shape[0] if self.coarse is not None else 512
        per_particle = 4 * len(self.trans) * q * 6 + 16 * len(self.trans) * self.pix.n_pix
        step = min(256, bk.batch_size(per_particle, fraction=0.25))
        for g in np.unique(batch_key):
            rows = order[batch_key[order] == g]
            for b0 in range(0, len(rows), step):
                r = rows[b0 : b0 + step]
                res = self._batch(indices[r])
                for key, val in res.items():
                    out[key][r] = val
        self._flush()
        return EStepResult(**out, backprojectors=self.bps, sigma2_sum=self.sigma2_sum,
                           sigma2_count=self.sigma2_count, class_weight=self.class_weight,
                           offset2_sum=self.offset2, n=n)

    def _log_prior_offsets(self, idx, table):
        """(B, S) log Gaussian prior of the total origins old + table (S, 2) px."""
        xp = self.bk.xp
        tot = self.origins[idx][:, None, :] + table[None]
        return xp.asarray(-(tot**2).sum(-1) / (2 * self.sigma_offset**2), dtype=xp.float32)

    def _class_term(self, idx, classes):
        """(B, M) log class prior (-inf for classes masked out) of candidate classes (M,) or (B, M) (device)."""
        xp = self.bk.xp
        cls = xp.asarray(classes)
        lp = xp.asarray(self.log_prior_class, dtype=xp.float32)[cls]
        shape = (len(idx),) + cls.shape[-1:]
        if self.class_mask is not None:
            mask = xp.asarray(self.class_mask[idx])  # (B, K)
            lp = xp.where(xp.take_along_axis(mask, xp.broadcast_to(cls, shape), axis=1), lp, -xp.inf)
        return xp.broadcast_to(lp, shape)

    def coarse_scores(self, x, c, w):
        """x2 - diff2 (B, T, Q) of particles (spectra x, CTF c, weights w (B, n_pix)) for every coarse translation
        and class x orientation: one real matrix product for the cross term, one for the CTF^2 term. Only the
        first ``n_coarse`` pixels (within the coarse limit) count."""
        xp = self.bk.xp
        b, n_t = len(x), len(self.trans)
        nc = self.n_coarse
        x, c, w = x[:, :nc], c[:, :nc], w[:, :nc]
        xw = (2 * w * c * x)[:, None, :] * self.phase_c[None]  # (B, T, n_pix)
        cross = (_stack_real(xw, xp).reshape(b * n_t, -1) @ _stack_real(self.coarse, xp).T).reshape(b, n_t, -1)
        return cross - ((w * c * c) @ (self.coarse.real**2 + self.coarse.imag**2).T)[:, None, :]

    def _batch(self, idx):
        xp = self.bk.xp
        b = len(idx)
        x, c, w = self.batch_data(idx)
        x2 = (w * (x.real**2 + x.imag**2)).sum(axis=1)
        cw2 = w * c * c
        if self.coarse is not None:  # global search: (B, T, Q) over all classes x orientations
            lp = self.coarse_scores(x, c, w) + self._class_term(idx, self.class_of_coarse)[:, None, :]
            columns = None
        else:  # local search: the coarse orientations near each particle's previous one
            nc = self.n_coarse
            xw = (2 * w * c * x)[:, None, :nc] * self.phase_c[None]  # (B, T, n_coarse)
            cand, cvalid, ctab, crot = local_candidates(self.prior_rot[idx], self.search.grid,
                                                        self.search.local_sigma_deg, self.n_classes)
            cand, cvalid = xp.asarray(cand), xp.asarray(cvalid)
            proj, _ = self._project_coarse(ctab)
            pg = proj[cand]
            lp = xp.matmul(_stack_real(xw, xp), xp.swapaxes(_stack_real(pg, xp), 1, 2))
            lp -= xp.einsum("bp,bmp->bm", cw2[:, :nc], pg.real**2 + pg.imag**2)[:, None, :]
            ang = _angles_to(xp.asarray(self.prior_rot[idx]), xp.asarray(crot)[cand], xp)
            lp += (-(ang**2) / (2 * self.search.local_sigma_deg**2)).astype(xp.float32)[:, None, :]
            lp += self._class_term(idx, ctab[self.bk.asnumpy(cand)] // self.n_orient)[:, None, :]
            lp = xp.where(cvalid[:, None, :], lp, -xp.inf)
            columns = xp.asarray(ctab)[cand]  # (B, M) coarse ids of the candidate columns
        lp += self._log_prior_offsets(idx, self.trans)[:, :, None]
        wc = xp.exp(lp - lp.max(axis=(1, 2), keepdims=True))
        top, valid = _top_significant_by_orientation(wc, self.search.significant, self.search.max_significant, xp,
                                                     floor=self.search.min_significant)
        t_sig, col = xp.divmod(top, lp.shape[2])
        q_sig = col if columns is None else xp.take_along_axis(columns, col, axis=1)
        counts = self.bk.asnumpy(valid.sum(axis=1))
        out = {}
        for g in _count_groups(counts):  # fine pass on particles with similar counts: little padding
            gd, jg = xp.asarray(g), max(1, int(counts[g].max()))
            res = self._fine(idx[g], x[gd], c[gd], w[gd], x2[gd], cw2[gd], t_sig[gd, :jg], q_sig[gd, :jg],
                             valid[gd, :jg])
            for key, val in res.items():
                out.setdefault(key, np.zeros((b,) + np.shape(val)[1:], dtype=np.asarray(val).dtype))[g] = val
        out["n_significant"] = counts
        return out

    def _fine(self, idx, x, c, w, x2, cw2, t_sig, q_sig, valid):
        """Fine pass over the children of the significant coarse pairs (translation t_sig, class-orientation q_sig),
        (B, J) each, then the M-step sums. Pair j of particle b has 4 x 8 fine samples (translation, orientation)."""
        xp, bk = self.bk.xp, self.bk
        b, j = t_sig.shape
        n_oc, n_tc = ORIENTATION_CHILDREN, TRANSLATION_CHILDREN
        q_host = bk.asnumpy(q_sig)
        union = np.unique(q_host[bk.asnumpy(valid)])
        fine_tab = (union[:, None] * n_oc + np.arange(n_oc)).ravel()
        proj, rot = self._project_fine(fine_tab)
        fine_class = union.repeat(n_oc) // self.n_orient
        u = np.minimum(np.searchsorted(union, q_host), len(union) - 1)  # (B, J) row block of each pair
        gidx = xp.asarray(u[..., None] * n_oc + np.arange(n_oc))  # (B, J, 8) rows of the fine table
        tf = bk.asnumpy(t_sig)[..., None] * n_tc + np.arange(n_tc)  # (B, J, 4) fine translations
        tot = self.origins[idx][:, None, None, :] + self.fine_trans[tf]  # (B, J, 4, 2) total origins
        prior_t = xp.asarray(-(tot**2).sum(-1) / (2 * self.sigma_offset**2), dtype=xp.float32)
        prior_c = self._class_term(idx, fine_class[u * n_oc])  # (B, J)
        lp = xp.empty((b, j, n_tc, n_oc), dtype=xp.float32)
        step = max(1, bk.batch_size(j * (n_tc + n_oc) * self.pix.n_pix * 48, fraction=0.2))
        for b0 in range(0, b, step):
            sl = slice(b0, b0 + step)
            cx = (c * x)[sl, None, None, :] * self.phase_f[xp.asarray(tf[sl])]  # (b, J, 4, n_pix)
            pg = proj[gidx[sl]]  # (b, J, 8, n_pix)
            cross = xp.matmul(_stack_real(cx * (2 * w[sl, None, None, :]), xp),
                              xp.swapaxes(_stack_real(pg, xp), -1, -2))
            ctf2 = xp.einsum("bp,bjop->bjo", cw2[sl], pg.real**2 + pg.imag**2)
            lp[sl] = cross - ctf2[:, :, None, :]
        lp += prior_t[..., None] + prior_c[:, :, None, None]
        if self.search.local_sigma_deg is not None:
            ang = _angles_to(xp.asarray(self.prior_rot[idx]), xp.asarray(rot)[gidx.reshape(b, -1)], xp)
            lp += (-(ang**2) / (2 * self.search.local_sigma_deg**2)).reshape(b, j, 1, n_oc).astype(xp.float32)
        lp = xp.where(valid[:, :, None, None], lp, -xp.inf)
        flat = lp.reshape(b, -1)
        m = flat.max(axis=1)
        wt = xp.exp(flat - m[:, None])
        total = wt.sum(axis=1)
        wt /= total[:, None]
        best = bk.asnumpy(flat.argmax(axis=1))
        bj, rest = np.divmod(best, n_tc * n_oc)
        btc, boc = np.divmod(rest, n_oc)
        ar = np.arange(b)
        fine_best = fine_tab[u[ar, bj] * n_oc + boc]
        coarse_best, child = np.divmod(fine_best, n_oc)
        kbest, obest = np.divmod(coarse_best, self.n_orient)
        res = {
            "best_class": kbest,
            "euler": self.search.grid.fine_euler(obest * n_oc + child),
            "origin_px": tot[ar, bj, btc],
            "loglik": bk.asnumpy(m.astype(xp.float64) + xp.log(total.astype(xp.float64)) - x2),
            "max_prob": bk.asnumpy(1.0 / total),
        }
        top, keep = _top_significant(wt, 0.999, wt.shape[1], xp)
        thr = xp.where(keep, xp.take_along_axis(wt, top, axis=1), xp.inf).min(axis=1)
        wk = xp.where(wt >= thr[:, None], wt, 0).astype(xp.float32)
        self._accumulate(idx, x, c, w, wk.reshape(lp.shape), tf, proj, fine_tab, gidx, tot, fine_class, step)
        return res

    def _accumulate(self, idx, x, c, w, wk, tf, proj, fine_tab, gidx, tot, fine_class, step):
        """Weighted sums of the fine pass (weights wk (B, J, 4, 8)) into back-projectors, sigma2, class, offsets.

        Sums are kept only for the fine orientations that received weight (rows of ``proj`` (n_q, n_pix))."""
        xp, bk = self.bk.xp, self.bk
        n_pix, n_q = self.pix.n_pix, proj.shape[0]
        ws = wk.sum(axis=2)  # (B, J, 8)
        row_w = bk.asnumpy(xp.bincount(gidx.ravel(), weights=ws.ravel().astype(xp.float64), minlength=n_q))
        kept = np.flatnonzero(row_w > 0)  # fine-table rows with weight
        compact = np.full(n_q, -1, dtype=np.int64)
        compact[kept] = np.arange(len(kept))
        compact = xp.asarray(compact)
        data = xp.zeros((len(kept), 2 * n_pix), dtype=xp.float64)
        weight = xp.zeros((len(kept), n_pix), dtype=xp.float64)
        for b0 in range(0, len(idx), step):
            sl = slice(b0, b0 + step)
            used = ws[sl] > 0
            rows = compact[gidx[sl][used]]
            cx = _stack_real((c * x)[sl, None, None, :] * self.phase_f[xp.asarray(tf[sl])], xp)
            if xp is np:  # one sparse product of the translated spectra, without (b, J, 8, 2 n_pix) products
                bi, ji, oi = np.nonzero(used)
                owner = ((bi * wk.shape[1] + ji)[:, None] * TRANSLATION_CHILDREN
                         + np.arange(TRANSLATION_CHILDREN)).ravel()
                data += _weighted_row_sums(np.repeat(rows, TRANSLATION_CHILDREN), owner,
                                           wk[sl][bi, ji, :, oi].ravel(), cx.reshape(-1, 2 * n_pix), len(kept), xp)
            else:
                g = xp.matmul(xp.swapaxes(wk[sl], -1, -2), cx)  # (b, J, 8, 2 n_pix)
                data += _bincount_rows(rows, g[used].astype(xp.float64), len(kept), xp)
            owner = xp.nonzero(used)[0]  # particle (within sl) of each used (particle, pair, orientation)
            weight += _weighted_row_sums(rows, owner, ws[sl][used], (c * c)[sl], len(kept), xp)
        data = data[:, :n_pix] + 1j * data[:, n_pix:]
        # sigma2: sum_i,s w |X e_t - C P|^2 per pixel = |X|^2 sum w - 2 Re(D conj P) + W |P|^2
        p64 = proj[xp.asarray(kept)].astype(xp.complex128)
        wsum = ws.sum(axis=(1, 2)).astype(xp.float64)
        resid = ((x.real.astype(xp.float64) ** 2 + x.imag.astype(xp.float64) ** 2) * wsum[:, None]).sum(axis=0)
        resid += (-2 * (data * p64.conj()).real + weight * (p64.real**2 + p64.imag**2)).sum(axis=0)
        g_id = int(self.p.group[idx[0]])
        nsh = self.box // 2 + 1
        self.sigma2_sum[g_id] += np.bincount(self.pix.shell, bk.asnumpy(resid), minlength=nsh)
        self.sigma2_count[g_id] += float(bk.asnumpy(wsum.sum())) * np.bincount(self.pix.shell, minlength=nsh)
        self.class_weight += np.bincount(fine_class, weights=row_w, minlength=self.n_classes)
        self.offset2 += float(bk.asnumpy((wk.sum(axis=3) * xp.asarray((tot**2).sum(-1))).sum()))
        inv_s2 = 2 * w[0]  # 1 / sigma2 of this group (n_pix,)
        self._store(fine_tab[kept], data * inv_s2, weight * inv_s2, int(self.half[idx[0]]))

    def _store(self, fine_ids, data, weight, half: int) -> None:
        """Add weighted slices (data (M, n_pix) complex, weight (M, n_pix)) of distinct fine ids to the half's
        table; a full table is back-projected and emptied first."""
        table = self.table[half]
        if not table.add(fine_ids, data, weight):
            self._flush_half(half)
            if not table.add(fine_ids, data, weight):  # more rows than the table holds: back-project now
                self._insert(fine_ids, data, weight, half)

    def _flush_half(self, half: int) -> None:
        table = self.table[half]
        for i0 in range(0, table.n_rows, 4096):
            rows = slice(i0, min(i0 + 4096, table.n_rows))
            self._insert(table.ids[rows], table.data[rows], table.weight[rows], half)
        table.clear()

    def _flush(self) -> None:
        """Back-project every fine orientation that received weight (once per iteration, unless tables filled)."""
        for half in range(2):
            self._flush_half(half)

    def _insert(self, fine_ids, data, weight, half: int) -> None:
        """Back-project slices of fine ids ((k * n_orient + o) * 8 + child) times every symmetry operator."""
        xp, bk = self.bk.xp, self.bk
        nw = self.n_work
        flat_w = xp.asarray(self.pix.flat_work)
        ops = self.search.symmetry_ops
        coarse, child = np.divmod(fine_ids, ORIENTATION_CHILDREN)
        cls, o = np.divmod(coarse, self.n_orient)
        rot = self.search.grid.fine_rotations(o * ORIENTATION_CHILDREN + child)
        chunk = max(1, min(256, bk.batch_size(48 * nw * nw * len(ops), fraction=0.1)))
        for k in np.unique(cls):
            q = np.flatnonzero(cls == k)
            for q0 in range(0, len(q), chunk):
                sel = q[q0 : q0 + chunk]
                img = xp.zeros((len(sel), nw * (nw // 2 + 1)), dtype=xp.complex128)
                wgt = xp.zeros((len(sel), nw * (nw // 2 + 1)), dtype=xp.float64)
                img[:, flat_w] = data[xp.asarray(sel)]
                wgt[:, flat_w] = weight[xp.asarray(sel)]
                shape = (len(sel), nw, nw // 2 + 1)
                for op in ops:
                    self.bps[k][half].insert(img.reshape(shape), rot[sel] @ op, wgt.reshape(shape), self.r_max)
