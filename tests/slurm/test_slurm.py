"""Workflows on the live single-node SLURM (conftest.py) through ``--profile profiles/slurm``.

The profile is merged with tests/slurm/profile/config.yaml (sizes and polling for a 2-CPU node), so the
profile's own ``mpi``/``tasks``/``gpu`` entries are what run. Every job is checked in SLURM's records: it
completed, GPU rules held the fake GPUs, MPI rules ran ``tasks`` ranks under srun and said so.
"""

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
PROFILE = REPO / "profiles/slurm/config.yaml"
OVERLAY = Path(__file__).with_name("profile") / "config.yaml"
BIN = Path(sys.executable).parent
SNAKEMAKE = shutil.which("snakemake", path=str(BIN))

pytestmark = [
    pytest.mark.slurm,
    pytest.mark.skipif(SNAKEMAKE is None, reason="snakemake not installed (install the 'test' extra)"),
]

TINY = (Path(__file__).resolve().parents[1] / "workflow" / "tiny.yaml").read_text()

# A rule named after a profile entry takes its resources: class2d is MPI + GPU.
PROBE = """
rule class2d:
    output: "class2d/ranks.json"
    resources: mpi="mpiexec", tasks=1
    shell: "{resources.mpi} -n {resources.tasks} %(python)s %(script)s {output}"
"""

RANKS = """
import json, os, sys
from mpi4py import MPI

comm = MPI.COMM_WORLD
ranks = comm.gather({"rank": comm.Get_rank(), "gpus": os.environ.get("CUDA_VISIBLE_DEVICES")})
if comm.Get_rank() == 0:
    json.dump({"size": comm.Get_size(), "ranks": ranks}, open(sys.argv[1], "w"))
"""


def merged_profile(dest: Path) -> dict:
    """profiles/slurm/config.yaml with the overlay's keys (and per-rule resources) put over it, in ``dest``."""
    profile, overlay = yaml.safe_load(PROFILE.read_text()), yaml.safe_load(OVERLAY.read_text())
    unknown = set(overlay["set-resources"]) - set(profile["set-resources"])
    assert not unknown, f"overlay names rules the profile lacks: {unknown}"
    for key, value in overlay.items():
        if key == "set-resources":
            for rule, res in value.items():
                profile[key][rule].update(res)
        elif isinstance(value, dict):
            profile.setdefault(key, {}).update(value)
        else:
            profile[key] = value
    dest.mkdir()
    (dest / "config.yaml").write_text(yaml.safe_dump(profile))
    return profile


def run_profile(workdir: Path, snakefile: Path, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    assert importlib.util.find_spec("snakemake_executor_plugin_slurm"), "pip install snakemake-executor-plugin-slurm"
    profile = merged_profile(workdir / "profile")
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(
        [SNAKEMAKE, "-s", str(snakefile), "-d", str(workdir), "--profile", str(workdir / "profile"), *args],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc, profile


def slurm_jobs(log: str) -> dict[str, list[dict]]:
    """rule -> SLURM's records of the run's jobs (state, tasks, TRES), found by the run id the plugin logs."""
    run_id = re.search(r"SLURM run ID: (\S+)", log).group(1)
    jobs: dict[str, list[dict]] = {}
    for line in subprocess.run(["scontrol", "-o", "show", "job"], capture_output=True, text=True).stdout.splitlines():
        fields = dict(re.findall(r"(\w+)=(\S*)", line))
        if fields.get("JobName") == run_id:
            rule = re.fullmatch(r"rule_(\w+?)(_wildcards_.*)?", fields["Comment"])[1]
            jobs.setdefault(rule, []).append(fields)
    return jobs


def check_jobs(jobs: dict[str, list[dict]], profile: dict, workdir: Path) -> None:
    for rule, job in ((rule, job) for rule, js in jobs.items() for job in js):
        res = profile["set-resources"].get(rule, {})
        assert job["JobState"] == "COMPLETED", (rule, job)
        gpus = re.search(r"gres:gpu:(\d+)", job.get("TresPerJob", ""))
        assert (int(gpus[1]) if gpus else None) == res.get("gpu"), (rule, job.get("TresPerJob"))
        if "mpi" in res:
            assert int(job["NumTasks"]) == res["tasks"], (rule, job["NumTasks"])
        logs = list((workdir / ".snakemake/slurm_logs" / f"rule_{rule}").rglob("*.log"))
        assert logs, f"no kept SLURM log for {rule}"


@pytest.mark.slow
def test_profile_runs_mpi_ranks_under_srun_on_gpus(live_slurm, tmp_path):
    (tmp_path / "ranks.py").write_text(RANKS)
    snakefile = tmp_path / "Snakefile"
    snakefile.write_text(PROBE % {"python": sys.executable, "script": tmp_path / "ranks.py"})
    proc, profile = run_profile(tmp_path, snakefile)
    class2d = profile["set-resources"]["class2d"]
    assert class2d["mpi"].startswith("srun") and class2d["tasks"] == 2
    out = json.loads((tmp_path / "class2d/ranks.json").read_text())
    assert out["size"] == class2d["tasks"], "MPI ranks did not form one communicator (PMI mismatch?)"
    assert sorted(r["rank"] for r in out["ranks"]) == list(range(class2d["tasks"]))
    assert all(r["gpus"] for r in out["ranks"]), f"ranks saw no GPU: {out}"
    jobs = slurm_jobs(proc.stderr)
    assert set(jobs) == {"class2d"}
    check_jobs(jobs, profile, tmp_path)


@pytest.mark.slow
def test_demo_workflow_runs_through_the_slurm_profile(live_slurm, tmp_path):
    (tmp_path / "tiny.yaml").write_text(TINY)
    proc, profile = run_profile(tmp_path, REPO / "Snakefile", "--configfile", str(tmp_path / "tiny.yaml"))
    jobs = slurm_jobs(proc.stderr)
    stats = (proc.stdout + proc.stderr).split("Job stats:", 1)[1].split("total", 1)[0]
    planned = {rule: int(n) for rule, n in re.findall(r"^(\w+)\s+(\d+)$", stats, flags=re.M) if rule != "all"}
    assert "simulate" in planned and {rule: len(js) for rule, js in jobs.items()} == planned, "not all ran on SLURM"
    check_jobs(jobs, profile, tmp_path)
    records = [json.loads(p.read_text()) for p in (tmp_path / "results").rglob("provenance*.json")]
    for rule, res in profile["set-resources"].items():
        if rule in jobs and "mpi" in res:
            sizes = {r["mpi_size"] for r in records if r["stage"] == rule}
            assert sizes == {res["tasks"]}, f"{rule}: records say MPI sizes {sizes}, profile asks {res['tasks']}"
    # one node: the first particle stage stages the stacks on its scratch, every later one reads those copies
    caches = {r["stage"]: r["notes"]["cache"] for r in records if "cache" in r["notes"]}
    first, *later = [s for s in ("class2d", "class3d", "refine3d", "bioem") if s in jobs]
    assert set(caches) == {first, *later} and later, f"cache statistics missing: {sorted(caches)}"
    for stage in later:
        ranks = caches[stage] if isinstance(caches[stage], list) else [caches[stage]]
        assert all(c["hits"] > 0 and c["reads_source"] == 0 for c in ranks), f"{stage} did not read the copies: {ranks}"
