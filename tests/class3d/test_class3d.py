"""``cryopipe class3d`` on simulated mixtures of the demo complex's two conformations.

Differences from the issue's full-size figures, for CI time (2 cores): particles are simulated at 64 px and
2.5 A/px and Fourier-cropped to 40 px (4 A/px), offsets within +-3 A; the accuracy test uses
1000 particles at SNR 0.3 (variance of the noise-free CTF-modulated image inside the particle circle / noise
variance), HEALPix order 2 (fine pass at order 3, 7.5 deg) and translations +-1.5 px; the checkpoint, MPI and error
tests use 120 particles at SNR 0.1 cropped to 32 px (5 A/px), order 1 and few iterations (they check equality
and messages, not accuracy).
"""

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial.transform import Rotation

from cryopipe import cli
from cryopipe.backend import get_backend
from cryopipe.class3d import Class3DParams, EMInputs, classify, run
from cryopipe.ctf import ctf_2d
from cryopipe.em3d.driver import given
from cryopipe.em3d.model import read_model
from cryopipe.em3d.particles import load_particles
from cryopipe.em3d.synthetic import SyntheticSpec, simulate_particles, write_reference
from cryopipe.fourier import fsc, resolution_at, shift_phase
from cryopipe.geometry import euler_to_matrix, rotation_angle_between
from cryopipe.io.mrc import write_mrc
from cryopipe.io.star import read_particles, read_star, write_table
from cryopipe.projection import BackProjector
from cryopipe.stage import StageContext

FAST = dict(healpix_order=1, offset_range=3.0, offset_step=1.5, particle_diameter=130.0)


def _dataset(tmp_path_factory, name, n, seed, snr=0.1, box=40):
    folder = tmp_path_factory.mktemp(name)
    truth = simulate_particles(SyntheticSpec(n=n, snr=snr, seed=seed, out_box=box), folder)
    truth["reference"] = write_reference(truth["maps"]["conformation_1"], truth["angpix"], 40.0, folder / "ref.mrc")
    return truth


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return _dataset(tmp_path_factory, "small", 120, 11, box=32)


def _cli(argv):
    return cli.main(["class3d", *argv])


def _fast_flags(out, iterations):
    return ["--out", str(out), "--classes", "2", "--iterations", str(iterations), "--healpix-order", "1",
            "--offset-range", "3", "--offset-step", "1.5", "--diameter", "130", "--device", "cpu"]


def rotate_map(vol: np.ndarray, a: np.ndarray) -> np.ndarray:
    """out(p) = vol(a p), p = (x, y, z) about voxel N//2 (arrays are z, y, x), cubic interpolation."""
    n = vol.shape[0]
    c, rev = np.full(3, n // 2, float), np.eye(3)[::-1]
    m = rev @ a @ rev
    return ndimage.affine_transform(vol, m, offset=c - m @ c, order=3, mode="constant")


def frame_rotation(true_rotations: np.ndarray, estimated: np.ndarray) -> np.ndarray:
    """The mean Q of R_true^T R_est (3, 3): a map refined with poses R_true Q is the true map read at Q^T p."""
    return Rotation.from_matrix(np.transpose(true_rotations, (0, 2, 1)) @ estimated).mean().as_matrix()


def test_frame_correction_recovers_a_map_reconstructed_in_a_rotated_frame(small):
    """The convention the accuracy test relies on: back-project the particles at R_true Q (a class whose frame is
    rotated by Q, as a class grown from a reference of another conformation is), then rotate_map(vol, Q^T) is the
    true map again, and frame_rotation finds Q from the poses."""
    ps = load_particles(small["star"])
    ctf = np.asarray(ctf_2d(ps.ctf, ps.box, ps.angpix), dtype=np.float64)
    q = Rotation.from_rotvec(np.deg2rad(15.0) * np.array([0.3, 0.5, 0.81]) / np.linalg.norm([0.3, 0.5, 0.81]))
    q = q.as_matrix()
    poses = small["rotations"] @ q
    assert np.allclose(frame_rotation(small["rotations"], poses), q, atol=1e-6)
    sel = small["model"] == 0
    bp = BackProjector(ps.box, get_backend("cpu"))
    spec = shift_phase(ps.spectra[sel].astype(np.complex128), small["origins_A"][sel] / ps.angpix, ps.box)
    bp.insert(spec * ctf[sel], poses[sel], weights=ctf[sel] ** 2)
    vol = np.asarray(bp.reconstruct(wiener_constant=0.05 * sel.sum()))
    true = small["maps"]["conformation_1"]
    as_is, back, wrong = (fsc(v, true)[2:7].mean() for v in (vol, rotate_map(vol, q.T), rotate_map(vol, q)))
    assert back > 0.8 and back > as_is + 0.2 and back > wrong + 0.2, (as_is, back, wrong)


@pytest.mark.slow
def test_separates_conformations(tmp_path_factory, tmp_path):
    """The issue's criteria: >= 90% of particles in the class of their conformation, FSC(0.5) with the true map at
    <= 4 px, median angular error <= the angular sampling (HEALPix order 2: 15 deg). SNR 0.3 here; ~3.5 min on
    2 cores.

    The FSC is taken in the true map's frame. A class grown from a reference of the other conformation settles in
    a frame rotated by several degrees (the orientation that best fits the reference at low resolution; nothing
    later moves it). Each class map is rotated back by the mean rotation between the true and estimated poses of
    its particles (:func:`frame_rotation`). Measured 2026-12-02 here (1,000 particles): 94.4% right class,
    median angular error 7.9 deg; conformation-1 class 1.3 deg off, FSC(0.5) 2.84 px as is and in the true frame;
    conformation-2 class 7.8 deg off, 4.89 px as is, 3.16 px in the true frame."""
    truth = _dataset(tmp_path_factory, "mixture", 1000, 5, snr=0.3)
    params = Class3DParams(classes=2, iterations=12, healpix_order=2, offset_range=1.5, offset_step=1.5,
                           ini_high=60.0, particle_diameter=130.0)  # measured with RELION's 60 A first limit
    out = classify(params, EMInputs(truth["star"], truth["reference"]), tmp_path, StageContext.local())
    table, maps = out.particles.table, out.model.maps
    cls = table["rlnClassNumber"].to_numpy() - 1
    # classes are unlabelled: match them to conformations by the permutation that agrees best
    names = ["conformation_1", "conformation_2"]
    assign = max(([0, 1], [1, 0]), key=lambda a: np.mean(np.take(a, cls) == truth["model"]))
    accuracy = np.mean(np.take(assign, cls) == truth["model"])
    poses = euler_to_matrix(table.rlnAngleRot, table.rlnAngleTilt, table.rlnAnglePsi)
    res_px, frame_deg, as_is_px = [], [], []
    for k in range(2):
        mine = (cls == k) & (truth["model"] == assign[k])
        q = frame_rotation(truth["rotations"][mine], poses[mine])
        frame_deg.append(round(float(np.degrees(Rotation.from_matrix(q).magnitude())), 1))
        true = truth["maps"][names[assign[k]]]
        for out_list, vol in ((res_px, rotate_map(maps[k], q.T)), (as_is_px, maps[k])):
            out_list.append(resolution_at(fsc(vol, true), 40, truth["angpix"], 0.5) / truth["angpix"])
    err = rotation_angle_between(poses, truth["rotations"])
    print(f"class accuracy {accuracy:.3f}, FSC(0.5) px in the true frame {res_px} (as is {as_is_px}, frames "
          f"{frame_deg} deg off), median angular error {np.median(err):.1f} deg")
    assert accuracy >= 0.9, accuracy
    assert max(res_px) <= 4.0, res_px
    assert np.median(err) <= 15.0, np.median(err)
    for name in ("run_it012_data.star", "run_it012_model.star", "run_it012_class001.mrc", "run_it012_class002.mrc",
                 "class3d_slices.png", "class3d_progress.png"):
        assert (tmp_path / name).exists()


def test_run_from_python_lists_its_files_and_notes_and_continues(small, tmp_path):
    """``run`` as a notebook calls it: the files it wrote (the last iteration linked under run_*), the notes and
    inputs for the record; then a continue that names only the checkpoint (the particles come from it)."""
    params = Class3DParams(classes=2, iterations=1, healpix_order=0, offset_range=0.0, particle_diameter=130.0)
    first = run(params, EMInputs(small["star"], small["reference"]), tmp_path / "a", StageContext.local())
    assert sorted(Path(f).name for f in first.files) == sorted(
        [f"run_it001_{x}" for x in ("data.star", "model.star", "class001.mrc", "class002.mrc")]
        + ["class3d_slices.png", "class3d_progress.png", "run_data.star", "run_model.star", "run_class001.mrc",
           "run_class002.mrc"])
    assert all((tmp_path / "a" / Path(f).name).is_file() for f in first.files)
    assert first.notes["iteration"] == 1 and first.notes["classes"] == 2
    assert first.notes["parameters"]["particle_diameter"] == 130.0
    assert first.inputs == [small["star"], small["reference"]]
    checkpoint = tmp_path / "a" / "run_it001"
    more = run(given(Class3DParams, iterations=2), EMInputs(continue_from=checkpoint), tmp_path / "b",
               StageContext.local())
    assert more.notes["iteration"] == 2
    assert {k: more.notes["parameters"][k] for k in ("classes", "healpix_order", "particle_diameter", "iterations")} \
        == {"classes": 2, "healpix_order": 0, "particle_diameter": 130.0, "iterations": 2}
    assert more.inputs == [Path(os.path.abspath(small["star"])), Path(f"{checkpoint}_model.star"),
                           Path(f"{checkpoint}_data.star")]
    assert (tmp_path / "b" / "run_class002.mrc").is_file()


def test_continue_equals_uninterrupted(small, tmp_path):
    """3 iterations + --continue to 5 give the iteration-5 result of 5 uninterrupted iterations."""
    ref, star = str(small["reference"]), str(small["star"])
    assert _cli(["--particles", star, "--reference", ref, *_fast_flags(tmp_path / "a", 5)]) == 0
    assert _cli(["--particles", star, "--reference", ref, *_fast_flags(tmp_path / "b", 3)]) == 0
    assert _cli(["--continue", str(tmp_path / "b" / "run_it003"), *_fast_flags(tmp_path / "b", 5)[:6]]) == 0
    a, b = read_model(tmp_path / "a" / "run_it005"), read_model(tmp_path / "b" / "run_it005")
    np.testing.assert_array_equal(a.maps, b.maps)
    np.testing.assert_array_equal(a.pdf_class, b.pdf_class)
    da = read_particles(tmp_path / "a" / "run_it005_data.star")
    db = read_particles(tmp_path / "b" / "run_it005_data.star")
    cols = ["rlnClassNumber", "rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst"]
    np.testing.assert_array_equal(da[cols].to_numpy(), db[cols].to_numpy())
    general = read_star(tmp_path / "b" / "run_it005_model.star")["model_general"]
    assert int(general["rlnNrClasses"].iloc[0]) == 2
    # an option that cannot change on continue is refused
    flags = _fast_flags(tmp_path / "b", 6)
    flags[flags.index("--classes") + 1] = "3"
    assert _cli(["--continue", str(tmp_path / "b" / "run_it005"), *flags]) == 2


@pytest.mark.mpi
def test_mpi_two_ranks_equal_one(small, tmp_path):
    """2 MPI ranks (size asserted) give the single-rank result within float tolerance, after one iteration.

    Per-particle results and the reduced sums agree to float rounding (log-likelihoods: but for a sample at the
    significance threshold, which may flip); the maps agree less tightly because the
    half-set SSNR = 2 FSC / (1 - FSC) is ill-conditioned near FSC = 1 (a few % SSNR change at the limit shell)."""
    ref, star = str(small["reference"]), str(small["star"])
    assert _cli(["--particles", star, "--reference", ref, *_fast_flags(tmp_path / "one", 1)]) == 0
    mpiexec = Path(sys.executable).parent / "mpiexec"
    code = ("import sys; from mpi4py import MPI; assert MPI.COMM_WORLD.Get_size() == 2; from cryopipe import cli; "
            "sys.exit(cli.main(sys.argv[1:]))")
    argv = ["class3d", "--particles", star, "--reference", ref, *_fast_flags(tmp_path / "two", 1)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([str(mpiexec), "-n", "2", sys.executable, "-c", code, *argv], capture_output=True,
                          text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = read_model(tmp_path / "one" / "run_it001"), read_model(tmp_path / "two" / "run_it001")
    np.testing.assert_allclose(two.sigma2, one.sigma2, rtol=1e-6)
    for k in range(2):
        assert fsc(one.maps[k], two.maps[k])[:4].min() > 0.999
    np.testing.assert_allclose(two.pdf_class, one.pdf_class, rtol=1e-6)
    d1 = read_particles(tmp_path / "one" / "run_it001_data.star")
    d2 = read_particles(tmp_path / "two" / "run_it001_data.star")
    np.testing.assert_array_equal(d1["rlnClassNumber"], d2["rlnClassNumber"])
    # a sample at the significance threshold can fall on either side with the rounding of differently composed
    # batches (BLAS): that particle's log-likelihood then moves by its weight share. Measured here: one particle
    # with 491 vs 492 significant samples (44,954 vs 44,955 in all), its log-likelihood 1.4e-4 apart
    diff = np.abs(d1["rlnLogLikeliContribution"] - d2["rlnLogLikeliContribution"])
    assert diff.max() < 1e-3 and np.mean(diff < 1e-5) >= 0.95, np.sort(diff)[-5:]
    assert '"mpi_size": 2' in (tmp_path / "two" / "provenance.json").read_text()


@pytest.mark.gpu
def test_gpu_equals_cpu(small, tmp_path):
    """One iteration on the GPU gives the CPU's assignments, angles and maps within float32 tolerance."""
    params = Class3DParams(classes=2, iterations=1, **FAST)
    runs = [classify(params, EMInputs(small["star"], small["reference"]), tmp_path / dev, StageContext.local(dev))
            for dev in ("cpu", "gpu")]
    a, b = (r.particles.table for r in runs)
    assert np.mean(a["rlnClassNumber"] == b["rlnClassNumber"]) > 0.97
    err = rotation_angle_between(euler_to_matrix(a.rlnAngleRot, a.rlnAngleTilt, a.rlnAnglePsi),
                                 euler_to_matrix(b.rlnAngleRot, b.rlnAngleTilt, b.rlnAnglePsi))
    assert np.mean(err < 1e-3) > 0.97
    for k in range(2):
        assert fsc(runs[0].model.maps[k], runs[1].model.maps[k])[:6].min() > 0.99


def test_bad_inputs_are_clear_errors(small, tmp_path, capsys):
    star, ref = str(small["star"]), str(small["reference"])
    flags = _fast_flags(tmp_path / "out", 1)
    # reference box differs from the particles'
    bad_box = tmp_path / "box.mrc"
    write_mrc(bad_box, np.zeros((40, 40, 40), np.float32), small["angpix"])
    assert _cli(["--particles", star, "--reference", str(bad_box), *flags]) == 2
    assert "box" in capsys.readouterr().err
    # reference pixel size differs
    bad_pix = tmp_path / "pix.mrc"
    write_mrc(bad_pix, np.zeros((32, 32, 32), np.float32), 2.0)
    assert _cli(["--particles", star, "--reference", str(bad_pix), *flags]) == 2
    assert "pixel size" in capsys.readouterr().err
    # K < 1
    k0 = list(flags)
    k0[k0.index("--classes") + 1] = "0"
    assert _cli(["--particles", star, "--reference", ref, *k0]) == 2
    assert "K must be >= 1" in capsys.readouterr().err
    # particles without CTF columns
    table = read_particles(star)
    no_ctf = tmp_path / "noctf.star"
    table["rlnImageName"] = [f"{i + 1}@{Path(star).parent / 'particles.mrcs'}" for i in range(len(table))]
    write_table(no_ctf, table.drop(columns=["rlnDefocusU"]))
    assert _cli(["--particles", str(no_ctf), "--reference", ref, *flags]) == 2
    assert "rlnDefocusU" in capsys.readouterr().err
    assert not (tmp_path / "out" / "run_it001_model.star").exists()


def test_outputs_keep_the_image_names_and_name_the_maps_with_their_folder(small, tmp_path, monkeypatch):
    """RELION-clean outputs: the data STARs keep rlnImageName as the input STAR gives it (relative names stay
    relative, resolved from the working directory as RELION does; they used to be made absolute), and the model STAR
    names each class map with the published folder as seen from the working directory, as RELION's
    Class3D/job010/run_it025_class001.mrc (it used to be the bare file name). --continue still reads the maps beside
    the checkpoint, wherever the run is."""
    monkeypatch.chdir(small["star"].parent)
    params = Class3DParams(classes=2, iterations=1, healpix_order=0, offset_range=0.0, particle_diameter=130.0)
    out = tmp_path / "work"
    run(params, EMInputs(Path("particles.star"), small["reference"]), out,
        StageContext.local(out_final=Path("Class3D/job010")))
    names = read_star("particles.star")["particles"]["rlnImageName"].tolist()
    assert names[:2] == ["1@particles.mrcs", "2@particles.mrcs"]
    for star in ("run_it001_data.star", "run_data.star"):
        assert read_star(out / star)["particles"]["rlnImageName"].tolist() == names
    for star in ("run_it001_model.star", "run_model.star"):
        assert read_star(out / star)["model_classes"]["rlnReferenceImage"].tolist() == [
            "Class3D/job010/run_it001_class001.mrc", "Class3D/job010/run_it001_class002.mrc"]
    more = run(given(Class3DParams, iterations=2), EMInputs(continue_from=out / "run_it001"), tmp_path / "more",
               StageContext.local())
    assert more.notes["iteration"] == 2
    assert read_star(tmp_path / "more" / "run_it002_data.star")["particles"]["rlnImageName"].tolist() == names
    assert read_star(tmp_path / "more" / "run_it002_model.star")["model_classes"]["rlnReferenceImage"][0] == str(
        tmp_path / "more" / "run_it002_class001.mrc")


def test_each_iteration_logs_its_count_time_and_time_left(small, tmp_path, caplog):
    """The log of a run (a file under SLURM) says which iteration of how many, its time and the time left, once
    (rank 0); the last iteration gives the whole time."""
    caplog.set_level(logging.INFO, logger="cryopipe.class3d")
    params = Class3DParams(classes=2, iterations=2, healpix_order=0, offset_range=0.0, particle_diameter=130.0)
    classify(params, EMInputs(small["star"], small["reference"]), tmp_path, StageContext.local())
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("iteration ")]
    assert len(lines) == 2
    assert re.fullmatch(r"iteration 1/2: E-step limit .*, classes \[.*\], [^,]+ s, about [^,]+ s left", lines[0])
    assert re.fullmatch(r"iteration 2/2: .*, [^,]+ s, [^,]+ s in all", lines[1])
