"""``cryopipe refine3d`` on simulated single-conformation data of the demo complex (and a C4 complex).

Differences from the issue's full-size figures, for CI time (2 cores): particles are simulated at 64 px and
2.5 A/px and Fourier-cropped to 32 px (5 A/px, Nyquist 10 A), offsets within +-3 A. The accuracy test uses 300
particles at SNR 0.3 (variance of the noise-free CTF-modulated image inside the particle circle / noise variance),
HEALPix order 1 to start, at most 7 iterations (~15 s); checkpoint, MPI and error tests use 120 particles at SNR
0.1 and 1-3 iterations (they check equality and messages, not accuracy). The opt-in slow test
(CRYOPIPE_SLOW_TESTS=1) refines 400 particles to convergence with local searches.
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from cryopipe import cli
from cryopipe.em3d.gold import AutoSampling, finest_order, join_low_resolution, random_subsets
from cryopipe.em3d.model import read_model
from cryopipe.em3d.synthetic import SyntheticSpec, coarse_grain, simulate_particles, write_reference
from cryopipe.fourier import fsc, resolution_at
from cryopipe.geometry import (
    axis_angle_to_matrix,
    euler_to_matrix,
    matrix_to_euler,
    rotation_angle_between,
    symmetry_operators,
)
from cryopipe.io.mrc import read_mrc, write_mrc
from cryopipe.io.star import read_particles, read_star, write_table
from cryopipe.refine3d import EMInputs, Refine3DParams, refine
from cryopipe.simulate.complex import build_models, electrons_of
from cryopipe.stage import StageContext

ONE = dict(models=("conformation_1",), fractions=(1.0,), out_box=32)


def _dataset(tmp_path_factory, name, n, seed, snr=0.1, atoms=None, model="conformation_1"):
    folder = tmp_path_factory.mktemp(name)
    spec = SyntheticSpec(n=n, snr=snr, seed=seed, **{**ONE, "models": (model,)})
    truth = simulate_particles(spec, folder, atoms=atoms)
    truth["true_map"] = truth["maps"][model]
    truth["reference"] = write_reference(truth["true_map"], truth["angpix"], 40.0, folder / "ref.mrc")
    return truth


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return _dataset(tmp_path_factory, "small", 120, 11)


def _cli(argv):
    return cli.main(["refine3d", *argv])


def _flags(out, iterations):
    return ["--out", str(out), "--max-iterations", str(iterations), "--healpix-order", "1", "--offset-range", "1.5",
            "--offset-step", "1.5", "--diameter", "130", "--device", "cpu"]


def _angular_error(table, truth):
    rot = euler_to_matrix(table.rlnAngleRot, table.rlnAngleTilt, table.rlnAnglePsi)
    return rotation_angle_between(rot, truth["rotations"])


# ------------------------------------------------------------------------------------------- helpers (fast)


def test_random_subsets_kept_or_balanced(tmp_path):
    import pandas as pd

    sub = random_subsets(pd.DataFrame({"a": np.arange(11)}), seed=3)
    assert sorted(np.bincount(sub)[1:]) == [5, 6]
    np.testing.assert_array_equal(sub, random_subsets(pd.DataFrame({"a": np.arange(11)}), seed=3))
    given = np.array([2, 1, 1, 2, 2])
    np.testing.assert_array_equal(random_subsets(pd.DataFrame({"rlnRandomSubset": given}), 0), given)
    from cryopipe.errors import InputError

    with pytest.raises(InputError, match="rlnRandomSubset"):
        random_subsets(pd.DataFrame({"rlnRandomSubset": [1, 3]}), 0)


def test_join_low_resolution_averages_only_low_frequencies(rng, bk):
    a, b = rng.standard_normal((2, 24, 24, 24)).astype(np.float32)
    ja, jb = join_low_resolution(a, b, 2.0, 12.0, bk)  # shells < 24 * 2 / 12 = 4
    f = fsc(ja, jb)
    assert f[:4].min() > 0.999  # identical below the join resolution
    np.testing.assert_allclose(fsc(ja, a)[5:], 1.0, atol=1e-6)  # untouched above
    np.testing.assert_allclose(ja + jb, a + b, atol=1e-5)  # the average is kept


def test_auto_sampling_schedule():
    s = AutoSampling(order=1, offset_range=4.0, offset_step=2.0)
    assert s.update(20.0, 50.0, 1.0, 130.0, auto_local_order=2) == []  # resolution gain
    msgs = s.update(20.0, 10.0, 0.5, 130.0, auto_local_order=2)  # no gain, changes below sampling: finer
    assert s.order == 2 and s.local == 1 and s.offset_step == 1.0 and s.offset_range == 2.0 and msgs
    assert finest_order(10.0, 130.0) == 3 and finest_order(40.0, 130.0) == 1
    s.order = finest_order(s.best_resolution_A, 130.0)
    s.update(20.0, 1.0, 0.1, 130.0, 2)
    assert not s.converged
    s.update(20.0, 1.0, 0.1, 130.0, 2)
    assert s.converged
    back = AutoSampling.from_options({k: str(v) for k, v in s.to_options().items()})
    assert back == s


# ------------------------------------------------------------------------------------------- accuracy


def test_gold_standard_accuracy_and_hand(tmp_path_factory, tmp_path):
    """Gold-standard resolution (half-map FSC 0.143) within 20% of where the map's FSC with the true map crosses
    0.5; median angular error below the final angular sampling; FSC with the true map above that with its mirror.
    Measured (2026-11-23, 300 particles, SNR 0.3, 32 px at 5 A/px): gold 12.6 A, true 13.0 A, median error 11.7 deg
    at order 2 (15 deg), mirror FSC(0.5) 43 A; ~15 s on 2 cores."""
    truth = _dataset(tmp_path_factory, "accuracy", 300, 3, snr=0.3)
    params = Refine3DParams(healpix_order=1, auto_local_healpix_order=3, offset_range=1.5, offset_step=1.5,
                            particle_diameter=130.0, max_iterations=7)
    out = refine(params, EMInputs(truth["star"], truth["reference"]), tmp_path, StageContext.local())
    true, ap, box = truth["true_map"], truth["angpix"], 32
    final = read_mrc(tmp_path / "map.mrc")[0]
    gold = float(read_star(tmp_path / "fsc.star")["general"]["rlnFinalResolution"].iloc[0])
    res_true = resolution_at(fsc(final, true), box, ap, 0.5)
    err = _angular_error(read_particles(tmp_path / "particles.star"), truth)
    sampling = out.sampling.sampling_deg
    mirror = fsc(final, true[::-1])
    print(f"gold {gold:.2f} A, true FSC0.5 {res_true:.2f} A, median error {np.median(err):.1f} deg "
          f"(sampling {sampling} deg), mirror FSC0.5 {resolution_at(mirror, box, ap, 0.5):.1f} A")
    assert abs(gold - res_true) <= 0.2 * res_true, (gold, res_true)
    assert np.median(err) < sampling, (np.median(err), sampling)
    assert fsc(final, true)[1:8].mean() > mirror[1:8].mean() + 0.2
    table = read_particles(tmp_path / "particles.star")
    assert set(table["rlnRandomSubset"]) == {1, 2}
    for name in ("half1.mrc", "half2.mrc", "map.mrc", "fsc.star", "particles.star", "run_it007_model.star",
                 "run_it007_data.star", "run_it007_half1_class001.mrc", "run_it007_half2_class001.mrc",
                 "refine3d_progress.png", "refine3d_slices.png"):
        assert (tmp_path / name).exists(), name


def _c4_atoms():
    """A C4 tetramer: a chiral subunit (the demo's head and knob domains, off the z axis) times the C4 operators."""
    m = build_models()["conformation_1"]
    keep = np.isin(m.chain, ["C", "D"])
    xyz, el = coarse_grain(m.xyz[keep], electrons_of(m)[keep])
    xyz = xyz - xyz.mean(0) + np.array([18.0, 6.0, 4.0])
    ops = symmetry_operators("C4")
    return {"c4": (np.concatenate([xyz @ op.T for op in ops]), np.tile(el, len(ops)))}


def test_symmetric_object_refines_with_its_symmetry(tmp_path_factory, tmp_path):
    """A C4 complex refined with --symmetry C4: the map obeys C4 (correlation with its 90-degree rotation about z)
    and agrees with the true map (FSC 0.5 finer than 20 A)."""
    truth = _dataset(tmp_path_factory, "c4", 160, 5, snr=0.3, atoms=_c4_atoms(), model="c4")
    params = Refine3DParams(healpix_order=1, auto_local_healpix_order=3, offset_range=1.5, offset_step=1.5,
                            particle_diameter=130.0, max_iterations=4, symmetry="C4")
    out = refine(params, EMInputs(truth["star"], truth["reference"]), tmp_path, StageContext.local())
    vol = out.map
    n = vol.shape[0]
    c = np.full(3, n // 2)
    op = axis_angle_to_matrix((0, 0, 1), 90.0)[::-1, ::-1]  # (x, y, z) -> array axes (z, y, x)
    rotated = ndimage.affine_transform(vol, op, offset=c - op @ c, order=1)
    inside = np.linalg.norm(np.indices(vol.shape) - c[:, None, None, None], axis=0) < 0.4 * n
    corr = np.corrcoef(vol[inside], rotated[inside])[0, 1]
    res_true = resolution_at(fsc(vol, truth["true_map"]), n, truth["angpix"], 0.5)
    print(f"C4: map vs 90-deg rotated map correlation {corr:.3f}, FSC0.5 with the true map {res_true:.1f} A")
    assert corr > 0.95, corr
    assert res_true < 20.0, res_true


def test_local_searches_improve_perturbed_orientations(tmp_path, small):
    """Starting at HEALPix order 2 with --auto-local-healpix-order 2 and angles 10 deg off the truth, the searches
    are local (Gaussian prior around the previous orientation) and bring the angles closer to the truth."""
    table = read_particles(small["star"])
    rng = np.random.default_rng(0)
    off = axis_angle_to_matrix(rng.standard_normal((len(table), 3)), np.full(len(table), 10.0)) @ small["rotations"]
    table["rlnAngleRot"], table["rlnAngleTilt"], table["rlnAnglePsi"] = matrix_to_euler(off)
    table["rlnImageName"] = [f"{i + 1}@{Path(small['star']).parent / 'particles.mrcs'}" for i in range(len(table))]
    star = tmp_path / "posed.star"
    write_table(star, table)
    params = Refine3DParams(healpix_order=2, auto_local_healpix_order=2, offset_range=1.5, offset_step=1.5,
                            particle_diameter=130.0, max_iterations=2, ini_high=20.0)
    out = refine(params, EMInputs(star, small["reference"]), tmp_path / "out", StageContext.local())
    assert out.sampling.local == 1
    before = np.median(rotation_angle_between(off, small["rotations"]))
    after = np.median(_angular_error(out.particles.table, small))
    print(f"local searches: median error {before:.1f} -> {after:.1f} deg")
    assert after < before, (before, after)


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("CRYOPIPE_SLOW_TESTS"), reason="set CRYOPIPE_SLOW_TESTS=1 (~1.5 min)")
def test_converges_with_local_searches(tmp_path_factory, tmp_path):
    """To convergence (no --max-iterations stop) through global and local searches at 400 particles, SNR 0.1."""
    truth = _dataset(tmp_path_factory, "converge", 400, 3, snr=0.1)
    params = Refine3DParams(healpix_order=1, auto_local_healpix_order=3, offset_range=1.5, offset_step=1.5,
                            particle_diameter=130.0, max_iterations=25)
    out = refine(params, EMInputs(truth["star"], truth["reference"]), tmp_path, StageContext.local())
    assert out.sampling.converged and out.sampling.local and out.model.iteration < 25
    res_true = resolution_at(fsc(out.map, truth["true_map"]), 32, truth["angpix"], 0.5)
    assert abs(out.resolution_A - res_true) <= 0.2 * res_true
    assert np.median(_angular_error(out.particles.table, truth)) < out.sampling.sampling_deg * 2


# ------------------------------------------------------------------------------------------- checkpoints, MPI, GPU


def test_continue_equals_uninterrupted(small, tmp_path):
    """--continue from iteration 1 of a 3-iteration run (into another folder) reproduces iterations 2 and 3 (the
    final one) exactly, and the new folder holds the whole run."""
    ref, star = str(small["reference"]), str(small["star"])
    assert _cli(["--particles", star, "--reference", ref, *_flags(tmp_path / "a", 3)]) == 0
    assert _cli(["--continue", str(tmp_path / "a" / "run_it001"), *_flags(tmp_path / "b", 3)[:4]]) == 0
    # the published run is whole: the iteration it continued from comes along, unchanged
    first = [(tmp_path / x / "run_it001_model.star").read_bytes() for x in "ab"]
    assert first[0] == first[1]
    a, b = read_model(tmp_path / "a" / "run_it003", halves=True), read_model(tmp_path / "b" / "run_it003", halves=True)
    np.testing.assert_array_equal(a.maps, b.maps)
    np.testing.assert_array_equal(a.sigma2, b.sigma2)
    for name in ("map.mrc", "half1.mrc", "half2.mrc"):
        np.testing.assert_array_equal(read_mrc(tmp_path / "a" / name)[0], read_mrc(tmp_path / "b" / name)[0])
    da, db = (read_particles(tmp_path / x / "particles.star") for x in "ab")
    cols = ["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst", "rlnRandomSubset"]
    np.testing.assert_array_equal(da[cols].to_numpy(), db[cols].to_numpy())
    # an option that cannot change on continue is refused
    flags = _flags(tmp_path / "c", 4) + ["--symmetry", "C2"]
    assert _cli(["--continue", str(tmp_path / "a" / "run_it001"), *flags]) == 2


@pytest.mark.mpi
def test_mpi_two_ranks_equal_one(small, tmp_path):
    """2 MPI ranks (size asserted) give the single-rank result after one (non-final) iteration (per-rank particle
    batches differ, so float32 sums agree to ~1e-6 relative)."""
    ref, star = str(small["reference"]), str(small["star"])
    flags = _flags(tmp_path / "one", 2)
    assert _cli(["--particles", star, "--reference", ref, *flags]) == 0
    mpiexec = Path(sys.executable).parent / "mpiexec"
    code = ("import sys; from mpi4py import MPI; assert MPI.COMM_WORLD.Get_size() == 2; from cryopipe import cli; "
            "sys.exit(cli.main(sys.argv[1:]))")
    argv = ["refine3d", "--particles", star, "--reference", ref, *_flags(tmp_path / "two", 2)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([str(mpiexec), "-n", "2", sys.executable, "-c", code, *argv], capture_output=True,
                          text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = (read_model(tmp_path / x / "run_it001", halves=True) for x in ("one", "two"))
    np.testing.assert_allclose(two.sigma2, one.sigma2, rtol=1e-5)
    for h in range(2):  # within the E-step limit of iteration 1 (4 px)
        assert fsc(one.maps[h], two.maps[h])[:5].min() > 0.998
    d1, d2 = (read_particles(tmp_path / x / "run_it001_data.star") for x in ("one", "two"))
    np.testing.assert_array_equal(d1["rlnRandomSubset"], d2["rlnRandomSubset"])
    np.testing.assert_allclose(d1["rlnLogLikeliContribution"], d2["rlnLogLikeliContribution"], rtol=1e-4, atol=1e-3)
    assert '"mpi_size": 2' in (tmp_path / "two" / "provenance.json").read_text()
    final = [read_mrc(tmp_path / x / "map.mrc")[0] for x in ("one", "two")]
    assert fsc(*final)[:8].min() > 0.99


@pytest.mark.gpu
def test_gpu_equals_cpu(small, tmp_path):
    """One iteration on the GPU gives the CPU's angles and half-maps within float32 tolerance."""
    params = Refine3DParams(healpix_order=1, offset_range=1.5, offset_step=1.5, particle_diameter=130.0,
                            max_iterations=2)
    runs = []
    for dev in ("cpu", "gpu"):
        runs.append(refine(params, EMInputs(small["star"], small["reference"]), tmp_path / dev,
                           StageContext.local(dev)))
    a, b = (r.particles.table for r in runs)
    err = rotation_angle_between(euler_to_matrix(a.rlnAngleRot, a.rlnAngleTilt, a.rlnAnglePsi),
                                 euler_to_matrix(b.rlnAngleRot, b.rlnAngleTilt, b.rlnAnglePsi))
    assert np.mean(err < 1e-3) > 0.97
    assert fsc(runs[0].map, runs[1].map)[:8].min() > 0.99
    assert abs(runs[0].resolution_A - runs[1].resolution_A) < 0.05 * runs[0].resolution_A


# ------------------------------------------------------------------------------------------- errors


def test_bad_inputs_are_clear_errors(small, tmp_path, capsys):
    star, ref = str(small["star"]), str(small["reference"])
    flags = _flags(tmp_path / "out", 1)
    bad_box = tmp_path / "box.mrc"
    write_mrc(bad_box, np.zeros((40, 40, 40), np.float32), small["angpix"])
    assert _cli(["--particles", star, "--reference", str(bad_box), *flags]) == 2
    err = capsys.readouterr().err
    assert "box" in err and "box.mrc" in err
    bad_pix = tmp_path / "pix.mrc"
    write_mrc(bad_pix, np.zeros((32, 32, 32), np.float32), 2.0)
    assert _cli(["--particles", star, "--reference", str(bad_pix), *flags]) == 2
    assert "pixel size" in capsys.readouterr().err
    assert _cli(["--particles", star, "--reference", ref, *flags, "--symmetry", "X7"]) == 2
    assert "--symmetry" in capsys.readouterr().err
    table = read_particles(star)
    table["rlnImageName"] = [f"{i + 1}@{Path(star).parent / 'particles.mrcs'}" for i in range(len(table))]
    no_ctf = tmp_path / "noctf.star"
    write_table(no_ctf, table.drop(columns=["rlnDefocusU"]))
    assert _cli(["--particles", str(no_ctf), "--reference", ref, *flags]) == 2
    err = capsys.readouterr().err
    assert "rlnDefocusU" in err and "noctf.star" in err
    bad_sub = tmp_path / "subset.star"
    write_table(bad_sub, table.assign(rlnRandomSubset=3))
    assert _cli(["--particles", str(bad_sub), "--reference", ref, *flags]) == 2
    assert "rlnRandomSubset" in capsys.readouterr().err
    assert not (tmp_path / "out" / "run_it001_model.star").exists()


def test_outputs_keep_the_image_names_and_name_the_half_maps_with_their_folder(small, tmp_path, monkeypatch):
    """RELION-clean outputs: particles.star and the data STARs give rlnImageName relative to the working directory,
    as RELION resolves it (they used to be absolute): here the input STAR names its stack relative to its own folder,
    which does not resolve from the working directory, so the name becomes that path from the working directory. The
    model STAR names the half-maps with the published folder (it used to be the bare file name)."""
    folder = Path(small["star"]).parent
    monkeypatch.chdir(folder.parent)
    assert read_star(small["star"])["particles"]["rlnImageName"][0] == "1@particles.mrcs"
    params = Refine3DParams(healpix_order=0, offset_range=0.0, particle_diameter=130.0, max_iterations=1)
    out = tmp_path / "work"
    refine(params, EMInputs(Path(folder.name) / "particles.star", small["reference"]), out,
           StageContext.local(out_final=Path("Refine3D/job011")))
    expected = [f"{i + 1}@{folder.name}/particles.mrcs" for i in range(120)]
    for star in ("particles.star", "run_it001_data.star"):
        assert read_star(out / star)["particles"]["rlnImageName"].tolist() == expected
    assert read_star(out / "run_it001_model.star")["model_classes"]["rlnReferenceImage"].tolist() == [
        "Refine3D/job011/run_it001_half1_class001.mrc", "Refine3D/job011/run_it001_half2_class001.mrc"]
    general = read_star(out / "fsc.star")["general"]
    assert np.isfinite(float(general["rlnFinalResolution"].iloc[0]))
