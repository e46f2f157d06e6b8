"""The workflow as users type it: `snakemake --profile slurm` (a profile by name, after `make profiles`) and
config overrides on the command line in the forms the READMEs show."""

import os
import re
import shlex
import shutil
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SNAKEMAKE = shutil.which("snakemake", path=str(BIN))
MAKE = shutil.which("make")
TINY = REPO / "tests" / "workflow" / "tiny.yaml"

pytestmark = pytest.mark.skipif(SNAKEMAKE is None, reason="snakemake not installed (install the 'test' extra)")


ENV = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}


def user_env(home: Path, xdg: bool) -> dict:
    """A user whose home (and $XDG_CONFIG_HOME, or none) is a temporary folder."""
    env = {k: v for k, v in os.environ.items() if k != "XDG_CONFIG_HOME"}
    env.update(HOME=str(home), PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    if xdg:
        env["XDG_CONFIG_HOME"] = str(home / "xdg")
    return env


def make_profiles(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([MAKE, "-s", "-C", str(REPO), "profiles", f"PYTHON={sys.executable}", *args],
                          capture_output=True, text=True, env=env, timeout=120)


def dry_run(cwd: Path, env: dict, *args: str) -> subprocess.CompletedProcess:
    """A dry run from a folder that is not the checkout (so a profile name is not found beside it)."""
    return subprocess.run([SNAKEMAKE, "-s", str(REPO / "Snakefile"), "-d", str(cwd), "-n", *args],
                          capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


@pytest.mark.skipif(MAKE is None, reason="no make")
@pytest.mark.parametrize("xdg", [True, False], ids=["XDG_CONFIG_HOME", "HOME only"])
def test_make_profiles_lets_snakemake_find_the_profiles_by_name(tmp_path, xdg):
    env, work = user_env(tmp_path / "home", xdg), tmp_path / "work"
    work.mkdir()
    before = dry_run(work, env, "--profile", "local", "--configfile", str(TINY))
    assert before.returncode != 0 and "no profile.yaml (or config.yaml) found" in before.stderr
    made = make_profiles(env)
    assert made.returncode == 0, made.stderr
    folder = tmp_path / "home" / ("xdg" if xdg else ".config") / "snakemake"
    for name in ("local", "slurm"):
        assert (folder / name).resolve() == REPO / "profiles" / name, made.stdout
    proc = dry_run(work, env, "--profile", "local", "--configfile", str(TINY))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Using profile local" in proc.stdout + proc.stderr and "simulate" in proc.stdout
    if find_spec("snakemake_executor_plugin_slurm"):
        proc = dry_run(work, env, "--profile", "slurm", "--configfile", str(TINY))
        assert proc.returncode == 0, proc.stderr[-3000:]
    again = make_profiles(env)  # once is enough, twice does no harm
    assert again.returncode == 0 and "already there" in again.stdout, again.stderr


@pytest.mark.skipif(MAKE is None, reason="no make")
def test_make_profiles_never_replaces_a_profile_of_the_users(tmp_path):
    env = user_env(tmp_path / "home", xdg=True)
    mine = tmp_path / "home" / "xdg" / "snakemake" / "slurm"
    mine.mkdir(parents=True)
    (mine / "config.yaml").write_text("executor: slurm\n")
    made = make_profiles(env)
    assert made.returncode == 2 and "PROFILE_PREFIX=cryopipe-" in made.stderr
    assert (mine / "config.yaml").read_text() == "executor: slurm\n" and not mine.is_symlink()
    assert (mine.parent / "local").resolve() == REPO / "profiles" / "local"  # the free name is linked all the same
    made = make_profiles(env, "PROFILE_PREFIX=cryopipe-")
    assert made.returncode == 0, made.stderr
    assert (mine.parent / "cryopipe-slurm").resolve() == REPO / "profiles" / "slurm"


def command_of(proc: subprocess.CompletedProcess, stage: str) -> str:
    """The shell command of ``stage`` that a dry run with -p printed."""
    assert proc.returncode == 0, proc.stderr[-3000:]
    return next(line for line in proc.stdout.splitlines() if f"cryopipe {stage} " in line)


@pytest.mark.parametrize("override, stage, expected", [
    ('class2d={classes: 4}', "class2d", " --classes 4 "),  # YAML
    ('class2d={"classes": 4, "ctf": "wiener"}', "class2d", " --ctf wiener "),  # JSON
    ("select2d={keep: [1, 3], min_size: off}", "select2d", " --keep 1 3 --min-size off "),
    ("pick={threshold: 0.3}", "pick", " --threshold 0.3 "),
    ("bioem={defocus_grid: [-200, 200, 5]}", "bioem", " --defocus-grid -200 200 5 "),
    ("particle_diameter=150", "class2d", " --diameter 150 "),
])
def test_config_overrides_on_the_command_line(tmp_path, override, stage, expected):
    """Snakemake reads `--config section={...}` with YAML's base loader (every scalar a string): the values still
    reach the stage with their types, and the section's other keys keep their values."""
    target = {"pick": "pick_all"}.get(stage, stage)  # pick has a batch wildcard
    proc = dry_run(tmp_path, ENV, "-p", target, "--configfile", str(TINY), "--config", override)
    command = command_of(proc, stage)
    assert expected in command + " ", command
    if stage == "class2d":
        assert " --iterations 2 " in command  # tiny.yaml's, kept


def test_a_string_where_the_schema_wants_a_number_is_still_refused(tmp_path):
    proc = dry_run(tmp_path, ENV, "--config", "class2d={classes: four}")
    assert proc.returncode == 2
    assert "cryopipe config: error: [class2d.classes]: 'four' is not of type 'integer'" in proc.stderr


def test_dotted_keys_in_a_config_file(tmp_path):
    """config/README.md names keys section.key; a --configfile may use those names."""
    (tmp_path / "c.yaml").write_text("class2d.classes: 5\nsimulate.micrographs: 2\n")
    proc = dry_run(tmp_path, ENV, "-p", "class2d", "--configfile", str(tmp_path / "c.yaml"))
    assert " --classes 5 " in command_of(proc, "class2d")
    assert "mic_002.mrc" in proc.stdout and "mic_003.mrc" not in proc.stdout


def test_dotted_keys_after_config_are_refused_by_snakemake_itself(tmp_path):
    """Snakemake 9 stops on `--config class2d.classes=4` before it reads the workflow ("Config entry must start
    with a valid identifier"), so the READMEs do not show that form. Should a later Snakemake pass such a key on,
    common.smk puts it into its section."""
    proc = dry_run(tmp_path, ENV, "-p", "class2d", "--config", "class2d.classes=4")
    if proc.returncode != 0:
        assert "valid identifier" in proc.stdout + proc.stderr, (proc.stdout + proc.stderr)[-2000:]
    else:
        assert " --classes 4 " in command_of(proc, "class2d")


def documented_overrides() -> list[str]:
    """The entries of every `--config` example in README.md and config/README.md (inline code, and command lines
    of code blocks)."""
    examples = []
    for doc in (REPO / "README.md", REPO / "config" / "README.md"):
        text = doc.read_text()
        codes = re.findall(r"`([^`\n]*--config [^`\n]*)`", text)
        codes += re.findall(r"^(snakemake [^\n]*--config [^\n]*)$", text, flags=re.M)
        for code in codes:
            words = shlex.split(code, comments=True)
            entries = words[words.index("--config") + 1:]
            examples.append(next(iter([entries[: i] for i, w in enumerate(entries) if w.startswith("-")]), entries))
    return [shlex.join(e) for e in examples]


def test_the_readmes_show_config_overrides():
    assert documented_overrides(), "no `--config` example in README.md or config/README.md"


@pytest.mark.parametrize("entries", documented_overrides())
def test_every_documented_config_override_works(tmp_path, entries):
    proc = dry_run(tmp_path, ENV, "--configfile", str(TINY), "--config",
                   *shlex.split(entries))
    assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.mark.parametrize("templates, flags", [
    ("reference", " --reference results/simulate/maps/conformation_1.mrc --ctf results/simulate/micrographs_ctf.star "),
    ("blob", " --blob disc --ctf results/simulate/micrographs_ctf.star "),
    ("class2d", " --templates results/select2d_blob/class_averages.mrcs --ctf "),
])
def test_pick_templates_choose_the_route(tmp_path, templates, flags):
    """pick.templates: projections of the reference, blobs, or the class2d route (blob picks, 2D classes, then
    the selected class averages as templates); every route CTF-aware by default."""
    proc = dry_run(tmp_path, ENV, "-p", "pick_all", "--configfile", str(TINY), "--config",
                   f"pick={{templates: {templates}}}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    command = next(" ".join(line.split()) for line in proc.stdout.splitlines()
                   if "cryopipe pick " in line and "--out results/pick/" in line)
    assert flags in command + " ", command
    blob_round = {"pick_blob", "extract_blob", "gather_blob", "class2d_blob", "select2d_blob"}
    planned = set(re.findall(r"^rule (\w+):", proc.stdout, flags=re.M)) | set(
        re.findall(r"^localrule (\w+):", proc.stdout, flags=re.M))
    assert (blob_round <= planned) == (templates == "class2d"), planned
