"""cryopipe.ctf against RELION's CTF::getCTF written out independently in float64."""

import math

import numpy as np
import pandas as pd
import pytest

from cryopipe.ctf import CTFParams, apply_ctf, ctf_2d, electron_wavelength, phase_flip, wiener_filter
from cryopipe.errors import InputError


def relion_ctf(x, y, du, dv, angle, kv, cs, q0, bfac=0.0, scale=1.0, phase=0.0):
    """RELION's CTF::initialise + getCTF for one frequency (x, y) in 1/A, in plain float64."""
    local_cs, local_v = cs * 1e7, kv * 1e3
    lam = 12.2643247 / math.sqrt(local_v * (1.0 + local_v * 0.978466e-6))
    k1 = math.pi / 2 * 2 * lam
    k2 = math.pi / 2 * local_cs * lam**3
    k3 = math.atan(q0 / math.sqrt(1 - q0 * q0))
    k4 = -bfac / 4.0
    k5 = math.radians(phase)
    u2 = x * x + y * y
    deltaf = 0.0
    if u2 > 0:
        deltaf = -(du + dv) * 0.5 + -(du - dv) * 0.5 * math.cos(2 * (math.atan2(y, x) - math.radians(angle)))
    argument = k1 * deltaf * u2 + k2 * u2 * u2 - k5 - k3
    return scale * -math.sin(argument) * math.exp(k4 * u2)


def _freq(i, j, n, angpix):
    """(x, y) in 1/A of half-spectrum pixel (row i, column j)."""
    return j / (n * angpix), (i if i < n // 2 else i - n) / (n * angpix)


ASTIG = dict(defocus_u=21000.0, defocus_v=17500.0, defocus_angle=33.0, voltage=300.0, cs=2.7,
             amplitude_contrast=0.1, bfactor=40.0, phase_shift=12.0, scale=0.9)


def test_electron_wavelength():
    assert electron_wavelength(300) == pytest.approx(0.0196875, rel=1e-4)
    assert electron_wavelength(200) == pytest.approx(0.0250793, rel=1e-4)
    np.testing.assert_allclose(electron_wavelength(np.array([300.0, 200.0])),
                               [electron_wavelength(300), electron_wavelength(200)])


def test_ctf_at_origin_is_amplitude_contrast():
    for q0 in (0.0, 0.07, 0.1, 0.3):
        p = CTFParams(15000.0, 14000.0, 10.0, 300.0, 2.7, q0, bfactor=100.0)
        assert ctf_2d(p, 32, 1.0, dtype=np.float64)[0, 0, 0] == pytest.approx(q0, abs=1e-12)
    p = CTFParams(15000.0, 15000.0, 0.0, 300.0, 2.7, 0.0, phase_shift=90.0, scale=2.0)
    assert ctf_2d(p, 32, 1.0, dtype=np.float64)[0, 0, 0] == pytest.approx(2.0, abs=1e-12)


def test_ctf_hand_values_astigmatic(bk):
    n, angpix = 64, 1.3
    p = CTFParams(**ASTIG)
    ref = ctf_2d(p, n, angpix, dtype=np.float64)[0]
    for i, j in ((0, 0), (0, 5), (3, 4), (7, 0), (40, 9), (63, 17), (21, 31), (32, 32), (50, 2)):
        assert ref[i, j] == pytest.approx(relion_ctf(*_freq(i, j, n, angpix), **_relion_kwargs(ASTIG)), abs=1e-10)
    ctf = bk.asnumpy(ctf_2d(p, n, angpix, bk=bk))
    assert ctf.shape == (1, n, n // 2 + 1) and ctf.dtype == np.float32
    np.testing.assert_allclose(ctf[0], ref, atol=2e-4)


def _relion_kwargs(d):
    return dict(du=d["defocus_u"], dv=d["defocus_v"], angle=d["defocus_angle"], kv=d["voltage"], cs=d["cs"],
                q0=d["amplitude_contrast"], bfac=d.get("bfactor", 0.0), scale=d.get("scale", 1.0),
                phase=d.get("phase_shift", 0.0))


def test_ctf_batch_matches_single_and_full_layout(bk):
    n, angpix = 48, 1.1
    p = CTFParams(np.array([12000.0, 25000.0, 18000.0]), np.array([11000.0, 24000.0, 18000.0]),
                  np.array([-20.0, 75.0, 0.0]), 300.0, 2.7, 0.07, bfactor=np.array([0.0, 50.0, 150.0]))
    batch = bk.asnumpy(ctf_2d(p, n, angpix, bk=bk, dtype=np.float64))
    assert batch.shape == (3, n, n // 2 + 1)
    for b in range(3):
        single = CTFParams(p.defocus_u[b], p.defocus_v[b], p.defocus_angle[b], 300.0, 2.7, 0.07, p.bfactor[b])
        np.testing.assert_allclose(batch[b], ctf_2d(single, n, angpix, dtype=np.float64)[0], atol=1e-10)
    full = bk.asnumpy(ctf_2d(p, n, angpix, bk=bk, half=False, dtype=np.float64))
    assert full.shape == (3, n, n)
    np.testing.assert_allclose(full[..., : n // 2], batch[..., : n // 2], atol=1e-10)
    flipped = np.roll(full[:, ::-1, ::-1], (1, 1), axis=(1, 2))  # value at -k (Nyquist: -N/2 maps to itself)
    inner = np.delete(np.delete(full - flipped, n // 2, axis=1), n // 2, axis=2)
    np.testing.assert_allclose(inner, 0.0, atol=1e-10)


def test_astigmatism_angle_convention():
    n, angpix = 128, 1.0
    common = dict(voltage=300.0, cs=2.7, amplitude_contrast=0.1)
    astig = ctf_2d(CTFParams(20000.0, 12000.0, 0.0, **common), n, angpix, dtype=np.float64)[0]
    iso_u = ctf_2d(CTFParams(20000.0, 20000.0, 0.0, **common), n, angpix, dtype=np.float64)[0]
    iso_v = ctf_2d(CTFParams(12000.0, 12000.0, 0.0, **common), n, angpix, dtype=np.float64)[0]
    np.testing.assert_allclose(astig[0, :], iso_u[0, :], atol=1e-12)  # along x: the U defocus
    np.testing.assert_allclose(astig[:, 0], iso_v[:, 0], atol=1e-12)  # along y: the V defocus
    rotated = ctf_2d(CTFParams(20000.0, 12000.0, 90.0, **common), n, angpix, dtype=np.float64)[0]
    np.testing.assert_allclose(rotated[0, :], iso_v[0, :], atol=1e-12)
    np.testing.assert_allclose(rotated[:, 0], iso_u[:, 0], atol=1e-12)


def test_swapping_u_v_and_adding_90_degrees_is_the_same_ctf(bk):
    a = CTFParams(np.array([21000.0, 9000.0]), np.array([17500.0, 8000.0]), np.array([33.0, -71.0]), 300.0, 2.7, 0.1)
    b = CTFParams(a.defocus_v, a.defocus_u, a.defocus_angle + 90.0, 300.0, 2.7, 0.1)
    np.testing.assert_allclose(bk.asnumpy(ctf_2d(a, 64, 1.2, bk=bk)), bk.asnumpy(ctf_2d(b, 64, 1.2, bk=bk)), atol=1e-4)


def test_first_zero_of_isotropic_ctf():
    n, angpix, df, kv, cs, q0 = 512, 1.0, 15000.0, 300.0, 2.7, 0.1
    lam = electron_wavelength(kv)
    a, b, c = math.pi / 2 * cs * 1e7 * lam**3, math.pi * lam * df, math.pi - math.asin(q0)
    u0 = (b - math.sqrt(b * b - 4 * a * c)) / (2 * a)  # chi(u0) = pi
    j0 = math.sqrt(u0) * n * angpix  # in Fourier pixels along x
    row = ctf_2d(CTFParams(df, df, 0.0, kv, cs, q0), n, angpix, dtype=np.float64)[0, 0]
    lo, hi = math.floor(j0), math.ceil(j0)
    assert np.all(row[:hi] > 0) and row[hi] < 0
    crossing = lo + row[lo] / (row[lo] - row[hi])
    assert crossing == pytest.approx(j0, abs=0.05)


def test_bfactor_envelope():
    n, angpix = 64, 1.0
    p0 = CTFParams(15000.0, 13000.0, 45.0, 200.0, 2.0, 0.07)
    p1 = CTFParams(15000.0, 13000.0, 45.0, 200.0, 2.0, 0.07, bfactor=120.0)
    s2 = np.fft.fftfreq(n)[:, None] ** 2 + np.fft.rfftfreq(n)[None, :] ** 2
    np.testing.assert_allclose(ctf_2d(p1, n, angpix, dtype=np.float64)[0],
                               ctf_2d(p0, n, angpix, dtype=np.float64)[0] * np.exp(-120.0 * s2 / 4), atol=1e-12)


def test_phase_flip_and_wiener(bk, rng):
    p = CTFParams(np.array([15000.0, 22000.0]), np.array([14000.0, 21000.0]), np.array([10.0, 80.0]),
                  300.0, 2.7, 0.1)
    ctf = ctf_2d(p, 32, 1.5, bk=bk)
    ft = bk.asarray((rng.normal(size=(2, 32, 17)) + 1j * rng.normal(size=(2, 32, 17))).astype(np.complex64))
    c, f = bk.asnumpy(ctf), bk.asnumpy(ft)
    flipped = phase_flip(ft, ctf)
    assert flipped.dtype == np.complex64
    np.testing.assert_allclose(bk.asnumpy(flipped), np.where(c < 0, -f, f), rtol=1e-6)
    zero = bk.asarray(np.zeros((1, 32, 17), dtype=np.float32))
    np.testing.assert_array_equal(bk.asnumpy(phase_flip(ft, zero)), f)  # CTF 0 counts as positive
    snr = np.array([2.0, 10.0])
    out = bk.asnumpy(wiener_filter(ft * ctf, ctf, snr))
    np.testing.assert_allclose(out, f * c * c / (c * c + 1 / snr[:, None, None]), rtol=1e-5, atol=1e-6)
    strong = np.abs(c) > 0.2
    recovered = bk.asnumpy(wiener_filter(ft * ctf, ctf, 1e6))
    np.testing.assert_allclose(recovered[strong], f[strong], rtol=1e-3)


def test_apply_ctf(bk, rng):
    n, angpix = 32, 1.4
    p = CTFParams(np.array([15000.0, 22000.0]), np.array([14000.0, 21000.0]), np.array([10.0, 80.0]),
                  300.0, 2.7, 0.1)
    x = rng.normal(size=(2, n, n))
    out = bk.asnumpy(apply_ctf(bk.asarray(x, dtype=np.float32), p, angpix))
    assert out.shape == (2, n, n) and out.dtype == np.float32
    ref = np.fft.irfft2(np.fft.rfft2(x) * ctf_2d(p, n, angpix, dtype=np.float64), s=(n, n))
    np.testing.assert_allclose(out, ref, atol=1e-4)
    iso = CTFParams(15000.0, 15000.0, 0.0, 300.0, 2.7, 0.1)
    flat = bk.asnumpy(apply_ctf(bk.asarray(np.full((n, n), 2.0)), iso, angpix))
    np.testing.assert_allclose(flat, 0.2, atol=1e-12)  # only DC, multiplied by Q0


def test_from_star():
    df = pd.DataFrame({
        "rlnDefocusU": [15000.0, 22000.0], "rlnDefocusV": [14000.0, 21000.0], "rlnDefocusAngle": [10.0, 80.0],
        "rlnVoltage": [300.0, 300.0], "rlnSphericalAberration": [2.7, 2.7], "rlnAmplitudeContrast": [0.1, 0.1],
        "rlnPhaseShift": [0.0, 45.0],
    })
    p = CTFParams.from_star(df)
    np.testing.assert_array_equal(p.defocus_u, [15000.0, 22000.0])
    np.testing.assert_array_equal(p.phase_shift, [0.0, 45.0])
    np.testing.assert_array_equal(p.bfactor, [0.0, 0.0])
    np.testing.assert_array_equal(p.scale, [1.0, 1.0])
    assert ctf_2d(p, 16, 1.0).shape == (2, 16, 9)
    with pytest.raises(InputError) as err:
        CTFParams.from_star(df.drop(columns="rlnSphericalAberration"), path="particles.star")
    assert err.value.field == "rlnSphericalAberration" and err.value.path == "particles.star"
    with pytest.raises(InputError) as err:
        CTFParams.from_star(df.assign(rlnAmplitudeContrast=[0.1, 1.5]))
    assert err.value.field == "rlnAmplitudeContrast"
    with pytest.raises(InputError) as err:
        CTFParams.from_star(df.assign(rlnCtfBfactor=[np.nan, 0.0]))
    assert err.value.field == "rlnCtfBfactor"
