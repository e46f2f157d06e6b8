"""Units of the CTF estimator: RELION's CTF on the band pixels, the NCC as a matrix product, the coarse grid,
RELION's angle conventions, the quadratic step, tiles, the background, the fit resolution and the plane."""

import numpy as np
import pytest

from cryopipe.ctf import CTFParams, ctf_2d
from cryopipe.ctfestimate import fit as fitmod
from cryopipe.ctfestimate import search as srch
from cryopipe.ctfestimate.spectrum import SpectrumGrid, subtract_background, tile_centres, tile_power, tile_starts

OPTICS = srch.Optics(300.0, 2.7, 0.1)
GRID = SpectrumGrid(128, 1.5, 1 / 30, 1 / 5)


def _theta(u, v, angle, phase_deg=0.0):
    mean, dev = 0.5 * (u + v), 0.5 * (u - v)
    t = np.deg2rad(2 * angle)
    return np.array([mean, dev * np.cos(t), dev * np.sin(t), np.deg2rad(phase_deg)])


@pytest.mark.parametrize("u,v,angle,phase", [(20000.0, 19000.0, 30.0, 0.0), (8000.0, 7900.0, 130.0, 70.0)])
def test_band_phase_is_relions_ctf(cpu, u, v, angle, phase):
    """sin(g) from the linear phase model equals cryopipe.ctf.ctf_2d (RELION's CTF) on every band pixel."""
    band = srch.band_pixels(GRID, OPTICS, np)
    g2 = srch.augment(_theta(u, v, angle, phase)[None]).astype(np.float64) @ band.features.astype(np.float64)
    ref = np.asarray(ctf_2d(CTFParams(u, v, angle, 300.0, 2.7, 0.1, phase_shift=phase), 128, 1.5), np.float64)
    np.testing.assert_allclose(np.sin(0.5 * g2[0]), ref.reshape(-1)[band.index], atol=2e-4)


def test_to_relion_round_trip():
    r = srch.to_relion(np.stack([_theta(20000, 19000, 30.0, 10.0), _theta(15000, 14000, 170.0)]))
    np.testing.assert_allclose(r["rlnDefocusU"], [20000, 15000])
    np.testing.assert_allclose(r["rlnDefocusV"], [19000, 14000])
    np.testing.assert_allclose(r["rlnDefocusAngle"], [30.0, 170.0])
    np.testing.assert_allclose(r["rlnPhaseShift"], [10.0, 0.0], atol=1e-9)


def test_scores_are_normalised_cross_correlations(cpu, rng):
    band = srch.band_pixels(GRID, OPTICS, np)
    data = rng.standard_normal((3, band.size)).astype(np.float32)
    d0, norms = data - data.mean(1, keepdims=True), np.sqrt(((data - data.mean(1, keepdims=True)) ** 2).sum(1))
    thetas = np.stack([_theta(20000, 19500, 10), _theta(9000, 9000, 0), _theta(30000, 29000, 100, 40)])
    shared = srch.scores_shared(srch.augment(thetas), band, d0, norms, cpu)
    batched = srch.scores_batched(np.repeat(srch.augment(thetas)[None], 3, axis=0), band, d0, norms, cpu)
    for i, t in enumerate(thetas):
        ctf2 = np.sin(0.5 * (srch.augment(t[None]).astype(np.float64) @ band.features.astype(np.float64))[0]) ** 2
        for b in range(3):
            assert shared[i, b] == pytest.approx(np.corrcoef(ctf2, data[b])[0, 1], abs=2e-4)
            assert batched[b, i] == pytest.approx(shared[i, b], abs=1e-5)


def test_coarse_grid_and_starts():
    grid = srch.coarse_grid((3000.0, 5000.0), 1000.0, 500.0, 60.0)
    assert set(np.round(grid[:, 0])) == {3000.0, 3500.0, 4000.0, 4500.0, 5000.0}
    assert np.hypot(grid[:, 1], grid[:, 2]).max() <= 500.0 + 1e-9 and len(np.unique(grid[:, 3])) == 3
    scores = -np.abs(grid[:, 0] - 4000.0)[:, None] + 0.0 * grid[:, 1:2]
    starts = srch.best_starts(scores, grid, 2, 1000.0)
    assert starts[0, 0, 0] == 4000.0 and abs(starts[0, 1, 0] - 4000.0) >= 1000.0


def test_quadratic_step_finds_the_vertex():
    offsets = np.array(np.meshgrid(*[[-1.0, 0.0, 1.0]] * 3, indexing="ij")).reshape(3, -1).T
    vertex = np.array([0.3, -0.5, 0.1])
    scores = -((offsets - vertex) ** 2 * [1.0, 2.0, 0.5]).sum(1) + 0.2 * (offsets[:, 0] - 0.3) * (offsets[:, 1] + 0.5)
    np.testing.assert_allclose(srch._quadratic_step(offsets, scores[None])[0], vertex, atol=1e-9)


def test_tiles_overlap_by_half_and_cover():
    starts = tile_starts(1024, 256)
    assert starts[0] == 0 and starts[-1] == 768 and np.all(np.diff(starts) == 128)
    assert len(tile_starts(1000, 512)) == 3 and tile_starts(1000, 512)[-1] == 488
    assert tile_centres((512, 768), 256).shape == (3 * 5, 2)


def test_tile_power_of_white_noise_and_of_a_ramp(cpu, rng):
    noise = 2.0 * rng.standard_normal((1, 512, 512)).astype(np.float32)
    mean, tiles = tile_power(noise, 128, cpu, keep_tiles=True)
    assert mean.shape == (1, 128, 65) and tiles.shape == (1, 49, 128, 65)
    assert float(mean[0, 10:50, 5:50].mean()) == pytest.approx(4.0, rel=0.05)
    yy, xx = np.mgrid[0:512, 0:512].astype(np.float32)
    ramp, _ = tile_power((3.0 * xx - 2.0 * yy + 7.0)[None], 128, cpu)
    assert float(ramp.max()) < 1e-6 * float(mean.max())  # mean and gradient are removed per tile


def test_background_subtraction_leaves_rings_only(cpu):
    """A smooth background plus CTF^2 rings: what is left correlates with the rings and has no slope."""
    s = np.hypot(np.fft.fftfreq(128, 1.5)[:, None], np.fft.rfftfreq(128, 1.5)[None, :])
    rings = np.asarray(ctf_2d(CTFParams(20000.0, 20000.0, 0.0, 300.0, 2.7, 0.1), 128, 1.5))[0] ** 2
    amplitude = (5.0 / (1.0 + (20 * s) ** 2) + 0.3 * rings).astype(np.float32)[None]
    d = np.asarray(subtract_background(amplitude, GRID, cpu))[0]
    band = (s > 1 / 25) & (s < 1 / 5)
    assert np.corrcoef(d[band], rings[band])[0, 1] > 0.9
    assert abs(d[band].mean()) < 0.02


def test_windowed_correlation_matches_corrcoef(rng):
    x, y = rng.standard_normal(50), rng.standard_normal(50)
    c = fitmod.windowed_correlation(x, y, np.full(50, 5))
    assert c[20] == pytest.approx(np.corrcoef(x[15:26], y[15:26])[0, 1])
    assert c[2] == pytest.approx(np.corrcoef(x[0:8], y[0:8])[0, 1])


def test_fit_resolution_is_where_the_rings_end():
    grid = SpectrumGrid(512, 1.0, 1 / 30, 1 / 5)
    s = np.arange(257) / 512.0
    ctf2 = np.sin(OPTICS.phase(s, 15000.0)) ** 2
    profile = np.where(s < 1 / 6.0, ctf2, 0.0) + 0.01 * np.random.default_rng(0).standard_normal(257)
    res, corr, first, last = fitmod.fit_resolution(s, profile, ctf2, np.ones(257), 15000.0, grid, OPTICS)
    assert 5.6 < res < 6.5 and first == 19
    res, *_ = fitmod.fit_resolution(s, np.zeros(257), ctf2, np.ones(257), 15000.0, grid, OPTICS)
    assert res == pytest.approx(30.0) and fitmod.is_flagged(0.5, 10000, res, grid)


def test_plane_fit_is_robust(rng):
    xy = rng.uniform(0, 4096, (60, 2))
    defocus = 15000.0 + 0.8 * (xy[:, 0] - 2048) - 0.3 * (xy[:, 1] - 2048) + rng.normal(0, 10, 60)
    defocus[:5] += 3000.0  # outliers
    a, b, c, rms, kept = fitmod.fit_plane(xy, defocus, np.ones(60), (2048, 2048))
    assert a == pytest.approx(0.8, abs=0.02) and b == pytest.approx(-0.3, abs=0.02)
    assert c == pytest.approx(15000.0, abs=10) and not kept[:5].any() and kept[5:].all() and rms < 15


def test_weights_score_each_spectrum_on_its_own_pixels(cpu, rng):
    """Spectra that score on the band's pixels up to their own radius (a prefix of the pixels sorted by radius, weight
    1, the rest 0) get the NCC of those pixels alone, as a subset of the band would."""
    band = srch.band_pixels(GRID, OPTICS, np)
    u = band.radius_sq(OPTICS)
    order = np.argsort(u, kind="stable")
    limits = [1 / 6.0, 1 / 9.0, 1 / 5.0]
    counts = np.searchsorted(u[order], np.float32(np.square(limits)), side="right")
    head = band.subset(order, np).head(int(counts.max()), np)
    weights = (np.arange(head.size)[None, :] < counts[:, None]).astype(np.float32)
    spectra = rng.standard_normal((3, 128, 65)).astype(np.float32)
    data, norms = srch.band_data(spectra, head, np, weights)
    thetas = np.stack([_theta(20000, 19500, 10), _theta(9000, 9000, 0), _theta(30000, 29000, 100, 40)])
    weighted = srch.scores_batched(np.repeat(srch.augment(thetas)[None], 3, axis=0), head, data, norms, cpu, weights)
    for b, limit in enumerate(limits):
        subset = band.within(limit, OPTICS, np)
        assert subset.size == counts[b]
        d, n = srch.band_data(spectra[b:b + 1], subset, np)
        np.testing.assert_allclose(weighted[b], srch.scores_shared(srch.augment(thetas), subset, d, n, cpu)[:, 0],
                                   atol=2e-5)


def test_batched_fit_resolutions_equal_one_at_a_time():
    grid = SpectrumGrid(512, 1.0, 1 / 30, 1 / 5)
    s = np.arange(257) / 512.0
    rng = np.random.default_rng(1)
    defoci = [15000.0, 8000.0, 30000.0, 15000.0]
    ctf2 = np.stack([np.sin(OPTICS.phase(s, df)) ** 2 for df in defoci])
    profiles = np.stack([np.where(s < 1 / 6.0, ctf2[0], 0.0), np.where(s < 1 / 9.0, ctf2[1], 0.0), ctf2[2],
                         np.zeros(257)]) + 0.01 * rng.standard_normal((4, 257))
    profiles[3] = 0.0  # no rings at all
    counts = np.ones((4, 257))
    counts[2, 60:] = 0  # empty shells bound the search
    res, corr, first, last = fitmod.fit_resolutions(s, profiles, ctf2, counts, np.array(defoci), grid, OPTICS)
    for b in range(4):
        one = fitmod.windowed_correlation(profiles[b], ctf2[b], np.full(257, 5))
        np.testing.assert_allclose(fitmod.windowed_correlation(profiles, ctf2, np.full(257, 5))[b], one)
        r, c, f, l = fitmod.fit_resolution(s, profiles[b], ctf2[b], counts[b], defoci[b], grid, OPTICS)
        assert (r, f, l) == (res[b], first, last[b])
        np.testing.assert_array_equal(c, corr[b])
    assert 5.6 < res[0] < 6.5 and 7.5 < res[1] < 10.0 and last[2] == 59 and res[3] == pytest.approx(30.0)
