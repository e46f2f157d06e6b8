"""``cryopipe class2d``: outputs and their conventions, clear errors for bad input, MPI 2 ranks = 1 rank."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cryopipe.io.mrc import read_mrc, write_mrc
from cryopipe.io.star import parse_image_name, read_particles, read_star, write_star

SMALL = ["--classes", "3", "--mask-diameter", "130", "--device", "cpu"]


def test_outputs_and_conventions(particles_small, run_cli, tmp_path):
    out = tmp_path / "class2d"
    args = ["class2d", "--particles", str(particles_small.star), "--out", str(out), "--box", "48", "--iterations",
            "6", "--ctf", "wiener", "--mirrors", *SMALL]
    assert run_cli(args) == 0
    averages, angpix = read_mrc(out / "class_averages.mrcs")
    assert averages.shape == (3, 48, 48) and angpix == pytest.approx(2.5 * 64 / 48, abs=1e-3)
    particles = read_particles(out / "particles.star", ["rlnClassNumber", "rlnAnglePsi", "rlnOriginXAngst",
                                                        "rlnOriginYAngst", "cpScore", "cpMirror", "rlnDefocusU"])
    assert len(particles) == 120 and set(particles["rlnClassNumber"]) <= {1, 2, 3}
    index, stacks = parse_image_name(particles["rlnImageName"], out / "particles.star")
    assert Path(stacks[0]).exists() and index.tolist() == list(range(120))
    classes = read_star(out / "classes.star")["model_classes"]
    sizes = classes["cpClassSize"].tolist()
    assert sizes == sorted(sizes, reverse=True) and sum(sizes) == 120
    assert sizes == np.bincount(particles["rlnClassNumber"], minlength=4)[1:].tolist()
    assert classes["rlnReferenceImage"][0] == f"000001@{out / 'class_averages.mrcs'}"
    assert np.all(classes["rlnEstimatedResolution"] < 30.0)
    truth = particles_small.truth
    counts = np.zeros((3, 3), int)
    np.add.at(counts, (particles["rlnClassNumber"] - 1, truth["view"]), 1)
    assert counts.max(1).sum() / 120 >= 0.9
    # RELION's origin re-centres the particle: origin = -(displacement of the particle) in Angstrom
    dx = truth["dx"].to_numpy() * 2.5
    assert np.corrcoef(particles["rlnOriginXAngst"], -dx)[0, 1] > 0.8
    for name in ["class_averages.png", "class2d_histograms.png", "provenance.json"]:
        assert (out / name).stat().st_size > 0
    record = json.loads((out / "provenance.json").read_text())
    assert record["stage"] == "class2d" and record["mpi_size"] == 1 and record["notes"]["classes"] == 3


def _two_box_sizes(src, tmp_path):
    """A copy of ``src`` whose last particle comes from a 48 px stack."""
    blocks = read_star(src.star)
    particles = blocks["particles"]
    index, stacks = parse_image_name(particles["rlnImageName"], src.star)
    particles["rlnImageName"] = [f"{i + 1}@{s}" for i, s in zip(index, stacks, strict=True)]
    write_mrc(tmp_path / "other.mrcs", np.zeros((1, 48, 48), np.float32), 2.5)
    particles.loc[len(particles) - 1, "rlnImageName"] = f"1@{tmp_path / 'other.mrcs'}"
    star = tmp_path / "mixed.star"
    write_star(star, blocks)
    return star


@pytest.mark.parametrize("case, extra, message", [
    ("box sizes", [], "particles of different box sizes (64 and 48 px)"),
    ("too many classes", ["--classes", "500"], "[--classes]: 500 classes asked for, but only 120 particles"),
    ("shift range", ["--shift-range", "40"], "[--shift-range]: shift range 40 px does not fit half the box (32 px)"),
    ("mask", ["--mask-diameter", "400"], "[--mask-diameter]: mask diameter 400 A does not fit the box"),
])
def test_bad_input_is_one_clear_line(particles_small, run_cli, tmp_path, capsys, case, extra, message):
    star = _two_box_sizes(particles_small, tmp_path) if case == "box sizes" else particles_small.star
    out = tmp_path / "out"
    assert run_cli(["class2d", "--particles", str(star), "--out", str(out), *SMALL, *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("cryopipe class2d: error: ") and message in err[-1]
    assert not list(out.glob("*.star"))


@pytest.mark.mpi
def test_two_ranks_give_the_one_rank_result(particles_small, launcher, tmp_path, mpiexec):
    args = ["class2d", "--particles", str(particles_small.star), "--box", "32", "--iterations", "4",
            "--batch-size", "16", "--scratch-dir", str(tmp_path / "scratch"), *SMALL]
    subprocess.run([sys.executable, str(launcher), *args, "--out", str(tmp_path / "one")], check=True, timeout=300)
    subprocess.run([str(mpiexec), "-n", "2", sys.executable, str(launcher), *args, "--out", str(tmp_path / "two")],
                   check=True, timeout=300)
    first, second = (json.loads((tmp_path / d / "provenance.json").read_text()) for d in ("one", "two"))
    assert second["mpi_size"] == 2
    # the one-rank job staged the stack on the node's scratch; both ranks of the next job read that copy
    assert first["notes"]["cache"]["copies"] >= 1 and first["notes"]["cache"]["hits"] == 0
    assert [c["reads_source"] for c in second["notes"]["cache"]] == [0, 0]
    assert all(c["hits"] >= 1 and c["reads_cached"] >= 1 and c["copies"] == 0 for c in second["notes"]["cache"])
    one, two = (read_particles(tmp_path / d / "particles.star") for d in ("one", "two"))
    for column in ["rlnClassNumber", "rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst", "cpScore"]:
        np.testing.assert_array_equal(two[column], one[column])
    np.testing.assert_array_equal(read_mrc(tmp_path / "two/class_averages.mrcs")[0],
                                  read_mrc(tmp_path / "one/class_averages.mrcs")[0])


def test_diameter_masks_at_1_1_times_it_unless_a_mask_diameter_is_given(particles_small, run_cli, tmp_path, capsys):
    """--diameter D: the mask the workflow rule used to pass, --mask-diameter round(1.1 D); --mask-diameter wins."""
    from cryopipe.class2d.stage import Class2DParams, mask_radius_px

    def radius(**kw):
        return mask_radius_px(Class2DParams(classes=1, **kw), 64, 2.5)

    assert radius(diameter_A=120.0) == radius(mask_diameter_A=132.0) == 0.5 * 132.0 / 2.5
    assert radius(diameter_A=125.0) == radius(mask_diameter_A=float(round(1.1 * 125)))
    assert radius(diameter_A=120.0, mask_diameter_A=100.0) == radius(mask_diameter_A=100.0)
    assert radius() == radius(mask_diameter_A=0.8 * 64 * 2.5)
    out = tmp_path / "out"
    args = ["class2d", "--particles", str(particles_small.star), "--out", str(out), "--classes", "3", "--device", "cpu"]
    assert run_cli([*args, "--diameter", "200"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "[--diameter]: mask diameter 220 A does not fit the box" in err and "(1.1 x --diameter)" in err


def test_run_from_a_notebook(particles_small, tmp_path):
    """The stage as a function: run(params, inputs, out, ctx) writes the outputs and returns them with its notes."""
    from cryopipe.class2d import Class2DInputs, Class2DParams, run
    from cryopipe.stage import StageContext

    out = tmp_path / "nb"
    out.mkdir()
    params = Class2DParams(classes=3, box=32, iterations=2, diameter_A=120.0)
    result = run(params, Class2DInputs(particles_small.star), out, StageContext.local("cpu"))
    assert sorted(p.name for p in result.files) == ["class2d_histograms.png", "class_averages.mrcs",
                                                   "class_averages.png", "classes.star", "particles.star"]
    assert all(p.parent == out and p.stat().st_size > 0 for p in result.files)
    assert result.notes["particles"] == 120 and sum(result.notes["class_sizes"]) == 120
    assert result.notes["working_box"] == 32 and result.notes["iterations"] <= 2
    assert read_star(out / "classes.star")["model_classes"]["rlnReferenceImage"][0] == \
        f"000001@{out / 'class_averages.mrcs'}"
