"""De novo initial model: K maps from the particles alone, with no map supplied.

Stochastic minibatch EM (after the stochastic optimisation of cryoSPARC's ab-initio reconstruction, Punjani et al.
2017, and RELION's gradient-driven InitialModel, Kimanius et al. 2021): one map starts as random low-passed noise
inside the particle mask; every iteration draws a minibatch of particles, runs the em3d E-step against the current
map (global coarse orientation search, adaptive fine pass, translations, CTF) at the resolution of the schedule,
reconstructs from the minibatch's back-projectors (its half-set FSC sets the Wiener filter), and moves the map a
``step`` towards that reconstruction::

    V <- (1 - step) V + step * recon(minibatch)      (the first iteration replaces the random start)

The resolution limit goes linearly from ``ini_high`` to ``final_high`` over the first 70% of the iterations; the
noise spectra follow the minibatches the same way. Small, noisy minibatches at low resolution keep the search from
settling into the first local optimum, as the cited methods do. Then passes over all particles at ``final_high``:
one for K = 1 (the output map, every particle's angles and origin); for K > 1, ``class_iterations`` passes of
K-class EM starting from K copies of the map and a random split of the particles, as class3d starts (measured: K
random starts optimised together collapse into one class, the others starving).

Minibatch ``i`` is drawn from ``default_rng([seed, i])`` the start from ``default_rng([seed, 0])``, so a
run is deterministic for a seed, and ``--continue`` from any checkpoint gives the uninterrupted run's maps. MPI ranks
share each minibatch (their particles of it); the sums are added over ranks before the reconstruction.

Handedness cannot be known from projections: a de novo map is the true structure or its mirror image, with equal
likelihood. The log says so, the model STAR records ``cp_flip_hand``, and ``flip_hand`` mirrors the output maps
(z -> -z about the centre voxel) and the particles' poses with them, for the rest of the workflow.

Symmetry as RELION does it: the optimisation runs in C1; with ``symmetry`` other than C1 each final map (of the
hand chosen) is then centred, its symmetry axes are found and put into RELION's orientation for the point group,
and the group is imposed (:mod:`cryopipe.symalign`, as ``relion_align_symmetry --apply_sym``). The particles' poses
and origins move with their class's map, so they still project it. The log, the model STAR and the record give each
map's symmetry score and its contrast against other frames (near 1: the map has the symmetry; near 0: it has not,
and imposing it averaged unrelated density).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from cryopipe.backend import get_backend
from cryopipe.em3d import mstep
from cryopipe.em3d.driver import (
    TABLE_COLUMNS,
    EMInputs,
    check_diameter,
    link_last_iteration,
    model_options,
    start_run,
    validate_common,
)
from cryopipe.em3d.estep import EStep, SearchSpace
from cryopipe.em3d.model import Model, initial_sigma2, write_particles_exact
from cryopipe.em3d.particles import ParticleSet
from cryopipe.em3d.report import iteration_models, plot_progress, plot_slices
from cryopipe.em3d.runner import CheckpointWriter, gather_results, update_table
from cryopipe.em3d.sampling import OrientationGrid, translation_grid
from cryopipe.errors import require
from cryopipe.fourier import lowpass
from cryopipe.geometry import symmetry_operators
from cryopipe.io.mrc import write_mrc
from cryopipe.io.star import write_star
from cryopipe.mapalign import mirror
from cryopipe.parallel import allreduce_sum, share_round_robin
from cryopipe.progress import Progress
from cryopipe.stage import StageContext, StageResult
from cryopipe.symalign import SymmetryFrame, apply_frame, find_frame, framed_poses, symmetrise

__all__ = ["InitialModelParams", "InitialModelResult", "build", "run"]

log = logging.getLogger(__name__)

MIN_PARTICLES_PER_CLASS = 50  # below this a class map is noise: refused
FIXED = ("particles", "classes", "symmetry", "particle_diameter", "ini_high", "final_high", "iterations",
         "class_iterations", "batch_size", "step", "seed", "healpix_order", "offset_range", "offset_step", "tau2_fudge")
SCHEDULE_SHARE = 0.7  # share of the iterations over which the resolution limit goes from ini_high to final_high
MIN_BOX = 24
LOW_CONTRAST = 0.5  # symmetry contrast below which the log warns that the map may not have the point group
HAND_NOTE = ("the hand of a de novo map cannot be known from projections: it is the structure or its mirror "
             "image; check it against a feature of known hand (alpha helices are right-handed) and use "
             "--flip-hand if it is wrong")


@dataclass
class InitialModelParams:
    """Options of ``cryopipe initial-model`` (lengths in Angstrom, offsets in pixels of the particle box).

    A field None was not given: the default on a fresh run, the checkpoint's value on --continue
    (:mod:`cryopipe.em3d.driver`). ``particle_diameter`` None: 0.9 x the box. ``iterations``: minibatch
    iterations (a final pass over all particles follows). ``batch_size``: particles per minibatch. ``step``: how
    far each minibatch moves the maps (0..1]. ``ini_high`` / ``final_high``: the resolution schedule, A.
    ``class_iterations``: with K > 1, passes over all particles after the minibatches, starting from K copies of
    the map and a random split of the particles (as class3d starts). ``flip_hand``: mirror the output maps.
    ``symmetry``: the point group found in and imposed on the final C1 maps.
    """

    classes: int = 1
    iterations: int = 40
    class_iterations: int = 10
    batch_size: int = 200
    step: float = 0.5
    ini_high: float = 30.0
    final_high: float = 15.0
    healpix_order: int = 1
    offset_range: float = 3.0
    offset_step: float = 1.0
    tau2_fudge: float = 1.0
    particle_diameter: float | None = None
    symmetry: str = "C1"
    seed: int = 0
    max_significant: int = 500
    flip_hand: int = 0

    def validate(self) -> None:
        """Check the options (InputError naming the flag)."""
        require(int(self.classes) == self.classes and self.classes >= 1, f"K must be >= 1, got {self.classes}",
                field="--classes")
        require(self.iterations >= 1, "must be >= 1", field="--iterations")
        require(self.class_iterations >= 1, "must be >= 1", field="--class-iterations")
        require(self.batch_size >= 2, "must be >= 2 (each minibatch is split in two half sets)",
                field="--batch-size")
        require(0 < self.step <= 1, f"must lie in (0, 1], got {self.step}", field="--step")
        require(self.ini_high >= self.final_high > 0, "need START >= END > 0 Angstrom",
                field="--resolution-schedule")
        validate_common(self)

    def check_particles(self, particles: ParticleSet) -> None:
        """At least MIN_PARTICLES_PER_CLASS particles per class, a box of at least MIN_BOX px, a diameter that fits."""
        n, k = len(particles), int(self.classes)
        require(particles.box >= MIN_BOX, f"a box of {particles.box} px is too small for an initial model (at least "
                f"{MIN_BOX} px)", particles.path, "rlnImageSize")
        require(n >= MIN_PARTICLES_PER_CLASS * k, f"{n} particles are too few for K = {k} (at least "
                f"{MIN_PARTICLES_PER_CLASS} per class)", particles.path, "--classes")
        check_diameter(self, particles)


@dataclass
class InitialModelResult:
    """``model`` (final maps and state, in the chosen hand and symmetry frame on rank 0), ``particles`` (classes,
    angles, origins of the final pass, moved with the maps), ``params`` (resolved), ``files`` written (rank 0),
    ``inputs`` read, ``frames`` (rank 0, symmetry other than C1: each class map's :class:`SymmetryFrame`)."""

    model: Model
    particles: ParticleSet
    params: InitialModelParams
    files: list[Path] = field(default_factory=list)
    inputs: list[Path] = field(default_factory=list)
    frames: list[SymmetryFrame] = field(default_factory=list)


def schedule_resolution(params: InitialModelParams, iteration: int) -> float:
    """Resolution limit (A) of minibatch iteration ``iteration`` (1-based): linear from ini_high to final_high
    over the first SCHEDULE_SHARE of the iterations, then final_high."""
    ramp = max(1.0, SCHEDULE_SHARE * params.iterations - 1.0)
    f = min(1.0, (iteration - 1) / ramp)
    return float(params.ini_high + f * (params.final_high - params.ini_high))


def shell_of(box: int, angpix: float, resolution_A: float) -> int:
    """The Fourier shell (px of the ``box``) of ``resolution_A`` at ``angpix``, within 2 .. box // 2."""
    return int(np.clip(round(box * angpix / resolution_A), 2, box // 2))


def random_map(params: InitialModelParams, particles: ParticleSet, mask: np.ndarray) -> np.ndarray:
    """(1, N, N, N) float32 start: seeded white noise low-passed to ini_high, zero mean inside the mask, masked,
    scaled so that its projections carry about the particles' low-resolution power (this rank's share)."""
    box, angpix = particles.box, particles.angpix
    inside = mask > 0.5
    vol = np.asarray(lowpass(np.random.default_rng([params.seed, 0]).standard_normal((box,) * 3), angpix,
                             params.ini_high, ndim=3))
    vol = (vol - vol[inside].mean()) * mask
    r = shell_of(particles.box, particles.angpix, params.ini_high)
    data = np.abs(particles.spectra[:, 1:r, 1:r]) ** 2  # the other ranks' particles hold zeros
    power = float(data.sum()) / max(1, int((data > 0).sum()))
    proj = np.abs(np.fft.rfft2(vol.sum(axis=0))[1:r, 1:r]) ** 2
    return (vol * np.sqrt(power / max(float(proj.mean()), 1e-300)))[None].astype(np.float32)


def last_iteration(params: InitialModelParams) -> int:
    """The minibatch iterations, then one pass over all particles (K = 1) or ``class_iterations`` passes."""
    return int(params.iterations) + (int(params.class_iterations) if int(params.classes) > 1 else 1)


def _minibatch(params: InitialModelParams, n: int, iteration: int) -> np.ndarray:
    rng = np.random.default_rng([params.seed, iteration])
    return np.sort(rng.choice(n, size=min(int(params.batch_size), n), replace=False))


def _reconstruct(res, model: Model, params: InitialModelParams, mask, bk, r_max: int, resolution_A: float, comm):
    """Each class's map from this E-step's (rank-summed) back-projectors, low-passed to ``resolution_A``, masked;
    classes are shared round-robin over ranks. Returns (K, N, N, N) float32."""
    box, angpix = model.box, model.angpix
    rank, size = comm.Get_rank(), comm.Get_size()
    local = {}
    for k, (half1, half2) in enumerate(res.backprojectors):
        if k % size != rank:
            continue
        snr = np.maximum(mstep.ssnr_from_fsc(mstep.half_fsc(half1, half2, bk, r_max)), 0.0)
        half1.add(half2)
        vol, _ = mstep.reconstruct(half1, np.concatenate([snr, np.zeros(box // 2 + 1 - len(snr))]),
                                   params.tau2_fudge, box, bk)
        local[k] = (np.asarray(lowpass(vol.astype(np.float64), angpix, resolution_A, ndim=3)) * mask,)
    local = share_round_robin(comm, local, len(res.backprojectors))
    return np.stack([local[k][0] for k in range(len(res.backprojectors))]).astype(np.float32)


def build(params: InitialModelParams, inputs: EMInputs, out: Path, ctx: StageContext) -> InitialModelResult:
    """Run (or continue) the stochastic optimisation and the final pass; rank 0 writes checkpoints every
    iteration, the outputs and the report figures into ``out``."""
    out = Path(out)
    comm = ctx.comm
    rank = comm.Get_rank()
    bk = ctx.backend if ctx.backend is not None else get_backend("cpu")
    with ctx.cache() as cache:
        start = start_run(params, inputs, ctx, cache, fixed=FIXED, columns=TABLE_COLUMNS, needs_reference=False)
        params, particles, mask, mine = start.params, start.particles, start.mask, start.mine
        n, box, angpix = len(particles), particles.box, particles.angpix
        k = int(params.classes)
        model = start.model
        if model is None:  # the stochastic phase optimises one map; K > 1 splits it afterwards
            model = Model(maps=random_map(params, particles, mask), pdf_class=np.ones(1),
                          sigma2=initial_sigma2(particles, mine, comm), tau2=np.zeros((1, box // 2 + 1)),
                          ssnr=np.zeros((1, box // 2 + 1)), resolution_A=np.full(1, params.ini_high),
                          sigma_offset_px=float(params.offset_range),
                          r_max=shell_of(particles.box, particles.angpix, params.ini_high), iteration=0, angpix=angpix)
        model.options = model_options(params, particles, start.diameter_A)
        if rank == 0 and start.iteration == 0:
            log.info("de novo initial model: one map from a random start, %d minibatch iterations of %d particles, "
                     "resolution %.0f -> %.0f A%s; %s", params.iterations, params.batch_size, params.ini_high,
                     params.final_high, f", then {params.class_iterations} passes over all particles splitting it "
                     f"into {k} classes" if k > 1 else "", HAND_NOTE)
        search = SearchSpace(OrientationGrid(params.healpix_order),
                             translation_grid(params.offset_range, params.offset_step), params.offset_step,
                             max_significant=params.max_significant, symmetry_ops=np.eye(3)[None],
                             particle_diameter_A=start.diameter_A)
        writer = CheckpointWriter(names_root=ctx.final(out))
        final = last_iteration(params)
        progress = Progress(final, log, "iteration", done=start.iteration, comm=comm)
        mine_set = np.asarray(mine)
        for it in range(start.iteration + 1, final + 1):
            stochastic = it <= params.iterations
            resolution = schedule_resolution(params, min(it, params.iterations))
            r_max = shell_of(particles.box, particles.angpix, resolution)
            batch = _minibatch(params, n, it) if stochastic else np.arange(n)
            members = batch[np.isin(batch, mine_set)]
            class_mask = None
            if it == params.iterations + 1 and k > 1:  # split the map: K copies, particles at random (RELION's seeds)
                model = dataclasses.replace(model, maps=np.repeat(model.maps[:1], k, axis=0),
                                            pdf_class=np.full(k, 1.0 / k))
                seeds = np.random.default_rng([params.seed, it]).integers(k, size=n)
                class_mask = np.eye(k, dtype=bool)[seeds[members]]
            estep = EStep(particles, model.maps, np.log(np.maximum(model.pdf_class, 1e-30)), model.sigma2,
                          max(model.sigma_offset_px, 0.5 * params.offset_step), r_max, search, bk)
            res = estep.run(members, particles.origins_px(), class_mask=class_mask)
            mstep.reduce_sums(res, comm)
            new = _reconstruct(res, model, params, mask, bk, r_max, resolution, comm)
            weights = res.class_weight / max(float(res.class_weight.sum()), 1e-30)
            step = float(params.step) if stochastic and it > 1 else 1.0
            model = Model(maps=new if step == 1.0 else ((1 - step) * model.maps + step * new).astype(np.float32),
                          pdf_class=weights,
                          sigma2=(1 - step) * model.sigma2 + step * mstep.update_sigma2(model.sigma2, res),
                          tau2=np.zeros((len(new), box // 2 + 1)), ssnr=np.zeros((len(new), box // 2 + 1)),
                          resolution_A=np.full(len(new), resolution),
                          sigma_offset_px=mstep.update_sigma_offset(res), r_max=r_max, iteration=it,
                          angpix=angpix, options=model.options)
            if it == final:
                update_table(particles, gather_results(res, mine, n, comm))
            loglik = np.array([float(res.loglik.sum()), float(len(members))])
            allreduce_sum(comm, loglik)
            progress.step("%s, resolution limit %.1f A, classes %s, mean log-likelihood %.1f",
                          f"minibatch of {len(batch)}" if stochastic else "all particles", resolution,
                          np.round(model.pdf_class, 3), loglik[0] / max(loglik[1], 1.0))
            if rank == 0:
                writer.submit(out, it, model, particles)
        files = [Path(f) for f in writer.wait()]
        frames = []
        if rank == 0:
            model, frames = finish(model, particles, params, start.diameter_A, bk)
            files += _outputs(out, model, particles, params, last_iteration(params), frames)
    if rank == 0:
        files += link_last_iteration(out, model.iteration)
    return InitialModelResult(model=model, particles=particles, params=params, files=files, inputs=start.inputs,
                              frames=frames)


def finish(model: Model, particles: ParticleSet, params: InitialModelParams, diameter_A: float,
           bk) -> tuple[Model, list[SymmetryFrame]]:
    """The final C1 maps in the chosen hand (``flip_hand``: mirrored) and, for a point group other than C1, centred,
    in RELION's orientation of the group's axes and symmetrised; the particles' angles and origins (``particles.table``,
    changed in place) follow their class's map. Returns the new model and the frames found (none for C1)."""
    maps = [np.asarray(mirror(v) if params.flip_hand else v, dtype=np.float32) for v in model.maps]
    table = particles.table
    if params.flip_hand:
        table["rlnAngleRot"], table["rlnAnglePsi"] = mirrored_poses(table["rlnAngleRot"], table["rlnAnglePsi"])
    frames = []
    if symmetry_operators(params.symmetry).shape[0] > 1:
        lowpass_A = max(2.0 * params.final_high, 4 * model.angpix)  # the search's; refined at half of it
        for k, vol in enumerate(maps):
            frame = find_frame(vol, params.symmetry, model.angpix, diameter_A=diameter_A, lowpass_A=lowpass_A, bk=bk)
            maps[k] = bk.asnumpy(symmetrise(apply_frame(vol, frame, bk), params.symmetry, bk)).astype(np.float32)
            rows = table["rlnClassNumber"].to_numpy() == k + 1
            columns = ["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst"]
            moved = framed_poses(*(table.loc[rows, c].to_numpy(float) for c in columns), frame, model.angpix)
            for c, values in zip(columns, moved, strict=True):
                table.loc[rows, c] = values
            log.info("class %d: %s imposed; symmetry score %.3f, %.3f for other frames (contrast %.2f)%s", k + 1,
                     frame.symmetry, frame.score, frame.baseline, frame.contrast,
                     "" if frame.contrast >= LOW_CONTRAST else f": LOW, this map may not have {frame.symmetry} "
                     "symmetry (compare with the C1 map of the last iteration, run_classNNN.mrc)")
            frames.append(frame)
    return dataclasses.replace(model, maps=np.stack(maps)), frames


def mirrored_poses(rot, psi) -> tuple[np.ndarray, np.ndarray]:
    """(rot, psi) in degrees of the poses that project the mirrored map (:func:`cryopipe.mapalign.mirror`, z -> -z
    about the centre voxel) as (rot, tilt, psi)
    projects the map: with M = diag(1, 1, -1) the pose R becomes M R M = Rz(psi + 180) Ry(tilt) Rz(rot + 180);
    tilt and the origins stay. Angles wrapped into [-180, 180)."""
    def wrap(a):
        return (np.asarray(a, dtype=np.float64) + 180.0 + 180.0) % 360.0 - 180.0

    return wrap(rot), wrap(psi)


def _outputs(out: Path, model: Model, particles: ParticleSet, params: InitialModelParams, last: int,
             frames: list[SymmetryFrame]) -> list[Path]:
    """initial_model_classNNN.mrc (the finished maps: hand, symmetry), initial_model.mrc (the most populated
    class's), particles.star, symmetry.star (a point group other than C1) and the report figures."""
    files = []
    best = int(np.argmax(model.pdf_class))
    for k, vol in enumerate(model.maps):
        vol = np.ascontiguousarray(vol)
        path = out / f"initial_model_class{k + 1:03d}.mrc"
        write_mrc(path, vol, model.angpix)
        files.append(path)
        if k == best:  # the map a 3D classification starts from
            write_mrc(out / "initial_model.mrc", vol, model.angpix)
            files.append(out / "initial_model.mrc")
    write_particles_exact(out / "particles.star", particles.table)
    files.append(out / "particles.star")
    if frames:
        rows = pd.DataFrame({"rlnReferenceImage": [f"initial_model_class{k + 1:03d}.mrc" for k in range(len(frames))],
                             "rlnSymmetryGroup": [f.symmetry for f in frames],
                             "rlnAngleRot": [f.euler[0] for f in frames], "rlnAngleTilt": [f.euler[1] for f in frames],
                             "rlnAnglePsi": [f.euler[2] for f in frames],
                             "cpCentreXpx": [f.centre_px[0] for f in frames],
                             "cpCentreYpx": [f.centre_px[1] for f in frames],
                             "cpCentreZpx": [f.centre_px[2] for f in frames],
                             "cpSymmetryScore": [f.score for f in frames],
                             "cpSymmetryBaseline": [f.baseline for f in frames],
                             "cpSymmetryContrast": [f.contrast for f in frames]})
        write_star(out / "symmetry.star", {"symmetry": rows})
        files.append(out / "symmetry.star")
    its, dist = [], []
    for i, blocks in iteration_models(out, last):
        its.append(i)
        d = blocks["model_classes"]["rlnClassDistribution"].to_numpy(float)
        dist.append(np.concatenate([d, np.full(len(model.maps) - len(d), np.nan)]))  # one map before the split
    res = [[schedule_resolution(params, min(i, params.iterations))] * len(model.maps) for i in its]
    titles = [f"class {k + 1} ({p:.0%})" for k, p in enumerate(model.pdf_class)]
    files.append(plot_slices(model.maps, titles, out / "initial_model_slices.png"))
    files.append(plot_progress(its, np.array(dist), np.array(res), out / "initial_model_progress.png"))
    return files


def run(params: InitialModelParams, inputs: EMInputs, out: Path, ctx: StageContext) -> StageResult:
    """Build (or continue) the initial model into ``out`` (:func:`build`). Notes: classes, iterations,
    class_distribution, hand, parameters (resolved)."""
    result = build(params, inputs, out, ctx)
    return StageResult(files=result.files, inputs=result.inputs, notes={
        "parameters": dataclasses.asdict(result.params), "classes": int(result.model.maps.shape[0]),
        "iteration": result.model.iteration,
        "class_distribution": [round(float(x), 4) for x in result.model.pdf_class],
        "hand": "mirrored (--flip-hand)" if result.params.flip_hand else "as found", "hand_note": HAND_NOTE,
        "symmetry": result.params.symmetry.upper(),
        "symmetry_contrast": [round(f.contrast, 3) for f in result.frames]})
