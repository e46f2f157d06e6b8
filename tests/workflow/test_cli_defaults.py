"""The command line's defaults are the config's: a stage run by hand with no option flags computes what the
workflow runs with config/config.yaml (one source, the stage's parameter dataclass).

The workflow's commands come from a dry run (`snakemake -n -p --forceall`) of config/config.yaml, for the demo
and for micrographs of your own. Each command is parsed twice by the stage's own parser and ``configure``: as the
workflow runs it, and with only its data flags (inputs, outputs, the device, values that come from the data such
as the particle diameter and the box). Both must give the same parameters.
"""

import dataclasses
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import yaml

from cryopipe.cli import _load_stage, build_parser

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SNAKEMAKE = shutil.which("snakemake", path=str(BIN))
ENV = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}

pytestmark = pytest.mark.skipif(SNAKEMAKE is None, reason="snakemake not installed (install the 'test' extra)")

# Flags whose values are the data's, not a default: files, folders, the device, the data's own sizes and optics.
DATA_FLAGS = {"--particles", "--reference", "--out", "--micrographs", "--ctf", "--picks", "--classes-star", "--half1",
              "--half2", "--models", "--local-orientations", "--local-map", "--maps", "--gather", "--results",
              "--device", "--templates", "--blob", "--diameter", "--box", "--angpix", "--voltage", "--cs",
              "--amplitude-contrast", "--orientations", "--orientation-prior"}
# class2d has no default class count (the number of --references, else required): the config's 8 is a choice.
REQUIRED = {"class2d": {"--classes"}}
# The simulator's flags are all choices of the demo (its --micrographs is a count, its --angpix the pixel it makes).
ONLY_DATA = {"simulate": {"--out"}}

OWN = {"simulate": {"enabled": False},
       "micrographs": {"glob": "{data}/mics/*.mrc", "voltage": 300, "cs": 2.7, "amplitude_contrast": 0.1},
       "pick": {"templates": "blob"}, "extract": {"box": 0}}
CONFIGS = {
    "demo": {},
    "demo with a global BioEM grid": {"bioem": {"orientations": "global"}},
    "demo with refined-pose priors": {"bioem": {"orientations": "refined"}},
    "own micrographs, CTF estimated, initial model": OWN,
}


def commands(workdir: Path, overrides: dict) -> dict[str, list[str]]:
    """stage -> the first `cryopipe <stage>` command of a dry run of config.yaml with ``overrides``."""
    (workdir / "data" / "mics").mkdir(parents=True)
    for i in (1, 2):
        with mrcfile.new(workdir / "data" / "mics" / f"mic_{i:03d}.mrc") as m:
            m.set_data(np.zeros((64, 64), np.float32))
            m.voxel_size = 1.5
    (workdir / "over.yaml").write_text(yaml.safe_dump(overrides).replace("{data}", str(workdir / "data")))
    proc = subprocess.run([SNAKEMAKE, "-s", str(REPO / "Snakefile"), "-d", str(workdir), "--cores", "1", "-n", "-p",
                           "--forceall", f"--configfile={workdir / 'over.yaml'}"],
                          capture_output=True, text=True, env=ENV, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = {}
    for line in proc.stdout.splitlines():
        if "cryopipe " in line and " --gather " not in line:
            argv = shlex.split(line.split("cryopipe ", 1)[1].split(" 2> ")[0])
            found.setdefault(argv[0], argv)
    return found


def data_only(argv: list[str]) -> list[str]:
    """``argv`` with only its data flags (and their values)."""
    keep, i = [argv[0]], 1
    while i < len(argv):
        j = i + 1
        while j < len(argv) and not argv[j].startswith("--"):
            j += 1
        if argv[i] in ONLY_DATA.get(argv[0], DATA_FLAGS) | REQUIRED.get(argv[0], set()):
            keep += argv[i:j]
        i = j
    return keep


def parameters(argv: list[str]) -> dict:
    """The stage's parameters for ``argv``, a field left None (not given) as the dataclass's default."""
    params, _inputs = _load_stage(argv[0]).configure(build_parser().parse_args(argv))
    out = {}
    for f in dataclasses.fields(params):
        value = getattr(params, f.name)
        out[f.name] = f.default if value is None and f.default is not dataclasses.MISSING else value
    return out


@pytest.mark.parametrize("name", CONFIGS)
def test_a_stage_run_by_hand_with_no_flags_computes_what_the_workflow_runs(name, tmp_path):
    found = commands(tmp_path, CONFIGS[name])
    expected = {"ctf", "pick", "extract", "class2d", "select2d", "initial-model", "class3d", "refine3d",
                "postprocess"} if CONFIGS[name] is OWN else {"simulate", "pick", "extract", "class2d", "class3d",
                                                              "refine3d", "postprocess", "bioem"}
    assert expected <= set(found), sorted(found)
    differ = {}
    for stage, argv in found.items():
        given, default = parameters(argv), parameters(data_only(argv))
        differ.update({f"{stage}.{k}": (v, default[k]) for k, v in given.items() if v != default[k]})
    assert not differ, f"config value != command-line default: {differ}"
