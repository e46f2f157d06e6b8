import numpy as np
import pytest
from scipy.integrate import quad

from cryopipe.geometry import euler_to_matrix, random_rotations
from cryopipe.simulate.render import project_atoms, render_volume


def test_single_atom_pixel_values_equal_the_line_integral_over_the_pixel():
    sigma, angpix, box = 2.0, 1.5, 16
    r = np.array([[1.3, -2.2, 0.7]])
    img = project_atoms(r, np.array([6.0]), sigma, np.eye(3), box, angpix)

    def density_column(x, y):  # integral over z of a unit-mass 3D Gaussian, numerically
        def g(z):
            return np.exp(-((x - r[0, 0]) ** 2 + (y - r[0, 1]) ** 2 + (z - r[0, 2]) ** 2) / (2 * sigma**2))

        return quad(g, -30, 30)[0] / (2 * np.pi * sigma**2) ** 1.5

    for iy, ix in [(8, 8), (7, 9), (6, 8)]:
        xs = (ix - box // 2 + np.array([-0.5, 0.5])) * angpix
        ys = (iy - box // 2 + np.array([-0.5, 0.5])) * angpix
        ref = 6.0 * quad(lambda y, xs=xs: quad(lambda x: density_column(x, y), *xs)[0], *ys)[0]
        assert img[iy, ix] == pytest.approx(ref, rel=1e-6)


def test_projected_atom_lands_at_A_r():
    angpix, box = 2.0, 64
    r = np.array([[20.0, -10.0, 6.0]])
    A = euler_to_matrix(30.0, 60.0, -45.0)
    img = project_atoms(r, np.array([1.0]), 3.0, A, box, angpix)
    yy, xx = np.mgrid[0:box, 0:box]
    centroid = np.array([(img * xx).sum(), (img * yy).sum()]) / img.sum()
    np.testing.assert_allclose(centroid, (A @ r[0])[:2] / angpix + box // 2, atol=1e-3)
    assert img.sum() == pytest.approx(1.0, abs=1e-9)


def test_volume_sum_along_z_equals_untilted_projection(rng):
    xyz = rng.uniform(-15, 15, (50, 3))
    w = rng.uniform(5, 8, 50)
    vol = render_volume(xyz, w, 2.0, 32, 2.0)
    proj = project_atoms(xyz, w, 2.0, np.eye(3), 32, 2.0)
    np.testing.assert_allclose(vol.sum(0), proj, rtol=1e-4, atol=1e-5)
    assert vol.sum() == pytest.approx(w.sum(), rel=1e-5)


def test_fourier_slice_projection_of_the_map_matches_the_atom_projection(rng):
    """The simulator's exact projections agree with the Fourier-slice projector of its own map."""
    from cryopipe.backend import get_backend
    from cryopipe.projection import Projector

    xyz = rng.uniform(-20, 20, (200, 3))
    w = np.full(200, 6.0)
    box, angpix, sigma = 64, 2.0, 3.0
    vol = render_volume(xyz, w, sigma, box, angpix)
    rots = random_rotations(4, rng)
    fourier = get_backend("cpu").asnumpy(Projector(vol, get_backend("cpu")).project_real(rots))
    for k in range(4):
        exact = project_atoms(xyz, w, sigma, rots[k], box, angpix)
        err = np.linalg.norm(fourier[k] - exact) / np.linalg.norm(exact)
        assert err < 0.03, err
