"""Numerics of cryopipe.fourier against analytic and float64 NumPy references."""

import numpy as np
import pytest

from cryopipe import fourier as fr
from cryopipe.errors import InputError


def _band_limited(rng, n, kmax, batch=(), ndim=2):
    """Real random images whose spectrum is zero for |k| >= kmax (Fourier pixels)."""
    shape = batch + (n,) * (ndim - 1) + (n // 2 + 1,)
    spec = rng.normal(size=shape) + 1j * rng.normal(size=shape)
    spec *= fr.radial_shell_index(n, ndim=ndim) < kmax
    return np.fft.irfftn(spec, s=(n,) * ndim, axes=tuple(range(-ndim, 0)))


def _gaussian(n, sigma, centre):
    y, x = np.mgrid[:n, :n]
    return np.exp(-((x - centre[0]) ** 2 + (y - centre[1]) ** 2) / (2 * sigma**2))


def _centroid(img):
    y, x = np.mgrid[: img.shape[-2], : img.shape[-1]]
    return np.array([(img * x).sum(), (img * y).sum()]) / img.sum()


# ----------------------------------------------------------------------------- grids


def test_frequency_grids_match_numpy(bk):
    n, angpix = 16, 1.5
    s = bk.asnumpy(fr.radial_frequency(n, angpix, bk=bk))
    ky, kx = np.meshgrid(np.fft.fftfreq(n, angpix), np.fft.rfftfreq(n, angpix), indexing="ij")
    assert s.shape == (n, n // 2 + 1) and s.dtype == np.float32
    np.testing.assert_allclose(s, np.hypot(ky, kx), rtol=1e-6)
    full = bk.asnumpy(fr.radial_frequency(n, angpix, half=False, bk=bk))
    assert full.shape == (n, n)
    np.testing.assert_allclose(full[:, : n // 2 + 1], s, rtol=1e-6)
    s3 = bk.asnumpy(fr.radial_frequency_3d(n, angpix, bk=bk))
    assert s3.shape == (n, n, n // 2 + 1)
    np.testing.assert_allclose(s3[0], s, rtol=1e-6)
    np.testing.assert_allclose(s3[3, 0, 0], 3 / (n * angpix), rtol=1e-6)


def test_radial_shell_index_and_shell_frequencies():
    idx = fr.radial_shell_index(8)
    assert idx.shape == (8, 5) and idx.dtype == np.int64
    assert idx[0, 0] == 0 and idx[0, 4] == 4 and idx[4, 4] == 6 and idx[7, 1] == 1 and idx[2, 1] == 2
    assert fr.radial_shell_index(8, half=False, ndim=3).shape == (8, 8, 8)
    np.testing.assert_allclose(fr.shell_frequencies(8, 2.0), np.arange(5) / 16.0)


def test_parseval_with_hermitian_weights(rng):
    for ndim in (2, 3):
        x = rng.normal(size=(3,) + (12,) * ndim)
        f = np.fft.rfftn(x, axes=tuple(range(-ndim, 0)))
        half_sum = (np.abs(f) ** 2 * fr.hermitian_weights(12)).sum(axis=tuple(range(-ndim, 0)))
        np.testing.assert_allclose(half_sum / 12**ndim, (x**2).sum(axis=tuple(range(-ndim, 0))), rtol=1e-12)


def test_bad_box_is_input_error():
    with pytest.raises(InputError):
        fr.radial_frequency(15)


# ----------------------------------------------------------------------------- resizing


def test_crop_then_pad_band_limited_roundtrip(bk, rng):
    x = _band_limited(rng, 64, kmax=15, batch=(3,))
    small = fr.fourier_crop(bk.asarray(x, dtype=np.float32), 32)
    assert small.shape == (3, 32, 32) and small.dtype == np.float32
    back = bk.asnumpy(fr.fourier_pad(small, 64))
    np.testing.assert_allclose(back, x, atol=1e-5 * np.abs(x).max())


def test_crop_samples_the_band_limited_function(rng):
    x = _band_limited(rng, 64, kmax=15)
    np.testing.assert_allclose(fr.fourier_crop(x, 32), x[::2, ::2], atol=1e-12)  # pixel i -> 2i, origin 32 -> 16
    np.testing.assert_allclose(fr.resize(x, 16), fr.fourier_crop(x, 16))


def test_pad_interpolates_and_crop_undoes_pad_with_nyquist(rng):
    x = rng.normal(size=(2, 10, 10))  # full-band, Nyquist included
    up = fr.fourier_pad(x, 30)
    np.testing.assert_allclose(up[:, ::3, ::3], x, atol=1e-12)
    np.testing.assert_allclose(fr.fourier_crop(up, 10), x, atol=1e-12)
    v = rng.normal(size=(8, 8, 8))
    np.testing.assert_allclose(fr.fourier_crop(fr.resize(v, 16, ndim=3), 8, ndim=3), v, atol=1e-12)
    np.testing.assert_allclose(fr.fourier_pad(v, 16, ndim=3)[::2, ::2, ::2], v, atol=1e-12)


def test_constant_stays_constant(bk):
    for ndim, shape in ((2, (2, 24, 24)), (3, (24, 24, 24))):
        x = bk.asarray(np.full(shape, 3.25, dtype=np.float32))
        for new in (12, 40):
            out = bk.asnumpy(fr.resize(x, new, ndim=ndim))
            assert out.shape == shape[: len(shape) - ndim] + (new,) * ndim
            np.testing.assert_allclose(out, 3.25, rtol=1e-5)


def test_crop_pad_direction_checked():
    x = np.zeros((8, 8))
    with pytest.raises(InputError):
        fr.fourier_crop(x, 16)
    with pytest.raises(InputError):
        fr.fourier_pad(x, 4)
    with pytest.raises(InputError):
        fr.resize(x, 7)


# ----------------------------------------------------------------------------- filters


def test_lowpass_highpass_bandpass_cosines(bk):
    n, angpix = 64, 2.0
    x = np.arange(n)
    low = np.cos(2 * np.pi * 3 * x / n)[None, :] * np.ones((n, 1))  # 3 px = 42.7 A
    mid = np.cos(2 * np.pi * 10 * x / n)[:, None] * np.ones((1, n))  # 10 px = 12.8 A
    high = np.cos(2 * np.pi * 20 * x / n)[None, :] * np.ones((n, 1))  # 20 px = 6.4 A
    img = bk.asarray(np.stack([low + mid + high] * 2), dtype=np.float32)
    tol = dict(atol=1e-5)
    np.testing.assert_allclose(bk.asnumpy(fr.lowpass(img, angpix, 8.0)), np.stack([low + mid] * 2), **tol)
    np.testing.assert_allclose(bk.asnumpy(fr.highpass(img, angpix, 20.0)), np.stack([mid + high] * 2), **tol)
    np.testing.assert_allclose(bk.asnumpy(fr.bandpass(img, angpix, 20.0, 8.0)), np.stack([mid] * 2), **tol)


def test_lowpass_edge_is_raised_cosine():
    n, angpix, res = 32, 1.0, 4.0  # cutoff radius n * angpix / res = 8 px, edge 8 +- 2 px
    x = np.arange(n)
    for k, w in ((5, 1.0), (7, 0.5 + 0.5 * np.cos(np.pi * 0.25)), (8, 0.5), (10, 0.0)):
        img = np.cos(2 * np.pi * k * x / n)[None, :] * np.ones((n, 1))
        np.testing.assert_allclose(fr.lowpass(img, angpix, res, edge_width_px=4), w * img, atol=1e-12)


def test_lowpass_3d(rng):
    v = rng.normal(size=(16, 16, 16))
    out = fr.lowpass(v, 1.0, 4.0, ndim=3)  # cutoff 4 px
    spec = np.abs(np.fft.rfftn(out))
    shells = fr.radial_shell_index(16, ndim=3)
    assert spec[shells >= 6].max() < 1e-10 and np.allclose(spec[shells <= 2], np.abs(np.fft.rfftn(v))[shells <= 2])


# ----------------------------------------------------------------------------- shifts


def test_shift_phase_integer_equals_roll(bk, rng):
    x = rng.normal(size=(3, 32, 32))
    shifts = np.array([[3, -5], [0, 7], [-16, 1]], dtype=float)  # (dx, dy)
    ft = bk.fft.rfft2(bk.asarray(x, dtype=np.float32))
    out = bk.asnumpy(bk.fft.irfft2(fr.shift_phase(ft, bk.asarray(shifts), 32), s=(32, 32)))
    ref = np.stack([np.roll(x[i], (int(dy), int(dx)), axis=(-2, -1)) for i, (dx, dy) in enumerate(shifts)])
    np.testing.assert_allclose(out, ref, atol=1e-5)


def test_shift_phase_subpixel_moves_centroid():
    n = 64
    img = _gaussian(n, 3.0, (n // 2, n // 2))
    shift = np.array([1.3, -0.7])
    out = np.fft.irfft2(fr.shift_phase(np.fft.rfft2(img), shift, n), s=(n, n))
    np.testing.assert_allclose(_centroid(out), _centroid(img) + shift, atol=1e-6)
    np.testing.assert_allclose(out, _gaussian(n, 3.0, (n // 2 + 1.3, n // 2 - 0.7)), atol=1e-6)


# ----------------------------------------------------------------------------- FSC and spectra


def test_fsc_identical_and_independent(bk, rng):
    a = rng.normal(size=(32, 32, 32))
    b = rng.normal(size=(32, 32, 32))
    same = bk.asnumpy(fr.fsc(bk.asarray(a), bk.asarray(a)))
    assert same.shape == (17,) and same.dtype == np.float64
    np.testing.assert_allclose(same, 1.0, atol=1e-12)
    indep = bk.asnumpy(fr.fsc(bk.asarray(a, dtype=np.float32), bk.asarray(b, dtype=np.float32)))
    assert abs(indep[4:].mean()) < 0.1 and np.abs(indep[6:]).max() < 0.3


def test_fsc_follows_snr(rng):
    n = 32
    signal = rng.normal(size=(n, n, n))
    for snr in (1.0, 3.0):
        sigma = 1 / np.sqrt(snr)
        half1 = signal + sigma * rng.normal(size=signal.shape)
        half2 = signal + sigma * rng.normal(size=signal.shape)
        curve = fr.fsc(half1, half2)
        expected = snr / (1 + snr)
        assert abs(curve[4:].mean() - expected) < 0.03
        assert np.abs(curve[4:] - expected).max() < 0.15


def test_frc_batched_images(rng):
    a = rng.normal(size=(4, 32, 32))
    b = a + 0.01 * rng.normal(size=a.shape)
    curves = fr.fsc(a, b, ndim=2)
    assert curves.shape == (4, 17) and curves.min() > 0.99
    np.testing.assert_allclose(curves[2], fr.fsc(a[2], b[2]), rtol=1e-12)
    np.testing.assert_allclose(fr.fsc(a[1], a[1]), 1.0, atol=1e-12)


def test_resolution_at_synthetic_curve():
    n, angpix = 64, 1.5
    shells = np.arange(n // 2 + 1)
    curve = 1.0 - shells / (n / 2)  # crosses 0.143 at shell 0.857 * 32 = 27.424
    shell = (1 - 0.143) * n / 2
    assert fr.resolution_at(curve, n, angpix) == pytest.approx(n * angpix / shell, rel=1e-12)
    assert fr.resolution_at(curve, n, angpix, threshold=0.5) == pytest.approx(n * angpix / 16, rel=1e-12)
    assert fr.resolution_at(np.ones(n // 2 + 1), n, angpix) == 2 * angpix
    step = np.where(shells < 10, 1.0, 0.0)  # between shells 9 and 10
    assert fr.resolution_at(step, n, angpix) == pytest.approx(n * angpix / (9 + (1 - 0.143)), rel=1e-12)


def test_power_spectrum_white_noise_and_cosine(bk, rng):
    noise = bk.asarray(2.0 * rng.normal(size=(8, 64, 64)), dtype=np.float32)
    ps = bk.asnumpy(fr.power_spectrum_1d(noise))
    assert ps.shape == (8, 33) and ps.dtype == np.float64
    assert abs(ps[:, 2:].mean() - 4.0) < 0.1
    x = np.arange(64)
    img = np.cos(2 * np.pi * 5 * x / 64)[None, :] * np.ones((64, 1))
    ps1 = fr.power_spectrum_1d(img)
    assert np.argmax(ps1) == 5 and np.delete(ps1, 5).max() < 1e-20 * ps1[5]


def test_next_fast_size():
    assert [fr.next_fast_size(n) for n in (1, 97, 127, 128, 131, 211, 1021)] == [1, 98, 128, 128, 135, 216, 1024]
    assert fr.next_fast_size(100, primes=(2,)) == 128
    assert fr.next_fast_size(301, primes=(2, 3)) == 324


# ----------------------------------------------------------------------------- masks


def test_soft_circular_mask(bk):
    m = bk.asnumpy(fr.soft_circular_mask(32, 8.0, 4.0, bk=bk))
    assert m.shape == (32, 32) and m.dtype == np.float32
    assert m[16, 16] == 1 and m[16, 24] == 1 and m[16, 28 + 1] == 0 and m[0, 0] == 0
    np.testing.assert_allclose(m[16, 26], 0.5, atol=1e-6)  # r = 10, halfway through the edge
    np.testing.assert_allclose(m[16, 16 - 9], 0.5 + 0.5 * np.cos(np.pi / 4), atol=1e-6)
    hard = fr.soft_circular_mask(32, 8.0, 0.0)
    assert hard[16, 24] == 1 and hard[16, 25] == 0
    m3 = fr.soft_circular_mask(16, 4.0, 2.0, ndim=3)
    assert m3.shape == (16, 16, 16) and m3[8, 8, 13] == pytest.approx(0.5)


def test_normalise_background(bk, rng):
    n, radius = 32, 10.0
    imgs = 5.0 + 3.0 * rng.normal(size=(4, n, n))
    imgs[:, 16, 16] += 100.0  # signal inside the circle does not count
    out = bk.asnumpy(fr.normalise_background(bk.asarray(imgs, dtype=np.float32), radius))
    y, x = np.mgrid[:n, :n]
    outside = np.hypot(x - n // 2, y - n // 2) > radius
    np.testing.assert_allclose(out[:, outside].mean(axis=1), 0.0, atol=1e-5)
    np.testing.assert_allclose(out[:, outside].std(axis=1), 1.0, rtol=1e-5)
    bg = imgs[:, outside]
    ref = (imgs - bg.mean(axis=1)[:, None, None]) / bg.std(axis=1)[:, None, None]
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-4)
    flat = fr.normalise_background(np.full((n, n), 7.0), radius)
    assert np.all(np.isfinite(flat)) and np.allclose(flat, 0.0)
    with pytest.raises(InputError):
        fr.normalise_background(np.zeros((8, 8)), 8.0)
