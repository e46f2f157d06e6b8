"""Rotational correlation by polar FFT + ring contraction: against a direct float64 sum, and on projections."""

import numpy as np
import pytest

from cryopipe.backend import get_backend
from cryopipe.class2d.align import Aligner, shift_grid
from cryopipe.class2d.polar import PolarGrid, PolarSampler
from cryopipe.errors import InputError
from cryopipe.fourier import lowpass
from cryopipe.geometry import euler_to_matrix
from cryopipe.simulate.complex import build_models, electrons_of
from cryopipe.simulate.render import project_atoms


def test_shift_grid():
    g = shift_grid(3, 1)
    assert g.shape == (49, 2) and tuple(g[0]) == (-3, -3) and tuple(g[1]) == (-2, -3) and tuple(g[24]) == (0, 0)
    np.testing.assert_array_equal(shift_grid(0, 1), [[0.0, 0.0]])
    assert shift_grid(1.5, 0.5).shape == (49, 2)
    for bad in [(-1, 1), (2, 3), (2, 0)]:
        with pytest.raises(InputError):
            shift_grid(*bad)


def _normalised(a, w):
    """Polar samples (P, R, ...) float64 minus the weighted disc mean, divided by the weighted norm."""
    wb = w.reshape((1, -1) + (1,) * (a.ndim - 2))
    a = a - (a * wb).sum((0, 1)) / (a.shape[0] * w.sum())
    return a / np.sqrt((a * a * wb).sum((0, 1)))


def test_contraction_equals_the_direct_rotational_correlation(cpu, rng):
    """scores[-j] (f=0) = sum_r r sum_theta x(r, theta) y(r, theta + j step); scores[j] (mirrored block) is the
    same with the particle flipped x -> -x, all computed here directly in float64."""
    n, grid = 32, PolarGrid(10, 24)
    images = lowpass(rng.normal(size=(3, n, n)), 1.0, 4.0).astype(np.float32)
    refs = lowpass(rng.normal(size=(2, n, n)), 1.0, 4.0).astype(np.float32)
    aligner = Aligner(grid, n, 1.0, 1.0, cpu, mirrors=True)
    cc = aligner.scores(images, aligner.references(refs))  # (P, 2K, S, B)
    w = grid.radii
    x = _normalised(PolarSampler(grid, aligner.shifts, n, cpu)(images).astype(np.float64), w)  # (P, R, S, B)
    y = _normalised(PolarSampler(grid, np.zeros((1, 2)), n, cpu)(refs)[:, :, 0].astype(np.float64), w)
    p = grid.n_angles
    flipped = x[(p // 2 - np.arange(p)) % p]  # theta -> pi - theta: the particle mirrored x -> -x
    for j in range(p):
        y_rot = np.roll(y, -j, axis=0)  # y(theta + j step)
        direct = np.einsum("prsb,prk,r->ksb", x, y_rot, w)
        direct_m = np.einsum("prsb,prk,r->ksb", flipped, y_rot, w)
        np.testing.assert_allclose(cc[(-j) % p, :2], direct, atol=2e-5)
        np.testing.assert_allclose(cc[j, 2:], direct_m, atol=2e-5)
    assert np.abs(cc).max() <= 1.0 + 1e-5


@pytest.fixture(scope="module")
def views():
    """Noise-free projections: a reference and 10 particles = shift(rotate(F ref, psi), s), truth known."""
    model = build_models(2024)["conformation_1"]
    w = electrons_of(model)
    rng = np.random.default_rng(3)
    ref_angles = (210.0, 30.0)
    psi = rng.uniform(-180, 180, 10)
    shift = rng.uniform(-2.2, 2.2, (10, 2))  # inside the grid: no parabola at its edge
    mirror = np.arange(10) % 3 == 0
    flip = np.diag([-1.0, 1.0, 1.0])
    a0 = euler_to_matrix(*ref_angles, 0.0)
    particles = np.stack([
        project_atoms(model.xyz, w, 1.8, euler_to_matrix(0, 0, p) @ (flip if m else np.eye(3)) @ a0, 64, 2.5,
                      offset_px=tuple(s))
        for p, s, m in zip(psi, shift, mirror, strict=True)
    ])
    refs = np.stack([project_atoms(model.xyz, w, 1.8, euler_to_matrix(*v, 0.0), 64, 2.5)
                     for v in [(330.0, 60.0), ref_angles, (120.0, 150.0)]])
    return particles.astype(np.float32), refs.astype(np.float32), psi, shift, mirror


def test_alignment_recovers_reference_psi_shift_and_mirror(bk, views):
    particles, refs, psi, shift, mirror = views
    aligner = Aligner(PolarGrid.make(26), 64, 3.0, 1.0, bk, mirrors=True)
    al = aligner.align(bk.asarray(particles), aligner.references(bk.asarray(refs)))
    np.testing.assert_array_equal(al.ref, 1)
    np.testing.assert_array_equal(al.mirror, mirror)
    assert np.abs((al.psi - psi + 180) % 360 - 180).max() < 1.0  # step 2.1 deg, parabola-refined
    assert np.abs(al.shift - shift).max() < 0.15
    assert al.score.min() > 0.99


def test_alignment_without_mirrors_never_reports_one(cpu, views):
    particles, refs, *_ = views
    aligner = Aligner(PolarGrid.make(26), 64, 3.0, 1.0, cpu)
    assert not aligner.align(particles, aligner.references(refs)).mirror.any()
    assert aligner.flops(10, 3) == 8.0 * (aligner.grid.n_angles // 2 + 1) * 10 * 49 * 26 * 3


@pytest.mark.gpu
def test_gpu_scores_equal_cpu(rng):
    n = 48
    images = lowpass(rng.normal(size=(20, n, n)), 1.0, 4.0).astype(np.float32)
    refs = lowpass(rng.normal(size=(4, n, n)), 1.0, 4.0).astype(np.float32)
    out = []
    for device in ("cpu", "gpu"):
        bk = get_backend(device)
        aligner = Aligner(PolarGrid.make(20), n, 2.0, 1.0, bk, mirrors=True)
        refs_ft = aligner.references(bk.asarray(refs))
        out.append((bk.asnumpy(aligner.scores(bk.asarray(images), refs_ft)),
                    aligner.align(bk.asarray(images), refs_ft)))
    (cc_cpu, al_cpu), (cc_gpu, al_gpu) = out
    np.testing.assert_allclose(cc_gpu, cc_cpu, atol=2e-5)
    np.testing.assert_array_equal(al_gpu.ref, al_cpu.ref)
    np.testing.assert_allclose(al_gpu.psi, al_cpu.psi, atol=1e-2)
    np.testing.assert_allclose(al_gpu.shift, al_cpu.shift, atol=1e-3)
