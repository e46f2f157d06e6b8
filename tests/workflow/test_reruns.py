"""Reruns on the local executor, tiny config: what Snakemake redoes after a parameter change, new
micrographs, or a job killed with SIGKILL, and that nothing half-written is ever taken as done."""

import functools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import mrcfile
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

TINY = {"simulate": {"enabled": True, "micrographs": 2, "size_px": 384, "particles_per_micrograph": 6}}
PICK_CHANGE = {"pick": {"lowpass": 25}}  # a pick parameter other than the default
UNTIL = ["--until", "extract"]  # the stages these tests exercise, and what they need


ENV = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}


def command(workdir: Path, *args: str) -> list[str]:
    return [SNAKEMAKE, "-s", str(REPO / "Snakefile"), "-d", str(workdir), "--cores", "2", *args]


def snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(command(workdir, *args), capture_output=True, text=True, env=ENV, timeout=900)


def ok(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout + proc.stderr


def write_config(workdir: Path, *overrides: dict) -> str:
    """``--configfile=<file>`` for a config of these overrides (a file per workdir)."""
    cfg = {}
    for o in overrides:
        for key, value in o.items():
            cfg[key] = {**cfg.get(key, {}), **value} if isinstance(value, dict) else value
    (workdir / "test.yaml").write_text(yaml.safe_dump(cfg))
    return f"--configfile={workdir / 'test.yaml'}"


@functools.lru_cache(maxsize=1)
def workflow_rules() -> frozenset:
    return frozenset(ok(snakemake(REPO, "--list-rules")).split())


def need_rules(*names: str) -> None:
    missing = sorted(set(names) - workflow_rules())
    if missing:
        pytest.xfail(f"the workflow has no rule {', '.join(missing)} yet (per-batch pick/extract rules to come)")


def planned(workdir: Path, *args: str) -> dict[str, int]:
    """rule -> number of jobs a dry run plans."""
    out = ok(snakemake(workdir, "-n", *args))
    if "Nothing to be done" in out:
        return {}
    table = out.split("Job stats:", 1)[1].split("total", 1)[0]
    return {name: int(n) for name, n in re.findall(r"^(\w+)\s+(\d+)$", table, flags=re.M)}


def downstream(workdir: Path, rule: str, *args: str) -> set[str]:
    """``rule`` and every rule that depends on it, from Snakemake's rule graph."""
    dot = ok(snakemake(workdir, "--rulegraph", *args))
    names = dict(re.findall(r"(\d+)\[label = \"(\w+)\"", dot))
    edges = [(names[a], names[b]) for a, b in re.findall(r"(\d+) -> (\d+)", dot)]
    found, frontier = {rule}, [rule]
    while frontier:
        up = frontier.pop()
        for a, b in edges:
            if a == up and b not in found:
                found.add(b)
                frontier.append(b)
    return found


def records(results: Path, *stages: str) -> dict[str, str]:
    """provenance record path -> text, under results/<stage>/ for each stage."""
    return {str(p): p.read_text() for s in stages for p in sorted((results / s).rglob("provenance*.json"))}


def content(path: Path):
    """What a file says, without the creation stamps MRC labels and STAR headers carry."""
    if path.suffix in (".mrc", ".mrcs"):
        with mrcfile.open(path, permissive=True) as m:
            return m.data.tobytes(), m.voxel_size.tolist()
    if path.suffix == ".star":
        tables = starfile.read(path, always_dict=True)
        return {k: v.to_dict("list") for k, v in tables.items()}
    return path.read_bytes()


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """An uninterrupted run of the tiny config (up to extract when the workflow has it)."""
    workdir = tmp_path_factory.mktemp("reference")
    config = write_config(workdir, TINY)
    ok(snakemake(workdir, config, *(UNTIL if "extract" in workflow_rules() else [])))
    return workdir


def test_changed_parameter_reruns_the_stage_and_downstream_only(reference, tmp_path):
    need_rules("pick", "extract")
    work = tmp_path / "w"
    shutil.copytree(reference, work, symlinks=True)  # copy2 keeps mtimes: Snakemake sees a finished run
    config = write_config(work, TINY)
    assert planned(work, config, *UNTIL) == {}
    before = records(work / "results", "simulate")
    changed = write_config(work, TINY, PICK_CHANGE)
    plan = planned(work, changed, *UNTIL)
    assert {"pick", "extract"} <= set(plan) <= downstream(work, "pick", changed), plan
    ok(snakemake(work, changed, *UNTIL))
    assert records(work / "results", "simulate") == before, "an upstream stage was redone"
    picks = [json.loads(t) for t in records(work / "results", "pick").values()]
    assert picks and all(r["parameters"]["lowpass"] == PICK_CHANGE["pick"]["lowpass"] for r in picks)
    assert planned(work, changed, *UNTIL) == {}


def test_new_micrographs_are_processed_without_redoing_old_ones(tmp_path):
    need_rules("pick", "extract")
    data = tmp_path / "data"
    sim = {k: v for k, v in TINY["simulate"].items() if k != "enabled"} | {"micrographs": 3}
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in sim.items()]
    subprocess.run([BIN / "cryopipe", "simulate", "--out", str(data), *flags], check=True, capture_output=True)
    mics, held = data / "micrographs", tmp_path / "held"
    held.mkdir()
    shutil.move(mics / "mic_003.mrc", held / "mic_003.mrc")
    # its CTF row arrives with it, appended to the one CTF STAR (as on-the-fly processing writes it)
    star = data / "micrographs_ctf.star"
    full = star.read_text()
    star.write_text("".join(line for line in full.splitlines(keepends=True) if "mic_003" not in line))
    work = tmp_path / "w"
    work.mkdir()
    own = {"glob": str(mics / "*.mrc"), "ctf_star": str(star)}
    # batches of 2: the old micrographs fill one, the new one (named after them, as a microscope would) starts
    # the next. Batches are slices of the sorted list, so a partly filled batch that gains a micrograph is redone.
    pick = {"batch_size": 2, "reference": str(data / "maps/conformation_1.mrc")}
    config = write_config(work, {"simulate": {"enabled": False}, "micrographs": own, "pick": pick})
    ok(snakemake(work, config, *UNTIL))
    before = records(work / "results", "pick", "extract")
    assert before, "pick and extract wrote no provenance records"
    shutil.move(held / "mic_003.mrc", mics / "mic_003.mrc")
    star.write_text(full)
    plan = planned(work, config, *UNTIL)
    assert plan["pick"] == plan["extract"] == 1, plan  # the new batch only
    ok(snakemake(work, config, *UNTIL))
    after = records(work / "results", "pick", "extract")
    batches = {p: t for p, t in before.items() if not json.loads(t)["parameters"].get("gather")}
    redone = [p for p, text in batches.items() if after.get(p) != text]
    assert not redone, f"old micrographs were processed again: {redone}"
    new = [json.loads(t) for p, t in after.items() if p not in before]
    assert any(Path(i["path"]).name == "mic_003.mrc" for r in new for i in r["inputs"]), "mic_003 was not picked"


def test_job_killed_mid_stage_is_redone_and_matches_an_uninterrupted_run(reference, tmp_path):
    work = tmp_path / "w"
    work.mkdir()
    config = write_config(work, TINY)
    proc = subprocess.Popen(command(work, config, "simulate"), env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)  # its own group: kill it whole
    stage = work / "results/simulate"
    deadline = time.monotonic() + 120
    while not any(p.is_file() for p in stage.glob(".staging-*/**/*")):  # the stage has started writing
        assert proc.poll() is None and time.monotonic() < deadline, "simulate never started writing"
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (stage / "provenance.json").exists()
    # the killed job's files are not taken as done: the rerun plans it again (after --unlock, as a user would)
    ok(snakemake(work, "--unlock", config))
    plain = snakemake(work, config, "-n", "simulate")  # without --rerun-incomplete: planned or refused
    assert "Nothing to be done" not in plain.stdout + plain.stderr
    assert planned(work, config, "--rerun-incomplete", "simulate") == {"simulate": 1}
    ok(snakemake(work, config, "--rerun-incomplete", "simulate"))
    ref = reference / "results/simulate"
    def published(folder):  # the result, without its record and cryopipe's hidden lock and marks
        return {p.relative_to(folder) for p in folder.rglob("*")
                if p.is_file() and p.name != "provenance.json" and not p.name.startswith(".")}

    files = published(stage)
    assert files == published(ref)
    for rel in sorted(files):
        assert content(stage / rel) == content(ref / rel), rel
