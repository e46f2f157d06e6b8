"""Benchmark of ``cryopipe initial-model``: wall time from a particle STAR to the maps, and their FSC to the truth.

Workload (default, for the GPU): 10,000 particles of 128 px at 2 A/px, projected from a protein-like blob map
(:func:`class3d.blob_map`, 90 A radius) in random orientations, CTF (defocus 1-2.5 um) and white noise at SNR 0.05,
written as one MRC stack and a RELION STAR file on local disk; the stage's defaults (40 minibatch iterations of 200
particles, resolution 30 -> 15 A, then a pass over all particles, or 10 passes with K > 1), K = 1 and K = 3.
``--small``: a CPU case (1,000 particles of 64 px at 4 A/px, K = 1).

Printed per K: wall time of the stage's build (particles read from disk, checkpoints written), particles per
second, the floor (FLOPs of the E-step's coarse matrix products, cross term and CTF^2 term, over every iteration's
particles x orientations x translations x classes, at the device's measured float32 matrix-product rate), and the
FSC 0.5 / 0.143 resolution of the largest class against the true map after alignment (both hands,
:func:`cryopipe.mapalign.align`). Target (one GPU): <= 60 s for 10,000 particles of 128 px.

    python benchmarks/initial_model.py --device gpu
    python benchmarks/initial_model.py --device gpu --classes 1 --relion /path/to/relion_refine

``--relion``: also run RELION's InitialModel job on the same particles, as its GUI writes the command (``relion_refine
--grad --denovo_3dref``, 200 VDAM mini-batches, T = 4, --gpu), and align its largest class to the truth the same way.
RELION is built beside the project, never into it.
    python benchmarks/initial_model.py --small
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from class3d import blob_map, matmul_rate, synthetic_particles
from common import banner, markdown_table, run_timed

from cryopipe.backend import get_backend
from cryopipe.em3d.driver import EMInputs
from cryopipe.em3d.estep import FourierPixels, working_box
from cryopipe.em3d.sampling import OrientationGrid, translation_grid
from cryopipe.initmodel.stage import InitialModelParams, build, last_iteration, schedule_resolution, shell_of
from cryopipe.io.mrc import read_mrc, write_mrc
from cryopipe.io.star import read_star, write_star
from cryopipe.mapalign import align
from cryopipe.stage import StageContext


def write_particles(folder: Path, particles, angpix: float) -> Path:
    """The in-memory synthetic particles as a stack (real images) and a RELION particle STAR in ``folder``."""
    box = particles.box
    images = np.fft.irfft2(particles.spectra, s=(box, box)).astype(np.float32)
    write_mrc(folder / "particles.mrcs", np.fft.fftshift(images, axes=(-2, -1)), angpix)
    ctf = particles.ctf
    optics = pd.DataFrame({"rlnOpticsGroup": [1], "rlnOpticsGroupName": ["opticsGroup1"], "rlnVoltage": [300.0],
                           "rlnSphericalAberration": [2.7], "rlnAmplitudeContrast": [0.1],
                           "rlnImagePixelSize": [angpix], "rlnImageSize": [box], "rlnImageDimensionality": [2]})
    n = len(particles.spectra)
    table = pd.DataFrame({"rlnImageName": [f"{k + 1}@particles.mrcs" for k in range(n)], "rlnOpticsGroup": 1,
                          "rlnDefocusU": ctf.defocus_u, "rlnDefocusV": ctf.defocus_v,
                          "rlnDefocusAngle": ctf.defocus_angle})
    write_star(folder / "particles.star", {"optics": optics, "particles": table})
    return folder / "particles.star"


def floor_flops(params: InitialModelParams, n: int, box: int, angpix: float) -> float:
    """FLOPs of the coarse E-step products of a run: per particle and iteration, 4 n_pix (cross term, stacked real
    and imaginary parts, multiply-add) + 2 n_pix (CTF^2 term) per (class, orientation, translation)."""
    orient = OrientationGrid(params.healpix_order).size
    trans = len(translation_grid(params.offset_range, params.offset_step))
    total = 0.0
    for it in range(1, last_iteration(params) + 1):
        r_max = shell_of(box, angpix, schedule_resolution(params, min(it, params.iterations)))
        n_pix = FourierPixels(box, working_box(box, r_max), r_max).n_pix
        k = 1 if it <= params.iterations + (params.classes == 1) else params.classes
        batch = min(params.batch_size, n) if it <= params.iterations else n
        total += batch * k * orient * (4 * n_pix * trans + 2 * n_pix)
    return total


def run_relion(binary: str, star: Path, out: Path, classes: int, diameter: float, threads: int,
               gpu: bool, timeout: float | None = None) -> tuple[float, Path]:
    """RELION's InitialModel job on ``star`` (its GUI's command, 200 VDAM mini-batches; ``gpu``: --gpu 0):
    (wall s, largest class map; None when it did not finish within ``timeout`` s)."""
    out.mkdir()
    cmd = [binary, "--o", str(out / "run"), "--iter", "200", "--grad", "--denovo_3dref", "--i", str(star), "--ctf",
           "--K", str(classes), "--sym", "C1", "--flatten_solvent", "--zero_mask", "--dont_combine_weights_via_disc",
           "--pool", "30", "--pad", "1", "--particle_diameter", f"{diameter:g}", "--oversampling", "1",
           "--healpix_order", "1", "--offset_range", "6", "--offset_step", "2", "--auto_sampling", "--tau2_fudge", "4",
           "--j", str(threads)] + (["--gpu", "0"] if gpu else [])
    wall = run_timed(cmd, star.parent, timeout)
    if wall is None:
        return float(timeout), None
    best, _ = largest_class(out / "run_it200_model.star")
    return wall, out / f"run_it200_class{best + 1:03d}.mrc"


def largest_class(model_star: Path) -> tuple[int, dict]:
    """The 0-based index of a RELION model STAR's most populated class, and the STAR's blocks."""
    blocks = read_star(model_star)
    return int(np.argmax(blocks["model_classes"]["rlnClassDistribution"].to_numpy())), blocks


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "gpu"])
    p.add_argument("--small", action="store_true", help="1,000 particles of 64 px at 4 A/px, K = 1 (for a CPU)")
    p.add_argument("--particles", type=int, help="default 10,000 (small: 1,000)")
    p.add_argument("--classes", type=int, nargs="+", help="K values (default 1 3; small: 1)")
    p.add_argument("--workdir", help="local-disk folder for the stack (default: a temporary folder)")
    p.add_argument("--relion", help="relion_refine of a RELION 5 build: run its InitialModel on the same particles")
    p.add_argument("--relion-threads", type=int, default=min(8, os.cpu_count() or 1), help="its --j (default 8)")
    p.add_argument("--relion-timeout", type=float, help="stop RELION after this many seconds (default: none)")
    args = p.parse_args(argv)
    bk = get_backend(args.device)
    box, angpix = (64, 4.0) if args.small else (128, 2.0)
    n = args.particles or (1000 if args.small else 10000)
    classes = args.classes or ([1] if args.small else [1, 3])
    print(banner("initial-model", bk.describe()))
    truth = blob_map(box, angpix, 90.0, 300).astype(np.float32)
    rate = matmul_rate(bk)
    rows = []
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        folder = Path(tmp)
        t0 = time.perf_counter()
        star = write_particles(folder, synthetic_particles(truth, n, angpix, 0.05, bk), angpix)
        made = time.perf_counter() - t0
        for k in classes:
            params = InitialModelParams(classes=k, particle_diameter=200.0 if not args.small else 220.0)
            t0 = time.perf_counter()
            result = build(params, EMInputs(star), folder / f"k{k}", StageContext.local(args.device))
            bk.synchronize()
            wall = time.perf_counter() - t0
            best = result.model.maps[int(np.argmax(result.model.pdf_class))]
            fit = align(best, truth, angpix)
            floor = floor_flops(result.params, n, box, angpix) / rate
            rows.append([f"cryopipe, {n} x {box}^2 @ {angpix:g} A/px, SNR 0.05, K = {k}", bk.describe(),
                         f"{wall:.1f}", f"{n / wall:.0f}", f"{floor:.2f}", f"{wall / floor:.1f}",
                         f"{fit.resolution_05_A:.1f} / {fit.resolution_0143_A:.1f} (hand {fit.hand:+d})"])
            if args.relion:
                wall, path = run_relion(args.relion, star, folder / f"relion_k{k}", k, params.particle_diameter,
                                        args.relion_threads, bk.is_gpu, args.relion_timeout)
                fsc_cell = "did not finish"
                if path is not None:
                    fit = align(read_mrc(path)[0], truth, angpix)
                    fsc_cell = f"{fit.resolution_05_A:.1f} / {fit.resolution_0143_A:.1f} (hand {fit.hand:+d})"
                rows.append([f"RELION InitialModel (200 VDAM mini-batches, --j {args.relion_threads}), same particles, "
                             f"K = {k}", bk.describe(), f"{wall:.1f}" + (" (stopped)" if path is None else ""),
                             f"{n / wall:.0f}", "", "", fsc_cell])
    print(markdown_table(["workload", "device", "wall s", "particles / s", "floor s (coarse products)",
                          "ratio", "FSC 0.5 / 0.143 vs truth, A"], rows))
    print(f"Particles simulated and written in {made:.1f} s; float32 matrix-product rate {rate / 1e12:.1f} TFLOP/s. "
          "Target (one GPU): <= 60 s for 10,000 particles of 128 px.")


if __name__ == "__main__":
    main()
