"""Picking a batch: synthetic micrographs with known particles, outputs, rescaled templates, bad input."""

import json
import logging

import numpy as np
import pandas as pd
import pytest

from cryopipe.backend import get_backend
from cryopipe.cli import main as cli_main
from cryopipe.errors import InputError
from cryopipe.fourier import fourier_pad
from cryopipe.io.mrc import write_mrc
from cryopipe.io.star import read_star, read_table, write_star
from cryopipe.pick import Micrograph, Picker, PickParams, TemplateStack, load_templates, pick_micrographs
from cryopipe.pick.stage import list_micrographs, micrograph_angpix

PARAMS = dict(diameter_A=80.0, lowpass_A=8.0, angular_step=5.0)


@pytest.fixture
def two_templates(synth):
    return TemplateStack(np.stack([synth.blob_template(), synth.blob_template(variant=1)]), synth.ANGPIX)


def test_picks_positions_templates_and_angles(synth, rng, two_templates):
    image, truth = synth.micrograph(rng, n=10, templates=list(two_templates.images), noise=0.3)
    params = PickParams(**{**PARAMS, "lowpass_A": 5.0})  # a finer working grid resolves the angle better
    picks = Picker(two_templates, synth.ANGPIX, params, get_backend("cpu")).pick(image)
    assert synth.match(picks, truth[:, :2], 3.0) == (1.0, 1.0)
    xy = picks[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy()
    order = [int(np.argmin(np.hypot(*(truth[:, :2] - p).T))) for p in xy]
    assert (picks["rlnClassNumber"].to_numpy() == truth[order, 3] + 1).all()
    dpsi = np.abs((picks["rlnAnglePsi"].to_numpy() - truth[order, 2] + 180) % 360 - 180)
    assert np.mean(dpsi <= params.angular_step) >= 0.8 and np.median(dpsi) <= params.angular_step / 2


def test_templates_at_another_pixel_size_are_rescaled(synth, rng, two_templates):
    """Templates at half the micrographs' pixel size (Fourier-padded) give the same picks."""
    image, truth = synth.micrograph(rng, n=8, templates=list(two_templates.images))
    bk = get_backend("cpu")
    fine = TemplateStack(fourier_pad(two_templates.images, 2 * synth.BOX), synth.ANGPIX / 2)
    a = Picker(two_templates, synth.ANGPIX, PickParams(**PARAMS), bk).pick(image)
    b = Picker(fine, synth.ANGPIX, PickParams(**PARAMS), bk).pick(image)
    assert len(a) == len(b) == len(truth)
    a, b = (t.sort_values("rlnCoordinateX", ignore_index=True) for t in (a, b))
    np.testing.assert_allclose(b[["rlnCoordinateX", "rlnCoordinateY"]], a[["rlnCoordinateX", "rlnCoordinateY"]],
                               atol=0.5)
    assert (a["rlnClassNumber"] == b["rlnClassNumber"]).all()


def _write_inputs(tmp_path, synth, rng, n_mics=2):
    templates = np.stack([synth.blob_template(), synth.blob_template(variant=1)])
    write_mrc(tmp_path / "templates.mrcs", templates, synth.ANGPIX)
    truths = []
    for i in range(n_mics):
        image, truth = synth.micrograph(rng, n=8, templates=list(templates))
        write_mrc(tmp_path / "mics" / f"m{i}.mrc", image, synth.ANGPIX)
        truths.append(truth)
    return truths


def test_cli_writes_coords_picks_preview_and_record(tmp_path, synth, rng):
    truths = _write_inputs(tmp_path, synth, rng)
    out = tmp_path / "pick"
    rc = cli_main(["pick", "--micrographs", str(tmp_path / "mics" / "*.mrc"), "--templates",
                   str(tmp_path / "templates.mrcs"), "--diameter", "80", "--lowpass", "8", "--out", str(out),
                   "--device", "cpu", "--write-maps"])
    assert rc == 0
    picks = read_table(out / "picks.star")
    assert list(picks.columns) == ["rlnMicrographName", "rlnCoordinateX", "rlnCoordinateY",
                                   "rlnAutopickFigureOfMerit", "rlnClassNumber", "rlnAnglePsi"]
    for i, truth in enumerate(truths):
        name = str(tmp_path / "mics" / f"m{i}.mrc")
        coords = read_table(out / "coords" / f"m{i}.star")
        assert synth.match(coords, truth[:, :2], 3.0) == (1.0, 1.0)
        assert (picks["rlnMicrographName"] == name).sum() == len(coords)
        assert (out / "maps" / f"m{i}_ncc.mrc").exists()
    assert (out / "picks_preview.png").stat().st_size > 1000
    record = json.loads((out / "provenance.json").read_text())
    assert record["notes"]["picks"] == len(picks) == 16
    assert {o["path"] for o in record["outputs"]} >= {"picks.star", "pick_summary.star", "rejected.star"}
    summary = read_table(out / "pick_summary.star")
    assert list(summary["cpPicks"]) == [len(read_table(out / "coords" / f"m{i}.star")) for i in range(len(truths))]
    assert set(summary["cpPickStatus"]) == {"f1"} and (summary["cpPickFdr"] < 0.1).all()
    block = read_star(out / "coords" / "m0.star")["pick_summary"]  # the micrograph's own record of its threshold
    assert float(block["cpPickThreshold"].iloc[0]) == float(summary["cpPickThreshold"].iloc[0])


def test_cli_blob_picking_needs_no_templates(tmp_path, synth, rng):
    """--blob picks without templates or a reference: most of the (round-ish) particles are found."""
    truths = _write_inputs(tmp_path, synth, rng)
    out = tmp_path / "blob"
    rc = cli_main(["pick", "--micrographs", str(tmp_path / "mics" / "*.mrc"), "--blob", "disc", "--diameter", "80",
                   "--angpix", str(synth.ANGPIX), "--lowpass", "8", "--out", str(out), "--device", "cpu"])
    assert rc == 0
    record = json.loads((out / "provenance.json").read_text())
    assert record["notes"]["template_rotations"] == 4  # four blob sizes, not rotated
    found = [synth.match(read_table(out / "coords" / f"m{i}.star"), t[:, :2], 5.0) for i, t in enumerate(truths)]
    assert np.mean([recall for _, recall in found]) >= 0.7


def test_flat_micrograph_gives_no_picks(tmp_path, synth, rng, two_templates, caplog):
    write_mrc(tmp_path / "flat.mrc", np.zeros((200, 200), np.float32), synth.ANGPIX)
    image, _ = synth.micrograph(rng, n=4, shape=(200, 200), templates=list(two_templates.images))
    write_mrc(tmp_path / "ok.mrc", image, synth.ANGPIX)
    mics = [Micrograph(str(tmp_path / n), str(tmp_path / n)) for n in ("flat.mrc", "ok.mrc")]
    with caplog.at_level(logging.WARNING):
        result = pick_micrographs(mics, two_templates, PickParams(**PARAMS), tmp_path / "out", get_backend("cpu"))
    assert "flat micrograph" in caplog.text
    assert (result.picks["rlnMicrographName"] == mics[0].name).sum() == 0
    assert (result.picks["rlnMicrographName"] == mics[1].name).sum() == 4
    assert len(read_table(tmp_path / "out" / "coords" / "flat.star")) == 0


def test_noise_only_micrograph_gives_few_picks(synth, rng, two_templates):
    image = rng.normal(size=(400, 400)).astype(np.float32)
    picks = Picker(two_templates, synth.ANGPIX, PickParams(**PARAMS), get_backend("cpu")).pick(image)
    assert len(picks) <= 2


@pytest.mark.filterwarnings("ignore:Data array contains NaN")
def test_bad_input_is_a_clear_error(tmp_path, synth, rng, two_templates, capsys):
    bk = get_backend("cpu")
    picker = Picker(two_templates, synth.ANGPIX, PickParams(**PARAMS), bk)
    with pytest.raises(InputError, match="smaller than the 48 px box"):
        picker.pick(rng.normal(size=(40, 300)).astype(np.float32))
    write_mrc(tmp_path / "big.mrcs", np.zeros((2, 64, 64), np.float32), synth.ANGPIX)
    write_mrc(tmp_path / "small.mrcs", np.zeros((2, 48, 48), np.float32), synth.ANGPIX)
    with pytest.raises(InputError, match="templates of different sizes"):
        load_templates([tmp_path / "small.mrcs", tmp_path / "big.mrcs"])
    with pytest.raises(InputError, match="masks"):
        load_templates(tmp_path / "small.mrcs", masks_path=tmp_path / "big.mrcs")
    nan = rng.normal(size=(200, 200)).astype(np.float32)
    nan[5, 5] = np.nan
    write_mrc(tmp_path / "nan.mrc", nan, synth.ANGPIX)
    write_mrc(tmp_path / "nopix.mrc", rng.normal(size=(200, 200)).astype(np.float32), 0.0)
    common = ["--templates", str(tmp_path / "small.mrcs"), "--diameter", "80", "--device", "cpu"]
    assert cli_main(["pick", "--micrographs", str(tmp_path / "nan.mrc"), *common, "--out", str(tmp_path / "a")]) == 2
    assert "NaN" in capsys.readouterr().err
    assert cli_main(["pick", "--micrographs", str(tmp_path / "nopix.mrc"), *common, "--out", str(tmp_path / "b")]) == 2
    assert "pixel size unknown" in capsys.readouterr().err
    assert not (tmp_path / "a" / "picks.star").exists()


def test_micrographs_from_star_keep_names_and_pixel_size(tmp_path, rng, monkeypatch):
    """STAR names are kept as written (to match a CTF STAR), resolved against the STAR's folder, with the
    optics pixel size; duplicate micrograph names are an error."""
    (tmp_path / "proj").mkdir()
    write_mrc(tmp_path / "proj" / "a.mrc", rng.normal(size=(64, 64)).astype(np.float32), 0.0)
    write_star(tmp_path / "proj" / "mics.star", {
        "optics": pd.DataFrame({"rlnOpticsGroup": [1], "rlnMicrographPixelSize": [1.7]}),
        "micrographs": pd.DataFrame({"rlnMicrographName": ["a.mrc"], "rlnOpticsGroup": [1]}),
    })
    monkeypatch.chdir(tmp_path)
    mics = list_micrographs(["proj/mics.star"])
    assert [(m.name, m.path, m.angpix) for m in mics] == [("a.mrc", "proj/a.mrc", 1.7)]
    assert micrograph_angpix(mics, None) == 1.7
    with pytest.raises(InputError, match="pixel size unknown"):
        micrograph_angpix(list_micrographs(["proj/a.mrc"]), None)
    with pytest.raises(InputError, match="unique"):
        list_micrographs(["proj/a.mrc", "proj/mics.star"])
