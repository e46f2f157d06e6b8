"""2D classification by multi-reference alignment (MRA), after Cryo-RALib: particles STAR in, class averages out.

Notebook use, the whole stage (what ``cryopipe class2d`` runs)::

    params = Class2DParams(classes=50, box=64, diameter_A=140)
    result = run(params, Class2DInputs(Path("extract/particles.star")), Path("class2d"), StageContext.local("auto"))

or step by step::

    table, stack = load_particles("extract/particles.star", params, get_backend("auto"))
    result = classify(stack, params)                 # Class2DResult: averages, sizes, per-particle alignment
    write_class2d(result, table, "class2d", mirrors=params.mirrors)

The particles are read through the shared particle source (:mod:`cryopipe.particles`: STAR, stacks, node-local
cache, pixel-size and box checks); the preprocessing (downscaling, phase flip, background normalisation) is
this stage's.

Each iteration aligns every particle to every reference over trial shifts and all in-plane angles
(:mod:`cryopipe.class2d.align`), assigns it to the best reference, and replaces the references by the class
averages of the aligned particles (rotation and sub-pixel shift applied in one interpolation), re-centred on
their centre of mass and masked. In the first half of the iterations, empty or tiny classes are reseeded by
splitting the largest class: its worse-fitting particles (score below the class mean of the previous
iteration) seed the tiny class and it keeps its better-fitting ones. This undoes the typical local optimum
of hard-assignment MRA, one class holding two similar views while another view is split in two. The loop
stops when fewer than ``convergence`` of the particles change class, or after ``iterations``. Under MPI
each rank holds and aligns a contiguous share of the particles; class sums are exact (fixed point) and
Allreduce'd, so any number of ranks gives the one-rank result.

Recorded per particle (RELION conventions, see :mod:`cryopipe.class2d.align`): ``rlnClassNumber`` (1 = the
largest class), ``rlnAnglePsi`` and ``rlnOriginXAngst/YAngst`` such that the particle is its class average,
rotated by psi and then translated by -origin (the origin re-centres the particle), ``cpScore`` (NCC) and,
with mirrors, ``cpMirror`` (1: the average is mirrored x -> -x before the rotation).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cryopipe.backend import Backend, get_backend
from cryopipe.cache import StackCache
from cryopipe.class2d.align import Aligner, Alignment
from cryopipe.class2d.averages import ClassSums, class_averages, frc_resolution, shift_images
from cryopipe.class2d.polar import PolarGrid, transform_images
from cryopipe.ctf import CTFParams, ctf_2d, phase_flip
from cryopipe.errors import InputError, require
from cryopipe.fourier import backend_of, fourier_crop, normalise_background, soft_circular_mask
from cryopipe.geometry import centre_of_mass
from cryopipe.io.mrc import read_mrc, write_mrc
from cryopipe.io.star import UNKNOWN_RESOLUTION_A, portable_image_names, write_star, write_table
from cryopipe.parallel import SerialComm
from cryopipe.particles import ctf_rows, open_particles
from cryopipe.progress import Progress
from cryopipe.stage import StageContext, StageResult

log = logging.getLogger(__name__)

CTF_MODES = ("phaseflip", "wiener", "none")
MASK_EDGE_PX = 2.0  # soft edge of the circular mask, working pixels


@dataclass
class Class2DParams:
    """Parameters of 2D classification. Lengths in Angstrom unless marked px; angles in degrees.

    classes : number of classes K. box : working box in px (Fourier-downscaled from the particles' box;
    None: keep). iterations : at most this many. shift_range, shift_step : trial shifts in pixels of the
    input particles (as RELION's --offset_range/--offset_step), a square grid about the box centre.
    angular_sampling : in-plane step (None: about 1 px on the outer ring). diameter_A : the particle's diameter.
    mask_diameter_A : circular mask and alignment disc (None: round(1.1 x diameter_A), else 80% of the box).
    ctf : "phaseflip" (align and average phase-flipped particles), "wiener" (align phase-flipped,
    Wiener-average with CTF weights and 1/wiener_snr), or "none".
    mirrors : also try mirrored particles. convergence : stop when fewer than this fraction of the particles
    changed class. min_class_fraction : in the first half of the iterations, classes smaller than this
    fraction of the mean class size are reseeded by splitting the largest class. seed : of the initial
    random subsets. batch_size : particles per device batch (None: from free memory).
    """

    classes: int
    box: int | None = None
    iterations: int = 10
    shift_range: float = 4.0
    shift_step: float = 1.0
    angular_sampling: float | None = None
    diameter_A: float | None = None
    mask_diameter_A: float | None = None
    ctf: str = "phaseflip"
    mirrors: bool = False
    convergence: float = 0.01
    min_class_fraction: float = 0.5
    wiener_snr: float = 0.1
    seed: int = 0
    batch_size: int | None = None

    def validate(self) -> None:
        require(self.classes >= 1, f"must be >= 1, got {self.classes}", field="--classes")
        require(self.iterations >= 1, f"must be >= 1, got {self.iterations}", field="--iterations")
        require(self.box is None or (self.box >= 8 and self.box % 2 == 0), f"must be even and >= 8, got {self.box}",
                field="--box")
        require(self.ctf in CTF_MODES, f"must be one of {', '.join(CTF_MODES)}, got {self.ctf!r}", field="--ctf")
        require(self.diameter_A is None or self.diameter_A > 0, "must be positive", field="--diameter")
        require(self.mask_diameter_A is None or self.mask_diameter_A > 0, "must be positive", field="--mask-diameter")
        require(0 <= self.convergence < 1, "must lie in [0, 1)", field="--convergence")
        require(self.wiener_snr > 0, "must be positive", field="--wiener-snr")
        require(self.batch_size is None or self.batch_size >= 1, "must be >= 1", field="--batch-size")


@dataclass
class Class2DInputs:
    """The particles STAR (e.g. from cryopipe extract) and, optionally, an MRCS of K initial references (of the
    particles' box or the working box)."""

    particles: Path
    references: Path | None = None


@dataclass
class ParticleStack:
    """One rank's share of the particles, preprocessed on the device: what :func:`classify` aligns (the particles
    as read are a :class:`cryopipe.particles.ParticleSet`).

    images : (n, N, N) float32 device array: downscaled, CTF-corrected (phase-flipped unless ctf="none"),
    background-normalised, not masked. index : (n,) global 0-based particle indices. n_total : particles
    on all ranks. angpix : A/px of ``images``. scale : working px per input px. ctf : per-particle CTF of
    the share (for Wiener averaging), else None.
    """

    images: Any
    index: np.ndarray
    n_total: int
    angpix: float
    scale: float = 1.0
    ctf: CTFParams | None = None

    @property
    def box(self) -> int:
        return int(self.images.shape[-1])


@dataclass
class Class2DResult:
    """Classes ordered by size (class 0 = the largest) and the alignment of every particle (global order).

    averages : (K, N, N) float32, re-centred and masked. sizes : (K,) particles. resolution_A : (K,) FRC of
    half-set averages at 0.143 (999 where unknown). mean_score : (K,) mean NCC (0 for an empty class).
    alignment : per particle, ``ref`` = class, shifts already include the re-centring. angpix : of the
    averages. iterations : run. changed : fraction of particles that changed class, per iteration.
    """

    averages: np.ndarray
    sizes: np.ndarray
    resolution_A: np.ndarray
    mean_score: np.ndarray
    alignment: Alignment
    angpix: float
    iterations: int
    changed: list[float]


def _agree(comm, error: InputError | None) -> None:
    """Raise on every rank the first rank's InputError, if any (keeps ranks out of a deadlock)."""
    errors = [e for e in comm.allgather(None if error is None else (error.message, error.path, error.field)) if e]
    if errors:
        raise InputError(*errors[0])


def mask_radius_px(params: Class2DParams, box: int, angpix: float) -> float:
    """Radius of the circular mask in working px (``box`` px at ``angpix`` A/px): ``mask_diameter_A``, else
    round(1.1 x ``diameter_A``) A, else 80% of the box; an InputError naming the flag it came from when it leaves
    no background."""
    if params.mask_diameter_A is not None:
        diameter, flag = params.mask_diameter_A, "--mask-diameter"
    elif params.diameter_A is not None:
        diameter, flag = float(round(1.1 * params.diameter_A)), "--diameter"
    else:
        diameter, flag = 0.8 * box * angpix, "--mask-diameter"
    radius = 0.5 * diameter / angpix
    require(radius < 0.5 * box - 1, f"mask diameter {diameter:.0f} A does not fit the box ({box} px at "
            f"{angpix:.3f} A/px = {box * angpix:.0f} A)" + (" (1.1 x --diameter)" if flag == "--diameter" else ""),
            field=flag)
    return radius


def preprocess(raw, ctf: CTFParams | None, box: int, angpix: float, radius_px: float):
    """Raw particles (B, N0, N0) on the device -> (B, box, box) float32: Fourier-downscaled, phase-flipped by
    their CTF at the working pixel size ``angpix`` (skipped when ``ctf`` is None), normalised so that the
    pixels beyond ``radius_px`` have mean 0 and s.d. 1."""
    bk = backend_of(raw)
    x = raw.astype(bk.xp.float32, copy=False)
    if x.shape[-1] != box:
        x = fourier_crop(x, box)
    if ctf is not None:
        x = bk.fft.irfft2(phase_flip(bk.fft.rfft2(x), ctf_2d(ctf, box, angpix, bk)), s=(box, box))
    return normalise_background(x.astype(bk.xp.float32, copy=False), radius_px)


def load_particles(star: str | os.PathLike, params: Class2DParams, bk: Backend | None = None,
                   comm=None, cache: StackCache | None = None) -> tuple[pd.DataFrame, ParticleStack]:
    """Read the particles STAR (:func:`cryopipe.particles.open_particles`, which checks it and its stacks), and
    load and preprocess this rank's share onto the device.

    ``cache``: read the rank's stacks from their node-local copies where there are some, and stage the others
    (:mod:`cryopipe.cache`).

    Returns the whole table (every rank reads it; rlnImageName as the input gives it where it resolves from the
    working directory, as RELION resolves it, else rewritten so that it does:
    :func:`cryopipe.io.star.portable_image_names`) and the rank's :class:`ParticleStack`. InputErrors: those of
    the particle source (no particles, missing columns or files, particles of different box or pixel sizes, a pixel
    size that differs by more than 1% from a stack's MRC header), fewer particles than classes, a shift range that
    does not fit the box, a working box larger than the particles', a mask that does not fit the working box.
    """
    bk = bk or get_backend("auto")
    comm = comm or SerialComm()
    params.validate()
    particles = open_particles(star, ctf=params.ctf != "none", share=(comm.Get_rank(), comm.Get_size()))
    table, n = particles.table, len(particles)
    require(params.classes <= n, f"{params.classes} classes asked for, but only {n} particles", star, "--classes")
    table["rlnImageName"] = portable_image_names(table["rlnImageName"], star, particles.stacks)
    angpix0, box0 = particles.angpix, particles.box
    box = params.box or box0
    require(box <= box0, f"cannot downscale to {box} px: the particles are {box0} px", field="--box")
    require(params.shift_range < 0.5 * box0, f"shift range {params.shift_range:g} px does not fit half the box "
            f"({box0 // 2} px)", field="--shift-range")
    angpix = angpix0 * box0 / box
    radius = mask_radius_px(params, box, angpix)

    mine = particles.rows
    ctf = particles.ctf_subset(mine)
    images = bk.xp.empty((len(mine), box, box), dtype=bk.xp.float32)
    error = None
    try:
        raw = particles.read_images(cache)  # (len(mine), box0, box0) float32
        step = max(1, bk.batch_size(box0 * box0 * 4 * 12, fraction=0.25, cap=4096))
        for b0 in range(0, len(mine), step):
            sl = slice(b0, min(b0 + step, len(mine)))
            images[sl] = preprocess(bk.asarray(raw[sl]), None if ctf is None else ctf_rows(ctf, sl), box,
                                    angpix, radius)
    except InputError as exc:
        error = exc
    _agree(comm, error)
    log.info("%d particles (%d on this rank) of %d px at %.3f A/px, working box %d px at %.3f A/px", n, len(mine),
             box0, angpix0, box, angpix)
    return table, ParticleStack(images, mine, n, angpix, box / box0, ctf if params.ctf == "wiener" else None)


def load_references(path: str | os.PathLike, params: Class2DParams, particle_box: int, box: int) -> np.ndarray:
    """Initial references (K, box, box) float32 from an MRCS of K images of the particles' or the working box."""
    refs, _ = read_mrc(path, require_square=True)
    refs = refs.reshape((-1,) + refs.shape[-2:])
    require(len(refs) == params.classes, f"holds {len(refs)} references, but --classes is {params.classes}", path,
            "--references")
    n = refs.shape[-1]
    require(n in (box, particle_box), f"references are {n} px; expected {particle_box} (particles) or {box}", path,
            "nx")
    return np.asarray(fourier_crop(refs, box) if n != box else refs, dtype=np.float32)


def _initial_sums(stack: ParticleStack, params: Class2DParams, mask, bk: Backend, comm) -> ClassSums:
    """Sums of K random subsets (seeded; the same on any number of ranks) of the masked, unaligned particles."""
    position = np.empty(stack.n_total, dtype=np.int64)
    position[np.random.default_rng(params.seed).permutation(stack.n_total)] = np.arange(stack.n_total)
    subset = position[stack.index] % params.classes
    sums = ClassSums(params.classes, stack.box, bk)
    for b0 in range(0, len(stack.index), 1024):
        sl = slice(b0, b0 + 1024)
        sums.add(stack.images[sl] * mask, subset[sl], stack.index[sl] % 2, False, np.zeros(len(subset[sl])))
    sums.allreduce(comm)
    return sums


def _reseed(averages: np.ndarray, split: np.ndarray, sizes: np.ndarray, min_size: int) -> list[tuple[int, int]]:
    """Split the largest class for each class smaller than ``min_size`` (smallest first): the small class gets
    the average of the largest class's low-score particles, the largest keeps its high-score ones.

    averages (K, N, N) and split (K, 2, N, N) (high, low) are edited in place, and so is ``sizes`` (K,).
    Returns the (reseeded, split) class pairs.
    """
    pairs = []
    for small in np.argsort(sizes, kind="stable"):
        large = int(np.argmax(sizes))
        if sizes[small] >= min_size or sizes[large] < 2 * max(min_size, 1):
            break
        averages[small], averages[large] = split[large, 1], split[large, 0]
        split[small] = split[large]
        sizes[small] = sizes[large] // 2
        sizes[large] -= sizes[small]
        pairs.append((int(small), large))
    return pairs


def _recentred_shifts(al: Alignment, centre: np.ndarray) -> np.ndarray:
    """Particle shifts after moving each class average by -centre[class]: s + A(psi) F centre (px)."""
    c = centre[al.ref]
    cx = np.where(al.mirror, -c[:, 0], c[:, 0])
    psi = np.deg2rad(al.psi)
    return al.shift + np.stack([np.cos(psi) * cx + np.sin(psi) * c[:, 1], -np.sin(psi) * cx + np.cos(psi) * c[:, 1]],
                               axis=1)


def classify(stack: ParticleStack, params: Class2DParams, bk: Backend | None = None, comm=None,
             references: np.ndarray | None = None, progress: bool = True) -> Class2DResult:
    """Run MRA 2D classification on preprocessed particles (see the module docstring).

    stack : this rank's particles (:func:`load_particles`, or made by hand: a benchmark or notebook).
    references : (K, N, N) initial references (None: averages of K random subsets).
    progress : log a line per iteration on rank 0 (``iteration 3/10: ..., 2.1 s, about 15 s left``).
    Returns the same :class:`Class2DResult` on every rank.
    """
    bk = bk or get_backend("auto")
    comm = comm or SerialComm()
    xp = bk.xp
    params.validate()
    k, n = params.classes, stack.box
    radius = mask_radius_px(params, n, stack.angpix)
    mask_host = soft_circular_mask(n, radius - MASK_EDGE_PX, MASK_EDGE_PX, dtype=np.float64)
    mask = bk.asarray(mask_host, dtype=xp.float32)
    grid = PolarGrid.make(min(radius, n // 2 - 1), params.angular_sampling)
    aligner = Aligner(grid, n, params.shift_range * stack.scale, params.shift_step * stack.scale, bk, params.mirrors)
    wiener = params.ctf == "wiener"
    require(not wiener or stack.ctf is not None, "Wiener averaging needs the particles' CTF", field="--ctf")
    per_particle = aligner.bytes_per_particle(k) + n * n * 4 * (16 if wiener else 8)
    batch = params.batch_size or bk.batch_size(per_particle, fraction=0.4, cap=8192 if bk.is_gpu else 256)
    min_size = int(np.ceil(params.min_class_fraction * stack.n_total / k))
    log.info("MRA: %d classes, polar grid %d rings x %d angles (%.2f deg), %d shifts%s, batches of %d, %s", k,
             grid.n_rings, grid.n_angles, grid.step_deg, aligner.n_shifts, " x 2 mirrors" if params.mirrors else "",
             batch, bk.describe())

    if references is None:
        averages = class_averages(_initial_sums(stack, params, mask, bk, comm))[0]
    else:
        averages = np.asarray(references, dtype=np.float64)
    refs = bk.asarray(averages * mask_host, dtype=xp.float32)
    previous = np.full(len(stack.index), -1)
    halves_id = stack.index % 2
    low_below = np.full(k, np.inf)  # a particle is "low" when its score is below this value of its class
    changed: list[float] = []
    lines = Progress(params.iterations, log, "iteration", comm=comm, enabled=progress)
    for it in range(params.iterations):
        refs_ft = aligner.references(refs)
        sums = ClassSums(k, n, bk, with_ctf=wiener)
        parts = []
        for b0 in range(0, len(stack.index), batch):
            sl = slice(b0, min(b0 + batch, len(stack.index)))
            images = stack.images[sl]
            al = aligner.align(images * mask, refs_ft)
            parts.append(al)
            low = al.score < low_below[al.ref]
            if wiener:
                ctf = ctf_rows(stack.ctf, sl)
                num = bk.fft.irfft2(bk.fft.rfft2(images) * xp.abs(ctf_2d(ctf, n, stack.angpix, bk)), s=(n, n))
                ctf2 = bk.fft.fftshift(ctf_2d(ctf, n, stack.angpix, bk, half=False) ** 2, axes=(-2, -1))
                sums.add(transform_images(num.astype(xp.float32), al.psi, al.shift, al.mirror), al.ref,
                         halves_id[sl], low, al.score,
                         transform_images(ctf2, al.psi, np.zeros_like(al.shift), al.mirror))
            else:
                sums.add(transform_images(images, al.psi, al.shift, al.mirror), al.ref, halves_id[sl], low, al.score)
        local = Alignment.concat(parts) if parts else Alignment.empty()
        sums.allreduce(comm)
        changed.append(comm.allreduce(int((local.ref != previous).sum())) / stack.n_total)
        previous = local.ref
        averages, halves, split = class_averages(sums, params.wiener_snr if wiener else None)
        sizes = sums.sizes()
        low_below = np.nan_to_num(sums.mean_scores(), nan=np.inf)
        centre = centre_of_mass(averages, mask_host, 2)
        averages, halves, split = (shift_images(a, -c) for a, c in ((averages, centre), (halves, centre[:, None]),
                                                                     (split, centre[:, None])))
        done = it == params.iterations - 1 or (it > 0 and changed[-1] < params.convergence)
        if it < params.iterations // 2:  # reseed in the first half only, then let the classes settle
            pairs = _reseed(averages, split, sizes.copy(), min_size)
            if pairs:
                log.info("iteration %d: reseeded classes %s", it + 1, ", ".join(f"{a + 1} from {b + 1}"
                                                                               for a, b in pairs))
                done = False
        lines.step("%.1f%% changed class%s, class sizes %d..%d, mean score %.4f", 100 * changed[-1],
                   " (converged)" if done and it < params.iterations - 1 else "", sizes.min(), sizes.max(),
                   float(np.nanmean(sums.mean_scores())), last=done)
        if done:
            break
        refs = bk.asarray(averages * mask_host, dtype=xp.float32)

    local.shift = _recentred_shifts(local, centre)
    alignment = Alignment.concat(comm.allgather(local))
    order = np.argsort(-sizes, kind="stable")
    alignment.ref = np.argsort(order)[alignment.ref]
    resolution = np.minimum(frc_resolution(halves, mask_host, stack.angpix), UNKNOWN_RESOLUTION_A)
    return Class2DResult(
        averages=(averages * mask_host)[order].astype(np.float32), sizes=sizes[order],
        resolution_A=resolution[order], mean_score=np.nan_to_num(sums.mean_scores()[order]),
        alignment=alignment, angpix=stack.angpix, iterations=len(changed), changed=changed,
    )


def run(params: Class2DParams, inputs: Class2DInputs, out: Path, ctx: StageContext) -> StageResult:
    """The stage: classify ``inputs.particles`` (all ranks of ``ctx.comm``, on ``ctx.backend``; stacks through
    ``ctx.cache()``) and write, on rank 0, ``out``/class_averages.mrcs, particles.star, classes.star and the figures
    (:func:`write_class2d`; image names point into ``ctx.final(out)``). Notes: particles, classes, iterations,
    changed_per_iteration, class_sizes, working_box (px), working_angpix (A/px)."""
    bk = ctx.backend or get_backend("auto")
    comm = ctx.comm
    with ctx.cache() as cache:  # copies fill while the classification runs
        table, stack = load_particles(inputs.particles, params, bk, comm, cache)
        refs = None
        if inputs.references:
            refs = load_references(inputs.references, params, int(round(stack.box / stack.scale)), stack.box)
        result = classify(stack, params, bk, comm, refs)
    files = write_class2d(result, table, out, ctx.final(out), params.mirrors) if comm.Get_rank() == 0 else []
    return StageResult(files=files, notes={
        "particles": len(table), "classes": params.classes, "iterations": result.iterations,
        "changed_per_iteration": [round(c, 5) for c in result.changed], "class_sizes": result.sizes.tolist(),
        "working_box": stack.box, "working_angpix": stack.angpix})


def write_class2d(result: Class2DResult, table: pd.DataFrame, out: str | os.PathLike,
                  names_root: str | os.PathLike | None = None, mirrors: bool = False) -> list[Path]:
    """Write ``out``/class_averages.mrcs, particles.star, classes.star and the report figures; returns them.

    ``names_root`` is the folder that paths written into STAR files refer to (default ``out``).
    """
    out = Path(out)
    root = Path(names_root) if names_root is not None else out
    al, a = result.alignment, result.angpix
    write_mrc(out / "class_averages.mrcs", result.averages, a, stack=True)
    particles = table.assign(rlnClassNumber=al.ref + 1, rlnAnglePsi=al.psi, rlnOriginXAngst=-al.shift[:, 0] * a,
                             rlnOriginYAngst=-al.shift[:, 1] * a, cpScore=al.score)
    if mirrors:
        particles["cpMirror"] = al.mirror.astype(int)
    write_table(out / "particles.star", particles)
    k = len(result.sizes)
    classes = pd.DataFrame({
        "rlnReferenceImage": [f"{i + 1:06d}@{root / 'class_averages.mrcs'}" for i in range(k)],
        "rlnClassNumber": np.arange(1, k + 1),
        "rlnClassDistribution": result.sizes / max(1, result.sizes.sum()),
        "rlnEstimatedResolution": result.resolution_A,
        "cpClassSize": result.sizes,
        "cpMeanScore": result.mean_score,
    })
    write_star(out / "classes.star", {"model_classes": classes})
    return [out / "class_averages.mrcs", out / "particles.star", out / "classes.star", *_figures(result, out)]


def _figures(result: Class2DResult, out: Path) -> list[Path]:
    """class_averages.png (gallery, largest class first) and class2d_histograms.png (shifts, class sizes)."""
    import matplotlib.pyplot as plt

    from cryopipe.plots import save_figure

    k = len(result.sizes)
    cols = min(k, 10)
    rows = int(np.ceil(k / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(1.3 * cols, 1.5 * rows), squeeze=False)
    for i, ax in enumerate(axes.ravel()):
        ax.set_axis_off()
        if i < k:
            ax.imshow(result.averages[i], cmap="gray")
            res = result.resolution_A[i]
            ax.set_title(f"{i + 1}: {result.sizes[i]}" + (f"\n{res:.0f} A" if res < UNKNOWN_RESOLUTION_A else ""),
                         fontsize=7)
    save_figure(fig, out / "class_averages.png")

    origin = -result.alignment.shift * result.angpix
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    for ax, values, label in zip(axes[:2], origin.T, ("rlnOriginXAngst", "rlnOriginYAngst"), strict=True):
        ax.hist(values, bins=31, color="tab:blue")
        ax.set_xlabel(f"{label} (A)")
        ax.set_ylabel("particles")
    axes[2].bar(np.arange(1, k + 1), result.sizes, color="tab:orange")
    axes[2].set_xlabel("class")
    axes[2].set_ylabel("particles")
    fig.suptitle(f"2D classification: {int(result.sizes.sum())} particles, {k} classes, "
                 f"{result.iterations} iterations")
    save_figure(fig, out / "class2d_histograms.png")
    return [out / "class_averages.png", out / "class2d_histograms.png"]
