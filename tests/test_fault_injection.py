"""Fault injection across stages and the workflow: bad inputs, concurrent runs, storage errors and SIGKILL.

One small project is made once (simulate -> pick -> extract -> class2d -> select2d; class3d -> select3d on
synthetic particles; postprocess on synthetic half-maps). Each case then attacks one stage whose output folder
already holds a good result, and asserts the exit status, the one-line message, and that the earlier result is
byte-identical afterwards. Killed runs are rerun and must equal an uninterrupted run. The case table is printed
(``pytest -s`` or the captured output of a failure)."""

from __future__ import annotations

import errno
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import mrcfile
import numpy as np
import pytest

from cryopipe import outdir
from cryopipe.cli import main
from cryopipe.em3d.synthetic import SyntheticSpec, simulate_particles, write_reference
from cryopipe.io.mrc import write_mrc
from cryopipe.io.star import read_star, write_star

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
SIM = ["--micrographs", "2", "--size-px", "384", "--particles-per-micrograph", "8", "--seed", "7"]
RESULTS: list[tuple[str, str, str]] = []  # (case, expected, outcome) for the printed table


def _run(argv, cwd=None):
    return main([str(a) for a in argv])


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """Good results of every stage the cases attack, and the commands that made them."""
    root = tmp_path_factory.mktemp("project")
    p = {"root": root}
    sim = root / "sim"
    mics = [sim / "micrographs" / f"mic_00{i}.mrc" for i in (1, 2)]
    p["cmd"] = {
        "simulate": ["simulate", "--out", sim, *SIM],
        "pick": ["pick", "--micrographs", *mics, "--reference", sim / "maps/conformation_1.mrc", "--diameter", "120",
                 "--device", "cpu", "--out", root / "pick"],
        "extract": ["extract", "--picks", root / "pick/picks.star", "--ctf", sim / "micrographs_ctf.star",
                    "--micrographs", *mics, "--box", "64", "--invert", "--device", "cpu", "--out", root / "extract"],
        "class2d": ["class2d", "--particles", root / "extract/particles.star", "--classes", "2", "--iterations", "2",
                    "--mask-diameter", "130", "--device", "cpu", "--out", root / "class2d"],
        "select2d": ["select2d", "--particles", root / "class2d/particles.star", "--classes-star",
                     root / "class2d/classes.star", "--keep", "1", "2", "--out", root / "select2d"],
    }
    synth = simulate_particles(SyntheticSpec(n=120, snr=0.1, seed=11, out_box=32), root / "synth")
    ref = write_reference(synth["maps"]["conformation_1"], synth["angpix"], 40.0, root / "synth/ref.mrc")
    p["synth"], p["angpix3d"] = synth, synth["angpix"]
    p["cmd"]["class3d"] = ["class3d", "--particles", synth["star"], "--reference", ref, "--classes", "2",
                           "--iterations", "2", "--healpix-order", "1", "--offset-range", "3", "--offset-step", "1.5",
                           "--diameter", "130", "--device", "cpu", "--out", root / "class3d"]
    p["cmd"]["refine3d"] = ["refine3d", "--particles", synth["star"], "--reference", ref, "--max-iterations", "3",
                            "--healpix-order", "1", "--offset-range", "1.5", "--offset-step", "1.5",
                            "--diameter", "130", "--device", "cpu", "--out", root / "refine3d"]
    p["cmd"]["select3d"] = ["select3d", "--particles", root / "class3d/run_it002_data.star", "--maps",
                            root / "class3d/run_it002_class001.mrc", root / "class3d/run_it002_class002.mrc",
                            "--out", root / "select3d"]
    rng = np.random.default_rng(3)
    truth = np.zeros((32, 32, 32), np.float32)
    truth[10:22, 12:20, 11:21] = 1.0
    from scipy import ndimage

    truth = ndimage.gaussian_filter(truth, 1.5)
    for k in (1, 2):
        write_mrc(root / f"half{k}.mrc", (truth + 0.05 * rng.standard_normal(truth.shape)).astype(np.float32), 2.0)
    p["cmd"]["postprocess"] = ["postprocess", "--half1", root / "half1.mrc", "--half2", root / "half2.mrc",
                               "--bfactor", "-50", "--out", root / "postprocess"]
    for stage, argv in p["cmd"].items():
        assert _run(argv) == 0, stage
    return p


def _out(argv) -> Path:
    return Path(argv[argv.index("--out") + 1])


def _snapshot(folder: Path) -> dict:
    """Every published file's bytes (cryopipe's hidden lock, marks and run folders aside)."""
    if not folder.exists():
        return {}
    return {f.relative_to(folder): f.read_bytes() for f in folder.rglob("*")
            if f.is_file() and not any(part.startswith(".") for part in f.relative_to(folder).parts)}


def _with(argv, flag, *values):
    """``argv`` with ``flag``'s value(s) replaced (or the flag added)."""
    argv = list(argv)
    if flag in argv:
        i = argv.index(flag)
        j = i + 1
        while j < len(argv) and not str(argv[j]).startswith("--"):
            j += 1
        argv[i + 1:j] = list(values)
    else:
        argv += [flag, *values]
    return argv


@dataclass
class Case:
    name: str
    stage: str
    make: Callable  # (project, tmp) -> argv of the bad run
    status: int = 2
    message: str = ""  # a piece of the one-line message
    also: list = field(default_factory=list)  # more pieces


def _write_text(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _nan_micrograph(p, tmp):
    bad = tmp / "nan.mrc"
    with mrcfile.open(p["cmd"]["pick"][2]) as m:
        data, voxel = m.data.copy(), float(m.voxel_size.x)
    data[5, 5] = np.nan
    write_mrc(bad, data, voxel)
    return _with(p["cmd"]["pick"], "--micrographs", bad)


def _star_without(p, tmp, src, column):
    blocks = read_star(src)
    name = next(k for k, v in blocks.items() if column in v.columns)
    blocks[name] = blocks[name].drop(columns=[column])
    bad = tmp / f"no_{column}.star"
    write_star(bad, blocks)
    return bad


def _picks_empty(p, tmp):
    blocks = read_star(p["root"] / "pick/picks.star")
    name = next(iter(blocks))
    blocks[name] = blocks[name].iloc[:0]
    bad = tmp / "empty_picks.star"
    write_star(bad, blocks)
    return _with(p["cmd"]["extract"], "--picks", bad)


def _pixel_size_mismatch(p, tmp):
    blocks = read_star(p["root"] / "extract/particles.star")
    blocks["optics"]["rlnImagePixelSize"] = blocks["optics"]["rlnImagePixelSize"] * 1.5
    bad = p["root"] / "extract/pix.star"  # beside the stacks, so the relative image names still resolve
    write_star(bad, blocks)
    return _with(p["cmd"]["class2d"], "--particles", bad)


def _truncated_checkpoint(p, tmp):
    src = p["root"] / "class3d"
    for f in src.glob("run_it001_*"):
        shutil.copy(f, tmp / f.name)
    model = tmp / "run_it001_model.star"
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    return ["class3d", "--continue", tmp / "run_it001", "--iterations", "3", "--device", "cpu", "--out",
            p["root"] / "class3d"]


def _same_half_twice(p, tmp):
    return _with(p["cmd"]["postprocess"], "--half2", p["root"] / "half1.mrc")


def _zero_halves(p, tmp):
    for k in (1, 2):
        write_mrc(tmp / f"z{k}.mrc", np.zeros((32, 32, 32), np.float32), 2.0)
    return _with(_with(p["cmd"]["postprocess"], "--half1", tmp / "z1.mrc"), "--half2", tmp / "z2.mrc")


def _bioem_box_mismatch(p, tmp):
    write_mrc(tmp / "model.mrc", np.ones((40, 40, 40), np.float32), p["angpix3d"])
    return ["bioem", "--particles", p["synth"]["star"], "--models", tmp / "model.mrc", "--device", "cpu",
            "--out", p["root"] / "class3d"]


def _select3d_absent_class(p, tmp):
    return _with(p["cmd"]["select3d"], "--class", "7")


CASES = [
    # simulate
    Case("simulate: negative pixel size", "simulate", lambda p, t: _with(p["cmd"]["simulate"], "--angpix", "-1"),
         message="--angpix"),
    Case("simulate: zero micrographs", "simulate", lambda p, t: _with(p["cmd"]["simulate"], "--micrographs", "0"),
         message="--micrographs"),
    # pick
    Case("pick: micrograph missing", "pick", lambda p, t: _with(p["cmd"]["pick"], "--micrographs", t / "none.mrc"),
         message="none.mrc"),
    Case("pick: NaN in a micrograph", "pick", _nan_micrograph, message="nan.mrc"),
    Case("pick: reference missing", "pick", lambda p, t: _with(p["cmd"]["pick"], "--reference", t / "ref.mrc"),
         message="ref.mrc"),
    Case("pick: micrograph is not an MRC", "pick",
         lambda p, t: _with(p["cmd"]["pick"], "--micrographs", _write_text(t / "text.mrc", "not a map")),
         message="text.mrc"),
    Case("pick: negative diameter", "pick", lambda p, t: _with(p["cmd"]["pick"], "--diameter", "-5"),
         message="--diameter"),
    # extract
    Case("extract: picks missing", "extract", lambda p, t: _with(p["cmd"]["extract"], "--picks", t / "no.star"),
         message="no.star"),
    Case("extract: picks without coordinates", "extract",
         lambda p, t: _with(p["cmd"]["extract"], "--picks",
                            _star_without(p, t, p["root"] / "pick/picks.star", "rlnCoordinateX")),
         message="rlnCoordinateX"),
    Case("extract: zero picks", "extract", _picks_empty, message="empty_picks.star"),
    Case("extract: CTF STAR missing", "extract", lambda p, t: _with(p["cmd"]["extract"], "--ctf", t / "ctf.star"),
         message="ctf.star"),
    Case("extract: CTF STAR without defocus", "extract",
         lambda p, t: _with(p["cmd"]["extract"], "--ctf",
                            _star_without(p, t, p["root"] / "sim/micrographs_ctf.star", "rlnDefocusU")),
         message="rlnDefocusU"),
    Case("extract: odd box", "extract", lambda p, t: _with(p["cmd"]["extract"], "--box", "63"), message="--box"),
    # class2d
    Case("class2d: particles missing", "class2d",
         lambda p, t: _with(p["cmd"]["class2d"], "--particles", t / "none.star"), message="none.star"),
    Case("class2d: K = 0", "class2d", lambda p, t: _with(p["cmd"]["class2d"], "--classes", "0"),
         message="--classes"),
    Case("class2d: STAR pixel size differs from the stack's", "class2d", _pixel_size_mismatch,
         message="[rlnImagePixelSize]"),
    Case("class2d: particles without CTF", "class2d",
         lambda p, t: _with(p["cmd"]["class2d"], "--particles",
                            _star_without(p, p["root"] / "extract", p["root"] / "extract/particles.star",
                                          "rlnDefocusU")),
         message="rlnDefocusU"),
    # select2d
    Case("select2d: classes STAR missing", "select2d",
         lambda p, t: _with(p["cmd"]["select2d"], "--classes-star", t / "none.star"), message="none.star"),
    Case("select2d: keep a class that does not exist", "select2d",
         lambda p, t: _with(p["cmd"]["select2d"], "--keep", "9"), message="9"),
    # class3d
    Case("class3d: K larger than the particles", "class3d",
         lambda p, t: _with(p["cmd"]["class3d"], "--classes", "500"), message="--classes"),
    Case("class3d: 99,999 A diameter", "class3d",
         lambda p, t: _with(p["cmd"]["class3d"], "--diameter", "99999"), message="--diameter"),
    Case("class3d: reference box differs", "class3d",
         lambda p, t: _with(p["cmd"]["class3d"], "--reference",
                            write_mrc(t / "r40.mrc", np.zeros((40, 40, 40), np.float32), p["angpix3d"]) or
                            t / "r40.mrc"),
         message="box"),
    Case("class3d: --continue from a truncated model.star", "class3d", _truncated_checkpoint,
         message="run_it001_model.star"),
    Case("class3d: --continue with another K", "class3d",
         lambda p, t: ["class3d", "--continue", p["root"] / "class3d/run_it001", "--classes", "3", "--iterations",
                       "3", "--device", "cpu", "--out", p["root"] / "class3d"], message="classes"),
    Case("class3d: --continue with --reference", "class3d",
         lambda p, t: ["class3d", "--continue", p["root"] / "class3d/run_it001", "--reference",
                       p["cmd"]["class3d"][4], "--iterations", "3", "--device", "cpu", "--out",
                       p["root"] / "class3d"], message="--reference"),
    Case("class3d: --continue from no checkpoint", "class3d",
         lambda p, t: ["class3d", "--continue", t / "run_it004", "--device", "cpu", "--out", p["root"] / "class3d"],
         message="--continue"),
    # select3d
    Case("select3d: a class with no particles", "select3d", _select3d_absent_class, message="7"),
    Case("select3d: data STAR missing", "select3d",
         lambda p, t: _with(p["cmd"]["select3d"], "--particles", t / "none.star"), message="none.star"),
    # refine3d
    Case("refine3d: particle diameter larger than the box", "refine3d",
         lambda p, t: _with(p["cmd"]["refine3d"], "--diameter", "99999"), message="--diameter"),
    Case("refine3d: --continue with another symmetry", "refine3d",
         lambda p, t: ["refine3d", "--continue", p["root"] / "refine3d/run_it001", "--symmetry", "C2",
                       "--max-iterations", "4", "--device", "cpu", "--out", p["root"] / "refine3d"],
         message="symmetry"),
    # postprocess
    Case("postprocess: the same half-map twice", "postprocess", _same_half_twice, message="half"),
    Case("postprocess: all-zero half-maps", "postprocess", _zero_halves, message="z1.mrc"),
    Case("postprocess: half-maps of different shapes", "postprocess",
         lambda p, t: _with(p["cmd"]["postprocess"], "--half2",
                            write_mrc(t / "s.mrc", np.zeros((24, 24, 24), np.float32), 2.0) or t / "s.mrc"),
         message="shape"),
    # bioem
    Case("bioem: map model box differs from the particles'", "class3d", _bioem_box_mismatch, message="model.mrc"),
    Case("bioem: model file missing", "class3d",
         lambda p, t: ["bioem", "--particles", p["synth"]["star"], "--models", t / "none.pdb", "--device", "cpu",
                       "--out", p["root"] / "class3d"], message="none.pdb"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input(project, tmp_path, capsys, case):
    argv = case.make(project, tmp_path)
    folder = _out(argv)
    before = _snapshot(folder)
    assert before, f"no earlier result in {folder}"
    capsys.readouterr()
    status = _run(argv)
    lines = [x for x in capsys.readouterr().err.splitlines() if f"cryopipe {argv[0]}: error:" in x]
    RESULTS.append((case.name, f"exit {case.status}", f"exit {status}: {lines[0] if lines else '(no message)'}"))
    assert status == case.status, lines
    assert len(lines) == 1 and case.message in lines[0] and all(a in lines[0] for a in case.also), lines
    assert _snapshot(folder) == before, "the earlier result changed"
    assert not list(folder.glob(".staging-*"))




@pytest.mark.parametrize("stage", ["simulate", "pick", "class3d", "postprocess"])
def test_concurrent_run_is_refused_naming_the_holder(project, capsys, stage):
    folder = _out(project["cmd"][stage])
    before = _snapshot(folder)
    lock = outdir.OutputLock(folder, "class2d", ["cryopipe", "class2d"])
    try:
        status = _run(project["cmd"][stage])
    finally:
        lock.release()
    lines = [x for x in capsys.readouterr().err.splitlines() if "error:" in x]
    RESULTS.append((f"{stage}: second run while another holds --out", "exit 2", f"exit {status}: {lines}"))
    assert status == 2 and len(lines) == 1 and f"in use by cryopipe class2d (pid {os.getpid()}" in lines[0]
    assert _snapshot(folder) == before


@pytest.mark.parametrize("stage, err", [("simulate", errno.ENOSPC), ("extract", errno.EROFS),
                                        ("postprocess", errno.ENOSPC), ("class2d", errno.EACCES)])
def test_storage_error_is_one_line_and_keeps_the_earlier_result(project, capsys, monkeypatch, stage, err):
    """A full disk, a read-only and a forbidden output folder, through a patched writer (CI cannot mount)."""
    from cryopipe.io import atomic

    folder = _out(project["cmd"][stage])
    before = _snapshot(folder)
    real = atomic.atomic_path

    def failing(target):
        raise OSError(err, os.strerror(err), str(target))

    monkeypatch.setattr(atomic, "atomic_path", failing)
    for module in list(sys.modules.values()):  # the stages imported the name itself
        if getattr(module, "atomic_path", None) is real and module is not atomic:
            monkeypatch.setattr(module, "atomic_path", failing)
    status = _run(project["cmd"][stage])
    lines = [x for x in capsys.readouterr().err.splitlines() if "error:" in x]
    RESULTS.append((f"{stage}: {errno.errorcode[err]} while writing", "one line", f"exit {status}: {lines}"))
    assert status == outdir.STORAGE_ERRNOS[err] and len(lines) == 1 and os.strerror(err) in lines[0], lines
    assert ".staging-" not in lines[0]
    assert _snapshot(folder) == before


def _content(path: Path) -> bytes:
    """What a file says, without the stamps STAR headers and MRC labels carry."""
    if path.suffix in (".mrc", ".mrcs"):
        with mrcfile.open(path, permissive=True) as m:
            return m.data.tobytes()
    data = path.read_bytes()
    if path.suffix == ".star" and data.startswith(b"#"):
        return data.split(b"\n", 1)[1]
    return data


def _result(folder: Path) -> dict:
    return {rel: _content(folder / rel) for rel in _snapshot(folder)
            if rel.name != "provenance.json" and rel.suffix != ".png"}


@pytest.mark.parametrize("stage, seed", [("simulate", 1), ("pick", 2), ("extract", 3), ("class2d", 4),
                                         ("postprocess", 5), ("class3d", 6), ("refine3d", 7)])
def test_sigkill_at_a_random_point_then_rerun_equals_uninterrupted(project, tmp_path, stage, seed):
    """Kill the stage (a child process) at a random moment of its run, rerun the same command, compare with an
    uninterrupted run of the same command (PNGs and the record aside: they carry times)."""
    argv = [str(a) for a in project["cmd"][stage]]
    out = tmp_path / stage
    argv[argv.index("--out") + 1] = str(out)
    t0 = time.monotonic()
    subprocess.run([sys.executable, "-m", "cryopipe.cli", *argv], check=True, capture_output=True, timeout=600)
    duration = time.monotonic() - t0
    uninterrupted = _result(out)  # files name their own folder: compare runs into the same one
    shutil.rmtree(out)
    delay = random.Random(seed).uniform(0.3, 0.9) * duration
    proc = subprocess.Popen([sys.executable, "-m", "cryopipe.cli", *argv], stderr=subprocess.DEVNULL)
    time.sleep(delay)
    killed = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    if killed and not (out / "provenance.json").exists():  # (a run killed after its record is a finished one)
        assert not _snapshot(out), "a killed run published part of its result"
    assert _run(argv) == 0
    RESULTS.append((f"{stage}: SIGKILL after {delay:.1f} s of {duration:.1f} s, rerun", "equals uninterrupted",
                    "killed" if killed else "finished first"))
    assert _result(out) == uninterrupted
    assert not list(out.glob(".staging-*")) and not list(out.glob(".run-*"))


WORKFLOW_CASES = [
    ("workflow: empty micrographs glob", {"micrographs": {"glob": ""}}, "[micrographs.glob]: must name"),
    ("workflow: glob matching nothing", {"micrographs": {"glob": "nowhere/*.mrc"}}, "matches no file"),
    ("workflow: no CTF STAR and no optics to estimate it", {"micrographs": {"glob": "{mics}", "ctf_star": ""}},
     "[micrographs.voltage]: the microscope's optics are needed to estimate the CTF"),
    ("workflow: CTF STAR missing", {"micrographs": {"glob": "{mics}", "ctf_star": "none.star"}},
     "'none.star': no such file"),
    ("workflow: no pick reference", {"micrographs": {"glob": "{mics}", "ctf_star": "{ctf}"}},
     "[pick.reference]: must name"),
    ("workflow: unknown config key", {"class3d": {"iteratoins": 3}}, "Additional properties are not allowed"),
]


@pytest.mark.parametrize("name, config, message", WORKFLOW_CASES, ids=[c[0] for c in WORKFLOW_CASES])
def test_workflow_input_errors_are_one_line_before_anything_runs(project, tmp_path, name, config, message):
    import yaml

    snakemake = shutil.which("snakemake", path=str(BIN))
    if snakemake is None:
        pytest.skip("snakemake not installed")
    sim = project["root"] / "sim"
    text = yaml.safe_dump({"simulate": {"enabled": False}, **config})
    text = text.replace("{mics}", str(sim / "micrographs/*.mrc")).replace("{ctf}", str(sim / "micrographs_ctf.star"))
    (tmp_path / "c.yaml").write_text(text)
    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.run([snakemake, "-s", str(repo / "Snakefile"), "-d", str(tmp_path), "--cores", "1", "-n",
                           f"--configfile={tmp_path / 'c.yaml'}"], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"})
    lines = [x for x in proc.stderr.splitlines() if "error:" in x]
    RESULTS.append((name, "exit 2", f"exit {proc.returncode}: {lines}"))
    assert proc.returncode == 2 and len(lines) == 1 and message in lines[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and not (tmp_path / "results").exists()


def test_the_suite_has_at_least_40_cases():
    n = len(CASES) + 4 + 4 + 7 + len(WORKFLOW_CASES)  # bad inputs, concurrent, storage, SIGKILL, workflow
    assert n >= 40, n


def test_zz_print_case_table():
    """The table of every case that ran in this session and what happened (the module's last test)."""
    width = max((len(c) for c, _, _ in RESULTS), default=10)
    lines = [f"{'case':<{width}}  {'expected':<20}  outcome", "-" * (width + 60)]
    lines += [f"{c:<{width}}  {e:<20}  {o[:160]}" for c, e, o in RESULTS]
    print("\n" + "\n".join(lines))
