"""Every config key that changes a result reruns the rule it belongs to, and nothing but that rule and what depends
on it: the key reaches the rule as a parameter Snakemake compares (or as an input file), never through a function of
the job (Snakemake does not compare those) nor through the order of keys in a file.

Each key of config.schema.yaml is changed in turn, on a finished workflow, and a dry run (default rerun triggers)
must plan the key's rules and only rules downstream of them. The finished workflows are made with `--touch
--forceall` over placeholder outputs: Snakemake records the same metadata (parameters, inputs, code) as a real run,
in seconds instead of minutes. Keys that change no result are listed in NO_RESULT with the reason.
"""

import copy
import functools
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SNAKEMAKE = shutil.which("snakemake", path=str(BIN))
ENV = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
SCHEMA = yaml.safe_load((REPO / "config" / "config.schema.yaml").read_text())
DEFAULTS = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
TINY = yaml.safe_load((REPO / "tests" / "workflow" / "tiny.yaml").read_text())

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(SNAKEMAKE is None, reason="snakemake not installed (install the 'test' extra)"),
]

# The finished workflows a key is changed on. "{data}" is the folder of placeholder inputs (micrographs, CTF STAR,
# maps, models) each workflow gets. Own micrographs stop after select2d unless given a 3D reference: the demo
# covers the 3D stages.
OWN = {"simulate": {"enabled": False}, "extract": {"box": 64},
       "micrographs": {"glob": "{data}/mics/*.mrc", "ctf_star": "{data}/micrographs_ctf.star",
                       "voltage": 300, "cs": 2.7, "amplitude_contrast": 0.1},
       "pick": {"reference": "{data}/ref.mrc"}}
BASES = {
    "demo": TINY,
    "demo_refined": {**TINY, "bioem": {**TINY["bioem"], "orientations": "refined"}},
    "demo_global": {**TINY, "bioem": {**TINY["bioem"], "orientations": "global"}},
    "own": OWN,  # micrographs with a CTF STAR
    "own_estimate": {**OWN, "micrographs": {**OWN["micrographs"], "ctf_star": ""}},  # cryopipe ctf estimates it
    "own_k2": {**OWN, "initial_model": {"classes": 2}},  # two initial maps (class3d's K): class3d_start matters
}

# Files a real run of a base writes beyond its rules' declared outputs (the initial model writes every class's map;
# its rule declares them only when class3d reads them all).
WRITTEN_TOO = {"own_k2": [f"results/initial_model/initial_model_class{k:03d}.mrc" for k in (1, 2)]}

# key -> (the workflow it is changed on, the rules it belongs to). Every rule that depends on these may rerun too.
OWNERS = {
    "simulate.*": ("demo", {"simulate"}),
    "micrographs.glob": ("own_estimate", {"ctf", "pick"}),
    "micrographs.ctf_star": ("own", {"pick", "extract"}),  # picking reads it for CTF-aware templates
    "micrographs.angpix": ("own_estimate", {"ctf", "pick", "extract"}),
    "micrographs.voltage": ("own_estimate", {"ctf"}),
    "micrographs.cs": ("own_estimate", {"ctf"}),
    "micrographs.amplitude_contrast": ("own_estimate", {"ctf"}),
    "ctf.estimate": ("own", {"ctf"}),  # on: the estimates replace the given CTF STAR
    "ctf.max_resolution": ("demo", {"extract"}),
    "ctf.*": ("own_estimate", {"ctf"}),
    "particle_diameter": ("demo", {"pick", "class2d", "class3d", "refine3d"}),
    "pick.*": ("demo", {"pick"}),
    "extract.*": ("demo", {"extract"}),
    "class2d.*": ("demo", {"class2d"}),
    "select2d.*": ("demo", {"select2d"}),
    "initial_model.use": ("demo", {"initial_model"}),  # true: the demo starts class3d from an initial model
    "initial_model.class3d_start": ("own_k2", {"class3d"}),  # which initial maps class3d starts from
    "initial_model.*": ("own", {"initial_model"}),  # runs for your data without a class3d.reference
    "class3d.*": ("demo", {"class3d"}),
    "refine3d.class": ("demo", {"select3d"}),
    "refine3d.enabled": ("demo", {"bioem"}),  # off: no refine3d/postprocess; BioEM takes class3d's orientations
    "refine3d.*": ("demo", {"refine3d"}),
    "postprocess.*": ("demo", {"postprocess"}),
    "bioem.orientation_prior_sigma": ("demo_refined", {"bioem"}),  # read with orientations: refined only
    "bioem.orientation_grid": ("demo_global", {"bioem"}),  # read with orientations: global only
    "bioem.*": ("demo", {"bioem"}),
}

# Changed values the schema alone does not suggest (files, symbols, a value that changes the batches).
CHANGED = {
    "micrographs.glob": "{data}/more_mics/*.mrc",
    "micrographs.ctf_star": "{data}/other_ctf.star",
    "micrographs.angpix": 2.0,
    "micrographs.amplitude_contrast": 0.07,
    "simulate.ice_snr": 0.5,
    "simulate.coverage": 0.3,
    "simulate.carbon": 0.2,
    "simulate.contaminants": 1,
    "simulate.aggregates": 1,
    "simulate.denoised": 1,
    "particle_diameter": 130,  # still inside the demo's 64 px box (160 A)
    "pick.reference": "{data}/ref.mrc",
    "pick.batch_size": 1,  # the demo's 2 micrographs: one batch of 2 -> two batches of 1
    "pick.threshold": 0.3,
    "pick.templates": "blob",
    "pick.fdr": 0.05,
    "extract.out_box": 32,
    "class2d.box": 32,
    "select2d.min_size": 5,
    "select2d.max_resolution": 20,
    "class3d.reference": "{data}/map64.mrc",  # on the grid of the demo's particles (64 px, 2.5 A/px)
    "class3d.symmetry": "C2",
    "initial_model.symmetry": "D2",
    "refine3d.reference": "{data}/map64.mrc",
    "refine3d.symmetry": "C2",
    "postprocess.mask": "{data}/map64.mrc",
    "postprocess.bfactor": -100,
    "bioem.models": ["{data}/model.pdb"],
}

# Keys that change no result of a finished run, and why.
NO_RESULT = {
    "results": "where the outputs go: a new folder holds no finished run (everything runs there), the old one is "
               "left as it is",
    "device": "where a stage computes, not what: GPU and CPU results agree within float32 tolerance (tests marked "
              "gpu); it is passed as --device, so a switch reruns the stages that take it",
    "simulate.enabled": "chooses the input (the demo or your micrographs): another workflow, not a changed "
                        "parameter; its other keys are tested on both",
}


def leaf_keys(schema: dict, prefix: str = "") -> list[str]:
    keys = []
    for name, spec in schema["properties"].items():
        key = f"{prefix}{name}"
        keys += leaf_keys(spec, f"{key}.") if spec.get("type") == "object" and "properties" in spec else [key]
    return keys


def get(cfg: dict, key: str):
    for part in key.split("."):
        cfg = cfg.get(part) if isinstance(cfg, dict) else None
    return cfg


def merge(base: dict, *overrides: dict) -> dict:
    out = copy.deepcopy(base)
    for over in overrides:
        for key, value in over.items():
            out[key] = merge(out.get(key, {}), value) if isinstance(value, dict) else copy.deepcopy(value)
    return out


def nested(key: str, value) -> dict:
    for part in reversed(key.split(".")):
        value = {part: value}
    return value


def spec_of(key: str) -> dict:
    spec = SCHEMA
    for part in key.split("."):
        spec = spec["properties"][part]
    return spec


def changed_value(key: str, value):
    """A valid value other than ``value``, from the key's schema type (or CHANGED)."""
    if key in CHANGED:
        return CHANGED[key]
    spec = spec_of(key)
    kinds = spec.get("type")
    kinds = [kinds] if isinstance(kinds, str) else kinds or []
    if "enum" in spec:
        return next(v for v in spec["enum"] if v != value)
    if isinstance(value, bool):
        return not value
    if "integer" in kinds:
        step = spec.get("multipleOf", 1)
        return value + step if value + step <= spec.get("maximum", value + step) else value - step
    if "number" in kinds:
        top = min(spec.get("maximum", np.inf), spec.get("exclusiveMaximum", np.inf))
        return value * 2 if value and value * 2 < top else value / 2 if value else 1.0
    if "array" in kinds:
        return [*value[:-1], value[-1] + 1] if value else [1]
    raise AssertionError(f"{key}: no changed value for {value!r} ({spec}); add one to CHANGED")


def owner(key: str) -> tuple[str, set[str]]:
    if key in OWNERS:
        return OWNERS[key]
    return OWNERS[key.split(".")[0] + ".*"]


def snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([SNAKEMAKE, "-s", str(REPO / "Snakefile"), "-d", str(workdir), "--cores", "1", *args],
                          capture_output=True, text=True, env=ENV, timeout=600)


def ok(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def write_config(workdir: Path, cfg: dict, name: str) -> str:
    text = yaml.safe_dump(cfg, sort_keys=False).replace("{data}", str(workdir / "data"))
    (workdir / name).write_text(text)
    return f"--configfile={workdir / name}"


def planned(workdir: Path, config: str) -> set[str]:
    out = ok(snakemake(workdir, config, "-n"))
    if "Nothing to be done" in out:
        return set()
    table = out.split("Job stats:", 1)[1].split("total", 1)[0]
    return {name for name, _ in re.findall(r"^(\w+)\s+(\d+)$", table, flags=re.M)} - {"all"}


def rule_graph(workdir: Path, config: str) -> list[tuple[str, str]]:
    dot = ok(snakemake(workdir, config, "--rulegraph"))
    names = dict(re.findall(r"(\d+)\[label = \"(\w+)\"", dot))
    return [(names[a], names[b]) for a, b in re.findall(r"(\d+) -> (\d+)", dot)]


def downstream(edges: list[tuple[str, str]], rules: set[str]) -> set[str]:
    found, frontier = set(rules), list(rules)
    while frontier:
        up = frontier.pop()
        for a, b in edges:
            if a == up and b not in found:
                found.add(b)
                frontier.append(b)
    return found


def placeholder_data(data: Path) -> None:
    """Small valid inputs: micrographs (MRC with a pixel size), CTF STARs, a map to pick with, a map on the demo
    particles' grid, a model."""
    for folder, names in (("mics", ["mic_001", "mic_002"]), ("more_mics", ["mic_001", "mic_002", "mic_003"])):
        (data / folder).mkdir(parents=True)
        for name in names:
            with mrcfile.new(data / folder / f"{name}.mrc") as m:
                m.set_data(np.zeros((16, 16), np.float32))
                m.voxel_size = 2.5
    for name, box in (("ref.mrc", 16), ("map64.mrc", 64)):
        with mrcfile.new(data / name) as m:
            m.set_data(np.zeros((box,) * 3, np.float32))
            m.voxel_size = 2.5
    rows = "\n".join(f"{data}/mics/mic_00{i}.mrc 1 15000 14000 10 4" for i in (1, 2, 3))
    star = ("data_optics\n\nloop_\n_rlnOpticsGroup #1\n_rlnMicrographPixelSize #2\n_rlnVoltage #3\n"
            "_rlnSphericalAberration #4\n_rlnAmplitudeContrast #5\n1 2.5 300 2.7 0.1\n\n"
            "data_micrographs\n\nloop_\n_rlnMicrographName #1\n_rlnOpticsGroup #2\n_rlnDefocusU #3\n"
            "_rlnDefocusV #4\n_rlnDefocusAngle #5\n_rlnCtfMaxResolution #6\n" + rows + "\n")
    (data / "micrographs_ctf.star").write_text(star)
    (data / "other_ctf.star").write_text(star)
    (data / "model.pdb").write_text("END\n")


@functools.cache
def finished(base: str, root: Path) -> tuple[Path, list[tuple[str, str]]]:
    """A workflow on ``BASES[base]`` whose every job is recorded as done (metadata as a real run writes it)."""
    workdir = root / base
    placeholder_data(workdir / "data")
    config = write_config(workdir, BASES[base], "base.yaml")
    summary = ok(snakemake(workdir, config, "--summary")).splitlines()
    outputs = [line.split("\t")[0] for line in summary[summary.index(next(s for s in summary
                                                                           if s.startswith("output_file"))) + 1:]]
    assert outputs, summary
    for path in outputs:
        (workdir / path).parent.mkdir(parents=True, exist_ok=True)
        (workdir / path).touch()
    ok(snakemake(workdir, config, "--touch", "--forceall"))
    for path in WRITTEN_TOO.get(base, []):  # written with the outputs: not older than the job's inputs
        (workdir / path).touch()
    assert planned(workdir, config) == set(), "the touched workflow is not finished"
    return workdir, rule_graph(workdir, config)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("finished")


KEYS = leaf_keys(SCHEMA)


def test_every_schema_key_is_tested_or_has_a_reason():
    assert set(NO_RESULT) <= set(KEYS), set(NO_RESULT) - set(KEYS)
    stale = {k for k in [*OWNERS, *CHANGED] if not k.endswith(".*") and k not in KEYS}
    assert not stale, f"keys no longer in the schema: {stale}"


CHANGING = [k for k in KEYS if k not in NO_RESULT]


@pytest.fixture(scope="module")
def plans(root) -> dict:
    """key -> (old value, changed value, its config flag, the dry run's plan) for every key that changes a result.
    The dry runs (one single-threaded Python process each) run as many at a time as there are CPUs; the finished
    workflows they plan against are made first, one after the other."""
    for base in sorted({owner(k)[0] for k in CHANGING}):
        finished(base, root)

    def plan_of(key):
        base, _ = owner(key)
        workdir, _ = finished(base, root)
        old = get(merge(DEFAULTS, BASES[base]), key)
        change = changed_value(key, old)
        config = write_config(workdir, merge(BASES[base], nested(key, change)), f"{key}.yaml")
        return key, (old, change, config, planned(workdir, config))

    with ThreadPoolExecutor(max(1, min(4, os.cpu_count() or 1))) as pool:
        return dict(pool.map(plan_of, CHANGING))


@pytest.mark.parametrize("key", CHANGING)
def test_changed_key_reruns_its_rule_and_what_depends_on_it_only(key, root, plans):
    base, rules = owner(key)
    workdir, graph = finished(base, root)
    old, change, config, plan = plans[key]
    allowed = downstream(graph, rules)
    if not plan <= allowed:  # the change may add or drop rules (ctf.estimate, refine3d.enabled): its own graph
        allowed = downstream(rule_graph(workdir, config), rules)
    assert rules <= plan, f"{key}: {old!r} -> {change!r} does not rerun {sorted(rules - plan)}"
    assert plan <= allowed, f"{key}: also reruns {sorted(plan - allowed)}, not downstream of {sorted(rules)}"


def test_the_order_of_keys_in_a_config_file_changes_nothing(root):
    workdir, _ = finished("demo", root)
    reordered = {section: dict(reversed(list(v.items()))) if isinstance(v, dict) else v
                 for section, v in reversed(list(BASES["demo"].items()))}
    assert planned(workdir, write_config(workdir, reordered, "reordered.yaml")) == set()
