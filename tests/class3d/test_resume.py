"""A class3d run killed with SIGKILL: the same command continues from the last complete iteration and ends with the
uninterrupted run's result bit for bit; a killed rerun with another parameter leaves the published run untouched."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cryopipe.cli import main
from cryopipe.em3d.model import read_model
from cryopipe.em3d.synthetic import SyntheticSpec, simulate_particles, write_reference


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    folder = tmp_path_factory.mktemp("resume")
    truth = simulate_particles(SyntheticSpec(n=120, snr=0.1, seed=11, out_box=32), folder)
    truth["reference"] = write_reference(truth["maps"]["conformation_1"], truth["angpix"], 40.0, folder / "ref.mrc")
    return truth


def _argv(small, out, tau2="4", iterations=4):
    return ["class3d", "--particles", str(small["star"]), "--reference", str(small["reference"]), "--out", str(out),
            "--classes", "2", "--iterations", str(iterations), "--healpix-order", "1", "--offset-range", "3",
            "--offset-step", "1.5", "--diameter", "130", "--tau2-fudge", tau2, "--device", "cpu"]


def _kill_after(argv, out: Path, iteration: int) -> None:
    """Run ``cryopipe <argv>`` in a child and SIGKILL it once iteration ``iteration``'s checkpoint is complete."""
    proc = subprocess.Popen([sys.executable, "-m", "cryopipe.cli", *argv], stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not list(out.glob(f".run-*/run_it{iteration:03d}_data.star")):
        assert proc.poll() is None and time.time() < deadline, "the run ended before it could be killed"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def _content(path: Path) -> bytes:
    """A file's bytes, without a STAR file's first line (starfile's "Created ... at <time>" comment)."""
    data = path.read_bytes()
    return data.split(b"\n", 1)[1] if path.suffix == ".star" and data.startswith(b"#") else data


def _published(out: Path) -> dict:
    return {p.relative_to(out): p.read_bytes() for p in out.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(out).parts)}


@pytest.mark.slow
def test_killed_run_resumes_and_equals_uninterrupted_and_a_killed_change_keeps_the_published_run(
        small, tmp_path, capsys):
    assert main(_argv(small, tmp_path / "a")) == 0
    out = tmp_path / "b"
    _kill_after(_argv(small, out), out, 2)
    assert not (out / "provenance.json").exists() and not _published(out)  # nothing was published

    assert main(_argv(small, out)) == 0
    assert "resuming an interrupted run with the same parameters and inputs from its iteration" in \
        capsys.readouterr().err
    record = json.loads((out / "provenance.json").read_text())
    assert record["notes"]["resumed_from_iteration"] >= 2
    a, b = read_model(tmp_path / "a" / "run_it004"), read_model(out / "run_it004")
    np.testing.assert_array_equal(a.maps, b.maps)
    np.testing.assert_array_equal(a.pdf_class, b.pdf_class)
    for name in ("run_it004_data.star", "run_it001_model.star", "run_it004_model.star"):
        # model STARs name their maps with the folder they are published in (as RELION does): a/ vs b/
        expected = _content(tmp_path / "a" / name).replace(str(tmp_path / "a").encode(), str(out).encode())
        assert expected == _content(out / name), name
    assert sorted(p.name for p in out.glob("run_it*_data.star")) == [f"run_it00{i}_data.star" for i in (1, 2, 3, 4)]

    # a rerun with another parameter, killed: the published run (and its record) is untouched
    before = _published(out)
    _kill_after(_argv(small, out, tau2="2"), out, 1)
    assert _published(out) == before
    # the same changed command then finishes, and the folder holds that run alone
    assert main(_argv(small, out, tau2="2", iterations=3)) == 0
    record = json.loads((out / "provenance.json").read_text())
    assert record["parameters"]["tau2_fudge"] == 2.0 and "resumed_from_iteration" not in record.get("notes", {})
    assert sorted(p.name for p in out.glob("run_it*_data.star")) == [f"run_it00{i}_data.star" for i in (1, 2, 3)]
    assert not list(out.glob(".run-*")) and not list(out.glob(".staging-*"))
