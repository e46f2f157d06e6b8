"""3D auto-refinement with gold-standard FSC (RELION's 3D auto-refine), on the E-step and M-step of em3d.

* Gold standard: every particle belongs to random half 1 or 2 (``rlnRandomSubset``, kept when the input has it).
  Each half is aligned against its own half-map (one :class:`~cryopipe.em3d.estep.EStep` per half, its
  particles' sums in that half's back-projector), and each half-map is reconstructed from its own particles
  only. The two half-maps start from the same reference (low-passed to ``ini_high``) and are averaged in Fourier
  space below ``low_resol_join_halves`` after every reconstruction, so both keep the same overall shape and hand.
  Noise spectra (sigma2) and the translation prior are common to both halves (their sums are added, as RELION).
* Every iteration: the FSC of the two (nearly unregularised) half reconstructions gives the per-half spectral SNR
  FSC / (1 - FSC) and with it tau2 (:func:`~cryopipe.em3d.mstep.reconstruct`); the gold-standard resolution is
  where the FSC drops below 0.143; the next E-step limit is that shell + the resolution increment.
* Auto-sampling and convergence: :class:`~cryopipe.em3d.gold.AutoSampling` (one HEALPix order finer, offsets finer,
  local searches with a Gaussian prior of s.d. = the coarse angular step around each particle's previous
  orientation from ``auto_local_healpix_order`` on; converged after two iterations without resolution gain and
  with small changes at the finest useful sampling).
* Final iteration (after convergence, or as iteration ``max_iterations``): E-step up to Nyquist, then the two
  half-maps (``half1.mrc``, ``half2.mrc``, each regularised with its half-set SNR) and the map of both halves
  (``map.mrc``, regularised with the combined SNR 2 FSC / (1 - FSC)).

Every iteration writes ``run_itNNN_{data,model}.star`` and ``run_itNNN_half{1,2}_class001.mrc`` (masked half-maps
used by the next E-step; the sampling state rides in model_general as ``cp_state_*``) for ``--continue``. As in
RELION, the model STAR names its maps with the output folder (``ctx.final(out)/run_itNNN_half1_class001.mrc``) and
the data STARs and particles.star keep rlnImageName as the input STAR gives it (:mod:`cryopipe.em3d.runner`). A
driver over :mod:`cryopipe.em3d.driver` (parameters, --continue, initial model)::

    from cryopipe.refine3d.stage import EMInputs, Refine3DParams, run
    run(Refine3DParams(symmetry="C4"), EMInputs(particles, reference), Path("r3"), StageContext.local())
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd

from cryopipe.backend import get_backend
from cryopipe.em3d import mstep
from cryopipe.em3d.driver import (
    TABLE_COLUMNS,
    EMInputs,
    check_diameter,
    initial_model,
    model_options,
    resolution_increment,
    start_run,
    validate_common,
)
from cryopipe.em3d.estep import EStep, SearchSpace
from cryopipe.em3d.gold import AutoSampling, join_low_resolution, random_subsets, symmetric_angle
from cryopipe.em3d.model import Model, write_particles_exact, write_star_exact
from cryopipe.em3d.particles import ParticleSet
from cryopipe.em3d.report import iteration_models, plot_fsc_progress, plot_slices
from cryopipe.em3d.runner import CheckpointWriter, gather_results, update_table
from cryopipe.em3d.sampling import OrientationGrid, translation_grid
from cryopipe.errors import require
from cryopipe.fourier import resolution_at
from cryopipe.geometry import euler_to_matrix, symmetry_operators
from cryopipe.io.mrc import write_mrc
from cryopipe.parallel import share_round_robin
from cryopipe.progress import Progress
from cryopipe.stage import StageContext, StageResult

__all__ = ["EMInputs", "Refine3DParams", "Refine3DResult", "refine", "run"]

log = logging.getLogger(__name__)

FIXED = ("particles", "symmetry", "particle_diameter", "ini_high", "seed", "low_resol_join_halves",
         "healpix_order", "offset_range", "offset_step", "auto_local_healpix_order", "tau2_fudge")
FSC_THRESHOLD = 0.143
MIN_PER_HALF = 2  # particles in each gold-standard half set below which refine3d refuses to run


@dataclass
class Refine3DParams:
    """Options of ``cryopipe refine3d`` (lengths in Angstrom, offsets in pixels of the particle box).

    A field None was not given: the default on a fresh run, the checkpoint's value on --continue
    (:mod:`cryopipe.em3d.driver`). ``particle_diameter`` None: 0.9 x the box.
    """

    ini_high: float = 40.0
    healpix_order: int = 1
    auto_local_healpix_order: int = 3
    offset_range: float = 3.0
    offset_step: float = 2.0
    symmetry: str = "C1"
    particle_diameter: float | None = None
    low_resol_join_halves: float = 40.0
    max_iterations: int = 8
    tau2_fudge: float = 1.0
    seed: int = 0
    max_significant: int = 500

    def validate(self) -> None:
        """Check the options (InputError naming the flag)."""
        validate_common(self)
        require(self.auto_local_healpix_order >= 0, "must be >= 0", field="--auto-local-healpix-order")
        require(self.low_resol_join_halves >= 0, "must be >= 0", field="--low-resol-join-halves")
        require(self.max_iterations >= 1, "must be >= 1", field="--max-iterations")

    def check_particles(self, particles: ParticleSet) -> None:
        """Check the options against the loaded particles: at least MIN_PER_HALF particles in each random half set
        (rlnRandomSubset when given, else the balanced split) and a particle diameter that fits the box."""
        table, n = particles.table, len(particles)
        if "rlnRandomSubset" in table.columns:
            subset = table["rlnRandomSubset"].to_numpy()
            valid = bool(np.isin(subset, (1, 2)).all())  # when not, random_subsets says what is wrong
            halves, where = (int((subset == 1).sum()), int((subset == 2).sum())), "rlnRandomSubset"
        else:
            valid, halves, where = True, (n // 2, n - n // 2), "data_particles"
        if valid:
            require(min(halves) >= MIN_PER_HALF, f"gold-standard refinement needs at least {MIN_PER_HALF} particles "
                    f"in each random half set, the file holds {halves[0]} in half 1 and {halves[1]} in half 2",
                    particles.path, where)
        check_diameter(self, particles)


@dataclass
class Refine3DResult:
    """A refinement: ``model`` (maps = the two masked half-maps (2, N, N, N) float32 of the last iteration),
    ``particles`` (their table with angles, origins and rlnRandomSubset), ``params`` (resolved), ``sampling`` (the
    auto-sampling state), ``resolution_A`` (gold-standard, FSC 0.143), ``fsc`` (N//2+1,) half-map FSC per shell,
    ``map`` (N, N, N) final map of both halves or None when the run stopped before its final iteration, ``files``
    written (rank 0), ``inputs`` read (for the provenance record)."""

    model: Model
    particles: ParticleSet
    params: Refine3DParams
    sampling: AutoSampling
    resolution_A: float
    fsc: np.ndarray
    map: np.ndarray | None
    files: list[Path] = field(default_factory=list)
    inputs: list[Path] = field(default_factory=list)


def run(params: Refine3DParams, inputs: EMInputs, out: Path, ctx: StageContext) -> StageResult:
    """Run (or continue) a gold-standard auto-refinement into ``out`` (:func:`refine`). Notes: iteration,
    resolution_A, healpix_order, local_searches, converged, finished, parameters (resolved)."""
    result = refine(params, inputs, out, ctx)
    state = result.sampling
    return StageResult(files=result.files, inputs=result.inputs, notes={
        "parameters": dataclasses.asdict(result.params), "iteration": result.model.iteration,
        "resolution_A": round(float(result.resolution_A), 3), "healpix_order": state.order,
        "local_searches": bool(state.local), "converged": bool(state.converged), "finished": result.map is not None})


def refine(params: Refine3DParams, inputs: EMInputs, out: Path, ctx: StageContext) -> Refine3DResult:
    """Run (or continue, ``inputs.continue_from``) a gold-standard auto-refinement; rank 0 writes into ``out``."""
    out = Path(out)
    comm = ctx.comm
    rank = comm.Get_rank()
    bk = ctx.backend if ctx.backend is not None else get_backend("cpu")
    with ctx.cache() as cache:
        start = start_run(params, inputs, ctx, cache, fixed=FIXED, columns=(*TABLE_COLUMNS, "rlnRandomSubset"),
                          halves=True)
        params, particles, mask, mine = start.params, start.particles, start.mask, start.mine
        box, angpix, diameter = particles.box, particles.angpix, start.diameter_A
        ops = symmetry_operators(params.symmetry)
        model = start.model
        if model is None:
            subset = random_subsets(particles.table, params.seed, particles.path)
            particles.table["rlnRandomSubset"] = subset
            model = initial_model(particles, start.reference, 2, params, mask, mine, bk, comm)
            state = AutoSampling(order=int(params.healpix_order), offset_range=float(params.offset_range),
                                 offset_step=float(params.offset_step),
                                 local=int(params.healpix_order >= params.auto_local_healpix_order))
            if state.local and not {"rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"} <= set(particles.table.columns):
                state.local = 0  # no previous orientations: the first searches are global
            finished = False
        else:
            state = AutoSampling.from_options(start.options)
            subset = particles.table["rlnRandomSubset"].to_numpy(np.int64)
            finished = bool(int(float(model.options.get("finished", 0))))
        options = model_options(params, particles, diameter)
        files: list = []
        writer = CheckpointWriter(names_root=ctx.final(out))
        final_map = None
        fsc_curve = model.extra.get("rlnGoldStandardFsc", np.zeros(box // 2 + 1))
        resolution = float(np.min(model.resolution_A))
        # stops on convergence: the estimate is up to the cap
        progress = Progress(params.max_iterations, log, "iteration", done=start.iteration, at_most=True, comm=comm)
        for it in range(start.iteration + 1, params.max_iterations + 1):
            if finished:
                break
            final = bool(state.converged) or it == params.max_iterations
            r_max = box // 2 if final else model.r_max
            search = SearchSpace(OrientationGrid(state.order, params.symmetry),
                                 translation_grid(state.offset_range, state.offset_step), state.offset_step,
                                 local_sigma_deg=state.sampling_deg if state.local else None,
                                 max_significant=params.max_significant, symmetry_ops=ops,
                                 particle_diameter_A=diameter)
            prev_rot = _table_rotations(particles.table)
            prev_origin = particles.origins_px()
            results, sums, bps, estep_r = _estep(particles, model, subset, mine, search, r_max, prev_rot, bk, comm)
            merged = {}
            for key in results[0]:
                merged[key] = np.where(_expand(subset == 1, results[0][key]), results[0][key], results[1][key])
            update_table(particles, merged)
            particles.table["rlnRandomSubset"] = subset
            fsc_curve, halves, combined, ssnr, tau2 = _maximise(bps, params, box, bk, estep_r, final, comm)
            # at worst the box itself (resolution_at says inf when the FSC is below the threshold from shell 0 on):
            # never an inf in the model STAR and fsc.star, which --continue would refuse
            resolution = min(resolution_at(fsc_curve, box, angpix, FSC_THRESHOLD), box * angpix)
            shell = int(np.floor(box * angpix / resolution + 1e-9))
            new_rot = _table_rotations(particles.table)
            angle = float(np.mean(symmetric_angle(prev_rot, new_rot, ops))) if prev_rot is not None else 1e9
            offset = float(np.sqrt(np.mean(((particles.origins_px() - prev_origin) ** 2).sum(1))))
            if final:
                final_map = combined
                finished = True
            else:
                for msg in state.update(resolution, angle, offset, diameter, params.auto_local_healpix_order):
                    log.info("iteration %d: auto-sampling: %s", it, msg)
            joined = halves if final else join_low_resolution(halves[0], halves[1], angpix,
                                                                params.low_resol_join_halves, bk)
            model = Model(maps=np.stack([joined[0] * mask, joined[1] * mask]).astype(np.float32),
                          pdf_class=np.array([0.5, 0.5]), sigma2=mstep.update_sigma2(model.sigma2, sums),
                          tau2=np.stack(tau2), ssnr=np.stack(ssnr), resolution_A=np.full(2, resolution),
                          sigma_offset_px=mstep.update_sigma_offset(sums),
                          r_max=int(min(box // 2, shell + resolution_increment(box))), iteration=it, angpix=angpix,
                          options={**options, **state.to_options(), "finished": int(finished)},
                          extra={"rlnGoldStandardFsc": fsc_curve})
            # no previous orientations (the input had none): the angle above is only a sentinel for AutoSampling
            changes = f"{angle:.2f} deg {offset:.3f} px" if prev_rot is not None else "-- (first iteration)"
            progress.step("%sE-step limit %d px (%.1f A), order %d (%s), gold-standard resolution %.2f A, changes %s",
                          "final, " if final else "", estep_r, box * angpix / max(estep_r, 1), search.grid.order,
                          "local" if state.local else "global", resolution, changes, last=final)
            if rank == 0:
                writer.submit(out, it, model, particles, halves=True)
                if final:
                    files += _write_outputs(out, halves, combined, fsc_curve, resolution, particles, angpix)
        files = [Path(f) for f in writer.wait()] + files
        if rank == 0 and files:
            files += [_plot_progress(out, params.max_iterations)]
    return Refine3DResult(model=model, particles=particles, params=params, sampling=state, resolution_A=resolution,
                          fsc=fsc_curve, map=final_map, files=files, inputs=start.inputs)


def _expand(mask, values):
    """``mask`` (n,) reshaped to broadcast against ``values`` (n, ...)."""
    return mask.reshape(mask.shape + (1,) * (np.ndim(values) - 1))


def _table_rotations(table: pd.DataFrame):
    """(n, 3, 3) rotations of the table's angles, or None when it has none."""
    cols = ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")
    if not set(cols) <= set(table.columns):
        return None
    return euler_to_matrix(*(table[c].to_numpy(np.float64) for c in cols))


def _estep(particles, model: Model, subset, mine, search: SearchSpace, r_max: int, prev_rot, bk, comm):
    """E-step of each half against its own half-map; sums reduced over ranks. ``subset`` (n,) 1/2 per particle,
    ``mine`` (n_mine,) this rank's particles, ``r_max`` the E-step limit (Fourier px), ``prev_rot`` (n, 3, 3) the
    previous orientations (the prior of local searches) or None.

    Returns (per-half gathered per-particle results [dict, dict] (:func:`~cryopipe.em3d.runner.gather_results`),
    combined sigma2/offset sums, the two half back-projectors [bp1, bp2], the E-step limit used)."""
    n = len(particles)
    half = subset - 1
    results, bps, parts = [], [], []
    r_used = r_max
    for h in range(2):
        idx = mine[subset[mine] == h + 1]
        est = EStep(particles, model.maps[h : h + 1], np.zeros(1), model.sigma2,
                    max(model.sigma_offset_px, 0.5 * search.offset_step), r_max, search, bk)
        res = est.run(idx, particles.origins_px(), prior_rotations=prev_rot if search.local_sigma_deg else None,
                      half=half)
        mstep.reduce_sums(res, comm)
        results.append(gather_results(res, idx, n, comm))
        bps.append(res.backprojectors[0][h])
        parts.append(res)
        r_used = est.r_max
    sums = SimpleNamespace(sigma2_sum=parts[0].sigma2_sum + parts[1].sigma2_sum,
                           sigma2_count=parts[0].sigma2_count + parts[1].sigma2_count,
                           offset2_sum=parts[0].offset2_sum + parts[1].offset2_sum, n=parts[0].n + parts[1].n)
    return results, sums, bps, r_used


def _maximise(bps, params: Refine3DParams, box: int, bk, r_max: int, final: bool, comm):
    """Half-map FSC (up to ``r_max`` Fourier px), per-half reconstructions and (``final`` iteration) the map of both
    halves.

    The back-projectors are already summed over ranks; the reconstructions (half 1, half 2, then the combined map)
    are dealt round-robin to the ranks and exchanged, so two ranks each reconstruct one half.
    Returns (fsc (box//2+1,), [half1, half2] (box^3) float32, combined map (box^3) or None, [ssnr1, ssnr2] and
    [tau2_1, tau2_2] (box//2+1,) each).
    """
    rank, size = comm.Get_rank(), comm.Get_size()
    nsh = box // 2 + 1
    curve = mstep.half_fsc(bps[0], bps[1], bk, r_max)
    curve = np.concatenate([curve, np.zeros(nsh - len(curve))])[:nsh]
    snr_half = mstep.ssnr_from_fsc(curve, combined=False)
    local = {}
    for job in range(3 if final else 2):
        if job % size != rank:
            continue
        if job < 2:
            local[job] = mstep.reconstruct(bps[job], snr_half, params.tau2_fudge, box, bk)
        else:  # after half 1: its back-projector now takes the sum
            bps[0].add(bps[1])
            local[job] = mstep.reconstruct(bps[0], mstep.ssnr_from_fsc(curve, combined=True), params.tau2_fudge,
                                           box, bk)
    local = share_round_robin(comm, local, 3 if final else 2)
    halves, tau2 = [local[0][0], local[1][0]], [local[0][1], local[1][1]]
    combined = local[2][0] if final else None
    return curve, halves, combined, [snr_half, snr_half], tau2


def _write_outputs(out: Path, halves, combined, curve, resolution: float, particles, angpix: float) -> list[Path]:
    """half1.mrc, half2.mrc, map.mrc (``halves`` and ``combined``: (N, N, N) maps at ``angpix`` A/px), fsc.star
    (``curve`` (N//2+1,) half-map FSC, ``resolution`` A), particles.star and slices of the final map."""
    box = combined.shape[0]
    files = [out / "half1.mrc", out / "half2.mrc", out / "map.mrc"]
    for path, vol in zip(files, (*halves, combined), strict=True):
        write_mrc(path, vol, angpix)
    shells = np.arange(box // 2 + 1)
    freq = shells / (box * angpix)
    star = out / "fsc.star"
    write_star_exact(star, {
        "general": {"rlnFinalResolution": float(resolution), "rlnFscThreshold": FSC_THRESHOLD,
                    "rlnPixelSize": angpix, "rlnOriginalImageSize": box},
        "fsc": pd.DataFrame({"rlnSpectralIndex": shells, "rlnResolution": freq,
                             "rlnAngstromResolution": np.where(freq > 0, 1 / np.where(freq > 0, freq, 1), 999.0),
                             "rlnFourierShellCorrelation": curve})})
    write_particles_exact(out / "particles.star", particles.table)
    slices = plot_slices([combined], ["refined map"], out / "refine3d_slices.png")
    return [*files, star, out / "particles.star", slices]


def _plot_progress(out: Path, last: int) -> Path:
    """PNG: the half-map FSC of every iteration 1..last in ``out`` (left) and the gold-standard resolution (A) per
    iteration (right)."""
    its, curves, res = [], [], []
    for i, blocks in iteration_models(out, last):
        general = blocks["model_general"].iloc[0]
        box, apix = int(general["rlnOriginalImageSize"]), float(general["rlnPixelSize"])
        curve = blocks["model_curves"]["rlnGoldStandardFsc"].to_numpy(float)
        its.append(i)
        curves.append((np.arange(len(curve)) / (box * apix), curve))
        res.append(float(general["rlnCurrentResolution"]))
    return plot_fsc_progress(its, curves, res, FSC_THRESHOLD, out / "refine3d_progress.png")
