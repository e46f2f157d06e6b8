"""Array and FFT namespaces for CPU (NumPy + scipy.fft) and GPU (CuPy).

This is the only module that imports CuPy. Science code is written once against
``bk.xp`` (NumPy or CuPy) and ``bk.fft`` (``scipy.fft`` with worker threads on
the CPU, ``cupyx.scipy.fft`` on the GPU, which caches cuFFT plans).

Usage::

    bk = get_backend("auto")      # "cpu", "gpu" or "auto"
    x = bk.asarray(numpy_array, dtype=bk.xp.float32)
    X = bk.fft.rfft2(x)
    result = bk.asnumpy(x)
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np
import scipy.fft

from cryopipe.errors import InputError


@functools.lru_cache(maxsize=1)
def _cupy() -> ModuleType | None:
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() < 1:
            return None
        return cupy
    except Exception:  # no CuPy, no driver, or no device
        return None


def gpu_available() -> bool:
    """True when CuPy imports and sees at least one CUDA device."""
    return _cupy() is not None


class _ThreadedScipyFFT:
    """scipy.fft with ``workers`` set to the CPU threads this process may use."""

    def __init__(self, workers: int):
        self.workers = workers

    def __getattr__(self, name: str):
        fn = getattr(scipy.fft, name)
        if name in {"fftfreq", "rfftfreq", "fftshift", "ifftshift", "next_fast_len"}:
            return fn
        return functools.partial(fn, workers=self.workers)


@dataclass(frozen=True)
class Backend:
    """A compute device: ``xp`` (array module), ``fft`` (FFT module), ``name``."""

    name: str  # "cpu" or "gpu"
    xp: Any
    fft: Any
    device_id: int = 0

    @property
    def is_gpu(self) -> bool:
        return self.name == "gpu"

    def asarray(self, a, dtype=None):
        """Move ``a`` to this device (no copy if already there)."""
        return self.xp.asarray(a, dtype=dtype)

    def asnumpy(self, a) -> np.ndarray:
        """Bring ``a`` back to host memory as a NumPy array."""
        if self.is_gpu:
            return self.xp.asnumpy(a)
        return np.asarray(a)

    def asnumpy_pinned(self, a) -> np.ndarray:
        """:meth:`asnumpy` into page-locked host memory from CuPy's pinned pool (GPU), for large copies made every
        iteration (class maps): a copy into fresh pageable memory pays a page fault per 4 KiB page first, and the
        pool hands the pages of a freed map to the next one."""
        if not self.is_gpu:
            return np.asarray(a)
        import cupyx

        out = cupyx.empty_pinned(a.shape, dtype=a.dtype)
        self.xp.ascontiguousarray(a).get(out=out)
        return out

    def free_bytes(self) -> int:
        """Device memory that a batch may use (GPU: free + pool; CPU: available RAM)."""
        if self.is_gpu:
            free, _total = self.xp.cuda.runtime.memGetInfo()
            return int(free + self.xp.get_default_memory_pool().free_bytes())
        try:
            with open("/proc/meminfo") as fh:
                for line in fh:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 4 << 30

    def batch_size(self, bytes_per_item: int, fraction: float = 0.5, cap: int = 1 << 20) -> int:
        """How many items of ``bytes_per_item`` fit in ``fraction`` of free memory (>= 1)."""
        return int(max(1, min(cap, (self.free_bytes() * fraction) // max(1, bytes_per_item))))

    def synchronize(self) -> None:
        if self.is_gpu:
            self.xp.cuda.Stream.null.synchronize()

    def describe(self) -> str:
        """A human-readable device description for logs and provenance."""
        if self.is_gpu:
            props = self.xp.cuda.runtime.getDeviceProperties(self.device_id)
            name = props["name"]
            return f"gpu:{self.device_id} {name.decode() if isinstance(name, bytes) else name}"
        return f"cpu ({self.fft.workers} threads)"


def _cpu_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


# Launcher variables that hold the node-local rank, in order of preference: Open MPI, MPICH/Hydra and Intel MPI,
# MVAPICH2, Cray PALS, SLURM's srun.
LOCAL_RANK_VARS = ("OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "MV2_COMM_WORLD_LOCAL_RANK", "PALS_LOCAL_RANKID",
                   "SLURM_LOCALID")
# Launchers that set only the global rank (MPICH's mpiexec.gforker, plain PMI-1 launchers) run on one host,
# where the global rank is the local rank.
GLOBAL_RANK_VARS = ("PMI_RANK", "PMIX_RANK", "OMPI_COMM_WORLD_RANK")


def _int_var(environ, key: str) -> int | None:
    try:
        return int(environ[key])
    except (KeyError, ValueError):
        return None


def local_rank(environ=None) -> int:
    """This process's rank among the MPI ranks of its host (0 outside a launcher).

    Read from the launcher's variables (:data:`LOCAL_RANK_VARS`, then :data:`GLOBAL_RANK_VARS`). SLURM's
    variables are skipped when they disagree with the launcher's global rank: an ``mpiexec`` inside a batch
    job inherits the batch step's SLURM_LOCALID=0 in every rank.
    """
    env = os.environ if environ is None else environ
    global_rank = next((v for v in (_int_var(env, k) for k in GLOBAL_RANK_VARS) if v is not None), None)
    slurm_stale = global_rank is not None and _int_var(env, "SLURM_PROCID") not in (None, global_rank)
    for key in LOCAL_RANK_VARS:
        if key.startswith("SLURM_") and slurm_stale:
            continue
        value = _int_var(env, key)
        if value is not None:
            return value
    return global_rank or 0


def default_device_id(n_devices: int, environ=None) -> int:
    """The GPU a rank takes by default: its host-local rank modulo the ``n_devices`` visible GPUs."""
    return local_rank(environ) % max(1, n_devices)


def get_backend(device: str = "auto", device_id: int | None = None) -> Backend:
    """Return the backend for ``device`` in {"cpu", "gpu", "auto"}.

    ``auto`` picks the GPU when CuPy sees one. ``device_id`` defaults to the
    MPI-local rank modulo the visible GPU count (:func:`default_device_id`),
    so each rank of a host takes its own GPU.
    """
    if device not in {"cpu", "gpu", "auto"}:
        raise InputError(f"unknown device {device!r}; use cpu, gpu or auto", field="--device")
    cp = _cupy()
    if device == "cpu" or (device == "auto" and cp is None):
        return Backend("cpu", np, _ThreadedScipyFFT(_cpu_threads()))
    if cp is None:
        raise InputError("--device gpu asked for, but CuPy sees no CUDA GPU", field="--device")
    import cupyx.scipy.fft as cufft

    if device_id is None:
        device_id = default_device_id(cp.cuda.runtime.getDeviceCount())
    cp.cuda.Device(device_id).use()
    return Backend("gpu", cp, cufft, device_id)


def available_backends() -> list[str]:
    """Names of the devices this machine can run on (for test parametrisation)."""
    return ["cpu", "gpu"] if gpu_available() else ["cpu"]
