"""The simulator's optional Thon-ring background (CTF-modulated amorphous ice) and phase shift: off by default, so
the demo's micrographs are bit-identical to those before the option existed; on, the ice has the stated per-pixel
SNR, follows the micrograph's true CTF, and leaves every other random draw as it was."""

import hashlib

import numpy as np
import pytest

from cryopipe.ctf import CTFParams, ctf_2d
from cryopipe.errors import InputError
from cryopipe.io.mrc import read_mrc
from cryopipe.io.star import read_star
from cryopipe.simulate.complex import build_models
from cryopipe.simulate.micrographs import SimulateParams, simulate_dataset, simulate_micrograph

# sha256 of mic_001 + mic_002 (float32 bytes) of the dataset below, computed before the ice option was added
DEMO_SHA256 = "b48aed3d6c840070f8976d7e7e79726ce80aab42e892f6fc54a37e12210cec01"


def test_demo_defaults_are_unchanged(tmp_path):
    params = SimulateParams(snr=0.1, seed=11, micrographs=2, size_px=256, particles_per_micrograph=4,
                            ice_gradient_every=2)
    assert params.ice_snr == 0.0 and params.phase_shift == 0.0
    simulate_dataset(params, tmp_path)
    digest = hashlib.sha256()
    for k in (1, 2):
        digest.update(read_mrc(tmp_path / "micrographs" / f"mic_{k:03d}.mrc")[0].tobytes())
    assert digest.hexdigest() == DEMO_SHA256
    for star in ("micrographs_ctf.star", "truth/micrographs.star"):
        columns = read_star(tmp_path / star)["micrographs"].columns
        assert "rlnPhaseShift" not in columns and "cpIceSnr" not in columns


def _pair(ice_snr, phase=0.0):
    p = SimulateParams(snr=0.1, seed=3, size_px=512, angpix=2.0, particles_per_micrograph=6, diameter_A=100.0,
                       ice_snr=ice_snr, phase_shift=phase)
    ctf = CTFParams(16000.0, 13000.0, 35.0, 300.0, 2.7, 0.1, bfactor=40.0, phase_shift=phase)
    return ctf, simulate_micrograph(p, np.random.default_rng(3), build_models(3), ctf, True, index=2)


def test_ice_has_the_stated_snr_follows_the_ctf_and_changes_nothing_else():
    ctf, (off, truth_off, sd_off) = _pair(0.0)
    _, (on, truth_on, sd_on) = _pair(0.5)
    assert sd_on == sd_off and truth_on.equals(truth_off)
    ice = on.astype(np.float64) - off.astype(np.float64)
    assert ice.var() == pytest.approx(0.5 * sd_off**2, rel=1e-3)
    power = np.abs(np.fft.rfft2(ice)) ** 2
    ctf2 = np.asarray(ctf_2d(ctf, 512, 2.0))[0] ** 2
    s = np.hypot(np.fft.fftfreq(512, 2.0)[:, None], np.fft.rfftfreq(512, 2.0)[None, :])
    band = (s > 1 / 30) & (s < 1 / 8)
    # Thon rings where the true (astigmatic) CTF has them, not where it would with the U and V axes swapped
    swapped = CTFParams(16000.0, 13000.0, 125.0, 300.0, 2.7, 0.1, bfactor=40.0)
    wrong = np.asarray(ctf_2d(swapped, 512, 2.0))[0] ** 2
    right = np.corrcoef(power[band], ctf2[band])[0, 1]
    assert right > 0.4 and right > 2 * np.corrcoef(power[band], wrong[band])[0, 1]


def test_phase_shift_is_recorded_in_the_truth(tmp_path):
    simulate_dataset(SimulateParams(snr=0.1, seed=2, micrographs=1, size_px=256, particles_per_micrograph=2,
                                    phase_shift=90.0,
                                    ice_snr=0.2), tmp_path)
    for star, block in (("micrographs_ctf.star", "micrographs"), ("truth/micrographs.star", "micrographs"),
                        ("truth/particles.star", "particles")):
        assert (read_star(tmp_path / star)[block]["rlnPhaseShift"] == 90.0).all()
    assert (read_star(tmp_path / "truth/micrographs.star")["micrographs"]["cpIceSnr"] == 0.2).all()


def test_bad_ice_snr():
    with pytest.raises(InputError, match="--ice-snr"):
        SimulateParams(ice_snr=-1.0).validate()
