"""CPU and GPU share the images of a rank (BioEM's planned autotuning).

The images of this rank's orientation share are split in two contiguous parts: the main backend (the GPU)
scores the first ``1 - f`` of them, a CPU backend (NumPy + threaded scipy.fft) the last ``f``, at the same
time (the CPU part runs in a thread; NumPy, BLAS and scipy.fft release the GIL). Each image's result
depends only on its own grid points, so merging the parts in image order gives the result of one device up
to the precision used (the CPU part computes in the main problem's dtypes: float32 under a GPU).

``fraction="auto"`` measures the rates first, on a small first chunk that counts towards the result: the
first ``o_probe`` orientations (about 1/8 of the rank's share, at most 64), with the CPU taking ~2 % of the
images (at least one) and the main backend the rest. Rates r (grid points per second, each device timed on
its own part) then set ``f = r_cpu / (r_cpu + r_main)`` for the remaining orientations, so that both parts
end together. The partial results of both phases are folded per image in orientation order with the same
max-shifted sum as the orientation blocks of :func:`~cryopipe.bioem.integrate.integrate`.

Usage::

    res, info = integrate_shared(prob, bk_gpu, comm, fraction="auto")   # prob built on bk_gpu
    info["fraction"], info["rate_main"], info["rate_cpu"]                # what was chosen and measured
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time

import numpy as np

from cryopipe.backend import get_backend
from cryopipe.bioem.integrate import Problem, Result, integrate
from cryopipe.errors import InputError
from cryopipe.parallel import split_range

log = logging.getLogger(__name__)

PROBE_IMAGE_FRACTION = 0.02  # share of the images the CPU scores while the rates are measured
PROBE_MAX_ORIENTATIONS = 64


def parse_fraction(value) -> float | str | None:
    """``--cpu-fraction`` value: a number in [0, 1], 'auto', or None (the default for the backend)."""
    if value is None or value == "auto":
        return value
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise InputError(f"--cpu-fraction must be a number in [0, 1] or auto, got {value!r}",
                         field="--cpu-fraction") from None
    if not 0.0 <= f <= 1.0:
        raise InputError(f"--cpu-fraction must lie in [0, 1], got {f}", field="--cpu-fraction")
    return f


def resolve_fraction(value, bk) -> float | str:
    """The fraction to use on main backend ``bk``: None -> 'auto' on a GPU, 0 on the CPU (nothing to share)."""
    value = parse_fraction(value)
    if value is None:
        return "auto" if bk.is_gpu else 0.0
    return value


def fraction_from_rates(rate_main: float, rate_cpu: float) -> float:
    """Share of the images for the CPU so that both devices finish together: r_cpu / (r_cpu + r_main)."""
    total = rate_main + rate_cpu
    return float(rate_cpu / total) if total > 0 and math.isfinite(total) else 0.0


def n_cpu_images(n_images: int, fraction: float) -> int:
    """Images the CPU takes of ``n_images`` (the last ones), rounding ``fraction * n_images``."""
    return int(min(n_images, max(0, round(fraction * n_images))))


def cpu_backend(threads: int | None = None):
    """A NumPy backend whose FFTs use ``threads`` workers (default: the CPU threads minus one, for the thread
    that drives the GPU)."""
    bk = get_backend("cpu")
    workers = threads or max(1, bk.fft.workers - 1)
    return dataclasses.replace(bk, fft=type(bk.fft)(workers))


def _move(a, src, dst):
    return a if src is dst else dst.asarray(src.asnumpy(a))


def sub_problem(prob: Problem, images: np.ndarray, o_range: tuple[int, int], src, dst) -> Problem:
    """``prob`` restricted to ``images`` (host indices) and orientations [o0, o1), with its arrays on ``dst``.

    Projections come from ``prob.project_on(dst)`` when the problem has such a factory, else from
    ``prob.project`` copied from ``src`` to ``dst``.
    """
    o0, o1 = o_range
    idx = src.asarray(np.asarray(images))
    per_image_ctf = prob.ctf.shape[0] > 1
    spectra = _move(prob.spectra[idx], src, dst)
    ctf = _move(prob.ctf[idx] if per_image_ctf else prob.ctf, src, dst)
    ctf_lp = prob.ctf_log_prior[images] if len(prob.ctf_log_prior) > 1 else prob.ctf_log_prior
    if dst is src:
        base = prob.project
    elif prob.project_on is not None:
        base = prob.project_on(dst)
    else:
        def base(a, b):
            return dst.asarray(src.asnumpy(prob.project(a, b)))

    def project(a, b):
        return base(o0 + a, o0 + b)

    olp = None if prob.orientation_log_prior is None else prob.orientation_log_prior[images, o0:o1]
    return Problem(spectra, prob.co[images], prob.coo[images], ctf, ctf_lp, prob.shifts, o1 - o0, project, olp,
                   prob.project_on)


def _fold(into: Result, part: Result, images: np.ndarray, o0: int) -> None:
    """Fold ``part`` (orientations from o0, after those already in ``into``) into ``into`` for ``images``."""
    into.update(images, part.log_sum, part.best_l, np.where(part.best_orientation >= 0, part.best_orientation + o0,
                                                             -1), part.best_ctf, part.best_shift, part.best_cc,
                part.best_ccc, part.best_cco)
    if into.orientation_log_sum is not None:
        o1 = o0 + part.orientation_log_sum.shape[1]
        into.orientation_log_sum[images, o0:o1] = part.orientation_log_sum


def _points(prob: Problem, n_images: int, n_orient: int) -> int:
    return n_images * n_orient * prob.ctf.shape[1]


def _run_pair(prob, bk_main, bk_cpu, main_images, cpu_images, o_range, keep, kwargs, res, progress=None):
    """Score main_images on bk_main (this thread) and cpu_images on bk_cpu (a thread) for orientations o_range;
    fold both into ``res``. ``progress`` counts the orientations of the main part (of the CPU part when the main one
    has no images): both parts cover the same orientations and end together. Returns (seconds main, seconds cpu)."""
    out, times, errors = {}, {}, []
    counting = "main" if len(main_images) else "cpu"

    def work(name, bk, images):
        try:
            t = time.perf_counter()
            if len(images):
                sub = sub_problem(prob, images, o_range, bk_main, bk)
                out[name] = integrate(sub, bk, None, keep, progress=progress if name == counting else None, **kwargs)
                bk.synchronize()
            times[name] = time.perf_counter() - t
        except BaseException as exc:  # re-raised in the calling thread
            errors.append(exc)

    thread = threading.Thread(target=work, args=("cpu", bk_cpu, cpu_images), name="bioem-cpu-part")
    thread.start()
    work("main", bk_main, main_images)
    thread.join()
    if errors:
        raise errors[0]
    for name, images in (("main", main_images), ("cpu", cpu_images)):
        if name in out:
            _fold(res, out[name], images, o_range[0])
    return times["main"], times["cpu"]


def integrate_shared(prob: Problem, bk, comm=None, keep_orientations: bool = False, fraction="auto",
                     cpu=None, rates: tuple[float, float] | None = None, progress=None,
                     **kwargs) -> tuple[Result, dict]:
    """:func:`~cryopipe.bioem.integrate.integrate` with the images shared between ``bk`` and a CPU backend.

    prob : the problem on ``bk`` (all images). fraction : share of the images for the CPU in [0, 1], or
    'auto' (measured rates, see module docstring). cpu : the CPU backend (default :func:`cpu_backend`); tests
    pass a second CPU backend standing in for the GPU. rates : known (main, cpu) grid points per second:
    skip the measurement. progress : a :class:`cryopipe.progress.Progress` told the orientations done (this
    rank's share, each once). kwargs go to ``integrate`` (fused, transform, memory_fraction).

    Returns this rank's :class:`Result` (combine ranks with ``reduce_ranks``) and a dict for provenance:
    mode ('off', 'fixed', 'auto'), fraction, images_main, images_cpu, rate_main and rate_cpu (grid points per
    second: measured by the probe for 'auto', achieved by the run for 'fixed'; None when not measured),
    probe_orientations, seconds_main and seconds_cpu (wall time of each part after the probe).
    """
    fraction = parse_fraction(fraction)
    n = prob.n_images
    info = dict(mode="off", fraction=0.0, images_main=n, images_cpu=0, rate_main=None, rate_cpu=None,
                probe_orientations=0)
    if fraction is None or fraction == 0.0 or n == 0:
        return integrate(prob, bk, comm, keep_orientations, progress=progress, **kwargs), info
    cpu = cpu or cpu_backend()
    rank, size = (0, 1) if comm is None else (comm.Get_rank(), comm.Get_size())
    mine = split_range(prob.n_orientations, rank, size)
    res = Result.empty(n, prob.n_orientations if keep_orientations else None)
    everything = np.arange(n)
    o_start = mine.start
    if fraction == "auto":
        info["mode"] = "auto"
        if rates is None and n >= 2 and mine.stop > mine.start:
            o_probe = max(1, min(PROBE_MAX_ORIENTATIONS, math.ceil((mine.stop - mine.start) / 8)))
            k = max(1, min(n - 1, math.ceil(PROBE_IMAGE_FRACTION * n)))
            probe = (mine.start, mine.start + o_probe)
            t_main, t_cpu = _run_pair(prob, bk, cpu, everything[:n - k], everything[n - k:], probe,
                                      keep_orientations, kwargs, res, progress)
            rates = (_points(prob, n - k, o_probe) / max(t_main, 1e-9), _points(prob, k, o_probe) / max(t_cpu, 1e-9))
            info["probe_orientations"] = o_probe
            o_start = probe[1]
        fraction = fraction_from_rates(*rates) if rates is not None else 0.0
        if rates is not None:
            info.update(rate_main=float(rates[0]), rate_cpu=float(rates[1]))
    else:
        info["mode"] = "fixed"
    k = n_cpu_images(n, fraction)
    info.update(fraction=float(fraction), images_main=n - k, images_cpu=k)
    if o_start < mine.stop:
        t_main, t_cpu = _run_pair(prob, bk, cpu, everything[:n - k], everything[n - k:], (o_start, mine.stop),
                                  keep_orientations, kwargs, res, progress)
        info.update(seconds_main=t_main, seconds_cpu=t_cpu)
        if info["mode"] == "fixed":  # the rates this split achieved (None for a device that had no images)
            o_n = mine.stop - o_start
            info.update(rate_main=_points(prob, n - k, o_n) / t_main if n - k and t_main > 0 else None,
                        rate_cpu=_points(prob, k, o_n) / t_cpu if k and t_cpu > 0 else None)
    log.info("images shared: %d on %s, %d on %s (fraction %.4f, %s; rates %s / %s grid points/s)", n - k,
             bk.describe(), k, cpu.describe(), fraction, info["mode"], _fmt(info["rate_main"]),
             _fmt(info["rate_cpu"]))
    return res, info


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.3g}"
