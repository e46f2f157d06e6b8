"""Exact class sums (order- and split-independent), plain and Wiener averages, re-centring, FRC resolution."""

import numpy as np

from cryopipe.class2d.averages import ClassSums, class_averages, frc_resolution, shift_images
from cryopipe.ctf import CTFParams, ctf_2d
from cryopipe.fourier import lowpass
from cryopipe.geometry import centre_of_mass


def _sums(cpu, images, classes, halves, low, scores, batches):
    sums = ClassSums(3, images.shape[-1], cpu)
    for sl in batches:
        sums.add(images[sl], classes[sl], halves[sl], low[sl], scores[sl])
    return sums


def test_sums_are_exact_whatever_the_order_and_batches(cpu, rng):
    n = 200
    images = rng.normal(size=(n, 8, 8)).astype(np.float32) * 3
    classes, halves, low = rng.integers(0, 3, n), np.arange(n) % 2, rng.random(n) < 0.3
    scores = rng.random(n).astype(np.float32)
    a = _sums(cpu, images, classes, halves, low, scores, [slice(0, n)])
    perm = rng.permutation(n)
    b = _sums(cpu, images[perm], classes[perm], halves[perm], low[perm], scores[perm],
              [slice(0, 7), slice(7, 120), slice(120, n)])
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.score, b.score)
    np.testing.assert_array_equal(a.sizes(), np.bincount(classes, minlength=3))
    mean, halves_avg, split = class_averages(a)
    for k in range(3):
        members = images[classes == k].astype(np.float64)
        np.testing.assert_allclose(mean[k], members.mean(0), atol=1e-8)
        np.testing.assert_allclose(halves_avg[k, 1], images[(classes == k) & (halves == 1)].mean(0), atol=1e-6)
        np.testing.assert_allclose(split[k, 1], images[(classes == k) & low].mean(0), atol=1e-6)
        np.testing.assert_allclose(a.mean_scores()[k], scores[classes == k].mean(), atol=1e-7)


def test_empty_class_gives_zero_average_and_nan_score(cpu, rng):
    sums = ClassSums(2, 4, cpu)
    sums.add(np.ones((3, 4, 4), np.float32), np.zeros(3, int), np.arange(3) % 2, np.zeros(3, bool), np.ones(3))
    mean, _, _ = class_averages(sums)
    assert mean[1].max() == 0 and np.isnan(sums.mean_scores()[1]) and sums.sizes().tolist() == [3, 0]


def test_wiener_average_restores_the_signal(cpu, rng):
    """Particles CTF_i * S with varied defocus: sum CTF x / (sum CTF^2 + 1/snr) gives S back (large snr)."""
    n, angpix, count = 32, 2.5, 40
    signal = lowpass(rng.normal(size=(n, n)), angpix, 8.0)
    du = rng.uniform(8000, 30000, count)
    ctf = ctf_2d(CTFParams(du, du, 0.0, 300.0, 2.7, 0.1), n, angpix, dtype=np.float64)
    raw = np.fft.irfft2(np.fft.rfft2(signal) * ctf, s=(n, n))
    numerator = np.fft.irfft2(np.fft.rfft2(raw) * ctf, s=(n, n))  # CTF x the raw particle
    full = ctf_2d(CTFParams(du, du, 0.0, 300.0, 2.7, 0.1), n, angpix, half=False, dtype=np.float64) ** 2
    sums = ClassSums(1, n, cpu, with_ctf=True)
    sums.add(numerator, np.zeros(count, int), np.arange(count) % 2, np.zeros(count, bool), np.ones(count),
             ctf2=np.fft.fftshift(full, axes=(-2, -1)))
    mean, halves, _ = class_averages(sums, wiener_snr=1e6)
    signal_lp = lowpass(signal, angpix, 3 * angpix)  # away from the lowest, CTF-poor frequencies' edge
    assert np.corrcoef(lowpass(mean[0], angpix, 3 * angpix).ravel(), signal_lp.ravel())[0, 1] > 0.999
    assert np.corrcoef(halves[0, 0].ravel(), signal.ravel())[0, 1] > 0.99


def test_recentring_moves_the_centre_of_mass_to_the_origin():
    n = 48
    y, x = np.mgrid[:n, :n] - n // 2
    blob = np.exp(-((x - 3.4) ** 2 + (y + 2.2) ** 2) / 18.0)[None] - 0.1  # negative halo is ignored
    mask = (np.hypot(x, y) < 20).astype(float)
    c = centre_of_mass(blob, mask, 2)
    np.testing.assert_allclose(c, [[3.4, -2.2]], atol=0.05)
    np.testing.assert_allclose(centre_of_mass(shift_images(blob, -c), mask, 2), 0.0, atol=0.05)
    np.testing.assert_array_equal(centre_of_mass(np.zeros((1, n, n)), mask, 2), 0.0)


def test_frc_resolution(rng):
    n, angpix = 32, 2.0
    mask = np.ones((n, n))
    signal = lowpass(rng.normal(size=(n, n)), angpix, 8.0)
    same = np.stack([signal, signal])[None]
    noisy = np.stack([signal + 0.05 * rng.normal(size=(n, n)), signal + 0.05 * rng.normal(size=(n, n))])[None]
    assert frc_resolution(same, mask, angpix)[0] == 2 * angpix
    assert 5.0 < frc_resolution(noisy, mask, angpix)[0] < 10.0  # signal fades out around 8 A
    assert frc_resolution(np.zeros((1, 2, n, n)), mask, angpix)[0] == np.inf
