"""cryopipe class3d beside RELION's 3D classification (``relion_refine``) on the same particles and device.

Workload (default, for the GPU): the class3d benchmark's particles (benchmarks/class3d.py: a ribosome-sized blob
map, 360 px at 1.34 A/px, random orientations, CTF, white noise at SNR 0.05), 5,000 of them written as one MRC stack
and a RELION particle STAR on local disk; the true map low-passed to 40 A as the one reference; K = 6, HEALPix
order 2, offsets 5 px in steps of 2, first limit 40 A, T = 4, 5 iterations, the same mask diameter. Both programs
run as a user runs them, from the STAR file to the maps (reading the particles, every iteration, the files
written): cryopipe's stage in this process, RELION's command as its GUI writes a Class3D job
(``--pad 2 --pool 30 --dont_combine_weights_via_disc --flatten_solvent --zero_mask --norm --scale``, ``--gpu``
and ``--j``). RELION is built beside the project, never into it.

Printed: wall time, ms per particle-iteration (wall / particles / iterations), the E-step limit each program
reached in its last iteration, and FSC 0.5 / 0.143 of its most populated class against the true map (all classes
start from the same reference, so no alignment is needed).

    python benchmarks/vs_relion.py --device gpu --relion /path/to/relion_refine [--particles 5000]
    python benchmarks/vs_relion.py --quick --relion /path/to/relion_refine     # CPU: 96 px, 300 particles
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from class3d import blob_map, synthetic_particles
from common import banner, markdown_table, run_timed
from initial_model import largest_class, write_particles

from cryopipe.backend import get_backend
from cryopipe.class3d import Class3DParams, EMInputs, classify
from cryopipe.em3d.synthetic import write_reference
from cryopipe.fourier import fsc, resolution_at
from cryopipe.io.mrc import read_mrc
from cryopipe.stage import StageContext


def run_relion(binary: str, star: Path, reference: Path, out: Path, params: Class3DParams, threads: int,
               gpu: bool, timeout: float | None = None) -> tuple[float, np.ndarray, float]:
    """RELION's Class3D job on ``star``: (wall s, most populated class map, its last E-step limit in A: box x
    angpix / half its current image size); the map is None when it did not finish within ``timeout`` s."""
    out.mkdir()
    cmd = [binary, "--o", str(out / "run"), "--i", str(star), "--ref", str(reference), "--ini_high",
           f"{params.ini_high:g}", "--K", str(params.classes), "--iter", str(params.iterations), "--tau2_fudge",
           f"{params.tau2_fudge:g}", "--particle_diameter", f"{params.particle_diameter:g}", "--ctf", "--sym", "C1",
           "--healpix_order", str(params.healpix_order), "--offset_range", f"{params.offset_range:g}",
           "--offset_step", f"{params.offset_step:g}", "--oversampling", "1", "--flatten_solvent", "--zero_mask",
           "--norm", "--scale", "--pad", "2", "--pool", "30", "--dont_combine_weights_via_disc",
           "--random_seed", "0", "--j", str(threads)] + (["--gpu", "0"] if gpu else [])
    wall = run_timed(cmd, star.parent, timeout)
    if wall is None:
        return float(timeout), None, float("nan")
    best, blocks = largest_class(out / f"run_it{params.iterations:03d}_model.star")
    size = float(blocks["model_general"]["rlnCurrentImageSize"].iloc[0])  # the E-step's Fourier window, px
    vol, angpix = read_mrc(out / f"run_it{params.iterations:03d}_class{best + 1:03d}.mrc")
    return wall, vol, vol.shape[0] * angpix / (size / 2)


def resolutions(vol: np.ndarray, truth: np.ndarray, angpix: float) -> str:
    curve = fsc(vol, truth)
    box = truth.shape[0]
    return f"{resolution_at(curve, box, angpix, 0.5):.1f} / {resolution_at(curve, box, angpix, 0.143):.1f}"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "gpu"])
    p.add_argument("--quick", action="store_true", help="small CPU case: 96 px at 5 A/px, 300 particles, K = 2")
    p.add_argument("--particles", type=int, help="default 5,000 (quick: 300)")
    p.add_argument("--iterations", type=int, help="default 5 (quick: 3)")
    p.add_argument("--workdir", help="local-disk folder for the stack (default: a temporary folder)")
    p.add_argument("--relion", required=True, help="relion_refine of a RELION 5 build")
    p.add_argument("--relion-threads", type=int, default=min(8, os.cpu_count() or 1), help="its --j (default 8)")
    p.add_argument("--relion-timeout", type=float, help="stop RELION after this many seconds (default: none)")
    args = p.parse_args(argv)
    bk = get_backend("cpu" if args.quick else args.device)
    if args.quick:
        box, angpix, n, k, radius, blobs, its = 96, 5.0, 300, 2, 200.0, 600, 3
    else:
        box, angpix, n, k, radius, blobs, its = 360, 1.34, 5000, 6, 120.0, 3000, 5
    n, its = args.particles or n, args.iterations or its
    print(banner("vs-relion (class3d)", bk.describe()))
    truth = blob_map(box, angpix, radius, blobs).astype(np.float32)
    params = Class3DParams(classes=k, iterations=its, healpix_order=2, offset_range=5.0, offset_step=2.0,
                           ini_high=40.0, tau2_fudge=4.0, particle_diameter=2 * radius + 20)
    rows = []
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        folder = Path(tmp)
        t0 = time.perf_counter()
        star = write_particles(folder, synthetic_particles(truth, n, angpix, 0.05, bk), angpix)
        reference = write_reference(truth, angpix, params.ini_high, folder / "reference.mrc")
        made = time.perf_counter() - t0
        workload = (f"{n} x {box}^2 @ {angpix:g} A/px, SNR 0.05, K = {k}, order 2, offsets 5/2 px, "
                    f"{its} iterations from 40 A")
        t0 = time.perf_counter()
        result = classify(params, EMInputs(star, reference), folder / "cryopipe", StageContext.local(bk.name))
        bk.synchronize()
        wall = time.perf_counter() - t0
        model = result.model
        best = model.maps[int(np.argmax(model.pdf_class))]
        rows.append(["cryopipe class3d", workload, bk.describe(), f"{wall:.1f}", f"{wall / n / its * 1e3:.2f}",
                     f"{box * angpix / model.r_max:.1f}", resolutions(best, truth, angpix)])
        wall, vol, limit = run_relion(args.relion, star, reference, folder / "relion", params, args.relion_threads,
                                      bk.is_gpu, args.relion_timeout)
        rows.append([f"RELION relion_refine (--j {args.relion_threads})", workload, bk.describe(),
                     f"{wall:.1f}" + (" (stopped)" if vol is None else ""),
                     f"{wall / n / its * 1e3:.2f}" if vol is not None else "",
                     f"{limit:.1f}", "did not finish" if vol is None else resolutions(vol, truth, angpix)])
    print(markdown_table(["program", "workload", "device", "wall s", "ms / particle-iteration",
                          "last E-step limit, A", "FSC 0.5 / 0.143 of the largest class vs truth, A"], rows))
    print(f"Particles simulated and written in {made:.1f} s (not in either time).")


if __name__ == "__main__":
    main()
