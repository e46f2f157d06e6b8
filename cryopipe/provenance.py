"""Provenance records: what made each output, so any map can be traced back to raw data.

Every ``cryopipe`` command writes ``provenance.json`` in its output folder (rank 0
only, atomically, and only on success). A record holds the command line, the
resolved parameters, cryopipe's version and git commit, every input and output
with size and sha256, host, device, MPI size, start/end, wall time and peak memory.

Files are named relative to the record's own folder (``"../extract/particles.star"``,
``"micrographs/mic_001.mrc"``) and by checksum, so a copied or moved results tree keeps
its lineage: a record's paths are resolved against wherever the record now lies, and
the sha256 is the proof that a file is the one recorded. Records written before this
(absolute paths) are still read; when such a record has moved, its paths are re-anchored
at its new place once one of its outputs is found there by name and checksum.

:func:`lineage` walks records from a file back to the raw inputs and checks every file
on the way against the records: the one that made it ("CHANGED since it was made") and
the one that used it ("CHANGED since it was used").
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


def _relative(entry: dict, folder: str) -> dict:
    """``entry`` with its path relative to ``folder`` (both resolved), as records store it."""
    return {**entry, "path": os.path.relpath(entry["path"], folder)}


def file_entries(paths) -> list[dict]:
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

    def prepare(self, hashed_at: dict | None = None) -> dict:
        """The record (paths relative to its folder, sizes, checksums), to :meth:`write` later. ``hashed_at`` maps
        recorded output paths to where the files are now (a staging folder not yet published): the checksums are
        taken there, so that publishing and writing the record follow each other with no hashing in between."""
        folder = str(self.path.parent.resolve())
        hashed_at = {os.fspath(k): os.fspath(v) for k, v in (hashed_at or {}).items()}
        outputs = file_entries([hashed_at.get(o, o) for o in self.outputs])
        unique = list(dict.fromkeys(self.outputs))
        outputs = [{**e, "path": str(Path(o).resolve())} for e, o in zip(outputs, unique, strict=True)]
        peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return {
            "stage": self.stage,
            "command": self.command,
            "cwd": os.getcwd(),
            "parameters": self.params,
            "cryopipe": code_version(),
            "python": platform.python_version(),
            "inputs": [_relative(e, folder) for e in file_entries(self.inputs)],
            "outputs": [_relative(e, folder) for e in outputs],
            "host": platform.node(),
            "device": self.device,
            "mpi_size": self.mpi_size,
            "start": self._start,
            "end": _now(),
            "wall_time_s": round(time.time() - self._t0, 3),
            "peak_memory_mib": round(peak_kib / 1024, 1),
            **({"notes": self.extra} if self.extra else {}),
        }

    def write(self, rec: dict | None = None) -> dict:
        """Write the record (:meth:`prepare`'s, or one prepared now) and return it."""
        rec = self.prepare() if rec is None else rec
        atomic_write_text(self.path, json.dumps(rec, indent=2) + "\n")
        return rec


class _Records:
    """Reads records and checksums once per lineage walk, and knows where each record's files are now."""

    def __init__(self):
        self._records: dict[Path, dict | None] = {}
        self._outputs: dict[Path, list[tuple[dict, Path]]] = {}
        self._sha: dict[Path, str | None] = {}
        self._moved: dict[Path, Path] = {}  # old-style record -> the folder it was written in

    def record(self, rec_path: Path) -> dict | None:
        if rec_path not in self._records:
            try:
                rec = json.loads(rec_path.read_text())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError):
                rec = None
            self._records[rec_path] = rec if isinstance(rec, dict) else None
        return self._records[rec_path]

    def sha(self, path: Path) -> str | None:
        """The file's sha256 now, or None when it is missing."""
        if path not in self._sha:
            self._sha[path] = sha256(path) if path.is_file() else None
        return self._sha[path]

    def path(self, entry: dict, rec_path: Path) -> Path:
        """Where the file of a record's entry is now. ``rec_path`` is resolved."""
        raw = Path(entry["path"])
        folder = rec_path.parent
        if not raw.is_absolute():  # relative to the record's folder
            return Path(os.path.normpath(folder / raw))
        raw = Path(os.path.normpath(raw))
        old = self._moved.get(rec_path)
        if old is None:
            return raw
        moved = Path(os.path.normpath(folder / os.path.relpath(raw, old)))
        if raw.is_relative_to(old) or moved.exists() or not raw.exists():
            return moved
        return raw  # an input outside the moved tree (raw data elsewhere) that is still where it was

    def outputs(self, rec_path: Path) -> list[tuple[dict, Path]]:
        if rec_path not in self._outputs:
            rec = self.record(rec_path) or {}
            entries = [e for e in rec.get("outputs", []) if isinstance(e, dict) and "path" in e]
            self._outputs[rec_path] = [(e, self.path(e, rec_path)) for e in entries]
        return self._outputs[rec_path]

    def producer(self, target: Path) -> tuple[dict, Path, dict] | None:
        """(record, record file, output entry) of the record that made ``target`` (resolved), searching its folder
        and parents. A record naming the file's path matches; with several, the one whose checksum equals the
        file's wins. An old record with absolute paths that was moved matches when the end of its path and the
        checksum agree, and its other paths are then re-anchored at its new place."""
        direct: list[tuple[dict, Path, dict]] = []
        moved: list[tuple[dict, Path, dict, Path]] = []
        for folder in [target.parent, *target.parent.parents][:4]:
            tail = target.relative_to(folder).parts
            for rec_path in sorted(folder.glob("provenance*.json")):
                rec = self.record(rec_path)
                if rec is None:
                    continue
                for entry, where in self.outputs(rec_path):
                    if where == target:
                        direct.append((rec, rec_path, entry))
                    elif rec_path not in self._moved and Path(entry["path"]).is_absolute():
                        old = Path(entry["path"]).parts
                        if len(old) > len(tail) and old[-len(tail):] == tail:
                            moved.append((rec, rec_path, entry, Path(*old[: -len(tail)])))
        if not moved and len(direct) < 2:
            return direct[0] if direct else None
        actual = self.sha(target)
        for rec, rec_path, entry in direct:
            if entry.get("sha256") == actual:
                return rec, rec_path, entry
        for rec, rec_path, entry, old in moved:
            if actual is not None and entry.get("sha256") == actual:
                self._moved[rec_path] = old
                self._outputs.pop(rec_path, None)
                return rec, rec_path, entry
        return direct[0] if direct else None


def find_producer(path: str | os.PathLike) -> tuple[dict, Path] | None:
    """The record (and its file) that lists ``path`` as an output, searching the file's folder and parents.

    Record paths are resolved relative to the record's folder (old records: absolute); when several records name
    the file, or an old record has moved, the one whose checksum equals the file's is chosen."""
    found = _Records().producer(Path(path).resolve())
    return None if found is None else found[:2]


def lineage(path: str | os.PathLike) -> list[str]:
    """Lines describing how ``path`` was made, back to raw inputs (depth-first, each record's inputs once).

    Every file on the way is checked: against the checksum its producer recorded ("CHANGED since it was made")
    and the one recorded by the record that used it ("CHANGED since it was used"); a file that is gone is
    "MISSING" (its producer is still followed). Paths under the current folder are shown relative to it."""
    p = Path(path)
    if not p.exists():
        raise InputError("file not found", path)
    records = _Records()
    cwd = Path.cwd().resolve()
    lines: list[str] = []
    seen: set[Path] = set()
    flagged: dict[str, set[Path]] = {"changed": set(), "missing": set()}

    def show(f: Path) -> str:
        return str(f.relative_to(cwd)) if f.is_relative_to(cwd) else str(f)

    def walk(file: Path, depth: int, used_sha: str | None) -> None:
        pad = "  " * depth
        actual = records.sha(file)
        found = records.producer(file)
        flags = []
        if actual is None:
            flags.append("[MISSING]")
            flagged["missing"].add(file)
        else:
            if found is not None and found[2].get("sha256") not in (None, actual):
                flags.append("[CHANGED since it was made]")
            if used_sha is not None and used_sha != actual:
                flags.append("[CHANGED since it was used]")
            if flags:
                flagged["changed"].add(file)
        head = f"{pad}{show(file)}  sha256:{(actual or '-')[:12]}"
        state = "".join(f"  {f}" for f in flags)
        if found is None:
            lines.append(f"{head}  (raw input){state}")
            return
        rec, rec_path, _ = found
        if rec_path in seen:
            lines.append(f"{head}{state}\n{pad}  <- {rec.get('stage', '?')}, record {show(rec_path)} (see above)")
            return
        seen.add(rec_path)
        code = rec.get("cryopipe") or {}
        lines.append(
            f"{head}{state}\n{pad}  <- {rec.get('stage', '?')} "
            f"(cryopipe {code.get('version', '?')} {str(code.get('commit') or 'no-git')[:10]}"
            f"{' dirty' if code.get('dirty') else ''}, {rec.get('end', '?')}, {rec.get('host', '?')}, "
            f"{rec.get('device', '?')})\n"
            f"{pad}     $ {' '.join(map(str, rec.get('command', [])))}\n{pad}     record: {show(rec_path)}"
        )
        for inp in rec.get("inputs", []):
            if isinstance(inp, dict) and "path" in inp:
                walk(records.path(inp, rec_path), depth + 1, inp.get("sha256"))

    walk(p.resolve(), 0, None)
    if flagged["changed"] or flagged["missing"]:
        lines.append(f"WARNING: {len(flagged['changed'])} file(s) changed after they were made or used, "
                     f"{len(flagged['missing'])} missing (marked above): this lineage no longer describes them")
    return lines
