# Shared helpers for the rules: input selection, batches, flags. No science here.

import glob
import shutil
import os

RESULTS = config["results"]
SIM = config["simulate"]
USE_SIM = SIM["enabled"]
DEVICE = config["device"]


def sim_flags():
    """`cryopipe simulate` flags from config.simulate (every key but `enabled`)."""
    return " ".join(f"--{k.replace('_', '-')} {v}" for k, v in SIM.items() if k != "enabled")


def micrograph_paths():
    """The micrographs the workflow processes, known when the DAG is built."""
    if USE_SIM:
        return [f"{RESULTS}/simulate/micrographs/mic_{i + 1:03d}.mrc" for i in range(SIM.get("micrographs", 16))]
    pattern = config.get("micrographs", {}).get("glob", "")
    if not pattern:
        raise ValueError("config: micrographs.glob must be set when simulate.enabled is false")
    paths = sorted(glob.glob(pattern))
    if not paths:
        raise ValueError(f"config: micrographs.glob {pattern!r} matches no file")
    return paths


def ctf_star():
    if USE_SIM:
        return f"{RESULTS}/simulate/micrographs_ctf.star"
    return config["micrographs"]["ctf_star"]


ALL_TARGETS = []


MICROGRAPHS = micrograph_paths()
BATCH_SIZE = config["pick"]["batch_size"]
BATCHES = {
    f"{k:04d}": MICROGRAPHS[i : i + BATCH_SIZE] for k, i in enumerate(range(0, len(MICROGRAPHS), BATCH_SIZE), start=1)
}


def pick_reference():
    ref = config["pick"]["reference"]
    if ref:
        return ref
    if USE_SIM:
        return f"{RESULTS}/simulate/maps/conformation_1.mrc"
    raise ValueError("config: pick.reference must be set when simulate.enabled is false")


def flag(name, value):
    """A CLI flag from a config value: booleans become --name / --no-name, zero means 'not given'."""
    if isinstance(value, bool):
        return f"--{name}" if value else ""
    if value in (0, "", None):
        return ""
    return f"--{name} {value}"


def mpi_launch(wildcards, resources):
    """`{mpi} -n {tasks}` for MPI rules, or nothing when the profile sets no launcher (plain one-rank run)."""
    return f"{resources.mpi} -n {resources.tasks}" if resources.mpi else ""


MPI_DEFAULT = "mpiexec" if shutil.which("mpiexec") else ""


def _stage_threads():
    """Threads for one-job-at-a-time stages (class2d, class3d, bioem): every local core. Under a cluster
    executor there is no total (Snakemake raises): 1, and the profile's cpus_per_gpu sizes the job."""
    try:
        return workflow.cores if isinstance(workflow.cores, int) and 0 < workflow.cores < 1024 else 1
    except Exception:
        return 1


STAGE_THREADS = _stage_threads()
