"""The whole Snakemake DAG on a tiny config, in a temporary folder, with the real `cryopipe` command."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SNAKEMAKE = shutil.which("snakemake", path=str(Path(sys.executable).parent)) or shutil.which("snakemake")

pytestmark = pytest.mark.skipif(SNAKEMAKE is None, reason="snakemake not installed (install the 'test' extra)")

TINY = (Path(__file__).resolve().parents[1] / "workflow" / "tiny.yaml").read_text()


def _snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(
        [SNAKEMAKE, "-s", str(REPO / "Snakefile"), "-d", str(workdir), "--cores", "2", *args],
        capture_output=True, text=True, env=env, timeout=900,
    )


@pytest.mark.slow
def test_tiny_workflow_runs_end_to_end_with_provenance(tmp_path):
    (tmp_path / "tiny.yaml").write_text(TINY)
    proc = _snakemake(tmp_path, "--configfile", str(tmp_path / "tiny.yaml"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    sim = tmp_path / "results/simulate"
    assert sorted(p.name for p in (sim / "micrographs").iterdir()) == ["mic_001.mrc", "mic_002.mrc"]
    rec = json.loads((sim / "provenance.json").read_text())
    assert rec["stage"] == "simulate" and rec["parameters"]["size_px"] == 384
    assert {Path(o["path"]).name for o in rec["outputs"]} >= {"mic_001.mrc", "micrographs_ctf.star", "particles.star"}
    report = _snakemake(tmp_path, "--configfile", str(tmp_path / "tiny.yaml"), "--report", str(tmp_path / "r.html"))
    assert report.returncode == 0, report.stderr[-2000:]
    assert "micrograph.png" in (tmp_path / "r.html").read_text(errors="replace")
    # nothing left to do: a second run is a no-op
    again = _snakemake(tmp_path, "--configfile", str(tmp_path / "tiny.yaml"), "-n")
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr
    # fewer class3d iterations: the old run's run_it001 exists, but its record's parameters say 2, so it reruns
    (tmp_path / "fewer.yaml").write_text(TINY.replace("class3d:\n  iterations: 2", "class3d:\n  iterations: 1"))
    plan = _snakemake(tmp_path, "--configfile", str(tmp_path / "fewer.yaml"), "-n")
    assert plan.returncode == 0 and re.search(r"^class3d\s+1$", plan.stdout, flags=re.M), plan.stdout[-2000:]
    # the whole chain has its lineage: postprocess's map goes back through select3d and refine3d to the micrographs
    trail = subprocess.run([Path(sys.executable).parent / "cryopipe", "lineage",
                            str(tmp_path / "results/postprocess/map_sharpened.mrc")],
                           capture_output=True, text=True, check=True).stdout
    for stage in ("postprocess", "refine3d", "select3d", "class3d", "select2d", "class2d", "extract", "pick",
                  "simulate"):
        assert f"<- {stage}" in trail, (stage, trail[-3000:])
    assert "CHANGED" not in trail and "MISSING" not in trail


@pytest.mark.parametrize(
    "config, message",
    [
        ("simulate:\n  enabled: true\n  angpx: 2\n", "[simulate]: Additional properties are not allowed ('angpx'"),
        ("simulate:\n  enabled: true\n  angpix: -2.5\n", "[simulate.angpix]: -2.5 is less than or equal to"),
        ("device: tpu\n", "[device]: 'tpu' is not one of"),
    ],
)
def test_bad_config_stops_with_the_key_and_status_2(tmp_path, config, message):
    (tmp_path / "bad.yaml").write_text(config)
    proc = _snakemake(tmp_path, "--configfile", str(tmp_path / "bad.yaml"), "-n")
    assert proc.returncode == 2
    assert message in proc.stderr
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("orientations, flags, absent", [
    ("local", "--local-orientations results/refine3d/particles.star --local-map results/refine3d/map.mrc "
     "--local-radius 10 --local-step 5",
     "--orientation-grid"),
    ("global", "--orientation-grid 2", "--local-orientations"),
    ("refined", "--orientation-prior results/refine3d/particles.star --orientation-prior-sigma 10",
     "--orientation-grid"),
])
def test_bioem_integrates_over_the_orientations_the_config_asks_for(tmp_path, orientations, flags, absent):
    (tmp_path / "c.yaml").write_text(f"simulate:\n  enabled: true\nbioem:\n  orientations: {orientations}\n")
    proc = _snakemake(tmp_path, "--configfile", str(tmp_path / "c.yaml"), "-n", "-p", "bioem")
    assert proc.returncode == 0, proc.stderr[-2000:]
    command = next(line for line in proc.stdout.splitlines() if "cryopipe bioem" in line)
    assert flags in command and absent not in command


@pytest.mark.slow
def test_micrographs_alone_reach_a_refined_map_through_the_initial_model(tmp_path):
    """Simulated micrographs presented as your data (a glob and a CTF STAR; blob picking, no map, no models):
    picking, 2D classification, the initial model, 3D classification and refinement run, and the refined map's
    lineage goes through the initial model."""
    data = tmp_path / "data"
    cryopipe = Path(sys.executable).parent / "cryopipe"
    subprocess.run([cryopipe, "simulate", "--out", str(data), "--micrographs", "4", "--size-px", "512",
                    "--particles-per-micrograph", "24"], check=True, capture_output=True)
    mine = {"simulate": {"enabled": False},
            "micrographs": {"glob": "data/micrographs/*.mrc", "ctf_star": "data/micrographs_ctf.star"},
            "pick": {"templates": "blob"}, "extract": {"box": 64},
            "class2d": {"classes": 2, "iterations": 2}, "select2d": {"min_size": "off", "max_resolution": "off"},
            "initial_model": {"iterations": 3, "batch_size": 60},
            "class3d": {"iterations": 2, "healpix_order": 1, "offset_range": 2, "offset_step": 2},
            "refine3d": {"max_iterations": 2, "healpix_order": 0, "offset_range": 2, "offset_step": 2},
            "postprocess": {"bfactor": -50}}
    (tmp_path / "mine.yaml").write_text(json.dumps(mine))
    proc = _snakemake(tmp_path, "--configfile", str(tmp_path / "mine.yaml"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "leaves out bioem: bioem.models is empty" in proc.stderr
    results = tmp_path / "results"
    assert (results / "refine3d" / "map.mrc").exists() and (results / "postprocess" / "postprocess.star").exists()
    trail = subprocess.run([cryopipe, "lineage", str(results / "refine3d" / "map.mrc")], capture_output=True,
                           text=True, check=True).stdout
    for stage in ("refine3d", "select3d", "class3d", "initial-model", "select2d", "class2d", "extract", "pick"):
        assert f"<- {stage}" in trail, (stage, trail[-3000:])
    summary = (results / "summary" / "summary.tsv").read_text()
    assert "initial-model" in summary and "refine3d" in summary
