"""What every iterative 3D EM stage does around its iterations: class3d, refine3d and the initial model to come.

A driver (``cryopipe/<stage>/stage.py``) is its parameter dataclass, its E-step/M-step loop and its outputs; the
rest is here::

    with ctx.cache() as cache:
        start = start_run(params, inputs, ctx, cache, fixed=FIXED, columns=TABLE_COLUMNS)
        model = start.model or initial_model(start.particles, start.reference, K, start.params, start.mask,
                                             start.mine, bk, ctx.comm)
        for it in range(start.iteration + 1, last + 1):
            ...  # E-step (em3d.estep), M-step (em3d.mstep), checkpoint (em3d.runner.CheckpointWriter)

**Parameter dataclasses.** Every field has its default; a field set to None was not given (a flag left out):
it takes the default on a fresh start and the checkpoint's value on ``--continue`` (:func:`start_run`). The
fields every driver has, under these names: ``ini_high`` (A), ``healpix_order``, ``offset_range`` and
``offset_step`` (pixels of the particle box), ``symmetry`` (point group), ``particle_diameter`` (A; None: 0.9 x
the box; its flag is ``--diameter``), ``tau2_fudge``, ``seed``, ``max_significant``. Methods: ``validate()`` (the
options alone; :func:`validate_common` checks the shared ones) and ``check_particles(particles)`` (the options
against the loaded data; :func:`check_diameter`). :func:`start_run` calls each once.

**Checkpoints.** Every iteration ``i`` writes ``run_it{i:03d}_{model,data}.star`` and its maps
(:mod:`cryopipe.em3d.model`); the model STAR holds the run's options as ``cp_*`` (:func:`model_options`), which
``--continue`` reads back and checks (:func:`cryopipe.em3d.runner.check_options`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cryopipe.em3d import mstep
from cryopipe.em3d.gold import MAX_ORDER
from cryopipe.em3d.model import Model, initial_sigma2, parse_continue, read_model, reference_scale
from cryopipe.em3d.particles import ParticleSet, check_reference, load_particles
from cryopipe.em3d.runner import check_options, portable_names, restore_table
from cryopipe.errors import InputError, require
from cryopipe.fourier import lowpass
from cryopipe.geometry import symmetry_operators
from cryopipe.io.mrc import read_mrc
from cryopipe.io.star import read_star
from cryopipe.outdir import link_or_copy
from cryopipe.parallel import split_range
from cryopipe.stage import StageContext

log = logging.getLogger(__name__)

DIAMETER_FLAG = "--diameter"  # the flag of ``particle_diameter`` (every stage names the particle diameter so)
FLAGS = {"particle_diameter": DIAMETER_FLAG}  # fields whose flag is not --<field-with-dashes>
# per-particle columns a checkpoint's data STAR gives back on --continue (drivers may add their own)
TABLE_COLUMNS = ("rlnClassNumber", "rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst",
                 "rlnOriginYAngst", "rlnLogLikeliContribution", "rlnMaxValueProbDistribution",
                 "rlnNrOfSignificantSamples")


@dataclass
class EMInputs:
    """The files an em3d driver reads.

    ``particles``: particle STAR (RELION 3.1+, with data_optics and CTF); on continue it may be left out (the
    checkpoint names it). ``reference``: initial map (MRC, the particles' box and pixel size), or a sequence of
    them, one per class (class3d); not with ``continue_from`` (the maps come from the checkpoint).
    ``continue_from``: a checkpoint ``DIR/run_itNNN`` (or any of its files) to continue from; None: a fresh run.
    """

    particles: Path | None = None
    reference: Path | Sequence[Path] | None = None
    continue_from: Path | None = None


def reference_paths(reference: Path | Sequence[Path] | None) -> list[Path]:
    """The initial maps an :class:`EMInputs` names, as a list (empty: none)."""
    if reference is None:
        return []
    if isinstance(reference, (str, os.PathLike)):
        return [Path(reference)]
    return [Path(r) for r in reference]


def check_reference_count(n_refs: int, classes: int) -> None:
    """Raise InputError unless ``n_refs`` initial maps can start ``classes`` classes: one (every class from it) or
    one per class."""
    require(n_refs in (1, classes), f"{n_refs} reference maps for {classes} classes: give one map (every class "
            "starts from it) or one per class", field="--reference")


@dataclass
class Start:
    """Where a driver's iterations start (:func:`start_run`).

    ``params``: the resolved parameters (no field None that has a default). ``particles``: the loaded set (this
    rank's share of the image spectra; rlnImageName as the input STAR gives it, see
    :func:`~cryopipe.em3d.runner.portable_names`; on continue the checkpoint's table columns).
    ``model``: the checkpoint's model (None on a fresh start: the driver makes its own, e.g. with
    :func:`initial_model`). ``iteration``: the last completed iteration (0 on a fresh start). ``options``: the
    checkpoint's options (model_general ``cp_*`` without the prefix; {} on a fresh start). ``reference``: the map to
    start from (None on continue). ``diameter_A``: the mask diameter, A. ``mask``: (N, N, N) float32 soft solvent
    mask of that diameter. ``mine``: (n_mine,) int64 indices of this rank's particles. ``inputs``: the files read,
    for the provenance record (particles, reference, and the checkpoint's STARs on an explicit continue).
    """

    params: object
    particles: ParticleSet
    model: Model | None
    iteration: int
    options: dict
    reference: Path | Sequence[Path] | None
    diameter_A: float
    mask: np.ndarray
    mine: np.ndarray
    inputs: list[Path] = field(default_factory=list)


def resolution_increment(box: int) -> int:
    """Fourier shells (px) added to the current resolution for the next E-step limit: RELION's incr_size (10) at
    its typical 360 px box, scaled with the box ``box`` (px), at least 3, so that small boxes do not jump to
    Nyquist after one iteration."""
    return max(3, round(box / 36))


def given(cls, **values):
    """An instance of the parameter dataclass ``cls`` with only ``values`` given (every other field None), as the
    CLI builds it from the flags; e.g. ``given(Class3DParams, iterations=30)`` to continue a run from Python."""
    return cls(**{**dict.fromkeys(cls.__dataclass_fields__), **values})


def configure(cls, args):
    """``configure`` of an EM driver's CLI: flags -> parameters of dataclass ``cls`` (a flag left out stays None:
    the default, or on --continue the checkpoint's value) and :class:`EMInputs` (``args.continue_from``: the
    CLI's, set for a resumed run)."""
    params = given(cls, **{name: getattr(args, name) for name in cls.__dataclass_fields__})
    return params, EMInputs(args.particles, args.reference, args.continue_from)


def with_defaults(params):
    """``params`` (a parameter dataclass) with every None field set to the dataclass's default."""
    defaults = type(params)()
    return dataclasses.replace(params, **{k: getattr(defaults, k) for k, v in dataclasses.asdict(params).items()
                                          if v is None})


def cast_option(cls, key: str, value):
    """A checkpoint's option ``value`` (a STAR value: str, int or float) as the type of field ``key`` of the
    dataclass ``cls`` (int, float or str); None stays None."""
    kind = str(cls.__dataclass_fields__[key].type)
    if value is None:
        return None
    if "int" in kind:
        return int(float(value))
    if "float" in kind:
        return float(value)
    return str(value)


def params_from_options(cls, options: dict):
    """An instance of the parameter dataclass ``cls`` from merged checkpoint options (fields absent or None: the
    defaults)."""
    defaults = cls()
    return cls(**{k: getattr(defaults, k) if options.get(k) is None else cast_option(cls, k, options[k])
                  for k in cls.__dataclass_fields__})


def checkpoint_options(prefix: Path) -> dict:
    """The options a checkpoint ``prefix`` (DIR/run_itNNN) was written with: ``cp_*`` of its model_general,
    without the prefix (as read from the STAR: str, int or float)."""
    general = read_star(f"{prefix}_model.star")["model_general"].iloc[0].to_dict()
    return {k[3:]: v for k, v in general.items() if k.startswith("cp_")}


def validate_common(params) -> None:
    """Check the options every driver has (see the module's docstring); InputError naming the flag."""
    require(params.ini_high > 0, "must be positive", field="--ini-high")
    require(int(params.healpix_order) == params.healpix_order and 0 <= params.healpix_order <= MAX_ORDER,
            f"must be 0..{MAX_ORDER}, got {params.healpix_order}", field="--healpix-order")
    require(params.offset_step > 0, "must be positive", field="--offset-step")
    require(params.offset_range >= 0, "must be >= 0", field="--offset-range")
    require(params.particle_diameter is None or params.particle_diameter > 0, "must be positive",
            field=DIAMETER_FLAG)
    require(params.tau2_fudge > 0, "must be positive", field="--tau2-fudge")
    require(params.max_significant >= 1, "must be >= 1", field="--max-significant")
    symmetry_operators(params.symmetry)


def check_diameter(params, particles: ParticleSet) -> None:
    """The particle diameter (A) must fit the particles' box (box px x angpix A/px)."""
    size_A = particles.box * particles.angpix
    if params.particle_diameter is not None and params.particle_diameter > size_A:
        raise InputError(f"particle diameter {params.particle_diameter:g} A is larger than the box "
                         f"({particles.box} px x {particles.angpix:g} A/px = {size_A:g} A) of the particles in "
                         "this file", particles.path, DIAMETER_FLAG)


def mask_diameter_A(params, particles: ParticleSet) -> float:
    """The solvent mask's diameter, A: ``params.particle_diameter``, else 0.9 x the box."""
    return float(params.particle_diameter or 0.9 * particles.box * particles.angpix)


def model_options(params, particles: ParticleSet, diameter_A: float) -> dict:
    """The options a checkpoint records (``cp_*``): the particles STAR (absolute), every parameter, and the
    particle diameter actually used (A)."""
    return {"particles": os.path.abspath(particles.path),
            **{k: v for k, v in dataclasses.asdict(params).items() if k != "particle_diameter"},
            "particle_diameter": diameter_A}


def start_run(params, inputs: EMInputs, ctx: StageContext, cache=None, *, fixed=(), columns=TABLE_COLUMNS,
              halves: bool = False, needs_reference: bool = True) -> Start:
    """Everything before a driver's first iteration, fresh or continued.

    Fresh (``inputs.continue_from`` None): --particles and (``needs_reference``) --reference are required; None
    parameters take their defaults. Continued: the checkpoint's options, overridden by the parameters given (not
    None); one in ``fixed`` ("particles": the STAR file) that differs from the checkpoint's is an InputError; its model
    (``halves``: gold-standard half-maps) and the ``columns`` of its data STAR are read back. A resumed run
    (``ctx.resumed``: the CLI continues an interrupted run of the same command) ignores the reference: its maps are
    its own. Then the parameters are validated (once), the particles loaded (this rank's share; ``cache``: the
    node-local stack cache) and checked against the parameters, and on a fresh start the reference against the
    particles.
    """
    rank, size = ctx.comm.Get_rank(), ctx.comm.Get_size()
    reference = None if ctx.resumed else inputs.reference
    read: list[Path] = []
    prefix, iteration, stored = None, 0, {}
    if inputs.continue_from is not None:
        prefix, iteration = parse_continue(inputs.continue_from)
        stored = checkpoint_options(prefix)
        given = dataclasses.asdict(params)
        if inputs.particles is not None:
            given["particles"] = os.path.abspath(inputs.particles)
        require(reference is None, "the maps come from the checkpoint; do not give --reference with --continue",
                field="--reference")
        options = check_options(stored, given, fixed, FLAGS)
        params = params_from_options(type(params), options)
        particles_path = options["particles"]
        if not ctx.resumed:  # a resumed run's checkpoints are its own outputs
            read = [Path(f"{prefix}_model.star"), Path(f"{prefix}_data.star")]
    else:
        require(inputs.particles is not None, "--particles is required", field="--particles")
        require(reference is not None or not needs_reference, "--reference is required", field="--reference")
        params, particles_path = with_defaults(params), inputs.particles
    params.validate()
    particles = load_particles(particles_path, share=(rank, size), cache=cache)
    model = None
    if prefix is not None:
        model = read_model(prefix, halves=halves)
        restore_table(particles, f"{prefix}_data.star", columns)
    params.check_particles(particles)
    portable_names(particles)
    n = len(particles)
    diameter = mask_diameter_A(params, particles)
    mask = mstep.solvent_mask(particles.box, particles.angpix, diameter)
    if prefix is None:
        for path in reference_paths(reference):
            check_reference(path, particles)
    read = [Path(particles_path), *reference_paths(inputs.reference), *read]
    return Start(params=params, particles=particles, model=model, iteration=iteration, options=stored,
                 reference=reference, diameter_A=diameter, mask=mask, mine=np.arange(n)[split_range(n, rank, size)],
                 inputs=read)


def initial_model(particles: ParticleSet, reference: Path | Sequence[Path], n_maps: int, params, mask: np.ndarray,
                  mine, bk, comm) -> Model:
    """The model of iteration 0: ``n_maps`` maps from ``reference`` (one map: ``n_maps`` copies of it; a sequence:
    one map per class, exactly ``n_maps`` of them), each low-passed to ``params.ini_high`` (A), masked by ``mask``
    (N, N, N) and scaled to the particles' grey scale (fitted on this rank's particles ``mine`` and summed over
    ``comm``); equal class weights, the noise spectra of the data (sigma2 (G, N//2+1)), tau2 (K, N//2+1) =
    tau2_fudge x each map's power (recorded only: the M-step takes tau2 from the data), E-step limit
    N angpix / ini_high Fourier px (2 .. N//2)."""
    box, angpix, k = particles.box, particles.angpix, n_maps
    paths = reference_paths(reference)
    check_reference_count(len(paths), k)
    r_max = int(np.clip(round(box * angpix / params.ini_high), 2, box // 2))
    refs = []
    for path in paths:
        ref, _ = read_mrc(path)
        ref = np.asarray(lowpass(ref.astype(np.float64), angpix, params.ini_high, ndim=3)) * mask
        ref *= reference_scale(ref, particles, mine, r_max, bk, comm, seed=params.seed)
        refs.append(ref)
    refs = np.stack(refs if len(refs) == k else refs * k)
    tau2 = params.tau2_fudge * np.stack([mstep.signal_power(ref) for ref in refs])
    nsh = box // 2 + 1
    return Model(maps=refs.astype(np.float32), pdf_class=np.full(k, 1.0 / k),
                 sigma2=initial_sigma2(particles, mine, comm), tau2=tau2,
                 ssnr=np.zeros((k, nsh)), resolution_A=np.full(k, params.ini_high),
                 sigma_offset_px=float(params.offset_range), r_max=r_max, iteration=0, angpix=angpix)


def link_last_iteration(out: Path, iteration: int) -> list[Path]:
    """``run_{data,model}.star``, ``run_classKKK.mrc`` ...: the files of iteration ``iteration`` under names that do
    not depend on the iteration count (hard links where the file system allows, else copies), so that a workflow
    can name the result whatever the count. Returns the names made."""
    prefix = f"run_it{iteration:03d}_"
    made = []
    for src in sorted(Path(out).glob(f"{prefix}*")):
        dst = src.with_name("run_" + src.name[len(prefix):])
        link_or_copy(src, dst)
        made.append(dst)
    return made
