"""Polar grids, bilinear polar sampling and the rigid transform that brings particles into a class frame."""

import numpy as np
import pytest

from cryopipe.class2d.polar import PolarGrid, PolarSampler, transform_images
from cryopipe.errors import InputError


def test_grid_sizes():
    g = PolarGrid.make(26.3)
    assert g.n_rings == 26 and g.n_angles % 2 == 0 and g.n_angles >= 2 * np.pi * 26.3
    assert PolarGrid.make(26, angular_sampling_deg=5.0).n_angles == 72
    with pytest.raises(InputError):
        PolarGrid.make(1.5)
    with pytest.raises(InputError):
        PolarGrid.make(20, angular_sampling_deg=0.0)


def test_samples_of_a_linear_image_are_exact(bk):
    """Bilinear interpolation reproduces a linear ramp exactly, at every ring, angle and trial shift."""
    n, grid = 32, PolarGrid(10, 24)
    y, x = np.mgrid[:n, :n] - n // 2
    images = np.stack([1.0 + 0.5 * x - 0.25 * y, -2.0 + 0.1 * x + 0.3 * y]).astype(np.float32)
    shifts = np.array([[0.0, 0.0], [1.5, -2.0], [-3.0, 0.25]])
    samples = bk.asnumpy(PolarSampler(grid, shifts, n, bk)(bk.asarray(images)))  # (P, R, S, B)
    px, py = grid.points()
    for b, (c, a, d) in enumerate([(1.0, 0.5, -0.25), (-2.0, 0.1, 0.3)]):
        for s, (sx, sy) in enumerate(shifts):
            expected = c + a * (px + sx) + d * (py + sy)
            np.testing.assert_allclose(samples[:, :, s, b], expected.T, atol=2e-5)


def test_samples_outside_the_box_are_zero(cpu):
    images = np.ones((1, 16, 16), dtype=np.float32)
    samples = PolarSampler(PolarGrid(12, 16), np.zeros((1, 2)), 16, cpu)(images)
    assert samples[:, :7].min() == pytest.approx(1.0)  # rings 1..7 lie inside
    assert samples[0, 8:, 0, 0].max() == 0.0  # along +x, rings from 9 px read beyond the last column


def _blobs(centres, n=48, sigma=3.0):
    """Image (n, n) of unit Gaussian blobs at ``centres`` (k, 2) = (x, y) px from the origin n//2."""
    y, x = np.mgrid[:n, :n] - n // 2
    return sum(np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * sigma**2)) for cx, cy in centres)


@pytest.mark.parametrize("mirror", [False, True])
def test_transform_inverts_the_particle_model(bk, mirror):
    """particle = shift(rotate(F ref, psi), s): the reference's point q appears at A(psi) F q + s."""
    ref_points = np.array([[5.0, 1.0], [-4.0, 6.0], [0.0, -7.0]])
    psi, s = 37.0, np.array([2.3, -1.4])
    c, si = np.cos(np.deg2rad(psi)), np.sin(np.deg2rad(psi))
    A = np.array([[c, si], [-si, c]])
    F = np.diag([-1.0, 1.0]) if mirror else np.eye(2)
    particle = _blobs(ref_points @ (A @ F).T + s)
    back = transform_images(bk.asarray(particle[None].astype(np.float32)), [psi], s[None], [mirror])
    np.testing.assert_allclose(bk.asnumpy(back)[0], _blobs(ref_points), atol=0.03)  # bilinear blur
