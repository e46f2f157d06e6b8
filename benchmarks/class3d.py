"""Benchmark of one 3D-classification iteration (E-step + M-step), after RELION's EMPIAR-10028 workload.

Workload (default, for the GPU): K=6 classes, HEALPix order 2 (fine pass order 3), offset range 5 px step 2,
synthetic particles of 360 px at 1.34 A/px projected from a ribosome-sized blob map (random Gaussian blobs in a
240 A sphere), CTF and white noise (SNR 0.05), E-step limited to 10 A. ``--quick``: a small CPU case.

Prints milliseconds per particle-iteration and the floor: the FLOPs of the E-step matrix products (coarse cross
term and CTF^2 term over all classes x orientations x translations, fine-pass products over the significant
samples actually found) at the device's measured float32 matrix-product rate.
Anchor: RELION 5.0, one A10G: 4.5 ms per particle-iteration; target on one H100: <= 0.45 ms.

    python benchmarks/class3d.py --device gpu [--particles 5000]
    python benchmarks/class3d.py --quick
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
from common import PhaseTimer, markdown_header, markdown_row, markdown_table

from cryopipe.backend import get_backend
from cryopipe.ctf import CTFParams, ctf_2d
from cryopipe.em3d import mstep
from cryopipe.em3d.estep import EStep, SearchSpace
from cryopipe.em3d.particles import ParticleSet
from cryopipe.em3d.sampling import OrientationGrid, translation_grid
from cryopipe.geometry import random_rotations
from cryopipe.projection import Projector
from cryopipe.simulate.render import render_volume


def blob_map(box: int, angpix: float, radius_A: float, n_blobs: int, seed: int = 0) -> np.ndarray:
    """Random Gaussian blobs (sigma 6 A) uniformly in a sphere: a protein-like density of ribosome size."""
    rng = np.random.default_rng(seed)
    xyz = rng.normal(size=(n_blobs, 3))
    xyz *= (radius_A * rng.uniform(0, 1, n_blobs) ** (1 / 3) / np.linalg.norm(xyz, axis=1))[:, None]
    return render_volume(xyz, np.ones(n_blobs), 6.0, box, angpix)


def synthetic_particles(vol, n: int, angpix: float, snr: float, bk, seed: int = 1) -> ParticleSet:
    """In-memory particles: projections in random orientations x CTF + white noise (spectra on the host)."""
    rng = np.random.default_rng(seed)
    box = vol.shape[0]
    proj = Projector(vol, bk)
    du = rng.uniform(10000, 25000, n)
    ctf = CTFParams(du, du - 200, rng.uniform(0, 180, n), 300.0, 2.7, 0.1)
    spectra = np.empty((n, box, box // 2 + 1), dtype=np.complex64)
    rots = random_rotations(n, rng)
    noise_sd = None
    noise_rng = bk.xp.random.RandomState(seed)  # noise drawn on the device: host RNG dominated the set-up time
    for b0 in range(0, n, 64):
        sl = slice(b0, min(n, b0 + 64))
        sub = CTFParams(**{k: np.asarray(v)[sl] if np.ndim(v) else v for k, v in vars(ctf).items()})
        f = proj.project(rots[sl]) * ctf_2d(sub, box, angpix, bk)
        if noise_sd is None:
            img = bk.fft.irfft2(f, s=(box, box))
            noise_sd = float(bk.asnumpy(img.std())) / np.sqrt(snr)
        noise = bk.fft.rfft2(noise_rng.normal(0, noise_sd, (sl.stop - sl.start, box, box)).astype(bk.xp.float32))
        spectra[sl] = bk.asnumpy(f + noise)
    table = pd.DataFrame({"rlnDefocusU": du, "rlnImagePixelSize": angpix, "rlnOpticsGroup": 1})
    return ParticleSet(table, spectra, ctf, np.zeros(n, np.int64), angpix, box, "synthetic")


def matmul_rate(bk, n: int = 4096, repeats: int = 5) -> float:
    """Measured float32 matrix-product rate of the device, FLOP/s."""
    xp = bk.xp
    a = xp.asarray(np.random.default_rng(0).standard_normal((n, n)), dtype=xp.float32)
    a @ a
    bk.synchronize()
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ a
    bk.synchronize()
    return 2 * n**3 * repeats / (time.perf_counter() - t0)


# the E-step's parts that --profile times: public functions and methods of cryopipe (common.PhaseTimer)
PROFILED = (("cryopipe.em3d.estep:EStep.batch_data", "batch data (particle spectra, CTF)"),
            ("cryopipe.em3d.estep:EStep.coarse_scores", "coarse scores"),
            ("cryopipe.em3d.estep:project_pixels", "projections (coarse and fine)"),
            ("cryopipe.em3d.estep:local_candidates", "local search: candidate orientations"),
            ("cryopipe.em3d.estep:SliceTable.add", "fine slices: table"),
            ("cryopipe.projection:BackProjector.insert", "back-projection"))


def profile_sections(bk) -> PhaseTimer:
    """Time the E-step's parts (:data:`PROFILED`), the device synchronised around each call, inclusive of nested
    parts; ``.seconds()`` gives {part: seconds}."""
    timer = PhaseTimer(bk.synchronize, exclusive=False)
    for target, label in PROFILED:
        timer.time_public(target, label)
    return timer


def iteration(estep: EStep, indices, box: int, bk):
    """One E-step over ``indices`` and the M-step reconstructions; returns (result, E-step s, M-step s)."""
    bk.synchronize()
    t0 = time.perf_counter()
    res = estep.run(indices, np.zeros((len(estep.p), 2)))
    bk.synchronize()
    t1 = time.perf_counter()
    for half1, half2 in res.backprojectors:
        snr = mstep.ssnr_from_fsc(mstep.half_fsc(half1, half2, bk, estep.r_max))
        half1.add(half2)
        mstep.reconstruct(half1, snr, 4.0, box, bk)
    bk.synchronize()
    return res, t1 - t0, time.perf_counter() - t1


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "gpu"])
    p.add_argument("--quick", action="store_true", help="small CPU case: 96 px at 5 A/px, 200 particles, K=2")
    p.add_argument("--particles", type=int, default=5000)
    p.add_argument("--classes", type=int, default=6)
    p.add_argument("--iterations", type=int, default=2, help="timed iterations, each from the same maps; the first "
                   "also pays CuPy's compilation of kernels that the warm-up did not reach (once per installation: "
                   "CuPy caches them on disk), so the last is the steady state")
    p.add_argument("--profile", action="store_true", help="also print where the E-step time goes (synchronises "
                   "the device around each stage, so the total is a little slower)")
    args = p.parse_args()
    bk = get_backend("cpu" if args.quick else args.device)
    if args.quick:
        box, angpix, n, k, radius, blobs = 96, 5.0, 200, 2, 200.0, 600
    else:
        box, angpix, n, k, radius, blobs = 360, 1.34, args.particles, args.classes, 120.0, 3000
    limit_A = 10.0 if not args.quick else 20.0
    vol = blob_map(box, angpix, radius, blobs)
    t0 = time.perf_counter()
    particles = synthetic_particles(vol, n, angpix, 0.05, bk)
    t_sim = time.perf_counter() - t0
    r_max = int(round(box * angpix / limit_A))
    maps = np.stack([vol * (1 + 0.01 * i) for i in range(k)]).astype(np.float32)
    sigma2 = np.full((1, box // 2 + 1), float(np.mean(np.abs(particles.spectra[:50]) ** 2)) / 2)
    search = SearchSpace(OrientationGrid(2), translation_grid(5, 2), 2.0, particle_diameter_A=2 * radius + 20)
    rate = matmul_rate(bk)
    log_prior = np.log(np.full(k, 1 / k))
    # warm-up on a few particles, untimed: CuPy compiles its kernels at first use (tens of seconds on a fresh
    # machine), a one-off cost that is not per particle
    iteration(EStep(particles, maps, log_prior, sigma2, 2.0, r_max, search, bk), np.arange(min(n, 300)), box, bk)
    sections = profile_sections(bk) if args.profile else None
    print(markdown_header(["workload", "device", "particles", "iteration", "E-step ms/ptcl", "M-step ms/ptcl",
                           "total ms/ptcl-iter", "floor ms", "ratio", "matmul TFLOP/s"]))
    for it in range(1, args.iterations + 1):
        if sections is not None:
            sections.clear()  # the profile is of the last iteration
        bk.synchronize()
        t0 = time.perf_counter()
        estep = EStep(particles, maps, log_prior, sigma2, 2.0, r_max, search, bk)
        res, t_e, t_m = iteration(estep, np.arange(n), box, bk)
        t_e += time.perf_counter() - t0 - t_e - t_m  # E-step time includes its set-up (projections of the classes)
        n_pix, n_t, q = estep.pix.n_pix, len(search.translations), k * search.grid.size
        nc = estep.n_coarse
        coarse_flops = n * (2 * n_t * 2 * nc * q + 2 * nc * q)
        fine_flops = float(res.n_significant.sum()) * 32 * (2 * 2 * n_pix + 2 * n_pix)  # cross + CTF^2 per sample
        floor_ms = (coarse_flops + fine_flops) / rate / n * 1e3
        total_ms = (t_e + t_m) / n * 1e3
        workload = (f"K={k}, order 2, offsets 5/2, {box} px @ {angpix} A/px, E-step {limit_A:.0f} A (r_max {r_max} "
                    f"px, {n_pix} pixels; coarse pass r {estep.r_coarse} px, {nc} pixels), median significant "
                    f"{np.median(res.n_significant):.0f}")
        print(markdown_row([workload, bk.describe(), n, it, f"{t_e / n * 1e3:.3f}", f"{t_m / n * 1e3:.3f}",
                            f"{total_ms:.3f}", f"{floor_ms:.4f}", f"{total_ms / floor_ms:.1f}", f"{rate / 1e12:.2f}"]))
    print(f"(particle simulation {t_sim:.1f} s, not timed; RELION 5.0 on one A10G: 4.5 ms; target on H100: 0.45 ms)")
    if sections is not None:
        print("\n" + markdown_table(["E-step stage, last iteration (inclusive of nested stages)", "s", "ms/ptcl"],
                                    [[name, f"{sec:.2f}", f"{sec / n * 1e3:.3f}"]
                                     for name, sec in sorted(sections.seconds().items(), key=lambda kv: -kv[1])]))


if __name__ == "__main__":
    main()
