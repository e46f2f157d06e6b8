"""``cryopipe class3d`` refuses what it cannot classify: more classes than particles allow (at least 2 per class,
one per half set), a particle diameter larger than the box, and a --continue from a checkpoint cut short or
missing a map. Each is one line naming the file and field, exit status 2, and nothing is written."""

import shutil
from pathlib import Path

import pytest

from cryopipe import cli
from cryopipe.class3d import Class3DParams, EMInputs, classify
from cryopipe.em3d.synthetic import SyntheticSpec, simulate_particles, write_reference
from cryopipe.io.star import parse_image_name, read_particles, write_table
from cryopipe.stage import StageContext

N_PARTICLES = 16
FAST = ["--iterations", "1", "--healpix-order", "0", "--offset-range", "0", "--device", "cpu"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """16 particles, 32 px at 5 A/px (a 160 A box), the reference, and a real one-iteration checkpoint."""
    folder = tmp_path_factory.mktemp("tiny3d")
    truth = simulate_particles(SyntheticSpec(n=N_PARTICLES, snr=0.1, seed=3, out_box=32), folder)
    truth["reference"] = write_reference(truth["maps"]["conformation_1"], truth["angpix"], 40.0, folder / "ref.mrc")
    params = Class3DParams(classes=2, iterations=1, healpix_order=0, offset_range=0.0, particle_diameter=130.0)
    classify(params, EMInputs(truth["star"], truth["reference"]), folder / "run", StageContext.local())
    truth["checkpoint"] = folder / "run"
    return truth


def _cli(argv, capsys):
    """cryopipe class3d -> (exit status, its error lines)."""
    status = cli.main(["class3d", *argv])
    return status, [line for line in capsys.readouterr().err.splitlines() if line.startswith("cryopipe class3d")]


def _subset(tiny, rows, path):
    """A particles STAR of some rows of the tiny set (image names made absolute)."""
    table = read_particles(tiny["star"])
    index, stacks = parse_image_name(table["rlnImageName"], tiny["star"])
    table["rlnImageName"] = [f"{i + 1}@{Path(s).resolve()}" for i, s in zip(index, stacks, strict=True)]
    write_table(path, table.iloc[rows])
    return path


@pytest.mark.parametrize("k", [N_PARTICLES + 1, N_PARTICLES // 2 + 1])
def test_more_classes_than_the_particles_allow_are_refused(tiny, tmp_path, capsys, k):
    status, err = _cli(["--particles", str(tiny["star"]), "--reference", str(tiny["reference"]), "--classes",
                        str(k), *FAST, "--out", str(tmp_path / "out")], capsys)
    assert status == 2 and len(err) == 1, err
    assert (f"{tiny['star']} [--classes]: at least 2 particles per class are needed ({2 * k} for K = {k}: each "
            f"class map is reconstructed from two half sets), the file holds {N_PARTICLES}") in err[0]
    assert not list((tmp_path / "out").glob("run_it*"))


def test_one_particle_is_refused(tiny, tmp_path, capsys):
    one = _subset(tiny, [0], tmp_path / "one.star")
    status, err = _cli(["--particles", str(one), "--reference", str(tiny["reference"]), "--classes", "1", *FAST,
                        "--out", str(tmp_path / "out")], capsys)
    assert status == 2 and len(err) == 1, err
    assert f"{one} [--classes]: at least 2 particles per class are needed (2 for K = 1" in err[0]


def test_particle_diameter_larger_than_the_box_is_refused(tiny, tmp_path, capsys):
    status, err = _cli(["--particles", str(tiny["star"]), "--reference", str(tiny["reference"]), "--classes", "2",
                        "--diameter", "99999", *FAST, "--out", str(tmp_path / "out")], capsys)
    assert status == 2 and len(err) == 1, err
    assert (f"{tiny['star']} [--diameter]: particle diameter 99999 A is larger than the box (32 px x "
            "5 A/px = 160 A)") in err[0]
    assert not list((tmp_path / "out").glob("run_it*"))


def test_the_old_diameter_flag_still_works_and_says_it_is_deprecated(tiny, tmp_path, capsys):
    status = cli.main(["class3d", "--particles", str(tiny["star"]), "--reference", str(tiny["reference"]),
                       "--classes", "2", "--particle-diameter", "99999", *FAST, "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert status == 2 and "--particle-diameter is deprecated and will be removed; use --diameter" in err
    assert f"{tiny['star']} [--diameter]: particle diameter 99999 A is larger than the box" in err


def _damaged_copy(tiny, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny["checkpoint"], run)
    return run


def test_continue_from_a_model_star_cut_to_half_is_refused(tiny, tmp_path, capsys):
    run = _damaged_copy(tiny, tmp_path)
    star = run / "run_it001_model.star"
    data = star.read_bytes()
    star.write_bytes(data[: len(data) // 2])
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and not p.name.startswith(".")}
    status, err = _cli(["--continue", str(run / "run_it001"), "--iterations", "2", "--device", "cpu", "--out",
                        str(run)], capsys)
    assert status == 2 and len(err) == 1, err
    assert f"{star}: does not end with a line break (the file is cut short or damaged" in err[0]
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and not p.name.startswith(".")} == before


def test_continue_from_a_checkpoint_missing_a_map_is_refused(tiny, tmp_path, capsys):
    run = _damaged_copy(tiny, tmp_path)
    (run / "run_it001_class002.mrc").unlink()
    status, err = _cli(["--continue", str(run / "run_it001"), "--iterations", "2", "--device", "cpu", "--out",
                        str(run)], capsys)
    assert status == 2 and len(err) == 1, err
    assert (f"{run / 'run_it001_class002.mrc'} [rlnReferenceImage]: map named by the checkpoint "
            f"{run / 'run_it001'}_model.star is missing") in err[0]
    assert not (run / "run_it002_model.star").exists()


def test_defaults_pass_and_few_particles_per_class_only_warn(tiny, caplog):
    """Without --diameter (0.9 x box) and with 8 particles per class: runs, with a warning."""
    from cryopipe.em3d.particles import load_particles

    particles = load_particles(tiny["star"])
    Class3DParams(classes=2).check_particles(particles)
    assert "only 8.0 particles per class on average (16 particles, K = 2)" in caplog.text
    Class3DParams(classes=8, particle_diameter=160.0).check_particles(particles)  # 2 per class, the whole box: allowed
