"""Benchmark of 3D auto-refine iterations (two half E-steps + M-step) at the global and local search stages.

Workload (default, for the GPU): synthetic particles of 360 px at 1.34 A/px projected from a ribosome-sized blob
map (:func:`benchmarks.class3d.blob_map`), CTF and white noise (SNR 0.05), split into two random halves, each
half aligned against its own half-map with the E-step limited to 4 A (r_max = 360 * 1.34 / 4 = 121 px):
* global: HEALPix order 2 (fine pass order 3), offsets 5 px step 2, every orientation;
* local: HEALPix order 4 (fine pass order 5), offsets 1.5 px step 0.5, Gaussian prior of s.d. 3.75 deg around
  each particle's previous orientation (the truth, perturbed by 2 deg).
``--small``: a CPU case finishing in < 1 min (48 px at 5 A/px, 150 particles, 15 A limit, orders 1 and 3).
``--cpu``: the CPU refinement of #23 (64 px at 2.5 A/px, SNR 0.1, 8 A limit; global order 3 with offsets 3/1 px,
local order 4 with offsets 1.5/0.5 px), 600 particles unless ``--particles`` is given.

Prints per stage: seconds per iteration, milliseconds per particle, the floor (FLOPs of the E-step matrix products
at the device's measured float32 matrix-product rate: coarse cross term + CTF^2 term over the orientations x
translations searched, fine-pass products over the significant samples found), the peak device memory of the
iteration (GPU: CuPy pool high-water mark; CPU: process max RSS growth) and RELION's rule of thumb for memory per
rank in the last iteration, 1.1e-8 x (2 x box)^3 GB (about 4 GB at 360 px).

    python benchmarks/refine3d.py --device gpu [--particles 2000] [--profile]
    python benchmarks/refine3d.py --small
    python benchmarks/refine3d.py --cpu [--particles 3000]
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
from class3d import blob_map, matmul_rate, profile_sections, synthetic_particles
from common import git_commit, markdown_header, markdown_row, markdown_table

from cryopipe.backend import get_backend
from cryopipe.em3d import mstep
from cryopipe.em3d.estep import EStep, SearchSpace
from cryopipe.em3d.sampling import OrientationGrid, translation_grid
from cryopipe.geometry import axis_angle_to_matrix, matrix_to_euler


def _peak_reset(bk) -> float:
    if bk.is_gpu:
        pool = bk.xp.get_default_memory_pool()
        pool.free_all_blocks()
        return 0.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # GB (ru_maxrss in kB on Linux)


def _peak_gb(bk, base: float) -> float:
    if bk.is_gpu:
        return bk.xp.get_default_memory_pool().total_bytes() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20 - base


def refine_iteration(particles, half_maps, subset, search, r_max, prior_rot, sigma2, bk):
    """One auto-refine iteration: E-step of each half against its own half-map, half-map FSC, per-half
    reconstructions. Returns (E-step results per half, E-step s, M-step s, E-step objects)."""
    n = len(particles)
    half = subset - 1
    bk.synchronize()
    t0 = time.perf_counter()
    res, esteps = [], []
    for h in range(2):
        est = EStep(particles, half_maps[h : h + 1], np.zeros(1), sigma2, 2.0, r_max, search, bk)
        res.append(est.run(np.flatnonzero(subset == h + 1), np.zeros((n, 2)), prior_rotations=prior_rot, half=half))
        esteps.append(est)
    bk.synchronize()
    t1 = time.perf_counter()
    bp1, bp2 = res[0].backprojectors[0][0], res[1].backprojectors[0][1]
    curve = mstep.half_fsc(bp1, bp2, bk, esteps[0].r_max)
    snr = mstep.ssnr_from_fsc(curve, combined=False)
    for bp in (bp1, bp2):
        mstep.reconstruct(bp, snr, 1.0, particles.box, bk)
    bk.synchronize()
    return res, t1 - t0, time.perf_counter() - t1, esteps


def floor_flops(esteps, res, search, local_candidates) -> float:
    """FLOPs of the E-step matrix products of one iteration (both halves)."""
    total = 0.0
    for est, r in zip(esteps, res, strict=True):
        n = r.n
        n_t, nc, n_pix = len(search.translations), est.n_coarse, est.pix.n_pix
        q = local_candidates if local_candidates else search.grid.size
        total += n * (2 * n_t * 2 * nc * q + 2 * nc * q)  # coarse cross term + CTF^2 term
        total += float(r.n_significant.sum()) * 32 * (2 * 2 * n_pix + 2 * n_pix)  # fine: 4 x 8 samples each
    return total


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "gpu"])
    p.add_argument("--small", action="store_true", help="small CPU case (< 1 min)")
    p.add_argument("--cpu", action="store_true", help="the CPU refinement case of 64 px particles")
    p.add_argument("--particles", type=int, help="number of particles (default 2000; --cpu 600)")
    p.add_argument("--stages", default="global,local", help="comma-separated: global, local")
    p.add_argument("--profile", action="store_true", help="also print where each stage's E-step time goes "
                   "(synchronises the device around each part, so the totals are a little slower)")
    args = p.parse_args()
    bk = get_backend("cpu" if args.small or args.cpu else args.device)
    snr = 0.05
    if args.small:
        box, angpix, n, radius, blobs, limit_A = 48, 5.0, 150, 100.0, 300, 15.0
        stages = {"global": (1, 4.0, 2.0, None), "local": (3, 1.5, 0.5, 1)}
    elif args.cpu:
        box, angpix, n, radius, blobs, limit_A, snr = 64, 2.5, args.particles or 600, 60.0, 300, 8.0, 0.1
        stages = {"global": (3, 3.0, 1.0, None), "local": (4, 1.5, 0.5, 1)}
    else:
        box, angpix, n, radius, blobs, limit_A = 360, 1.34, args.particles or 2000, 120.0, 3000, 4.0
        stages = {"global": (2, 5.0, 2.0, None), "local": (4, 1.5, 0.5, 1)}
    vol = blob_map(box, angpix, radius, blobs)
    t0 = time.perf_counter()
    particles = synthetic_particles(vol, n, angpix, snr, bk)
    t_sim = time.perf_counter() - t0
    truth_rot = _true_rotations(n, bk)
    rng = np.random.default_rng(2)
    prior = axis_angle_to_matrix(rng.standard_normal((n, 3)), np.full(n, 2.0)) @ truth_rot
    rot, tilt, psi = matrix_to_euler(prior)
    particles.table["rlnAngleRot"], particles.table["rlnAngleTilt"], particles.table["rlnAnglePsi"] = rot, tilt, psi
    subset = np.where(rng.permutation(n) < n // 2, 1, 2)
    half_maps = np.stack([vol, vol]).astype(np.float32)
    r_max = int(round(box * angpix / limit_A))
    sigma2 = np.full((1, box // 2 + 1), float(np.mean(np.abs(particles.spectra[:50]) ** 2)) / 2)
    rate = matmul_rate(bk)
    relion_gb = 1.1e-8 * (2 * box) ** 3
    print(f"refine3d benchmark, commit {git_commit()}, {bk.describe()}, {n} particles of {box} px at {angpix} A/px, "
          f"E-step limit {limit_A} A (r_max {r_max} px); particle simulation {t_sim:.1f} s (not timed); "
          f"matmul {rate / 1e12:.2f} TFLOP/s")
    print(markdown_header(["stage", "search", "s/iteration", "E-step ms/ptcl", "M-step ms/ptcl", "total ms/ptcl",
                           "floor ms/ptcl", "ratio", "median significant", "peak memory GB", "RELION rule GB"]))
    sections = profile_sections(bk) if args.profile else None
    profiles = {}
    for name in args.stages.split(","):
        order, off_range, off_step, local = stages[name]
        grid = OrientationGrid(order)
        search = SearchSpace(grid, translation_grid(off_range, off_step), off_step,
                             local_sigma_deg=grid.sampling_deg if local else None, particle_diameter_A=2 * radius + 20)
        prior_rot = prior if local else None
        warm = np.flatnonzero(np.arange(n) < min(n, 64))  # untimed warm-up: CuPy compiles kernels at first use
        if bk.is_gpu:
            EStep(particles, half_maps[:1], np.zeros(1), sigma2, 2.0, r_max, search, bk).run(
                warm, np.zeros((n, 2)), prior_rotations=prior_rot, half=subset - 1)
        base = _peak_reset(bk)
        if sections is not None:
            sections.clear()
        res, t_e, t_m, esteps = refine_iteration(particles, half_maps, subset, search, r_max, prior_rot, sigma2, bk)
        peak = _peak_gb(bk, base)
        cand = None
        if local:  # coarse candidates within 3 s.d. of the prior: SO(3) ball volume fraction x grid size
            theta = np.radians(3 * search.local_sigma_deg)
            cand = max(1.0, grid.size * (theta - np.sin(theta)) / np.pi)
        floor_ms = floor_flops(esteps, res, search, cand) / rate / n * 1e3
        total_ms = (t_e + t_m) / n * 1e3
        sig = np.median(np.concatenate([r.n_significant for r in res]))
        what = (f"order {order} ({grid.sampling_deg:.2f} deg{', local' if local else ''}), offsets "
                f"{off_range}/{off_step} px")
        print(markdown_row([name, what, f"{t_e + t_m:.2f}", f"{t_e / n * 1e3:.3f}", f"{t_m / n * 1e3:.3f}",
                            f"{total_ms:.3f}", f"{floor_ms:.4f}", f"{total_ms / floor_ms:.1f}", f"{sig:.0f}",
                            f"{peak:.2f}", f"{relion_gb:.2f}"]))
        if sections is not None:
            profiles[name] = dict(sections.seconds())
    for name, secs in profiles.items():
        print("\n" + markdown_table([f"{name}: E-step part (inclusive of nested parts)", "s", "ms/ptcl"],
                                    [[k, f"{v:.2f}", f"{v / n * 1e3:.3f}"]
                                     for k, v in sorted(secs.items(), key=lambda kv: -kv[1])]))


def _true_rotations(n: int, bk) -> np.ndarray:
    """The rotations :func:`synthetic_particles` drew (same seed and generator order)."""
    from cryopipe.geometry import random_rotations

    rng = np.random.default_rng(1)
    rng.uniform(10000, 25000, n)
    rng.uniform(0, 180, n)
    return random_rotations(n, rng)


if __name__ == "__main__":
    main()
