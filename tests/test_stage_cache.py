"""The particle stages read their stacks through the node-local cache: the second job on a node reads the
copy, a damaged copy is never used, and errors name the user's file, not the copy."""

import builtins
import os
import time

import numpy as np
import pandas as pd
import pytest

from cryopipe import cache as cache_module
from cryopipe.bioem import stage as bioem_stage
from cryopipe.cache import RACY_NS, StackCache
from cryopipe.em3d.particles import load_particles
from cryopipe.errors import InputError
from cryopipe.io.mrc import write_mrc
from cryopipe.io.star import write_star


@pytest.fixture
def particles(tmp_path, rng):
    """A particles STAR over three 32 px stacks of 10 noise images each (2 A/px)."""
    data = tmp_path / "data"
    data.mkdir()
    names = []
    for s in range(3):
        write_mrc(data / f"stack{s}.mrcs", rng.normal(size=(10, 32, 32)).astype(np.float32), 2.0, stack=True)
        names += [f"{i + 1:06d}@data/stack{s}.mrcs" for i in range(10)]
    star = tmp_path / "particles.star"
    write_star(star, {"optics": pd.DataFrame({"rlnOpticsGroup": [1], "rlnImagePixelSize": [2.0]}),
                      "particles": pd.DataFrame({"rlnImageName": names, "rlnOpticsGroup": 1})})
    return star


def _job(scratch, star, **kw):
    """One 'job': load the particles through a cache on ``scratch``; return the images and the cache stats."""
    with StackCache(scratch) as cache:
        ps = load_particles(star, use_ctf=False, cache=cache, **kw)
        cache.wait()
    return ps.spectra, cache.stats()


def test_second_job_reads_the_node_copy_and_gets_the_same_images(particles, tmp_path):
    plain = load_particles(particles, use_ctf=False).spectra
    first, s1 = _job(tmp_path / "scratch", particles)
    # the first job stages all three (a stack may already be read from its copy if that was ready in time)
    assert (s1["copies"], s1["hits"], s1["reads_source"] + s1["reads_cached"]) == (3, 0, 3)
    second, s2 = _job(tmp_path / "scratch", particles)
    assert (s2["reads_cached"], s2["reads_source"], s2["hits"], s2["copies"]) == (3, 0, 3, 0)
    np.testing.assert_array_equal(first, plain)
    np.testing.assert_array_equal(second, plain)


def test_second_job_reads_no_stack_from_shared_storage_through_the_cache(particles, tmp_path, monkeypatch):
    time.sleep(RACY_NS / 1e9 + 0.05)  # the stacks were written a while ago, as the extract stage's are
    _job(tmp_path / "scratch", particles)
    data = tmp_path / "data"
    opened, real_open = [], builtins.open

    def counting_open(file, *args, **kwargs):  # what the cache reads (hashes, copies) a source with
        if os.path.dirname(os.path.abspath(file)) == str(data):
            opened.append(os.fspath(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(cache_module, "open", counting_open, raising=False)
    images, stats = _job(tmp_path / "scratch", particles)
    monkeypatch.undo()
    assert opened == []  # (the stage itself still reads each stack's MRC header from shared storage)
    assert (stats["hits"], stats["reads_cached"], stats["source_bytes_hashed"], stats["copies"]) == (3, 3, 0, 0)
    np.testing.assert_array_equal(images, load_particles(particles, use_ctf=False).spectra)


def test_a_rank_stages_only_the_stacks_it_reads(particles, tmp_path):
    _, stats = _job(tmp_path / "scratch", particles, share=(0, 3))  # rank 0 of 3: particles 0-9 = stack0
    assert stats["copies"] == 1 and stats["reads_source"] + stats["reads_cached"] == 1


def test_damaged_copy_is_not_used_and_is_replaced(particles, tmp_path):
    _job(tmp_path / "scratch", particles)
    obj = sorted((next((tmp_path / "scratch").glob("cryopipe-cache-*")) / "objects").iterdir())[0]
    raw = bytearray(obj.read_bytes())
    raw[-5] ^= 0xFF
    obj.write_bytes(bytes(raw))
    images, stats = _job(tmp_path / "scratch", particles)
    assert (stats["corrupt"], stats["hits"], stats["copies"]) == (1, 2, 1)
    np.testing.assert_array_equal(images, load_particles(particles, use_ctf=False).spectra)
    _, again = _job(tmp_path / "scratch", particles)
    assert (again["hits"], again["corrupt"]) == (3, 0)


def test_error_in_a_cached_stack_names_the_users_file(particles, tmp_path):
    bad = tmp_path / "data" / "stack1.mrcs"
    images = np.zeros((10, 32, 32), np.float32)
    images[4, 3, 3] = np.nan
    write_mrc(bad, images, 2.0, stack=True)
    with StackCache(tmp_path / "scratch") as cache:  # an earlier job staged the stacks
        cache.prefetch([bad])
        cache.wait()
    for load in (lambda c: load_particles(particles, use_ctf=False, cache=c),
                 lambda c: bioem_stage.load_particles(particles, cache=c)):
        with StackCache(tmp_path / "scratch") as cache, pytest.raises(InputError) as err:
            load(cache)
        assert err.value.path == str(bad.resolve()) or err.value.path == str(bad)
        assert cache.stats()["reads_cached"] >= 1


def test_bioem_particles_through_the_cache(particles, tmp_path):
    plain = bioem_stage.load_particles(particles).images
    for expected_hits in (0, 3):
        with StackCache(tmp_path / "scratch") as cache:
            ds = bioem_stage.load_particles(particles, cache=cache)
            cache.wait()
        assert cache.stats()["hits"] == expected_hits
        np.testing.assert_array_equal(ds.images, plain)


LOADERS = {"em3d": lambda star, cache: load_particles(star, use_ctf=False, cache=cache).spectra,
           "bioem": lambda star, cache: bioem_stage.load_particles(star, cache=cache).images}


@pytest.mark.parametrize("loader", LOADERS)
def test_stack_rewritten_in_place_with_its_mtime_kept_gives_the_new_images(particles, tmp_path, rng, loader):
    load = LOADERS[loader]

    def job():
        with StackCache(tmp_path / "scratch") as cache:
            images = load(particles, cache)
            cache.wait()
        return images, cache.stats()

    before, _ = job()  # the node now holds copies of the three stacks
    stack = tmp_path / "data" / "stack1.mrcs"
    st = stack.stat()
    fresh = tmp_path / "fresh.mrcs"
    write_mrc(fresh, rng.normal(size=(10, 32, 32)).astype(np.float32), 2.0, stack=True)
    assert fresh.stat().st_size == st.st_size
    with open(stack, "r+b") as fh:  # in place: the same file, the same size...
        fh.write(fresh.read_bytes())
    os.utime(stack, ns=(st.st_atime_ns, st.st_mtime_ns))  # ...and the same mtime
    assert (stack.stat().st_ino, stack.stat().st_size, stack.stat().st_mtime_ns) == (st.st_ino, st.st_size,
                                                                                     st.st_mtime_ns)
    with StackCache(tmp_path / "off", quota_bytes=0) as off:  # --scratch-quota-gb 0
        expected = load(particles, off)
    assert not np.array_equal(expected, before)
    after, stats = job()
    np.testing.assert_array_equal(after, expected)
    assert (stats["stale"], stats["hits"], stats["corrupt"], stats["copies"]) == (1, 2, 0, 1)
    again, stats = job()
    np.testing.assert_array_equal(again, expected)
    assert (stats["hits"], stats["stale"], stats["reads_cached"]) == (3, 0, 3)
