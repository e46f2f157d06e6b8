"""The BioEM stage: ln P(image | model) for every particle and model, and the models' ranking.

Notebook use, the whole stage (what ``cryopipe bioem`` runs: logp.star, ranking.star and figures in ``out``)::

    result = run(RankParams(orientation_order=2), BioEMInputs("particles.star", ["a.pdb", "b.pdb"]), Path("bioem"),
                 StageContext.local("auto"))

or one model at a time::

    bk = get_backend("auto")
    ds = load_particles("particles.star")                       # images, pixel size, CTF estimates
    res = compute_log_p(read_structural_model("model.pdb", ds.angpix, params), ds, params, bk)
    res.log_p                                                   # (I,) ln P per particle

Default mode (:class:`RankParams`): cryopipe's conventions (img[y, x], RELION Euler angles and CTF with
astigmatism and Cs, proper Gaussian priors on the CTF grid with the defocus grid taken relative to each
particle's own estimate, a uniform prior over orientations and displacements, optional per-particle
orientation priors from a refinement); the particles come from the shared particle source
(:mod:`cryopipe.particles`). ``compat="bioem2.1"``: :func:`compute_compat` reproduces the reference program's
numbers from its own input files (:mod:`cryopipe.bioem.compat`).
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from cryopipe.backend import get_backend
from cryopipe.bioem import compat, local, ranking, split
from cryopipe.bioem.forward import MapModel, PointModel
from cryopipe.bioem.integrate import Problem, Result, integrate, reduce_ranks
from cryopipe.bioem.likelihood import best_norm_offset, log_constant
from cryopipe.cache import StackCache
from cryopipe.ctf import CTFParams, ctf_2d
from cryopipe.errors import InputError, require
from cryopipe.geometry import euler_to_matrix, matrix_to_euler, rotation_angle_between, so3_grid
from cryopipe.io.models import read_model
from cryopipe.io.mrc import read_mrc
from cryopipe.io.star import read_table, write_star
from cryopipe.parallel import split_range
from cryopipe.particles import ParticleSet, open_particles
from cryopipe.progress import PERIOD_S, Progress
from cryopipe.stage import StageContext, StageResult, input_files

log = logging.getLogger(__name__)

MAX_DEFOCUS_A = 80000.0  # 8 um, BioEM's limit


@dataclass
class RankParams:
    """Parameters of the default mode. Lengths in Angstrom, angles in degrees, B in A^2 (RELION's envelope).

    orientation_order : HEALPix order of the global orientation grid (RELION's so3_grid: 1 -> 576, 2 -> 4608).
    orientations : a STAR file whose rlnAngleRot/Tilt/Psi rows are the orientation grid (instead of the order).
    orientation_prior : a STAR file (e.g. a refinement's particles) with each particle's angles, matched by
        rlnImageName; weights exp(-angle^2 / (2 sigma^2)) around them, zero beyond 3 sigma.
    orientation_prior_sigma : sigma of that prior.
    local_orientations : a STAR file of refined angles (rlnImageName, rlnAngleRot/Tilt/Psi): each particle is
        integrated only over a ball of ``local_radius`` degrees around its own angles, on a lattice of
        ``local_step`` degrees (:mod:`cryopipe.bioem.local`; uniform prior, every model at its own best pose).
        Atomic models are then rendered into a map at the particles' box and pixel size and projected through
        the Fourier slice (Gaussian points only).
    local_map : the map the local orientations were found against (e.g. the refinement's): each model is first
        fitted into it (rotation and hand, :func:`cryopipe.mapalign.align`) and the poses carried into the
        model's frame (None: the poses are in the models' frame already).
    defocus_grid : (start, end, n) offsets added to each particle's rlnDefocusU/V (absolute defocus when the
        particles carry none); Gaussian prior of width defocus_sigma around the estimate (around
        defocus_center for absolute grids). Grids hold n values from start to end inclusive.
    amplitude_grid : Q0 values (None: each particle's rlnAmplitudeContrast); prior around amplitude_center
        (None: the particles' value) of width amplitude_sigma.
    bfactor_grid : B values, prior exp(-B^2 / (2 bfactor_sigma^2)) on B >= 0.
    max_shift_px, shift_step_px : displacements 0, +-step, ... up to +-max (pixels), uniform prior.
    points : "atom" (one point per atom, electrons = atomic number) or "residue" (one sphere per CA,
        BioEM's radius/electron table). shape : "gaussian" or "sphere" (residues: sphere).
    atom_sigma : Gaussian width of an atom. center_models : move each model to its electron-weighted centre.
    keep_orientations : also return ln P per (particle, orientation). precision : "auto" (float64 on CPU,
        float32 FFTs on GPU), "single" or "double".
    cpu_fraction : share of the images scored by a CPU backend beside the GPU, in [0, 1], or "auto" (by
        measured rates); None: auto on a GPU, 0 on the CPU (:mod:`cryopipe.bioem.split`).
    compat : "bioem2.1": reproduce BioEM 2.1 from its own files (:class:`BioEMInputs` ``params_file``, the
        particles as BioEM text or MRC, ``orientations`` a BioEM orientation list); of the other fields only
        ``keep_orientations`` then applies. None: the default mode.
    """

    orientation_order: int = 2
    orientations: str | None = None
    orientation_prior: str | None = None
    orientation_prior_sigma: float = 10.0
    local_orientations: str | None = None
    local_map: str | None = None
    local_radius: float = 10.0
    local_step: float = 5.0
    defocus_grid: tuple[float, float, int] = (-500.0, 500.0, 3)
    defocus_sigma: float = 500.0
    defocus_center: float = 15000.0
    amplitude_grid: tuple[float, float, int] | None = None
    amplitude_center: float | None = None
    amplitude_sigma: float = 0.05
    bfactor_grid: tuple[float, float, int] = (0.0, 0.0, 1)
    bfactor_sigma: float = 100.0
    max_shift_px: int = 3
    shift_step_px: int = 1
    points: str = "atom"
    shape: str = "gaussian"
    atom_sigma: float = 1.8
    center_models: bool = False
    keep_orientations: bool = False
    precision: str = "auto"
    cpu_fraction: float | str | None = None
    compat: str | None = None

    def validate(self) -> None:
        split.parse_fraction(self.cpu_fraction)
        for name in ("defocus_grid", "bfactor_grid") + (("amplitude_grid",) if self.amplitude_grid else ()):
            start, end, n = getattr(self, name)
            require(int(n) >= 1 and end >= start, f"grid must be 'start end n' with end >= start, n >= 1, got "
                    f"{getattr(self, name)}", field="--" + name.replace("_", "-"))
        require(self.bfactor_grid[0] >= 0, "B-factors must be >= 0", field="--bfactor-grid")
        if self.amplitude_grid:
            require(0 < self.amplitude_grid[0] and self.amplitude_grid[1] < 1, "amplitude contrast must lie in (0, 1)",
                    field="--amplitude-grid")
        require(self.max_shift_px >= 0 and self.shift_step_px >= 1, "need max shift >= 0 and step >= 1",
                field="--displacement")
        require(min(self.defocus_sigma, self.amplitude_sigma, self.bfactor_sigma, self.orientation_prior_sigma) > 0,
                "prior widths must be positive", field="--*-sigma")
        if self.local_orientations:
            require(not (self.orientations or self.orientation_prior), "--local-orientations replaces "
                    "--orientations and --orientation-prior: give one of them", field="--local-orientations")
            require(self.local_map is None or self.local_orientations, "--local-map needs --local-orientations",
                    field="--local-map")
            require(not self.keep_orientations, "--keep-orientations needs one orientation list for all particles "
                    "(a global grid or --orientations), not per-particle local grids", field="--keep-orientations")
            require(self.local_step > 0 and 0 <= self.local_radius < 90, "the local grid needs 0 <= radius < 90 and "
                    "step > 0 degrees", field="--local-radius/--local-step")
        require(self.points in ("atom", "residue"), "points must be atom or residue", field="--points")
        require(self.shape in ("gaussian", "sphere"), "shape must be gaussian or sphere", field="--shape")
        require(self.atom_sigma > 0, "atom sigma must be positive", field="--atom-sigma")
        require(self.precision in ("auto", "single", "double"), "precision: auto, single or double",
                field="--precision")


@dataclass
class BioEMInputs:
    """The particles and models a run scores (the orientation list and prior are :class:`RankParams` fields).
    Paths as typed: they are written into the tables as given.

    particles : a RELION particle STAR (default mode), or BioEM text or MRC particles (compat). models :
    .pdb/.cif/.mmcif/.ent atomic models, .mrc/.map maps (default mode) or BioEM text models; their file names
    without the extension name them in the tables, so they must differ. params_file : the BioEM parameter file
    (compat only)."""

    particles: str | os.PathLike
    models: list[str | os.PathLike]
    params_file: str | os.PathLike | None = None


@dataclass
class ModelResult:
    """ln P per particle with the maximising parameters (host arrays of length I)."""

    log_p: np.ndarray
    result: Result
    rotations: np.ndarray
    best: pd.DataFrame = field(default_factory=pd.DataFrame)
    orientation_log_p: np.ndarray | None = None
    split: dict = field(default_factory=dict)  # how the images were shared between GPU and CPU (provenance)


def load_particles(path, cache: StackCache | None = None) -> ParticleSet:
    """Particles of a RELION STAR file (:func:`cryopipe.particles.open_particles`: rlnImageName, rlnImagePixelSize,
    the stacks' headers checked; its InputErrors), with ``images`` (I, N, N) float64 img[y, x] of all particles
    (every rank scores every image against its share of the orientations); the box N must be even.

    ``cache``: read the stacks from their node-local copies where there are some, and stage the others
    (:mod:`cryopipe.cache`)."""
    ds = open_particles(path)
    require(ds.box % 2 == 0, "particle box must be even", ds.path, "rlnImageSize")
    ds.images = ds.read_images(cache, dtype=np.float64)
    return ds


def read_structural_model(path, angpix: float, params: RankParams, box: int | None = None):
    """A model file -> :class:`MapModel` (MRC: a cube, pixel size must match, and its box, when ``box`` is
    given, that of the particles; :func:`compute_log_p` checks the box too), or :class:`PointModel`: PDB/mmCIF
    atoms (``params.shape``, electrons = atomic number) or residues (spheres), BioEM text model (spheres)."""
    path = str(path)
    low = path.lower()
    if low.endswith((".mrc", ".map")):
        vol, map_angpix = read_mrc(path)
        if vol.ndim != 3 or not vol.shape[0] == vol.shape[1] == vol.shape[2]:
            raise InputError(f"a map model must be a cubic 3D map, got {'x'.join(map(str, vol.shape))} voxels", path,
                             "nx/ny/nz")
        if box is not None and vol.shape[0] != box:
            raise InputError(f"map model box {vol.shape[0]} px differs from the particles' box {box} px", path, "box")
        if map_angpix is None or abs(map_angpix - angpix) > 1e-3 * angpix:
            raise InputError(f"model pixel size {map_angpix} A differs from the particles' {angpix} A", path,
                             "voxel size")
        model = MapModel(vol, angpix)
        model.source = path  # named by compute_log_p's box check
        return model
    if low.endswith((".pdb", ".cif", ".mmcif", ".ent")):
        if params.points == "residue":
            model = compat.read_pdb_residues(path)
        else:
            atoms = read_model(path)
            model = PointModel(atoms.xyz, _electrons(atoms.element), params.atom_sigma, params.shape)
    else:
        model = compat.read_text_model(path)
    return model.centred() if params.center_models else model


def _electrons(elements) -> np.ndarray:
    import gemmi

    z = np.array([gemmi.Element(str(e)).atomic_number for e in elements], dtype=np.float64)
    return np.where(z > 0, z, 6.0)


def _linspace(grid) -> np.ndarray:
    start, end, n = grid
    return np.linspace(start, end, int(n)) if int(n) > 1 else np.array([float(start)])


def _log_gauss_weight(values, center, sigma) -> np.ndarray:
    """ln(prior density x grid step) of a Gaussian prior on a grid (0 for a single grid point)."""
    if len(values) == 1:
        return np.zeros(1)
    step = (values[-1] - values[0]) / (len(values) - 1)
    return -0.5 * ((values - center) / sigma) ** 2 - math.log(math.sqrt(2 * math.pi) * sigma) + math.log(step)


def _dtypes(params: RankParams, bk):
    single = params.precision == "single" or (params.precision == "auto" and bk.is_gpu)
    return (bk.xp.float32, bk.xp.complex64) if single else (bk.xp.float64, bk.xp.complex128)


def _orientation_grid(params: RankParams, ds: ParticleSet) -> np.ndarray:
    if params.orientations:
        t = read_table(params.orientations, "particles", ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"))
        rot = euler_to_matrix(t["rlnAngleRot"], t["rlnAngleTilt"], t["rlnAnglePsi"])
    else:
        require(0 <= params.orientation_order <= 4, "orientation grid order must be 0..4", field="--orientation-grid")
        e = so3_grid(params.orientation_order)
        rot = euler_to_matrix(e[:, 0], e[:, 1], e[:, 2])
    if len(rot) == 0:
        raise InputError("the orientation list is empty", params.orientations, "rlnAngleRot")
    return rot


def _orientation_prior(params: RankParams, ds: ParticleSet, rotations: np.ndarray) -> np.ndarray | None:
    """(I, O) normalised log prior of each orientation for each particle, or None (uniform)."""
    if not params.orientation_prior:
        return None
    own = local.refined_rotations(params.orientation_prior, ds.table["rlnImageName"])
    ang = rotation_angle_between(own[:, None], rotations[None])  # (I, O) degrees
    lp = np.where(ang <= 3 * params.orientation_prior_sigma, -0.5 * (ang / params.orientation_prior_sigma) ** 2,
                  -np.inf)
    if not np.isfinite(lp).any(axis=1).all():
        raise InputError("some particles have no grid orientation within 3 sigma of their prior pose; widen "
                         "--orientation-prior-sigma or refine the grid", params.orientation_prior, "rlnAngleRot")
    m = lp.max(axis=1, keepdims=True)
    return lp - (m + np.log(np.exp(lp - m).sum(axis=1, keepdims=True)))


def _ctf_setup(params: RankParams, ds: ParticleSet, bk, dtype):
    """Per-particle CTF kernels (I, C, N, H), the shared log prior (1, C) and the grid's parameters (I, C) dict."""
    t = ds.table
    has_estimate = {"rlnDefocusU", "rlnDefocusV"} <= set(t.columns)
    for col in ("rlnVoltage", "rlnSphericalAberration"):
        require(col in t.columns, "CTF needs this column (in data_optics)", ds.path, col)
    offsets = _linspace(params.defocus_grid)
    amps = (_linspace(params.amplitude_grid) if params.amplitude_grid else None)
    bfac = _linspace(params.bfactor_grid)
    n_img = len(t)
    base_u = t["rlnDefocusU"].to_numpy(float) if has_estimate else np.zeros(n_img)
    base_v = t["rlnDefocusV"].to_numpy(float) if has_estimate else np.zeros(n_img)
    angle = t["rlnDefocusAngle"].to_numpy(float) if "rlnDefocusAngle" in t.columns else np.zeros(n_img)
    q0 = (t["rlnAmplitudeContrast"].to_numpy(float) if "rlnAmplitudeContrast" in t.columns
          else np.full(n_img, 0.1))
    a_vals = amps if amps is not None else np.array([np.nan])
    d_, a_, b_ = (x.ravel() for x in np.meshgrid(offsets, a_vals, bfac, indexing="ij"))  # (C,)
    du = base_u[:, None] + d_[None]
    dv = base_v[:, None] + d_[None]
    if (du <= 0).any() or (dv <= 0).any() or (du > MAX_DEFOCUS_A).any() or (dv > MAX_DEFOCUS_A).any():
        raise InputError(f"defocus grid reaches {min(du.min(), dv.min()):.0f}..{max(du.max(), dv.max()):.0f} A, "
                         f"outside the physical range (0, {MAX_DEFOCUS_A:.0f}] A", ds.path, "--defocus-grid")
    amp = np.where(np.isnan(a_)[None], q0[:, None], a_[None])
    if ((amp <= 0) | (amp >= 1)).any():
        raise InputError("amplitude contrast must lie in (0, 1)", ds.path, "rlnAmplitudeContrast")
    c = len(d_)
    kv = t["rlnVoltage"].to_numpy(float)[:, None].repeat(c, 1)
    cs = t["rlnSphericalAberration"].to_numpy(float)[:, None].repeat(c, 1)
    ctf = CTFParams(du.ravel(), dv.ravel(), angle[:, None].repeat(c, 1).ravel(), kv.ravel(), cs.ravel(),
                    amp.ravel(), np.broadcast_to(b_[None], (n_img, c)).ravel())
    kernels = ctf_2d(ctf, ds.box, ds.angpix, bk, half=True, dtype=dtype).reshape(n_img, c, ds.box, -1)
    d_center = 0.0 if has_estimate else params.defocus_center
    a_center = params.amplitude_center if params.amplitude_center is not None else float(np.median(q0))
    lp_amp = _log_gauss_weight(amps, a_center, params.amplitude_sigma) if amps is not None else np.zeros(1)
    lp_b = _log_gauss_weight(bfac, 0.0, params.bfactor_sigma) + (math.log(2.0) if len(bfac) > 1 else 0.0)
    lp = (_log_gauss_weight(offsets, d_center, params.defocus_sigma)[:, None, None] + lp_amp[None, :, None]
          + lp_b[None, None, :])
    grid = {"defocus_u": du, "defocus_v": dv, "amplitude": amp, "bfactor": np.broadcast_to(b_[None], (n_img, c))}
    return kernels, lp.reshape(1, -1), grid


def _shift_grid(params: RankParams, n: int) -> np.ndarray:
    require(params.max_shift_px < n // 2, f"max shift must be < half the box ({n // 2} px)", field="--displacement")
    return compat.displacements(n, params.max_shift_px, params.shift_step_px)


def _wrap(idx, n):
    return np.where(idx > n // 2, idx - n, idx)


def compute_log_p(model, ds: ParticleSet, params: RankParams, bk, comm=None, label: str = "model") -> ModelResult:
    """ln P(particle | model) for every particle (default mode), on ``bk``, orientations split over ``comm``.
    Progress lines (rank 0, every PERIOD_S seconds) count the orientations done and start with ``label``."""
    params.validate()
    xp = bk.xp
    real, cplx = _dtypes(params, bk)
    n = ds.box
    if isinstance(model, MapModel) and model.volume.shape != (n, n, n):
        raise InputError(f"map model box {'x'.join(map(str, model.volume.shape))} px differs from the particles' "
                         f"box {n} px (resample the map to the particles' box and pixel size)",
                         getattr(model, "source", None), "box")
    if params.local_orientations and isinstance(model, PointModel):
        # per-particle grids need I x K projections: through the Fourier slice of the rendered model, ~16x cheaper
        # than projecting every point (spectra within 3% of the exact projections', cc 0.9999 at 2.5 A/px)
        model = MapModel(model.render(n, ds.angpix), ds.angpix)
    frame = _fit_into_map(params.local_map, model, ds, bk) if params.local_orientations and params.local_map else None
    shifts = _shift_grid(params, n)
    kernels, ctf_lp, grid = _ctf_setup(params, ds, bk, real)
    spectra = bk.fft.rfft2(xp.fft.ifftshift(bk.asarray(ds.images, dtype=real), axes=(-2, -1))).astype(cplx)
    co, coo = ds.images.sum(axis=(1, 2)), (ds.images ** 2).sum(axis=(1, 2))

    def problem(images: np.ndarray, rotations: np.ndarray, prior: np.ndarray | None) -> Problem:
        """The integration of ``images`` (host indices) over ``rotations`` (O, 3, 3) with (len(images), O) priors."""
        def project_on(b):  # projections on backend b (the CPU part of a shared run projects on the CPU)
            own = MapModel(model.volume, model.angpix) if isinstance(model, MapModel) and b is not bk else model

            def project(o0, o1):
                if isinstance(own, MapModel):
                    return own.spectra(rotations[o0:o1], b).astype(cplx)
                img = own.project(rotations[o0:o1], n, ds.angpix, b, axes=(1, 0), dtype=real)
                return b.fft.rfft2(b.xp.fft.ifftshift(img, axes=(-2, -1))).astype(cplx)
            return project

        every = len(images) == len(co)
        idx = slice(None) if every else bk.asarray(images)
        return Problem(spectra[idx], co[images], coo[images], kernels if len(kernels) == 1 else kernels[idx],
                       ctf_lp if len(ctf_lp) == 1 else ctf_lp[images], shifts, len(rotations), project_on(bk), prior,
                       project_on)

    fraction = split.resolve_fraction(params.cpu_fraction, bk)
    if params.local_orientations:
        rotations, res, shared = _integrate_local(problem, params, ds, bk, comm, fraction, label, frame)
    else:
        rotations = _orientation_grid(params, ds)
        prob = problem(np.arange(len(co)), rotations, _orientation_prior(params, ds, rotations))
        progress = _progress(_share(len(rotations), comm), label, "orientations", comm)
        res, shared = split.integrate_shared(prob, bk, comm, params.keep_orientations, fraction, progress=progress)
        res = reduce_ranks(res, comm)
    # a prior (refined or local) carries the orientations' weights; a plain grid's points weigh 1 / O each
    prior = params.orientation_prior or params.local_orientations
    uniform = -math.log(len(shifts)) - (0.0 if prior else math.log(len(rotations)))
    const = log_constant(n * n) + uniform
    log_p = res.log_sum + const
    rows = np.arange(len(log_p))
    o, c = res.best_orientation, res.best_ctf
    rot, tilt, psi = matrix_to_euler(rotations[o])
    norm, offset = best_norm_offset(co, res.best_cc, res.best_ccc, res.best_cco, n * n)
    sh = shifts[res.best_shift]
    best = pd.DataFrame({
        "cpLogP": log_p, "rlnAngleRot": rot, "rlnAngleTilt": tilt, "rlnAnglePsi": psi,
        "rlnDefocusU": grid["defocus_u"][rows, c], "rlnDefocusV": grid["defocus_v"][rows, c],
        "rlnAmplitudeContrast": grid["amplitude"][rows, c], "rlnCtfBfactor": grid["bfactor"][rows, c],
        "rlnOriginXAngst": _wrap(sh[:, 1], n) * ds.angpix, "rlnOriginYAngst": _wrap(sh[:, 0], n) * ds.angpix,
        "cpNorm": norm, "cpOffset": offset, "cpOrientationIndex": o,
    })
    orient = None if res.orientation_log_sum is None else res.orientation_log_sum + const
    return ModelResult(log_p, res, rotations, best, orient, shared)


def _share(n: int, comm) -> int:
    """How many of ``n`` orientations this rank integrates (:func:`cryopipe.parallel.split_range`)."""
    rank, size = (0, 1) if comm is None else (comm.Get_rank(), comm.Get_size())
    mine = split_range(n, rank, size)
    return mine.stop - mine.start


def _progress(total: int, label: str, kind: str, comm) -> Progress:
    """The progress lines of one model's integration: ``total`` orientations of this rank's share, named
    "<label>: <kind>" ("rank 0's <kind>" under MPI, where rank 0 logs its share)."""
    whose = "rank 0's " if comm is not None and comm.Get_size() > 1 else ""
    return Progress(total, log, f"{label}: {whose}{kind}", every_s=PERIOD_S, comm=comm)


LOCAL_PRIOR_BYTES = 64 << 20  # the (chunk, chunk x K) prior of a chunk of particles on local grids


def _fit_into_map(path, model, ds: ParticleSet, bk):
    """:func:`cryopipe.mapalign.align` of the map at ``path`` (moving) onto the model's map (reference): the frame
    the local orientations are carried into (:func:`cryopipe.bioem.local.into_model_frame`)."""
    from cryopipe.mapalign import align

    vol, map_angpix = read_mrc(path)
    n = ds.box
    if vol.ndim != 3 or vol.shape != (n, n, n):
        raise InputError(f"map of {'x'.join(map(str, vol.shape))} voxels, the particles' box is {n} px", path, "box")
    if map_angpix is None or abs(map_angpix - ds.angpix) > 1e-3 * ds.angpix:
        raise InputError(f"map pixel size {map_angpix} A differs from the particles' {ds.angpix} A", path,
                         "voxel size")
    model_map = model.volume if isinstance(model, MapModel) else model.render(n, ds.angpix)
    fit = align(vol.astype(np.float32), np.asarray(model_map, dtype=np.float32), ds.angpix, bk=bk)
    log.info("model fitted into %s: hand %+d, NCC %.3f, Euler %s deg (the local orientations follow it)", path,
             fit.hand, fit.correlation, np.round(matrix_to_euler(fit.rotation), 1).tolist())
    return fit


def _integrate_local(problem, params: RankParams, ds: ParticleSet, bk, comm, fraction, label: str = "model",
                     frame=None):
    """Integrate every particle over its own local grid (:mod:`cryopipe.bioem.local`), in chunks of particles
    whose block priors fit in LOCAL_PRIOR_BYTES. Returns the (I K, 3, 3) orientation list (particle-major), the
    Result (orientation indices into that list) and the first chunk's CPU/GPU split record (later chunks reuse its
    measured rates). Progress lines (:func:`_progress`, named by ``label``) count the particles' orientations."""
    own = local.refined_rotations(params.local_orientations, ds.table["rlnImageName"])
    if frame is not None:  # poses found against a map in another frame: into the model's (fitted into that map)
        own = local.into_model_frame(own, frame.rotation, frame.hand)
    offsets, log_w = local.local_offsets(params.local_radius, params.local_step)
    k, n_img = len(offsets), len(own)
    rotations = local.local_grid(own, offsets)
    chunk = int(max(1, min(n_img, math.isqrt(LOCAL_PRIOR_BYTES // (8 * k)))))
    log.info("local orientations: %d per particle (radius %g deg, step %g deg), chunks of %d particles", k,
             params.local_radius, params.local_step, chunk)
    res, shared, rates = Result.empty(n_img, None), {}, None
    starts = range(0, n_img, chunk)
    progress = _progress(sum(_share((min(n_img, i0 + chunk) - i0) * k, comm) for i0 in starts), label,
                         "local orientations", comm)
    for i0 in starts:
        images = np.arange(i0, min(n_img, i0 + chunk))
        prob = problem(images, rotations[i0 * k:(images[-1] + 1) * k], local.block_prior(len(images), log_w))
        part, info = split.integrate_shared(prob, bk, comm, False, fraction, rates=rates, progress=progress)
        part = reduce_ranks(part, comm)
        res.update(images, part.log_sum, part.best_l, part.best_orientation + i0 * k, part.best_ctf,
                   part.best_shift, part.best_cc, part.best_ccc, part.best_cco)
        if not shared:
            shared = dict(info, chunks=math.ceil(n_img / chunk), orientations_per_particle=k)
            if info.get("rate_main") and info.get("rate_cpu"):
                rates = (info["rate_main"], info["rate_cpu"])
    return rotations, res, shared


# ----------------------------------------------------------------------------------------------- compat


@dataclass
class CompatRun:
    """Inputs of a BioEM 2.1 run: parameter file, particles (text or MRC) and optional orientation list."""

    params: compat.BioEMParams
    images: np.ndarray  # (I, N, N) I[x][y]
    orientations: np.ndarray  # (O, 3|4) as printed
    rotations: np.ndarray  # (O, 3, 3)
    orientation_volume: float  # without PRIOR_MODEL
    orientation_priors: np.ndarray | None


def load_compat(param_file, particles, orientation_file=None) -> CompatRun:
    """Read a BioEM 2.1 parameter file, its particles (.mrc/.mrcs: MRC; a text file naming MRC files, one per line:
    BioEM's multiple-MRC list, the stacks in order; else BioEM text particles) and orientations."""
    p = compat.read_parameter_file(param_file)
    listed = None if str(particles).lower().endswith((".mrc", ".mrcs")) else compat.mrc_list(particles)
    if listed is not None:
        images = np.concatenate([compat.read_mrc_particles(f, p.n_pixels, normalise=not p.no_map_norm)
                                 for f in listed])
    elif str(particles).lower().endswith((".mrc", ".mrcs")):
        images = compat.read_mrc_particles(particles, p.n_pixels, normalise=not p.no_map_norm)
    else:
        images = compat.read_text_particles(particles, p.n_pixels)
    priors = None
    if orientation_file:
        values, priors = compat.read_orientation_file(orientation_file, p.use_quaternions, p.prior_angles)
        volume = 1.0 / len(values)
    else:
        if p.prior_angles:
            raise InputError("PRIOR_ANGLES needs an orientation list (--orientations)", p.source, "PRIOR_ANGLES")
        values, volume = compat.orientation_grid(p)
    rot = compat.quaternion_matrices(values) if p.use_quaternions else compat.euler_zxz_matrices(values)
    return CompatRun(p, images, values, rot, volume, priors)


def compute_compat(model: PointModel, run: CompatRun, bk, comm=None, keep_orientations=False,
                   label: str = "model") -> ModelResult:
    """BioEM 2.1's ln P per image (double precision on the CPU), maximising parameters and per-orientation ln P.
    Progress lines as :func:`compute_log_p`'s."""
    p = run.params
    xp = bk.xp
    n = p.n_pixels
    if not p.no_centerofmass:
        model = model.centred()
    grid = compat.ctf_grid(p)
    kernels = bk.asarray(compat.ctf_kernels(grid, n, p.pixel_size)[None])
    spectra = bk.fft.rfft2(bk.asarray(run.images, dtype=xp.float64))
    co, coo = run.images.sum(axis=(1, 2)), (run.images ** 2).sum(axis=(1, 2))
    shifts = compat.displacements(n, *p.displace_center)

    def project(o0, o1):
        img = model.project(run.rotations[o0:o1], n, p.pixel_size, bk, axes=(0, 1), dtype=xp.float64, shift=p.shift)
        return bk.fft.rfft2(img)

    prob = Problem(spectra, co, coo, kernels, compat.ctf_log_prior(grid, p)[None], shifts, len(run.rotations), project)
    progress = _progress(_share(len(run.rotations), comm), label, "orientations", comm)
    res = reduce_ranks(integrate(prob, bk, comm, keep_orientations or p.write_prob_angles > 0, fused=False,
                                 progress=progress), comm)
    const = log_constant(n * n, exact=False) + compat.log_volume(p, run.orientation_volume, grid)
    log_p = res.log_sum + const
    norm, offset = best_norm_offset(co, res.best_cc, res.best_ccc, res.best_cco, n * n)
    sh = shifts[res.best_shift]
    best = pd.DataFrame({
        "cpLogP": log_p, "cpOrientationIndex": res.best_orientation, "cpCtfIndex": res.best_ctf,
        "cpAmplitude": grid.amplitude[res.best_ctf], "cpDefocusMicrons": grid.defocus_um[res.best_ctf],
        "cpBEnvelope": grid.envelope[res.best_ctf], "cpCenterX": -_wrap(sh[:, 0], n), "cpCenterY": -_wrap(sh[:, 1], n),
        "cpNorm": norm, "cpOffset": offset, "cpConstant": res.best_l,
    })
    orient = None if res.orientation_log_sum is None else res.orientation_log_sum + const
    return ModelResult(log_p, res, run.rotations, best, orient)


def write_compat_outputs(out_dir, name: str, res: ModelResult, run: CompatRun) -> list[Path]:
    """Output_Probabilities (and ANG_PROB with WRITE_PROB_ANGLES) in BioEM's layout; ``name`` suffixes them."""
    out_dir = Path(out_dir)
    b = res.best
    best = {"orientation": b["cpOrientationIndex"], "ctf": b["cpCtfIndex"], "shift_x": b["cpCenterX"],
            "shift_y": b["cpCenterY"], "norm": b["cpNorm"], "offset": b["cpOffset"], "constant": b["cpConstant"]}
    files = [out_dir / f"Output_Probabilities{name}"]
    compat.write_output_probabilities(files[0], run.params, res.log_p, best, run.orientations,
                                      compat.ctf_grid(run.params))
    if run.params.write_prob_angles > 0:
        files.append(out_dir / f"ANG_PROB{name}")
        compat.write_angle_probabilities(files[1], res.orientation_log_p, run.orientations,
                                         run.params.write_prob_angles, run.orientation_priors)
    return files


def model_name(path) -> str:
    """A model's name for tables: its file name without the extension."""
    return os.path.splitext(os.path.basename(str(path)))[0]


# ----------------------------------------------------------------------------------------------- the stage


def compat_model(path) -> PointModel:
    """A model in --compat mode: PDB/mmCIF residues (BioEM's spheres) or a BioEM text model; maps are refused."""
    low = str(path).lower()
    if low.endswith((".pdb", ".cif", ".mmcif", ".ent")):
        return compat.read_pdb_residues(path)
    if low.endswith((".mrc", ".map")):
        raise InputError("map models are not read in --compat mode; drop --compat to project maps", path)
    return compat.read_text_model(path)


def run(params: RankParams, inputs: BioEMInputs, out: Path, ctx: StageContext) -> StageResult:
    """Score every particle against every model (on ``ctx.backend``, orientations split over ``ctx.comm``) and
    write, on rank 0, into ``out``: logp.star (per particle and model: ln P and the maximising parameters),
    ranking.star (per model: summed ln P, difference to the best, ensemble weight +- s.d., particles preferring
    it), ranking.png, cumulative_logp.png, orientation_logp.npz with ``keep_orientations``, and with
    ``params.compat`` the reference's Output_Probabilities[_model] (and ANG_PROB[_model] with WRITE_PROB_ANGLES).

    Notes: cpu_gpu_split_<model> (default mode: fraction and rates, grid points/s), models, particles,
    best_model, ensemble_weights."""
    bk = ctx.backend or get_backend("auto")
    comm = ctx.comm
    rank0 = comm.Get_rank() == 0
    out = Path(out)
    names = [model_name(m) for m in inputs.models]
    if len(set(names)) != len(names):
        raise InputError("model file names must differ (they name the models in the tables)", field="--models")
    results, files, notes = [], [], {}
    models = Progress(len(names), log, "model", comm=comm)
    if params.compat:
        if not inputs.params_file:
            raise InputError("--compat bioem2.1 needs --params (the BioEM parameter file)", field="--params")
        setup = load_compat(inputs.params_file, inputs.particles, params.orientations)
        for i, (path, name) in enumerate(zip(inputs.models, names, strict=True)):
            res = compute_compat(compat_model(path), setup, bk, comm, params.keep_orientations,
                                 f"model {name} ({i + 1}/{len(names)})")
            results.append(res)
            models.step("%s scored", name)
            if rank0:
                files += write_compat_outputs(out, "" if len(names) == 1 else f"_{name}", res, setup)
        image_names = [f"{k + 1}@{inputs.particles}" for k in range(len(setup.images))]
        orientations = setup.orientations
        read = ([params.orientations] if params.orientations else []) + (compat.mrc_list(inputs.particles) or [])
    else:
        params.validate()
        with ctx.cache() as cache:  # copies fill while the models are scored
            ds = load_particles(inputs.particles, cache)
            for i, (path, name) in enumerate(zip(inputs.models, names, strict=True)):
                model = read_structural_model(path, ds.angpix, params)
                label = f"model {name} ({i + 1}/{len(names)})"
                log.info("%s: %d particles", label, len(ds.images))
                results.append(compute_log_p(model, ds, params, bk, comm, label))
                notes[f"cpu_gpu_split_{name}"] = results[-1].split  # fraction, rates (grid points/s)
                models.step("%s scored", name)
        image_names = list(ds.table["rlnImageName"])
        orientations = results[0].rotations
        read = [f for f in (params.orientations, params.orientation_prior) if f]
    read = [*input_files(inputs), *(Path(f) for f in read)]  # the record's inputs: these and the orientation files
    if not rank0:
        return StageResult(notes=notes, inputs=read)
    log_p = np.array([r.log_p for r in results])
    rows = [r.best.assign(cpModelName=name, cpParticleIndex=np.arange(len(r.log_p)) + 1, rlnImageName=image_names)
            for r, name in zip(results, names, strict=True)]
    table = pd.concat(rows, ignore_index=True)
    first = ["rlnImageName", "cpParticleIndex", "cpModelName"]
    write_star(out / "logp.star", {"logp": table[first + [c for c in table.columns if c not in first]]})
    rank_table = ranking.ranking_table(log_p, names, [str(m) for m in inputs.models])
    write_star(out / "ranking.star", {"ranking": rank_table})
    ranking.plot_ranking(rank_table, out / "ranking.png")
    ranking.plot_cumulative(log_p, names, out / "cumulative_logp.png")
    files += [out / "logp.star", out / "ranking.star", out / "ranking.png", out / "cumulative_logp.png"]
    if params.keep_orientations:
        np.savez_compressed(out / "orientation_logp.npz", log_p=np.array([r.orientation_log_p for r in results]),
                            orientations=orientations, models=np.array(names))
        files.append(out / "orientation_logp.npz")
    best = rank_table.iloc[0]
    weights = dict(zip(rank_table["cpModelName"], rank_table["cpEnsembleWeight"].round(4), strict=True))
    log.info("best model %s (sum ln P %.2f); weights %s", best["cpModelName"], best["cpSumLogP"],
             ", ".join(f"{n} {w:.3f}" for n, w in zip(rank_table["cpModelName"], rank_table["cpEnsembleWeight"],
                                                      strict=True)))
    notes.update(models=len(names), particles=int(log_p.shape[1]), best_model=best["cpModelName"],
                 ensemble_weights=weights)
    return StageResult(files=files, notes=notes, inputs=read)
