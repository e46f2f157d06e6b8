"""Node-local stack cache: jobs are separate processes sharing one scratch folder, as on a node."""

import argparse
import builtins
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cryopipe import cache as cache_module
from cryopipe.cache import RACY_NS, StackCache, add_arguments, default_scratch_dir
from cryopipe.provenance import Recorder

MB = 1 << 20

JOB = """
import json, sys
from cryopipe import cache as cache_module
from cryopipe.cache import RACY_NS, StackCache, add_arguments, default_scratch_dir

scratch, quota, *files = sys.argv[1:]
with StackCache(scratch, None if quota == "none" else int(quota)) as cache:
    cache.prefetch(files)
    cache.wait()
    print(json.dumps({"paths": [str(cache.path_for(f)) for f in files], "stats": cache.stats()}))
"""

# A job whose copy stops after one chunk (and says so) until it is killed.
STALLED = """
import sys, time
from pathlib import Path
import cryopipe.cache as cache

def stall(src, dst, stop):
    dst.write(src.read(cache.CHUNK))
    dst.flush()
    Path(sys.argv[3]).touch()
    time.sleep(600)

cache._copy_hashing = stall
c = cache.StackCache(sys.argv[1])
c.prefetch([sys.argv[2]])
c.wait()
"""


def job(scratch: Path, *files: Path, quota: int | None = None) -> dict:
    limit = "none" if quota is None else str(quota)
    proc = subprocess.run([sys.executable, "-c", JOB, str(scratch), limit, *map(str, files)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture
def stacks(tmp_path):
    """make(name, megabytes) writes a seeded random 'stack' on the 'shared storage'."""
    shared = tmp_path / "shared"
    shared.mkdir()
    rng = np.random.default_rng(7)

    def make(name: str, mb: float) -> Path:
        path = shared / name
        path.write_bytes(rng.bytes(int(mb * MB)))
        return path

    return make


def objects(scratch: Path) -> Path:
    return scratch / f"cryopipe-cache-{os.getuid()}" / "objects"


def test_first_pass_reads_shared_storage_while_the_copy_fills(tmp_path, stacks):
    src = stacks("a.mrcs", 2)
    with StackCache(tmp_path / "scratch") as cache:
        first = cache.path_for(src)
        cache.wait()
        second = cache.path_for(src)
        stats = cache.stats()
    assert first == src
    assert second.parent == objects(tmp_path / "scratch") and second.suffix == ".mrcs"
    assert second.read_bytes() == src.read_bytes()
    assert (stats["reads_source"], stats["reads_cached"], stats["copies"], stats["bytes_copied"]) == (1, 1, 1, 2 * MB)
    assert stats["staging_s"] > 0
    assert (objects(tmp_path / "scratch").parent.stat().st_mode & 0o777) == 0o700


def test_second_job_reuses_the_copy(tmp_path, stacks):
    files = [stacks("a.mrcs", 1), stacks("b.mrcs", 1)]
    one, two = job(tmp_path / "scratch", *files), job(tmp_path / "scratch", *files)
    assert (one["stats"]["copies"], one["stats"]["bytes_copied"], one["stats"]["hits"]) == (2, 2 * MB, 0)
    assert (two["stats"]["copies"], two["stats"]["bytes_copied"], two["stats"]["hits"]) == (0, 0, 2)
    assert two["paths"] == one["paths"] and all(Path(p).parent == objects(tmp_path / "scratch") for p in two["paths"])


@pytest.mark.parametrize("damage", ["flip a byte", "truncate"])
def test_corrupted_copy_is_detected_and_copied_again(tmp_path, stacks, damage):
    src = stacks("a.mrcs", 3)
    cached = Path(job(tmp_path / "scratch", src)["paths"][0])
    with open(cached, "r+b") as fh:
        if damage == "truncate":
            fh.truncate(MB)
        else:
            fh.seek(2 * MB + 12345)
            byte = fh.read(1)
            fh.seek(-1, 1)
            fh.write(bytes([byte[0] ^ 1]))
    again = job(tmp_path / "scratch", src)
    assert (again["stats"]["corrupt"], again["stats"]["copies"], again["stats"]["hits"]) == (1, 1, 0)
    assert Path(again["paths"][0]).read_bytes() == src.read_bytes()


def rewrite_in_place_keeping_mtime(path: Path, offset: int) -> bytes:
    """Overwrite 4 KiB of ``path`` at ``offset`` (same file, same size), put its mtime back; the new content."""
    st = path.stat()
    with open(path, "r+b") as fh:
        fh.seek(offset)
        old = fh.read(4096)
        fh.seek(offset)
        fh.write(bytes(b ^ 0xFF for b in old))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    return path.read_bytes()


@pytest.mark.parametrize("record", [False, True], ids=["no-record", "producer-record"])
def test_stack_rewritten_in_place_with_its_mtime_kept_is_not_served_stale(tmp_path, stacks, record):
    scratch, src = tmp_path / "scratch", stacks("a.mrcs", 3)
    if record:  # the producing stage's provenance.json lists the stack, sha256 and size: it is of the old content
        rec = Recorder(src.parent, "test", {})
        rec.add_output(src)
        rec.write()
        os.utime(rec.path, ns=(src.stat().st_mtime_ns + 10**9,) * 2)  # written after the stack, as a stage does
    old = src.read_bytes()
    first = job(scratch, src)
    assert Path(first["paths"][0]).read_bytes() == old
    new = rewrite_in_place_keeping_mtime(src, 3 * MB // 2)
    assert new != old
    second = job(scratch, src)
    assert Path(second["paths"][0]).read_bytes() == new
    assert (second["stats"]["stale"], second["stats"]["hits"], second["stats"]["corrupt"]) == (1, 0, 0)
    assert second["stats"]["copies"] == 1 and second["stats"]["source_bytes_hashed"] >= 3 * MB
    third = job(scratch, src)  # the new content's copy is used from now on; the old one is left for LRU eviction
    assert Path(third["paths"][0]).read_bytes() == new
    assert (third["stats"]["hits"], third["stats"]["stale"], third["stats"]["copies"]) == (1, 0, 0)
    assert job(scratch, src, quota=0)["paths"] == [str(src)]


def ref_of(scratch: Path) -> dict:
    (ref,) = (objects(scratch).parent / "refs").glob("*.json")
    return json.loads(ref.read_text())


def identity(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def let_timestamps_settle() -> None:
    """Wait until what was just written is older than RACY_NS: an identity recorded now is trusted as it is."""
    time.sleep(RACY_NS / 1e9 + 0.05)


def test_job_with_unchanged_stacks_reads_nothing_from_shared_storage(tmp_path, stacks, monkeypatch):
    scratch, files = tmp_path / "scratch", [stacks("a.mrcs", 3), stacks("b.mrcs", 1)]
    let_timestamps_settle()  # the stacks were written a while ago, as a producing stage's are
    first = job(scratch, *files)  # another job on this node copied them
    assert (first["stats"]["copies"], first["stats"]["source_bytes_hashed"]) == (2, 4 * MB)
    sources, data_opens, stat_opens = {str(f) for f in files}, [], []
    real_open, real_os_open = builtins.open, os.open

    def counting_open(file, *args, **kwargs):  # what the cache reads files with
        if os.fspath(file) in sources:
            data_opens.append(os.fspath(file))
        return real_open(file, *args, **kwargs)

    def counting_os_open(path, *args, **kwargs):  # the open through which a source's identity is taken
        if os.fspath(path) in sources:
            stat_opens.append(os.fspath(path))
        return real_os_open(path, *args, **kwargs)

    monkeypatch.setattr(cache_module, "open", counting_open, raising=False)
    monkeypatch.setattr(os, "open", counting_os_open)
    with StackCache(scratch) as cache:  # the second job, as a stage runs it
        cache.adopt(files)
        paths = [cache.path_for(f) for f in files]
        cache.wait()
        stats = cache.stats()
    monkeypatch.undo()
    assert paths == [Path(p) for p in first["paths"]] and [p.read_bytes() for p in paths] == [
        f.read_bytes() for f in files]
    assert (stats["hits"], stats["copies"], stats["stale"], stats["corrupt"], stats["reads_cached"]) == (2, 0, 0, 0, 2)
    assert stats["source_bytes_hashed"] == 0
    assert data_opens == []  # no source was opened for reading its bytes...
    assert sorted(stat_opens) == sorted(sources)  # ...only once each, to take its identity (nothing read)


def test_utime_alone_is_checked_once_and_keeps_the_copy(tmp_path, stacks):
    scratch, src = tmp_path / "scratch", stacks("a.mrcs", 3)
    first = job(scratch, src)
    recorded = ref_of(scratch)
    assert recorded["identity"] == identity(src)
    st = src.stat()
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns))  # content, size and mtime as they were; ctime is now
    assert identity(src)[:4] == recorded["identity"][:4] and identity(src)[4] != recorded["identity"][4]
    let_timestamps_settle()
    second = job(scratch, src)  # the ctime differs: the source is hashed once, matches, and the copy is kept
    assert second["paths"] == first["paths"] and Path(second["paths"][0]).read_bytes() == src.read_bytes()
    assert (second["stats"]["hits"], second["stats"]["copies"], second["stats"]["bytes_copied"],
            second["stats"]["stale"], second["stats"]["corrupt"]) == (1, 0, 0, 0, 0)
    assert second["stats"]["source_bytes_hashed"] == 3 * MB
    updated = ref_of(scratch)
    assert updated["identity"] == identity(src) and updated["object"] == recorded["object"]
    third = job(scratch, src)
    assert third["paths"] == first["paths"]
    assert (third["stats"]["hits"], third["stats"]["copies"], third["stats"]["source_bytes_hashed"]) == (1, 0, 0)


def test_identity_recorded_right_after_a_change_is_checked_again(tmp_path, stacks):
    """Within RACY_NS of the source's last change, a write in the same timestamp tick could keep its identity:
    the next job hashes the source rather than trusting the ref (and records it again)."""
    scratch, src = tmp_path / "scratch", stacks("a.mrcs", 2)
    job(scratch, src)  # the stack was written a moment ago
    assert identity(src)[4] + RACY_NS > ref_of(scratch)["checked_ns"]
    second = job(scratch, src)
    assert (second["stats"]["hits"], second["stats"]["copies"], second["stats"]["source_bytes_hashed"]) == (
        1, 0, 2 * MB)


def test_identical_stacks_share_one_copy(tmp_path, stacks):
    scratch, a = tmp_path / "scratch", stacks("a.mrcs", 2)
    b = a.with_name("b.mrcs")
    b.write_bytes(a.read_bytes())
    one, two = job(scratch, a), job(scratch, b)
    assert two["paths"] == one["paths"] and Path(two["paths"][0]).read_bytes() == b.read_bytes()
    assert (two["stats"]["hits"], two["stats"]["corrupt"]) == (0, 0)  # b was read once, and matched a's copy
    assert [p.suffix for p in objects(scratch).iterdir()] == [".mrcs"]
    assert job(scratch, b)["stats"]["hits"] == 1


def test_small_quota_caches_what_fits_and_reads_the_rest_from_shared_storage(tmp_path, stacks):
    a, b, c = stacks("a.mrcs", 3), stacks("b.mrcs", 1), stacks("c.mrcs", 2)
    out = job(tmp_path / "scratch", a, b, c, quota=4 * MB)
    assert out["paths"][2] == str(c)
    assert [Path(p).read_bytes() for p in out["paths"]] == [a.read_bytes(), b.read_bytes(), c.read_bytes()]
    assert (out["stats"]["copies"], out["stats"]["not_cached"], out["stats"]["bytes_cached"]) == (2, 1, 4 * MB)
    off = job(tmp_path / "off", a, quota=0)
    assert off["paths"] == [str(a)] and off["stats"]["enabled"] is False


def test_least_recently_used_goes_first_and_objects_in_use_stay(tmp_path, stacks):
    scratch = tmp_path / "scratch"
    a, b, c = stacks("a.mrcs", 2), stacks("b.mrcs", 2), stacks("c.mrcs", 2)
    job(scratch, a, b, quota=4 * MB)
    time.sleep(0.05)
    job(scratch, a, quota=4 * MB)  # a is used again: b is now the least recently used
    out = job(scratch, c, quota=4 * MB)
    assert out["stats"]["evicted"] == 1 and job(scratch, a, quota=4 * MB)["stats"]["hits"] == 1
    with StackCache(scratch, 4 * MB) as holder:  # a and c held by a running job: nothing can go
        holder.prefetch([a, c])
        holder.wait()
        blocked = job(scratch, b, quota=4 * MB)
    assert blocked["paths"] == [str(b)] and blocked["stats"]["evicted"] == 0


def test_two_concurrent_jobs_copy_a_file_once(tmp_path, stacks):
    src = stacks("big.mrcs", 128)
    cmd = [sys.executable, "-c", JOB, str(tmp_path / "scratch"), "none", str(src)]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [json.loads(p.communicate(timeout=120)[0]) for p in procs]
    assert sorted(o["stats"]["copies"] for o in outs) == [0, 1]
    assert sorted(o["stats"]["hits"] for o in outs) == [0, 1]
    assert outs[0]["paths"] == outs[1]["paths"] and Path(outs[0]["paths"][0]).read_bytes() == src.read_bytes()


def test_job_killed_mid_copy_leaves_nothing_trusted(tmp_path, stacks):
    scratch, src, started = tmp_path / "scratch", stacks("a.mrcs", 3), tmp_path / "copy-started"
    proc = subprocess.Popen([sys.executable, "-c", STALLED, str(scratch), str(src), str(started)])
    deadline = time.monotonic() + 60
    while not started.exists():
        assert proc.poll() is None and time.monotonic() < deadline, "stalled job did not start copying"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    left = list(objects(scratch).iterdir())
    assert [p.suffix for p in left] == [".part"] and left[0].stat().st_size == 3 * MB  # space was reserved
    assert not list((objects(scratch).parent / "refs").iterdir())
    out = job(scratch, src)
    assert (out["stats"]["copies"], out["stats"]["hits"], out["stats"]["corrupt"]) == (1, 0, 0)
    assert Path(out["paths"][0]).read_bytes() == src.read_bytes()
    assert [p.suffix for p in objects(scratch).iterdir()] == [".mrcs"]


def test_closing_mid_copy_returns_and_leaves_no_partial_file(tmp_path, stacks):
    src = stacks("big.mrcs", 64)
    cache = StackCache(tmp_path / "scratch")
    cache.prefetch([src])
    time.sleep(0.01)
    cache.close()
    assert cache.path_for(src) == src
    assert not [p for p in objects(tmp_path / "scratch").iterdir() if p.suffix == ".part"]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make a folder owned by another user")
def test_cache_folder_of_another_user_is_not_used(tmp_path, stacks):
    src = stacks("a.mrcs", 1)
    root = objects(tmp_path / "scratch").parent
    root.mkdir(parents=True)
    os.chown(root, 65534, 65534)
    with StackCache(tmp_path / "scratch") as cache:
        cache.prefetch([src])
        cache.wait()
        assert cache.path_for(src) == src and cache.stats()["enabled"] is False


def test_stage_flags_and_default_scratch(tmp_path, monkeypatch):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    monkeypatch.delenv("SLURM_TMPDIR", raising=False)
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    assert default_scratch_dir() == tmp_path / "tmp"
    monkeypatch.setenv("SLURM_TMPDIR", str(tmp_path / "job"))
    with StackCache.from_args(parser.parse_args([])) as cache:
        assert cache.root.parent == tmp_path / "job" and cache.quota is None and cache.enabled
    args = parser.parse_args(["--scratch-dir", str(tmp_path / "s"), "--scratch-quota-gb", "0.5"])
    with StackCache.from_args(args) as cache:
        assert cache.root.parent == tmp_path / "s" and cache.quota == 500_000_000
    with StackCache.from_args(parser.parse_args(["--scratch-quota-gb", "0"])) as cache:
        assert not cache.enabled
