"""Each MPI rank of a host takes its own GPU: the local rank from every launcher's variables, modulo the GPUs."""

import sys
import types

import pytest

from cryopipe import backend
from cryopipe.backend import GLOBAL_RANK_VARS, LOCAL_RANK_VARS, default_device_id, local_rank

ALL_VARS = (*LOCAL_RANK_VARS, *GLOBAL_RANK_VARS, "SLURM_PROCID")


@pytest.fixture
def clean_env(monkeypatch):
    """No launcher variables at all (the test runner may itself run under SLURM or mpiexec)."""
    for key in ALL_VARS:
        monkeypatch.delenv(key, raising=False)
    return monkeypatch


def test_no_launcher_is_rank_zero(clean_env):
    assert local_rank() == 0
    assert default_device_id(4) == 0


@pytest.mark.parametrize("env, expected", [
    ({"MPI_LOCALRANKID": "1", "PMI_RANK": "5", "PMI_SIZE": "8"}, 1),  # MPICH / Intel MPI Hydra, 2nd host
    ({"OMPI_COMM_WORLD_LOCAL_RANK": "3", "OMPI_COMM_WORLD_RANK": "7"}, 3),  # Open MPI
    ({"MV2_COMM_WORLD_LOCAL_RANK": "2"}, 2),  # MVAPICH2
    ({"PALS_LOCAL_RANKID": "1", "PMI_RANK": "1"}, 1),  # Cray PALS
    ({"SLURM_LOCALID": "3", "SLURM_PROCID": "7", "PMI_RANK": "7"}, 3),  # srun --mpi=pmi2
    ({"PMI_RANK": "1", "PMI_SIZE": "2"}, 1),  # MPICH's mpiexec.gforker: global rank only, one host
    ({"PMIX_RANK": "2"}, 2),
])
def test_local_rank_of_each_launcher(clean_env, env, expected):
    for key, value in env.items():
        clean_env.setenv(key, value)
    assert local_rank() == expected


def test_stale_slurm_variables_of_the_batch_step_are_ignored(clean_env):
    # mpiexec.gforker inside an sbatch script: every rank inherits SLURM_LOCALID=0 / SLURM_PROCID=0
    env = {"SLURM_LOCALID": "0", "SLURM_PROCID": "0", "PMI_RANK": "1"}
    assert local_rank(env) == 1
    # Hydra inside an sbatch script: its own local rank wins over the inherited SLURM_LOCALID
    assert local_rank({"SLURM_LOCALID": "0", "SLURM_PROCID": "0", "MPI_LOCALRANKID": "1", "PMI_RANK": "1"}) == 1


def test_malformed_values_are_skipped(clean_env):
    assert local_rank({"OMPI_COMM_WORLD_LOCAL_RANK": "", "MPI_LOCALRANKID": "2"}) == 2
    assert local_rank({"MPI_LOCALRANKID": "x"}) == 0


@pytest.mark.parametrize("rank, n_devices, expected", [(0, 2, 0), (1, 2, 1), (2, 2, 0), (3, 4, 3), (5, 1, 0)])
def test_device_is_local_rank_modulo_device_count(rank, n_devices, expected):
    assert default_device_id(n_devices, {"MPI_LOCALRANKID": str(rank)}) == expected


def _fake_cupy(monkeypatch, n_devices: int) -> list:
    """Install a CuPy stand-in that sees ``n_devices`` GPUs; returns the list of device ids made current."""
    used: list[int] = []

    class Device:
        def __init__(self, i):
            self.id = i

        def use(self):
            used.append(self.id)

    cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=lambda: n_devices), Device=Device)
    fake = types.SimpleNamespace(cuda=cuda)
    fft = types.ModuleType("cupyx.scipy.fft")
    scipy_mod = types.ModuleType("cupyx.scipy")
    scipy_mod.fft = fft
    cupyx = types.ModuleType("cupyx")
    cupyx.scipy = scipy_mod
    for name, mod in (("cupyx", cupyx), ("cupyx.scipy", scipy_mod), ("cupyx.scipy.fft", fft)):
        monkeypatch.setitem(sys.modules, name, mod)
    monkeypatch.setattr(backend, "_cupy", lambda: fake)
    return used


@pytest.mark.parametrize("env", [
    {"MPI_LOCALRANKID": "{r}", "PMI_RANK": "{r}", "PMI_SIZE": "2"},  # mpiexec (Hydra)
    {"OMPI_COMM_WORLD_LOCAL_RANK": "{r}", "OMPI_COMM_WORLD_RANK": "{r}", "OMPI_COMM_WORLD_SIZE": "2"},  # Open MPI
    {"PMI_RANK": "{r}", "PMI_SIZE": "2"},  # mpiexec.gforker
])
def test_two_ranks_take_two_distinct_gpus(clean_env, env):
    used = _fake_cupy(clean_env, n_devices=2)
    ids = []
    for r in range(2):
        for key, value in env.items():
            clean_env.setenv(key, value.format(r=r))
        ids.append(backend.get_backend("gpu").device_id)
    assert ids == [0, 1]
    assert used == [0, 1]


def test_explicit_device_id_wins(clean_env):
    used = _fake_cupy(clean_env, n_devices=2)
    clean_env.setenv("MPI_LOCALRANKID", "1")
    assert backend.get_backend("gpu", device_id=0).device_id == 0
    assert used == [0]
