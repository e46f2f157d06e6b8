"""A class2d output folder made by hand (5 classes, one tiny, one poor) and the CLI with select2d registered."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cryopipe import cli
from cryopipe.io.mrc import write_mrc
from cryopipe.io.star import write_star, write_table

SIZES = [100, 95, 90, 4, 60]
RESOLUTION = [10.0, 11.0, 10.5, 30.0, 40.0]
SCORES = [0.40, 0.38, 0.41, 0.10, 0.20]


@pytest.fixture
def class2d_dir(tmp_path) -> Path:
    out = tmp_path / "class2d"
    out.mkdir()
    write_mrc(out / "class_averages.mrcs", np.arange(5, dtype=np.float32)[:, None, None] * np.ones((5, 8, 8)), 4.0)
    classes = pd.DataFrame({
        "rlnReferenceImage": [f"{i + 1:06d}@{out / 'class_averages.mrcs'}" for i in range(5)],
        "rlnClassNumber": np.arange(1, 6), "rlnClassDistribution": np.array(SIZES) / sum(SIZES),
        "rlnEstimatedResolution": RESOLUTION, "cpClassSize": SIZES, "cpMeanScore": SCORES,
    })
    write_star(out / "classes.star", {"model_classes": classes})
    numbers = np.repeat(np.arange(1, 6), SIZES)
    particles = pd.DataFrame({
        "rlnImageName": [f"{i + 1:06d}@stack.mrcs" for i in range(len(numbers))], "rlnOpticsGroup": 1,
        "rlnClassNumber": numbers, "rlnAnglePsi": 0.0, "rlnImagePixelSize": 4.0, "rlnImageSize": 8,
    })
    write_table(out / "particles.star", particles)
    return out


@pytest.fixture
def run_cli():
    """``cryopipe`` in-process: run_cli([...]) -> exit status."""
    return cli.main
