"""The pruned inverse DFT (displacements only, as GEMMs) gives the FFT path's correlations and ln P."""

import numpy as np
import pytest

from cryopipe.backend import available_backends, get_backend
from cryopipe.bioem.compat import displacements
from cryopipe.bioem.integrate import Problem, integrate
from cryopipe.bioem.pruned import FFTTransform, PrunedTransform, choose, cost_model


def band_mask(n: int, radius: float) -> np.ndarray:
    """(N, N//2+1) bool: half-spectrum entries within ``radius`` Fourier pixels of the origin."""
    ky = np.fft.fftfreq(n, 1.0 / n)[:, None]
    kx = np.arange(n // 2 + 1)[None]
    return ky ** 2 + kx ** 2 <= radius ** 2


def synthetic_problem(n=32, max_shift=3, n_orient=5, n_ctf=3, n_images=6, single=False, band=None, seed=0,
                      bk=None, step=1):
    """A small BioEM problem with signal: images = CTF x a shifted projection + noise (host arrays on ``bk``).

    band : zero the CTF kernels beyond this radius (Fourier pixels), as a working-resolution limit would.
    """
    bk = bk or get_backend("cpu")
    real, cplx = (np.float32, np.complex64) if single else (np.float64, np.complex128)
    rng = np.random.default_rng(seed)
    h = n // 2 + 1
    ky, kx = np.fft.fftfreq(n, 1.0 / n)[:, None], np.arange(h)[None]
    s2 = (ky ** 2 + kx ** 2) / n ** 2
    proj = np.fft.rfft2(rng.standard_normal((n_orient, n, n))) * np.exp(-40 * s2)  # smooth "models"
    ctf = np.stack([-np.sin(np.pi * (8 + 6 * c) * s2 * n / 4 + 0.1) * np.exp(-5 * s2) for c in range(n_ctf)])[None]
    ctf /= ctf[..., :1, :1]
    if band is not None:
        ctf = ctf * band_mask(n, band)
    truth = rng.integers(0, n_orient, n_images)
    shift = rng.integers(-max_shift, max_shift + 1, (n_images, 2))
    clean = np.fft.irfft2(proj[truth] * ctf[0, 0], s=(n, n))
    images = np.stack([np.roll(c, tuple(s), axis=(0, 1)) for c, s in zip(clean, shift, strict=True)])
    images = 3.0 * images / images.std() + 0.5 + rng.standard_normal(images.shape)
    spectra = bk.asarray(np.fft.rfft2(images), dtype=cplx)
    bank = bk.asarray(proj, dtype=cplx)
    return Problem(spectra, images.sum(axis=(1, 2)), (images ** 2).sum(axis=(1, 2)), bk.asarray(ctf, dtype=real),
                   rng.normal(0, 0.3, (1, n_ctf)), displacements(n, max_shift, step), n_orient,
                   lambda o0, o1: bank[o0:o1])


@pytest.mark.parametrize("n, shift, step, radius", [(64, 10, 1, None), (32, 4, 3, None), (16, 7, 1, None),
                                                    (64, 10, 1, 12.0), (30, 5, 2, 7.5)])
def test_pruned_correlations_equal_irfft2(n, shift, step, radius):
    bk = get_backend("cpu")
    rng = np.random.default_rng(n + shift)
    h = n // 2 + 1
    mask = None if radius is None else band_mask(n, radius)
    P = rng.standard_normal((3, n, h)) + 1j * rng.standard_normal((3, n, h))  # not Hermitian: irfft2's rules
    G = rng.standard_normal((2, 4, n, h)) + 1j * rng.standard_normal((2, 4, n, h))
    if mask is not None:
        P = P * mask
    shifts = displacements(n, shift, step)
    fft, pr = FFTTransform(n, shifts, bk), PrunedTransform(n, shifts, bk, np.float64, mask)
    want = fft.at_shifts(fft.correlate_products(P, G))
    got = pr.at_shifts(pr.correlate_products(P, G))
    assert got.shape == want.shape == (3, 2, 4, len(shifts))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12 * np.abs(want).max())
    if mask is not None:  # the band limit shrinks the transform
        assert len(pr.u) == 2 * int(radius) + 1 and len(pr.v) == int(radius) + 1


def _compare(prob, bk, rtol, **kw):
    stats = {}
    a = integrate(prob, bk, transform="fft", **kw)
    b = integrate(prob, bk, transform="pruned", stats=stats, **kw)
    assert stats["transform"] == "pruned"
    assert np.isfinite(a.log_sum).all()
    np.testing.assert_allclose(b.log_sum, a.log_sum, rtol=rtol, atol=0)
    np.testing.assert_allclose(b.best_l, a.best_l, rtol=rtol, atol=0)
    np.testing.assert_array_equal(b.best_orientation, a.best_orientation)
    np.testing.assert_array_equal(b.best_shift, a.best_shift)
    return stats


def test_pruned_log_p_equals_fft_64px_21x21():
    prob = synthetic_problem(64, 10, n_orient=4, n_ctf=3, n_images=3)
    _compare(prob, get_backend("cpu"), 1e-9, keep_orientations=True)


@pytest.mark.parametrize("n, shift, n_orient, n_ctf, n_images", [(64, 10, 4, 3, 3), (224, 40, 2, 2, 2)])
def test_pruned_float32_within_float32_error_of_fft(n, shift, n_orient, n_ctf, n_images):
    """In float32 both transforms round differently: ln P (with its constant) agrees to 1e-4 relative, and
    the pruned path's error against float64 stays within a few times the FFT path's own float32 error.
    (ln P is ill-conditioned in float32: (Np - 3)/2 ln E amplifies E's relative error by ~Np/2.)"""
    from cryopipe.bioem.likelihood import log_constant

    bk = get_backend("cpu")
    kw = dict(n_orient=n_orient, n_ctf=n_ctf, n_images=n_images)
    exact = integrate(synthetic_problem(n, shift, **kw), bk, transform="fft").log_sum
    fft = integrate(synthetic_problem(n, shift, single=True, **kw), bk, transform="fft")
    pr = integrate(synthetic_problem(n, shift, single=True, **kw), bk, transform="pruned")
    const = log_constant(n * n)
    np.testing.assert_allclose(pr.log_sum + const, fft.log_sum + const, rtol=1e-4)
    assert np.abs(pr.log_sum - exact).max() <= 4 * np.abs(fft.log_sum - exact).max() + 1e-3 * n * n / 4096
    np.testing.assert_array_equal(pr.best_orientation, fft.best_orientation)


def test_pruned_log_p_equals_fft_224px_81x81():
    prob = synthetic_problem(224, 40, n_orient=2, n_ctf=2, n_images=2)
    stats = _compare(prob, get_backend("cpu"), 1e-9)
    assert stats["kept_rows"] == 224 and stats["kept_columns"] == 113


def test_band_limited_spectra_prune_rows_and_columns():
    prob = synthetic_problem(64, 6, n_orient=3, n_ctf=2, n_images=3, band=16.0)
    stats = _compare(prob, get_backend("cpu"), 1e-9)
    assert (stats["kept_rows"], stats["kept_columns"]) == (33, 17)


def test_cost_model_and_auto_choice():
    c = cost_model(224, displacements(224, 40, 1))
    # rows folded to p = 0..112 (cosines, 41 k) and p = 1..111 (sines, 40 k), re and im; columns 113 -> 41 + 40
    assert c["pruned_macs"] == 2 * 113 * (41 * 113 + 40 * 111) + 81 * 113 * 81
    assert c["pruned_flop"] == 2 * c["pruned_macs"] + 16 * 113 * 113 + 6 * 81 * 81
    assert c["pruned_flop"] < 0.53 * 2 * (81 * 224 * 226 + 81 * 226 * 81)  # half the unfolded GEMMs
    bk = get_backend("cpu")
    assert choose("auto", 224, displacements(224, 40, 1), bk) == "pruned"
    assert choose("auto", 224, displacements(224, 111, 1), bk) == "fft"  # all shifts: the FFT is cheaper
    assert choose("fft", 224, displacements(224, 40, 1), bk) == "fft"


@pytest.mark.gpu
@pytest.mark.skipif("gpu" not in available_backends(), reason="no CUDA GPU visible to CuPy")
def test_gpu_pruned_fused_equals_cpu():
    """GPU (fold kernel, GEMMs, fused reduction) in float32 against the CPU in float64: within the CPU's own
    float32 error (as test_pruned_float32_within_float32_error_of_fft), same maximising grid points."""
    cpu, gpu = get_backend("cpu"), get_backend("gpu")
    exact = integrate(synthetic_problem(64, 10), cpu, transform="fft")
    cpu32 = integrate(synthetic_problem(64, 10, single=True), cpu, transform="fft")
    got = integrate(synthetic_problem(64, 10, single=True, bk=gpu), gpu, transform="pruned")
    assert np.abs(got.log_sum - exact.log_sum).max() <= 4 * np.abs(cpu32.log_sum - exact.log_sum).max() + 1e-3
    np.testing.assert_allclose(got.best_l, exact.best_l, rtol=0, atol=0.05)
    np.testing.assert_array_equal(got.best_orientation, exact.best_orientation)
    np.testing.assert_array_equal(got.best_shift, exact.best_shift)


@pytest.mark.gpu
@pytest.mark.skipif("gpu" not in available_backends(), reason="no CUDA GPU visible to CuPy")
@pytest.mark.parametrize("n, shift, step, radius", [(64, 10, 1, None), (30, 5, 2, 7.5), (16, 7, 1, None)])
def test_gpu_fold_kernel_correlations_equal_irfft2(n, shift, step, radius):
    """The GPU fold kernel (Zs, Zd in the GEMM layout) gives the host's irfft2 at the displacements."""
    cpu, gpu = get_backend("cpu"), get_backend("gpu")
    rng = np.random.default_rng(n)
    h = n // 2 + 1
    mask = None if radius is None else band_mask(n, radius)
    P = rng.standard_normal((3, n, h)) + 1j * rng.standard_normal((3, n, h))
    G = rng.standard_normal((2, 4, n, h)) + 1j * rng.standard_normal((2, 4, n, h))
    if mask is not None:
        P = P * mask
    shifts = displacements(n, shift, step)
    fft = FFTTransform(n, shifts, cpu)
    want = fft.at_shifts(fft.correlate_products(P, G))
    pr = PrunedTransform(n, shifts, gpu, np.float64, mask)
    got = gpu.asnumpy(pr.at_shifts(pr.correlate_products(gpu.asarray(P), gpu.asarray(G))))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12 * np.abs(want).max())
