"""Benchmark of ``cryopipe ctf``: seconds per micrograph against the floor that bounds it.

Workload (default): 16 micrographs of 4096 x 4096 at 1.0 A/px with Thon rings (CTF-modulated ice, per-pixel SNR
0.05, plus white noise), 512 px tiles with half overlap (225 tiles per micrograph), fit band 30-5 A, defocus
0.3-5 um. Rows: the whole stage end to end from MRC files in the page cache (read, estimate, STAR; with and
without the per-micrograph PNG + .ctf diagnostics), and the estimation alone on images already on the device.
Floor: the tiles' forward FFTs alone (one batched rfft2 of every tile of a batch, the irreducible work of an
averaged spectrum), per micrograph. The ratio says how far the whole stage is from that floor.

Phases (``--phases``): one more end-to-end run without diagnostics, each public step of the stage timed in place
(:class:`common.PhaseTimer`, the device synchronised around each step, so that its queued work lands in it), per
micrograph of the run:

* read: ``read_mrc`` (page cache -> float32, NaN check), and host -> device: ``CtfEstimator.upload``; both run
  in the reader threads, beside the main thread (their summed time, not part of the run's wall time);
* tile spectra + background: ``CtfEstimator.spectra``; coarse search + refinement: ``CtfEstimator.search``;
  after the search: ``CtfEstimator.assess`` (equiphase averages, fit resolutions, the refinement up to each fit
  resolution, FOM, flags); STAR: ``write_star``; summary PNG: ``report.summary_png``; set-up:
  ``CtfEstimator.__init__``;
* rest of the main thread: the run's wall time less the steps above (waiting for the readers, logging, rows);
* "of which" rows: functions inside those steps (tile_power, subtract_background, the coarse grid's
  scores_shared, best_starts, every refine, equiphase_average), also counted in their step.

Each row also counts the copies to the host (``bk.asnumpy``; each waits for the device) per micrograph. Two
reference rows time one micrograph's ``read_mrc`` and ``bk.asarray`` alone.

Floor of the end-to-end run, and the prediction (written down on 2026-12-07 before any GPU measurement of the
batched version, from the code and CPU measurements only). Floor: every micrograph's 64 MB must leave the page
cache (a memcpy, ~6 ms at ~10 GB/s on one core, less over several threads) and cross PCIe (~2.6 ms at ~25 GB/s
from page-locked memory), and its tiles be transformed (0.4 ms on an H100); overlapped, the floor is the largest of
these, ~3-6 ms per micrograph. Measured at 79ad0c0 on an H100: 97 ms end to end, 24.5 ms of it ``estimate``
(which includes the per-micrograph steps after the search). The other ~73 ms, as predicted from the code: reading
~25-30 ms (``read_mrc`` of 64 MB: page faults of the mmap, the float32 copy, the NaN check; one reader thread
only 2 micrographs ahead of a batch of 16, so nearly all of it in series with the estimation), stacking the batch
on the host ~8 ms, copying it to the device ~8 ms, the summary PNG ~15 ms (~0.25 s per run over 16
micrographs). The steps after the search are smaller than they look on this micrograph: its fit resolution
reaches the band's 5 A limit, so there is no refinement up to it, one equiphase average (2 waits) per micrograph.
Prediction after the change (4 reader threads read and upload a batch ahead, each micrograph's spectrum queued as
it arrives, the steps after the search and ``best_starts`` batched, a plain-Figure summary PNG): 25-35 ms per
micrograph end to end for 16 micrographs in one batch (the first batch's reads, ~7 ms per micrograph over 4
threads, cannot overlap anything in a one-batch run; the summary PNG ~5 ms; the rest the search), and towards
the estimation alone for long runs.

    python benchmarks/ctf.py --device gpu            # the full workload (target on one H100: <= 50 ms per micrograph)
    python benchmarks/ctf.py --device gpu --phases   # and where the time of an end-to-end run goes
    python benchmarks/ctf.py --device cpu --quick    # 4 micrographs of 2048^2 for a CPU
"""

from __future__ import annotations

import argparse
import functools
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from common import PhaseTimer, banner, markdown_table, timed

from cryopipe.backend import Backend, get_backend
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


# the stage's steps that --phases times (public functions and methods), in the order of the table; they do not nest
PHASES = [
    ("cryopipe.io.mrc:read_mrc", "read (reader threads)"),
    ("cryopipe.ctfestimate.stage:CtfEstimator.upload", "host -> device (reader threads)"),
    ("cryopipe.ctfestimate.stage:CtfEstimator.__init__", "set-up (CtfEstimator)"),
    ("cryopipe.ctfestimate.stage:CtfEstimator.spectra", "tile spectra + background"),
    ("cryopipe.ctfestimate.stage:CtfEstimator.search", "coarse search + refinement"),
    ("cryopipe.ctfestimate.stage:CtfEstimator.assess", "after the search: resolution, within-fit refinement, FOM"),
    ("cryopipe.io.star:write_star", "STAR"),
    ("cryopipe.ctfestimate.report:summary_png", "summary PNG"),
]
# inside the steps above ("of which" rows: their whole time, also counted in the step that called them)
SUBPHASES = [
    ("cryopipe.ctfestimate.spectrum:tile_power", "of which: tile power spectra (tile_power)"),
    ("cryopipe.ctfestimate.spectrum:subtract_background", "of which: background (subtract_background)"),
    ("cryopipe.ctfestimate.search:scores_shared", "of which: coarse grid scores (scores_shared)"),
    ("cryopipe.ctfestimate.search:best_starts", "of which: best distinct starts (best_starts, host)"),
    ("cryopipe.ctfestimate.search:refine", "of which: pattern searches (refine: 2 in the search, 1 after it)"),
    ("cryopipe.ctfestimate.fit:equiphase_average", "of which: equiphase averages (equiphase_average)"),
]
REST = "rest of the main thread (waiting for reads, logging, rows)"


@dataclass(frozen=True)
class CountingBackend(Backend):
    """A backend that counts its copies to the host made from the main thread (each one waits for the device)."""

    copies: list = field(default_factory=lambda: [0], compare=False, hash=False, repr=False)

    def asnumpy(self, a) -> np.ndarray:
        if threading.current_thread() is threading.main_thread():
            self.copies[0] += 1
        return super().asnumpy(a)


class CopyCountingTimer(PhaseTimer):
    """:class:`common.PhaseTimer` (every label its calls' whole time) that also counts, per label, the copies to the
    host (main thread) made in its calls."""

    def __init__(self, bk: CountingBackend):
        super().__init__(bk.synchronize, exclusive=False)
        self.bk, self.copies = bk, {}

    def wrap(self, fn, label, sync=True, count_bytes=False):
        timed_call = super().wrap(fn, label, sync, count_bytes)

        @functools.wraps(fn)
        def counted(*args, **kwargs):
            if threading.current_thread() is not threading.main_thread():
                return timed_call(*args, **kwargs)
            before = self.bk.copies[0]
            try:
                return timed_call(*args, **kwargs)
            finally:
                self.copies[label] = self.copies.get(label, 0) + self.bk.copies[0] - before

        return counted


def phase_table(bk, mics, params, angpix: float, out: Path, image: np.ndarray, repeat: int) -> str:
    """One end-to-end run of ``mics`` (``params``, no diagnostics) with :data:`PHASES` and :data:`SUBPHASES` timed in
    place; a markdown table per micrograph, and the reference rows. Call it last: it leaves the timed functions in
    place."""
    cbk = CountingBackend(bk.name, bk.xp, bk.fft, bk.device_id)
    timer = CopyCountingTimer(cbk)
    for target, label in PHASES + SUBPHASES:
        timer.time_public(target, label)
    n = len(mics)
    p = CtfEstimateParams(**{**params.__dict__, "diagnostics": False})
    bk.synchronize()
    t0 = time.perf_counter()
    estimate_micrographs(mics, p, out, cbk, angpix=angpix)
    bk.synchronize()
    wall = time.perf_counter() - t0
    seconds = timer.seconds()
    calls = {k: v[1] for k, v in timer.totals.items()}

    def row(label: str, share: bool) -> list:
        key = "background thread: " + label if label.endswith("(reader threads)") else label
        t = seconds.get(key, 0.0)
        return [label, f"{t / n:.4f}", calls.get(key, 0), f"{t / wall:.0%}" if share and key == label else "",
                f"{timer.copies.get(label, 0) / n:.1f}"]

    rows = [row(label, True) for _, label in PHASES]
    main = [label for _, label in PHASES if not label.endswith("(reader threads)")]
    rest = wall - sum(seconds.get(label, 0.0) for label in main)
    rest_copies = cbk.copies[0] - sum(timer.copies.get(label, 0) for label in main)
    rows.append([REST, f"{rest / n:.4f}", "", f"{rest / wall:.0%}", f"{rest_copies / n:.1f}"])
    rows.append(["whole run (wall)", f"{wall / n:.4f}", "", "100%", f"{cbk.copies[0] / n:.1f}"])
    rows += [row(label, False) for _, label in SUBPHASES]
    path = mics[0].path
    t_read = timed(lambda: read_mrc(path), bk, repeat)
    t_up = timed(lambda: bk.asarray(image), bk, repeat)
    rows.append(["reference: read_mrc of one micrograph, alone (main thread)", f"{t_read:.4f}", repeat, "", ""])
    rows.append(["reference: bk.asarray of one micrograph (host -> device), alone", f"{t_up:.4f}", repeat, "", ""])
    missing = f"\nnot found (their time stays with their caller): {', '.join(timer.missing)}" if timer.missing else ""
    header = ["phase", "s / micrograph", "calls", "share of the run", "device -> host copies / micrograph"]
    return markdown_table(header, rows) + missing


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
    ap.add_argument("--phases", action="store_true", help="also time the stage's steps in one more end-to-end run")
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
        phases = phase_table(bk, mics, params, angpix, tmp / "phases", image, args.repeat) if args.phases else None
    print(markdown_table(
        ["workload", "device", "s / micrograph", "micrographs / s", "floor: tile FFTs (s)", "ratio to floor"],
        [[f"{label}: {what}", bk.name, f"{t:.4f}", f"{1 / t:.2f}", f"{t_fft:.4f}", f"{t / t_fft:.1f}"]
         for what, t in rows]))
    print(f"Fit of the benchmark micrograph (truth U 21000 V 20200 A, 35 deg): U {fit['rlnDefocusU']:.0f} "
          f"V {fit['rlnDefocusV']:.0f} A, {fit['rlnDefocusAngle']:.1f} deg; {len(est.coarse)} coarse candidates x "
          f"{est.coarse_band.size} px, {est.band.size} band px.")
    if phases:
        print(f"\nPhases of one more end-to-end run ({label}, no diagnostics; batches of {batch}; the device "
              f"synchronised around each step):")
        print(phases)


if __name__ == "__main__":
    main()
