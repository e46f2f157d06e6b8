"""``cryopipe class2d`` on particle STAR files it must not trust: a pixel size that the stack's MRC header
contradicts (more than 1%: one line naming the STAR file and rlnImagePixelSize, exit status 2; a header holding 0 or
1.0 is unset: the STAR's value is used, with a warning), and a STAR without particles (an empty extraction batch:
"holds no particles", not a missing optics column). Particles are 8 noise images of 32 px: bookkeeping only."""

import mrcfile
import numpy as np
import pandas as pd
import pytest

from cryopipe.io.mrc import write_mrc
from cryopipe.io.star import write_star

ANGPIX, BOX = 2.5, 32
FAST = ["--classes", "1", "--iterations", "1", "--ctf", "none", "--device", "cpu"]


def _particles(folder, header_angpix=ANGPIX, star_angpix=ANGPIX, n=8):
    write_mrc(folder / "stack.mrcs", np.random.default_rng(0).standard_normal((8, BOX, BOX)).astype(np.float32),
              ANGPIX)
    if header_angpix != ANGPIX:
        with mrcfile.open(folder / "stack.mrcs", "r+") as mrc:
            mrc.voxel_size = header_angpix
    optics = pd.DataFrame({"rlnOpticsGroup": [1], "rlnOpticsGroupName": ["opticsGroup1"], "rlnVoltage": [300.0],
                           "rlnSphericalAberration": [2.7], "rlnAmplitudeContrast": [0.1],
                           "rlnImagePixelSize": [star_angpix], "rlnImageSize": [BOX], "rlnImageDimensionality": [2]})
    parts = pd.DataFrame({"rlnImageName": pd.Series([f"{i + 1:06d}@stack.mrcs" for i in range(n)], dtype=str),
                          "rlnOpticsGroup": pd.Series([1] * n, dtype=int)})
    write_star(folder / "particles.star", {"optics": optics, "particles": parts})
    return folder / "particles.star"


def _run(run_cli, capsys, star, out):
    """cryopipe class2d -> (exit status, its error lines, all of stderr)."""
    status = run_cli(["class2d", "--particles", str(star), "--out", str(out), *FAST])
    err = capsys.readouterr().err
    return status, [line for line in err.splitlines() if line.startswith("cryopipe class2d")], err


def test_star_pixel_size_contradicting_the_stack_header_is_refused(run_cli, tmp_path, capsys):
    star = _particles(tmp_path, header_angpix=2.0)
    out = tmp_path / "out"
    out.mkdir()
    (out / "classes.star").write_text("an earlier result\n")
    status, err, _ = _run(run_cli, capsys, star, out)
    assert status == 2 and len(err) == 1, err
    assert (f"{star} [rlnImagePixelSize]: 2.5 A/px differs from the 2 A/px in the MRC header of "
            f"{tmp_path / 'stack.mrcs'} by more than 1%") in err[0]
    assert (out / "classes.star").read_text() == "an earlier result\n"


@pytest.mark.parametrize("header", [0.0, 1.0])
def test_unset_stack_header_trusts_the_star(run_cli, tmp_path, capsys, header):
    star = _particles(tmp_path, header_angpix=header)
    status, err, log = _run(run_cli, capsys, star, tmp_path / "out")
    assert status == 0, err
    assert "WARNING" in log and "1 of 1 stacks hold no pixel size in their MRC header (0 or 1.0)" in log


def test_star_without_particles_says_so(run_cli, tmp_path, capsys):
    """An empty extraction batch (data_optics, no particle rows) is named as such."""
    star = _particles(tmp_path, n=0)
    status, err, _ = _run(run_cli, capsys, star, tmp_path / "out")
    assert status == 2 and len(err) == 1, err
    assert f"{star} [data_particles]: holds no particles" in err[0]
