"""3D classification: K class maps refined by RELION's regularised likelihood EM (E-step and M-step in em3d).

Iteration 1 splits the particles at random over the K classes (RELION's random seeds), all starting from the
reference low-passed to ``ini_high`` and scaled to the data's grey scale; later iterations assign particles by
their posteriors. Every iteration writes ``run_itNNN_{data,model}.star`` and ``run_itNNN_classKKK.mrc``.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from cryopipe.em3d import mstep
from cryopipe.em3d.estep import EStep, SearchSpace
from cryopipe.em3d.model import Model, initial_sigma2, parse_continue, read_model, reference_scale
from cryopipe.em3d.particles import check_reference, load_particles
from cryopipe.em3d.report import plot_progress, plot_slices
from cryopipe.em3d.runner import (
    CheckpointWriter,
    absolute_image_names,
    check_options,
    gather_results,
    restore_table,
    update_table,
)
from cryopipe.em3d.sampling import OrientationGrid, translation_grid
from cryopipe.errors import InputError, require
from cryopipe.fourier import lowpass
from cryopipe.geometry import symmetry_operators
from cryopipe.io.mrc import read_mrc
from cryopipe.io.star import read_star
from cryopipe.parallel import share_round_robin, split_range

log = logging.getLogger(__name__)

MIN_PER_CLASS = 2  # particles per class below which class3d refuses to run (one per half set)
WARN_PER_CLASS = 20  # ... and below which it warns
FIXED = ("particles", "classes", "symmetry", "particle_diameter", "ini_high", "seed")
TABLE_COLUMNS = ("rlnClassNumber", "rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst",
                 "rlnOriginYAngst", "rlnLogLikeliContribution", "rlnMaxValueProbDistribution",
                 "rlnNrOfSignificantSamples")


@dataclass
class Class3DParams:
    """Options of ``cryopipe class3d`` (lengths in Angstrom, offsets in pixels of the particle box)."""

    classes: int = 2
    iterations: int = 25
    healpix_order: int = 2
    offset_range: float = 5.0
    offset_step: float = 2.0
    ini_high: float = 60.0
    tau2_fudge: float = 4.0
    particle_diameter: float | None = None
    symmetry: str = "C1"
    seed: int = 0
    max_significant: int = 500

    def validate(self, particles=None) -> None:
        """Check the options; with ``particles`` (a loaded ParticleSet) also against the data: at least
        MIN_PER_CLASS particles per class (a warning below WARN_PER_CLASS) and a particle diameter that fits
        the box."""
        require(int(self.classes) == self.classes and self.classes >= 1, f"K must be >= 1, got {self.classes}",
                field="--classes")
        require(self.iterations >= 1, "must be >= 1", field="--iterations")
        require(self.ini_high > 0, "must be positive", field="--ini-high")
        require(self.tau2_fudge > 0, "must be positive", field="--tau2-fudge")
        require(self.particle_diameter is None or self.particle_diameter > 0, "must be positive",
                field="--particle-diameter")
        require(self.max_significant >= 1, "must be >= 1", field="--max-significant")
        symmetry_operators(self.symmetry)
        if particles is None:
            return
        n, k = len(particles), int(self.classes)
        require(n >= MIN_PER_CLASS * k, f"at least {MIN_PER_CLASS} particles per class are needed "
                f"({MIN_PER_CLASS * k} for K = {k}: each class map is reconstructed from two half sets), the file "
                f"holds {n}", particles.path, "--classes")
        if n < WARN_PER_CLASS * k:
            log.warning("only %.1f particles per class on average (%d particles, K = %d): the class maps will be "
                        "mostly noise", n / k, n, k)
        size_A = particles.box * particles.angpix
        if self.particle_diameter is not None and self.particle_diameter > size_A:
            raise InputError(f"particle diameter {self.particle_diameter:g} A is larger than the box "
                             f"({particles.box} px x {particles.angpix:g} A/px = {size_A:g} A) of the particles in "
                             "this file", particles.path, "--particle-diameter")


def resolution_increment(box: int) -> int:
    """Shells added to the resolution for the next E-step limit: RELION's incr_size (10) at its typical 360 px
    box, scaled with the box (at least 3), so that small boxes do not jump to Nyquist after one iteration."""
    return max(3, round(box / 36))


def run_class3d(particles_path, reference_path, out: Path, params: Class3DParams, bk, comm,
                continue_from=None, cache=None) -> dict:
    """Run (or continue) a 3D classification; rank 0 writes checkpoints into ``out``.

    Returns {"model": Model, "particles": ParticleSet, "files": written files (rank 0)}.
    """
    out = Path(out)
    rank, size = comm.Get_rank(), comm.Get_size()
    given = {k: v for k, v in asdict(params).items()}
    if continue_from is not None:
        prefix, start = parse_continue(continue_from)
        stored = read_star(f"{prefix}_model.star")["model_general"].iloc[0].to_dict()
        stored = {k[3:]: v for k, v in stored.items() if k.startswith("cp_")}
        if particles_path is not None:
            given["particles"] = os.path.abspath(particles_path)
        require(reference_path is None, "the maps come from the checkpoint; do not give --reference with --continue",
                field="--reference")
        opts = check_options(stored, given, FIXED)
        opts["iterations"] = given["iterations"] if given["iterations"] is not None else stored["iterations"]
        params = Class3DParams(**{k: _cast(k, opts[k]) for k in asdict(params)})
        particles = load_particles(opts["particles"], share=(rank, size), cache=cache)
        model = read_model(prefix)
        restore_table(particles, f"{prefix}_data.star", TABLE_COLUMNS)
    else:
        params = Class3DParams(**{k: (Class3DParams.__dataclass_fields__[k].default if v is None else v)
                                  for k, v in given.items()})
        require(particles_path is not None, "--particles is required", field="--particles")
        require(reference_path is not None, "--reference is required", field="--reference")
        particles = load_particles(particles_path, share=(rank, size), cache=cache)
        start = 0
    params.validate(particles)
    absolute_image_names(particles)
    n, box, angpix = len(particles), particles.box, particles.angpix
    mine = np.arange(n)[split_range(n, rank, size)]
    diameter = params.particle_diameter or 0.9 * box * angpix
    mask = mstep.solvent_mask(box, angpix, diameter)
    if continue_from is None:
        check_reference(reference_path, particles)
        model = _initial_model(particles, reference_path, params, mask, mine, bk, comm)
    model.options = {"particles": os.path.abspath(particles.path), **{k: v for k, v in asdict(params).items()
                                                                        if k != "particle_diameter"},
                     "particle_diameter": diameter}
    grid = OrientationGrid(params.healpix_order, params.symmetry)
    search = SearchSpace(grid, translation_grid(params.offset_range, params.offset_step), params.offset_step,
                         max_significant=params.max_significant, symmetry_ops=symmetry_operators(params.symmetry),
                         particle_diameter_A=diameter)
    writer = CheckpointWriter()
    for it in range(start + 1, params.iterations + 1):
        t0 = time.perf_counter()
        class_mask = None
        if it == 1 and params.classes > 1:
            seeds = np.random.default_rng(params.seed).integers(params.classes, size=n)
            class_mask = np.eye(params.classes, dtype=bool)[seeds]
        estep = EStep(particles, model.maps, np.log(np.maximum(model.pdf_class, 1e-30)), model.sigma2,
                      max(model.sigma_offset_px, 0.5 * params.offset_step), model.r_max, search, bk)
        res = estep.run(mine, particles.origins_px(), class_mask=class_mask)
        mstep.reduce_sums(res, comm)
        update_table(particles, gather_results(res, mine, n, comm))
        model = _maximise(model, res, params, mask, bk, it, estep.r_max, comm)
        log.info("iteration %d: E-step limit %d px (%.1f A), resolution %s A, classes %s, %.1f s", it, estep.r_max,
                 box * angpix / max(estep.r_max, 1), np.round(model.resolution_A, 1), np.round(model.pdf_class, 3),
                 time.perf_counter() - t0)
        if rank == 0:
            writer.submit(out, it, model, particles)
    files = writer.wait()
    if rank == 0 and params.iterations > start:
        files += _report(out, model, params.iterations)
    return {"model": model, "particles": particles, "files": files, "params": params}


def _cast(key: str, value):
    default = Class3DParams.__dataclass_fields__[key].type
    if value is None:
        return None
    if "int" in str(default):
        return int(value)
    if "float" in str(default):
        return float(value)
    return str(value)


def _initial_model(particles, reference_path, params: Class3DParams, mask, mine, bk, comm) -> Model:
    box, angpix, k = particles.box, particles.angpix, params.classes
    r_max = int(np.clip(round(box * angpix / params.ini_high), 2, box // 2))
    ref, _ = read_mrc(reference_path)
    ref = np.asarray(lowpass(ref.astype(np.float64), angpix, params.ini_high, ndim=3)) * mask
    ref *= reference_scale(ref, particles, mine, r_max, bk, comm, seed=params.seed)
    tau2 = params.tau2_fudge * mstep.signal_power(ref)  # recorded only; the M-step takes tau2 from the data
    nsh = box // 2 + 1
    return Model(maps=np.repeat(ref[None].astype(np.float32), k, axis=0), pdf_class=np.full(k, 1.0 / k),
                 sigma2=initial_sigma2(particles, mine, comm), tau2=np.repeat(tau2[None], k, axis=0),
                 ssnr=np.zeros((k, nsh)), resolution_A=np.full(k, params.ini_high),
                 sigma_offset_px=float(params.offset_range), r_max=r_max, iteration=0, angpix=angpix)


def _maximise(model: Model, res, params: Class3DParams, mask, bk, it: int, r_max: int, comm) -> Model:
    """M-step; each rank reconstructs the classes k with k % size == rank (the back-projectors are already
    summed over ranks) and the class maps are then exchanged."""
    box = model.box
    rank, size = comm.Get_rank(), comm.Get_size()
    local = {}
    for k, (half1, half2) in enumerate(res.backprojectors):
        if k % size != rank:
            continue
        snr = mstep.ssnr_from_fsc(mstep.half_fsc(half1, half2, bk, r_max))
        half1.add(half2)
        vol, t2 = mstep.reconstruct(half1, snr, params.tau2_fudge, box, bk)
        snr = np.concatenate([snr, np.zeros(box // 2 + 1 - len(snr))])
        local[k] = (vol * mask, t2, snr)
    local = share_round_robin(comm, local, len(res.backprojectors))
    maps, tau2, ssnr = (list(x) for x in zip(*(local[k] for k in range(len(res.backprojectors))), strict=True))
    res_a = [box * model.angpix / max(mstep.resolution_shell(snr), 1) for snr in ssnr]
    best_shell = int(round(box * model.angpix / min(res_a)))
    weights = res.class_weight / max(res.class_weight.sum(), 1e-30)
    return Model(maps=np.stack(maps).astype(np.float32), pdf_class=weights,
                 sigma2=mstep.update_sigma2(model.sigma2, res), tau2=np.stack(tau2), ssnr=np.stack(ssnr),
                 resolution_A=np.asarray(res_a),
                 sigma_offset_px=mstep.update_sigma_offset(res),
                 r_max=int(min(box // 2, best_shell + resolution_increment(box))), iteration=it,
                 angpix=model.angpix, options=model.options)


def _report(out: Path, model: Model, last: int) -> list:
    """Orthogonal slices of the final classes and the per-iteration class distribution and resolution."""
    its, dist, res = [], [], []
    for i in range(1, last + 1):
        star = out / f"run_it{i:03d}_model.star"
        if star.exists():
            classes = read_star(star)["model_classes"]
            its.append(i)
            dist.append(classes["rlnClassDistribution"].to_numpy(float))
            res.append(classes["rlnEstimatedResolution"].to_numpy(float))
    titles = [f"class {k + 1} ({p:.0%})" for k, p in enumerate(model.pdf_class)]
    return [plot_slices(model.maps, titles, out / "class3d_slices.png"),
            plot_progress(its, np.array(dist), np.array(res), out / "class3d_progress.png")]
