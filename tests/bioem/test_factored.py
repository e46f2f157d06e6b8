"""The factored pruned DFT (CTF in the row matrices) gives the FFT path's correlations and ln P, CPU and GPU."""

import dataclasses

import numpy as np
import pytest

from cryopipe.backend import available_backends, get_backend
from cryopipe.bioem.compat import displacements
from cryopipe.bioem.factored import FactoredTransform
from cryopipe.bioem.integrate import integrate
from cryopipe.bioem.pruned import CorrelationTransform, FFTTransform, PrunedTransform

from .test_pruned import band_mask, synthetic_problem


def _inputs(n, n_ctf, n_images, symmetric, shared, radius, seed):
    """Random projections P (3, N, H), conj spectra (ni, N, H) and CTF kernels (1 or ni, C, N, H): mirror-symmetric
    in the row frequency (a function of |k_y| and k_x) or not; zero beyond ``radius`` when given."""
    rng = np.random.default_rng(seed)
    h = n // 2 + 1
    P = rng.standard_normal((3, n, h)) + 1j * rng.standard_normal((3, n, h))  # not Hermitian: irfft2's rules
    conj = rng.standard_normal((n_images, n, h)) + 1j * rng.standard_normal((n_images, n, h))
    nk = 1 if shared else n_images
    if symmetric:
        ky = np.abs(np.fft.fftfreq(n, 1.0 / n))
        K = np.cos(0.3 * ky[None, None, :, None] * rng.uniform(0.5, 2, (nk, n_ctf, 1, 1))) * rng.uniform(
            0.5, 1.5, (nk, n_ctf, 1, h))
    else:
        K = rng.standard_normal((nk, n_ctf, n, h))
    if radius is not None:
        K = K * band_mask(n, radius)
    return P, conj, K


def _case(n, shift, step, symmetric, shared, radius):
    """Inputs of :func:`_inputs`, the displacements, the band mask and the host irfft2 at the displacements."""
    P, conj, K = _inputs(n, 5, 4, symmetric, shared, radius, seed=n + shift)
    mask = None if radius is None else band_mask(n, radius)
    shifts = displacements(n, shift, step)
    fft = FFTTransform(n, shifts, get_backend("cpu"))
    want = fft.at_shifts(fft.correlate_products(P, np.broadcast_to(K, (4, *K.shape[1:])) * conj[:, None]))
    return P, conj, K, shifts, mask, want


@pytest.mark.parametrize("n, shift, step, symmetric, shared, radius", [
    (64, 10, 1, True, True, None), (64, 10, 1, False, False, None), (30, 5, 2, True, False, None),
    (16, 7, 1, False, True, None), (31, 5, 1, True, True, None), (64, 10, 1, True, False, 12.0),
    (30, 5, 2, False, True, 7.5)])
def test_factored_correlations_equal_irfft2(n, shift, step, symmetric, shared, radius):
    P, conj, K, shifts, mask, want = _case(n, shift, step, symmetric, shared, radius)
    tr = FactoredTransform(n, shifts, get_backend("cpu"), np.float64, mask)
    got = tr.at_shifts(tr.correlate(P, K, conj, shared))
    assert got.shape == want.shape == (3, 4, 5, len(shifts))
    assert tr.matrices(K)[2] is symmetric  # mirror-symmetric kernels take the half-size GEMMs
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12 * np.abs(want).max())
    if mask is not None:
        assert len(tr.v) == int(radius) + 1


@pytest.mark.parametrize("shared", [True, False])
def test_transforms_share_one_interface(shared):
    """The three transforms take the same arguments (the call integrate makes), give the same correlations at the
    displacements and report themselves through ``stats``."""
    n, shift, step, radius = 30, 5, 2, 7.5
    P, conj, K, shifts, mask, want = _case(n, shift, step, False, shared, radius)
    bk = get_backend("cpu")
    transforms = [FFTTransform(n, shifts, bk), PrunedTransform(n, shifts, bk, np.float64, mask),
                  FactoredTransform(n, shifts, bk, np.float64, mask)]
    for tr in transforms:
        assert isinstance(tr, CorrelationTransform)
        got = tr.at_shifts(tr.correlate(P, K, conj, shared))
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-12 * np.abs(want).max())
        stats = tr.stats()
        assert stats["transform"] == tr.name
        if tr.name != "fft":
            assert stats["kept_rows"] == len(tr.u) and stats["kept_columns"] == len(tr.v) == int(radius) + 1
    assert transforms[2].stats()["mirror_symmetric"] is False
    assert [tr.max_orientations(shared) for tr in transforms] == [64, 64, 256 if shared else 1024]
    assert transforms[0].bytes_per_pair(5) == transforms[1].bytes_per_pair(5) == 5 * (n * (n // 2 + 1) * 16 + n * n * 8)
    assert transforms[0].bytes_per_kernel_image(5) == 0 < transforms[2].bytes_per_kernel_image(5)


def _per_image_astigmatic(prob, rng, bk):
    """``prob`` with one CTF kernel set per image, made mirror-asymmetric (a tilt along k_y, as astigmatism at
    an oblique angle gives), so the factored transform takes its general (D != 0) GEMMs."""
    n = prob.spectra.shape[-2]
    ky = np.fft.fftfreq(n, 1.0 / n)[:, None]
    tilt = 1.0 + 0.2 * np.sin(2 * np.pi * ky / n)[None, None] * rng.uniform(0.5, 1.5, (prob.n_images, 1, 1, 1))
    return dataclasses.replace(prob, ctf=prob.ctf * bk.asarray(tilt, dtype=prob.ctf.dtype))


@pytest.mark.parametrize("astigmatic", [False, True])
def test_factored_log_p_equals_fft(astigmatic):
    """Same ln P (1e-9 in float64), maximising grid points and per-orientation sums as the FFT path, with shared
    symmetric kernels and per-image asymmetric ones; auto picks the factored transform for both."""
    bk = get_backend("cpu")
    prob = synthetic_problem(64, 10, n_orient=5, n_ctf=3, n_images=4)
    if astigmatic:
        prob = _per_image_astigmatic(prob, np.random.default_rng(3), bk)
    a = integrate(prob, bk, transform="fft", keep_orientations=True)
    stats = {}
    b = integrate(prob, bk, transform="factored", keep_orientations=True, stats=stats)
    assert stats["transform"] == "factored" and stats["mirror_symmetric"] is not astigmatic
    auto = {}
    integrate(prob, bk, transform="auto", stats=auto)
    assert auto["transform"] == "factored"
    assert np.isfinite(a.log_sum).all()
    np.testing.assert_allclose(b.log_sum, a.log_sum, rtol=1e-9, atol=0)
    np.testing.assert_allclose(b.best_l, a.best_l, rtol=1e-9, atol=0)
    np.testing.assert_allclose(b.orientation_log_sum, a.orientation_log_sum, rtol=1e-9, atol=0)
    for name in ("best_orientation", "best_ctf", "best_shift"):
        np.testing.assert_array_equal(getattr(b, name), getattr(a, name))


def test_orientation_priors_keep_the_unfactored_transform():
    bk = get_backend("cpu")
    prob = synthetic_problem(32, 3, n_orient=4, n_ctf=2, n_images=3)
    prior = np.zeros((3, 4))
    prior[0, 1] = -np.inf
    prob = dataclasses.replace(prob, orientation_log_prior=prior)
    stats = {}
    got = integrate(prob, bk, transform="auto", stats=stats)
    want = integrate(prob, bk, transform="factored")
    assert stats["transform"] == "pruned"
    np.testing.assert_allclose(got.log_sum, want.log_sum, rtol=1e-9)
    with pytest.raises(ValueError, match="transform must be"):
        integrate(prob, bk, transform="fast")


@pytest.mark.gpu
@pytest.mark.skipif("gpu" not in available_backends(), reason="no CUDA GPU visible to CuPy")
@pytest.mark.parametrize("astigmatic", [False, True])
def test_gpu_factored_fused_equals_cpu(astigmatic):
    """GPU (factored GEMMs, its reduction kernel) in float32 against the CPU in float64: within the CPU's own
    float32 error, same maximising grid points; 70 orientations leave a partial warp of orientations."""
    cpu, gpu = get_backend("cpu"), get_backend("gpu")

    def problem(single, bk):
        p = synthetic_problem(64, 10, n_orient=70, n_ctf=3, n_images=5, single=single, bk=bk)
        return _per_image_astigmatic(p, np.random.default_rng(3), bk) if astigmatic else p

    exact = integrate(problem(False, cpu), cpu, transform="fft", keep_orientations=True)
    cpu32 = integrate(problem(True, cpu), cpu, transform="fft")
    stats = {}
    got = integrate(problem(True, gpu), gpu, transform="factored", keep_orientations=True, stats=stats)
    assert stats["transform"] == "factored" and stats["mirror_symmetric"] is not astigmatic
    err32 = np.abs(cpu32.log_sum - exact.log_sum).max()
    assert np.abs(got.log_sum - exact.log_sum).max() <= 4 * err32 + 1e-3
    assert np.abs(got.orientation_log_sum - exact.orientation_log_sum).max() <= 8 * err32 + 1e-2
    np.testing.assert_allclose(got.best_l, exact.best_l, rtol=0, atol=0.05)
    for name in ("best_orientation", "best_ctf", "best_shift"):
        np.testing.assert_array_equal(getattr(got, name), getattr(exact, name))


def test_displacement_quads_share_their_loads():
    """The reduction kernel's quads: each displacement once, with the table entries and signs of its own."""
    tr = FactoredTransform(224, displacements(224, 40, 1), get_backend("cpu"))
    assert tr.quads.shape == (4, 41 * 41)
    seen = np.sort(tr.members[tr.members >= 0])
    np.testing.assert_array_equal(seen, np.arange(81 * 81))
    for m in range(4):
        ok = tr.members[m] >= 0
        s = tr.members[m, ok]
        np.testing.assert_array_equal(tr.table[:, s], tr.quads[:, ok])
        np.testing.assert_array_equal(tr.signs[0, s], tr.member_signs[m, ok])
        np.testing.assert_array_equal(tr.signs[1, s], tr.member_signs[4 + m, ok])


@pytest.mark.gpu
@pytest.mark.skipif("gpu" not in available_backends(), reason="no CUDA GPU visible to CuPy")
@pytest.mark.parametrize("n, shift, step, symmetric, shared, radius", [
    (64, 10, 1, True, True, None), (64, 10, 1, False, False, None), (30, 5, 2, True, False, 7.5),
    (16, 7, 1, False, True, None)])
def test_gpu_factored_correlations_equal_irfft2(n, shift, step, symmetric, shared, radius):
    """The GPU operand kernel (Q in the GEMM layout) and GEMMs in float64 give the host's irfft2."""
    gpu = get_backend("gpu")
    P, conj, K, shifts, mask, want = _case(n, shift, step, symmetric, shared, radius)
    tr = FactoredTransform(n, shifts, gpu, np.float64, mask)
    got = gpu.asnumpy(tr.at_shifts(tr.correlate(gpu.asarray(P), gpu.asarray(K), gpu.asarray(conj), shared)))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12 * np.abs(want).max())
