"""Projector / BackProjector against analytic Gaussian-blob references (cryopipe.projection)."""

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from cryopipe.backend import get_backend
from cryopipe.errors import InputError
from cryopipe.projection import BackProjector, Projector, slice_insert, slice_interpolate


def euler(rot, tilt, psi):
    """RELION's Euler_angles2matrix (ZYZ, degrees)."""
    return Rotation.from_euler("ZYZ", [rot, tilt, psi], degrees=True).as_matrix().T


def random_rotations(count, seed):
    return Rotation.random(count, random_state=seed).as_matrix()


def blob_volume(n, centres, sigmas, amps):
    """Isotropic Gaussians sampled on vol[z, y, x]; centres (x, y, z) in px from N//2."""
    g = np.arange(n) - n // 2
    z, y, x = np.meshgrid(g, g, g, indexing="ij")
    vol = np.zeros((n, n, n))
    for (cx, cy, cz), s, a in zip(centres, sigmas, amps, strict=True):
        vol += a * np.exp(-((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2) / (2 * s**2))
    return vol


def blob_projections(n, centres, sigmas, amps, rotations):
    """Analytic projections (B, N, N): 2D Gaussians at (A @ r)[:2] with amplitude a * sqrt(2 pi) * sigma."""
    g = np.arange(n) - n // 2
    y, x = np.meshgrid(g, g, indexing="ij")
    out = np.zeros((len(rotations), n, n))
    for c, s, a in zip(centres, sigmas, amps, strict=True):
        px, py = (rotations @ np.asarray(c, dtype=float))[:, :2, None, None].transpose(1, 0, 2, 3)
        out += a * np.sqrt(2 * np.pi) * s * np.exp(-((x - px) ** 2 + (y - py) ** 2) / (2 * s**2))
    return out


def half_spectra(images):
    """rfft2 of images (B, N, N) whose origin is at N//2."""
    return np.fft.rfft2(np.fft.ifftshift(images, axes=(-2, -1)))


def fsc(a, b):
    """Fourier shell correlation of two (N, N, N) maps in float64, shells 0 .. N//2."""
    n = a.shape[0]
    fa, fb = np.fft.fftn(np.asarray(a, dtype=np.float64)), np.fft.fftn(np.asarray(b, dtype=np.float64))
    k = np.fft.fftfreq(n, 1.0 / n)
    shell = np.rint(np.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2)).astype(int)
    keep = shell.ravel() <= n // 2
    s, fa, fb = shell.ravel()[keep], fa.ravel()[keep], fb.ravel()[keep]
    num = np.bincount(s, (fa * fb.conj()).real)
    return num / np.sqrt(np.bincount(s, np.abs(fa) ** 2) * np.bincount(s, np.abs(fb) ** 2))


def rel_err(a, b):
    return np.linalg.norm(a - b) / np.linalg.norm(b)


BLOBS = dict(centres=[(0, 0, 0), (6, -4, 3), (-5, 5, -6), (3, 7, -2)], sigmas=[3, 1.5, 2, 2.5], amps=[1, 2, 1.5, 1])


def test_project_real_matches_analytic_projection(cpu):
    n = 48
    proj = Projector(blob_volume(n, **BLOBS), cpu)
    rots = np.concatenate([np.eye(3)[None], random_rotations(8, seed=1)])
    images = cpu.asnumpy(proj.project_real(rots))
    assert images.shape == (9, n, n) and images.dtype == np.float32
    errors = [rel_err(im, ref) for im, ref in zip(images, blob_projections(n, **BLOBS, rotations=rots), strict=True)]
    # identity hits grid points, where the gridding pre-correction is not undone (~2%); others ~1%
    assert max(errors) < 0.03, errors
    assert np.mean(errors[1:]) < 0.015, errors


def test_projection_peak_lands_on_rotated_position(cpu):
    n, centre = 48, (7.0, -4.0, 3.0)
    rot = euler(30, 50, -20)
    image = cpu.asnumpy(Projector(blob_volume(n, [centre], [1.5], [1.0]), cpu).project_real(rot))[0]
    x, y = (rot @ np.array(centre))[:2]
    iy, ix = np.unravel_index(np.argmax(image), image.shape)
    assert (ix - n // 2, iy - n // 2) == (round(x), round(y))
    window = image[iy - 5 : iy + 6, ix - 5 : ix + 6]
    offsets = np.arange(-5, 6)
    assert (window.sum(axis=0) * offsets).sum() / window.sum() + ix - n // 2 == pytest.approx(x, abs=0.03)
    assert (window.sum(axis=1) * offsets).sum() / window.sum() + iy - n // 2 == pytest.approx(y, abs=0.03)


def test_identity_projection_is_sum_along_z(cpu):
    """With A = I the slice falls on grid points: nearest-neighbour projection is exact."""
    vol = blob_volume(32, **BLOBS)
    image = cpu.asnumpy(Projector(vol, cpu, interpolation="nearest").project_real(np.eye(3)))[0]
    np.testing.assert_allclose(image, vol.sum(axis=0), atol=1e-4 * vol.sum(axis=0).max())


def test_r_max_zeroes_high_frequencies(cpu):
    spec = cpu.asnumpy(Projector(blob_volume(32, **BLOBS), cpu).project(random_rotations(2, seed=3), r_max=5))
    ky, kx = np.fft.fftfreq(32, 1 / 32)[:, None], np.arange(17)[None, :]
    assert np.all(spec[:, kx**2 + ky**2 > 25] == 0)
    assert np.all(np.abs(spec[:, kx**2 + ky**2 <= 25]) > 0)


def test_interpolate_insert_are_adjoint(cpu, rng):
    p = 24
    shape = (p, p, p // 2 + 1)
    grid = rng.normal(size=shape) + 1j * rng.normal(size=shape)
    coords = rng.uniform(-p / 2, p / 2, size=(500, 3)) * 0.99
    values = rng.normal(size=500) + 1j * rng.normal(size=500)
    forward = np.vdot(values, slice_interpolate(grid, coords, np)).real  # Re <P g, y>
    back = np.zeros(shape, dtype=complex)
    slice_insert(back, coords, values, np)
    assert forward == pytest.approx(np.vdot(back, grid).real, rel=1e-10)  # Re <g, P^T y>


@pytest.mark.parametrize("ctf", [False, True])
def test_reconstruction_fsc_to_truth(cpu, ctf):
    n, count = 32, 3000
    rng = np.random.default_rng(0)
    blobs = dict(centres=rng.uniform(-6, 6, (6, 3)), sigmas=rng.uniform(1.5, 2, 6), amps=rng.uniform(0.5, 1.5, 6))
    rots = random_rotations(count, seed=2)
    spectra = half_spectra(blob_projections(n, **blobs, rotations=rots))
    weights = None
    if ctf:  # data = ctf * (ctf * F) with weights ctf^2, defocus-like chirps that vary per image
        k2 = (np.fft.fftfreq(n)[:, None] ** 2 + np.fft.rfftfreq(n)[None, :] ** 2)[None]
        c = -np.sin(np.pi * rng.uniform(20, 300, (count, 1, 1)) * k2 + 0.1)
        spectra, weights = c * c * spectra, c * c
    bp = BackProjector(n, cpu)
    bp.insert(spectra, rots, weights=weights)
    truth = blob_volume(n, **blobs)
    rec = cpu.asnumpy(bp.reconstruct())
    assert rec.shape == (n, n, n) and rec.dtype == np.float32
    upto = int(0.8 * n / 2)
    assert fsc(rec, truth)[1 : upto + 1].min() > 0.98  # measured 0.99
    assert rel_err(rec, truth) < 0.025  # measured 1.4%
    plain = cpu.asnumpy(bp.reconstruct(iterations=0))  # RELION's data / weight: ~0.75 and ~5%
    assert fsc(plain, truth)[1 : upto + 1].min() > 0.6
    assert rel_err(plain, truth) < 0.08


def test_add_and_regularisation(cpu):
    n = 32
    rots = random_rotations(200, seed=4)
    spectra = half_spectra(blob_projections(n, **BLOBS, rotations=rots))
    whole, half_a, half_b = (BackProjector(n, cpu) for _ in range(3))
    whole.insert(spectra, rots)
    half_a.insert(spectra[:120], rots[:120])
    half_b.insert(spectra[120:], rots[120:])
    half_a.add(half_b)
    for name in ("data", "weight", "moment"):
        np.testing.assert_allclose(getattr(half_a, name), getattr(whole, name), rtol=1e-12, atol=1e-9)
    plain = whole.reconstruct()
    np.testing.assert_allclose(whole.reconstruct(tau2=np.full(n // 2 + 1, 1e30)), plain, atol=1e-5 * plain.max())
    wiener = whole.reconstruct(wiener_constant=0.5)
    np.testing.assert_allclose(whole.reconstruct(tau2=np.full(n // 2 + 1, 2.0)), wiener, atol=1e-5 * wiener.max())
    assert np.linalg.norm(wiener) < np.linalg.norm(plain)
    low_pass = whole.reconstruct(tau2=np.r_[np.ones(5), np.zeros(n // 2 - 4)], iterations=0)
    assert fsc(low_pass, plain)[12] < 0.1 < fsc(low_pass, plain)[2]


def test_invalid_inputs(cpu):
    with pytest.raises(InputError):
        Projector(np.zeros((8, 8, 6)), cpu)
    with pytest.raises(InputError):
        Projector(np.zeros((8, 8, 8)), cpu).project(np.eye(2))
    with pytest.raises(InputError):
        BackProjector(8, cpu).insert(np.zeros((1, 8, 4), complex), np.eye(3))


def test_device_matches_cpu(bk):
    n = 32
    cpu = get_backend("cpu")
    vol = blob_volume(n, **BLOBS)
    rots = random_rotations(300, seed=5)
    ref = Projector(vol, cpu).project(rots)
    spec = bk.asnumpy(Projector(bk.asarray(vol), bk).project(rots))
    np.testing.assert_allclose(spec, ref, atol=2e-5 * np.abs(ref).max())
    recs = []
    for backend in (cpu, bk):
        bp = BackProjector(n, backend)
        bp.insert(backend.asarray(ref), rots)
        recs.append(backend.asnumpy(bp.reconstruct()))
    assert rel_err(recs[1], recs[0]) < 1e-4


@pytest.mark.parametrize("dtype", [np.complex128, np.complex64, np.float64])
def test_host_interpolation_equals_corner_gather(dtype):
    """The CPU's trilinear interpolation (an edge-padded grid read by scipy.ndimage.map_coordinates) gives what the
    8 corners of grid_corners give, at random float32 points (half at x < 0) and on the grid's edges (x = +-P/2, y and z
    wrapping)."""
    from cryopipe.projection import grid_corners

    rng = np.random.default_rng(5)
    p = 24
    shape = (p, p, p // 2 + 1)
    grid = rng.standard_normal(shape) + (1j * rng.standard_normal(shape) if dtype != np.float64 else 0)
    grid = grid.astype(dtype)
    coords = rng.uniform(-p / 2, p / 2, (3, 400, 3)).astype(np.float32)
    coords[0, :5] = [[-p / 2, 0, -p / 2], [p / 2, p / 2 - 1e-3, 0], [0, 0, 0], [p / 2, -p / 2, p / 2 - 1e-4],
                     [-3.5, -p / 2 + 1e-4, 11.99]]
    idx, w, _, flip = grid_corners(coords, shape, np)
    vals = (w * grid.reshape(-1)[idx]).sum(axis=0)
    want = np.where(flip, np.conj(vals), vals)
    got = slice_interpolate(grid, coords, np)
    assert got.dtype == want.dtype
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6 * np.abs(want).max())


@pytest.mark.parametrize("workers", [1, 3])
def test_projector_slice_values_equal_corner_gather(workers):
    """Projector.slice_values on the CPU (the edge-padded grid it keeps, orientations split over threads) against
    the corner gather of grid_corners on its grid, at points 2 x A.T @ (kx, ky, 0) of random rotations and the
    identity, every frequency within N/2 (so y and z wrap and x reaches the last plane)."""
    from cryopipe.backend import get_backend
    from cryopipe.geometry import random_rotations
    from cryopipe.projection import grid_corners

    bk = get_backend("cpu")
    bk.fft.workers = workers
    rng = np.random.default_rng(9)
    n = 16
    proj = Projector(rng.standard_normal((n, n, n)), bk)
    ky, kx = np.meshgrid(np.arange(-n // 2, n // 2), np.arange(n // 2 + 1), indexing="ij")
    inside = kx**2 + ky**2 <= (n // 2) ** 2
    kxy = np.stack([kx[inside], ky[inside]], axis=-1).astype(np.float32)
    rot = np.concatenate([np.eye(3)[None], random_rotations(7, rng)])
    got = proj.slice_values(rot, kxy)
    coords = np.einsum("pi,bij->bpj", kxy.astype(np.float64), rot[:, :2, :] * 2)
    idx, w, _, flip = grid_corners(coords, proj.grid.shape, np)
    vals = (w * np.ascontiguousarray(proj.grid).astype(np.complex128).reshape(-1)[idx]).sum(axis=0)
    want = np.where(flip, np.conj(vals), vals)
    assert got.shape == (8, len(kxy)) and got.dtype == np.complex64
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-6 * np.abs(want).max())


@pytest.mark.gpu
@pytest.mark.parametrize("double", [True, False])
def test_gpu_kernels_equal_array_code(gpu, double):
    """The GPU's slice kernels (cryopipe.slice_kernels) against the CPU array code on the same float32 points:
    values at random coordinates (half at x < 0, read from the Friedel mate; some on the grid's edges) and every
    sum of a weighted insertion (data, weight, first-order moments), computed here in float64 from grid_corners."""
    from cryopipe import slice_kernels
    from cryopipe.projection import CORNER_OFFSETS, grid_corners

    xp = gpu.xp
    rng = np.random.default_rng(3)
    p = 32
    shape = (p, p, p // 2 + 1)
    grid = (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)
    coords = rng.uniform(-p / 2, p / 2, (4, 500, 3)).astype(np.float32)
    coords[0, :3] = [[-p / 2, 0, -p / 2], [p / 2, p / 2 - 1e-3, 0], [0, 0, 0]]
    ref = slice_interpolate(grid, coords, np)
    got = gpu.asnumpy(slice_interpolate(gpu.asarray(grid), gpu.asarray(coords), xp))
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5 * np.abs(ref).max())

    pts = coords.reshape(-1, 3)
    values = rng.standard_normal(len(pts)) + 1j * rng.standard_normal(len(pts))
    weights = rng.uniform(0, 2, len(pts))
    idx, w, t, flip = grid_corners(pts, shape, np)
    wu = w.astype(np.float64) * weights
    size = grid.size
    want = [np.bincount(idx.ravel(), (w * np.where(flip, values.conj(), values)).ravel().real, size)
            + 1j * np.bincount(idx.ravel(), (w * np.where(flip, values.conj(), values)).ravel().imag, size),
            np.bincount(idx.ravel(), wu.ravel(), size)]
    want += [np.bincount(idx.ravel(), (wu * (t[None, :, d] - CORNER_OFFSETS[:, d, None])).ravel(), size)
             for d in range(3)]
    real, cplx = (xp.float64, xp.complex128) if double else (xp.float32, xp.complex64)
    data, weight, moment = xp.zeros(shape, cplx), xp.zeros(shape, real), xp.zeros((3,) + shape, real)
    slice_kernels.insert(data, weight, moment, xp.asarray(pts), xp.asarray(values), xp.asarray(weights), xp)
    got = [gpu.asnumpy(a).ravel() for a in (data, weight, *moment)]
    for g, v in zip(got, want, strict=True):
        np.testing.assert_allclose(g, v, rtol=0, atol=(1e-12 if double else 1e-5) * np.abs(v).max())
