"""CheckpointWriter: checkpoints written in the background see the table as it was, and their errors surface."""

import threading
from types import SimpleNamespace

import pandas as pd
import pytest

from cryopipe.em3d import runner
from cryopipe.em3d.particles import ParticleSet


def _particles():
    return ParticleSet(pd.DataFrame({"rlnAngleRot": [1.0, 2.0]}), None, None, None, 1.0, 8, "p.star")


def test_background_checkpoint_writes_the_table_of_its_iteration(monkeypatch):
    release, seen = threading.Event(), []

    def slow_write(out, iteration, model, particles, halves=False, names_root=None):
        release.wait(5)
        seen.append((iteration, particles.table["rlnAngleRot"].tolist()))
        return [f"run_it{iteration:03d}"]

    monkeypatch.setattr(runner, "write_checkpoint", slow_write)
    writer, particles = runner.CheckpointWriter(), _particles()
    writer.submit("out", 1, SimpleNamespace(), particles)
    particles.table["rlnAngleRot"] = [9.0, 9.0]  # the next iteration updates the table meanwhile
    release.set()
    writer.submit("out", 2, SimpleNamespace(), particles)
    assert writer.wait() == ["run_it001", "run_it002"]
    assert seen == [(1, [1.0, 2.0]), (2, [9.0, 9.0])]


def test_error_in_a_background_checkpoint_is_raised(monkeypatch):
    def failing(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(runner, "write_checkpoint", failing)
    writer = runner.CheckpointWriter()
    writer.submit("out", 1, SimpleNamespace(), _particles())
    with pytest.raises(OSError, match="disk full"):
        writer.wait()
    assert writer.wait() == []
