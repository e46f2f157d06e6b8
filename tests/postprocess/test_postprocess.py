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
    # a fitted B-factor: the fit's slope and intercept are written (as relion_postprocess --auto_bfac does)
    assert res["sharpened"] and res["not_sharpened"] is None and int(general["cpSharpened"].iloc[0]) == 1
    assert 4 * float(general["rlnFittedSlopeGuinierPlot"].iloc[0]) == pytest.approx(res["bfactor"])
    assert np.isfinite(float(general["rlnFittedInterceptGuinierPlot"].iloc[0]))
    _assert_finite_star(tmp_path / "postprocess.star")
    for name in ("map_sharpened.mrc", "mask.mrc", "postprocess_fsc_guinier.png", "postprocess_slices.png"):
        assert (tmp_path / name).exists()


def _assert_finite_star(path):
    """No NaN or Inf anywhere in a STAR file: not as a value, not in any numeric column."""
    assert not {"nan", "inf", "-inf"} & set(Path(path).read_text().lower().split()), path
    for name, block in read_star(path).items():
        numbers = block.select_dtypes("number").to_numpy(float)
        assert np.isfinite(numbers).all(), (path, name)


def test_no_bfactor_without_a_guinier_region(halves, tmp_path, caplog):
    """A map whose resolution is worse than --fit-low gets no fitted sharpening (B = 0), and says so: cpSharpened 0 in
    the STAR, a "not sharpened: ..." log line and the run's notes; no Guinier fit is written (the intercept used to
    be written as nan). The STAR names the mask in the folder given as final."""
    truth, (h1, h2) = halves
    with caplog.at_level("WARNING", logger="cryopipe.postprocess.stage"):
        res = postprocess(h1, h2, tmp_path, PostprocessParams(fit_low_A=2.0), final_out=Path("results/postprocess"))
    assert res["resolution_A"] > 2.0 and res["bfactor"] == 0.0
    assert not res["sharpened"] and "is worse than --fit-low 2 A" in res["not_sharpened"]
    assert f"not sharpened: final resolution {res['resolution_A']:.1f} A is worse than --fit-low 2 A" in caplog.text
    general = read_star(tmp_path / "postprocess.star")["general"]
    assert float(general["rlnBfactorUsedForSharpening"].iloc[0]) == 0.0
    assert int(general["cpSharpened"].iloc[0]) == 0
    assert "rlnFittedInterceptGuinierPlot" not in general and "rlnFittedSlopeGuinierPlot" not in general
    assert general["rlnMaskName"].iloc[0] == "results/postprocess/mask.mrc"
    _assert_finite_star(tmp_path / "postprocess.star")


@pytest.mark.parametrize("bfactor, sharpened", [(-150.0, True), (0.0, False)])
def test_given_bfactor_is_flagged_and_writes_no_fit(halves, tmp_path, bfactor, sharpened):
    """A B-factor given with --bfactor: applied, no Guinier fit in the STAR (it used to be an intercept of nan), and a
    B >= 0 is flagged as not sharpened in the STAR and the stage's notes."""
    from cryopipe.postprocess import PostprocessInputs
    from cryopipe.postprocess.stage import run
    from cryopipe.stage import StageContext

    _, (h1, h2) = halves
    result = run(PostprocessParams(bfactor=bfactor), PostprocessInputs(h1, h2), tmp_path, StageContext.local(None))
    assert result.notes["bfactor"] == bfactor and result.notes["sharpened"] is sharpened
    assert ("not_sharpened" in result.notes) is not sharpened
    general = read_star(tmp_path / "postprocess.star")["general"]
    assert int(general["cpSharpened"].iloc[0]) == int(sharpened)
    assert "rlnFittedInterceptGuinierPlot" not in general
    _assert_finite_star(tmp_path / "postprocess.star")


def test_cli_and_bad_input(halves, tmp_path, capsys):
    _, (h1, h2) = halves
    assert cli.main(["postprocess", "--half1", str(h1), "--half2", str(h2), "--out", str(tmp_path / "ok")]) == 0
    assert (tmp_path / "ok" / "provenance.json").exists()
    small = tmp_path / "small.mrc"
    write_mrc(small, np.zeros((32, 32, 32), np.float32), ANGPIX)
    assert cli.main(["postprocess", "--half1", str(h1), "--half2", str(small), "--out", str(tmp_path / "bad")]) == 2
    assert "differ in shape" in capsys.readouterr().err
