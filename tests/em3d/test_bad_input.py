"""Bad input to the shared 3D EM machinery: checkpoints cut short or missing a map (--continue), and particle
STAR files whose pixel size disagrees with their stacks' MRC headers. Each is an InputError naming the file."""

import logging

import mrcfile
import numpy as np
import pytest

from cryopipe.em3d.model import Model, parse_continue, read_model, write_model
from cryopipe.em3d.particles import load_particles
from cryopipe.errors import InputError
from cryopipe.io.mrc import write_mrc
from cryopipe.io.star import read_star, write_star

N = 8


@pytest.fixture
def checkpoint(tmp_path, rng):
    """A two-class checkpoint DIR/run_it003 (model STAR, maps, a data STAR) as class3d writes it."""
    k, nsh = 2, N // 2 + 1
    model = Model(maps=rng.standard_normal((k, N, N, N)).astype(np.float32), pdf_class=np.array([0.4, 0.6]),
                  sigma2=rng.random((1, nsh)), tau2=rng.random((k, nsh)), ssnr=rng.random((k, nsh)),
                  resolution_A=np.array([20.0, 25.0]), sigma_offset_px=1.5, r_max=3, iteration=3, angpix=4.0,
                  options={"classes": 2, "symmetry": "C1"}, extra={"rlnGoldStandardFsc": rng.random(nsh)})
    write_model(tmp_path / "run_it003", model)
    (tmp_path / "run_it003_data.star").write_text("data_particles\n")
    return tmp_path / "run_it003"


def test_model_star_cut_to_half_its_bytes_is_an_input_error(checkpoint):
    star = checkpoint.parent / "run_it003_model.star"
    data = star.read_bytes()
    star.write_bytes(data[: len(data) // 2])
    for call in (lambda: parse_continue(checkpoint), lambda: read_model(checkpoint)):
        with pytest.raises(InputError, match="cut short") as exc:
            call()
        assert exc.value.path == str(star)


@pytest.mark.parametrize("keep", [0.3, 0.6, 0.9])
def test_model_star_cut_at_a_line_break_is_an_input_error(checkpoint, keep):
    """Cut between two lines (the file still ends with a line break): a block, a row or a column goes missing."""
    star = checkpoint.parent / "run_it003_model.star"
    lines = star.read_text().splitlines(keepends=True)
    content = [i for i, line in enumerate(lines) if line.strip()]
    star.write_text("".join(lines[: content[int(keep * len(content))]]))
    with pytest.raises(InputError, match="cut short") as exc:
        parse_continue(checkpoint)
    assert exc.value.path == str(star) and exc.value.field.startswith(("data_", "rln", "cp"))


def test_damaged_value_and_missing_map_are_input_errors(checkpoint):
    star = checkpoint.parent / "run_it003_model.star"
    good = star.read_text()
    blocks = read_star(star)
    group = blocks["model_group_1"]
    group["rlnSigma2Noise"] = group["rlnSigma2Noise"].astype(object)
    group.loc[2, "rlnSigma2Noise"] = "garbage"
    write_star(star, blocks)
    with pytest.raises(InputError, match="non-numeric") as exc:
        read_model(checkpoint)
    assert (exc.value.path, exc.value.field) == (str(star), "rlnSigma2Noise")
    star.write_text(good)
    (checkpoint.parent / "run_it003_class002.mrc").unlink()
    for call in (lambda: parse_continue(checkpoint), lambda: read_model(checkpoint)):
        with pytest.raises(InputError, match="map named by the checkpoint") as exc:
            call()
        assert exc.value.path == str(checkpoint.parent / "run_it003_class002.mrc")


def test_wrong_map_box_is_an_input_error(checkpoint):
    write_mrc(checkpoint.parent / "run_it003_class001.mrc", np.zeros((6, 6, 6), np.float32), 4.0)
    with pytest.raises(InputError, match="checkpoint's box is 8"):
        read_model(checkpoint)


def test_half_maps_are_read_by_the_names_the_checkpoint_gives(tmp_path, rng):
    """A refine3d checkpoint (half-maps) reads whatever ``halves`` says: the names come from the model STAR."""
    nsh = N // 2 + 1
    model = Model(maps=rng.standard_normal((2, N, N, N)).astype(np.float32), pdf_class=np.array([0.5, 0.5]),
                  sigma2=rng.random((1, nsh)), tau2=rng.random((2, nsh)), ssnr=rng.random((2, nsh)),
                  resolution_A=np.array([20.0, 20.0]), sigma_offset_px=1.0, r_max=3, iteration=1, angpix=4.0)
    write_model(tmp_path / "run_it001", model, halves=True)
    for halves in (True, False):
        np.testing.assert_array_equal(read_model(tmp_path / "run_it001", halves=halves).maps, model.maps)


def _stack_and_star(folder, header_angpix, star_angpix):
    write_mrc(folder / "p.mrcs", np.random.default_rng(0).standard_normal((4, N, N)).astype(np.float32), 2.5)
    if header_angpix != 2.5:
        with mrcfile.open(folder / "p.mrcs", "r+") as mrc:
            mrc.voxel_size = header_angpix
    import pandas as pd

    optics = pd.DataFrame({"rlnOpticsGroup": [1], "rlnOpticsGroupName": ["g1"], "rlnImagePixelSize": [star_angpix],
                           "rlnImageSize": [N], "rlnImageDimensionality": [2]})
    parts = pd.DataFrame({"rlnImageName": [f"{i + 1}@p.mrcs" for i in range(4)], "rlnOpticsGroup": 1})
    write_star(folder / "particles.star", {"optics": optics, "particles": parts})
    return folder / "particles.star"


def test_star_pixel_size_differing_from_the_stack_header_is_an_input_error(tmp_path):
    star = _stack_and_star(tmp_path, 2.5, 3.0)
    with pytest.raises(InputError, match=r"3 A/px differs from the 2.5 A/px in the MRC header of .*p.mrcs") as exc:
        load_particles(star, use_ctf=False)
    assert (exc.value.path, exc.value.field) == (str(star), "rlnImagePixelSize")
    assert len(load_particles(_stack_and_star(tmp_path, 2.5, 2.52), use_ctf=False)) == 4  # within 1%


@pytest.mark.parametrize("header", [0.0, 1.0])
def test_unset_header_pixel_size_trusts_the_star_and_says_so(tmp_path, caplog, header):
    star = _stack_and_star(tmp_path, header, 3.0)
    with caplog.at_level(logging.WARNING, logger="cryopipe.em3d.particles"):
        particles = load_particles(star, use_ctf=False)
    assert particles.angpix == 3.0
    assert "1 of 1 stacks hold no pixel size in their MRC header" in caplog.text
