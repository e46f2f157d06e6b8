"""An output folder's life: one run at a time (a lock), work in a private folder, publish the whole result at once.

Layout of ``--out DIR`` (hidden entries are cryopipe's own):

- ``DIR/.cryopipe.lock``: an advisory ``flock`` held by the run that owns DIR. It names its holder (stage, pid,
  host, start, command) so that a second run is told who holds it. The kernel releases the lock when its holder
  dies, so a lock left by a killed run is never stale.
- ``DIR/.staging-<token>``: where a one-shot stage writes; removed on failure.
- ``DIR/.run-<key>``: where an iterative stage (class3d, refine3d) writes its iterations. ``key`` is a hash of the
  stage, its parameters and the contents of its inputs, so a run killed and started again with the same ones finds
  its checkpoints and continues; a run with other parameters gets a folder of its own.
- Everything else is the published result of the last finished run, with its ``provenance.json``.

Publishing replaces the previous result as a whole: the entries of the last run (when DIR holds a cryopipe record
or the hidden mark of an earlier publication)
move to ``DIR/.trash-<token>``, the new ones move in (renames within one file system), the trash is removed and
the new record is written last. Nested folders that are the output folders of other runs (they hold a record or
a lock, e.g. extraction batches beside their gathered STAR) and the current run's own inputs are left alone.
Without a record in DIR, nothing but the files being replaced is touched (DIR may be a user's folder).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import hashlib
import json
import logging
import os
import platform
import re
import shutil
from pathlib import Path

from cryopipe.errors import InputError

log = logging.getLogger(__name__)

LOCK_NAME = ".cryopipe.lock"
MARK_NAME = ".cryopipe.published"  # a result was published here (survives Snakemake deleting declared outputs)
RECORD_NAME = "provenance.json"
ITERATION = re.compile(r"run_it(\d{3})_")


class OutputLock:
    """The advisory lock of one output folder, held for a run's whole life (:meth:`release` or process exit)."""

    def __init__(self, folder: Path, stage: str, command: list[str]):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.folder.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "a+")  # noqa: SIM115 - held until release()
        try:
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(self.path)
            self._fh.close()
            raise InputError(f"output folder is in use by {holder}; wait for it to finish or choose another --out",
                             self.folder, "--out") from None
        holder = {"stage": stage, "pid": os.getpid(), "host": platform.node(),
                  "since": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "command": command}
        self._fh.seek(0)
        self._fh.truncate()
        self._fh.write(json.dumps(holder) + "\n")
        self._fh.flush()

    def release(self) -> None:
        if not self._fh.closed:
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
            self._fh.close()


def _read_holder(path: Path) -> str:
    try:
        h = json.loads(path.read_text())
        return f"cryopipe {h['stage']} (pid {h['pid']} on {h['host']}, since {h['since']})"
    except (OSError, ValueError, KeyError):
        return "another cryopipe run"


def remove_leftovers(folder: Path, keep: Path | None = None) -> None:
    """Remove staging and trash folders of earlier runs. Call only while holding the folder's lock: only the
    holder creates them, so any other one belongs to a run that has ended (killed, or failed to clean up)."""
    for old in [*folder.glob(".staging-*"), *folder.glob(".trash-*")]:
        if keep is None or old.resolve() != Path(keep).resolve():
            shutil.rmtree(old, ignore_errors=True)


def _holds_result(path: Path) -> bool:
    return (path / RECORD_NAME).exists() or (path / MARK_NAME).exists()


def _is_output_folder(path: Path) -> bool:
    return path.is_dir() and (_holds_result(path) or (path / LOCK_NAME).exists())


def publish(work: Path, final: Path, token: str, keep=()) -> None:
    """Replace the published result in ``final`` by the content of ``work`` (see the module docstring).

    ``keep``: paths (the run's inputs) that are never moved away even when they lie in ``final``.
    """
    work, final = Path(work), Path(final)
    keep = {Path(p).resolve() for p in keep}
    trash = final / f".trash-{token}"
    old = []
    if _holds_result(final):
        old = [p for p in final.iterdir()
               if not p.name.startswith(".") and not _is_output_folder(p) and p.resolve() not in keep
               and not any(k.is_relative_to(p.resolve()) for k in keep)]
        # the record goes first: while entries move, the folder has none rather than a wrong one
        old.sort(key=lambda p: p.name != RECORD_NAME)
    # interrupted runs with other parameters: the folder now holds one finished run, nothing to resume
    old += [p for p in final.glob(".run-*") if p.resolve() != work.resolve()]
    trash.mkdir(exist_ok=True)
    for p in old:
        os.replace(p, trash / p.name)
    for src in sorted(work.iterdir()):
        dst = final / src.name
        if dst.is_dir() and not src.is_dir():
            os.replace(dst, trash / f"{dst.name}.dir")
        if src.is_dir() and dst.exists():
            _merge(src, dst)  # a folder the old result did not own (e.g. no record): replace file by file
        else:
            os.replace(src, dst)
    shutil.rmtree(work, ignore_errors=True)
    shutil.rmtree(trash, ignore_errors=True)
    (final / MARK_NAME).touch()


def _merge(src: Path, dst: Path) -> None:
    if not dst.is_dir():
        dst.unlink()
        os.replace(src, dst)
        return
    for s in src.iterdir():
        d = dst / s.name
        if s.is_dir() and d.exists():
            _merge(s, d)
        else:
            if d.is_dir():
                shutil.rmtree(d)
            os.replace(s, d)


def run_key(stage: str, params: dict, inputs) -> str:
    """A short hash of what determines an iterative run: the stage, its parameters and its inputs' contents."""
    from cryopipe.provenance import sha256

    h = hashlib.sha256(json.dumps({"stage": stage, "params": params}, sort_keys=True, default=str).encode())
    for p in inputs:
        h.update(sha256(p).encode())
    return h.hexdigest()[:16]


def iteration_of(path) -> int | None:
    """NNN of a checkpoint file ``run_itNNN_*``, else None."""
    m = ITERATION.match(Path(path).name)
    return int(m.group(1)) if m else None


def last_checkpoint(run_folder: Path, before: int | None = None) -> int | None:
    """The last iteration whose checkpoint is complete in ``run_folder`` (its data STAR is written last), or None;
    only iterations below ``before`` when given."""
    done = sorted((i for p in run_folder.glob("run_it*_data.star")
                   if (i := iteration_of(p)) is not None and p.name == f"run_it{i:03d}_data.star"), reverse=True)
    return next((i for i in done if before is None or i < before), None)


def drop_after(run_folder: Path, iteration: int) -> None:
    """Remove the files of iterations after ``iteration`` (and the final files) from a run folder, so that a
    resumed run never mixes with what the interrupted one wrote after its last complete checkpoint."""
    for p in run_folder.iterdir():
        i = iteration_of(p)
        if (i is None or i > iteration) and p.is_file():
            p.unlink()


def link_or_copy(src: Path, dst: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        dst.unlink()
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def public_name(path, work: Path, final: Path) -> str:
    """The name a file being written in ``work`` will have once published (for messages): under ``final``, without
    the temporary name of :func:`cryopipe.io.atomic.atomic_path`."""
    p = Path(path)
    m = re.match(r"^\.(.+)\.[^.]+\.part(\.[^.]*)?$", p.name)
    if m:
        p = p.with_name(m.group(1))
    try:
        return str(Path(final) / p.resolve().relative_to(Path(work).resolve()))
    except ValueError:
        return str(p)


# errno -> exit status of a storage error: the user's folder (2) or the disk (1)
STORAGE_ERRNOS = {errno.EACCES: 2, errno.EPERM: 2, errno.EROFS: 2, errno.ENOSPC: 1, errno.EDQUOT: 1}
