"""The default mode on simulated particles with ground truth, the CLI and bad input."""

import logging
import re

import numpy as np
import pytest
import starfile

import cryopipe.cli
from cryopipe.bioem import stage
from cryopipe.errors import InputError

from .conftest import make_demo_particles


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """50 particles at 64 px, 2.5 A/px, SNR 0.1: 60% conformation 1, 40% conformation 2, known poses."""
    return make_demo_particles(tmp_path_factory.mktemp("demo"))


def _cli(argv):
    return cryopipe.cli.main(["bioem", *argv])


def test_demo_ranks_the_true_model_first_and_recovers_the_mixture(demo, tmp_path, monkeypatch):
    """Orientations: the particles' poses, as from a refinement, with a 2-degree orientation prior around each
    particle's own pose (so each particle is scored at its refined pose, a thing the reference program cannot do);
    CTF: 3 defocus offsets around each particle's estimate and 3 B-factors; displacements +-2 px."""
    star, models, truth = demo
    out = tmp_path / "out"
    rc = _cli(["--particles", str(star), "--models", *map(str, models.values()),
                            "--orientations", str(star), "--orientation-prior", str(star),
                            "--orientation-prior-sigma", "2", "--defocus-grid", "-200", "200", "3",
                            "--bfactor-grid", "0", "60", "3", "--displacement", "2", "1", "--out", str(out),
                            "--device", "cpu"])
    assert rc == 0
    logp = starfile.read(out / "logp.star")
    table = logp.pivot(index="cpParticleIndex", columns="cpModelName", values="cpLogP").sort_index()
    for cls, true, other in ((1, "conformation_1", "conformation_2"), (2, "conformation_2", "conformation_1")):
        sums = table[(truth["cls"] == cls).to_numpy()].sum()
        assert sums[true] > sums[other] and sums[true] > sums["decoy"], sums.to_dict()
    ranking = starfile.read(out / "ranking.star").set_index("cpModelName")
    assert ranking.loc["conformation_1", "cpEnsembleWeight"] == pytest.approx(0.6, abs=0.1)
    assert ranking.loc["conformation_2", "cpEnsembleWeight"] == pytest.approx(0.4, abs=0.1)
    assert ranking.loc["decoy", "cpEnsembleWeight"] < 0.1
    own = logp["cpModelName"].to_numpy() == np.where(truth["cls"] == 1, "conformation_1", "conformation_2")[
        logp["cpParticleIndex"].to_numpy() - 1]
    best = logp[own].sort_values("cpParticleIndex")
    origin_px = best[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy() / 2.5
    assert (origin_px == -truth[["shift_x", "shift_y"]].to_numpy()).all(axis=1).mean() >= 0.9  # RELION's sign


def test_mismatched_pixel_size_and_empty_model_are_input_errors(demo, tmp_path):
    from cryopipe.io.mrc import write_mrc

    star, _models, _truth = demo
    ds = stage.load_particles(star)
    write_mrc(tmp_path / "map.mrc", np.zeros((64, 64, 64), np.float32), 2.0)
    with pytest.raises(InputError, match="pixel size"):
        stage.read_structural_model(tmp_path / "map.mrc", ds.angpix, stage.RankParams())
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(InputError, match="no points"):
        stage.read_structural_model(tmp_path / "empty.txt", ds.angpix, stage.RankParams())


def test_unphysical_defocus_grid_and_empty_orientations_are_input_errors(demo, tmp_path, monkeypatch):
    star, models, _truth = demo
    argv = ["--particles", str(star), "--models", str(models["decoy"]), "--out", str(tmp_path / "o"), "--device", "cpu"]
    assert _cli([*argv, "--defocus-grid", "-30000", "0", "2"]) == 2
    empty = tmp_path / "none.star"
    starfile.write({"particles": starfile.read(star)["particles"].iloc[:0]}, empty)
    assert _cli([*argv, "--orientations", str(empty)]) == 2
    assert not (tmp_path / "o" / "logp.star").exists()


def test_map_model_of_another_box_is_one_clear_line(demo, tmp_path, capsys):
    """A map model whose box differs from the particles' (32 vs 64 px) is refused naming the model file."""
    from cryopipe.io.mrc import write_mrc

    star, _models, _truth = demo
    small = tmp_path / "small_map.mrc"
    write_mrc(small, np.random.default_rng(0).random((32, 32, 32)).astype(np.float32), 2.5)
    out = tmp_path / "o"
    status = _cli(["--particles", str(star), "--models", str(small), "--out", str(out), "--device", "cpu"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("cryopipe bioem")]
    assert status == 2 and len(err) == 1, err
    assert f"{small} [box]: map model box 32x32x32 px differs from the particles' box 64 px" in err[0]
    assert not (out / "logp.star").exists()


def test_star_pixel_size_contradicting_the_stack_header_is_an_input_error(demo, tmp_path, caplog):
    """rlnImagePixelSize 3.0 for stacks whose MRC header says 2.5 A/px: refused, naming the STAR file."""
    import mrcfile

    from cryopipe.io.star import parse_image_name

    star, _models, _truth = demo
    blocks = starfile.read(star, always_dict=True)
    index, stacks = parse_image_name(blocks["particles"]["rlnImageName"], star)
    blocks["particles"]["rlnImageName"] = [f"{i + 1}@{s}" for i, s in zip(index, stacks, strict=True)]
    blocks["optics"]["rlnImagePixelSize"] = 3.0
    wrong = tmp_path / "wrong_angpix.star"
    starfile.write(blocks, wrong)
    with pytest.raises(InputError, match=r"3 A/px differs from the 2.5 A/px in the MRC header of .*particles.mrcs") \
            as exc:
        stage.load_particles(wrong)
    assert (exc.value.path, exc.value.field) == (str(wrong), "rlnImagePixelSize")
    # a header holding 0 (unset): the STAR's 3.0 A/px is used, and the log says so
    (tmp_path / "stack.mrcs").write_bytes(open(stacks[0], "rb").read())
    with mrcfile.open(tmp_path / "stack.mrcs", "r+") as mrc:
        mrc.voxel_size = 0.0
    blocks["particles"]["rlnImageName"] = [f"{i + 1}@{tmp_path / 'stack.mrcs'}" for i in index]
    starfile.write(blocks, wrong, overwrite=True)
    assert stage.load_particles(wrong).angpix == 3.0
    assert "1 of 1 stacks hold no pixel size in their MRC header" in caplog.text


def test_run_from_a_notebook(demo, tmp_path, caplog):
    """The stage as a function: run(params, inputs, out, ctx) writes the tables and returns them with its notes;
    its log counts the orientations of each model and the models, with the time left."""
    from cryopipe.stage import StageContext

    caplog.set_level(logging.INFO, logger="cryopipe.bioem")
    star, models, _truth = demo
    out = tmp_path / "nb"
    out.mkdir()
    params = stage.RankParams(orientation_order=0, defocus_grid=(0.0, 0.0, 1), max_shift_px=1)
    result = stage.run(params, stage.BioEMInputs(str(star), [str(models["conformation_1"]), str(models["decoy"])]),
                       out, StageContext.local("cpu"))
    assert sorted(p.name for p in result.files) == ["cumulative_logp.png", "logp.star", "ranking.png",
                                                   "ranking.star"]
    assert all(p.parent == out and p.is_file() for p in result.files)
    assert (result.notes["models"], result.notes["particles"]) == (2, 50)
    assert set(result.notes["ensemble_weights"]) == {"conformation_1", "decoy"}
    assert len(starfile.read(out / "logp.star")) == 100
    assert result.inputs == [star, models["conformation_1"], models["decoy"]]
    inner = [m for m in caplog.messages if m.startswith("model conformation_1 (1/2): orientations ")]
    assert inner and re.fullmatch(r".* \d+/72, [^,]+ s elapsed, .*", inner[0])  # order 0: 72 orientations
    outer = [m for m in caplog.messages if re.match(r"model \d/2: ", m)]
    assert len(outer) == 2
    assert re.fullmatch(r"model 1/2: conformation_1 scored, [^,]+ s, about [^,]+ s left", outer[0])
    assert re.fullmatch(r"model 2/2: decoy scored, [^,]+ s, [^,]+ s in all", outer[1])
    with pytest.raises(InputError, match="must differ"):
        stage.run(params, stage.BioEMInputs(str(star), [str(models["decoy"])] * 2), out, StageContext.local("cpu"))
