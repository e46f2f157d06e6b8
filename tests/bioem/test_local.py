"""Local orientation grids: the lattice, the batching of block priors, the integral against an explicit list run,
chunking, accuracy on simulated particles with perturbed refined poses, and bad input."""

import logging
import math

import numpy as np
import pytest
import starfile

import cryopipe.cli
from cryopipe.bioem import local, stage
from cryopipe.bioem.forward import MapModel
from cryopipe.bioem.integrate import orientation_batches
from cryopipe.geometry import axis_angle_to_matrix, euler_to_matrix, matrix_to_euler, rotation_angle_between
from cryopipe.io.star import write_star

from .conftest import make_demo_particles


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return make_demo_particles(tmp_path_factory.mktemp("local"))


def _perturbed(star, out, degrees, seed=3):
    """A copy of ``star`` whose angles are each rotated by ``degrees`` about a random axis (a refinement's error)."""
    data = starfile.read(star)
    parts = data["particles"].copy()
    rng = np.random.default_rng(seed)
    own = euler_to_matrix(parts["rlnAngleRot"], parts["rlnAngleTilt"], parts["rlnAnglePsi"])
    moved = own @ axis_angle_to_matrix(rng.normal(size=(len(parts), 3)), np.full(len(parts), degrees))
    parts["rlnAngleRot"], parts["rlnAngleTilt"], parts["rlnAnglePsi"] = matrix_to_euler(moved)
    write_star(out, {"optics": data["optics"], "particles": parts})
    return out, own


def test_offsets_are_a_ball_with_the_identity_first_and_haar_weights():
    rot, log_w = local.local_offsets(10, 5)
    assert len(rot) == 33  # |v| <= 2 steps on Z^3
    np.testing.assert_allclose(rot[0], np.eye(3))
    ang = rotation_angle_between(rot, np.eye(3)[None])
    assert ang.max() == pytest.approx(10.0) and np.all(np.diff(ang) >= -1e-9)
    # each point weighs its cell's share of SO(3): 33 cells of (5 deg)^3 out of 8 pi^2
    assert math.exp(log_w[0]) == pytest.approx(math.radians(5) ** 3 / (8 * math.pi ** 2))
    assert np.exp(log_w).sum() == pytest.approx(33 * math.radians(5) ** 3 / (8 * math.pi ** 2), rel=0.01)
    assert len(local.local_offsets(0, 5)[0]) == 1


def test_batches_follow_the_pattern_of_the_priors():
    block = local.block_prior(3, np.zeros(4))  # 3 particles x 4 own orientations
    assert orientation_batches(block, 0, 12, 100) == [(0, 4), (4, 8), (8, 12)]
    assert orientation_batches(block, 2, 12, 3) == [(2, 4), (4, 7), (7, 8), (8, 11), (11, 12)]
    scattered = np.array([[0, -np.inf, 0], [-np.inf, 0, 0.0]])
    assert orientation_batches(scattered, 0, 3, 100) == [(0, 1), (1, 2), (2, 3)]
    assert orientation_batches(None, 0, 7, 3) == [(0, 3), (3, 6), (6, 7)]


def _subset(star, out, n):
    """The first ``n`` particles of ``star`` (``out`` beside it: image names are relative to the STAR's folder)."""
    data = starfile.read(star)
    write_star(out, {"optics": data["optics"], "particles": data["particles"].iloc[:n]})
    return out


def test_local_integral_equals_the_sum_over_an_explicit_list_and_chunks_do_not_matter(demo, tmp_path,
                                                                                      monkeypatch, caplog):
    """ln P of each particle on its local grid = log-sum over the same orientations, taken from a run over the
    whole list with per-orientation sums, weighted by the local cell weights; in chunks of 2 particles too, whose
    progress lines count every particle's orientations once."""
    star, models, _truth = demo
    star = _subset(star, star.parent / "six.star", 6)
    ds = stage.load_particles(star)
    params = stage.RankParams(local_orientations=str(star), local_radius=5, local_step=5,
                              defocus_grid=(-200.0, 200.0, 2), max_shift_px=1)
    from cryopipe.backend import get_backend

    bk = get_backend("cpu")
    atoms = stage.read_structural_model(models["conformation_1"], ds.angpix, params)
    model = MapModel(atoms.render(ds.box, ds.angpix), ds.angpix)  # what local grids project (both runs alike)
    res = stage.compute_log_p(model, ds, params, bk)
    offsets, log_w = local.local_offsets(5, 5)
    k = len(offsets)
    np.testing.assert_allclose(res.rotations, local.local_grid(ds_rot := res.rotations[::k], offsets))
    assert (res.best["cpOrientationIndex"].to_numpy() // k == np.arange(6)).all()  # each at a pose of its own
    with monkeypatch.context() as m:  # the same matrices as one list for every particle (no Euler round trip)
        m.setattr(stage, "_orientation_grid", lambda params, ds: res.rotations)
        full = stage.compute_log_p(model, ds, stage.RankParams(keep_orientations=True,
                                                               defocus_grid=(-200.0, 200.0, 2), max_shift_px=1), bk)
    per = full.orientation_log_p + math.log(len(res.rotations))  # undo the list's 1/O weights
    for i in range(6):
        terms = per[i, i * k:(i + 1) * k] + log_w
        m = terms.max()
        assert res.log_p[i] == pytest.approx(m + math.log(np.exp(terms - m).sum()), abs=1e-8)
    monkeypatch.setattr(stage, "LOCAL_PRIOR_BYTES", 8 * k * 4)  # chunks of 2 particles
    monkeypatch.setattr(stage, "PERIOD_S", 0.0)  # a progress line per batch of orientations
    caplog.set_level(logging.INFO, logger="cryopipe.bioem")
    chunked = stage.compute_log_p(model, ds, params, bk)
    assert chunked.split["chunks"] == 3
    lines = [m for m in caplog.messages if m.startswith("model: local orientations ")]
    assert lines[0].startswith(f"model: local orientations {k}/{6 * k}, ") and lines[0].endswith(" left")
    assert lines[-1].startswith(f"model: local orientations {6 * k}/{6 * k}, ") and lines[-1].endswith(" in all")
    np.testing.assert_allclose(chunked.log_p, res.log_p, rtol=0, atol=1e-9)
    np.testing.assert_array_equal(chunked.best["cpOrientationIndex"], res.best["cpOrientationIndex"])
    assert ds_rot.shape == (6, 3, 3)


def test_local_grids_rank_the_true_model_from_poses_refined_5_degrees_off(demo, tmp_path):
    """Refined angles 5 degrees off the truth: the local ball (radius 10, step 5) still ranks each conformation's
    particles to their own model, recovers the 60/40 mixture, and moves the poses back towards the truth."""
    star, models, truth = demo
    refined, true_rot = _perturbed(star, tmp_path / "refined.star", 5.0)
    out = tmp_path / "out"
    rc = cryopipe.cli.main(["bioem", "--particles", str(star), "--models", *map(str, models.values()),
                            "--local-orientations", str(refined), "--defocus-grid", "-200", "200", "3",
                            "--displacement", "2", "1", "--out", str(out), "--device", "cpu"])
    assert rc == 0
    logp = starfile.read(out / "logp.star")
    table = logp.pivot(index="cpParticleIndex", columns="cpModelName", values="cpLogP").sort_index()
    for cls, true, other in ((1, "conformation_1", "conformation_2"), (2, "conformation_2", "conformation_1")):
        sums = table[(truth["cls"] == cls).to_numpy()].sum()
        assert sums[true] > sums[other] and sums[true] > sums["decoy"], sums.to_dict()
    ranking = starfile.read(out / "ranking.star").set_index("cpModelName")
    assert ranking.loc["conformation_1", "cpEnsembleWeight"] == pytest.approx(0.6, abs=0.1)
    assert ranking.loc["conformation_2", "cpEnsembleWeight"] == pytest.approx(0.4, abs=0.1)
    own = logp[logp["cpModelName"] == "conformation_1"].sort_values("cpParticleIndex")
    best = euler_to_matrix(own["rlnAngleRot"], own["rlnAngleTilt"], own["rlnAnglePsi"])
    err = rotation_angle_between(best, true_rot)[(truth["cls"] == 1).to_numpy()]
    assert np.median(err) < 4.0, np.median(err)  # started 5 degrees off


def test_local_mode_bad_input_is_one_clear_error(demo, tmp_path, capsys):
    star, models, _truth = demo
    argv = ["bioem", "--particles", str(star), "--models", str(models["decoy"]), "--out", str(tmp_path / "o"),
            "--device", "cpu", "--local-orientations"]
    assert cryopipe.cli.main([*argv, str(star), "--orientations", str(star)]) == 2
    assert "--local-orientations replaces" in capsys.readouterr().err
    assert cryopipe.cli.main([*argv, str(star), "--keep-orientations"]) == 2
    assert "--keep-orientations" in capsys.readouterr().err
    few = _subset(star, star.parent / "few.star", 10)
    assert cryopipe.cli.main([*argv, str(few)]) == 2
    err = capsys.readouterr().err
    assert "few.star" in err and "40 particles have no entry" in err
    assert not (tmp_path / "o" / "logp.star").exists()


@pytest.mark.gpu
def test_local_grids_on_the_gpu_equal_the_cpu(demo):
    """Local grids on the GPU (float32 FFTs, the CPU scoring a share of the images beside it) against the CPU."""
    from cryopipe.backend import get_backend

    star, models, _truth = demo
    ds = stage.load_particles(star)
    params = stage.RankParams(local_orientations=str(star), defocus_grid=(-200.0, 200.0, 3), max_shift_px=2)
    model = stage.read_structural_model(models["conformation_2"], ds.angpix, params)
    cpu = stage.compute_log_p(model, ds, params, get_backend("cpu"))
    gpu = stage.compute_log_p(model, ds, params, get_backend("gpu"))
    np.testing.assert_allclose(gpu.log_p, cpu.log_p, rtol=2e-5, atol=0.05)
    agree = gpu.best["cpOrientationIndex"].to_numpy() == cpu.best["cpOrientationIndex"].to_numpy()
    assert agree.mean() >= 0.95  # near-ties may flip in float32


def test_ranks_splitting_local_grids_combine_to_one_rank(demo, monkeypatch):
    """Each of 3 ranks scores its share of every chunk's orientations; the max-shifted reduction gives 1 rank."""
    from cryopipe.backend import get_backend
    from cryopipe.bioem.integrate import reduce_ranks

    star, models, _truth = demo
    star = _subset(star, star.parent / "seven.star", 7)
    ds = stage.load_particles(star)
    params = stage.RankParams(local_orientations=str(star), local_radius=5, local_step=5, defocus_grid=(0.0, 0.0, 1),
                              max_shift_px=1)
    model = stage.read_structural_model(models["conformation_1"], ds.angpix, params)
    one = stage.compute_log_p(model, ds, params, get_backend("cpu")).result

    class Comm:
        def __init__(self, rank, parts=None):
            self.rank, self.parts = rank, parts

        def Get_rank(self):
            return self.rank

        def Get_size(self):
            return 3

        def allgather(self, obj):
            return self.parts

    monkeypatch.setattr(stage, "LOCAL_PRIOR_BYTES", 8 * 7 * 9)  # chunks of 3 particles (7 orientations each)
    monkeypatch.setattr(stage, "reduce_ranks", lambda res, comm: res)  # keep each rank's partial result
    parts = [stage.compute_log_p(model, ds, params, get_backend("cpu"), Comm(r)).result for r in range(3)]
    combined = reduce_ranks(parts[0], Comm(0, parts))
    np.testing.assert_allclose(combined.log_sum, one.log_sum, rtol=0, atol=1e-9)
    np.testing.assert_array_equal(combined.best_orientation, one.best_orientation)


def _cc(a, b):
    """(B,) correlation of two stacks of half spectra (B, N, H)."""
    return (a * b.conj()).sum(axis=(1, 2)).real / np.sqrt((abs(a) ** 2).sum(axis=(1, 2)) * (abs(b) ** 2).sum(
        axis=(1, 2)))


def test_into_model_frame_projects_the_model_as_the_map_projects(tmp_path):
    """A map in another frame (rotated by R^T, or its mirror): the map at the poses P projects as the model at the
    carried poses (both hands)."""
    from cryopipe.backend import get_backend
    from cryopipe.bioem.forward import PointModel
    from cryopipe.mapalign import mirror, rotate_map
    from cryopipe.projection import Projector

    rng = np.random.default_rng(4)
    model = PointModel(rng.normal(0, 6, (12, 3)), rng.uniform(1, 3, 12), 3.0).render(32, 1.0)  # smooth, asymmetric
    rot = axis_angle_to_matrix(rng.normal(size=3), 70.0)
    bk = get_backend("cpu")
    poses = euler_to_matrix(*rng.uniform([-180, 0, -180], [180, 180, 180], size=(4, 3)).T)
    for hand in (1, -1):
        as_found = rotate_map(model, rot.T)  # map(r) = model(R r), so model(r) = map(R^T r)
        as_found = np.asarray(mirror(as_found)) if hand == -1 else np.asarray(as_found)  # the other enantiomer
        p = np.asarray(Projector(as_found, bk).project(poses))
        q = np.asarray(Projector(model, bk).project(local.into_model_frame(poses, rot, hand)))
        wrong = np.asarray(Projector(model, bk).project(poses))  # the poses as found, not carried
        assert _cc(q, p).min() > 0.98 > 0.9 > _cc(wrong, p).max(), (hand, _cc(q, p), _cc(wrong, p))


@pytest.mark.slow
def test_poses_against_a_map_in_another_frame_rank_after_fitting_the_models(demo, tmp_path):
    """Refined poses found against a rotated, mirrored copy of conformation 1's map (as a de novo initial model
    may give): with --local-map the models are fitted into it and the ranking holds; without, it is lost."""
    from cryopipe.bioem.forward import PointModel
    from cryopipe.io.mrc import write_mrc
    from cryopipe.mapalign import mirror, rotate_map
    from cryopipe.simulate.complex import build_models, electrons_of

    star, models, truth = demo
    atoms = build_models(2024)["conformation_1"]
    true_map = PointModel(atoms.xyz, electrons_of(atoms), 1.8).render(64, 2.5).astype(np.float32)
    rot = axis_angle_to_matrix(np.array([0.3, -0.5, 0.8]), 120.0)
    other = np.asarray(mirror(rotate_map(true_map, rot.T)))  # model(r) = mirror(map)(R^T r)
    write_mrc(tmp_path / "denovo.mrc", other, 2.5)
    data = starfile.read(star)
    parts = data["particles"].copy()
    true_poses = euler_to_matrix(parts["rlnAngleRot"], parts["rlnAngleTilt"], parts["rlnAnglePsi"])
    m = np.diag([1.0, 1.0, -1.0])
    found = m @ (true_poses @ rot) @ m  # the poses a refinement against the de novo map finds
    parts["rlnAngleRot"], parts["rlnAngleTilt"], parts["rlnAnglePsi"] = matrix_to_euler(found)
    write_star(tmp_path / "refined.star", {"optics": data["optics"], "particles": parts})
    argv = ["bioem", "--particles", str(star), "--models", *map(str, models.values()), "--local-orientations",
            str(tmp_path / "refined.star"), "--defocus-grid", "-200", "200", "3", "--displacement", "2", "1",
            "--device", "cpu"]
    assert cryopipe.cli.main([*argv, "--local-map", str(tmp_path / "denovo.mrc"), "--out", str(tmp_path / "a")]) == 0
    ranking = starfile.read(tmp_path / "a" / "ranking.star").set_index("cpModelName")
    assert ranking.loc["conformation_1", "cpEnsembleWeight"] == pytest.approx(0.6, abs=0.1)
    assert ranking.loc["conformation_2", "cpEnsembleWeight"] == pytest.approx(0.4, abs=0.1)
    assert cryopipe.cli.main([*argv, "--out", str(tmp_path / "b")]) == 0
    lost = starfile.read(tmp_path / "b" / "ranking.star").set_index("cpModelName")
    assert abs(lost.loc["conformation_1", "cpEnsembleWeight"] - 0.6) > 0.1 or lost.index[0] == "decoy"
