"""CPU FFTs: scipy.fft (the backend's, with worker threads) against FFTW through pyFFTW (threads, planned with
FFTW_MEASURE, wisdom kept), on the sizes the CPU path transforms.

Workloads (single precision, as the stages run them): batches of 64 particle images (rfft2 of 64, 128, 256 and
360 px), micrographs (rfft2 of 1024^2 and 4096^2), maps (rfftn of 64^3, 128^3, 256^3 and 360^3) and complex images
(fft2 of 64 x 128^2). Each transform is timed forward and inverse, the median of ``--repeats`` runs after a
warm-up. pyFFTW is timed two ways: ``builders`` (an FFTW plan made once with FFTW_MEASURE, then executed: what a
stage that reuses its plans gets; the planning time is printed apart) and ``interfaces.scipy_fft`` with its plan
cache (a drop-in for scipy.fft, planned with FFTW_ESTIMATE).

Floor: 5 N log2(N) / 2 FLOPs per real transform of N points at the measured rate is not a useful bound on two
shared cores; the table gives the ratio of each time to scipy.fft's instead.

    python benchmarks/cpu_fft.py [--threads 2] [--repeats 5] [--quick]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import scipy.fft
from common import banner, markdown_table

try:
    import pyfftw
    import pyfftw.builders
    import pyfftw.interfaces.cache
    import pyfftw.interfaces.scipy_fft as fftw_scipy
except ImportError:  # pragma: no cover - the benchmark says so
    pyfftw = None

# (label, shape, kind): kind r2 = rfft2 over the last two axes, r3 = rfftn over three, c2 = complex fft2
WORKLOADS = [
    ("64 particles, 64 px", (64, 64, 64), "r2"),
    ("64 particles, 128 px", (64, 128, 128), "r2"),
    ("64 particles, 256 px", (64, 256, 256), "r2"),
    ("64 particles, 360 px", (64, 360, 360), "r2"),
    ("complex images, 64 x 128 px", (64, 128, 128), "c2"),
    ("micrograph 1024^2", (1024, 1024), "r2"),
    ("micrograph 4096^2", (4096, 4096), "r2"),
    ("map 64^3", (64, 64, 64), "r3"),
    ("map 128^3", (128, 128, 128), "r3"),
    ("map 256^3", (256, 256, 256), "r3"),
    ("map 360^3", (360, 360, 360), "r3"),
]
QUICK = {"64 particles, 64 px", "64 particles, 128 px", "micrograph 1024^2", "map 64^3", "map 128^3"}


def median_time(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def data(shape, kind: str) -> np.ndarray:
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape, dtype=np.float32)
    return (x + 1j * rng.standard_normal(shape, dtype=np.float32)).astype(np.complex64) if kind == "c2" else x


def scipy_pair(x, kind: str, threads: int):
    axes = (-3, -2, -1) if kind == "r3" else (-2, -1)
    if kind == "c2":
        f = scipy.fft.fft2(x, workers=threads)
        return (lambda: scipy.fft.fft2(x, workers=threads)), (lambda: scipy.fft.ifft2(f, workers=threads))
    f = scipy.fft.rfftn(x, axes=axes, workers=threads)
    s = x.shape[-len(axes):]
    return (lambda: scipy.fft.rfftn(x, axes=axes, workers=threads),
            lambda: scipy.fft.irfftn(f, s=s, axes=axes, workers=threads))


def builder_pair(x, kind: str, threads: int):
    """FFTW plans (FFTW_MEASURE) for the forward and inverse transform: (forward, inverse, planning s)."""
    axes = (-3, -2, -1) if kind == "r3" else (-2, -1)
    t0 = time.perf_counter()
    if kind == "c2":
        fwd = pyfftw.builders.fft2(x.copy(), threads=threads, planner_effort="FFTW_MEASURE")
        inv = pyfftw.builders.ifft2(fwd(), threads=threads, planner_effort="FFTW_MEASURE")
    else:
        fwd = pyfftw.builders.rfftn(x.copy(), axes=axes, threads=threads, planner_effort="FFTW_MEASURE")
        inv = pyfftw.builders.irfftn(fwd(x), s=x.shape[-len(axes):], axes=axes, threads=threads,
                                     planner_effort="FFTW_MEASURE")
    planning = time.perf_counter() - t0
    f = fwd(x)
    return (lambda: fwd(x)), (lambda: inv(f)), planning


def interface_pair(x, kind: str, threads: int):
    axes = (-3, -2, -1) if kind == "r3" else (-2, -1)
    if kind == "c2":
        f = fftw_scipy.fft2(x, workers=threads)
        return (lambda: fftw_scipy.fft2(x, workers=threads)), (lambda: fftw_scipy.ifft2(f, workers=threads))
    f = fftw_scipy.rfftn(x, axes=axes, workers=threads)
    s = x.shape[-len(axes):]
    return (lambda: fftw_scipy.rfftn(x, axes=axes, workers=threads),
            lambda: fftw_scipy.irfftn(f, s=s, axes=axes, workers=threads))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="the five smallest workloads")
    args = p.parse_args(argv)
    print(banner("cpu-fft", f"cpu ({args.threads} threads)"))
    if pyfftw is None:
        raise SystemExit("pyFFTW is not installed (pip install pyfftw): nothing to compare scipy.fft with")
    pyfftw.interfaces.cache.enable()
    rows = []
    for label, shape, kind in WORKLOADS:
        if args.quick and label not in QUICK:
            continue
        x = data(shape, kind)
        sp = [median_time(fn, args.repeats) for fn in scipy_pair(x, kind, args.threads)]
        *bfn, planning = builder_pair(x, kind, args.threads)
        bd = [median_time(fn, args.repeats) for fn in bfn]
        it = [median_time(fn, args.repeats) for fn in interface_pair(x, kind, args.threads)]
        rows.append([label, *(f"{t * 1e3:.2f}" for t in (*sp, *bd, *it)), f"{planning:.2f}",
                     f"{sum(bd) / sum(sp):.2f}", f"{sum(it) / sum(sp):.2f}"])
    print(markdown_table(["workload", "scipy fwd ms", "scipy inv ms", "FFTW plan fwd ms", "FFTW plan inv ms",
                          "pyfftw.scipy_fft fwd ms", "pyfftw.scipy_fft inv ms", "FFTW planning s",
                          "FFTW plan / scipy", "pyfftw.scipy_fft / scipy"], rows))
    print(f"scipy {scipy.__version__}, pyFFTW {pyfftw.__version__}, numpy {np.__version__}; ratios < 1: FFTW faster")


if __name__ == "__main__":
    main()
