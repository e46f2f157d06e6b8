"""PointModel.render: the map whose projections along the axes are the exact point projections."""

import numpy as np
import pytest

from cryopipe.backend import get_backend
from cryopipe.bioem.forward import MapModel, PointModel
from cryopipe.errors import InputError


def _model():
    rng = np.random.default_rng(0)
    return PointModel(rng.normal(0, 8, (300, 3)), rng.uniform(1, 8, 300), 1.8)


def test_sum_along_z_is_the_exact_projection_and_slices_agree():
    pm, bk = _model(), get_backend("cpu")
    vol = pm.render(48, 2.0)
    assert vol.sum() == pytest.approx(pm.weight.sum(), rel=1e-6)  # all points well inside the box
    exact = pm.project(np.eye(3)[None], 48, 2.0, bk)[0]
    np.testing.assert_allclose(vol.sum(axis=0), exact, atol=1e-9 * exact.max())
    rot = np.array([[[0.0, 0, 1], [0, 1, 0], [-1, 0, 0]]])  # 90 deg about y: image x is the model's z
    side = pm.project(rot, 48, 2.0, bk)[0]  # img[y, x]
    np.testing.assert_allclose(vol.sum(axis=2).T, side, atol=1e-9 * side.max())
    spec = np.asarray(MapModel(vol, 2.0).spectra(np.eye(3)[None], bk))[0]
    ref = np.fft.rfft2(np.fft.ifftshift(exact))
    cc = (spec * ref.conj()).sum().real / np.sqrt((abs(spec) ** 2).sum() * (abs(ref) ** 2).sum())
    assert cc > 0.999


def test_spheres_are_not_rendered():
    pm = PointModel(np.zeros((1, 3)), 1.0, 2.0, "sphere")
    with pytest.raises(InputError, match="Gaussian"):
        pm.render(16, 1.0)
