"""CTF estimation of micrographs after CTFFIND4, on the CPU or the GPU with one code path, on 1 or N MPI ranks.

Rohou A, Grigorieff N (2015) CTFFIND4: Fast and accurate defocus estimation from electron micrographs.
J Struct Biol 192:216-221. doi:10.1016/j.jsb.2015.08.008

Per batch of micrographs of one shape (:class:`CtfEstimator`):

1. the average amplitude spectrum of half-overlapping tiles, all tiles of the batch in one batched FFT, and its
   background removed by CTFFIND's box convolution (:mod:`cryopipe.ctfestimate.spectrum`);
2. a coarse grid over mean defocus x astigmatism (x phase shift), scored by the NCC between CTF^2 and the
   spectrum on a fixed subset of the band's pixels: one (candidates x pixels) cosine matrix, shared by the
   batch, times the (pixels x micrographs) data; the best few distinct candidates per micrograph are refined
   by a batched pattern search on that subset, the best one again on every band pixel, ending with a quadratic
   step (:mod:`cryopipe.ctfestimate.search`);
3. the fit resolution from the equiphase average; where it falls inside the band, the fit is refined again on the
   pixels up to 1.1 x the fit frequency only (beyond, the band holds noise and no rings: at low SNR half of its
   pixels), and the resolution measured again; the figure of merit (the NCC over the whole band) and the flag for
   micrographs without trustworthy Thon rings; optionally each tile's defocus and a plane through them
   (:mod:`cryopipe.ctfestimate.fit`).

Notebook use::

    est = CtfEstimator(CtfEstimateParams(voltage=300, cs=2.7, amplitude_contrast=0.1), angpix=1.0, bk=bk)
    fits = est.estimate(images)          # images (B, H, W) -> list of CtfFit (defocus U/V/angle, FOM, ...)
"""

from __future__ import annotations

import logging
import time
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
    scores_shared,
    to_relion,
)
from cryopipe.ctfestimate.spectrum import SpectrumGrid, subtract_background, tile_centres, tile_power
from cryopipe.errors import InputError, require
from cryopipe.io.mrc import UNSET_PIXEL_SIZES, write_mrc
from cryopipe.io.star import read_table, write_star
from cryopipe.parallel import SerialComm, split_range
from cryopipe.pick.stage import Micrograph, list_micrographs, micrograph_angpix, prefetch
from cryopipe.stage import StageContext, StageResult

log = logging.getLogger(__name__)

PHASE_STEP_DEG = 15.0  # coarse phase-shift grid
STARTS = 3  # coarse candidates refined per micrograph
FIRST_TOL_A = 30.0  # the refinement on the coarse pixel subset stops at this defocus step
FINAL_TOL_A = 2.0
FIT_BAND_MARGIN = 1.1  # a fit resolution inside the band: refine again up to 1.1 x its frequency
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
    diagnostics : write the per-micrograph PNG and .ctf. angpix : pixel size, A/px (None: the STAR's optics,
    else the MRC header).
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


class CtfEstimator:
    """Everything that depends only on the geometry (tile, pixel size, optics, band): the band's pixels, the
    coarse pixel subset and the coarse candidate grid, on the device; :meth:`estimate` fits batches."""

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

    def _search(self, d, B: int):
        """Coarse grid, then the two refinements. d: (B, T, T//2+1) on the device. Returns (theta (B, 4), score)."""
        xp, bk, p = self.bk.xp, self.bk, self.params
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

    def _resolution(self, spectrum, theta: np.ndarray):
        """(fit resolution A, EPA dict) of one spectrum (T, T//2+1) on the device for theta (4,)."""
        p = self.params
        s, prof, ctf2, counts = fitmod.equiphase_average(spectrum, theta, self.grid, self.optics, self.bk)
        res, corr, first, last = fitmod.fit_resolution(s, prof, ctf2, counts, theta[0], self.grid, self.optics,
                                                       p.fit_threshold)
        return res, {"s": s, "profile": prof, "ctf2": ctf2, "corr": corr, "first": first, "last": last,
                     "resolution_A": res, "threshold": p.fit_threshold}

    def _within_fit(self, spectrum, theta: np.ndarray, resolution_A: float):
        """Refine theta again on the band's pixels up to 1.1 x the fit frequency (the shells beyond carry no rings,
        only noise), and score it on the whole band. Returns (theta (4,), score)."""
        xp, bk = self.bk.xp, self.bk
        band = self.band.within(min(self.grid.s_max, FIT_BAND_MARGIN / resolution_A), self.optics, xp)
        d, n = band_data(spectrum[None], band, xp)
        free = (True, True, True, self.params.phase_shift)
        th, _ = refine(theta[None], np.zeros(1, dtype=np.int64), np.array([FIRST_TOL_A] * 3 + [np.deg2rad(4.0)]),
                       band, d, n, bk, free, tol_A=FINAL_TOL_A)
        fd, fn = band_data(spectrum[None], self.band, xp)
        score = bk.asnumpy(scores_shared(xp.asarray(augment(th)), self.band, fd, fn, bk))[0, 0]
        return th[0], float(score)

    def estimate(self, images) -> list[CtfFit]:
        """Fit every micrograph of ``images`` (B, H, W) (host or device; H, W >= tile)."""
        xp, bk, p, grid = self.bk.xp, self.bk, self.params, self.grid
        x = bk.asarray(images, dtype=xp.float32)
        B = x.shape[0]
        constant = bk.asnumpy(x.reshape(B, -1).std(axis=1)) == 0
        mean_power, tile_powers = tile_power(x, p.tile, bk, keep_tiles=p.per_tile)
        d = subtract_background(xp.sqrt(mean_power), grid, bk)
        theta, score = self._search(d, B)
        fits = []
        for b in range(B):
            res, epa = self._resolution(d[b], theta[b])
            z = score[b] * np.sqrt(self.band.size)
            if not constant[b] and z >= p.min_z and FIT_BAND_MARGIN / res < grid.s_max:
                theta[b], score[b] = self._within_fit(d[b], theta[b], res)
                res, epa = self._resolution(d[b], theta[b])
            sc = float(score[b]) if not constant[b] else 0.0
            flagged = bool(constant[b]) or fitmod.is_flagged(sc, self.band.size, res, grid, p.min_z)
            fit = CtfFit(theta[b], sc, sc * np.sqrt(self.band.size), res, flagged, bool(constant[b]),
                         bk.asnumpy(d[b]), epa)
            if p.per_tile:
                self._tiles(fit, tile_powers[b], x.shape[1:])
            fits.append(fit)
        return fits

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


def _batches(items, size: int):
    """Consecutive (micrograph, image) pairs grouped by image shape, at most ``size`` per group."""
    batch: list = []
    for item in items:
        if batch and (len(batch) == size or batch[0][1].shape != item[1].shape):
            yield batch
            batch = []
        batch.append(item)
    if batch:
        yield batch


def _read_checked(mics: list[Micrograph], tile: int, errors: list):
    """(micrograph, image) in order, read ahead by a thread; stops at the first input error (kept in ``errors``)."""
    for mic, image, err in prefetch(mics):
        if err is not None:
            if not isinstance(err, InputError):
                raise err
            errors.append(err)
            return
        if image.ndim != 2:
            errors.append(InputError(f"expected one 2D micrograph, got shape {image.shape}", mic.path, "data"))
            return
        if min(image.shape) < tile:
            errors.append(InputError(f"micrograph of {image.shape[1]}x{image.shape[0]} px is smaller than the "
                                     f"{tile} px tile (give a smaller --tile)", mic.path, "--tile"))
            return
        yield mic, image


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


def _write_diagnostics(est: CtfEstimator, mic: Micrograph, fit: CtfFit, out: Path) -> list[Path]:
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
    written.append(report.diagnostic_png(out / "diagnostics" / f"{mic.stem}.png", image, fit.epa, title, radius))
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
    for batch in _batches(_read_checked(mine, params.tile, errors), est.batch_size()):
        fits = est.estimate(np.stack([image for _, image in batch]))
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
                written += _write_diagnostics(est, mic, fit, out)
                ctf_image = f"{root / 'spectra' / (mic.stem + '.ctf')}:mrc"
            rows.append(_row(mic, fit, ctf_image, params.per_tile))
        progress.update(len(batch))
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
