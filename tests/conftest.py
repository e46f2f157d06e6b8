"""Shared fixtures: backends (cpu always, gpu when CuPy sees a device), seeded RNG."""

import os
import sys
from pathlib import Path

import numpy as np
import pytest

from cryopipe.backend import get_backend, gpu_available


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="no CUDA GPU visible to CuPy")
    for item in items:
        if "gpu" in item.keywords and not gpu_available():
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True, scope="session")
def _scratch_in_the_suites_tmp(tmp_path_factory):
    """The stages cache stacks under $TMPDIR (cryopipe.cache): keep the suite's copies out of the machine's /tmp."""
    os.environ["TMPDIR"] = str(tmp_path_factory.mktemp("scratch"))


@pytest.fixture
def mpiexec() -> Path:
    """The mpiexec of the interpreter's environment (the 'mpi' extra's MPICH); the test is skipped without it."""
    path = Path(sys.executable).parent / "mpiexec"
    if not path.exists():
        pytest.skip("no mpiexec next to the interpreter (install the 'mpi' extra)")
    return path


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


@pytest.fixture
def cpu():
    return get_backend("cpu")


@pytest.fixture
def gpu():
    if not gpu_available():
        pytest.skip("no CUDA GPU visible to CuPy")
    return get_backend("gpu")


@pytest.fixture(params=["cpu", pytest.param("gpu", marks=pytest.mark.gpu)])
def bk(request):
    """Each test using ``bk`` runs on the CPU and (marked gpu) on the GPU."""
    if request.param == "gpu" and not gpu_available():
        pytest.skip("no CUDA GPU visible to CuPy")
    return get_backend(request.param)
