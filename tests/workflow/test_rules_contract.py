"""The rules only wire (DESIGN.md, the stage contract): one rule file per stage family, each rule a declaration with
its own report caption and a conda environment that installs cryopipe, one shell line calling `cryopipe <stage>`,
no `run:` blocks; config values reach stages as flags."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "workflow" / "rules"
BIN = Path(sys.executable).parent
SNAKEMAKE = shutil.which("snakemake", path=str(BIN))

STAGE_FILES = {"simulate": ["simulate"], "ctf": ["ctf", "ctf_all"], "pick": ["pick", "pick_all"],
               "extract": ["extract", "gather_particles", "extract_all"], "class2d": ["class2d", "select2d"],
               "class3d": ["class3d", "select3d"], "refine3d": ["refine3d"], "postprocess": ["postprocess"],
               "bioem": ["bioem"], "summary": ["summary"], "initial_model": ["initial_model"],
               "pick_templates": []}  # pick_templates: the stages' rules again (`use rule`)
TARGETS = {"ctf_all", "pick_all", "extract_all"}  # rules that only name inputs


def rule_blocks(path: Path) -> dict[str, str]:
    """rule name -> its text, for every rule of a .smk file."""
    text = path.read_text()
    starts = [(m.start(), m.group(1)) for m in re.finditer(r"^\s*rule (\w+):", text, flags=re.M)]
    ends = [s for s, _ in starts[1:]] + [len(text)] if starts else []
    return {name: text[s:e] for (s, name), e in zip(starts, ends, strict=True)}


def test_the_reference_free_route_reuses_the_stages_rules():
    """pick_templates.smk declares no rule of its own: each of its rules is a stage's rule with other paths."""
    text = (RULES / "pick_templates.smk").read_text()
    used = re.findall(r"^use rule (\w+) as (\w+) with:", text, flags=re.M)
    assert used == [("pick", "pick_blob"), ("extract", "extract_blob"), ("gather_particles", "gather_blob"),
                    ("class2d", "class2d_blob"), ("select2d", "select2d_blob")]
    assert "shell:" not in text and "lambda w, input" not in text


def test_one_rule_file_per_stage_family():
    files = {p.stem: sorted(rule_blocks(p)) for p in RULES.glob("*.smk") if p.stem != "common"}
    assert files == {stem: sorted(rules) for stem, rules in STAGE_FILES.items()}
    assert not rule_blocks(RULES / "common.smk"), "common.smk holds helpers, not rules"


@pytest.mark.parametrize("stem", sorted(STAGE_FILES))
def test_rules_are_declarations(stem):
    for name, block in rule_blocks(RULES / f"{stem}.smk").items():
        assert not re.search(r"^\s*(run|script|notebook|wrapper):", block, flags=re.M), f"{name}: not a shell rule"
        assert not re.search(r"^\s*def ", block, flags=re.M), f"{name}: helpers belong in common.smk"
        if name in TARGETS:
            assert "shell:" not in block, name
            continue
        shell = "".join(re.findall(r'^\s+"(.*)"$', block.split("shell:", 1)[1], flags=re.M))
        assert re.match(r"(\{params\.launch:q\} )?cryopipe [\w-]+ ", shell), (name, shell)
        assert not re.search(r"\{[^}]*[^q}]\}", shell), f"{name}: unquoted {{...}} in shell"
        env = re.search(r'conda:\n\s+"([^"]+)"', block)
        assert env, f"{name}: no conda: environment"
        assert (RULES / env.group(1)).resolve().parent == REPO / "envs" and (RULES / env.group(1)).is_file(), env
        if "gpu=" in block or "stage_resources(" in block or "--device" in block or 'arg("device"' in block:
            assert env.group(1).endswith("gpu.yaml"), f"{name} may run on a GPU: needs envs/gpu.yaml"
        for caption in re.findall(r'caption="([^"]+)"', block):
            assert (RULES / caption).is_file() and Path(caption).stem == name, f"{name}: caption {caption}"


def params_block(block: str) -> str:
    """The text of a rule's params: section (up to the next directive)."""
    if "params:" not in block:
        return ""
    body = block.split("params:", 1)[1]
    end = re.search(r"^\s+\w+:(\s|$)", body, flags=re.M)
    return body[: end.start()] if end else body


@pytest.mark.parametrize("stem", sorted(STAGE_FILES))
def test_params_are_values_snakemake_compares(stem):
    """Snakemake reruns a job whose parameters changed only for values and functions of the wildcards alone; a
    function of the job's input, output, threads or resources is never compared (a changed config value would give
    'Nothing to be done'). Only the MPI launcher, which changes where a stage runs and not its result, is one."""
    helpers = dict(re.findall(r"^def (\w+)\(([^)]*)\)", (RULES / "common.smk").read_text(), flags=re.M))
    for name, block in rule_blocks(RULES / f"{stem}.smk").items():
        params = params_block(block)
        assert "lambda" not in params, f"{name}: a params function; build the value from config instead"
        for param, value in re.findall(r"^\s+(\w+)=(\w+),?(?:\s+#.*)?$", params, flags=re.M):
            if value in helpers and (param, value) != ("launch", "mpi_launch"):
                assert helpers[value] == "wildcards", f"{name}: {param}={value}({helpers[value]}) is not compared"


@pytest.mark.parametrize("env", ["cpu.yaml", "gpu.yaml"])
def test_conda_environments_install_cryopipe_from_this_checkout(env):
    """Snakemake runs <env>.post-deploy.sh in the new environment; common.smk exports CRYOPIPE_REPO."""
    script = (REPO / "envs" / env.replace(".yaml", ".post-deploy.sh")).read_text()
    assert re.search(r'pip install .*-e "\$CRYOPIPE_REPO\[', script)
    assert "CRYOPIPE_REPO" in (RULES / "common.smk").read_text()


@pytest.mark.skipif(SNAKEMAKE is None, reason="snakemake not installed (install the 'test' extra)")
def test_bioem_shift_step_is_a_config_value(tmp_path):
    (tmp_path / "c.yaml").write_text("simulate:\n  enabled: true\nbioem:\n  max_shift: 4\n  shift_step: 2\n")
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run([SNAKEMAKE, "-s", str(REPO / "Snakefile"), "-d", str(tmp_path), "-n", "-p", "bioem",
                           "--configfile", str(tmp_path / "c.yaml")], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    command = next(line for line in proc.stdout.splitlines() if "cryopipe bioem" in line)
    assert " --displacement 4 2 " in command
