import numpy as np
import pytest

from cryopipe.ctf import CTFParams, ctf_2d
from cryopipe.io.mrc import read_mrc
from cryopipe.io.star import read_table
from cryopipe.simulate.complex import build_models, electrons_of
from cryopipe.simulate.micrographs import SimulateParams, simulate_dataset, simulate_micrograph


def test_models_are_distinct_and_centred():
    models = build_models(7)
    a, b, d = models["conformation_1"], models["conformation_2"], models["decoy"]
    assert len(a) == len(b) > len(d) > 0
    moved = np.linalg.norm(a.xyz - b.xyz, axis=1) > 1.0
    assert 0.1 < moved.mean() < 0.3  # only the arm moves
    assert np.abs(a.xyz.mean(0)).max() < 3.0


def _micrograph(snr, seed=3, gradient=False, n=30):
    p = SimulateParams(seed=seed, size_px=512, particles_per_micrograph=n, snr=snr, angpix=2.5)
    ctf = CTFParams(defocus_u=15000.0, defocus_v=14800.0, defocus_angle=30.0, voltage=300.0, cs=2.7,
                    amplitude_contrast=0.1, bfactor=40.0)
    return p, ctf, simulate_micrograph(p, np.random.default_rng(seed), build_models(seed), ctf, gradient)


def test_noise_level_realises_the_stated_snr():
    p, _, (image, truth, noise_sd) = _micrograph(snr=1.0)
    r = 0.5 * p.diameter_A / p.angpix
    yy, xx = np.mgrid[0 : p.size_px, 0 : p.size_px]
    d = np.min([np.hypot(xx - x, yy - y) for x, y in truth[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy()], axis=0)
    inside = np.mean([image[np.hypot(xx - x, yy - y) <= r].var()
                      for x, y in truth[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy()])
    far = image[(d > 2.5 * r) & (xx > 10) & (yy > 10) & (xx < p.size_px - 10) & (yy < p.size_px - 10)]
    assert far.var() / noise_sd**2 == pytest.approx(1.0, abs=0.08)
    assert inside / noise_sd**2 == pytest.approx(2.0, abs=0.15)  # signal var = snr * noise var


def test_particles_are_rendered_whole():
    """No particle's density is cut off: the micrograph's sum is the CTF's zero-frequency value times the particles'
    summed electrons (a render window of half the particle's width once lost ~5% of the mass, up to 14%)."""
    p, ctf, (image, truth, noise_sd) = _micrograph(snr=1e12, n=6)
    models = build_models(3)
    mass = sum(electrons_of(models[f"conformation_{c}"]).sum() for c in truth["rlnClassNumber"])
    ctf0 = float(np.asarray(ctf_2d(ctf, p.size_px, p.angpix, half=True)).reshape(p.size_px, -1)[0, 0])
    assert len(truth) == 6 and noise_sd * p.size_px < 1e-6 * abs(ctf0) * mass
    assert image.sum() == pytest.approx(-ctf0 * mass, rel=1e-4)


def test_particles_are_dark_non_overlapping_and_inside():
    p, _, (image, truth, _) = _micrograph(snr=10.0)
    xy = truth[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy()
    d = np.hypot(*(xy[:, None, :] - xy[None, :, :]).transpose(2, 0, 1))
    assert d[np.triu_indices(len(xy), 1)].min() >= p.diameter_A / p.angpix
    assert xy.min() >= p.map_box // 2 and xy.max() <= p.size_px - 1 - p.map_box // 2
    from scipy.ndimage import gaussian_filter

    smooth = gaussian_filter(image, 4)
    at_particles = smooth[np.round(xy[:, 1]).astype(int), np.round(xy[:, 0]).astype(int)]
    assert np.median(at_particles) < np.median(smooth) - 0.5 * smooth.std()


def test_thon_rings_follow_the_true_defocus():
    """A CTFFIND-like scan over defocus finds the defocus the truth says."""
    p, ctf, (image, _, _) = _micrograph(snr=1e4, n=40)
    power = np.abs(np.fft.rfft2(image - image.mean())) ** 2
    s = np.hypot(*np.meshgrid(np.fft.rfftfreq(p.size_px), np.fft.fftfreq(p.size_px)))
    band = (s > 0.04) & (s < 0.3)
    shells = np.round(s * p.size_px).astype(int)
    background = np.bincount(shells.ravel(), power.ravel()) / np.bincount(shells.ravel())
    flat = (power / background[shells])[band]
    scan = np.arange(10000.0, 22001.0, 250.0)
    cc = []
    for d in scan:
        trial = CTFParams(defocus_u=d + 100, defocus_v=d - 100, defocus_angle=30.0, voltage=300.0, cs=2.7,
                          amplitude_contrast=0.1, bfactor=40.0)
        cc.append(np.corrcoef(flat, (np.asarray(ctf_2d(trial, p.size_px, p.angpix))[0] ** 2)[band])[0, 1])
    assert abs(scan[int(np.argmax(cc))] - 14900.0) <= 250.0


def test_dataset_layout_truth_and_determinism(tmp_path):
    params = SimulateParams(snr=0.1, seed=5, micrographs=3, size_px=256, particles_per_micrograph=5,
                            ice_gradient_every=2)
    simulate_dataset(params, tmp_path / "a")
    simulate_dataset(params, tmp_path / "b")
    for rel in ["micrographs/mic_002.mrc", "maps/conformation_2.mrc"]:  # headers hold a time stamp
        np.testing.assert_array_equal(read_mrc(tmp_path / "a" / rel)[0], read_mrc(tmp_path / "b" / rel)[0])
    assert (tmp_path / "a/models/decoy.pdb").read_text() == (tmp_path / "b/models/decoy.pdb").read_text()
    ctf = read_table(tmp_path / "a/micrographs_ctf.star", "micrographs",
                     required=["rlnMicrographName", "rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnVoltage",
                               "rlnSphericalAberration", "rlnAmplitudeContrast", "rlnMicrographPixelSize"])
    assert len(ctf) == 3 and (ctf["rlnDefocusU"] >= ctf["rlnDefocusV"]).all()
    truth = read_table(tmp_path / "a/truth/particles.star", "particles",
                       required=["rlnCoordinateX", "rlnAngleTilt", "rlnClassNumber", "rlnDefocusU"])
    assert set(truth["rlnClassNumber"]) <= {1, 2} and len(truth) == 15
    image, angpix = read_mrc(tmp_path / "a/micrographs/mic_001.mrc")
    assert image.shape == (256, 256) and angpix == pytest.approx(2.5)
    vol, _ = read_mrc(tmp_path / "a/maps/conformation_1.mrc")
    assert vol.shape == (64, 64, 64)
