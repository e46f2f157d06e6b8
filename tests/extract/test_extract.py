"""Particle extraction: centring, RELION normalisation, inversion, downscaling, STAR metadata, gathering."""

import logging
import re

import numpy as np
import pytest

from cryopipe.backend import get_backend
from cryopipe.cli import main as cli_main
from cryopipe.errors import InputError
from cryopipe.extract import ExtractParams, gather_particles
from cryopipe.extract.stage import ExtractInputs, extract_windows, process_particles, run
from cryopipe.fourier import fourier_crop
from cryopipe.io.mrc import read_mrc
from cryopipe.io.star import parse_image_name, read_star, read_table, write_star
from cryopipe.simulate.micrographs import SimulateParams, simulate_dataset
from cryopipe.stage import StageContext


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    """Two simulated 512^2 micrographs (2.5 A/px, 10 particles each) with CTF STAR and truth."""
    out = tmp_path_factory.mktemp("sim")
    simulate_dataset(SimulateParams(snr=0.1, seed=5, micrographs=2, size_px=512, particles_per_micrograph=10), out)
    return out


def test_windows_are_centred_and_edge_particles_skipped():
    image = np.zeros((100, 120), np.float32)
    image[40, 70] = 1.0  # row y = 40, column x = 70
    stack, inside = extract_windows(image, [70.4, 69.6, 5.0], [39.6, 40.3, 50.0], 32)
    assert inside.tolist() == [True, True, False]
    for box in stack:
        assert np.unravel_index(box.argmax(), box.shape) == (16, 16)


def test_normalise_invert_and_downscale(rng):
    bk = get_backend("cpu")
    boxes = (rng.normal(3.0, 2.0, (5, 64, 64))).astype(np.float32)
    p = ExtractParams(box_px=64, bin_factor=2, invert=False)
    out = process_particles(boxes, p, bk)
    assert out.shape == (5, 32, 32) and p.bg_radius == 12.0
    yy, xx = np.mgrid[:32, :32] - 16
    bg = out[:, np.hypot(yy, xx) > p.bg_radius]
    np.testing.assert_allclose(bg.mean(1), 0, atol=1e-5)
    np.testing.assert_allclose(bg.std(1), 1, atol=1e-5)
    crop = fourier_crop(boxes, 32)
    np.testing.assert_allclose(np.corrcoef(out[0].ravel(), crop[0].ravel())[0, 1], 1, atol=1e-6)
    inverted = process_particles(boxes, ExtractParams(box_px=64, out_box_px=32, invert=True), bk)
    np.testing.assert_allclose(inverted, -out, atol=1e-6)
    with pytest.raises(InputError):
        ExtractParams(box_px=63).validate()
    with pytest.raises(InputError):
        ExtractParams(box_px=64, out_box_px=80).validate()


def test_device_processing_equals_cpu(rng, bk):
    boxes = rng.normal(size=(7, 64, 64)).astype(np.float32)
    p = ExtractParams(box_px=64, out_box_px=48, invert=True)
    np.testing.assert_allclose(process_particles(boxes, p, bk), process_particles(boxes, p, get_backend("cpu")),
                               atol=1e-4)


def test_extract_cli_writes_stacks_and_relion_star(sim, tmp_path):
    out = tmp_path / "ex"
    rc = cli_main(["extract", "--picks", str(sim / "truth" / "particles.star"), "--ctf",
                   str(sim / "micrographs_ctf.star"), "--box", "64", "--bin", "2", "--invert", "--out", str(out),
                   "--device", "cpu"])
    assert rc == 0
    blocks = read_star(out / "particles.star")
    optics = blocks["optics"].iloc[0]
    assert (optics["rlnImagePixelSize"], optics["rlnImageSize"], optics["rlnImageDimensionality"]) == (5.0, 32, 2)
    assert (optics["rlnVoltage"], optics["rlnSphericalAberration"], optics["rlnAmplitudeContrast"]) == (300, 2.7, 0.1)
    assert "rlnVoltage" not in blocks["particles"] and "rlnDefocusU" in blocks["particles"]
    parts = read_table(out / "particles.star")
    truth = read_table(sim / "truth" / "particles.star")
    ctf = read_table(sim / "micrographs_ctf.star", "micrographs")
    assert len(parts) == len(truth)  # the simulator keeps particles 34 px from the edge: all 64 px boxes fit
    merged = parts.merge(ctf[["rlnMicrographName", "rlnDefocusU", "rlnDefocusAngle"]], on="rlnMicrographName")
    assert (merged["rlnDefocusU_x"] == merged["rlnDefocusU_y"]).all()
    np.testing.assert_allclose(parts["rlnCoordinateX"], truth["rlnCoordinateX"])
    idx, stacks = parse_image_name(parts["rlnImageName"], out / "particles.star")
    assert idx[:3].tolist() == [0, 1, 2] and stacks[0] == str(out / "Particles" / "mic_001.mrcs")
    images, apix = read_mrc(stacks[0], indices=idx[np.array(stacks) == stacks[0]])
    assert images.shape == (10, 32, 32) and apix == pytest.approx(5.0)
    centre = images[:, 12:20, 12:20].mean()
    assert centre > 0.3  # inverted: white protein on a normalised background


def test_micrograph_missing_from_ctf_star_is_an_error(sim, tmp_path, capsys):
    blocks = read_star(sim / "micrographs_ctf.star")
    write_star(tmp_path / "ctf.star", {"optics": blocks["optics"], "micrographs": blocks["micrographs"].iloc[:1]})
    rc = cli_main(["extract", "--picks", str(sim / "truth" / "particles.star"), "--ctf", str(tmp_path / "ctf.star"),
                   "--box", "64", "--out", str(tmp_path / "ex"), "--device", "cpu"])
    assert rc == 2
    assert "mic_002.mrc is not in the CTF STAR file" in capsys.readouterr().err
    assert not (tmp_path / "ex" / "particles.star").exists()


def test_batches_then_gather(sim, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    common = ["--picks", str(sim / "truth" / "particles.star"), "--ctf", str(sim / "micrographs_ctf.star"),
              "--box", "48", "--device", "cpu"]
    for i in (1, 2):
        assert cli_main(["extract", *common, "--micrographs", str(sim / "micrographs" / f"mic_00{i}.mrc"),
                         "--out", f"batch{i}"]) == 0
    assert cli_main(["extract", "--gather", "batch1/particles.star", "batch2/particles.star", "--out", "all"]) == 0
    blocks = read_star("all/particles.star")
    assert len(blocks["optics"]) == 1 and len(blocks["particles"]) == 20
    idx, stacks = parse_image_name(blocks["particles"]["rlnImageName"], "all/particles.star")
    assert sorted(set(stacks)) == ["batch1/Particles/mic_001.mrcs", "batch2/Particles/mic_002.mrcs"]
    assert read_mrc(stacks[-1], indices=[idx[-1]])[0].shape == (1, 48, 48)
    other = read_star("batch2/particles.star")
    write_star("bad.star", {"optics": other["optics"].assign(rlnVoltage=200.0), "particles": other["particles"]})
    with pytest.raises(InputError, match="optics group 1 differs"):
        gather_particles(["batch1/particles.star", "bad.star"], tmp_path / "x.star")


def test_the_log_counts_micrographs_and_particles_and_ends_with_a_summary(sim, tmp_path, caplog):
    """The first micrograph's line gives an early estimate (then one line per PERIOD_S seconds at most); a summary
    line closes the run."""
    caplog.set_level(logging.INFO, logger="cryopipe.extract")
    (tmp_path / "ex").mkdir()
    run(ExtractParams(box_px=64), ExtractInputs(sim / "truth" / "particles.star", sim / "micrographs_ctf.star"),
        tmp_path / "ex", StageContext.local())
    lines = [r.getMessage() for r in caplog.records if r.name == "cryopipe.extract.stage"]
    assert re.fullmatch(r"micrograph 1/2: 10 particles so far, [^,]+ s elapsed, about [^,]+ s left", lines[0])
    assert re.fullmatch(r"extracted 20 particles from 2 of 2 micrographs in [^,]+ s \(0 picks too close to an edge, "
                        r"0 micrographs dropped for their CTF\)", lines[-1])
