# Shared helpers for the rules: input selection, batches, flags. No science here.

import glob
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
