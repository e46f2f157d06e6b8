"""The GPU gives the CPU's results (float32 tolerance): spectra, scores and whole fits, per-tile planes included."""

import numpy as np
import pytest

from cryopipe.ctfestimate import CtfEstimateParams, CtfEstimator
from cryopipe.ctfestimate import search as srch
from cryopipe.ctfestimate.spectrum import SpectrumGrid, subtract_background, tile_power


def test_spectra_and_scores_on_each_device(bk, cpu, rng, sim):
    images = np.stack([sim.ice_micrograph(rng, sim.random_truth(rng), size=512, ice_snr=0.2) for _ in range(2)])
    grid = SpectrumGrid(256, 1.5, 1 / 30, 1 / 5)
    optics = srch.Optics(300.0, 2.7, 0.1)
    out = {}
    for name, b in (("cpu", cpu), ("dev", bk)):
        power, tiles = tile_power(b.asarray(images), 256, b, keep_tiles=True)
        d = subtract_background(b.xp.sqrt(power), grid, b)
        band = srch.band_pixels(grid, optics, b.xp)
        data, norms = srch.band_data(d, band, b.xp)
        theta = srch.coarse_grid((5000.0, 40000.0), 1000.0, 2000.0, None)
        scores = srch.scores_shared(b.asarray(srch.augment(theta)), band, data, norms, b)
        out[name] = [b.asnumpy(x) for x in (power, tiles, d, scores)]
    for a, c in zip(out["cpu"], out["dev"], strict=True):
        np.testing.assert_allclose(c, a, rtol=2e-4, atol=2e-4 * float(np.abs(a).max()))


@pytest.mark.gpu
def test_gpu_fits_equal_cpu_fits(gpu, cpu, rng, sim):
    truths = [sim.random_truth(rng) for _ in range(3)]
    images = np.stack([sim.ice_micrograph(rng, t, ice_snr=0.05) for t in truths]
                      + [rng.standard_normal((1024, 1024)).astype(np.float32)])
    fits = {}
    for name, b in (("cpu", cpu), ("gpu", gpu)):
        est = CtfEstimator(CtfEstimateParams(300.0, 2.7, 0.1, tile=512, per_tile=True), 1.5, b)
        fits[name] = est.estimate(images)
    for c, g in zip(fits["cpu"], fits["gpu"], strict=True):
        assert g.flagged == c.flagged
        if c.flagged:
            continue
        rc, rg = c.relion(), g.relion()
        for key in ("rlnDefocusU", "rlnDefocusV"):
            assert rg[key] == pytest.approx(rc[key], abs=5.0)
        if rc["rlnDefocusU"] - rc["rlnDefocusV"] > 300:
            assert abs(sim.angle_error(rg["rlnDefocusAngle"], rc["rlnDefocusAngle"])) < 1.0
        assert g.score == pytest.approx(c.score, abs=1e-3)
        assert g.resolution_A == pytest.approx(c.resolution_A, rel=0.02)
        np.testing.assert_allclose(g.plane[:2], c.plane[:2], atol=0.05)
