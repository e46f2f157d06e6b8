"""The shared particle source (cryopipe.particles): one reader of particle STAR files and their stacks for class2d,
class3d, refine3d and bioem; its checks name the file and the field; the stages' loaders serve the same pixels."""

from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest

from cryopipe.bioem import stage as bioem_stage
from cryopipe.cache import StackCache
from cryopipe.em3d.particles import load_particles as load_em3d
from cryopipe.errors import InputError
from cryopipe.io.mrc import read_mrc, write_mrc
from cryopipe.io.star import parse_image_name, read_particles, read_star, write_star
from cryopipe.particles import ParticleSet, open_particles

N, ANGPIX = 16, 2.0


def _write(folder, rng, stacks=(5, 4), box=N, optics_extra=None, particle_extra=None, header_angpix=ANGPIX):
    """Stacks s0.mrcs, s1.mrcs ... of noise images and a particles STAR naming them, interleaved (s0, s1, s0, ...)
    so that a stack's particles are not contiguous. Returns (STAR path, {stack file name: images})."""
    images, names = {}, []
    for s, count in enumerate(stacks):
        path = folder / f"s{s}.mrcs"
        images[path.name] = rng.normal(size=(count, box, box)).astype(np.float32)
        write_mrc(path, images[path.name], ANGPIX, stack=True)
        if header_angpix != ANGPIX:
            with mrcfile.open(path, "r+") as mrc:
                mrc.voxel_size = header_angpix
    left = {s: list(range(c)) for s, c in enumerate(stacks)}
    while any(left.values()):
        for s in left:
            if left[s]:
                names.append(f"{left[s].pop(0) + 1}@s{s}.mrcs")
    n = len(names)
    optics = pd.DataFrame({"rlnOpticsGroup": [1, 2], "rlnOpticsGroupName": ["g1", "g2"],
                           "rlnImagePixelSize": [ANGPIX, ANGPIX], "rlnImageSize": [box, box],
                           "rlnVoltage": [300.0, 200.0], "rlnSphericalAberration": [2.7, 2.7],
                           "rlnAmplitudeContrast": [0.1, 0.1], **(optics_extra or {})})
    parts = pd.DataFrame({"rlnImageName": names, "rlnOpticsGroup": np.arange(n) % 2 + 1,
                          "rlnDefocusU": np.linspace(1e4, 2e4, n), "rlnDefocusV": np.linspace(1e4, 2e4, n) - 100,
                          "rlnDefocusAngle": np.full(n, 30.0), "rlnAngleRot": np.arange(n, dtype=float),
                          "rlnAngleTilt": np.full(n, 90.0), "rlnAnglePsi": np.zeros(n),
                          "rlnOriginXAngst": np.full(n, 4.0), **(particle_extra or {})})
    write_star(folder / "particles.star", {"optics": optics, "particles": parts})
    return folder / "particles.star", images


def _expected(star, images):
    """The images of the particles in STAR order, one by one."""
    index, stacks = parse_image_name(read_particles(star)["rlnImageName"], star)
    return np.stack([images[Path(s).name][i] for i, s in zip(index, stacks, strict=True)])


def test_metadata_without_pixels_then_the_shares_images(tmp_path, rng):
    star, images = _write(tmp_path, rng)
    ps = open_particles(star, ctf=True, share=(1, 2))
    assert isinstance(ps, ParticleSet) and ps.images is None and ps.spectra is None
    assert (len(ps), ps.box, ps.angpix, ps.path, ps.n_groups) == (9, N, ANGPIX, str(star), 2)
    np.testing.assert_array_equal(ps.group, np.arange(9) % 2)
    np.testing.assert_array_equal(ps.rows, [5, 6, 7, 8])  # the second of two contiguous shares
    np.testing.assert_array_equal(ps.ctf.voltage, np.where(np.arange(9) % 2, 200.0, 300.0))
    np.testing.assert_array_equal(ps.ctf_subset([0, 3]).defocus_u, ps.ctf.defocus_u[[0, 3]])
    np.testing.assert_array_equal(ps.angles()[:, 0], np.arange(9))
    np.testing.assert_array_equal(ps.origins_px(), np.column_stack([np.full(9, 2.0), np.zeros(9)]))
    expected = _expected(star, images)
    np.testing.assert_array_equal(ps.read_images(), expected[5:])
    full = ps.read_images(rows=np.arange(9), dtype=np.float64)
    assert full.dtype == np.float64
    np.testing.assert_array_equal(full, expected)
    seen = []
    for k, data in ps.iter_stacks():  # one read per stack, positions ascending within it
        assert np.all(np.diff(k) > 0) and data.dtype == np.float32
        seen += list(ps.rows[k])
    assert sorted(seen) == [5, 6, 7, 8] and len(seen) == 4


def test_the_stages_loaders_serve_the_same_pixels(tmp_path, rng):
    star, images = _write(tmp_path, rng)
    expected = _expected(star, images)
    em3d = load_em3d(star, share=(0, 2))
    assert isinstance(em3d, ParticleSet)
    half = np.fft.rfft2(np.fft.ifftshift(expected[:5].astype(np.float64), axes=(-2, -1)))  # em3d's are single
    np.testing.assert_allclose(em3d.spectra[:5], half, rtol=0, atol=1e-5 * np.abs(half).max())
    assert not em3d.spectra[5:].any()  # the other rank's
    ds = bioem_stage.load_particles(star)
    assert isinstance(ds, ParticleSet) and ds.images.dtype == np.float64
    np.testing.assert_array_equal(ds.images, expected)
    with StackCache(tmp_path / "scratch") as cache:
        first = open_particles(star).read_images(cache)
        cache.wait()
    with StackCache(tmp_path / "scratch") as cache:
        again = open_particles(star).read_images(cache)
        assert cache.stats()["reads_cached"] == 2 and cache.stats()["reads_source"] == 0
    np.testing.assert_array_equal(first, expected)
    np.testing.assert_array_equal(again, expected)


def _mixed_box(folder, rng):
    """Three particles of a 16 px stack, the last one of a 12 px stack (no rlnImageSize)."""
    star, _ = _write(folder, rng, stacks=(3,))
    write_mrc(folder / "s1.mrcs", np.zeros((2, 12, 12), np.float32), ANGPIX, stack=True)
    blocks = read_star(star)
    blocks["optics"] = blocks["optics"].drop(columns=["rlnImageSize"])
    blocks["particles"].loc[2, "rlnImageName"] = "1@s1.mrcs"
    write_star(star, blocks)
    return star


def _edit(folder, rng, block, column, value):
    """The STAR of :func:`_write` with ``column`` of ``block`` set to ``value`` (None: dropped)."""
    star, _ = _write(folder, rng)
    blocks = read_star(star)
    if value is None:
        blocks[block] = blocks[block].drop(columns=[column])
    else:
        blocks[block][column] = value
    write_star(star, blocks)
    return star


@pytest.mark.parametrize("case, field, message", [
    ("no particles", "data_particles", "holds no particles"),
    ("pixel size missing", "rlnImagePixelSize", "pixel size missing"),
    ("pixel sizes differ", "rlnImagePixelSize", "particles of different pixel sizes"),
    ("header pixel size", "rlnImagePixelSize", "2 A/px differs from the 3 A/px in the MRC header of"),
    ("box sizes differ", "nx", "particles of different box sizes (16 and 12 px)"),
    ("rlnImageSize", "rlnImageSize", "rlnImageSize 20 differs from the stacks' box 16"),
    ("CTF column", "rlnDefocusU", "rlnDefocusU"),
])
def test_bad_input_names_the_file_and_field(tmp_path, rng, case, field, message):
    if case == "no particles":
        star, _ = _write(tmp_path, rng)
        blocks = read_star(star)
        blocks["particles"] = blocks["particles"].iloc[:0]
        write_star(star, blocks)
    elif case == "pixel size missing":
        star = _edit(tmp_path, rng, "optics", "rlnImagePixelSize", None)
    elif case == "pixel sizes differ":
        star = _edit(tmp_path, rng, "optics", "rlnImagePixelSize", [2.0, 2.5])
    elif case == "header pixel size":
        star, _ = _write(tmp_path, rng, header_angpix=3.0)
    elif case == "box sizes differ":
        star = _mixed_box(tmp_path, rng)
    elif case == "rlnImageSize":
        star = _edit(tmp_path, rng, "optics", "rlnImageSize", [20, 20])
    else:
        star = _edit(tmp_path, rng, "particles", "rlnDefocusU", None)
    with pytest.raises(InputError) as exc:
        open_particles(star, ctf=True)
    assert message in exc.value.message and exc.value.field == field
    named = tmp_path / "s1.mrcs" if case == "box sizes differ" else star
    assert exc.value.path == str(named)


def test_unset_header_pixel_size_is_the_stars_and_is_logged_once(tmp_path, rng, caplog):
    star, images = _write(tmp_path, rng, header_angpix=0.0)
    ps = open_particles(star)
    assert ps.angpix == ANGPIX
    assert caplog.text.count("2 of 2 stacks hold no pixel size in their MRC header") == 1
    np.testing.assert_array_equal(ps.read_images(), _expected(star, images))


def test_a_bad_image_is_an_input_error_naming_its_stack(tmp_path, rng):
    star, _ = _write(tmp_path, rng)
    bad = tmp_path / "s1.mrcs"
    data = read_mrc(bad)[0]
    data[2, 3, 3] = np.nan
    write_mrc(bad, data, ANGPIX, stack=True)
    ps = open_particles(star)  # the headers are fine
    with pytest.raises(InputError, match="NaN") as exc:
        ps.read_images()
    assert exc.value.path == str(bad)
