"""Scoring CTF candidates against background-subtracted spectra: a coarse grid search and a local refinement.

The CTF is RELION's (:mod:`cryopipe.ctf`). With the positive defocus Df(alpha) = mean + a_c cos 2alpha +
a_s sin 2alpha, where mean = (dU + dV)/2 and (a_c, a_s) = (dU - dV)/2 (cos 2theta, sin 2theta), and u = |s|^2,

    CTF = sin(g),   g = k1 u Df(alpha) - k2 u^2 + phase + atan(Q0 / sqrt(1 - Q0^2)),   k1 = pi lambda,
    k2 = pi/2 Cs lambda^3,

so g is LINEAR in the parameters theta = (mean, a_c, a_s, phase): g = theta . F(pixel) + fixed(pixel), and
CTF^2 = (1 - cos 2g) / 2. The (a_c, a_s) parametrisation has no angle singularity at zero astigmatism.

Score (CTFFIND4's, Rohou and Grigorieff 2015): the normalised cross-correlation between CTF^2 and the
background-subtracted amplitude spectrum over the pixels of the fit band (:class:`BandPixels`); CTF^2's affine
form drops out, so NCC = -sum(cos(2g) d0) / sqrt((sum cos^2 - (sum cos)^2 / P) sum d0^2) with d0 the data
minus their band mean. For C candidates and B spectra this is a (C x P) cosine matrix times a (P x B) data
matrix: one matrix product per chunk of candidates, on the CPU or the GPU alike.

* :func:`coarse_grid`: every combination of mean defocus (steps from the band's resolution limit), astigmatism
  (a square grid in (a_c, a_s) inside a disc of radius max_astigmatism / 2) and, optionally, phase shift.
* :func:`best_starts`: the best few distinct candidates of each spectrum (the refinement starts from each).
* :func:`refine`: a batched pattern search: all 3^d neighbours of every start at once; move to the best, halve
  the steps when the centre is best, until the defocus step is below ``tol_A``.

Each spectrum may score on its own part of the band's pixels: ``weights`` (B, P) of 0 and 1 (the pixels up to a
micrograph's fit resolution, say) in :func:`band_data`, :func:`scores_batched` and :func:`refine`; the NCC is then
that of the pixels of weight 1 only, so spectra of different pixel subsets share one batched product.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from cryopipe.ctf import electron_wavelength
from cryopipe.ctfestimate.spectrum import SpectrumGrid

COARSE_PIXELS = 8192  # band pixels (a fixed random subset) that score the coarse grid
CHUNK_BYTES = 64 << 20  # CPU working set of one chunk of the (candidates x pixels) matrix


@dataclass(frozen=True)
class Optics:
    """Voltage (kV), Cs (mm), amplitude contrast Q0; the constants of the CTF phase in A units."""

    voltage: float
    cs: float
    amplitude_contrast: float

    @property
    def wavelength(self) -> float:
        return float(electron_wavelength(self.voltage))

    @property
    def k1(self) -> float:
        return float(np.pi * self.wavelength)

    @property
    def k2(self) -> float:
        return float(0.5 * np.pi * self.cs * 1e7 * self.wavelength**3)

    @property
    def q_offset(self) -> float:
        q = self.amplitude_contrast
        return float(np.arctan2(q, np.sqrt(1.0 - q * q)))

    def phase(self, s, defocus):
        """g(s) without astigmatism and phase shift, radians (host arrays, float64): k1 Df s^2 - k2 s^4 + Q0 term."""
        u = np.asarray(s, dtype=np.float64) ** 2
        return self.k1 * defocus * u - self.k2 * u * u + self.q_offset

    def dphase_ds(self, s, defocus):
        """dg/ds (radians per 1/A) at mean defocus ``defocus``: 2 k1 Df s - 4 k2 s^3."""
        s = np.asarray(s, dtype=np.float64)
        return 2.0 * self.k1 * defocus * s - 4.0 * self.k2 * s**3


@dataclass
class BandPixels:
    """The pixels of a tile's half spectrum inside the fit band, on the device.

    index : (P,) flat indices into a (T, T//2+1) spectrum (the duplicated halves of the kx = 0 and kx = T/2
        columns left out). features : (5, P) float32, twice [k1 u, k1 u cos 2alpha, k1 u sin 2alpha,
        -k2 u^2 + atan(Q0/sqrt(1-Q0^2)), 1], so that 2g = [mean, a_c, a_s, 1, phase] @ features: one matrix
        product gives the phases of a chunk of candidates.
    """

    index: object
    features: object

    @property
    def size(self) -> int:
        return int(self.index.shape[0])

    def subset(self, keep, xp) -> BandPixels:
        """The pixels ``keep`` (indices into this band, host or device)."""
        k = xp.asarray(keep)
        return BandPixels(self.index[k], self.features[:, k])

    def within(self, s_max: float, optics: Optics, xp) -> BandPixels:
        """The pixels with |s| <= s_max (1/A)."""
        return self.subset(xp.flatnonzero(self.radius_sq(optics) <= s_max * s_max), xp)

    def radius_sq(self, optics: Optics):
        """|s|^2 (1/A^2) of every pixel (P,) float32, on the device: what :meth:`within` compares."""
        return self.features[0] / (2.0 * optics.k1)

    def head(self, n: int, xp) -> BandPixels:
        """The first ``n`` pixels (contiguous copies)."""
        return BandPixels(self.index[:n], xp.ascontiguousarray(self.features[:, :n]))


def band_pixels(grid: SpectrumGrid, optics: Optics, xp, s_min: float | None = None,
                s_max: float | None = None) -> BandPixels:
    """:class:`BandPixels` of ``grid`` for s_min <= |s| <= s_max (1/A; default the grid's band)."""
    T, a = grid.tile, grid.angpix
    s_min = grid.s_min if s_min is None else s_min
    s_max = grid.s_max if s_max is None else s_max
    sy = np.fft.fftfreq(T, a)[:, None]
    sx = np.fft.rfftfreq(T, a)[None, :]
    u = sx * sx + sy * sy
    s = np.sqrt(u)
    keep = (s >= s_min) & (s <= s_max)
    ky = np.fft.fftfreq(T, 1.0 / T)[:, None]
    keep &= ~(((sx == 0) | (np.abs(sx) >= 0.5 / a - 1e-12)) & (ky < 0))  # mirrored halves of the edge columns
    alpha = np.arctan2(np.broadcast_to(sy, u.shape), np.broadcast_to(sx, u.shape))
    idx = np.flatnonzero(keep)
    uu = u.ravel()[idx]
    al = alpha.ravel()[idx]
    k1u = optics.k1 * uu
    features = 2.0 * np.stack([k1u, k1u * np.cos(2 * al), k1u * np.sin(2 * al), -optics.k2 * uu * uu + optics.q_offset,
                               np.ones_like(uu)])
    return BandPixels(xp.asarray(idx), xp.asarray(features.astype(np.float32)))


def augment(theta: np.ndarray) -> np.ndarray:
    """[mean, a_c, a_s, phase] (..., 4) -> [mean, a_c, a_s, 1, phase] (..., 5) float32, for BandPixels.features."""
    theta = np.asarray(theta, dtype=np.float64)
    return np.concatenate([theta[..., :3], np.ones(theta.shape[:-1] + (1,)), theta[..., 3:4]], axis=-1).astype(
        np.float32)


def band_data(spectra, band: BandPixels, xp, weights=None):
    """Band values of spectra (B, T, T//2+1) -> (zero-mean (B, P) float32, norms (B,) float32).

    weights : (B, P) float32 of 0 and 1, on the device: each spectrum's values are zero-mean over its pixels of
    weight 1 and 0 elsewhere (the norm is theirs).
    """
    d = spectra.reshape(spectra.shape[0], -1)[:, band.index].astype(xp.float32)
    if weights is None:
        d = d - d.mean(axis=1, keepdims=True)
    else:
        d = (d - (d * weights).sum(axis=1, keepdims=True) / weights.sum(axis=1, keepdims=True)) * weights
    return d, xp.sqrt((d * d).sum(axis=1))


def _ncc(cos2g, num, dnorm, xp, count=None):
    """NCC of CTF^2 with the data from cos(2g) (..., P), num = sum(cos(2g) d0) (..., B) and |d0| (B,). count:
    pixels per row of cos2g (broadcast to its leading axes; default P) where cos2g is 0 outside a row's pixels."""
    P = cos2g.shape[-1] if count is None else count
    s1 = cos2g.sum(axis=-1)
    s2 = xp.einsum("...p,...p->...", cos2g, cos2g)
    var = xp.maximum(s2 - s1 * s1 / P, 1e-12)
    den = xp.sqrt(var)[..., None] * dnorm
    return xp.where(den > 0, -num / xp.where(den > 0, den, 1.0), 0.0)


def _chunk(bk, bytes_per_row: int) -> int:
    if bk.is_gpu:
        return bk.batch_size(bytes_per_row * 4, fraction=0.4)
    return max(1, CHUNK_BYTES // max(1, bytes_per_row))


def scores_shared(theta, band: BandPixels, data, dnorm, bk):
    """NCC of C candidates against B spectra that all share them: theta (C, 5) float32 on the device (see
    :func:`augment`), data (B, P) zero-mean, dnorm (B,). Returns (C, B) float32 on the device."""
    xp = bk.xp
    C = theta.shape[0]
    out = xp.empty((C, data.shape[0]), dtype=xp.float32)
    step = _chunk(bk, band.size * 4)
    dT = xp.ascontiguousarray(data.T)
    for k in range(0, C, step):
        c = theta[k:k + step] @ band.features
        c = xp.cos(c, out=c)
        out[k:k + step] = _ncc(c, c @ dT, dnorm, xp)
    return out


def scores_batched(theta, band: BandPixels, data, dnorm, bk, weights=None):
    """NCC of candidates of their own per spectrum: theta (N, K, 5) float32 (:func:`augment`), data (N, P),
    dnorm (N,) -> (N, K) float32, on the device. weights : (N, P) 0/1 float32 (see :func:`band_data`, which
    made ``data`` with the same weights): each spectrum scores on its pixels of weight 1 only."""
    xp = bk.xp
    N, K = theta.shape[:2]
    out = xp.empty((N, K), dtype=xp.float32)
    step = _chunk(bk, K * band.size * 4)
    for k in range(0, N, step):
        c = theta[k:k + step] @ band.features  # (n, K, P)
        c = xp.cos(c, out=c)
        count = None
        if weights is not None:
            w = weights[k:k + step]
            c *= w[:, None, :]
            count = w.sum(axis=-1)[:, None]  # (n, 1)
        num = c @ data[k:k + step, :, None]  # (n, K, 1)
        out[k:k + step] = _ncc(c, num, dnorm[k:k + step, None, None], xp, count)[..., 0]
    return out


def defocus_step(optics: Optics, s_max: float) -> float:
    """Coarse defocus step, A: a quarter of the defocus change that turns the phase 2g by pi at s_max."""
    return float(1.0 / (4.0 * optics.wavelength * s_max**2))


def coarse_grid(defocus_range_A: tuple[float, float], max_astigmatism_A: float, step_A: float,
                phase_step_deg: float | None, astigmatism_step_A: float | None = None) -> np.ndarray:
    """Candidates (C, 4) float64 [mean A, a_c A, a_s A, phase rad] (see the module docstring): means every
    ``step_A``, (a_c, a_s) on a square lattice of ``astigmatism_step_A`` (default step_A) inside the disc of radius
    max_astigmatism_A / 2, phases every ``phase_step_deg`` in [0, 180) (None: no phase shift)."""
    lo, hi = defocus_range_A
    means = np.arange(lo, hi + 0.5 * step_A, step_A)
    r = 0.5 * max_astigmatism_A
    astep = astigmatism_step_A or step_A
    n = int(np.floor(r / astep))
    g = np.arange(-n, n + 1) * astep
    ac, as_ = np.meshgrid(g, g, indexing="ij")
    inside = np.hypot(ac, as_) <= r + 1e-9
    astig = np.stack([ac[inside], as_[inside]], axis=1)
    phases = np.deg2rad(np.arange(0.0, 180.0, phase_step_deg)) if phase_step_deg else np.zeros(1)
    m, a, p = np.meshgrid(np.arange(len(means)), np.arange(len(astig)), np.arange(len(phases)), indexing="ij")
    return np.stack([means[m.ravel()], astig[a.ravel(), 0], astig[a.ravel(), 1], phases[p.ravel()]], axis=1)


def best_starts(scores: np.ndarray, grid: np.ndarray, count: int, min_separation_A: float) -> np.ndarray:
    """The ``count`` best candidates per spectrum whose mean defocus differ by >= min_separation_A.

    scores : (C, B) host. grid : (C, 4). Returns (B, count, 4) (repeats of the best where fewer exist).

    Walking the candidates from the best down, only the best of each mean defocus (the first of equal scores) can
    be taken (the others share its mean), so the walk goes over those alone: one per mean, not per candidate.
    """
    C, B = scores.shape
    _, group = np.unique(grid[:, 0], return_inverse=True)
    order = np.argsort(group, kind="stable")  # the candidates by mean, in their order within a mean
    bounds = np.flatnonzero(np.r_[True, np.diff(group[order]) != 0])
    ranked = scores[order]
    top = np.maximum.reduceat(ranked, bounds, axis=0)  # (means, B)
    position = np.where(ranked == np.repeat(top, np.diff(np.r_[bounds, C]), axis=0), np.arange(C)[:, None], C)
    best = order[np.minimum.reduceat(position, bounds, axis=0)]  # (means, B): each mean's best candidate
    out = np.empty((B, count, 4))
    for b in range(B):
        walk = best[np.lexsort((best[:, b], -top[:, b])), b]  # by score, ties by candidate index
        chosen: list[int] = []
        for i in walk:
            if all(abs(grid[i, 0] - grid[j, 0]) >= min_separation_A for j in chosen):
                chosen.append(int(i))
                if len(chosen) == count:
                    break
        chosen += [chosen[0]] * (count - len(chosen))
        out[b] = grid[chosen]
    return out


def _evaluate(cand: np.ndarray, band: BandPixels, data, dnorm, bk, weights=None) -> np.ndarray:
    """Scores (N, K) float64 on the host of candidates (N, K, 4) against data (N, P), dnorm (N,) (and weights
    (N, P)) on the device."""
    xp = bk.xp
    return bk.asnumpy(scores_batched(xp.asarray(augment(cand)), band, data, dnorm, bk, weights)).astype(np.float64)


def _quadratic_step(offsets: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Maximum of the quadratic least-squares fit to ``scores`` (N, K) on the 3^d grid ``offsets`` (K, d) of -1/0/1,
    in grid units (N, d), within [-1, 1]^d; 0 where the fit has no maximum inside."""
    K, d = offsets.shape
    pairs = [(i, j) for i in range(d) for j in range(i, d)]
    design = np.concatenate([np.ones((K, 1)), offsets, np.stack([offsets[:, i] * offsets[:, j] for i, j in pairs], 1)],
                            axis=1)
    coef = scores @ np.linalg.pinv(design).T
    g = coef[:, 1:1 + d]
    H = np.zeros((len(scores), d, d))
    for k, (i, j) in enumerate(pairs):
        c = coef[:, 1 + d + k]
        if i == j:
            H[:, i, i] = 2.0 * c
        else:
            H[:, i, j] = H[:, j, i] = c
    step = np.zeros((len(scores), d))
    concave = np.all(np.linalg.eigvalsh(H) < 0, axis=1)
    if concave.any():
        x = -np.linalg.solve(H[concave], g[concave][..., None])[..., 0]
        inside = np.all(np.abs(x) <= 1.0, axis=1)
        step[np.flatnonzero(concave)[inside]] = x[inside]
    return step


def refine(starts: np.ndarray, owner: np.ndarray, steps: np.ndarray, band: BandPixels, data, dnorm, bk,
           free: tuple[bool, bool, bool, bool], tol_A: float = 4.0, max_iter: int = 60, polish: bool = True,
           weights=None):
    """Batched pattern search from ``starts`` (N, 4) [mean, a_c, a_s, phase rad] (host, float64).

    owner : (N,) index of each start's spectrum in data (B, P) / dnorm (B,) (/ weights (B, P), see
    :func:`band_data`). steps : (4,) initial steps (A, A, A, rad). free : which parameters move. Every start's 3^d
    neighbours are scored at once; a start moves to its best neighbour, or halves its steps when it is itself the
    best, until its defocus step is below ``tol_A``; then (``polish``) it moves to the maximum of a quadratic
    fitted to its last 3^d scores. Returns (theta (N, 4), score (N,)), host float64.
    """
    xp = bk.xp
    dims = [i for i in range(4) if free[i]]
    grid = np.array(list(itertools.product((-1.0, 0.0, 1.0), repeat=len(dims))))
    offsets = np.zeros((len(grid), 4))
    offsets[:, dims] = grid
    centre = int(np.flatnonzero(~offsets.any(axis=1))[0])
    x = starts.astype(np.float64).copy()
    step = np.broadcast_to(steps, x.shape).astype(np.float64).copy()
    own = xp.asarray(owner)
    d, n = data[own], dnorm[own]
    w = weights[own] if weights is not None else None

    def rows(i: np.ndarray):
        """data, norms, weights of the starts ``i`` (all of them: no gather)."""
        if len(i) == len(x):
            return d, n, w
        k = xp.asarray(i)
        return d[k], n[k], (w[k] if w is not None else None)

    score = np.full(len(x), -np.inf)
    last_scores = np.zeros((len(x), len(grid)))
    last_step = step.copy()
    active = np.ones(len(x), dtype=bool)
    for _ in range(max_iter):
        if not active.any():
            break
        ia = np.flatnonzero(active)
        cand = x[ia, None, :] + offsets[None] * step[ia, None, :]
        cand[..., 0] = np.maximum(cand[..., 0], 1.0)
        da, na, wa = rows(ia)
        s = _evaluate(cand, band, da, na, bk, wa)
        best = np.argmax(s, axis=1)
        stay = best == centre
        x[ia] = cand[np.arange(len(ia)), best]
        score[ia] = s[np.arange(len(ia)), best]
        last_scores[ia], last_step[ia] = s, step[ia]
        step[ia[stay]] *= 0.5
        active[ia] = step[ia, 0] >= tol_A
    if polish:
        move = np.zeros_like(x)
        move[:, dims] = _quadratic_step(grid, last_scores) * last_step[:, dims]
        moved = np.any(move != 0, axis=1)
        if moved.any():
            im = np.flatnonzero(moved)
            cand = (x[im] + move[im])[:, None, :]
            dm, nm, wm = rows(im)
            s = _evaluate(cand, band, dm, nm, bk, wm)[:, 0]
            better = s >= score[im]
            x[im[better]], score[im[better]] = cand[better, 0], s[better]
    x[:, 3] = np.mod(x[:, 3], np.pi)
    return x, score


def to_relion(theta: np.ndarray) -> dict[str, np.ndarray]:
    """theta (N, 4) -> RELION's rlnDefocusU/V (A, U >= V), rlnDefocusAngle (degrees in [0, 180)), rlnPhaseShift
    (degrees in [0, 180))."""
    theta = np.atleast_2d(theta)
    dev = np.hypot(theta[:, 1], theta[:, 2])
    angle = np.mod(np.rad2deg(0.5 * np.arctan2(theta[:, 2], theta[:, 1])), 180.0)
    return {"rlnDefocusU": theta[:, 0] + dev, "rlnDefocusV": theta[:, 0] - dev, "rlnDefocusAngle": angle,
            "rlnPhaseShift": np.mod(np.rad2deg(theta[:, 3]), 180.0)}
