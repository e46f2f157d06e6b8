"""``cryopipe postprocess`` on synthetic half-maps of the demo complex (64 px, 2.5 A/px).

Half-maps = the true map blurred by B = 200 A^2 + independent noise whose power grows with frequency, so their
FSC falls through 0.143 inside the box; the truth is known, so the corrected FSC and the B-factor are checked
against it (a stand-in for refine3d's half-maps, which this test does not need).
"""

from pathlib import Path

import numpy as np
import pytest

from cryopipe import cli
from cryopipe.em3d.synthetic import coarse_grain
from cryopipe.fourier import fsc, resolution_at
from cryopipe.io.mrc import read_mrc, write_mrc
from cryopipe.io.star import read_star
from cryopipe.postprocess import PostprocessParams, postprocess
from cryopipe.postprocess.stage import fit_bfactor, guinier
from cryopipe.simulate.complex import build_models, electrons_of
from cryopipe.simulate.render import render_volume

BOX, ANGPIX, B_TRUE = 64, 2.5, 200.0


def _blur(vol, bfactor):
    k = np.fft.fftfreq(BOX, ANGPIX)
    s2 = k[:, None, None] ** 2 + k[None, :, None] ** 2 + np.fft.rfftfreq(BOX, ANGPIX)[None, None, :] ** 2
    return np.fft.irfftn(np.fft.rfftn(vol) * np.exp(-bfactor * s2 / 4), s=vol.shape, axes=(0, 1, 2)), s2


@pytest.fixture(scope="module")
def halves(tmp_path_factory):
    model = build_models()["conformation_1"]
    truth = render_volume(*coarse_grain(model.xyz, electrons_of(model), 1.0), 1.0, BOX, ANGPIX).astype(np.float64)
    blurred, s2 = _blur(truth, B_TRUE)
    rng = np.random.default_rng(0)
    folder = tmp_path_factory.mktemp("pp")
    paths = []
    for h in (1, 2):
        noise = np.fft.rfftn(rng.standard_normal(truth.shape)) * np.sqrt(s2) * 10 * blurred.std()
        write_mrc(folder / f"half{h}.mrc", blurred + np.fft.irfftn(noise, s=truth.shape, axes=(0, 1, 2)), ANGPIX)
        paths.append(folder / f"half{h}.mrc")
    return truth, paths


def test_corrected_fsc_and_bfactor(halves, tmp_path):
    truth, (h1, h2) = halves
    res = postprocess(h1, h2, tmp_path, PostprocessParams())
    curves = res["fsc"]
    # the mask-corrected FSC(0.143) resolution matches the masked average's FSC(0.5) with the (blurred) truth
    average = 0.5 * (read_mrc(h1)[0] + read_mrc(h2)[0])
    mask = res["mask"]
    truth_res = resolution_at(fsc(average * mask, _blur(truth, B_TRUE)[0] * mask), BOX, ANGPIX, 0.5)
    assert res["resolution_A"] == pytest.approx(truth_res, rel=0.2)
    # masking raises the FSC, the phase-randomised FSC is ~0 far beyond the randomisation shell
    assert (curves["rlnFourierShellCorrelationMaskedMaps"] >= curves["rlnFourierShellCorrelationUnmaskedMaps"] - 0.05
            ).all()
    assert np.abs(curves["rlnCorrectedFourierShellCorrelationPhaseRandomizedMaskedMaps"].to_numpy()[-8:]).max() < 0.1
    # the fitted B is the blur plus the map's own fall-off (atom size, voxel integration), fitted the same way
    b_own, _ = fit_bfactor(*guinier(truth * mask, ANGPIX), max(10.0, 1.5 * res["resolution_A"]), res["resolution_A"])
    assert res["bfactor"] - b_own == pytest.approx(-B_TRUE, rel=0.3)
    assert mask.min() >= 0 and mask.max() == 1 and 0.02 < mask.mean() < 0.6
    general = read_star(tmp_path / "postprocess.star")["general"]
    assert float(general["rlnFinalResolution"].iloc[0]) == pytest.approx(res["resolution_A"])
    for name in ("map_sharpened.mrc", "mask.mrc", "postprocess_fsc_guinier.png", "postprocess_slices.png"):
        assert (tmp_path / name).exists()


def test_no_bfactor_without_a_guinier_region(halves, tmp_path):
    """A map whose resolution is worse than --fit-low gets no fitted sharpening (B = 0), and the STAR names the
    mask in the folder given as final."""
    truth, (h1, h2) = halves
    res = postprocess(h1, h2, tmp_path, PostprocessParams(fit_low_A=2.0), final_out=Path("results/postprocess"))
    assert res["resolution_A"] > 2.0 and res["bfactor"] == 0.0
    general = read_star(tmp_path / "postprocess.star")["general"]
    assert float(general["rlnBfactorUsedForSharpening"].iloc[0]) == 0.0
    assert general["rlnMaskName"].iloc[0] == "results/postprocess/mask.mrc"


def test_cli_and_bad_input(halves, tmp_path, capsys):
    _, (h1, h2) = halves
    assert cli.main(["postprocess", "--half1", str(h1), "--half2", str(h2), "--out", str(tmp_path / "ok")]) == 0
    assert (tmp_path / "ok" / "provenance.json").exists()
    small = tmp_path / "small.mrc"
    write_mrc(small, np.zeros((32, 32, 32), np.float32), ANGPIX)
    assert cli.main(["postprocess", "--half1", str(h1), "--half2", str(small), "--out", str(tmp_path / "bad")]) == 2
    assert "differ in shape" in capsys.readouterr().err
