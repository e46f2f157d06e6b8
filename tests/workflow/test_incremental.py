"""Incremental processing of your own micrographs: micrographs arriving (their rows appended to the CTF STAR)
rerun only the new batches and the stages after the gathered particles; a changed CTF row reruns the picking (its
templates are CTF-aware) and the extraction of its batch only.

The finished workflows are made with `--touch --forceall` over placeholder outputs (Snakemake records the same
metadata as a real run); tests/workflow/test_reruns.py does the same with real runs."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SNAKEMAKE = shutil.which("snakemake", path=str(BIN))
ENV = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(SNAKEMAKE is None, reason="snakemake not installed (install the 'test' extra)"),
]

AFTER_GATHER = {(rule, None) for rule in ("gather_particles", "class2d", "select2d", "initial_model", "class3d",
                                           "select3d", "refine3d", "postprocess", "summary")}


def snakemake(workdir: Path, *args: str) -> str:
    proc = subprocess.run([SNAKEMAKE, "-s", str(REPO / "Snakefile"), "-d", str(workdir), "--cores", "1",
                           f"--configfile={workdir / 'my.yaml'}", *args], capture_output=True, text=True, env=ENV,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def jobs(workdir: Path) -> set[tuple[str, str | None]]:
    """(rule, batch) of every job a dry run plans (batch None for rules without one)."""
    out = snakemake(workdir, "-n")
    if "Nothing to be done" in out:
        return set()
    found = set()
    for block in re.split(r"\n(?=\S*rule \w+:)", out):
        rule = re.match(r"\S*rule (\w+):", block.strip())
        if rule and rule[1] != "all":
            batch = re.search(r"wildcards: batch=(\d+)", block)
            found.add((rule[1], batch[1] if batch else None))
    return found


def micrograph(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with mrcfile.new(path, overwrite=True) as m:
        m.set_data(np.zeros((16, 16), np.float32))
        m.voxel_size = 2.5


def write_star(path: Path, defocus: dict[str, float], voltage: float = 300) -> None:
    rows = "\n".join(f"Micrographs/{n}.mrc 1 {d} {d - 500} 10" for n, d in defocus.items())
    path.write_text("data_optics\n\nloop_\n_rlnOpticsGroup #1\n_rlnMicrographPixelSize #2\n_rlnVoltage #3\n"
                    f"_rlnSphericalAberration #4\n_rlnAmplitudeContrast #5\n1 2.5 {voltage} 2.7 0.1\n\n"
                    "data_micrographs\n\nloop_\n_rlnMicrographName #1\n_rlnOpticsGroup #2\n_rlnDefocusU #3\n"
                    "_rlnDefocusV #4\n_rlnDefocusAngle #5\n" + rows + "\n")


DEFOCUS = {f"mic_00{i}": 15000.0 + 1000 * i for i in range(1, 5)}


def finish(workdir: Path, estimate: bool) -> None:
    """Four micrographs in two batches of two, every job recorded as done."""
    for name in DEFOCUS:
        micrograph(workdir / "Micrographs" / f"{name}.mrc")
    with mrcfile.new(workdir / "ref.mrc") as m:
        m.set_data(np.zeros((16, 16, 16), np.float32))
    write_star(workdir / "micrographs_ctf.star", DEFOCUS)
    cfg = {"simulate": {"enabled": False}, "pick": {"batch_size": 2, "reference": "ref.mrc"},
           "micrographs": {"glob": "Micrographs/*.mrc", "ctf_star": "" if estimate else "micrographs_ctf.star",
                           "voltage": 300, "cs": 2.7, "amplitude_contrast": 0.1}}
    (workdir / "my.yaml").write_text(yaml.safe_dump(cfg))
    summary = snakemake(workdir, "--summary").splitlines()
    start = next(i for i, line in enumerate(summary) if line.startswith("output_file")) + 1
    for line in summary[start:]:
        path = workdir / line.split("\t")[0]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
    snakemake(workdir, "--touch", "--forceall")
    assert jobs(workdir) == set()


def test_appended_micrographs_rerun_only_their_new_batch(tmp_path):
    finish(tmp_path, estimate=False)
    micrograph(tmp_path / "Micrographs" / "mic_005.mrc")
    write_star(tmp_path / "micrographs_ctf.star", {**DEFOCUS, "mic_005": 21000.0})  # rows appended, file rewritten
    assert jobs(tmp_path) == {("pick", "0003"), ("extract", "0003")} | AFTER_GATHER


def test_a_rewritten_ctf_star_with_the_same_rows_reruns_nothing(tmp_path):
    finish(tmp_path, estimate=False)
    write_star(tmp_path / "micrographs_ctf.star", dict(reversed(DEFOCUS.items())))  # newer, rows in another order
    assert jobs(tmp_path) == set()


def test_a_changed_ctf_row_reruns_the_picking_and_extraction_of_its_batch_only(tmp_path):
    finish(tmp_path, estimate=False)
    write_star(tmp_path / "micrographs_ctf.star", {**DEFOCUS, "mic_003": 30000.0})
    assert jobs(tmp_path) == {("pick", "0002"), ("extract", "0002")} | AFTER_GATHER


def test_changed_optics_rerun_every_batch(tmp_path):
    finish(tmp_path, estimate=False)
    write_star(tmp_path / "micrographs_ctf.star", DEFOCUS, voltage=200)
    assert jobs(tmp_path) == {("pick", "0001"), ("pick", "0002"), ("extract", "0001"), ("extract", "0002")} \
        | AFTER_GATHER


def test_new_micrographs_with_estimated_ctfs_rerun_only_their_new_batch(tmp_path):
    finish(tmp_path, estimate=True)
    micrograph(tmp_path / "Micrographs" / "mic_005.mrc")
    assert jobs(tmp_path) == {("ctf", "0003"), ("pick", "0003"), ("extract", "0003")} | AFTER_GATHER
