"""The workloads of ``benchmarks/scaling.py``: per stage, its synthetic inputs, its ``cryopipe`` command line and the
public functions whose time the report breaks out.

Inputs are made with the project's own generators (the ``benchmarks/`` workload functions and
:mod:`cryopipe.simulate`) in a process of their own, so that the driver never holds a GPU::

    python benchmarks/scaling_stages.py --stage class3d --params '{...}' --device gpu --dir DIR --max-ranks 2
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable
from pathlib import Path

from common import benchmark_module

MPI_LABEL, IO_LABEL, PROVENANCE_LABEL = "MPI ", "I/O ", "provenance record (rank 0: sha256 of inputs, outputs)"
OTHER_LABEL = "rest of the command (not instrumented)"

# phases of class3d and refine3d (both run cryopipe.em3d's E-step and M-step), each a public function
EM3D_PHASES = (
    ("cryopipe.em3d.particles:load_particles", "load particles: read + host FFT (own share)"),
    ("cryopipe.em3d.driver:initial_model", "initial model"),
    ("cryopipe.em3d.estep:EStep.run", "E-step (device, own particles)"),
    ("cryopipe.em3d.mstep:reduce_sums", "reduce sums: device <-> host copies"),
    ("cryopipe.em3d.runner:gather_results", "gather per-particle results"),
    ("cryopipe.em3d.mstep:half_fsc", "M-step: half-map FSC"),
    ("cryopipe.parallel:share_round_robin", "M-step: exchange the maps"),
    ("cryopipe.em3d.runner:write_checkpoint", "checkpoint (rank 0)"),
    ("cryopipe.em3d.report:plot_slices", "report figures (rank 0)"),
    ("cryopipe.em3d.report:plot_progress", "report figures (rank 0)"),
    ("cryopipe.em3d.report:plot_fsc_progress", "report figures (rank 0)"),
)


def write_particles(d: Path, images, angpix: float, ctf=None, warm: int = 0) -> None:
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


def projected_particles(d: Path, box: int, angpix: float, radius_A: float, blobs: int, n: int, snr: float,
                        bk, warm: int) -> None:
    """Particles projected from a blob map (class3d benchmark's generators) with CTF and noise, as MRCS + STAR;
    the map as ``d/reference.mrc``."""
    import numpy as np

    from cryopipe.io.mrc import write_mrc

    c3 = benchmark_module("class3d")
    vol = c3.blob_map(box, angpix, radius_A, blobs)
    write_mrc(d / "reference.mrc", vol, angpix)
    ps = c3.synthetic_particles(vol, n, angpix, snr, bk)
    images = np.empty((n, box, box), dtype=np.float32)
    for b0 in range(0, n, 256):  # the generator keeps centred-origin half spectra; the stages read images
        spec = bk.asarray(ps.spectra[b0:b0 + 256])
        images[b0:b0 + 256] = bk.asnumpy(bk.xp.fft.fftshift(bk.fft.irfft2(spec, s=(box, box)), axes=(-2, -1)))
    write_particles(d, images, angpix, ps.ctf, warm)


def prepare_pick(d: Path, p: dict, bk, max_ranks: int) -> None:
    """Micrographs of the pick benchmark (noisy image with dark template copies), ``p['distinct']`` different
    ones hard-linked to ``p['micrographs']`` names, and the templates as an MRCS."""
    import numpy as np

    from cryopipe.io.mrc import write_mrc
    from cryopipe.outdir import link_or_copy

    rng = np.random.default_rng(0)
    templates, image = benchmark_module("pick").workload(rng, p["size"], p["templates"], p["box"],
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
            link_or_copy(sources[i % len(sources)], d / folder / f"mic_{i:05d}.mrc")


def command_pick(d: Path, p: dict, device: str, out: Path, warm: bool) -> list[str]:
    return ["pick", "--micrographs", str(d / ("mics_warm" if warm else "mics") / "mic_*.mrc"),
            "--templates", str(d / "templates.mrcs"), "--diameter", f"{0.8 * p['box']:g}",
            "--angular-step", f"{p['step']:g}", "--lowpass", f"{p['lowpass']:g}", "--preview", "0",
            "--mpi-mode", "micrographs", "--device", device, "--out", str(out)]


def prepare_class2d(d: Path, p: dict, bk, max_ranks: int) -> None:
    """The class2d benchmark's particles (rotated, shifted blob references in noise, SNR 0.1) and their true
    references as the initial references."""
    from cryopipe.io.mrc import write_mrc

    c2 = benchmark_module("class2d")
    refs, images, _ = c2.make_workload(bk, p["particles"], p["references"], p["box"], 0.1, 0.8 * 3.0)
    write_mrc(d / "references.mrcs", refs, 1.0)
    write_particles(d, bk.asnumpy(images), 1.0, warm=min(p["particles"], 256 * max_ranks))


def command_class2d(d: Path, p: dict, device: str, out: Path, warm: bool) -> list[str]:
    return ["class2d", "--particles", str(d / ("warm.star" if warm else "particles.star")),
            "--references", str(d / "references.mrcs"), "--classes", str(p["references"]),
            "--iterations", str(1 if warm else p["iterations"]), "--convergence", "0", "--ctf", "none",
            "--mask-diameter", f"{2 * 36.0:g}", "--shift-range", "3", "--shift-step", "1", "--device", device,
            "--out", str(out)]


def prepare_class3d(d: Path, p: dict, bk, max_ranks: int) -> None:
    """The class3d benchmark's particles: projections of a ribosome-sized blob map with CTF and noise (SNR
    0.05); the map itself is the reference."""
    projected_particles(d, p["box"], p["angpix"], p["radius"], p["blobs"], p["particles"], 0.05, bk,
                        warm=min(p["particles"], 64 * max_ranks))


def command_class3d(d: Path, p: dict, device: str, out: Path, warm: bool) -> list[str]:
    return ["class3d", "--particles", str(d / ("warm.star" if warm else "particles.star")),
            "--reference", str(d / "reference.mrc"), "--classes", str(p["classes"]),
            "--iterations", str(2 if warm else p["iterations"]), "--healpix-order", str(p["order"]),
            "--offset-range", "5", "--offset-step", "2", "--ini-high", f"{p['ini_high']:g}",
            "--diameter", f"{2 * p['radius'] + 20:g}", "--device", device, "--out", str(out)]


def command_refine3d(d: Path, p: dict, device: str, out: Path, warm: bool) -> list[str]:
    return ["refine3d", "--particles", str(d / ("warm.star" if warm else "particles.star")),
            "--reference", str(d / "reference.mrc"), "--max-iterations", str(2 if warm else p["iterations"]),
            "--healpix-order", str(p["order"]), "--offset-range", "5", "--offset-step", "2",
            "--ini-high", f"{p['ini_high']:g}", "--diameter", f"{2 * p['radius'] + 20:g}",
            "--device", device, "--out", str(out)]


def prepare_bioem(d: Path, p: dict, bk, max_ranks: int) -> None:
    """Particles projected from a blob map with CTF and noise; that map (MRC) is the model to score."""
    projected_particles(d, p["box"], p["angpix"], p["radius"], p["blobs"], p["particles"], 0.1, bk,
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
    label) of PUBLIC functions and methods to time on top of MPI, MRC/STAR I/O and the provenance record
    (:meth:`common.PhaseTimer.time_public`; the time of what they do not cover stays with their caller).
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
        (*EM3D_PHASES,
         ("cryopipe.em3d.estep:EStep.__init__", "E-step set-up (class projections)"),
         ("cryopipe.em3d.mstep:reconstruct", "M-step: reconstructions (classes split over ranks)"),
         ("cryopipe.class3d.stage:classify", "class3d loop rest"))),
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
        (*EM3D_PHASES,
         ("cryopipe.em3d.estep:EStep.__init__", "E-step set-up (half-map projections)"),
         ("cryopipe.em3d.mstep:reconstruct", "M-step: reconstructions (split over ranks)"),
         ("cryopipe.em3d.model:write_star_exact", "final outputs: STAR (rank 0)"),
         ("cryopipe.em3d.model:write_particles_exact", "final outputs: STAR (rank 0)"),
         ("cryopipe.refine3d.stage:refine", "refine3d loop rest"))),
}

IO_PHASES = (("cryopipe.io.mrc:read_mrc", IO_LABEL + "read MRC"), ("cryopipe.io.mrc:write_mrc", IO_LABEL + "write MRC"),
             ("cryopipe.io.mrc:read_mrc_header", IO_LABEL + "read MRC header"),
             ("cryopipe.io.star:read_star", IO_LABEL + "read STAR"),
             ("cryopipe.io.star:write_star", IO_LABEL + "write STAR"),
             ("cryopipe.provenance:Recorder.write", PROVENANCE_LABEL))


def stage_params(name: str, preset: str, scale: float) -> dict:
    """The workload parameters of ``name`` at ``preset``, the item counts multiplied by ``scale``."""
    st = STAGES[name]
    p = dict(st.sizes[preset])
    for key in st.scaled:
        p[key] = max(1, int(round(p[key] * scale)))
    return p


def prepare_command(name: str, params: dict, device: str, folder: Path, max_ranks: int) -> list[str]:
    """The command line that writes the inputs of stage ``name`` into ``folder`` (:func:`main`)."""
    return [sys.executable, str(Path(__file__).resolve()), "--stage", name, "--params", json.dumps(params),
            "--device", device, "--dir", str(folder), "--max-ranks", str(max_ranks)]


def main(argv: list[str] | None = None) -> int:
    """Write one stage's inputs (the workload generator's process)."""
    ap = argparse.ArgumentParser(description="Write the inputs of one stage of benchmarks/scaling.py.")
    ap.add_argument("--stage", required=True, choices=list(STAGES))
    ap.add_argument("--params", required=True, help="JSON")
    ap.add_argument("--device", required=True)
    ap.add_argument("--dir", required=True, type=Path)
    ap.add_argument("--max-ranks", type=int, required=True)
    args = ap.parse_args(argv)
    from cryopipe.backend import get_backend

    args.dir.mkdir(parents=True, exist_ok=True)
    STAGES[args.stage].prepare(args.dir, json.loads(args.params), get_backend(args.device), args.max_ranks)
    return 0


if __name__ == "__main__":
    sys.exit(main())
