"""Micrographs alone (no CTF STAR): the workflow estimates each batch's CTF (rule ctf) and extraction gives the
particles those estimates, near the simulated truth."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import starfile
import yaml

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SNAKEMAKE = shutil.which("snakemake", path=str(BIN))

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(SNAKEMAKE is None, reason="snakemake not installed (install the 'test' extra)"),
]


def test_micrographs_without_a_ctf_star_get_estimated_ctfs(tmp_path):
    data = tmp_path / "data"
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    subprocess.run([BIN / "cryopipe", "simulate", "--out", str(data), "--micrographs", "2", "--size-px", "512",
                    "--particles-per-micrograph", "6", "--ice-snr", "1.0", "--seed", "5"],
                   check=True, capture_output=True, env=env)
    config = {"simulate": {"enabled": False},
              "micrographs": {"glob": str(data / "micrographs" / "*.mrc"), "voltage": 300, "cs": 2.7,
                              "amplitude_contrast": 0.1},
              "pick": {"reference": str(data / "maps" / "conformation_1.mrc")},
              "ctf": {"tile": 256}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    proc = subprocess.run([SNAKEMAKE, "-s", str(REPO / "Snakefile"), "-d", str(tmp_path), "--cores", "2",
                           f"--configfile={tmp_path / 'c.yaml'}", "extract_all"],
                          capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    estimated = starfile.read(tmp_path / "results/ctf/batch_0001/micrographs_ctf.star", always_dict=True)
    truth = starfile.read(data / "micrographs_ctf.star", always_dict=True)["micrographs"]
    est = estimated["micrographs"].set_index(estimated["micrographs"]["rlnMicrographName"].map(lambda n: Path(n).name))
    true = truth.set_index(truth["rlnMicrographName"].map(lambda n: Path(n).name))
    mean = lambda t: (t["rlnDefocusU"] + t["rlnDefocusV"]) / 2  # noqa: E731
    error = (mean(est) - mean(true.loc[est.index])).abs() / mean(true.loc[est.index])
    assert error.max() < 0.02, error
    particles = starfile.read(tmp_path / "results/extract/particles.star", always_dict=True)["particles"]
    by_mic = particles.groupby(particles["rlnMicrographName"].map(lambda n: Path(n).name))["rlnDefocusU"].first()
    np.testing.assert_allclose(by_mic.to_numpy(), est.loc[by_mic.index, "rlnDefocusU"].to_numpy())


def test_demo_switch_estimates_the_ctf_and_compares_it_with_the_truth(tmp_path):
    """ctf.estimate with the demo (and its ice): rule ctf runs and its record holds the errors against the truth."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    config = {"simulate": {"enabled": True, "micrographs": 2, "size_px": 512, "particles_per_micrograph": 6,
                           "ice_snr": 1.0},
              "ctf": {"estimate": True, "tile": 256}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    proc = subprocess.run([SNAKEMAKE, "-s", str(REPO / "Snakefile"), "-d", str(tmp_path), "--cores", "2",
                           f"--configfile={tmp_path / 'c.yaml'}", "ctf_all"],
                          capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    record = json.loads((tmp_path / "results/ctf/batch_0001/provenance.json").read_text())
    errors = record["notes"]["against_truth"]
    assert errors["median_defocus_error_percent"] < 2.0, errors
    assert (tmp_path / "results/ctf/batch_0001/ctf_summary.png").stat().st_size > 1000
