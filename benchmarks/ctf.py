"""Benchmark of ``cryopipe ctf``: seconds per micrograph against the floor that bounds it.

Workload (default): 16 micrographs of 4096 x 4096 at 1.0 A/px with Thon rings (CTF-modulated ice, per-pixel SNR
0.05, plus white noise), 512 px tiles with half overlap (225 tiles per micrograph), fit band 30-5 A, defocus
0.3-5 um. Rows: the whole stage end to end from MRC files in the page cache (read, estimate, STAR; with and
without the per-micrograph PNG + .ctf diagnostics), and the estimation alone on images already on the device.
Floor: the tiles' forward FFTs alone (one batched rfft2 of every tile of a batch, the irreducible work of an
averaged spectrum), per micrograph. The ratio says how far the whole stage is from that floor.

    python benchmarks/ctf.py --device gpu            # the full workload (target on one H100: <= 50 ms per micrograph)
    python benchmarks/ctf.py --device cpu --quick    # 4 micrographs of 2048^2 for a CPU
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from common import banner, markdown_table, timed

from cryopipe.backend import get_backend
from cryopipe.ctf import CTFParams
from cryopipe.ctfestimate import CtfEstimateParams, CtfEstimator, estimate_micrographs
from cryopipe.ctfestimate.spectrum import tile_starts
from cryopipe.io.mrc import read_mrc, write_mrc
from cryopipe.pick import Micrograph
from cryopipe.simulate.ice import ice_field_spectrum, ice_image


def _micrograph(rng, size: int, angpix: float) -> np.ndarray:
    ctf = CTFParams(21000.0, 20200.0, 35.0, 300.0, 2.7, 0.1, bfactor=50.0)
    ice = ice_image(ice_field_spectrum(size, rng), ctf, angpix, 0.05)
    return (ice + rng.standard_normal((size, size))).astype(np.float32)


def _fft_floor(bk, images, tile: int, repeat: int) -> float:
    """Seconds for the batched forward FFTs of every tile of ``images`` (B, H, W), as one (B * n, T, T) rfft2."""
    n = len(tile_starts(images.shape[1], tile)) * len(tile_starts(images.shape[2], tile))
    tiles = bk.xp.ones((images.shape[0] * n, tile, tile), dtype=bk.xp.float32)
    chunk = tiles.shape[0] if bk.is_gpu else 64

    def run():
        for k in range(0, tiles.shape[0], chunk):
            bk.fft.rfft2(tiles[k:k + chunk])

    return timed(run, bk, repeat)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "gpu"])
    ap.add_argument("--quick", action="store_true", help="4 micrographs of 2048^2 (for a CPU)")
    ap.add_argument("--size", type=int, help="micrograph size, px (default 4096; quick 2048)")
    ap.add_argument("--micrographs", type=int, help="micrographs in the run (default 16; quick 4)")
    ap.add_argument("--tile", type=int, default=512, help="tile, px (default 512)")
    ap.add_argument("--batch-size", type=int, help="micrographs per batch (default: the stage's)")
    ap.add_argument("--repeat", type=int, default=3, help="timed repeats of the device-only rows, median (default 3)")
    ap.add_argument("--workdir", help="folder for the micrographs (default: a temporary folder)")
    args = ap.parse_args()
    size = args.size or (2048 if args.quick else 4096)
    n = args.micrographs or (4 if args.quick else 16)
    angpix = 1.0
    bk = get_backend(args.device)
    params = CtfEstimateParams(300.0, 2.7, 0.1, tile=args.tile, batch_size=args.batch_size)
    image = _micrograph(np.random.default_rng(0), size, angpix)
    print(banner("ctf", bk.describe()))
    label = (f"{n} x {size}^2 @ {angpix:g} A/px, {args.tile} px tiles "
             f"({len(tile_starts(size, args.tile)) ** 2} per micrograph), band 30-5 A")
    rows = []
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        tmp = Path(tmp)
        paths = [tmp / f"mic_{i:04d}.mrc" for i in range(n)]
        for p in paths:
            write_mrc(p, image, angpix)
        for p in paths:
            read_mrc(p)  # into the page cache
        mics = [Micrograph(str(p), str(p)) for p in paths]
        est = CtfEstimator(params, angpix, bk)
        batch = est.batch_size()
        estimate_micrographs(mics[:1], params, tmp / "warm", bk, angpix=angpix)  # plans, caches
        for what, diagnostics in (("end to end from the page cache, with PNG + .ctf diagnostics", True),
                                  ("end to end from the page cache, no diagnostics", False)):
            p = CtfEstimateParams(**{**params.__dict__, "diagnostics": diagnostics})
            bk.synchronize()
            t0 = time.perf_counter()
            estimate_micrographs(mics, p, tmp / f"out_{int(diagnostics)}", bk, angpix=angpix)
            bk.synchronize()
            rows.append((what, (time.perf_counter() - t0) / n))
        on_device = bk.asarray(np.stack([image] * min(batch, n)))
        t_est = timed(lambda: est.estimate(on_device), bk, args.repeat) / on_device.shape[0]
        rows.append((f"estimation only, batch of {on_device.shape[0]} on the device", t_est))
        t_fft = _fft_floor(bk, on_device, args.tile, args.repeat) / on_device.shape[0]
        rows.append(("floor: the tiles' forward FFTs alone", t_fft))
        fit = est.estimate(on_device[:1])[0].relion()
    print(markdown_table(
        ["workload", "device", "s / micrograph", "micrographs / s", "floor: tile FFTs (s)", "ratio to floor"],
        [[f"{label}: {what}", bk.name, f"{t:.4f}", f"{1 / t:.2f}", f"{t_fft:.4f}", f"{t / t_fft:.1f}"]
         for what, t in rows]))
    print(f"Fit of the benchmark micrograph (truth U 21000 V 20200 A, 35 deg): U {fit['rlnDefocusU']:.0f} "
          f"V {fit['rlnDefocusV']:.0f} A, {fit['rlnDefocusAngle']:.1f} deg; {len(est.coarse)} coarse candidates x "
          f"{est.coarse_band.size} px, {est.band.size} band px.")


if __name__ == "__main__":
    main()
