"""``cryopipe extract`` with nothing to extract, and with a pixel size the micrographs' headers contradict.

No particle at all (an empty picks file, or every pick too close to an edge) is one line naming the picks file and
exit status 2. A batch of micrographs without picks, while other batches have some, is only a logged warning: it
writes a particles.star with its data_optics and no rows, which --gather skips; gathering only empty batches is an
error. A CTF STAR pixel size more than 1% from a micrograph's MRC header is refused (a header holding 0 is unset:
the STAR's value is used, with a warning). Without a CTF STAR the particles carry no CTF columns and the pixel size
must come from --angpix or the headers (an unset header is then refused). Micrographs here are 128 px of noise: the
tests check bookkeeping only.
"""

import numpy as np
import pandas as pd
import pytest

from cryopipe.cli import main as cli_main
from cryopipe.io.mrc import write_mrc
from cryopipe.io.star import read_star, read_table, write_star

ANGPIX, SIZE, BOX = 2.5, 128, 32


def _ctf_star(path, mics, angpix=ANGPIX):
    optics = pd.DataFrame({"rlnOpticsGroupName": ["opticsGroup1"], "rlnOpticsGroup": [1],
                           "rlnMicrographOriginalPixelSize": [angpix], "rlnVoltage": [300.0],
                           "rlnSphericalAberration": [2.7], "rlnAmplitudeContrast": [0.1],
                           "rlnMicrographPixelSize": [angpix]})
    rows = pd.DataFrame({"rlnMicrographName": [str(m) for m in mics], "rlnOpticsGroup": 1,
                         "rlnDefocusU": [15000.0, 16000.0][: len(mics)], "rlnDefocusV": [14800.0, 15900.0][: len(mics)],
                         "rlnDefocusAngle": [10.0, 20.0][: len(mics)]})
    write_star(path, {"optics": optics, "micrographs": rows})
    return path


def _picks(path, coords):
    """coords: {micrograph path: [(x, y), ...]}."""
    rows = [(str(m), float(x), float(y)) for m, xy in coords.items() for x, y in xy]
    table = pd.DataFrame(rows, columns=["rlnMicrographName", "rlnCoordinateX", "rlnCoordinateY"]).astype(
        {"rlnMicrographName": str, "rlnCoordinateX": float, "rlnCoordinateY": float})
    write_star(path, {"particles": table})
    return path


@pytest.fixture
def data(tmp_path):
    """Two noise micrographs (2.5 A/px in their headers), their CTF STAR, and picks on mic_001 only."""
    rng = np.random.default_rng(0)
    (tmp_path / "mics").mkdir()
    mics = [tmp_path / "mics" / f"mic_00{i}.mrc" for i in (1, 2)]
    for mic in mics:
        write_mrc(mic, rng.standard_normal((SIZE, SIZE)).astype(np.float32), ANGPIX)
    ctf = _ctf_star(tmp_path / "ctf.star", mics)
    picks = _picks(tmp_path / "picks.star", {mics[0]: [(40, 40), (64, 64), (90, 80), (60, 30)]})
    return {"mics": mics, "ctf": ctf, "picks": picks, "folder": tmp_path}


def _extract(data, picks, out, capsys, *extra, ctf=None, log=None):
    """cryopipe extract -> (exit status, its error lines); ``ctf`` False: no --ctf; ``log``: a list that gets its
    stderr (the CLI sends its log there, replacing pytest's handlers)."""
    with_ctf = [] if ctf is False else ["--ctf", str(ctf or data["ctf"])]
    status = cli_main(["extract", "--picks", str(picks), *with_ctf, "--box", str(BOX), "--device", "cpu",
                       "--out", str(out), *extra])
    err = capsys.readouterr().err
    if log is not None:
        log.append(err)
    return status, [line for line in err.splitlines() if line.startswith("cryopipe extract")]


def _earlier_output(out):
    out.mkdir(parents=True)
    (out / "particles.star").write_text("an earlier result\n")


def test_zero_picks_are_refused(data, capsys):
    empty = _picks(data["folder"] / "no_picks.star", {})
    out = data["folder"] / "ex"
    _earlier_output(out)
    status, err = _extract(data, empty, out, capsys)
    assert status == 2 and len(err) == 1, err
    assert f"{empty} [data_particles]: holds no picks: nothing to extract" in err[0]
    assert (out / "particles.star").read_text() == "an earlier result\n"
    assert not (out / "Particles").exists()


def test_every_pick_outside_the_box_is_refused(data, capsys):
    edge = _picks(data["folder"] / "edge.star", {data["mics"][0]: [(3, 3), (125, 60)], data["mics"][1]: [(60, 2)]})
    out = data["folder"] / "ex"
    _earlier_output(out)
    status, err = _extract(data, edge, out, capsys)
    assert status == 2 and len(err) == 1, err
    assert (f"{edge} [rlnCoordinateX/Y]: no particle to extract: all 3 picks lie too close to a micrograph edge for "
            f"a {BOX} px box") in err[0]
    assert (out / "particles.star").read_text() == "an earlier result\n"
    # the same in a batch holding every micrograph of the picks: there is no other batch to make up for it
    status, err = _extract(data, edge, out, capsys, "--micrographs", *map(str, data["mics"]))
    assert status == 2 and "no particle to extract" in err[0]


def test_an_empty_batch_is_a_warning_and_gathers_with_the_others(data, capsys, monkeypatch):
    monkeypatch.chdir(data["folder"])
    log = []
    assert _extract(data, data["picks"], "batch2", capsys, "--micrographs", str(data["mics"][1]), log=log) == (0, [])
    assert "WARNING" in log[0] and "mic_002.mrc: no picks" in log[0] and "no particles in this batch" in log[0]
    empty = read_star("batch2/particles.star")
    assert len(empty["particles"]) == 0
    optics = empty["optics"].iloc[0]
    assert (optics["rlnImagePixelSize"], optics["rlnImageSize"], optics["rlnVoltage"]) == (ANGPIX, BOX, 300.0)
    assert _extract(data, data["picks"], "batch1", capsys, "--micrographs", str(data["mics"][0])) == (0, [])
    for order in (["batch2", "batch1"], ["batch1", "batch2"]):
        assert cli_main(["extract", "--gather", *(f"{b}/particles.star" for b in order), "--out", "all"]) == 0
        gathered = read_table("all/particles.star", required=["rlnImageName", "rlnImagePixelSize"])
        assert len(gathered) == 4 and (gathered["rlnImagePixelSize"] == ANGPIX).all()
    # only empty batches: nothing to gather
    status = cli_main(["extract", "--gather", "batch2/particles.star", "--out", "none"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("cryopipe extract")]
    assert status == 2 and len(err) == 1, err
    assert ("batch2/particles.star [data_particles]: no particles in any of the 1 STAR files to gather (every batch "
            "was empty: check the picks)") in err[0]
    assert not (data["folder"] / "none" / "particles.star").exists()


def test_ctf_star_pixel_size_contradicting_the_micrograph_header_is_refused(data, capsys):
    wrong = _ctf_star(data["folder"] / "ctf_3A.star", data["mics"], angpix=3.0)
    status, err = _extract(data, data["picks"], data["folder"] / "ex", capsys, ctf=wrong)
    assert status == 2 and len(err) == 1, err
    assert (f"{wrong} [rlnMicrographPixelSize]: 3 A/px differs from the 2.5 A/px in the MRC header of "
            f"{data['mics'][0]} by more than 1%") in err[0]
    # --angpix overrides both (the user says so)
    assert _extract(data, data["picks"], data["folder"] / "ex", capsys, "--angpix", "3.0", ctf=wrong) == (0, [])
    assert read_star(data["folder"] / "ex" / "particles.star")["optics"]["rlnImagePixelSize"].iloc[0] == 3.0


def test_unset_micrograph_header_trusts_the_ctf_star(data, capsys):
    write_mrc(data["mics"][0], np.random.default_rng(1).standard_normal((SIZE, SIZE)).astype(np.float32), 0.0)
    log = []
    assert _extract(data, data["picks"], data["folder"] / "ex", capsys, log=log) == (0, [])
    assert "WARNING" in log[0] and "1 micrographs hold no pixel size in their MRC header" in log[0]
    assert read_star(data["folder"] / "ex" / "particles.star")["optics"]["rlnImagePixelSize"].iloc[0] == ANGPIX


def test_without_a_ctf_star_the_particles_carry_no_ctf(data, capsys):
    """No --ctf: stacks as with one, the pixel size from the headers, no CTF column, and class2d's CTF-free mode
    reads them while its CTF mode refuses them (exit 2, naming the particles STAR and the missing column)."""
    from cryopipe.particles import open_particles

    out, log = data["folder"] / "ex", []
    assert _extract(data, data["picks"], out, capsys, ctf=False, log=log) == (0, [])
    assert "no CTF STAR" in log[0]
    star = read_star(out / "particles.star")
    assert len(star["particles"]) == 4 and not any(c.startswith("rlnDefocus") for c in star["particles"])
    assert star["optics"]["rlnImagePixelSize"].iloc[0] == ANGPIX and "rlnVoltage" not in star["optics"]
    assert len(open_particles(out / "particles.star", ctf=False).table) == 4
    status = cli_main(["class2d", "--particles", str(out / "particles.star"), "--classes", "2", "--iterations", "1",
                       "--device", "cpu", "--out", str(data["folder"] / "c2d")])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("cryopipe class2d")]
    assert status == 2 and len(err) == 1 and str(out / "particles.star") in err[0] and "rlnDefocusU" in err[0], err


def test_without_a_ctf_star_an_unset_header_needs_angpix(data, capsys):
    write_mrc(data["mics"][0], np.random.default_rng(1).standard_normal((SIZE, SIZE)).astype(np.float32), 0.0)
    status, err = _extract(data, data["picks"], data["folder"] / "ex", capsys, ctf=False)
    assert status == 2 and len(err) == 1 and f"{data['mics'][0]} [angpix]: pixel size unknown" in err[0], err
    assert not (data["folder"] / "ex" / "particles.star").exists()
    assert _extract(data, data["picks"], data["folder"] / "ex", capsys, "--angpix", "2.0", ctf=False) == (0, [])
    assert read_star(data["folder"] / "ex" / "particles.star")["optics"]["rlnImagePixelSize"].iloc[0] == 2.0
    status, err = _extract(data, data["picks"], data["folder"] / "ex2", capsys, "--max-ctf-resolution", "6",
                           ctf=False)
    assert status == 2 and "[--max-ctf-resolution]" in err[0], err
