"""The particle stages read their stacks through the node-local cache: the second job on a node reads the
copy, a damaged copy is never used, and errors name the user's file, not the copy."""

import numpy as np
import pandas as pd
import pytest

from cryopipe.bioem import stage as bioem_stage
from cryopipe.cache import StackCache
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
