"""Provenance records: what made each output, so any map can be traced back to raw data.

Every ``cryopipe`` command writes ``provenance.json`` in its output folder (rank 0
only, atomically, and only on success). A record holds the command line, the
resolved parameters, cryopipe's version and git commit, every input and output
with size and sha256, host, device, MPI size, start/end, wall time and peak memory.
:func:`lineage` walks records from a file back to the raw inputs.
"""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import hashlib
import json
import os
import platform
import resource
import subprocess
import sys
import time
from dataclasses import asdict, is_dataclass
from pathlib import Path

import cryopipe
from cryopipe.errors import InputError
from cryopipe.io.atomic import atomic_write_text

RECORD_NAME = "provenance.json"


def sha256(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file's content."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_entry(path: str | os.PathLike) -> dict:
    """{path (absolute), size (bytes), sha256} of an existing file."""
    p = Path(path).resolve()
    return {"path": str(p), "size": p.stat().st_size, "sha256": sha256(p)}


def _file_entries(paths) -> list[dict]:
    """:func:`file_entry` of each distinct path, in order, hashed in parallel threads (hashlib releases the GIL:
    a stage with gigabytes of inputs or outputs, e.g. picking thousands of micrographs, waits for the disk, not
    for one core)."""
    unique = list(dict.fromkeys(paths))
    if len(unique) < 2:
        return [file_entry(p) for p in unique]
    workers = min(8, len(unique), len(os.sched_getaffinity(0)))
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        return list(pool.map(file_entry, unique))


def code_version() -> dict:
    """cryopipe's version and, when installed from a git checkout, its commit and dirty flag."""
    src = Path(cryopipe.__file__).resolve().parent.parent
    info = {"version": cryopipe.__version__, "commit": None, "dirty": None}
    try:
        commit = subprocess.run(
            ["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "-C", str(src), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout
        info.update(commit=commit, dirty=bool(status.strip()))
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def _jsonable(value):
    if is_dataclass(value):
        return _jsonable(asdict(value))
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return value.item()
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


class Recorder:
    """Collects one command's provenance; use through :func:`record`."""

    def __init__(self, out_dir: str | os.PathLike, stage: str, params, name: str = RECORD_NAME):
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / name
        self.stage = stage
        self.params = _jsonable(params)
        self.inputs: list[str] = []
        self.outputs: list[str] = []
        self.extra: dict = {}
        self.command = [Path(sys.argv[0]).name, *sys.argv[1:]]
        self.device = "cpu"
        self.mpi_size = 1
        self._t0 = time.time()
        self._start = _now()

    def add_input(self, *paths) -> None:
        self.inputs.extend(os.fspath(p) for p in paths)

    def add_output(self, *paths) -> None:
        self.outputs.extend(os.fspath(p) for p in paths)

    def note(self, **items) -> None:
        """Extra facts for the record (cache statistics, accuracy, counts...)."""
        self.extra.update(_jsonable(items))

    def write(self) -> dict:
        peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        rec = {
            "stage": self.stage,
            "command": self.command,
            "cwd": os.getcwd(),
            "parameters": self.params,
            "cryopipe": code_version(),
            "python": platform.python_version(),
            "inputs": _file_entries(self.inputs),
            "outputs": _file_entries(self.outputs),
            "host": platform.node(),
            "device": self.device,
            "mpi_size": self.mpi_size,
            "start": self._start,
            "end": _now(),
            "wall_time_s": round(time.time() - self._t0, 3),
            "peak_memory_mib": round(peak_kib / 1024, 1),
            **({"notes": self.extra} if self.extra else {}),
        }
        atomic_write_text(self.path, json.dumps(rec, indent=2) + "\n")
        return rec


def find_producer(path: str | os.PathLike) -> tuple[dict, Path] | None:
    """The record (and its file) that lists ``path`` as an output, searching the file's folder and parents."""
    target = Path(path).resolve()
    for folder in [target.parent, *target.parent.parents][:4]:
        for rec_path in sorted(folder.glob("provenance*.json")):
            try:
                rec = json.loads(rec_path.read_text())
            except (OSError, json.JSONDecodeError):
                continue
            if any(o["path"] == str(target) for o in rec.get("outputs", [])):
                return rec, rec_path
    return None


def lineage(path: str | os.PathLike) -> list[str]:
    """Lines describing how ``path`` was made, back to raw inputs (depth-first, each record once)."""
    p = Path(path)
    if not p.exists():
        raise InputError("file not found", path)
    lines: list[str] = []
    seen: set[str] = set()

    def walk(file: Path, depth: int, expected_sha: str | None) -> None:
        pad = "  " * depth
        actual = sha256(file) if file.exists() else None
        state = "" if expected_sha is None or actual == expected_sha else "  [CHANGED since it was used]"
        if actual is None:
            state = "  [MISSING]"
        found = find_producer(file) if file.exists() else None
        if found is None:
            lines.append(f"{pad}{file}  sha256:{(actual or '-')[:12]}  (raw input){state}")
            return
        rec, rec_path = found
        code = rec["cryopipe"]
        lines.append(
            f"{pad}{file}  sha256:{actual[:12]}{state}\n{pad}  <- {rec['stage']} "
            f"(cryopipe {code['version']} {str(code.get('commit') or 'no-git')[:10]}"
            f"{' dirty' if code.get('dirty') else ''}, {rec['end']}, {rec['host']}, {rec['device']})\n"
            f"{pad}     $ {' '.join(rec['command'])}\n{pad}     record: {rec_path}"
        )
        if str(rec_path) in seen:
            lines.append(f"{pad}     (inputs listed above)")
            return
        seen.add(str(rec_path))
        for inp in rec["inputs"]:
            walk(Path(inp["path"]), depth + 1, inp["sha256"])

    walk(p.resolve(), 0, None)
    return lines
