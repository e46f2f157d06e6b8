"""``cryopipe refine3d`` refuses what it cannot refine: fewer than 2 particles in a gold-standard half set, a
particle diameter larger than the box, a --continue from a checkpoint cut short; and its log says "changes --"
on the first iteration instead of printing the 1e9 sentinel as a number of degrees, and counts the iterations up
to the cap."""

import logging
import re
import shutil
from pathlib import Path

import pytest

from cryopipe import cli
from cryopipe.em3d.synthetic import SyntheticSpec, simulate_particles, write_reference
from cryopipe.io.star import parse_image_name, read_particles, write_table
from cryopipe.refine3d import EMInputs, Refine3DParams, refine
from cryopipe.stage import StageContext

FAST = ["--max-iterations", "1", "--healpix-order", "0", "--offset-range", "0", "--device", "cpu"]


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """16 particles of one conformation, 32 px at 5 A/px, the reference, and a real one-iteration run (its log
    messages in ``log``)."""
    folder = tmp_path_factory.mktemp("tiny_refine")
    truth = simulate_particles(SyntheticSpec(n=16, snr=0.1, seed=3, out_box=32, models=("conformation_1",),
                                             fractions=(1.0,)), folder)
    truth["reference"] = write_reference(truth["maps"]["conformation_1"], truth["angpix"], 40.0, folder / "ref.mrc")
    records, logger = _Records(), logging.getLogger("cryopipe.refine3d.stage")
    logger.addHandler(records)
    level, logger.level = logger.level, logging.INFO
    try:
        params = Refine3DParams(max_iterations=2, healpix_order=0, offset_range=0.0, particle_diameter=130.0)
        refine(params, EMInputs(truth["star"], truth["reference"]), folder / "run", StageContext.local())
    finally:
        logger.removeHandler(records)
        logger.setLevel(level)
    truth["log"], truth["checkpoint"] = records.messages, folder / "run"
    return truth


def _cli(argv, capsys):
    """cryopipe refine3d -> (exit status, its error lines)."""
    status = cli.main(["refine3d", *argv])
    return status, [line for line in capsys.readouterr().err.splitlines() if line.startswith("cryopipe refine3d")]


def _subset(tiny, rows, path, **columns):
    table = read_particles(tiny["star"])
    index, stacks = parse_image_name(table["rlnImageName"], tiny["star"])
    table["rlnImageName"] = [f"{i + 1}@{Path(s).resolve()}" for i, s in zip(index, stacks, strict=True)]
    write_table(path, table.iloc[rows].assign(**columns))
    return path


def test_first_iteration_logs_no_sentinel_angle(tiny):
    first = [m for m in tiny["log"] if m.startswith("iteration 1 (of at most 2):")]
    assert len(first) == 1 and "changes -- (first iteration)" in first[0], tiny["log"]
    assert not any("1000000000" in m for m in tiny["log"])
    second = [m for m in tiny["log"] if m.startswith("iteration 2")]
    assert len(second) == 1 and " deg " in second[0] and " px, " in second[0], tiny["log"]


def test_iterations_log_their_count_up_to_the_cap_and_the_time_left_at_most(tiny):
    """Refinement stops on convergence: each iteration's line counts up to the cap (--max-iterations) and says the
    time left is at most the estimate; the final iteration says so and gives the whole time."""
    lines = [m for m in tiny["log"] if m.startswith("iteration ") and "auto-sampling" not in m]
    assert len(lines) == 2, tiny["log"]
    assert re.fullmatch(r"iteration 1 \(of at most 2\): E-step limit .*, [^,]+ s, at most about [^,]+ s left",
                        lines[0])
    assert re.fullmatch(r"iteration 2 \(of at most 2\): final, E-step limit .*, [^,]+ s, [^,]+ s in all", lines[1])


def test_fewer_than_two_particles_in_a_half_set_are_refused(tiny, tmp_path, capsys):
    three = _subset(tiny, [0, 1, 2], tmp_path / "three.star")
    argv = ["--reference", str(tiny["reference"]), *FAST, "--out", str(tmp_path / "out")]
    status, err = _cli(["--particles", str(three), *argv], capsys)
    assert status == 2 and len(err) == 1, err
    assert (f"{three} [data_particles]: gold-standard refinement needs at least 2 particles in each random half "
            "set, the file holds 1 in half 1 and 2 in half 2") in err[0]
    lopsided = _subset(tiny, list(range(16)), tmp_path / "lopsided.star", rlnRandomSubset=[1] * 15 + [2])
    status, err = _cli(["--particles", str(lopsided), *argv], capsys)
    assert status == 2 and len(err) == 1, err
    assert f"{lopsided} [rlnRandomSubset]: " in err[0] and "holds 15 in half 1 and 1 in half 2" in err[0]
    assert not list((tmp_path / "out").glob("run_it*"))


def test_particle_diameter_larger_than_the_box_is_refused(tiny, tmp_path, capsys):
    status, err = _cli(["--particles", str(tiny["star"]), "--reference", str(tiny["reference"]),
                        "--diameter", "99999", *FAST, "--out", str(tmp_path / "out")], capsys)
    assert status == 2 and len(err) == 1, err
    assert (f"{tiny['star']} [--diameter]: particle diameter 99999 A is larger than the box (32 px x "
            "5 A/px = 160 A)") in err[0]
    assert not list((tmp_path / "out").glob("run_it*"))


def test_continue_from_a_model_star_cut_to_half_is_refused(tiny, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny["checkpoint"], run)
    star = run / "run_it001_model.star"
    star.write_bytes(star.read_bytes()[: star.stat().st_size // 2])
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and not p.name.startswith(".")}
    status, err = _cli(["--continue", str(run / "run_it001"), "--max-iterations", "3", "--device", "cpu", "--out",
                        str(run)], capsys)
    assert status == 2 and len(err) == 1, err
    assert f"{star}: does not end with a line break (the file is cut short or damaged" in err[0]
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and not p.name.startswith(".")} == before


def test_defaults_and_the_smallest_valid_set_pass(tiny, tmp_path):
    """Without --diameter (0.9 x box), and with 2 particles in each half set: no error."""
    from cryopipe.em3d.particles import load_particles

    Refine3DParams().check_particles(load_particles(tiny["star"]))
    four = load_particles(_subset(tiny, [0, 1, 2, 3], tmp_path / "four.star"))
    Refine3DParams(particle_diameter=160.0).check_particles(four)
