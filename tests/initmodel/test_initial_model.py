"""De novo initial model on simulated particles of the rod (a molecule unlike the demo's): the map it finds against
the true map after alignment (both hands), two conformations told apart, determinism, --continue, the hand flip
and bad input."""

import json
import shutil

import numpy as np
import pytest
import starfile

from cryopipe.bioem.forward import PointModel
from cryopipe.cli import main as cli_main
from cryopipe.geometry import euler_to_matrix
from cryopipe.initmodel.stage import mirrored_poses
from cryopipe.io.mrc import read_mrc, write_mrc
from cryopipe.mapalign import align, mirror
from cryopipe.simulate.complex import electrons_of
from cryopipe.simulate.molecules import build_molecule
from cryopipe.simulate.particles import simulate_particles
from cryopipe.symalign import SymmetryFrame, apply_frame, framed_poses, symmetrise

BOX, ANGPIX, DIAMETER = 64, 2.5, 130.0


def _true_map(model) -> np.ndarray:
    return PointModel(model.xyz, electrons_of(model), 1.8).render(BOX, ANGPIX).astype(np.float32)


@pytest.fixture(scope="module")
def rods(tmp_path_factory):
    """2,000 rod particles of 64 px at 2.5 A/px, SNR 0.1, CTF, random poses: 60% conformation 1, 40% conformation
    2 (an extra arm); with the true maps."""
    folder = tmp_path_factory.mktemp("rods")
    models = build_molecule("rod", 2024)
    truth = simulate_particles(folder, models, {"conformation_1": 0.6, "conformation_2": 0.4}, 2000, BOX, ANGPIX,
                               snr=0.1, seed=5)
    return folder / "particles.star", truth, {k: _true_map(models[k]) for k in ("conformation_1", "conformation_2")}


@pytest.fixture(scope="module")
def few(tmp_path_factory):
    """120 rod particles: for the runs whose numbers do not matter, only their sameness."""
    folder = tmp_path_factory.mktemp("few")
    simulate_particles(folder, build_molecule("rod", 2024), {"conformation_1": 1.0}, 120, BOX, ANGPIX, seed=9)
    return folder / "particles.star"


def _run(particles, out, *extra):
    return cli_main(["initial-model", "--particles", str(particles), "--out", str(out), "--diameter", str(DIAMETER),
                     "--device", "cpu", *extra])


@pytest.fixture(scope="module")
def k1(rods, tmp_path_factory):
    """The K = 1 initial model of the rods (its folder)."""
    out = tmp_path_factory.mktemp("k1") / "k1"
    assert _run(rods[0], out) == 0
    return out


@pytest.mark.slow
def test_one_class_reaches_25_A_against_the_true_map(rods, k1):
    _star, _truth, maps = rods
    found, angpix = read_mrc(k1 / "initial_model_class001.mrc")
    assert found.shape == (BOX,) * 3 and angpix == pytest.approx(ANGPIX)
    result = align(found, maps["conformation_1"], ANGPIX)
    assert result.resolution_05_A <= 25.0, result.resolution_05_A  # measured 14.2 A (either hand)
    record = json.loads((k1 / "provenance.json").read_text())
    assert "hand" in record["notes"]["hand_note"] and record["notes"]["class_distribution"] == [1.0]
    table = starfile.read(k1 / "particles.star")["particles"]
    assert len(table) == 2000 and {"rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst"} <= set(table)


@pytest.mark.slow
def test_refine3d_from_it_reaches_the_resolution_refine3d_reaches_from_the_true_map_at_40_A(rods, k1, tmp_path):
    """The issue's bar: within 10% of the gold-standard resolution refine3d reaches from the true map low-passed to
    40 A (refine3d low-passes either start to its ini_high, 40 A). 600 of conformation 1's particles."""
    star, truth, maps = rods
    blocks = starfile.read(star)
    blocks["particles"] = blocks["particles"][truth["rlnClassNumber"].to_numpy() == 1].iloc[:600]
    starfile.write(blocks, star.parent / "c1.star")  # beside the stack its image names point to
    write_mrc(tmp_path / "true.mrc", maps["conformation_1"], ANGPIX)
    resolution = {}
    for name, ref in (("initial", k1 / "initial_model_class001.mrc"), ("true", tmp_path / "true.mrc")):
        argv = ["refine3d", "--particles", str(star.parent / "c1.star"), "--reference", str(ref), "--out",
                str(tmp_path / name), "--diameter", str(DIAMETER), "--device", "cpu"]
        assert cli_main(argv) == 0
        resolution[name] = json.loads((tmp_path / name / "provenance.json").read_text())["notes"]["resolution_A"]
    assert resolution["initial"] <= 1.1 * resolution["true"], resolution


@pytest.mark.slow
def test_two_classes_tell_the_conformations_apart(rods, tmp_path):
    star, truth, _maps = rods
    assert _run(star, tmp_path / "k2", "--classes", "2") == 0
    found = starfile.read(tmp_path / "k2" / "particles.star")["particles"]["rlnClassNumber"].to_numpy()
    agree = (found == truth["rlnClassNumber"].to_numpy()).mean()
    assert max(agree, 1 - agree) >= 0.8, agree  # measured 0.83
    assert (tmp_path / "k2" / "initial_model_class002.mrc").exists()


def test_a_seed_gives_one_result_and_continue_gives_the_uninterrupted_one(few, tmp_path):
    args = ("--iterations", "3", "--batch-size", "60")
    assert _run(few, tmp_path / "a", *args) == 0
    assert _run(few, tmp_path / "b", *args) == 0
    a, _ = read_mrc(tmp_path / "a" / "initial_model_class001.mrc")
    b, _ = read_mrc(tmp_path / "b" / "initial_model_class001.mrc")
    np.testing.assert_array_equal(a, b)
    assert cli_main(["initial-model", "--continue", str(tmp_path / "a" / "run_it002"), "--out", str(tmp_path / "c"),
                     "--device", "cpu"]) == 0
    c, _ = read_mrc(tmp_path / "c" / "initial_model_class001.mrc")
    np.testing.assert_array_equal(a, c)
    assert _run(few, tmp_path / "d", *args, "--seed", "1") == 0
    assert not np.array_equal(a, read_mrc(tmp_path / "d" / "initial_model_class001.mrc")[0])


def test_flip_hand_mirrors_the_maps_and_the_poses_together(few, tmp_path):
    args = ("--iterations", "2", "--batch-size", "60")
    assert _run(few, tmp_path / "as_found", *args) == 0
    assert _run(few, tmp_path / "flipped", *args, "--flip-hand") == 0
    a, _ = read_mrc(tmp_path / "as_found" / "initial_model_class001.mrc")
    f, _ = read_mrc(tmp_path / "flipped" / "initial_model_class001.mrc")
    np.testing.assert_array_equal(f, mirror(a))
    pa = starfile.read(tmp_path / "as_found" / "particles.star")["particles"]
    pf = starfile.read(tmp_path / "flipped" / "particles.star")["particles"]
    m = np.diag([1.0, 1.0, -1.0])
    np.testing.assert_allclose(euler_to_matrix(pf["rlnAngleRot"], pf["rlnAngleTilt"], pf["rlnAnglePsi"]),
                               m @ euler_to_matrix(pa["rlnAngleRot"], pa["rlnAngleTilt"], pa["rlnAnglePsi"]) @ m,
                               atol=1e-9)


def test_a_point_group_is_found_in_and_imposed_on_the_c1_map_and_the_poses_follow(few, tmp_path):
    """--symmetry D2: the C1 optimisation is the same as without it (its last checkpoint map); the output map is that
    map in the frame of symmetry.star, symmetrised; each particle's pose and origin moved with it. (The rod is not
    D2-symmetric: its contrast is low, and the log says so.)"""
    args = ("--iterations", "2", "--batch-size", "60")
    assert _run(few, tmp_path / "c1", *args) == 0
    assert _run(few, tmp_path / "d2", *args, "--symmetry", "D2") == 0
    c1, _ = read_mrc(tmp_path / "c1" / "initial_model_class001.mrc")
    np.testing.assert_array_equal(read_mrc(tmp_path / "d2" / "run_class001.mrc")[0], c1)
    row = starfile.read(tmp_path / "d2" / "symmetry.star").iloc[0]
    assert row["rlnSymmetryGroup"] == "D2" and row["cpSymmetryContrast"] < 0.8
    frame = SymmetryFrame("D2", euler_to_matrix(row["rlnAngleRot"], row["rlnAngleTilt"], row["rlnAnglePsi"]),
                          row[["cpCentreXpx", "cpCentreYpx", "cpCentreZpx"]].to_numpy(float), 0.0, 0.0)
    d2, _ = read_mrc(tmp_path / "d2" / "initial_model_class001.mrc")
    np.testing.assert_allclose(d2, symmetrise(apply_frame(c1, frame), "D2"), atol=1e-4 * np.abs(d2).max())
    before = starfile.read(tmp_path / "c1" / "particles.star")["particles"]
    after = starfile.read(tmp_path / "d2" / "particles.star")["particles"]
    columns = ["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst"]
    moved = framed_poses(*(before[c] for c in columns), frame, ANGPIX)
    np.testing.assert_allclose(euler_to_matrix(*(after[c] for c in columns[:3])), euler_to_matrix(*moved[:3]),
                               atol=1e-4)
    np.testing.assert_allclose(after[columns[3:]].to_numpy(), np.column_stack(moved[3:]), atol=1e-4)
    record = json.loads((tmp_path / "d2" / "provenance.json").read_text())
    assert record["notes"]["symmetry"] == "D2" and len(record["notes"]["symmetry_contrast"]) == 1


def test_the_mirrored_map_projects_at_the_mirrored_poses_as_the_map_at_the_poses():
    from cryopipe.backend import get_backend
    from cryopipe.projection import Projector

    rng = np.random.default_rng(0)
    vol = np.zeros((32,) * 3, np.float32)
    vol[10:14, 12:20, 15:18] = 1.0
    vol[18:22, 8:11, 9:20] = 2.0
    angles = rng.uniform([-180, 0, -180], [180, 180, 180], size=(5, 3))
    rot, psi = mirrored_poses(angles[:, 0], angles[:, 2])
    bk = get_backend("cpu")
    p = np.asarray(Projector(vol, bk).project(euler_to_matrix(*angles.T)))
    q = np.asarray(Projector(mirror(vol), bk).project(euler_to_matrix(rot, angles[:, 1], psi)))
    np.testing.assert_allclose(q, p, atol=1e-3 * np.abs(p).max())


def test_bad_input_is_one_clear_error(few, tmp_path, capsys):
    assert _run(few, tmp_path / "o1", "--classes", "3") == 2
    assert "too few for K = 3" in capsys.readouterr().err
    assert _run(few, tmp_path / "o2", "--symmetry", "Q7") == 2
    assert "--symmetry" in capsys.readouterr().err
    small = few.parent / "small"
    small.mkdir()
    write_mrc(small / "particles.mrcs", np.zeros((60, 16, 16), np.float32), 2.5)
    table = starfile.read(few)
    table["optics"]["rlnImageSize"] = 16
    table["particles"] = table["particles"].iloc[:60]
    starfile.write(table, small / "particles.star")
    assert _run(small / "particles.star", tmp_path / "o3") == 2
    assert "too small for an initial model" in capsys.readouterr().err
    assert not any((tmp_path / name / "initial_model_class001.mrc").exists() for name in ("o1", "o2", "o3"))
    shutil.rmtree(small)


@pytest.mark.gpu
def test_gpu_equals_cpu(few, tmp_path):
    """Two minibatch iterations and the final pass on the GPU (float32 E-step) against the CPU."""
    args = ("--iterations", "2", "--batch-size", "60")
    assert _run(few, tmp_path / "cpu", *args) == 0
    assert cli_main(["initial-model", "--particles", str(few), "--out", str(tmp_path / "gpu"), "--diameter",
                     str(DIAMETER), "--device", "gpu", *args]) == 0
    a, _ = read_mrc(tmp_path / "cpu" / "initial_model_class001.mrc")
    b, _ = read_mrc(tmp_path / "gpu" / "initial_model_class001.mrc")
    cc = float(np.corrcoef(a.ravel(), b.ravel())[0, 1])
    assert cc > 0.999, cc
    pa = starfile.read(tmp_path / "cpu" / "particles.star")["particles"]
    pb = starfile.read(tmp_path / "gpu" / "particles.star")["particles"]
    same = np.isclose(pa["rlnAngleRot"], pb["rlnAngleRot"]) & np.isclose(pa["rlnAngleTilt"], pb["rlnAngleTilt"])
    assert same.mean() > 0.9, same.mean()  # near-ties may flip in float32


@pytest.mark.mpi
def test_two_mpi_ranks_equal_one(few, tmp_path):
    """2 ranks (size asserted) share each minibatch: the maps of one rank within float rounding (half-set SSNR)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from cryopipe.fourier import fsc

    args = ["--iterations", "2", "--batch-size", "60", "--diameter", str(DIAMETER), "--device", "cpu"]
    assert cli_main(["initial-model", "--particles", str(few), "--out", str(tmp_path / "one"), *args]) == 0
    code = ("import sys; from mpi4py import MPI; assert MPI.COMM_WORLD.Get_size() == 2; from cryopipe import cli; "
            "sys.exit(cli.main(sys.argv[1:]))")
    argv = ["initial-model", "--particles", str(few), "--out", str(tmp_path / "two"), *args]
    proc = subprocess.run([str(Path(sys.executable).parent / "mpiexec"), "-n", "2", sys.executable, "-c", code,
                           *argv], capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, _ = read_mrc(tmp_path / "one" / "initial_model_class001.mrc")
    b, _ = read_mrc(tmp_path / "two" / "initial_model_class001.mrc")
    assert fsc(a, b)[:8].min() > 0.99
    assert '"mpi_size": 2' in (tmp_path / "two" / "provenance.json").read_text()
