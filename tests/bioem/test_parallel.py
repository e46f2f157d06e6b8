"""MPI ranks split the orientations: 2 ranks give the 1-rank result; GPU equals CPU (float32 tolerance)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import starfile

from cryopipe.backend import get_backend
from cryopipe.bioem import stage
from cryopipe.bioem.integrate import Result, reduce_ranks

from .conftest import make_demo_particles

ARGS = ["--orientation-grid", "0", "--defocus-grid", "-300", "300", "2", "--displacement", "2", "1",
        "--keep-orientations", "--device", "cpu"]


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return make_demo_particles(tmp_path_factory.mktemp("small"), n=6, box=32, angpix=5.0, snr=0.5)


class _FakeComm:
    def __init__(self, rank, size):
        self.rank, self.size = rank, size

    def Get_rank(self):
        return self.rank

    def Get_size(self):
        return self.size


def test_orientation_split_and_max_shifted_reduction_equal_one_rank(small, monkeypatch):
    star, models, _ = small
    ds = stage.load_particles(star)
    params = stage.RankParams(orientation_order=0, defocus_grid=(-300, 300, 2), max_shift_px=2, keep_orientations=True)
    model = stage.read_structural_model(models["conformation_1"], ds.angpix, params)
    one = stage.compute_log_p(model, ds, params, get_backend("cpu"))
    monkeypatch.setattr(stage, "reduce_ranks", lambda res, comm: res)  # keep each rank's partial result
    parts = [stage.compute_log_p(model, ds, params, get_backend("cpu"), _FakeComm(rank, 3)).result for rank in range(3)]

    class _Gather(_FakeComm):
        def allgather(self, obj):
            return parts

    combined: Result = reduce_ranks(parts[0], _Gather(0, 3))
    np.testing.assert_allclose(combined.log_sum, one.result.log_sum, rtol=0, atol=1e-9)
    for name in ("best_orientation", "best_ctf", "best_shift"):
        np.testing.assert_array_equal(getattr(combined, name), getattr(one.result, name))
    np.testing.assert_allclose(combined.orientation_log_sum, one.result.orientation_log_sum, atol=1e-9)


def _run(n_ranks, star, models, out):
    script = "import sys, cryopipe.cli as c\nsys.exit(c.main(sys.argv[1:]))\n"
    argv = ["bioem", "--particles", str(star), "--models", str(models["conformation_1"]), str(models["decoy"]),
            "--out", str(out), *ARGS]
    cmd = [sys.executable, "-c", script, *argv]
    if n_ranks > 1:
        cmd = [str(Path(sys.executable).parent / "mpiexec"), "-n", str(n_ranks), *cmd]
    subprocess.run(cmd, check=True, timeout=300)
    return starfile.read(out / "logp.star"), np.load(out / "orientation_logp.npz")["log_p"]


@pytest.mark.mpi
def test_two_mpi_ranks_equal_one(small, tmp_path):
    if not (Path(sys.executable).parent / "mpiexec").exists():
        pytest.skip("no mpiexec next to the interpreter")
    star, models, _ = small
    one, orient1 = _run(1, star, models, tmp_path / "one")
    two, orient2 = _run(2, star, models, tmp_path / "two")
    assert json.loads((tmp_path / "two" / "provenance.json").read_text())["mpi_size"] == 2
    np.testing.assert_allclose(two["cpLogP"], one["cpLogP"], rtol=0, atol=1e-8)
    for col in ("cpOrientationIndex", "rlnDefocusU", "rlnOriginXAngst", "rlnOriginYAngst"):
        np.testing.assert_array_equal(two[col], one[col])
    np.testing.assert_allclose(orient2, orient1, atol=1e-8)


@pytest.mark.gpu
def test_gpu_equals_cpu(small):
    star, models, _ = small
    ds = stage.load_particles(star)
    for name, extra in (("conformation_1", {}), ("decoy", {"shape": "sphere", "points": "atom"})):
        params = stage.RankParams(orientation_order=0, defocus_grid=(-300, 300, 2), max_shift_px=2,
                                  keep_orientations=True, **extra)
        model = stage.read_structural_model(models[name], ds.angpix, params)
        cpu = stage.compute_log_p(model, ds, params, get_backend("cpu"))
        gpu = stage.compute_log_p(model, ds, params, get_backend("gpu"))
        # float32 FFTs on the GPU: ln P agrees to ~1e-5 relative, the same grid point wins
        np.testing.assert_allclose(gpu.log_p, cpu.log_p, rtol=2e-5, atol=0.05)
        np.testing.assert_array_equal(gpu.best["cpOrientationIndex"], cpu.best["cpOrientationIndex"])
        np.testing.assert_allclose(gpu.orientation_log_p, cpu.orientation_log_p, rtol=2e-5, atol=0.05)
        double = stage.compute_log_p(model, ds, stage.RankParams(**{**params.__dict__, "precision": "double"}),
                                     get_backend("gpu"))
        np.testing.assert_allclose(double.log_p, cpu.log_p, rtol=1e-10, atol=1e-6)


@pytest.mark.gpu
def test_gpu_compat_equals_cpu(case):
    args, folder = case("pdb_mrc")
    run = stage.load_compat(folder / args["Inputfile"], folder / args["Particlesfile"])
    model = stage.compat.read_pdb_residues(folder / args["Modelfile"])
    cpu = stage.compute_compat(model, run, get_backend("cpu"))
    gpu = stage.compute_compat(model, run, get_backend("gpu"))
    np.testing.assert_allclose(gpu.log_p, cpu.log_p, rtol=0, atol=1e-6)
