"""Helpers the benchmark scripts share: timing on a synchronised device and the code's commit."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import numpy as np


def git_commit() -> str:
    """Short commit of the checkout, or $CRYOPIPE_COMMIT (set it where the copy has no .git), or 'unknown'."""
    if os.environ.get("CRYOPIPE_COMMIT"):
        return os.environ["CRYOPIPE_COMMIT"]
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def timed(fn, bk, repeat: int = 1, statistic=np.median) -> float:
    """Wall time of ``fn()`` over ``repeat`` runs (median by default), the device synchronised around each."""
    times = []
    for _ in range(repeat):
        bk.synchronize()
        t0 = time.perf_counter()
        fn()
        bk.synchronize()
        times.append(time.perf_counter() - t0)
    return float(statistic(times))
