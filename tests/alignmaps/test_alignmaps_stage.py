"""cryopipe align-maps: writes the aligned map, the alignment (RELION Euler angles, shift, hand), the FSC; a user's
mistake is one line and exit status 2."""

import json

import mrcfile
import numpy as np
import pytest

from cryopipe import cli
from cryopipe.alignmaps import AlignMapsInputs, read_pair
from cryopipe.errors import InputError
from cryopipe.geometry import euler_to_matrix, rotation_angle_between
from cryopipe.io.mrc import read_mrc, write_mrc
from cryopipe.io.star import read_star


@pytest.fixture
def maps(case, tmp_path):
    """(moving, reference) MRC paths: the mirrored, rotated, shifted noisy copy and the reference."""
    moving, reference = tmp_path / "moving.mrc", tmp_path / "reference.mrc"
    write_mrc(moving, case.moving(-1), case.angpix)
    write_mrc(reference, case.reference, case.angpix)
    return moving, reference


def _run(moving, reference, out, *extra) -> int:
    return cli.main(["align-maps", "--moving", str(moving), "--reference", str(reference), "--out", str(out),
                     "--healpix-order", "1", *extra])


def test_writes_the_aligned_map_the_alignment_and_the_fsc(case, maps, tmp_path):
    out = tmp_path / "aligned"
    assert _run(*maps, out, "--device", "cpu") == 0
    aligned, apix = read_mrc(out / "aligned.mrc")
    assert aligned.shape == (case.box,) * 3 and apix == pytest.approx(case.angpix)
    row = read_star(out / "alignment.star")["alignment"].iloc[0]
    rotation = euler_to_matrix(row["rlnAngleRot"], row["rlnAngleTilt"], row["rlnAnglePsi"])
    assert rotation_angle_between(rotation, case.rotation) < 3.0
    shift = row[["cpShiftXAngst", "cpShiftYAngst", "cpShiftZAngst"]].to_numpy(float)
    assert np.linalg.norm(shift - case.shift_A) < case.angpix
    assert row["cpHand"] == -1 and row["cpCorrelation"] > 0.8
    assert row["cpResolutionFsc0143"] < row["cpResolutionFsc05"] < 1.15 * case.fsc05_limit_A
    assert row["rlnPixelSize"] == pytest.approx(case.angpix) and row["cpMovingMap"] == str(maps[0])
    blocks = read_star(out / "fsc.star")
    curve = blocks["fsc"]
    assert len(curve) == case.box // 2 + 1 and curve["rlnAngstromResolution"].iloc[0] == 999
    assert curve["rlnFourierShellCorrelation"].iloc[1] > 0.99
    assert blocks["general"]["rlnFinalResolution"].iloc[0] == pytest.approx(row["cpResolutionFsc0143"])
    assert (out / "fsc.png").read_bytes()[:4] == b"\x89PNG"
    notes = json.loads((out / "provenance.json").read_text())["notes"]
    assert notes["hand"] == -1 and notes["parameters"]["healpix_order"] == 1
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "aligned.mrc", "alignment.star", "fsc.png", "fsc.star", "provenance.json"]


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    return err


def test_maps_of_different_boxes_or_pixel_sizes_are_input_errors(case, maps, tmp_path, capsys):
    moving, reference = maps
    small = tmp_path / "small.mrc"
    write_mrc(small, case.reference[4:-4, 4:-4, 4:-4], case.angpix)
    assert _run(small, reference, tmp_path / "a") == 2
    err = _error_line(capsys)
    assert "small.mrc [shape]" in err and "40" in err and "48" in err

    coarser = tmp_path / "coarser.mrc"
    write_mrc(coarser, case.moving(1), 1.1 * case.angpix)
    assert _run(coarser, reference, tmp_path / "b") == 2
    err = _error_line(capsys)
    assert "coarser.mrc [angpix]" in err and "3.3" in err
    assert not (tmp_path / "b" / "aligned.mrc").exists()

    unset = tmp_path / "unset.mrc"
    with mrcfile.new(unset) as mrc:
        mrc.set_data(case.moving(1))
    assert _run(unset, reference, tmp_path / "c") == 2
    assert "unset.mrc [angpix]" in _error_line(capsys)
    # --angpix sets the pixel size of both maps
    assert read_pair(AlignMapsInputs(unset, reference), angpix=case.angpix)[2] == case.angpix


def test_missing_flat_or_non_cubic_maps_are_input_errors(case, maps, tmp_path, capsys):
    moving, reference = maps
    assert _run(tmp_path / "absent.mrc", reference, tmp_path / "a") == 2
    assert "absent.mrc" in _error_line(capsys)
    flat = tmp_path / "flat.mrc"
    write_mrc(flat, np.zeros((case.box,) * 3, np.float32), case.angpix)
    assert _run(flat, reference, tmp_path / "b") == 2
    assert "flat.mrc [data]" in _error_line(capsys)
    slab = tmp_path / "slab.mrc"
    write_mrc(slab, case.reference[:, :, :40], case.angpix)
    with pytest.raises(InputError, match=r"slab.mrc \[shape\]"):
        read_pair(AlignMapsInputs(slab, reference))
    assert _run(moving, reference, tmp_path / "c", "--lowpass", "4") == 2
    assert "[--lowpass]" in _error_line(capsys)
