"""E-step and M-step of the shared 3D EM machinery on small simulated stacks (box 40 px at 4 A/px).

Smaller than the issue's classification workload (a few thousand particles at 64 px): 60-120 particles of one
conformation, the true map as reference, so that each test takes seconds.
"""

import numpy as np
import pytest

from cryopipe.backend import get_backend
from cryopipe.em3d import mstep
from cryopipe.em3d.estep import (
    EStep,
    SearchSpace,
    _bincount_rows,
    _weighted_row_sums,
    local_candidates,
    orientation_cell,
)
from cryopipe.em3d.model import initial_sigma2, reference_scale
from cryopipe.em3d.particles import load_particles
from cryopipe.em3d.sampling import OrientationGrid, translation_grid
from cryopipe.em3d.synthetic import SyntheticSpec, simulate_particles
from cryopipe.fourier import fsc, shift_phase
from cryopipe.geometry import axis_angle_to_matrix, euler_to_matrix, random_rotations, rotation_angle_between
from cryopipe.parallel import SerialComm


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    spec = SyntheticSpec(n=120, snr=1.0, models=("conformation_1",), fractions=(1.0,), seed=3)
    truth = simulate_particles(spec, tmp_path_factory.mktemp("em3d"))
    particles = load_particles(truth["star"])
    cpu = get_backend("cpu")
    idx = np.arange(len(particles))
    ref = truth["maps"]["conformation_1"].astype(np.float64)
    ref *= reference_scale(ref, particles, idx, 8, cpu, SerialComm())
    return truth, particles, ref, initial_sigma2(particles, idx, SerialComm())


def _estep(dataset, bk, maps=None, order=2, r_max=10):
    truth, particles, ref, sigma2 = dataset
    maps = ref[None] if maps is None else maps
    search = SearchSpace(OrientationGrid(order), translation_grid(2, 1), 1.0)
    return EStep(particles, maps.astype(np.float32), np.log(np.full(len(maps), 1 / len(maps))), sigma2, 2.0,
                 r_max, search, bk)


def test_coarse_scores_equal_direct_squared_differences(dataset):
    """The matrix-product scores equal x2 - sum_p w |shift(X, t) - C P|^2 computed pixel by pixel."""
    truth, particles, ref, sigma2 = dataset
    cpu = get_backend("cpu")
    e = _estep(dataset, cpu, order=0, r_max=6)
    idx = np.arange(4)
    x, c, w = e.batch_data(idx)
    scores = e.coarse_scores(x, c, w)
    spec = shift_phase(particles.spectra[idx].astype(np.complex128), np.zeros((4, 2)), particles.box)
    for t, shift in enumerate(e.trans):
        xt = shift_phase(spec, np.broadcast_to(shift, (4, 2)), particles.box).reshape(4, -1)[:, e.pix.flat]
        diff = xt[:, None, :] - c[:, None, :] * e.coarse[None]
        direct = (w * np.abs(xt) ** 2).sum(-1)[:, None] - (w[:, None, :] * np.abs(diff) ** 2).sum(-1)
        np.testing.assert_allclose(scores[:, t], direct, rtol=1e-4, atol=1e-3 * np.abs(direct).max())


def test_estep_recovers_orientations_and_mstep_the_map(dataset):
    """Median angular error <= the fine sampling (7.5 deg), origins within 0.5 px, reconstruction FSC > 0.8."""
    truth, particles, ref, sigma2 = dataset
    cpu = get_backend("cpu")
    e = _estep(dataset, cpu)
    res = e.run(np.arange(len(particles)), np.zeros((len(particles), 2)))
    err = rotation_angle_between(euler_to_matrix(*res.euler.T), truth["rotations"])
    assert np.median(err) <= e.search.grid.fine_sampling_deg
    origin_err = np.abs(res.origin_px - truth["origins_A"] / truth["angpix"])
    assert np.median(origin_err) < 0.5
    assert np.all(res.max_prob > 0) and np.all(res.max_prob <= 1) and np.all(res.n_significant >= 1)
    half1, half2 = res.backprojectors[0]
    ssnr = mstep.ssnr_from_fsc(mstep.half_fsc(half1, half2, cpu, e.r_max))
    half1.add(half2)
    vol, tau2 = mstep.reconstruct(half1, ssnr, 4.0, particles.box, cpu)
    curve = fsc(vol, truth["maps"]["conformation_1"])
    assert curve[1:10].min() > 0.8
    assert mstep.resolution_shell(ssnr) >= 8
    new_sigma2 = mstep.update_sigma2(sigma2, res)
    assert np.all(new_sigma2[0, 1:11] < sigma2[0, 1:11])  # the initial estimate holds the signal too


def test_class_mask_forces_classes(dataset):
    truth, particles, ref, sigma2 = dataset
    cpu = get_backend("cpu")
    e = _estep(dataset, cpu, maps=np.stack([ref, ref]), order=1, r_max=6)
    n = len(particles)
    mask = np.zeros((n, 2), bool)
    mask[np.arange(n), np.arange(n) % 2] = True
    res = e.run(np.arange(n), np.zeros((n, 2)), class_mask=mask)
    assert np.array_equal(res.best_class, np.arange(n) % 2)
    assert res.class_weight == pytest.approx([n / 2, n / 2], rel=0.01)


@pytest.mark.gpu
def test_gpu_equals_cpu(dataset):
    cpu, gpu = get_backend("cpu"), get_backend("gpu")
    n = len(dataset[1])
    a = _estep(dataset, cpu).run(np.arange(n), np.zeros((n, 2)))
    b = _estep(dataset, gpu).run(np.arange(n), np.zeros((n, 2)))
    same = a.best_class == b.best_class
    assert np.mean(rotation_angle_between(euler_to_matrix(*a.euler.T), euler_to_matrix(*b.euler.T)) < 1e-3) > 0.95
    assert same.all()
    np.testing.assert_allclose(a.loglik, b.loglik, rtol=1e-4, atol=1e-2)
    np.testing.assert_allclose(a.sigma2_sum, b.sigma2_sum, rtol=1e-3)
    va = mstep.reconstruct(a.backprojectors[0][0], np.ones(21), 4.0, 40, cpu)[0]
    vb = mstep.reconstruct(b.backprojectors[0][0], np.ones(21), 4.0, 40, gpu)[0]
    assert fsc(va, vb)[1:11].min() > 0.999


def test_local_search_around_previous_orientations(dataset):
    """Local searches (Gaussian prior of 10 deg around each particle's previous orientation, perturbed by ~8 deg
    from the truth) recover the orientations as the global search does."""
    truth, particles, ref, sigma2 = dataset
    cpu = get_backend("cpu")
    n = len(particles)
    rng = np.random.default_rng(1)
    axis = rng.standard_normal((n, 3))
    prior = truth["rotations"] @ axis_angle_to_matrix(axis, np.full(n, 8.0))
    search = SearchSpace(OrientationGrid(2), translation_grid(2, 1), 1.0, local_sigma_deg=10.0)
    e = EStep(particles, ref[None].astype(np.float32), np.zeros(1), sigma2, 2.0, 10, search, cpu)
    res = e.run(np.arange(n), np.zeros((n, 2)), prior_rotations=prior)
    err = rotation_angle_between(euler_to_matrix(*res.euler.T), truth["rotations"])
    assert np.median(err) <= search.grid.fine_sampling_deg
    assert np.all(rotation_angle_between(euler_to_matrix(*res.euler.T), prior) <= 3 * 10.0 + 15.0)


@pytest.mark.parametrize("order,symmetry,sigma", [(2, "C1", 15.0), (3, "C1", 7.5), (2, "D2", 15.0), (3, "C1", 1.0)])
def test_local_candidates_equal_the_exhaustive_search(order, symmetry, sigma):
    """The direction-prefiltered candidates are exactly the orientations within 3 s.d. of each prior (plus its
    nearest), found by measuring the angle to every orientation of the grid, for each of K = 2 classes."""
    grid = OrientationGrid(order, symmetry)
    prior = random_rotations(40, np.random.default_rng(order))
    cand, valid, ctab, crot = local_candidates(prior, grid, sigma, 2)
    rot = euler_to_matrix(*grid.euler(np.arange(grid.size)).T)  # computed here, not from the grid's table
    ang = rotation_angle_between(prior[:, None], rot[None])
    want = ang <= 3 * sigma
    want[np.arange(len(prior)), ang.argmin(axis=1)] = True
    got = np.zeros((len(prior), 2 * grid.size), dtype=bool)
    for b in range(len(prior)):
        got[b, ctab[cand[b][valid[b]]]] = True
    np.testing.assert_array_equal(got, np.tile(want, (1, 2)))
    np.testing.assert_allclose(crot, np.tile(rot, (2, 1, 1))[ctab])


def test_orientation_cells_gather_near_rotations():
    """Rotations 2 deg apart mostly share a cell; random rotations are spread over the 576 cells."""
    rng = np.random.default_rng(0)
    a = random_rotations(2000, rng)
    b = axis_angle_to_matrix(rng.standard_normal((2000, 3)), np.full(2000, 2.0)) @ a
    assert np.mean(orientation_cell(a) == orientation_cell(b)) > 0.8
    assert len(np.unique(orientation_cell(a))) > 500


def test_row_sums_on_the_cpu_equal_scattered_adds():
    """The CPU's sparse-product row sums give what np.add.at gives: rows summed by index (repeats accumulate), and
    weighted rows of a dense block summed without forming them."""
    rng = np.random.default_rng(4)
    idx, owner = rng.integers(0, 7, 300), rng.integers(0, 5, 300)
    rows, dense, w = rng.standard_normal((300, 11)).astype(np.float32), rng.standard_normal((5, 11)), rng.random(300)
    want = np.zeros((9, 11))
    np.add.at(want, idx, rows.astype(np.float64))
    np.testing.assert_allclose(_bincount_rows(idx, rows.astype(np.float64), 9, np), want, rtol=1e-12, atol=1e-12)
    want = np.zeros((9, 11))
    np.add.at(want, idx, w[:, None] * dense[owner])
    np.testing.assert_allclose(_weighted_row_sums(idx, owner, w, dense, 9, np), want, rtol=1e-12, atol=1e-12)
