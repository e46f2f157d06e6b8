"""CTF estimation of micrographs after CTFFIND4, on the CPU or the GPU with one code path, on 1 or N MPI ranks.

Rohou A, Grigorieff N (2015) CTFFIND4: Fast and accurate defocus estimation from electron micrographs.
J Struct Biol 192:216-221. doi:10.1016/j.jsb.2015.08.008

Per micrograph as it arrives (threads read the micrographs and copy them to the device ahead of the estimation,
so that reading the next batch overlaps estimating this one), then per batch of micrographs (:class:`CtfEstimator`):

1. the average amplitude spectrum of half-overlapping tiles, all tiles of a micrograph in one batched FFT, and
   its background removed by CTFFIND's box convolution (:mod:`cryopipe.ctfestimate.spectrum`), queued on the
   device without waiting for it;
2. a coarse grid over mean defocus x astigmatism (x phase shift), scored by the NCC between CTF^2 and the
   spectrum on a fixed subset of the band's pixels: one (candidates x pixels) cosine matrix, shared by the
   batch, times the (pixels x micrographs) data; the best few distinct candidates per micrograph are refined
   by a batched pattern search on that subset, the best one again on every band pixel, ending with a quadratic
   step (:mod:`cryopipe.ctfestimate.search`);
3. the fit resolution from the equiphase average; where it falls inside the band, the fit is refined again on the
   pixels up to 1.1 x the fit frequency only (beyond, the band holds noise and no rings: at low SNR half of its
   pixels), and the resolution measured again; the figure of merit (the NCC over the whole band) and the flag for
   micrographs without trustworthy Thon rings; optionally each tile's defocus and a plane through them
   (:mod:`cryopipe.ctfestimate.fit`). Every step is batched over the micrographs: one equiphase pass for all, and
   one refinement for all, each micrograph's pixels up to its own fit resolution a prefix of the band's pixels
   sorted by radius (a 0/1 weight per pixel), so that the device is waited for a fixed number of times per batch,
   not per micrograph.

Notebook use::

    est = CtfEstimator(CtfEstimateParams(voltage=300, cs=2.7, amplitude_contrast=0.1), angpix=1.0, bk=bk)
    fits = est.estimate(images)          # images (B, H, W) -> list of CtfFit (defocus U/V/angle, FOM, ...)

or step by step (what :func:`estimate_micrographs` does): ``est.fit(Spectra.join([est.spectra(image) for image
in images], xp))``, :meth:`CtfEstimator.fit` being :meth:`~CtfEstimator.search` then :meth:`~CtfEstimator.assess`.
"""

from __future__ import annotations

import itertools
import logging
import multiprocessing
import os
import time
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from cryopipe.ctf import CTFParams
from cryopipe.ctfestimate import fit as fitmod
from cryopipe.ctfestimate import report
from cryopipe.ctfestimate.search import (
    COARSE_PIXELS,
    Optics,
    augment,
    band_data,
    band_pixels,
    best_starts,
    coarse_grid,
    defocus_step,
    refine,
    scores_batched,
    scores_shared,
    to_relion,
)
from cryopipe.ctfestimate.spectrum import SpectrumGrid, subtract_background, tile_centres, tile_power
from cryopipe.errors import InputError, require
from cryopipe.io.mrc import UNSET_PIXEL_SIZES, read_mrc, write_mrc
from cryopipe.io.star import read_table, write_star
from cryopipe.parallel import SerialComm, split_range
from cryopipe.pick.stage import Micrograph, list_micrographs, micrograph_angpix
from cryopipe.stage import StageContext, StageResult

log = logging.getLogger(__name__)

PHASE_STEP_DEG = 15.0  # coarse phase-shift grid
STARTS = 3  # coarse candidates refined per micrograph
FIRST_TOL_A = 30.0  # the refinement on the coarse pixel subset stops at this defocus step
FINAL_TOL_A = 2.0
FIT_BAND_MARGIN = 1.1  # a fit resolution inside the band: refine again up to 1.1 x its frequency
READ_THREADS = 4  # micrographs read and copied to the device at once (at most the CPUs), ahead of the estimation
PNG_WORKERS = 4  # processes drawing the diagnostic PNGs (at most a quarter of the CPUs, at least one)
STAR_COLUMNS = ["rlnMicrographName", "rlnOpticsGroup", "rlnCtfImage", "rlnDefocusU", "rlnDefocusV",
                "rlnCtfAstigmatism", "rlnDefocusAngle", "rlnCtfFigureOfMerit", "rlnCtfMaxResolution",
                "rlnPhaseShift", "cpCtfFlagged"]
PLANE_COLUMNS = ["cpDefocusPlaneA", "cpDefocusPlaneB", "cpDefocusPlaneRms"]


@dataclass
class CtfEstimateParams:
    """What to estimate and how. voltage kV, cs mm, amplitude_contrast Q0 (required: no silent defaults).

    tile : tile size, px (even). resolution_range_A : (low, high) limits of the fit band, Angstrom.
    defocus_range_um : searched mean defocus, micrometres. max_astigmatism_A : |dU - dV| of the coarse grid
    (the refinement may go beyond). phase_shift : also fit a phase-plate phase shift (0-180 degrees).
    per_tile : fit each tile's defocus and a defocus plane. fit_threshold : windowed correlation defining the
    fit resolution. min_z : flag fits whose NCC * sqrt(band pixels) is below this. batch_size : micrographs per
    batch (None: 4 on the CPU, 16 on the GPU; tiles are Fourier transformed in chunks where memory is short).
    diagnostics : write the per-micrograph PNG and .ctf. png_workers : processes drawing the PNGs beside the
    estimation (None: :class:`PngWriter`'s default; 0: in the main thread). angpix : pixel size, A/px (None: the
    STAR's optics, else the MRC header).
    """

    voltage: float
    cs: float
    amplitude_contrast: float
    tile: int = 512
    resolution_range_A: tuple[float, float] = (30.0, 5.0)
    defocus_range_um: tuple[float, float] = (0.3, 5.0)
    max_astigmatism_A: float = 3000.0
    phase_shift: bool = False
    per_tile: bool = False
    fit_threshold: float = fitmod.FIT_THRESHOLD
    min_z: float = fitmod.MIN_Z
    batch_size: int | None = None
    diagnostics: bool = True
    png_workers: int | None = None
    angpix: float | None = None

    def validate(self, angpix: float | None = None) -> None:
        for name, flag in (("voltage", "--voltage"), ("cs", "--cs"), ("amplitude_contrast", "--amplitude-contrast")):
            value = getattr(self, name)
            require(value is not None, "required (no default: give the microscope's value)", field=flag)
            require(bool(np.isfinite(value)), f"must be finite, got {value}", field=flag)
        require(self.voltage > 0, f"must be positive, got {self.voltage}", field="--voltage")
        require(self.cs >= 0, f"must be >= 0, got {self.cs}", field="--cs")
        require(0 <= self.amplitude_contrast < 1, f"must be in [0, 1), got {self.amplitude_contrast}",
                field="--amplitude-contrast")
        require(self.tile >= 64 and self.tile % 2 == 0, f"must be an even number >= 64, got {self.tile}",
                field="--tile")
        low, high = self.resolution_range_A
        require(low > high > 0, f"need low > high > 0 Angstrom, got {low} {high}", field="--resolution-range")
        lo, hi = self.defocus_range_um
        require(0 < lo < hi, f"need 0 < min < max micrometres, got {lo} {hi}", field="--defocus-range")
        require(self.max_astigmatism_A >= 0, "must be >= 0", field="--max-astigmatism")
        require(self.png_workers is None or self.png_workers >= 0, "must be >= 0", field="--png-workers")
        require(0 < self.fit_threshold < 1, "must be in (0, 1)", field="--fit-threshold")
        require(self.batch_size is None or self.batch_size >= 1, "must be >= 1", field="--batch-size")
        if angpix is not None:
            require(high >= 2 * angpix, f"high-resolution limit {high} A is beyond Nyquist ({2 * angpix:g} A at "
                    f"{angpix:g} A/px); give --resolution-range {low:g} {2 * angpix:g} or coarser",
                    field="--resolution-range")
            require(low * 2 <= self.tile * angpix, f"low-resolution limit {low} A does not fit a {self.tile} px "
                    f"tile at {angpix:g} A/px", field="--resolution-range")


@dataclass
class CtfFit:
    """One micrograph's result. theta : [mean A, a_c A, a_s A, phase rad] (see search). score : NCC (the figure
    of merit). resolution_A : fit resolution. spectrum : (T, T//2+1) background-subtracted, host. epa : 1D curves
    for the diagnostic plot. tiles : per-tile table and plane (per_tile only)."""

    theta: np.ndarray
    score: float
    z: float
    resolution_A: float
    flagged: bool
    constant: bool
    spectrum: np.ndarray
    epa: dict
    tiles: pd.DataFrame | None = None
    plane: tuple[float, float, float] | None = None

    def relion(self) -> dict[str, float]:
        return {k: float(v[0]) for k, v in to_relion(self.theta[None]).items()}


@dataclass
class Spectra:
    """Background-subtracted spectra of micrographs, on the device (:meth:`CtfEstimator.spectra`): d (B, T, T//2+1)
    float32; constant (B,) bool: micrographs of one value; shapes: each micrograph's (H, W); tiles: each one's
    tile power spectra (n_tiles, T, T//2+1) (per_tile only, else None)."""

    d: object
    constant: object
    shapes: list
    tiles: list | None = None

    @staticmethod
    def join(parts: list[Spectra], xp) -> Spectra:
        """One batch of the spectra of ``parts``, in order."""
        return Spectra(xp.concatenate([q.d for q in parts]), xp.concatenate([q.constant for q in parts]),
                       [shape for q in parts for shape in q.shapes],
                       None if parts[0].tiles is None else [t for q in parts for t in q.tiles])


class CtfEstimator:
    """Everything that depends only on the geometry (tile, pixel size, optics, band): the band's pixels (also sorted
    by radius), the coarse pixel subset and the coarse candidate grid, on the device; :meth:`estimate` fits batches.
    """

    def __init__(self, params: CtfEstimateParams, angpix: float, bk):
        params.validate(angpix)
        self.params, self.angpix, self.bk = params, float(angpix), bk
        xp = bk.xp
        low, high = params.resolution_range_A
        self.grid = SpectrumGrid(params.tile, self.angpix, 1.0 / low, 1.0 / high)
        self.optics = Optics(params.voltage, params.cs, params.amplitude_contrast)
        self.band = band_pixels(self.grid, self.optics, xp)
        require(self.band.size >= 100, f"the fit band {low}-{high} A holds only {self.band.size} pixels of a "
                f"{params.tile} px tile", field="--resolution-range")
        pick = np.random.default_rng(0).choice(self.band.size, min(self.band.size, COARSE_PIXELS), replace=False)
        self.coarse_band = self.band.subset(np.sort(pick), xp)
        u = np.asarray(bk.asnumpy(self.band.radius_sq(self.optics)))
        order = np.argsort(u, kind="stable")
        self.radial_band, self.radial_u = self.band.subset(order, xp), u[order]  # the band's pixels by radius
        self.step = defocus_step(self.optics, self.grid.s_max)
        lo, hi = params.defocus_range_um
        # with a phase shift the coarse astigmatism lattice is twice as coarse (a quarter of the points): the
        # refinement finds the astigmatism, and the grid stays ~3x that of a search without phase shift
        self.coarse = coarse_grid((lo * 1e4, hi * 1e4), params.max_astigmatism_A, self.step,
                                  PHASE_STEP_DEG if params.phase_shift else None,
                                  self.step * (2.0 if params.phase_shift else 1.0))
        self.coarse_dev = xp.asarray(augment(self.coarse))
        log.info("CTF search: %d px tiles at %.4g A/px, band %.1f-%.1f A (%d px, %d for the coarse grid), "
                 "%d coarse candidates (defocus step %.0f A)", params.tile, self.angpix, low, high, self.band.size,
                 self.coarse_band.size, len(self.coarse), self.step)

    def batch_size(self) -> int:
        if self.params.batch_size:
            return self.params.batch_size
        if not self.bk.is_gpu:
            return 4
        return 16

    def upload(self, image):
        """One micrograph (H, W) as float32 on the device (the reader threads of :func:`estimate_micrographs` call
        it, so that the copy overlaps the estimation)."""
        return self.bk.asarray(image, dtype=self.bk.xp.float32)

    def spectra(self, images) -> Spectra:
        """Background-subtracted spectra of micrographs (B, H, W) or of one (H, W), host or device. Only queues work
        on the device (nothing here waits for it)."""
        xp, bk, p = self.bk.xp, self.bk, self.params
        x = bk.asarray(images, dtype=xp.float32)
        x = x[None] if x.ndim == 2 else x
        B = x.shape[0]
        constant = x.reshape(B, -1).std(axis=1) == 0
        mean_power, tile_powers = tile_power(x, p.tile, bk, keep_tiles=p.per_tile)
        d = subtract_background(xp.sqrt(mean_power), self.grid, bk)
        return Spectra(d, constant, [tuple(x.shape[1:])] * B, list(tile_powers) if p.per_tile else None)

    def search(self, d):
        """Coarse grid, then the two refinements, of spectra d (B, T, T//2+1) on the device. Returns (theta (B, 4),
        score (B,)), host."""
        xp, bk, p = self.bk.xp, self.bk, self.params
        B = d.shape[0]
        cd, cn = band_data(d, self.coarse_band, xp)
        scores = bk.asnumpy(scores_shared(self.coarse_dev, self.coarse_band, cd, cn, bk))
        starts = best_starts(scores, self.coarse, STARTS, 2 * self.step).reshape(-1, 4)
        free = (True, True, True, p.phase_shift)
        half_phase = np.deg2rad(PHASE_STEP_DEG) / 2
        th, sc = refine(starts, np.repeat(np.arange(B), STARTS), np.array([self.step / 2] * 3 + [half_phase]),
                        self.coarse_band, cd, cn, bk, free, tol_A=FIRST_TOL_A, polish=False)
        best = np.argmax(sc.reshape(B, STARTS), axis=1)
        th = th.reshape(B, STARTS, 4)[np.arange(B), best]
        fd, fn = band_data(d, self.band, xp)
        return refine(th, np.arange(B), np.array([FIRST_TOL_A] * 3 + [np.deg2rad(4.0)]), self.band, fd, fn, bk,
                      free, tol_A=FINAL_TOL_A)

    def assess(self, spectra: Spectra, theta: np.ndarray, score: np.ndarray) -> list[CtfFit]:
        """From the search's (theta (B, 4), score (B,)): the fit resolutions; where one falls inside the band, the
        fit refined again up to it and the resolution measured again; the FOM and flags; all micrographs at once.
        With per_tile, each micrograph's tiles and plane (one micrograph at a time)."""
        bk, p, grid = self.bk, self.params, self.grid
        d = spectra.d
        theta, score = np.array(theta, dtype=np.float64), np.array(score, dtype=np.float64)
        constant = bk.asnumpy(spectra.constant).astype(bool)
        res, epa = self._resolutions(d, theta)
        z = score * np.sqrt(self.band.size)
        redo = np.flatnonzero(~constant & (z >= p.min_z) & (FIT_BAND_MARGIN / res < grid.s_max))
        if redo.size:
            theta[redo], score[redo] = self._within_fit(d, redo, theta[redo], res[redo])
            res[redo], again = self._resolutions(d[bk.xp.asarray(redo)], theta[redo])
            for b, e in zip(redo, again, strict=True):
                epa[b] = e
        host = bk.asnumpy(d)
        fits = []
        for b in range(d.shape[0]):
            sc = float(score[b]) if not constant[b] else 0.0
            flagged = bool(constant[b]) or fitmod.is_flagged(sc, self.band.size, res[b], grid, p.min_z)
            fit = CtfFit(theta[b], sc, sc * np.sqrt(self.band.size), float(res[b]), flagged, bool(constant[b]),
                         host[b], epa[b])
            if p.per_tile:
                self._tiles(fit, spectra.tiles[b], spectra.shapes[b])
            fits.append(fit)
        return fits

    def fit(self, spectra: Spectra) -> list[CtfFit]:
        """:meth:`search` then :meth:`assess` of a batch of spectra."""
        return self.assess(spectra, *self.search(spectra.d))

    def estimate(self, images) -> list[CtfFit]:
        """Fit every micrograph of ``images`` (B, H, W), or a list of 2D micrographs of any shapes (host or device;
        H, W >= tile), one batch."""
        return self.fit(Spectra.join([self.spectra(image) for image in images], self.bk.xp))

    def _resolutions(self, d, theta: np.ndarray):
        """(fit resolutions A (B,), EPA dicts) of spectra d (B, T, T//2+1) on the device for theta (B, 4)."""
        p = self.params
        s, prof, ctf2, counts = fitmod.equiphase_average(d, theta, self.grid, self.optics, self.bk)
        res, corr, first, last = fitmod.fit_resolutions(s, prof, ctf2, counts, theta[:, 0], self.grid, self.optics,
                                                        p.fit_threshold)
        return res, [{"s": s, "profile": prof[b], "ctf2": ctf2[b], "corr": corr[b], "first": first,
                      "last": int(last[b]), "resolution_A": float(res[b]), "threshold": p.fit_threshold}
                     for b in range(len(res))]

    def _within_fit(self, d, rows: np.ndarray, theta: np.ndarray, resolution_A: np.ndarray):
        """Refine theta (N, 4) of the spectra ``rows`` of d again, each on the band's pixels up to 1.1 x its fit
        frequency (the shells beyond carry no rings, only noise), all in one refinement: the pixels sorted by radius,
        each spectrum's are a prefix (weight 1, the rest 0). Score them on the whole band. Returns (theta (N, 4),
        score (N,))."""
        xp, bk = self.bk.xp, self.bk
        s_max = np.minimum(self.grid.s_max, FIT_BAND_MARGIN / resolution_A)
        count = np.searchsorted(self.radial_u, (s_max * s_max).astype(np.float32), side="right")
        band = self.radial_band.head(int(count.max()), xp)
        weights = (xp.arange(band.size)[None, :] < xp.asarray(count)[:, None]).astype(xp.float32)
        spectra = d[xp.asarray(rows)]
        data, norms = band_data(spectra, band, xp, weights)
        free = (True, True, True, self.params.phase_shift)
        th, _ = refine(theta, np.arange(len(rows)), np.array([FIRST_TOL_A] * 3 + [np.deg2rad(4.0)]), band, data,
                       norms, bk, free, tol_A=FINAL_TOL_A, weights=weights)
        fd, fn = band_data(spectra, self.band, xp)
        score = bk.asnumpy(scores_batched(xp.asarray(augment(th[:, None])), self.band, fd, fn, bk))[:, 0]
        return th, score.astype(np.float64)

    def _tiles(self, fit: CtfFit, powers, shape) -> None:
        """Per-tile defocus on the band up to the micrograph's fit resolution, and the plane through the tiles whose
        fit has z >= 3, weighted by their NCC^2 (fit.tiles, fit.plane); no plane for a flagged fit."""
        bk, p = self.bk, self.params
        centres = tile_centres(tuple(shape), p.tile)
        d_tiles = subtract_background(bk.xp.sqrt(powers), self.grid, bk)
        band = self.band.within(min(self.grid.s_max, FIT_BAND_MARGIN / fit.resolution_A), self.optics, bk.xp)
        defocus, score = fitmod.tile_defocus(d_tiles, fit.theta, band, bk)
        z = score * np.sqrt(band.size)
        weights = np.where((z >= 3.0) & (not fit.flagged), np.maximum(score, 0.0) ** 2, 0.0)
        a, b, c, rms, kept = fitmod.fit_plane(centres, defocus, weights, (shape[1] / 2, shape[0] / 2))
        fit.tiles = pd.DataFrame({"rlnCoordinateX": centres[:, 0], "rlnCoordinateY": centres[:, 1],
                                  "cpDefocusMean": defocus, "cpScore": score, "cpKept": kept.astype(int)})
        fit.plane = (a, b, rms)


@dataclass
class CtfResult:
    """What :func:`estimate_micrographs` did (complete on rank 0): the ``table`` written, ``outputs``, ``notes``."""

    table: pd.DataFrame
    outputs: list[Path] = field(default_factory=list)
    notes: dict = field(default_factory=dict)


def _use_device(bk) -> None:
    """Make ``bk``'s device the current one of this thread (CuPy's current device is per thread)."""
    if bk.is_gpu:
        bk.xp.cuda.Device(bk.device_id).use()


def _load(mic: Micrograph, est: CtfEstimator):
    """One micrograph read, checked and on the device (in a reader thread)."""
    image = read_mrc(mic.path)[0]
    tile = est.params.tile
    if image.ndim != 2:
        raise InputError(f"expected one 2D micrograph, got shape {image.shape}", mic.path, "data")
    if min(image.shape) < tile:
        raise InputError(f"micrograph of {image.shape[1]}x{image.shape[0]} px is smaller than the {tile} px tile "
                         "(give a smaller --tile)", mic.path, "--tile")
    return est.upload(image)


def _read_ahead(mics: list[Micrograph], est: CtfEstimator, errors: list, depth: int, threads: int = READ_THREADS):
    """(micrograph, image on the device) in order. ``threads`` threads read, check and copy to the device up to
    ``depth`` micrographs ahead of the consumer (at least a batch: the next batch is read while this one is
    estimated). Stops at the first input error (kept in ``errors``); other errors are raised.

    The copies go to the device's one default stream (as every kernel), so the kernels that use an image run after
    its copy.
    """
    threads = max(1, min(threads, _usable_cpus()))
    todo = iter(mics)
    pool = ThreadPoolExecutor(threads, thread_name_prefix="micrograph-reader", initializer=_use_device,
                              initargs=(est.bk,))
    try:
        ahead = deque((m, pool.submit(_load, m, est)) for m in itertools.islice(todo, max(1, depth)))
        while ahead:
            mic, future = ahead.popleft()
            try:
                image = future.result()
            except InputError as err:
                errors.append(err)
                return
            for m in itertools.islice(todo, 1):
                ahead.append((m, pool.submit(_load, m, est)))
            yield mic, image
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _row(mic: Micrograph, fit: CtfFit, ctf_image: str, per_tile: bool) -> dict:
    r = fit.relion()
    row = {"rlnMicrographName": mic.name, "rlnOpticsGroup": 1, "rlnCtfImage": ctf_image,
           "rlnDefocusU": r["rlnDefocusU"], "rlnDefocusV": r["rlnDefocusV"],
           "rlnCtfAstigmatism": r["rlnDefocusU"] - r["rlnDefocusV"], "rlnDefocusAngle": r["rlnDefocusAngle"],
           "rlnCtfFigureOfMerit": fit.score, "rlnCtfMaxResolution": fit.resolution_A,
           "rlnPhaseShift": r["rlnPhaseShift"], "cpCtfFlagged": int(fit.flagged)}
    if per_tile:
        a, b, rms = fit.plane if fit.plane is not None else (0.0, 0.0, 0.0)
        row.update(cpDefocusPlaneA=a, cpDefocusPlaneB=b, cpDefocusPlaneRms=rms)
    return row


def _usable_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class PngWriter:
    """Draws the diagnostic PNGs (:func:`report.diagnostic_png`, ~0.1 s of matplotlib each, more than the whole
    estimation of a micrograph on a GPU) in worker processes while the main thread estimates the next batch.

    workers : processes (default ``PNG_WORKERS``, at most a quarter of the usable CPUs, at least 1); 0 draws in
    the calling thread. Processes are spawned (never forked from a process holding a CUDA context). At most
    ``4 x workers`` drawings wait; :meth:`close` waits for all and re-raises a worker's error.
    """

    def __init__(self, workers: int | None = None):
        self.workers = max(1, min(PNG_WORKERS, _usable_cpus() // 4)) if workers is None else int(workers)
        self.pool = (ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"))
                     if self.workers else None)
        self.pending: deque[Future] = deque()
        for _ in range(self.workers):  # start the workers (~1 s of imports each) while the first batch is read
            self.pool.submit(report.ready)

    def submit(self, path: Path, image: np.ndarray, epa: dict, title: str, radius: float) -> Path:
        if self.pool is None:
            return report.diagnostic_png(path, image, epa, title, radius)
        while len(self.pending) >= 4 * self.workers:
            self.pending.popleft().result()
        self.pending.append(self.pool.submit(report.diagnostic_png, path, image, epa, title, radius))
        return path

    def close(self) -> None:
        try:
            while self.pending:
                self.pending.popleft().result()
        finally:
            if self.pool is not None:
                self.pool.shutdown(wait=True, cancel_futures=True)


def _write_diagnostics(est: CtfEstimator, mic: Micrograph, fit: CtfFit, out: Path, png: PngWriter) -> list[Path]:
    p = est.params
    r = fit.relion()
    ctf = CTFParams(r["rlnDefocusU"], r["rlnDefocusV"], r["rlnDefocusAngle"], p.voltage, p.cs,
                    p.amplitude_contrast, phase_shift=r["rlnPhaseShift"])
    image = report.diagnostic_image(fit.spectrum, ctf, est.angpix, est.grid.r_min_px)
    written = [out / "spectra" / f"{mic.stem}.ctf"]
    write_mrc(written[0], image, est.angpix)
    title = (f"{mic.stem}: {r['rlnDefocusU']:.0f} / {r['rlnDefocusV']:.0f} A, {r['rlnDefocusAngle']:.0f} deg, "
             f"FOM {fit.score:.3f}{' FLAGGED' if fit.flagged else ''}")
    radius = 1.05 * est.grid.s_max * est.grid.tile * est.angpix
    written.append(png.submit(out / "diagnostics" / f"{mic.stem}.png", image, fit.epa, title, radius))
    if fit.tiles is not None:
        written.append(out / "tiles" / f"{mic.stem}.star")
        write_star(written[-1], {"tiles": fit.tiles})
    return written


@dataclass
class CtfEstimateInputs:
    """Micrographs (files, glob patterns or a micrographs STAR) and, for simulated data, a CTF STAR of the true
    values to compare with (``truth``)."""

    micrographs: list[str]
    truth: Path | None = None


def run(params: CtfEstimateParams, inputs: CtfEstimateInputs, out: Path, ctx: StageContext) -> StageResult:
    """Estimate every micrograph's CTF (:func:`estimate_micrographs`) into ``out``. Notes: counts, flagged
    micrographs, timings and, with ``truth``, the median errors."""
    params.validate()
    mics = list_micrographs(inputs.micrographs)
    result = estimate_micrographs(mics, params, out, ctx.backend, ctx.comm, params.angpix, ctx.final(out),
                                  inputs.truth)
    return StageResult(files=result.outputs, notes=result.notes,
                       inputs=[m.path for m in mics] + ([Path(inputs.truth)] if inputs.truth else []))


def _estimate_mine(mine: list[Micrograph], est: CtfEstimator, params: CtfEstimateParams, out: Path, root: Path,
                   png: PngWriter | None, errors: list, rows: list, written: list, progress) -> None:
    """Estimate this rank's micrographs in batches (read ahead by threads), appending STAR rows and written files;
    an input error stops the reading and is left in ``errors``."""
    batch: list[tuple[Micrograph, Spectra]] = []
    batch_size = est.batch_size()
    for mic, image in _read_ahead(mine, est, errors, depth=batch_size + READ_THREADS):
        batch.append((mic, est.spectra(image)))  # queued on the device while the next micrographs arrive
        if len(batch) < batch_size and len(batch) + len(rows) < len(mine):
            continue
        fits = est.fit(Spectra.join([sp for _, sp in batch], est.bk.xp))
        for (mic, _), fit in zip(batch, fits, strict=True):
            r = fit.relion()
            if fit.constant:
                log.warning("%s: constant micrograph (no Thon rings): flagged", mic.path)
            elif fit.flagged:
                log.warning("%s: no trustworthy Thon rings (FOM %.3f, fit resolution %.1f A): flagged", mic.path,
                            fit.score, fit.resolution_A)
            log.info("%s: defocus U %.0f V %.0f A, angle %.1f deg, phase %.1f deg, FOM %.3f, fit resolution %.1f A",
                     mic.name, r["rlnDefocusU"], r["rlnDefocusV"], r["rlnDefocusAngle"], r["rlnPhaseShift"],
                     fit.score, fit.resolution_A)
            ctf_image = ""
            if params.diagnostics:
                written += _write_diagnostics(est, mic, fit, out, png)
                ctf_image = f"{root / 'spectra' / (mic.stem + '.ctf')}:mrc"
            rows.append(_row(mic, fit, ctf_image, params.per_tile))
        progress.update(len(batch))
        batch = []


def estimate_micrographs(mics: list[Micrograph], params: CtfEstimateParams, out: Path, bk, comm=None,
                         angpix: float | None = None, names_root: Path | None = None, truth=None) -> CtfResult:
    """Estimate the CTF of every micrograph; write ``out/micrographs_ctf.star``, ``out/ctf_summary.png`` and, per
    micrograph, ``out/diagnostics/<stem>.png``, ``out/spectra/<stem>.ctf`` (MRC, RELION's rlnCtfImage) and with
    ``per_tile`` ``out/tiles/<stem>.star``.

    Ranks split the micrographs (contiguous shares); rank 0 gathers the rows and writes the STAR file and the
    summary. An unreadable micrograph, NaNs or one smaller than the tile stop every rank with an InputError.
    ``names_root`` is the folder that paths written into the STAR file refer to (default ``out``). ``truth``: a
    CTF STAR of the true values (simulated data): the summary shows them and the notes hold the errors.
    """
    comm = comm or SerialComm()
    rank, size = comm.Get_rank(), comm.Get_size()
    out = Path(out)
    root = Path(names_root) if names_root is not None else out
    given = angpix
    angpix = micrograph_angpix(mics, angpix)
    if given is None and all(m.angpix is None for m in mics) and angpix in UNSET_PIXEL_SIZES:
        log.warning("pixel size %g A/px from the MRC headers, which many writers leave when it is unset: give "
                    "--angpix if it is not the true one (every defocus scales with it)", angpix)
    est = CtfEstimator(params, angpix, bk)
    mine = mics[split_range(len(mics), rank, size)]
    rows, written, errors = [], [], []
    t0 = time.perf_counter()
    progress = tqdm(total=len(mine), desc="ctf", unit="mic", disable=None if rank == 0 else True)
    png = PngWriter(params.png_workers) if params.diagnostics else None
    try:
        _estimate_mine(mine, est, params, out, root, png, errors, rows, written, progress)
    finally:
        if png is not None:
            png.close()  # every PNG is written (or its error raised) before the STAR names the spectra
    progress.close()
    seconds = time.perf_counter() - t0
    all_errors = [e for e in comm.allgather(errors[0] if errors else None) if e is not None]
    if all_errors:
        raise all_errors[0]
    gathered = comm.gather((rows, written, seconds, len(mine)), root=0)
    if rank != 0:
        return CtfResult(pd.DataFrame())
    rows = [r for g in gathered for r in g[0]]
    written = [w for g in gathered for w in g[1]]
    columns = STAR_COLUMNS + (PLANE_COLUMNS if params.per_tile else [])
    table = pd.DataFrame(rows, columns=columns)
    if not params.diagnostics:
        table = table.drop(columns=["rlnCtfImage"])
    optics = pd.DataFrame({
        "rlnOpticsGroupName": ["opticsGroup1"], "rlnOpticsGroup": [1], "rlnMicrographOriginalPixelSize": [angpix],
        "rlnVoltage": [params.voltage], "rlnSphericalAberration": [params.cs],
        "rlnAmplitudeContrast": [params.amplitude_contrast], "rlnMicrographPixelSize": [angpix],
    })
    write_star(out / "micrographs_ctf.star", {"optics": optics, "micrographs": table})
    written.append(out / "micrographs_ctf.star")
    true, errors = _against_truth(table, truth) if truth is not None and len(table) else (None, {})
    if len(table):
        written.append(report.summary_png(out / "ctf_summary.png", table, true))
    flagged = int(table["cpCtfFlagged"].sum()) if len(table) else 0
    notes = {
        "micrographs": len(table), "flagged": flagged, "angpix": angpix, "tile": params.tile,
        "band_pixels": est.band.size, "coarse_candidates": len(est.coarse), "mpi_size": size,
        "seconds_per_micrograph": round(max(g[2] / max(1, g[3]) for g in gathered), 4),
        **({"against_truth": errors} if errors else {}),
    }
    return CtfResult(table, written, notes)


def _against_truth(table: pd.DataFrame, truth_star) -> tuple[pd.DataFrame, dict]:
    """The true CTF rows of the estimated micrographs (matched by file name) and the median errors: mean defocus
    (A and %), and astigmatism angle (degrees, modulo 180, where the true astigmatism exceeds 300 A)."""
    known = read_table(truth_star, "micrographs", required=["rlnMicrographName", "rlnDefocusU", "rlnDefocusV",
                                                            "rlnDefocusAngle"])
    by_name = known.set_index(known["rlnMicrographName"].map(lambda n: Path(str(n)).name))
    names = table["rlnMicrographName"].map(lambda n: Path(str(n)).name)
    missing = sorted(set(names) - set(by_name.index))
    if missing:
        raise InputError(f"micrograph {missing[0]} is not in the truth STAR", truth_star, "rlnMicrographName")
    true = by_name.loc[names.to_numpy()].reset_index(drop=True)
    mean_est = (table["rlnDefocusU"].to_numpy() + table["rlnDefocusV"].to_numpy()) / 2
    mean_true = (true["rlnDefocusU"].to_numpy() + true["rlnDefocusV"].to_numpy()) / 2
    err = np.abs(mean_est - mean_true)
    astig = np.abs(true["rlnDefocusU"].to_numpy() - true["rlnDefocusV"].to_numpy()) > 300
    d = (table["rlnDefocusAngle"].to_numpy() - true["rlnDefocusAngle"].to_numpy()) % 180
    angle = np.minimum(d, 180 - d)[astig]
    errors = {"median_defocus_error_A": round(float(np.median(err)), 1),
              "median_defocus_error_percent": round(float(np.median(err / mean_true) * 100), 3),
              "median_angle_error_deg": round(float(np.median(angle)), 2) if angle.size else None}
    log.info("against the truth: median defocus error %.1f A (%.2f %%), astigmatism angle %s deg",
             errors["median_defocus_error_A"], errors["median_defocus_error_percent"],
             errors["median_angle_error_deg"])
    return true, errors
