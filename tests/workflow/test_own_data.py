"""Your own micrographs (README, "Your own data"): the config check stops every missing or inconsistent input
before anything runs, with one line naming the key and exit status 2; says what will run and what will not; and
derives the particle box from the particle diameter when extract.box is 0. Dry runs on small placeholder files."""

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

pytestmark = pytest.mark.skipif(SNAKEMAKE is None, reason="snakemake not installed (install the 'test' extra)")


def write_mrc(path: Path, shape: tuple, angpix: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with mrcfile.new(path, overwrite=True) as m:
        m.set_data(np.zeros(shape, np.float32))
        m.voxel_size = angpix


def ctf_star(names: list[str], angpix: float = 2.5) -> str:
    rows = "\n".join(f"{n} 1 15000 14000 10" for n in names)
    return ("data_optics\n\nloop_\n_rlnOpticsGroup #1\n_rlnMicrographPixelSize #2\n_rlnVoltage #3\n"
            f"_rlnSphericalAberration #4\n_rlnAmplitudeContrast #5\n1 {angpix} 300 2.7 0.1\n\n"
            "data_micrographs\n\nloop_\n_rlnMicrographName #1\n_rlnOpticsGroup #2\n_rlnDefocusU #3\n"
            "_rlnDefocusV #4\n_rlnDefocusAngle #5\n" + rows + "\n")


@pytest.fixture
def data(tmp_path) -> Path:
    """Micrographs (2.5 A/px), their CTF STAR, a 3D map to pick with (any grid), a 64^3 map and mask on the grid of
    64 px particles at 2.5 A/px, a model."""
    for n in ("mic_001", "mic_002", "mic_003"):
        write_mrc(tmp_path / "Micrographs" / f"{n}.mrc", (16, 16), 2.5)
    (tmp_path / "micrographs_ctf.star").write_text(ctf_star([f"Micrographs/mic_00{i}.mrc" for i in (1, 2, 3)]))
    write_mrc(tmp_path / "Maps" / "lowres.mrc", (16, 16, 16), 5.0)
    write_mrc(tmp_path / "Maps" / "grid64.mrc", (64, 64, 64), 2.5)
    (tmp_path / "model.pdb").write_text("END\n")
    return tmp_path


OWN = {"simulate": {"enabled": False},
       "micrographs": {"glob": "Micrographs/*.mrc", "ctf_star": "micrographs_ctf.star"},
       "pick": {"reference": "Maps/lowres.mrc"}}


def merged(*overrides: dict) -> dict:
    out: dict = {}
    for over in overrides:
        for key, value in over.items():
            out[key] = {**out.get(key, {}), **value} if isinstance(value, dict) else value
    return out


def dry_run(workdir: Path, cfg: dict, *args: str) -> subprocess.CompletedProcess:
    (workdir / "my.yaml").write_text(yaml.safe_dump(cfg))
    return subprocess.run([SNAKEMAKE, "-s", str(REPO / "Snakefile"), "-d", str(workdir), "-n", *args,
                           f"--configfile={workdir / 'my.yaml'}"], capture_output=True, text=True, env=ENV,
                          timeout=300)


def plan(proc: subprocess.CompletedProcess) -> set[str]:
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = proc.stdout.split("Job stats:", 1)[1].split("total", 1)[0]
    return {name for name, _ in re.findall(r"^(\w+)\s+(\d+)$", table, flags=re.M)} - {"all"}


def command(proc: subprocess.CompletedProcess, stage: str) -> str:
    assert proc.returncode == 0, proc.stderr[-3000:]
    return next(line for line in proc.stdout.splitlines() if f"cryopipe {stage} --" in line and "--gather" not in line)


NO_OPTICS = {"micrographs": {"ctf_star": ""}}  # the CTF is estimated, and voltage, cs, Q0 are null by default


def no_pixel_size(data: Path) -> None:
    for path in (data / "Micrographs").glob("*.mrc"):
        write_mrc(path, (16, 16), 0.0)


def star_without_mic_003(data: Path) -> None:
    (data / "micrographs_ctf.star").write_text(ctf_star(["Micrographs/mic_001.mrc", "Micrographs/mic_002.mrc"]))


def not_a_star(data: Path) -> None:
    (data / "micrographs_ctf.star").write_text("this is not a STAR file\n")


@pytest.mark.parametrize("override, prepare, key, words", [
    ({"micrographs": {"glob": "Raw/*.mrc"}}, None, "micrographs.glob", "matches no file"),
    ({"micrographs": {"glob": ""}}, None, "micrographs.glob", "must name your micrographs"),
    ({"simulate": {"enabled": True}}, None, "simulate.enabled", "set simulate.enabled: false"),
    ({"micrographs": {"ctf_star": "ctf/micrographs_ctf.star"}}, None, "micrographs.ctf_star", "no such file"),
    ({}, star_without_mic_003, "micrographs.ctf_star", "1 of your 3 micrographs have no row"),
    ({}, not_a_star, "micrographs.ctf_star", "micrographs_ctf.star"),
    (NO_OPTICS, None, "micrographs.voltage",
     "(also missing: micrographs.cs, micrographs.amplitude_contrast)"),
    (merged(NO_OPTICS, {"micrographs": {"voltage": 300, "cs": 2.7}}), None, "micrographs.amplitude_contrast",
     "needed to estimate the CTF"),
    (merged(NO_OPTICS, {"micrographs": {"voltage": 300, "cs": 2.7, "amplitude_contrast": 0.1}}), no_pixel_size,
     "micrographs.angpix", "holds no pixel size"),
    ({"pick": {"reference": ""}}, None, "pick.reference", "must name a 3D map"),
    ({"pick": {"reference": "Maps/missing.mrc"}}, None, "pick.reference", "no such file"),
    ({"class3d": {"reference": "Maps/missing.mrc"}}, None, "class3d.reference", "no such file"),
    ({"class3d": {"reference": "Maps/lowres.mrc"}}, None, "class3d.reference",
     "a 16x16x16 map at 5 A/px, but the particles are 64 px at 2.5 A/px"),
    ({"class3d": {"reference": "Maps/grid64.mrc"}, "extract": {"out_box": 32}}, None, "class3d.reference",
     "the particles are 32 px at 5 A/px"),
    ({"class3d": {"reference": "Maps/grid64.mrc"}, "refine3d": {"reference": "Maps/lowres.mrc"}}, None,
     "refine3d.reference", "resample the map"),
    ({"postprocess": {"mask": "Maps/lowres.mrc"}}, None, "postprocess.mask", "resample the map"),
    ({"bioem": {"models": ["model.pdb", "missing.pdb"]}}, None, "bioem.models", "'missing.pdb': no such file"),
    ({"extract": {"box": 32}}, None, "extract.box", "80 A at 2.5 A/px, less than particle_diameter 120 A"),
    ({"extract": {"box": 4}, "particle_diameter": 8}, None, "extract.box", "at least 8 pixels"),
    ({"extract": {"out_box": 96}}, None, "extract.out_box", "larger than the 64 px box"),
    ({"class2d": {"box": 96}}, None, "class2d.box", "larger than the particles' 64 px box"),
])
def test_bad_input_stops_before_anything_runs(data, override, prepare, key, words):
    if prepare:
        prepare(data)
    proc = dry_run(data, merged(OWN, override))
    errors = [line for line in proc.stderr.splitlines() if line.startswith("cryopipe config: error:")]
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(errors) == 1 and errors[0].startswith(f"cryopipe config: error: [{key}]: "), proc.stderr[-2000:]
    assert words in errors[0]
    assert not (data / "results").exists() and not (data / ".snakemake" / "metadata").exists()


def test_without_a_3d_reference_the_initial_model_makes_one(data):
    """No class3d.reference for your data: the initial model runs on the selected particles, class3d starts from
    its map and everything but BioEM (no models) follows."""
    proc = dry_run(data, OWN, "-p")
    assert plan(proc) == {"pick", "extract", "gather_particles", "class2d", "select2d", "initial_model", "class3d",
                          "select3d", "refine3d", "postprocess", "summary"}
    assert " --reference results/initial_model/initial_model.mrc " in command(proc, "class3d")
    assert "leaves out bioem: bioem.models is empty" in proc.stderr


def test_class3d_can_start_one_class_from_each_initial_map(data):
    """initial_model.class3d_start: all gives class3d the K initial maps, in order; K must match class3d's."""
    proc = dry_run(data, merged(OWN, {"initial_model": {"classes": 3, "class3d_start": "all"},
                                      "class3d": {"classes": 3}}), "-p")
    maps = " ".join(f"results/initial_model/initial_model_class{k:03d}.mrc" for k in (1, 2, 3))
    assert f" --reference {maps} " in command(proc, "class3d")
    best = dry_run(data, merged(OWN, {"initial_model": {"classes": 3}, "class3d": {"classes": 3}}), "-p")
    assert " --reference results/initial_model/initial_model.mrc " in command(best, "class3d")
    bad = dry_run(data, merged(OWN, {"initial_model": {"classes": 3, "class3d_start": "all"}}))
    assert bad.returncode == 2
    assert ("cryopipe config: error: [initial_model.class3d_start]: all: class3d starts one class from each of the "
            "initial model's 3 maps, but class3d.classes is 2") in bad.stderr


def test_without_a_3d_reference_or_an_initial_model_it_says_what_runs(data):
    proc = dry_run(data, merged(OWN, {"initial_model": {"use": False}}))
    assert plan(proc) == {"pick", "extract", "gather_particles", "class2d", "select2d", "summary"}
    assert ("cryopipe: runs pick, extract, class2d, select2d; leaves out class3d, select3d, refine3d, postprocess, "
            "bioem: class3d.reference is empty and initial_model.use is false") in proc.stderr


def test_the_demo_can_start_from_an_initial_model(tmp_path):
    proc = dry_run(tmp_path, {"simulate": {"enabled": True}, "initial_model": {"use": True}}, "-p")
    assert {"initial_model", "class3d", "refine3d", "bioem"} <= plan(proc)
    assert " --reference results/initial_model/initial_model.mrc " in command(proc, "class3d")
    assert "initial_model" not in plan(dry_run(tmp_path, {"simulate": {"enabled": True}}))


def test_with_a_3d_reference_and_no_models_bioem_is_left_out(data):
    proc = dry_run(data, merged(OWN, {"class3d": {"reference": "Maps/grid64.mrc"}}))
    assert plan(proc) == {"pick", "extract", "gather_particles", "class2d", "select2d", "class3d", "select3d",
                          "refine3d", "postprocess", "summary"}
    assert "leaves out bioem: bioem.models is empty" in proc.stderr
    everything = dry_run(data, merged(OWN, {"class3d": {"reference": "Maps/grid64.mrc"},
                                            "bioem": {"models": ["model.pdb"]}}))
    assert "bioem" in plan(everything) and "leaves out" not in everything.stderr


@pytest.mark.parametrize("override, box", [
    ({}, 64),  # config.yaml's 64: the demo's box
    ({"extract": {"box": 0}}, 72),  # 1.5 x 120 A / 2.5 A/px = 72 = 2^3 3^2
    ({"extract": {"box": 0}, "particle_diameter": 150, "micrographs": {"angpix": 1.06}}, 216),  # 212.3 -> 2^3 3^3
    ({"extract": {"box": 0}, "particle_diameter": 100, "micrographs": {"angpix": 1.0}}, 150),  # 150 = 2 3 5^2
    ({"extract": {"box": 0}, "particle_diameter": 100, "micrographs": {"angpix": 1.3}}, 120),  # 115.4 -> 120
])
def test_extract_box_0_is_derived_from_the_particle_diameter(data, override, box):
    proc = dry_run(data, merged(OWN, override), "-p", "extract_all")
    assert f" --box {box} " in command(proc, "extract")
    assert ("extract.box 0" in proc.stderr) == (override.get("extract", {}).get("box") == 0)
    angpix = override.get("micrographs", {}).get("angpix")
    assert (f" --angpix {angpix} " in command(proc, "extract")) == bool(angpix)  # the override reaches extract too


def test_the_demo_keeps_its_64_pixel_box(tmp_path):
    proc = dry_run(tmp_path, {"simulate": {"enabled": True}}, "-p", "extract_all")
    assert " --box 64 " in command(proc, "extract")
    derived = dry_run(tmp_path, {"simulate": {"enabled": True}, "extract": {"box": 0}}, "-p", "extract_all")
    assert " --box 72 " in command(derived, "extract")


def readme_example() -> str:
    """The YAML block of README.md's "Your own data" section."""
    section = (REPO / "README.md").read_text().split("## Your own data", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```yaml\n(.*?)```", section, flags=re.S).group(1)


def test_the_readme_example_runs_on_micrographs_alone(tmp_path):
    """The README's own-data example, as written, on a folder laid out as it says: the CTF is estimated."""
    example = yaml.safe_load(readme_example())
    for name in ("a_0001", "a_0002"):
        write_mrc(tmp_path / "Micrographs" / f"{name}.mrc", (16, 16), 1.06)
    write_mrc(tmp_path / example["pick"]["reference"], (16, 16, 16), 4.0)
    proc = dry_run(tmp_path, example, "-p")
    assert plan(proc) == {"ctf", "pick", "extract", "gather_particles", "class2d", "select2d", "initial_model",
                          "class3d", "select3d", "refine3d", "postprocess", "summary"}
    assert " --voltage 300 --cs 2.7 --amplitude-contrast 0.1 " in command(proc, "ctf")
    assert " --box 216 " in command(proc, "extract")  # 1.5 x 150 A / 1.06 A/px = 212.3 -> 216
    assert "leaves out bioem" in proc.stderr
