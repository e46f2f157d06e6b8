"""Benchmark of ``cryopipe class2d``: seconds per MRA iteration against the matrix-product floor.

Workload after Cryo-RALib (their Fig. 5a): 105,000 particles of 90 px, 100 references, shifts +-3 px in
1 px steps (49 shifts), alignment radius 36 px, one iteration (align every particle to every reference at
every shift and in-plane angle, then average the aligned particles into new references). The particles are
generated on the device: smooth random references (Gaussian blobs), rotated, shifted and buried in white
noise (SNR 0.1); the iteration starts from the true references, so the class purity after it checks the
result. Floor: the FLOP count of the ring contraction (8 M x particles x shifts x rings x references, complex
multiply-adds) at the device's measured complex64 matrix-product rate (a large square GEMM). Anchors:
Cryo-RALib's GPU MRA is 22-37x faster than EMAN2's CPU MRA on this dataset; target on one H100: <= 60 s per
iteration for the full workload.

    python benchmarks/class2d.py --device gpu             # the full workload: 105,000 particles
    python benchmarks/class2d.py --device cpu             # 10x smaller: 10,500 particles
    python benchmarks/class2d.py --device cpu --quick     # 1,000 particles, 20 references
"""

from __future__ import annotations

import argparse
import logging
import time

import numpy as np
from common import banner, markdown_table, timed

from cryopipe.backend import get_backend
from cryopipe.class2d import Aligner, Class2DParams, ParticleStack, PolarGrid, classify, transform_images

RADIUS_PX = 36.0


def make_workload(bk, n: int, k: int, box: int, snr: float, max_shift: float, seed: int = 0):
    """References (K, N, N) host float32 and particles (n, N, N) float32 on the device, with their classes (n,).

    Particle = shift(rotate(ref, psi), s) + noise, made with :func:`transform_images` (its inverse model).
    """
    xp = bk.xp
    rs = xp.random.RandomState(seed)
    grid = xp.arange(box, dtype=xp.float32) - box // 2
    centres = rs.uniform(-0.6 * RADIUS_PX, 0.6 * RADIUS_PX, (k, 24, 2, 1, 1)).astype(xp.float32)
    sigma = rs.uniform(2.0, 5.0, (k, 24, 1, 1)).astype(xp.float32)
    d2 = (grid[None, None, None, :] - centres[:, :, 0]) ** 2 + (grid[None, None, :, None] - centres[:, :, 1]) ** 2
    refs = xp.exp(-d2 / (2 * sigma**2)).sum(1)
    inside = (grid[None, :] ** 2 + grid[:, None] ** 2) <= RADIUS_PX**2
    noise_sd = float(xp.sqrt(refs[:, inside].var(axis=1).mean() / snr))
    images = xp.empty((n, box, box), dtype=xp.float32)
    classes = rs.randint(0, k, n)
    for b0 in range(0, n, 4096):
        b = min(4096, n - b0)
        psi = rs.uniform(-180.0, 180.0, b)
        s = rs.uniform(-max_shift, max_shift, (b, 2))
        c, si = xp.cos(xp.deg2rad(psi)), xp.sin(xp.deg2rad(psi))
        # shift(rotate(ref, psi), s) = transform_images(ref, -psi, -A(-psi) s), A(-psi) = [[c, -si], [si, c]]
        inv = -xp.stack([c * s[:, 0] - si * s[:, 1], si * s[:, 0] + c * s[:, 1]], axis=1)
        particles = transform_images(refs[classes[b0:b0 + b]], -psi, inv, xp.zeros(b, dtype=bool))
        images[b0:b0 + b] = particles + noise_sd * rs.standard_normal(particles.shape).astype(xp.float32)
    return bk.asnumpy(refs).astype(np.float32), images, bk.asnumpy(classes)


def matmul_rate(bk, size: int, repeat: int = 3) -> float:
    """The device's complex64 matrix-product rate, FLOP/s, on a square GEMM of ``size``."""
    xp = bk.xp
    a = (xp.ones((size, size), dtype=xp.complex64) * (1 + 1j)) / size
    t = timed(lambda: xp.matmul(a, a), bk, repeat, statistic=min)
    return 8.0 * size**3 / t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "gpu"])
    ap.add_argument("--quick", action="store_true", help="1,000 particles and 20 references")
    ap.add_argument("--particles", type=int, help="default 105,000 on a GPU, 10,500 on a CPU, 1,000 quick")
    ap.add_argument("--references", type=int, help="default 100 (quick 20)")
    ap.add_argument("--box", type=int, default=90, help="particle box, px (default 90)")
    ap.add_argument("--shift-range", type=float, default=3.0, help="trial shifts +- px (default 3)")
    ap.add_argument("--shift-step", type=float, default=1.0, help="shift step, px (default 1)")
    ap.add_argument("--mirrors", action="store_true", help="also align mirrored particles")
    ap.add_argument("--snr", type=float, default=0.1, help="particle SNR (default 0.1)")
    ap.add_argument("--batch-size", type=int, help="particles per device batch (default: from free memory)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    bk = get_backend(args.device)
    n = args.particles or (1000 if args.quick else 105_000 if bk.is_gpu else 10_500)
    k = args.references or (20 if args.quick else 100)

    t0 = time.perf_counter()
    refs, images, truth = make_workload(bk, n, k, args.box, args.snr, 0.8 * args.shift_range)
    bk.synchronize()
    t_make = time.perf_counter() - t0
    params = Class2DParams(classes=k, iterations=1, shift_range=args.shift_range, shift_step=args.shift_step,
                           mask_diameter_A=2 * RADIUS_PX, ctf="none", mirrors=args.mirrors,
                           batch_size=args.batch_size)
    stack = ParticleStack(images, np.arange(n), n, angpix=1.0)
    w = min(n, 512 if bk.is_gpu else 32)
    warm = ParticleStack(images[:w], np.arange(w), w, angpix=1.0)
    classify(warm, params, bk, references=refs, progress=False)  # FFT plans, kernels, memory pool

    result = {}
    t_iter = timed(lambda: result.update(r=classify(stack, params, bk, references=refs, progress=False)), bk)
    assigned = result["r"].alignment.ref
    counts = np.zeros((k, k), dtype=np.int64)
    np.add.at(counts, (assigned, truth), 1)
    purity = counts.max(1).sum() / n

    aligner = Aligner(PolarGrid.make(RADIUS_PX), args.box, args.shift_range, args.shift_step, bk, args.mirrors)
    flops = aligner.flops(n, k)
    rate = matmul_rate(bk, 4096 if bk.is_gpu else 1024)
    floor = flops / rate
    g = aligner.grid
    print("\n" + banner("class2d", bk.describe()))
    print(f"workload: {n} particles of {args.box} px, {k} references, {aligner.n_shifts} shifts "
          f"(+-{args.shift_range:g} px, step {args.shift_step:g})" + (" x 2 mirrors" if args.mirrors else "")
          + f", polar grid {g.n_rings} rings x {g.n_angles} angles, 1 iteration; generated on the device in "
          f"{t_make:.1f} s")
    print(markdown_table(
        ["workload", "device", "s / iteration", "particles / s", "ring contraction (TFLOP)",
         "complex64 GEMM rate (TFLOP/s)", "floor (s)", "ratio", "purity"],
        [[f"{n} x {args.box} px, {k} refs", bk.describe(), f"{t_iter:.2f}", f"{n / t_iter:.0f}", f"{flops / 1e12:.2f}",
          f"{rate / 1e12:.2f}", f"{floor:.3f}", f"{t_iter / floor:.1f}", f"{purity:.3f}"]]))
    anchor = "Anchor: Cryo-RALib (GPU MRA) is 22-37x faster than EMAN2's CPU MRA on this workload."
    if bk.is_gpu and n >= 105_000 and k >= 100:
        anchor += f" Target on one H100: <= 60 s per iteration: {'met' if t_iter <= 60 else 'NOT met'}."
    print(anchor)


if __name__ == "__main__":
    main()
