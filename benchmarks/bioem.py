"""Benchmark of ``cryopipe bioem``'s integration: microseconds per (image x orientation x CTF) grid point.

Workload (the issue's): 224 x 224 px images, 81 x 81 displacements (DISPLACE_CENTER 40 1), 4,608 orientations x
32 CTF points, a few thousand synthetic images; scale it with the flags. Each grid point costs one product of
spectra, one inverse FFT of 224 x 224 and the closed form at 6,561 displacements, reduced by log-sum-exp.
The floor is the batched inverse real FFT alone at the same size, dtype and device, per transform.

    python benchmarks/bioem.py --device gpu                # the full workload (one GPU)
    python benchmarks/bioem.py --quick                     # a few grid points on the CPU
    python benchmarks/bioem.py --device gpu --images 512 --orientations 256

Anchors: BioEM 2.1 takes 109 us per grid point on 2 CPU threads (224 px, 81 x 81 shifts); the paper 9.6 us on a
GTX Titan; a plain CuPy multiply + inverse FFT + max 1.07 us on one H100; target on one H100 <= 0.25 us.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from cryopipe.backend import get_backend
from cryopipe.bioem.compat import displacements
from cryopipe.bioem.integrate import Problem, integrate


def _floor_us(bk, box: int, dtype, batch: int, repeat: int) -> float:
    """Time of one batched inverse real FFT (batch, box, box//2+1) -> (batch, box, box), per transform (us)."""
    rng = np.random.default_rng(1)
    shape = (batch, box, box // 2 + 1)
    z = bk.asarray(rng.standard_normal(shape) + 1j * rng.standard_normal(shape), dtype=dtype)
    bk.fft.irfft2(z, s=(box, box))  # plan
    bk.synchronize()
    t = time.perf_counter()
    for _ in range(repeat):
        bk.fft.irfft2(z, s=(box, box))
    bk.synchronize()
    return (time.perf_counter() - t) / repeat / batch * 1e6


def run(device: str, box: int, max_shift: int, n_orient: int, n_ctf: int, n_images: int, single: bool) -> dict:
    bk = get_backend(device)
    xp = bk.xp
    real, cplx = (xp.float32, xp.complex64) if single else (xp.float64, xp.complex128)
    rng = np.random.default_rng(0)
    h = box // 2 + 1
    images = rng.standard_normal((n_images, box, box))
    spectra = bk.fft.rfft2(bk.asarray(images, dtype=real)).astype(cplx)
    ctf = bk.asarray(rng.uniform(-1, 1, (1, n_ctf, box, h)), dtype=real)
    proj_bank = bk.asarray(rng.standard_normal((64, box, h)) + 1j * rng.standard_normal((64, box, h)), dtype=cplx)

    def project(o0, o1):  # synthetic projections: the per-grid-point cost is measured, not the forward model
        return proj_bank[np.arange(o0, o1) % 64]

    prob = Problem(spectra, images.sum(axis=(1, 2)), (images ** 2).sum(axis=(1, 2)), ctf, np.zeros((1, n_ctf)),
                   displacements(box, max_shift, 1), n_orient, project)
    bk.synchronize()
    t = time.perf_counter()
    integrate(prob, bk)
    bk.synchronize()
    wall = time.perf_counter() - t
    points = n_images * n_orient * n_ctf
    floor = _floor_us(bk, box, cplx, batch=min(256, max(8, points)), repeat=3)
    return {"device": bk.describe(), "points": points, "wall_s": wall, "us_per_point": wall / points * 1e6,
            "floor_us": floor}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="gpu", choices=["cpu", "gpu"])
    ap.add_argument("--quick", action="store_true", help="a few grid points on the CPU")
    ap.add_argument("--box", type=int, default=224)
    ap.add_argument("--max-shift", type=int, default=40, help="displacements +-M px, step 1 (40: 81 x 81)")
    ap.add_argument("--orientations", type=int, default=4608)
    ap.add_argument("--ctf", type=int, default=32)
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--precision", choices=["auto", "single", "double"], default="auto",
                    help="auto: single on the GPU, double on the CPU (as the stage)")
    a = ap.parse_args()
    if a.quick:
        a.device, a.orientations, a.ctf, a.images = "cpu", 4, 4, 8
    single = a.precision == "single" or (a.precision == "auto" and a.device == "gpu")
    r = run(a.device, a.box, a.max_shift, a.orientations, a.ctf, a.images, single)
    n_shift = 2 * a.max_shift + 1
    rows = [("workload", f"{a.box} px, {n_shift}x{n_shift} shifts, {a.orientations} orient x {a.ctf} CTF x "
                         f"{a.images} images = {r['points']:.3g} grid points"),
            ("device", f"{r['device']} ({'float32' if single else 'float64'} FFTs)"),
            ("time", f"{r['wall_s']:.3f} s"),
            ("us per grid point", f"{r['us_per_point']:.3f}"),
            ("floor: batched irfft2 per transform", f"{r['floor_us']:.3f} us"),
            ("ratio to floor", f"{r['us_per_point'] / r['floor_us']:.2f}"),
            ("anchors", "BioEM 2.1 109 us (2 CPU threads); paper 9.6 us (GTX Titan); target <= 0.25 us (H100)")]
    width = max(len(k) for k, _ in rows)
    print("\n".join(f"{k:<{width}}  {v}" for k, v in rows))


if __name__ == "__main__":
    main()
