"""3D classification: K class maps refined by RELION's regularised likelihood EM (E-step and M-step in em3d).

Iteration 1 splits the particles at random over the K classes (RELION's random seeds), all starting from the
reference low-passed to ``ini_high`` and scaled to the data's grey scale; later iterations assign particles by
their posteriors. Given K references (one per class, e.g. the K maps of a de novo initial model), each class starts
from its own and iteration 1 assigns by the posteriors too, as RELION does with a STAR file of references.
Every iteration writes ``run_itNNN_{data,model}.star`` and ``run_itNNN_classKKK.mrc``; the last one is also linked
as ``run_{data,model}.star`` and ``run_classKKK.mrc``. As in RELION, the model STAR names its maps
with the output folder (``ctx.final(out)/run_itNNN_classKKK.mrc``) and the data STARs keep rlnImageName as the input
STAR gives it (relative names stay relative: :func:`cryopipe.io.star.portable_image_names`). A driver over
:mod:`cryopipe.em3d.driver` (parameters, --continue, initial model)::

    from cryopipe.class3d.stage import Class3DParams, EMInputs, run
    run(Class3DParams(classes=3), EMInputs(particles, reference), Path("c3"), StageContext.local())
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cryopipe.backend import get_backend
from cryopipe.em3d import mstep
from cryopipe.em3d.driver import (
    TABLE_COLUMNS,
    EMInputs,
    check_diameter,
    check_reference_count,
    initial_model,
    link_last_iteration,
    model_options,
    reference_paths,
    resolution_increment,
    start_run,
    validate_common,
)
from cryopipe.em3d.estep import EStep, SearchSpace
from cryopipe.em3d.model import Model
from cryopipe.em3d.particles import ParticleSet
from cryopipe.em3d.report import iteration_models, plot_progress, plot_slices
from cryopipe.em3d.runner import CheckpointWriter, gather_results, update_table
from cryopipe.em3d.sampling import OrientationGrid, translation_grid
from cryopipe.errors import require
from cryopipe.geometry import symmetry_operators
from cryopipe.parallel import share_round_robin
from cryopipe.progress import Progress
from cryopipe.stage import StageContext, StageResult

__all__ = ["Class3DParams", "Class3DResult", "EMInputs", "classify", "run"]

log = logging.getLogger(__name__)

MIN_PER_CLASS = 2  # particles per class below which class3d refuses to run (one per half set)
WARN_PER_CLASS = 20  # ... and below which it warns
FIXED = ("particles", "classes", "symmetry", "particle_diameter", "ini_high", "seed")  # unchanged on --continue


@dataclass
class Class3DParams:
    """Options of ``cryopipe class3d`` (lengths in Angstrom, offsets in pixels of the particle box).

    A field None was not given: the default on a fresh run, the checkpoint's value on --continue
    (:mod:`cryopipe.em3d.driver`). ``particle_diameter`` None: 0.9 x the box.
    """

    classes: int = 2
    iterations: int = 10
    healpix_order: int = 2
    offset_range: float = 3.0
    offset_step: float = 2.0
    ini_high: float = 40.0
    tau2_fudge: float = 4.0
    particle_diameter: float | None = None
    symmetry: str = "C1"
    seed: int = 0
    max_significant: int = 500

    def validate(self) -> None:
        """Check the options (InputError naming the flag)."""
        require(int(self.classes) == self.classes and self.classes >= 1, f"K must be >= 1, got {self.classes}",
                field="--classes")
        require(self.iterations >= 1, "must be >= 1", field="--iterations")
        validate_common(self)

    def check_particles(self, particles: ParticleSet) -> None:
        """Check the options against the loaded particles: at least MIN_PER_CLASS particles per class (a warning
        below WARN_PER_CLASS) and a particle diameter that fits the box."""
        n, k = len(particles), int(self.classes)
        require(n >= MIN_PER_CLASS * k, f"at least {MIN_PER_CLASS} particles per class are needed "
                f"({MIN_PER_CLASS * k} for K = {k}: each class map is reconstructed from two half sets), the file "
                f"holds {n}", particles.path, "--classes")
        if n < WARN_PER_CLASS * k:
            log.warning("only %.1f particles per class on average (%d particles, K = %d): the class maps will be "
                        "mostly noise", n / k, n, k)
        check_diameter(self, particles)


@dataclass
class Class3DResult:
    """A classification: ``model`` (maps (K, N, N, N) float32 and the rest of the last iteration's state),
    ``particles`` (their table with class, angles and origins of the last iteration), ``params`` (resolved),
    ``files`` written (rank 0; empty on the others), ``inputs`` read (for the provenance record)."""

    model: Model
    particles: ParticleSet
    params: Class3DParams
    files: list[Path] = field(default_factory=list)
    inputs: list[Path] = field(default_factory=list)


def run(params: Class3DParams, inputs: EMInputs, out: Path, ctx: StageContext) -> StageResult:
    """Run (or continue) a 3D classification into ``out`` (:func:`classify`). Notes: classes, iteration,
    class_distribution (K fractions), resolution_A (K), parameters (resolved)."""
    result = classify(params, inputs, out, ctx)
    model = result.model
    return StageResult(files=result.files, inputs=result.inputs, notes={
        "parameters": dataclasses.asdict(result.params),
        "classes": int(model.maps.shape[0]), "iteration": model.iteration,
        "class_distribution": [round(float(x), 4) for x in model.pdf_class],
        "resolution_A": [round(float(x), 2) for x in model.resolution_A]})


def classify(params: Class3DParams, inputs: EMInputs, out: Path, ctx: StageContext) -> Class3DResult:
    """Run (or continue, ``inputs.continue_from``) a 3D classification; rank 0 writes the checkpoints, the report
    figures and the links to the last iteration into ``out``."""
    out = Path(out)
    comm = ctx.comm
    bk = ctx.backend if ctx.backend is not None else get_backend("cpu")
    n_refs = len(reference_paths(inputs.reference))
    if n_refs > 1:  # K from the references (RELION takes it from a STAR of them), checked before any reading
        params = dataclasses.replace(params, classes=n_refs if params.classes is None else params.classes)
        check_reference_count(n_refs, params.classes)
    with ctx.cache() as cache:
        start = start_run(params, inputs, ctx, cache, fixed=FIXED, columns=TABLE_COLUMNS)
        params, particles, mask, mine = start.params, start.particles, start.mask, start.mine
        n, box, angpix = len(particles), particles.box, particles.angpix
        model = start.model
        if model is None:
            model = initial_model(particles, start.reference, params.classes, params, mask, mine, bk, comm)
        model.options = model_options(params, particles, start.diameter_A)
        grid = OrientationGrid(params.healpix_order, params.symmetry)
        search = SearchSpace(grid, translation_grid(params.offset_range, params.offset_step), params.offset_step,
                             max_significant=params.max_significant,
                             symmetry_ops=symmetry_operators(params.symmetry), particle_diameter_A=start.diameter_A)
        writer = CheckpointWriter(names_root=ctx.final(out))
        progress = Progress(params.iterations, log, "iteration", done=start.iteration, comm=comm)
        for it in range(start.iteration + 1, params.iterations + 1):
            class_mask = None
            if it == 1 and params.classes > 1 and n_refs <= 1:  # K references: no random split
                seeds = np.random.default_rng(params.seed).integers(params.classes, size=n)
                class_mask = np.eye(params.classes, dtype=bool)[seeds]
            estep = EStep(particles, model.maps, np.log(np.maximum(model.pdf_class, 1e-30)), model.sigma2,
                          max(model.sigma_offset_px, 0.5 * params.offset_step), model.r_max, search, bk)
            res = estep.run(mine, particles.origins_px(), class_mask=class_mask)
            mstep.reduce_sums(res, comm)
            update_table(particles, gather_results(res, mine, n, comm))
            model = _maximise(model, res, params, mask, bk, it, estep.r_max, comm)
            progress.step("E-step limit %d px (%.1f A), resolution %s A, classes %s", estep.r_max,
                          box * angpix / max(estep.r_max, 1), np.round(model.resolution_A, 1),
                          np.round(model.pdf_class, 3))
            if comm.Get_rank() == 0:
                writer.submit(out, it, model, particles)
        files = [Path(f) for f in writer.wait()]
        if comm.Get_rank() == 0 and params.iterations > start.iteration:
            files += _report(out, model, params.iterations)
    if comm.Get_rank() == 0:
        files += link_last_iteration(out, model.iteration)
    return Class3DResult(model=model, particles=particles, params=params, files=files, inputs=start.inputs)


def _maximise(model: Model, res, params: Class3DParams, mask, bk, it: int, r_max: int, comm) -> Model:
    """M-step; each rank reconstructs the classes k with k % size == rank (the back-projectors are already
    summed over ranks) and the class maps are then exchanged. ``mask``: (N, N, N) solvent mask applied to the new
    maps; ``r_max``: the E-step limit (Fourier px) up to which the half-set FSC is taken."""
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


def _report(out: Path, model: Model, last: int) -> list[Path]:
    """Orthogonal slices of the final classes and the per-iteration class distribution and resolution (A)."""
    its, dist, res = [], [], []
    for i, blocks in iteration_models(out, last):
        classes = blocks["model_classes"]
        its.append(i)
        dist.append(classes["rlnClassDistribution"].to_numpy(float))
        res.append(classes["rlnEstimatedResolution"].to_numpy(float))
    titles = [f"class {k + 1} ({p:.0%})" for k, p in enumerate(model.pdf_class)]
    return [plot_slices(model.maps, titles, out / "class3d_slices.png"),
            plot_progress(its, np.array(dist), np.array(res), out / "class3d_progress.png")]
