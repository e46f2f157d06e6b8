"""``cryopipe ctf`` end to end: RELION's CtfFind STAR (the column set ``cryopipe simulate`` writes, read unchanged
by ``cryopipe extract --ctf``), diagnostics, the defocus plane, MPI, and bad inputs (one line, exit status 2)."""

import json
import subprocess
import sys

import numpy as np
import pytest

from cryopipe.cli import main as cli_main
from cryopipe.io.mrc import write_mrc
from cryopipe.io.star import read_star, read_table
from cryopipe.simulate.micrographs import SimulateParams, simulate_dataset

OPTICS = ["--voltage", "300", "--cs", "2.7", "--amplitude-contrast", "0.1"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Two simulated micrographs with Thon rings (ice background), 1024^2 at 1.5 A/px, and their truth."""
    out = tmp_path_factory.mktemp("sim")
    simulate_dataset(SimulateParams(snr=0.1, seed=4, micrographs=2, size_px=1024, angpix=1.5,
                                    particles_per_micrograph=4,
                                    diameter_A=90.0, ice_snr=0.1, astigmatism_max_A=1200.0, ice_gradient_every=2),
                     out)
    return out


def _errors(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("cryopipe ctf")]


def test_star_matches_simulate_and_extract_reads_it(dataset, tmp_path):
    out = tmp_path / "ctf"
    assert cli_main(["ctf", "--micrographs", str(dataset / "micrographs_ctf.star"), *OPTICS, "--out", str(out),
                     "--device", "cpu"]) == 0
    ours, sims = read_star(out / "micrographs_ctf.star"), read_star(dataset / "micrographs_ctf.star")
    assert list(ours["optics"].columns) == list(sims["optics"].columns)
    assert set(sims["micrographs"].columns) <= set(ours["micrographs"].columns)
    assert {"rlnCtfImage", "rlnPhaseShift", "cpCtfFlagged"} <= set(ours["micrographs"].columns)
    table = read_table(out / "micrographs_ctf.star", "micrographs")
    truth = read_table(dataset / "truth" / "micrographs.star", "micrographs")
    assert list(table["rlnMicrographName"]) == list(truth["rlnMicrographName"])
    np.testing.assert_allclose(table["rlnDefocusU"], truth["rlnDefocusU"], rtol=0.01)
    np.testing.assert_allclose(table["rlnDefocusV"], truth["rlnDefocusV"], rtol=0.01)
    np.testing.assert_allclose(table["rlnCtfAstigmatism"], table["rlnDefocusU"] - table["rlnDefocusV"])
    assert (table["cpCtfFlagged"] == 0).all() and (table["rlnCtfFigureOfMerit"] > 0.1).all()
    assert (table["rlnCtfMaxResolution"] < 8.0).all() and (table["rlnPhaseShift"] == 0).all()
    for name in ("mic_001", "mic_002"):
        assert (out / "diagnostics" / f"{name}.png").stat().st_size < 300_000
        assert (out / "spectra" / f"{name}.ctf").exists()
    assert table["rlnCtfImage"][0] == f"{out / 'spectra' / 'mic_001.ctf'}:mrc"
    assert (out / "ctf_summary.png").exists()
    record = json.loads((out / "provenance.json").read_text())
    assert record["notes"]["micrographs"] == 2 and record["notes"]["flagged"] == 0

    assert cli_main(["extract", "--picks", str(dataset / "truth" / "particles.star"), "--ctf",
                     str(out / "micrographs_ctf.star"), "--box", "64", "--out", str(tmp_path / "extract"),
                     "--device", "cpu"]) == 0
    particles = read_table(tmp_path / "extract" / "particles.star", "particles")
    first = particles[particles["rlnMicrographName"] == table["rlnMicrographName"][0]]
    assert len(first) > 0 and np.allclose(first["rlnDefocusU"], table["rlnDefocusU"][0])


def test_defocus_plane(sim, tmp_path):
    """A micrograph whose defocus varies by 1.0 A/px along x and -0.6 A/px along y: --per-tile finds the plane."""
    image = sim.tilted_micrograph(np.random.default_rng(5), 20000.0, (1.0, -0.6), level_step_A=100.0)
    write_mrc(tmp_path / "tilted.mrc", image, 1.5)
    out = tmp_path / "ctf"
    assert cli_main(["ctf", "--micrographs", str(tmp_path / "tilted.mrc"), *OPTICS, "--tile", "256", "--per-tile",
                     "--out", str(out), "--device", "cpu"]) == 0
    row = read_table(out / "micrographs_ctf.star", "micrographs").iloc[0]
    assert row["cpDefocusPlaneA"] == pytest.approx(1.0, abs=0.1)
    assert row["cpDefocusPlaneB"] == pytest.approx(-0.6, abs=0.1)
    assert 0.5 * (row["rlnDefocusU"] + row["rlnDefocusV"]) == pytest.approx(20000.0, rel=0.01)
    tiles = read_table(out / "tiles" / "tilted.star", "tiles")
    assert len(tiles) == 49 and tiles["cpKept"].sum() >= 40


def _mrc(path, image, angpix=1.5):
    write_mrc(path, image.astype(np.float32), angpix)
    return str(path)


@pytest.mark.filterwarnings("ignore:Data array contains NaN values")
def test_bad_inputs_say_one_line(tmp_path, capsys, rng):
    good = _mrc(tmp_path / "good.mrc", rng.standard_normal((512, 512)))
    cases = {
        "[--voltage]: required": ["--cs", "2.7", "--amplitude-contrast", "0.1"],
        "[--cs]: required": ["--voltage", "300", "--amplitude-contrast", "0.1"],
        "[--amplitude-contrast]: must be in [0, 1)": ["--voltage", "300", "--cs", "2.7", "--amplitude-contrast", "1"],
    }
    for message, flags in cases.items():
        assert cli_main(["ctf", "--micrographs", good, *flags, "--out", str(tmp_path / "o")]) == 2
        err = _errors(capsys)
        assert len(err) == 1 and message in err[0], err
    nohead = _mrc(tmp_path / "nohead.mrc", rng.standard_normal((512, 512)), angpix=0.0)
    small = _mrc(tmp_path / "small.mrc", rng.standard_normal((256, 256)))
    nan = rng.standard_normal((512, 512))
    nan[5, 7] = np.nan
    nan = _mrc(tmp_path / "nan.mrc", nan)
    for micrograph, extra, message in [
        (nohead, [], f"{nohead} [angpix]: pixel size unknown"),
        (small, ["--tile", "512"], f"{small} [--tile]: micrograph of 256x256 px is smaller than the 512 px tile"),
        (nan, ["--tile", "256"], f"{nan} [data]: data contain NaN or Inf values"),
        (good, ["--resolution-range", "30", "2"], "[--resolution-range]: high-resolution limit 2.0 A is beyond"),
        (str(tmp_path / "missing.mrc"), [], "missing.mrc: file not found"),
    ]:
        assert cli_main(["ctf", "--micrographs", micrograph, *OPTICS, *extra, "--out", str(tmp_path / "o"),
                         "--device", "cpu"]) == 2
        err = _errors(capsys)
        assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "o" / "micrographs_ctf.star").exists()


@pytest.mark.mpi
def test_two_ranks_equal_one_rank(dataset, tmp_path, mpiexec):
    # one micrograph per batch on both sides: a batch's matrix products may round differently in the last bits
    args = ["ctf", "--micrographs", str(dataset / "micrographs" / "mic_*.mrc"), *OPTICS, "--device", "cpu",
            "--no-diagnostics", "--batch-size", "1"]
    assert cli_main([*args, "--out", str(tmp_path / "one")]) == 0
    subprocess.run([str(mpiexec), "-n", "2", sys.executable, "-m", "cryopipe.cli", *args,
                    "--out", str(tmp_path / "two")], check=True, timeout=300)
    one, two = (read_table(tmp_path / f / "micrographs_ctf.star", "micrographs") for f in ("one", "two"))
    assert json.loads((tmp_path / "two" / "provenance.json").read_text())["mpi_size"] == 2
    assert list(one["rlnMicrographName"]) == list(two["rlnMicrographName"])
    np.testing.assert_allclose(two.select_dtypes("number"), one.select_dtypes("number"), rtol=1e-6)
