"""Benchmark of ``cryopipe pick``: seconds per micrograph against the floors that bound it.

Workload (default): one 4096 x 4096 micrograph at 1.0 A/px, 8 templates of 160 px, 5 degree in-plane steps
(576 template-rotations), low-pass 20 A, the automatic threshold's null and the artefact maps included; the same
with CTF-aware templates; blob picking; the same at full resolution; and a batch of 100 micrographs read
from local disk end to end (producer thread + device + outputs). Floors: the batched inverse FFTs alone
(one per template-rotation at the working-grid size: the irreducible work of FFT NCC), and reading the
micrograph from disk (page cache dropped with posix_fadvise, so reads are cold). Anchors: RELION-2 needed
0.73 s per such micrograph on a GTX 1080; targets on one H100: <= 15 ms GPU work per micrograph and an
end-to-end batch rate within 1.5x of the pure read time.

    python benchmarks/pick.py --device gpu            # the full workload (needs ~7 GB of disk)
    python benchmarks/pick.py --device cpu --quick    # a small version for a CPU
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from common import banner, markdown_table, timed
from scipy import ndimage

from cryopipe.backend import get_backend
from cryopipe.ctf import CTFParams
from cryopipe.io.mrc import read_mrc, write_mrc
from cryopipe.pick import Micrograph, Picker, PickParams, TemplateStack, pick_micrographs
from cryopipe.pick.ncc import grid_ctf, prepare_micrograph
from cryopipe.pick.templates import blob_templates


def _evict(paths) -> None:
    """Drop files from the page cache so the next read comes from disk."""
    os.sync()
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def workload(rng, size: int, n_templates: int, box: int, n_particles: int):
    """Smooth random templates (n, box, box) and a noisy micrograph (size, size) holding dark copies of them."""
    yy, xx = np.mgrid[:box, :box] - box // 2
    disc = np.hypot(yy, xx) < 0.4 * box
    templates = np.stack([ndimage.gaussian_filter(rng.standard_normal((box, box)), box / 25) * disc
                          for _ in range(n_templates)]).astype(np.float32)
    image = rng.standard_normal((size, size), dtype=np.float32)
    for _ in range(n_particles):
        y, x = rng.integers(box, size - box, 2)
        image[y - box // 2 : y + box // 2, x - box // 2 : x + box // 2] -= 20 * templates[rng.integers(n_templates)]
    return templates, image


def _fft_floor(picker: Picker, bk, repeat: int) -> float:
    """Time of the batched inverse FFTs alone: one per template-rotation at the working-grid size."""
    corr = picker.correlator
    Hc, Wc = corr.grid.corr
    spec = bk.xp.ones((corr.batch, Hc, Wc // 2 + 1), dtype=bk.xp.complex64)

    def run():
        for k in range(0, corr.count, corr.batch):
            bk.fft.irfft2(spec[: min(corr.batch, corr.count - k)], s=(Hc, Wc))

    return timed(run, bk, repeat)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "gpu"])
    ap.add_argument("--quick", action="store_true", help="1024^2, 4 templates, 10 deg steps, batch of 8")
    ap.add_argument("--size", type=int, help="micrograph size, px (default 4096; quick 1024)")
    ap.add_argument("--templates", type=int, help="number of templates (default 8; quick 4)")
    ap.add_argument("--template-box", type=int, default=160, help="template box, px (default 160)")
    ap.add_argument("--angular-step", type=float, help="in-plane step, degrees (default 5; quick 10)")
    ap.add_argument("--lowpass", type=float, default=20.0, help="low-pass, A (default 20)")
    ap.add_argument("--batch", type=int, help="micrographs in the end-to-end run (default 100; quick 8)")
    ap.add_argument("--repeat", type=int, default=5, help="timed repeats, median reported (default 5)")
    ap.add_argument("--no-full-res", action="store_true", help="skip the full-resolution workload")
    ap.add_argument("--workdir", help="local-disk folder for the micrographs (default: a temporary folder)")
    args = ap.parse_args()
    q = args.quick
    size = args.size or (1024 if q else 4096)
    n_templates = args.templates or (4 if q else 8)
    step = args.angular_step or (10.0 if q else 5.0)
    n_batch = args.batch or (8 if q else 100)
    angpix = 1.0
    bk = get_backend(args.device)
    rng = np.random.default_rng(0)
    templates, image = workload(rng, size, n_templates, args.template_box, n_particles=size * size // 100_000)
    stack = TemplateStack(templates, angpix)
    diameter = 0.8 * args.template_box * angpix

    print(banner("pick", bk.describe()))
    rows = []
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        tmp = Path(tmp)
        paths = [tmp / f"mic_{i:04d}.mrc" for i in range(n_batch)]
        for p in paths:
            write_mrc(p, image, angpix)
        _evict(paths)
        t0 = time.perf_counter()
        for p in paths:
            read_mrc(p)
        t_read = (time.perf_counter() - t0) / n_batch

        for name, lowpass in [(f"low-pass {args.lowpass:g} A", args.lowpass), ("full resolution", None)]:
            if lowpass is None and args.no_full_res:
                continue
            picker = Picker(stack, angpix, PickParams(diameter_A=diameter, lowpass_A=lowpass, angular_step=step), bk)
            picker.pick(image)  # plan, template bank and cached spectra
            on_device = bk.asarray(image)
            work = prepare_micrograph(on_device, picker.grid, bk, lowpass)
            scores = picker.score(image)
            t_fft = _fft_floor(picker, bk, args.repeat)
            label = (f"{size}^2 @ {angpix:g} A/px, {n_templates} x {args.template_box} px templates, "
                     f"{len(picker.bank)} rotations, {name}, grid {picker.grid.corr[0]}x{picker.grid.corr[1]}")
            timings = {
                "whole pick, host image in, picks out": lambda p=picker: p.pick(image),
                "host-to-device copy": lambda: bk.asarray(image),
                "device work: prepare + correlate, image on device": lambda p=picker, d=on_device: p.correlator(
                    prepare_micrograph(d, p.grid, bk, p.params.lowpass_A)),
                "correlate only (the FFT NCC max/argmax)": lambda p=picker, w=work: p.correlator(w),
                "peaks on the host (threshold, suppression)": lambda p=picker, sc=scores: p.peaks(sc),
            }
            if lowpass is not None:
                ctf = CTFParams(15000.0, 14500.0, 30.0, 300.0, 2.7, 0.1)
                timings["device work with CTF-aware templates (the CTF on the grid, the norms, the product)"] = \
                    lambda p=picker, d=on_device, c=ctf: p.correlator(
                        prepare_micrograph(d, p.grid, bk, p.params.lowpass_A), grid_ctf(c, p.grid, bk))
            rows += [(f"{label}: {what}", timed(fn, bk, args.repeat), t_fft, t_read) for what, fn in timings.items()]

        blob = Picker(blob_templates(diameter, angpix), angpix, PickParams(diameter_A=diameter, lowpass_A=args.lowpass,
                                                                           blob="disc"), bk)
        blob.pick(image)
        rows.append((f"{size}^2 blob picking ({len(blob.bank)} sizes, no rotations), low-pass {args.lowpass:g} A: "
                     "whole pick", timed(lambda: blob.pick(image), bk, args.repeat), rows[0][2], t_read))

        params = PickParams(diameter_A=diameter, lowpass_A=args.lowpass, angular_step=step)
        mics = [Micrograph(str(p), str(p)) for p in paths]
        pick_micrographs(mics[:1], stack, params, tmp / "warm", bk, angpix=angpix, preview=0)
        _evict(paths)
        t0 = time.perf_counter()
        pick_micrographs(mics, stack, params, tmp / "out", bk, angpix=angpix, preview=0)
        t_e2e = (time.perf_counter() - t0) / n_batch
        rows.append((f"batch of {n_batch} micrographs from local disk, end to end (low-pass {args.lowpass:g} A)",
                     t_e2e, rows[0][2], t_read))

    print(markdown_table(
        ["workload", "device", "s / micrograph", "micrographs / s", "floor: inverse FFTs (s)", "floor: disk read (s)",
         "ratio to FFT floor", "ratio to read floor"],
        [[label, bk.name, f"{t:.4f}", f"{1 / t:.1f}", f"{t_fft:.4f}", f"{t_rd:.4f}", f"{t / t_fft:.2f}",
          f"{t / t_rd:.2f}"] for label, t, t_fft, t_rd in rows]))
    print("Anchors: RELION-2, GTX 1080, 4096^2, 8 templates, 5 deg, 20 A: 0.73 s per micrograph. Targets (H100): "
          "<= 0.015 s GPU work per micrograph; end-to-end batch within 1.5x of the disk read time.")


if __name__ == "__main__":
    main()
