"""Forward model: projections of points and maps in cryopipe's conventions."""

import numpy as np
import pytest

from cryopipe.bioem.forward import MapModel, PointModel
from cryopipe.geometry import euler_to_matrix
from cryopipe.simulate.render import project_atoms, render_volume


def test_gaussian_points_equal_the_exact_simulator_projection(bk, rng):
    xyz = rng.normal(0, 8, (40, 3))
    w = rng.uniform(5, 10, 40)
    rot = euler_to_matrix([10.0, 70.0], [40.0, 100.0], [-30.0, 5.0])
    got = bk.asnumpy(PointModel(xyz, w, 1.8).project(rot, 48, 2.0, bk))
    for k in range(2):
        np.testing.assert_allclose(got[k], project_atoms(xyz, w, 1.8, rot[k], 48, 2.0), atol=1e-6 * w.sum())


def test_spheres_keep_the_total_electrons_and_follow_bioem_layout(bk):
    model = PointModel([[4.0, 0.0, 0.0], [0.0, -2.0, 1.0]], [10.0, 30.0], [3.0, 1.0], "sphere")
    img = bk.asnumpy(model.project(np.eye(3), 16, 2.0, bk, axes=(0, 1)))[0]
    assert img.sum() == pytest.approx(40.0)
    # I[x][y]: the small point in its pixel (8, 7); the 3 A sphere on the 3 x 3 pixels (d < a) around (10, 8)
    assert np.count_nonzero(img) == 1 + 9 and np.count_nonzero(img[9:12, 7:10]) == 9
    sphere = img[9:12, 7:10]
    assert sphere[1, 1] == sphere.max() and np.allclose(sphere, sphere.T) and np.allclose(sphere, sphere[::-1])


def test_map_projection_agrees_with_point_projection(bk):
    rng = np.random.default_rng(3)
    xyz = rng.normal(0, 6, (60, 3))
    w = np.full(60, 6.0)
    vol = render_volume(xyz, w, 2.5, 48, 2.0)
    rot = euler_to_matrix(30.0, 60.0, 90.0)[None]
    spec = bk.asnumpy(MapModel(vol, 2.0).spectra(rot, bk))[0]
    img = np.fft.fftshift(np.fft.irfft2(spec, s=(48, 48)))
    ref = project_atoms(xyz, w, 2.5, rot[0], 48, 2.0)
    assert np.corrcoef(img.ravel(), ref.ravel())[0, 1] > 0.99
