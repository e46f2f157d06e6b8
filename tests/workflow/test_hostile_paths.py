"""Config values reach processes as arguments, never as shell text: a micrograph folder and a results folder named
with a space, ``$()``, backticks, ``;``, ``&`` and a non-ASCII letter work, and nothing else runs. A quote, which STAR
readers (RELION's, starfile) cannot take inside a value, is refused by the config check with the key named."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

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

ENV = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
HOSTILE = "a b$(touch PWNED);é`touch PWNED2`&c"


def _snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([SNAKEMAKE, "-s", str(REPO / "Snakefile"), "-d", str(workdir), "--cores", "2", *args],
                          capture_output=True, text=True, env=ENV, timeout=900)


def _simulate(data: Path) -> None:
    subprocess.run([BIN / "cryopipe", "simulate", "--out", str(data), "--micrographs", "2", "--size-px", "384",
                    "--particles-per-micrograph", "6"], check=True, capture_output=True, env=ENV)


def _config(work: Path, data: Path, results: str) -> str:
    config = {"results": results, "simulate": {"enabled": False},
              "micrographs": {"glob": str(data / "micrographs" / "*.mrc"),
                              "ctf_star": str(data / "micrographs_ctf.star")},
              "pick": {"reference": str(data / "maps" / "conformation_1.mrc")}}
    work.mkdir(exist_ok=True)
    (work / "c.yaml").write_text(yaml.safe_dump(config, allow_unicode=True))
    return f"--configfile={work / 'c.yaml'}"


def test_hostile_folder_names_are_arguments_not_shell(tmp_path):
    data, work, results = tmp_path / f"mics {HOSTILE}", tmp_path / "w", f"res {HOSTILE}"
    _simulate(data)
    proc = _snakemake(work, _config(work, data, results), "extract_all")
    assert proc.returncode == 0, proc.stderr[-4000:]
    particles = starfile.read(work / results / "extract" / "particles.star", always_dict=True)["particles"]
    assert len(particles) > 0
    assert (work / results / "logs" / "pick_0001.log").exists()  # the log went where the rule said
    for where in (tmp_path, work, REPO, Path.cwd()):
        assert not list(where.rglob("PWNED*")), "a config value ran as a shell command"


@pytest.mark.parametrize("name, what", [('mics "q"', "double quote"), ("mics q'", "single quote")])
def test_a_quote_in_a_path_is_refused_by_the_config_check(tmp_path, name, what):
    data, work = tmp_path / name, tmp_path / "w"
    data.mkdir()
    proc = _snakemake(work, _config(work, data, "results"), "-n")
    assert proc.returncode == 2
    assert "cryopipe config: error: [micrographs.glob]:" in proc.stderr and what in proc.stderr
    assert not (work / "results").exists()
