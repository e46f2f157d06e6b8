"""Node-local SSD cache for particle stacks, shared by the jobs that run on one node.

The particle stages (class2d, class3d, refine3d, bioem) and their reruns read the same stacks, job
after job, on the nodes a cluster gives them. A :class:`StackCache` copies the stacks to node-local
scratch in a background thread while the job reads from shared storage, so no GPU waits on a copy;
:meth:`StackCache.path_for` answers, at each read, the path to use: the verified local copy once it is
there, else the source. Stages that read every stack once, at start (all of ours: the images then live
in memory), first :meth:`StackCache.adopt` the copies the node already holds::

    with stage_cache(args, recorder) as cache:      # --scratch-dir, --scratch-quota-gb; stats into provenance
        cache.adopt(stacks)                         # verified local copies now, the rest staged meanwhile
        for stack in stacks:
            data = cache.read(stack, read_mrc)      # the local copy if there is one, else shared storage

A stage that reads on every pass would instead :meth:`StackCache.prefetch` and read through
:meth:`StackCache.path_for` each time, moving to the local copy as soon as it is verified.

Layout under ``<scratch>/cryopipe-cache-<uid>/`` (mode 0700; a folder owned by someone else disables
the cache): ``objects/<sha256><suffix>`` are the copies, named by the sha256 of their content (the
checksum provenance records use), so identical stacks share one copy; ``refs/<key>.json`` (one per
source, ``key`` from its real path) records the identity the source had when its bytes were last
hashed, the object those bytes are and when that was checked (``checked_ns``); ``locks/`` hold flock(2)
locks. A copy is written to ``objects/<key>.part`` (space reserved up front), hashed as it streams,
and linked into place under its sha256 only when complete and the source has not changed meanwhile
(its identity, below, is the same after the copy as before): a job killed mid-copy leaves a ``.part``
that nothing trusts and the next copier replaces; an object of that content already there (another
path, or an earlier version of this one) is verified and kept. The per-source lock makes concurrent
jobs copy a file once; the others wait for it in the background and then check it.

When a copy is used. A source version's identity is its full stat: (st_dev, st_ino, st_size,
st_mtime_ns, st_ctime_ns), taken through a fresh open of the source (nothing is read; on NFS the open
makes the client revalidate the attributes with the server). The ctime cannot be set from user space:
any write, truncate or utime/``touch`` sets it to the current time, so a stack rewritten in place,
with its size kept and its mtime put back (``touch -d``, ``os.utime``) or not, has a new identity.
A job uses the object a ref names without reading the source when the source's identity is exactly
the recorded one, all five fields, and the object is intact (its own bytes, read from local disk,
hash to its name; a copy that does not is ``corrupt``: deleted and copied again). When any field
differs the ref is not trusted: the job reads the source once, hashing it and comparing it with the
object byte for byte. The same content (a ``touch``, a rewrite with the same bytes) is a hit: the copy
is used and the ref gets the new identity, so the next job reads nothing. Other content is ``stale``:
the ref is dropped, the stack is read from shared storage and copied again. An identity recorded less
than ``RACY_NS`` (2 s) after the source's ctime is checked again the same way by the next job (as git
does with "racily clean" index entries): a write landing in the same timestamp tick as the recording
(1 s on file systems with whole-second timestamps) would leave the identity as it was.

What can still fool it: a change the stat does not show. Root setting the clock back between two
writes (a later write can then get an earlier write's ctime, with the same size and inode); and NFS
clients that cache attributes without revalidating them at open (mounted ``nocto``): a write from
another host may then not show in stat for up to the attribute cache time (``actimeo``), but such a
client reads stale data pages of the file too, so a job reading the source directly would get the old
content as well. The sha256 that a producing stage's
``provenance.json`` records for a stack is not used as a key: it says what the file was when the
record was written, not what it is now, which is what the rewrite in place changes.

Costs. A job whose stacks are all cached with unchanged identities reads nothing from shared storage
(``source_bytes_hashed`` 0): one open and stat per stack there, and a local read of each copy it uses
to verify it (sha256, ~1.7 GB/s). A source whose identity changed is read once (hashed, and compared
with the copy at local-read speed) by the job that finds it so, which records the new identity. A
stack not cached yet costs what an uncached job does: the job reads the source while a background copy
(hashing as it streams) reads it once more for the jobs that follow. Within one job a source is
checked once (when it is adopted or staged); later :meth:`path_for` calls answer from memory, so a
job's stacks stay at the version checked at its start. Objects a live job uses are held with a shared
lock; when space is short (``quota_bytes``, or the disk's free space less a reserve) the least
recently used unheld objects are evicted, and a stack that still does not fit is read from shared
storage (partial caching). Nothing here raises for lack of space: the cache only ever makes reads
faster.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import queue
import stat
import tempfile
import threading
import time
from pathlib import Path

from cryopipe.errors import InputError

log = logging.getLogger(__name__)

CHUNK = 8 << 20
RESERVE_BYTES = 1 << 30  # free space left on the scratch disk (or 5 % of it, if smaller)
RACY_NS = 2 * 10**9  # an identity recorded within this of the source's ctime is checked again (timestamp ticks)


class _ClosedError(Exception):
    """The cache was closed while its worker was waiting or copying."""


def default_scratch_dir() -> Path:
    """$SLURM_TMPDIR, else $TMPDIR (Snakemake sets it from the ``tmpdir`` resource), else the system temp."""
    return Path(os.environ.get("SLURM_TMPDIR") or os.environ.get("TMPDIR") or tempfile.gettempdir())


def add_arguments(p: argparse.ArgumentParser) -> None:
    """``--scratch-dir`` and ``--scratch-quota-gb``: the flags of every stage that caches stacks."""
    p.add_argument("--scratch-dir", type=Path, default=None,
                   help="node-local disk for cached particle stacks (default: $SLURM_TMPDIR, $TMPDIR)")
    p.add_argument("--scratch-quota-gb", type=float, default=None,
                   help="most the cache may hold on the scratch disk, GB (default: its free space; 0: no cache)")


@contextlib.contextmanager
def _flock(path: Path, stop: threading.Event, wait: bool = True, shared: bool = False):
    """Hold an exclusive (or ``shared``) flock on ``path`` (created if needed); poll so that closing the cache is
    never blocked. ``wait=False``: raise BlockingIOError at once when another job holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        while True:
            try:
                fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not wait:
                    raise
                if stop.wait(0.05):
                    raise _ClosedError from None
        yield
    finally:
        os.close(fd)


def _copy_hashing(src, dst, stop: threading.Event) -> str:
    """Copy file object ``src`` to ``dst`` and return the sha256 of what was copied."""
    h = hashlib.sha256()
    while block := src.read(CHUNK):
        if stop.is_set():
            raise _ClosedError
        h.update(block)
        dst.write(block)
    return h.hexdigest()


def _sha256_fd(fd: int, stop: threading.Event) -> str:
    h = hashlib.sha256()
    offset = 0
    while block := os.pread(fd, CHUNK, offset):
        if stop.is_set():
            raise _ClosedError
        h.update(block)
        offset += len(block)
    return h.hexdigest()


def _source_stat(src: str) -> os.stat_result:
    """The stat of ``src`` through a fresh open (nothing is read): on NFS an open revalidates the attributes with
    the server (close-to-open), where a plain stat may answer from the client's attribute cache."""
    fd = os.open(src, os.O_RDONLY)
    try:
        return os.fstat(fd)
    finally:
        os.close(fd)


def _identity(st: os.stat_result) -> list[int]:
    """A source version: device, inode, size, mtime and ctime (a list, as the ref's JSON holds it)."""
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def _racy(ref: dict, st: os.stat_result) -> bool:
    """Whether the identity in ``ref`` was recorded too soon after the source's last change to rule out a write
    within the same timestamp tick (which would leave the ctime as it was)."""
    return st.st_ctime_ns + RACY_NS > ref.get("checked_ns", 0)


class StackCache:
    """Stage files on node-local scratch in the background; see the module docstring."""

    def __init__(self, scratch_dir: str | os.PathLike | None = None, quota_bytes: int | None = None):
        self.root = Path(scratch_dir or default_scratch_dir()) / f"cryopipe-cache-{os.getuid()}"
        self.quota = quota_bytes
        self._ready: dict[str, Path] = {}
        self._queued: set[str] = set()
        self._held: list[int] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._queue: queue.Queue = queue.Queue()
        self._stats = dict(hits=0, copies=0, bytes_copied=0, corrupt=0, stale=0, not_cached=0, evicted=0,
                           source_bytes_hashed=0, staging_s=0.0, reads_cached=0, reads_source=0)
        self.enabled = quota_bytes != 0 and self._prepare()
        self._thread = threading.Thread(target=self._work, name="stack-cache", daemon=True)
        if self.enabled:
            self._thread.start()

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> StackCache:
        gb = args.scratch_quota_gb
        return cls(args.scratch_dir, None if gb is None else int(gb * 1e9))

    @classmethod
    def disabled(cls) -> StackCache:
        """A cache that caches nothing: every path is read where it is (library calls without a cache)."""
        return cls(quota_bytes=0)

    def _prepare(self) -> bool:
        try:
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
            st = self.root.lstat()
            if st.st_uid != os.getuid() or not stat.S_ISDIR(st.st_mode):
                log.warning("stack cache disabled: %s is not a folder of this user", self.root)
                return False
            os.chmod(self.root, 0o700)
            for sub in ("objects", "refs", "locks"):
                (self.root / sub).mkdir(mode=0o700, exist_ok=True)
            return True
        except OSError as exc:
            log.warning("stack cache disabled: %s", exc)
            return False

    # -- what stages call -------------------------------------------------------------------------

    def prefetch(self, paths) -> None:
        """Queue files for staging, in priority order (most-read first: those are kept when space is short)."""
        for p in paths:
            key = os.path.abspath(p)
            with self._lock:
                if not self.enabled or self._stop.is_set() or key in self._queued:
                    continue
                self._queued.add(key)
            self._queue.put(key)

    def adopt(self, paths) -> None:
        """For stages that read each stack once, before reading: use the copies this node already holds.

        Each copy is verified now and :meth:`path_for` then answers it; a stack not cached yet (or being copied
        by another job) is read from shared storage and staged in the background for the jobs that follow
        (call :meth:`wait` before :meth:`close` to finish those copies). ``paths`` in priority order.
        """
        for p in paths:
            key = os.path.abspath(p)
            with self._lock:
                if not self.enabled or self._stop.is_set() or key in self._queued:
                    continue
            t0, obj = time.perf_counter(), None
            try:
                obj = self._stage(key, copy=False)
            except (BlockingIOError, _ClosedError):
                pass
            except Exception as exc:  # noqa: BLE001 - as in the worker: a cache problem means reading the source
                log.warning("stack cache: %s read from shared storage: %s", key, exc)
            with self._lock:
                self._stats["staging_s"] += time.perf_counter() - t0
                if obj is not None:
                    self._ready[key] = obj
                    self._queued.add(key)
            if obj is None:
                self.prefetch([key])

    def path_for(self, src: str | os.PathLike) -> Path:
        """The path to read ``src`` from now: its verified local copy, else ``src`` (queued for staging)."""
        key = os.path.abspath(src)
        with self._lock:
            cached = self._ready.get(key)
            self._stats["reads_cached" if cached else "reads_source"] += 1
        if cached:
            return cached
        self.prefetch([src])
        return Path(src)

    def read(self, src: str | os.PathLike, reader, *args, **kwargs):
        """``reader(path_for(src), *args, **kwargs)``; an InputError names ``src``, not its copy."""
        path = self.path_for(src)
        try:
            return reader(path, *args, **kwargs)
        except InputError as exc:
            if path == Path(src):
                raise
            raise InputError(exc.message, src, exc.field) from None

    def wait(self) -> None:
        """Block until everything queued is staged or given up (for stages that prefer to wait)."""
        if self.enabled:
            self._queue.join()

    def stats(self) -> dict:
        """Staging statistics for the provenance record (``recorder.note(cache=cache.stats())``)."""
        with self._lock:
            cached = sum(p.stat().st_size for p in self._ready.values() if p.exists())
            return {"dir": str(self.root), "enabled": self.enabled, "quota_bytes": self.quota,
                    "files_cached": len(self._ready), "bytes_cached": cached,
                    **self._stats, "staging_s": round(self._stats["staging_s"], 3)}

    def close(self) -> None:
        """Stop staging (a copy in progress is abandoned) and release the objects this job held."""
        self._stop.set()
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        for fd in self._held:
            os.close(fd)
        self._held.clear()

    def __enter__(self) -> StackCache:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- background worker --------------------------------------------------------------------------

    def _work(self) -> None:
        while (src := self._queue.get()) is not None:
            t0, obj = time.perf_counter(), None
            try:
                obj = None if self._stop.is_set() else self._stage(src)
            except _ClosedError:
                pass
            except Exception as exc:  # noqa: BLE001 - the cache only makes reads faster; it never fails a job
                log.warning("stack cache: %s read from shared storage: %s", src, exc)
            with self._lock:
                self._stats["staging_s"] += time.perf_counter() - t0
                if obj is not None:
                    self._ready[src] = obj
                else:
                    self._stats["not_cached"] += 1
            self._queue.task_done()

    def _stage(self, src: str, copy: bool = True) -> Path | None:
        """The object holding ``src``'s current content, copied first if needed (under the source's lock).
        ``copy=False``: only one already there, checked under a shared lock (jobs, or ranks, starting together
        check at once), and BlockingIOError rather than waiting for another job's copy."""
        key = hashlib.sha256(os.path.realpath(src).encode()).hexdigest()[:32]  # names the ref and the lock
        with _flock(self.root / "locks" / f"{key}.lock", self._stop, wait=copy, shared=not copy):
            checked_ns = time.time_ns()  # before the stat: a write after it gets a later ctime (see RACY_NS)
            st = _source_stat(src)
            return self._lookup(src, key, st, checked_ns) or (self._copy(src, key, st, checked_ns) if copy else None)

    def _hold(self, obj: Path) -> int | None:
        """Open ``obj`` with a shared lock (so no job evicts it while in use); None when it is gone."""
        try:
            fd = os.open(obj, os.O_RDONLY)
        except FileNotFoundError:
            return None
        fcntl.flock(fd, fcntl.LOCK_SH)
        try:
            if os.stat(obj).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)
        return None

    def _lookup(self, src: str, key: str, st: os.stat_result, checked_ns: int) -> Path | None:
        """The object the ref of ``key`` names, if it holds ``src``'s current content (see the module docstring).
        The source's identity is the one recorded (and was not recorded within RACY_NS of its ctime): only the
        object's own bytes are checked, locally. Otherwise the source is read once, hashed and compared with the
        object; the same content is used and its identity recorded. Else None and the ref is dropped: a stale ref
        (source changed; the object stays for whatever else has that content) or a corrupted object (deleted)."""
        ref_path = self.root / "refs" / f"{key}.json"
        try:
            ref = json.loads(ref_path.read_text())
            obj, digest = self.root / "objects" / ref["object"], ref["sha256"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        fd = self._hold(obj)
        if fd is None:
            return None
        ident = _identity(st)
        trusted = ref.get("identity") == ident and not _racy(ref, st)
        try:
            if trusted:
                same = intact = self._intact(fd, ref, digest)
            else:
                same = self._matches_source(src, fd, digest, st.st_size)
                intact = same or self._intact(fd, ref, digest)
                if same and _identity(_source_stat(src)) != ident:
                    os.close(fd)
                    log.warning("stack cache: %s changed while being checked; reading it from shared storage", src)
                    return None
        except BaseException:
            os.close(fd)
            raise
        if same:
            if not trusted:  # the source has the object's content: the next job need not read it
                self._write_ref(key, {**ref, "identity": ident, "checked_ns": checked_ns})
            self._held.append(fd)
            os.utime(obj)  # least recently used goes first
            with self._lock:
                self._stats["hits"] += 1
            return obj
        os.close(fd)
        ref_path.unlink(missing_ok=True)
        if intact:
            log.warning("stack cache: %s no longer has the content of its copy (rewritten in place?); "
                        "reading it from shared storage", src)
            with self._lock:
                self._stats["stale"] += 1
        else:
            log.warning("stack cache: %s is corrupted; copying again", obj)
            with self._lock:
                self._stats["corrupt"] += 1
            obj.unlink(missing_ok=True)
        return None

    def _intact(self, fd: int, ref: dict, digest: str) -> bool:
        """Whether the object open as ``fd`` has its recorded size and its bytes hash to its name (a local read)."""
        return os.fstat(fd).st_size == ref.get("size") and _sha256_fd(fd, self._stop) == digest

    def _write_ref(self, key: str, ref: dict) -> None:
        """Replace the ref of ``key`` atomically (jobs holding the shared lock may write it at once)."""
        fd, tmp = tempfile.mkstemp(prefix=f"{key}.", suffix=".part", dir=self.root / "refs")
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(json.dumps(ref))
            os.replace(tmp, self.root / "refs" / f"{key}.json")
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def _matches_source(self, src: str, fd: int, digest: str, size: int) -> bool:
        """Whether the object open as ``fd`` has exactly ``src``'s bytes and they hash to ``digest``: one read of
        the source (hashed) and of the object (compared), stopping at the first difference."""
        if os.fstat(fd).st_size != size:
            return False
        h, offset = hashlib.sha256(), 0
        try:
            with open(src, "rb") as fin:
                if os.fstat(fin.fileno()).st_size != size:
                    return False
                while block := fin.read(CHUNK):
                    if self._stop.is_set():
                        raise _ClosedError
                    if os.pread(fd, len(block), offset) != block:
                        return False
                    h.update(block)
                    offset += len(block)
        finally:
            with self._lock:
                self._stats["source_bytes_hashed"] += offset
        return offset == size and h.hexdigest() == digest

    def _copy(self, src: str, key: str, st: os.stat_result, checked_ns: int) -> Path | None:
        part = self.root / "objects" / f"{key}.part"
        with _flock(self.root / "locks" / "space.lock", self._stop):
            if not self._make_room(st.st_size, part):
                log.info("stack cache: no room for %s (%d bytes); reading it from shared storage", src, st.st_size)
                return None
            fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                if st.st_size:
                    os.posix_fallocate(fd, 0, st.st_size)
            except OSError as exc:
                os.close(fd)
                part.unlink(missing_ok=True)
                if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                    raise
                return None
        try:
            with os.fdopen(fd, "wb") as fout, open(src, "rb") as fin:
                digest = _copy_hashing(fin, fout, self._stop)
                copied = fout.tell()
            with self._lock:
                self._stats["source_bytes_hashed"] += copied
            if copied != st.st_size or _identity(_source_stat(src)) != _identity(st):  # size, mtime, ctime, inode
                log.warning("stack cache: %s changed while being copied; not cached", src)
                part.unlink()
                return None
            obj, fd = self._place(part, digest, copied, Path(src).suffix)
        except BaseException:
            part.unlink(missing_ok=True)
            raise
        self._write_ref(key, {"object": obj.name, "sha256": digest, "size": copied, "source": os.path.realpath(src),
                              "identity": _identity(st), "checked_ns": checked_ns})
        if fd is None:
            return None
        self._held.append(fd)
        with self._lock:
            self._stats["copies"] += 1
            self._stats["bytes_copied"] += copied
        return obj

    def _place(self, part: Path, digest: str, size: int, suffix: str) -> tuple[Path, int | None]:
        """Put the finished copy ``part`` in place as the object of ``digest`` and hold it. An object of that
        content already there (another source, or an earlier version of this one) is kept if it verifies: jobs
        reading it keep their file; a corrupted one is replaced."""
        obj = self.root / "objects" / f"{digest}{suffix}"
        try:
            os.link(part, obj)
        except FileExistsError:
            fd = self._hold(obj)
            if fd is not None:
                try:
                    good = os.fstat(fd).st_size == size and _sha256_fd(fd, self._stop) == digest
                except BaseException:
                    os.close(fd)
                    raise
                if good:
                    part.unlink()
                    os.utime(obj)
                    return obj, fd
                os.close(fd)
                log.warning("stack cache: %s is corrupted; replacing it", obj)
                with self._lock:
                    self._stats["corrupt"] += 1
            os.replace(part, obj)
        except OSError:  # a scratch file system without hard links
            os.replace(part, obj)
        else:
            part.unlink()
        return obj, self._hold(obj)

    def _make_room(self, size: int, part: Path) -> bool:
        """Evict least recently used unheld objects (and abandoned .part files) until ``size`` more fits."""
        entries = []
        for p in (self.root / "objects").iterdir():
            with contextlib.suppress(FileNotFoundError):
                if p != part:  # our own key's leftover is overwritten, not added to
                    entries.append((p.stat().st_mtime_ns, p.stat().st_size, p))
        used = sum(e[1] for e in entries)
        vfs = os.statvfs(part.parent)
        free = vfs.f_bavail * vfs.f_frsize - min(RESERVE_BYTES, vfs.f_blocks * vfs.f_frsize // 20)
        quota = float("inf") if self.quota is None else self.quota
        for _, nbytes, p in sorted(entries):
            if used + size <= quota and size <= free:
                break
            # an object is locked by the jobs reading it; a .part by its key's lock while being copied
            try:
                fd = os.open(self.root / "locks" / f"{p.stem}.lock" if p.suffix == ".part" else p, os.O_RDONLY)
            except FileNotFoundError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                p.unlink(missing_ok=True)
            except BlockingIOError:
                continue
            finally:
                os.close(fd)
            used, free = used - nbytes, free + nbytes
            with self._lock:
                self._stats["evicted"] += 1
        return used + size <= quota and size <= free


@contextlib.contextmanager
def stage_cache(args: argparse.Namespace, recorder=None, comm=None):
    """The cache a stage's flags ask for (:func:`add_arguments`). On a clean exit it finishes the copies under way
    (the next job on this node reads them), closes, and puts its statistics in the provenance record: ``cache`` =
    :meth:`StackCache.stats` (hits, copies, bytes copied, staging seconds, reads from copies and from shared
    storage), a list of one per rank under MPI (collective: every rank of ``comm`` must get there)."""
    cache = StackCache.from_args(args)
    try:
        yield cache
        cache.wait()
    finally:
        cache.close()
    stats = cache.stats()
    if comm is not None and comm.Get_size() > 1:
        stats = comm.gather(stats, root=0)
    if recorder is not None:
        recorder.note(cache=stats)
