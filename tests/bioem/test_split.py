"""Images shared between two backends (a second CPU backend stands in for the GPU) give the plain result."""

import dataclasses
import logging
import time

import numpy as np
import pytest

from cryopipe.backend import get_backend
from cryopipe.bioem import split, stage
from cryopipe.bioem.integrate import integrate
from cryopipe.errors import InputError
from cryopipe.progress import Progress

from .conftest import make_demo_particles
from .test_pruned import synthetic_problem


def _assert_same(got, want, atol=1e-9):
    np.testing.assert_allclose(got.log_sum, want.log_sum, rtol=0, atol=atol)
    np.testing.assert_allclose(got.best_l, want.best_l, rtol=0, atol=atol)
    for name in ("best_orientation", "best_ctf", "best_shift"):
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name))
    np.testing.assert_allclose(got.best_cco, want.best_cco, rtol=1e-9)
    if want.orientation_log_sum is not None:
        np.testing.assert_allclose(got.orientation_log_sum, want.orientation_log_sum, rtol=0, atol=atol)


def _two_cpus():
    main = get_backend("cpu")
    return main, split.cpu_backend(1)


@pytest.mark.parametrize("fraction", [0.0, 0.3, 1.0, "auto"])
def test_shared_images_equal_plain_path(fraction):
    """The shared run gives the plain result, and its progress counts each orientation once, whichever part scores
    it (both parts see every orientation)."""
    main, cpu = _two_cpus()
    prob = synthetic_problem(24, 3, n_orient=17, n_ctf=3, n_images=7)
    want = integrate(prob, main, keep_orientations=True)
    progress = Progress(17, logging.getLogger(__name__), "orientations", enabled=False)
    got, info = split.integrate_shared(prob, main, None, True, fraction, cpu=cpu, progress=progress)
    _assert_same(got, want)
    assert progress.done == 17
    assert info["images_main"] + info["images_cpu"] == 7
    if fraction == "auto":  # rates measured on the first orientations (3 of 17), then the rest split by rate
        assert info["probe_orientations"] == 3 and info["rate_main"] > 0 and info["rate_cpu"] > 0
        assert info["fraction"] == pytest.approx(split.fraction_from_rates(info["rate_main"], info["rate_cpu"]))
    else:
        assert info["images_cpu"] == round(fraction * 7) and info["fraction"] == fraction
        assert (info["rate_cpu"] is None) == (info["images_cpu"] == 0)  # the achieved rates are recorded


def test_shared_float32_parts_match_float64_within_float32_tolerance():
    main, cpu = _two_cpus()
    want = integrate(synthetic_problem(32, 3, n_images=6), main)
    got, _ = split.integrate_shared(synthetic_problem(32, 3, n_images=6, single=True), main, None, False, 0.5,
                                    cpu=cpu)
    np.testing.assert_allclose(got.log_sum, want.log_sum, rtol=1e-4, atol=0.05)
    np.testing.assert_array_equal(got.best_orientation, want.best_orientation)


class _Comm:
    def __init__(self, rank, size):
        self.rank, self.size = rank, size

    def Get_rank(self):
        return self.rank

    def Get_size(self):
        return self.size


def test_shared_images_keep_this_ranks_orientations():
    main, cpu = _two_cpus()
    prob = synthetic_problem(24, 2, n_orient=9, n_images=5)
    for rank in range(2):
        want = integrate(prob, main, _Comm(rank, 2), keep_orientations=True)
        got, _ = split.integrate_shared(prob, main, _Comm(rank, 2), True, "auto", cpu=cpu)
        _assert_same(got, want)


def test_injected_rates_set_the_fraction():
    main, cpu = _two_cpus()
    prob = synthetic_problem(24, 2, n_orient=4, n_images=8)
    got, info = split.integrate_shared(prob, main, None, False, "auto", cpu=cpu, rates=(3.0e6, 1.0e6))
    assert info["fraction"] == pytest.approx(0.25) and (info["images_main"], info["images_cpu"]) == (6, 2)
    assert info["probe_orientations"] == 0  # known rates: no probe
    _assert_same(got, integrate(prob, main))
    assert split.fraction_from_rates(1.0, 0.0) == 0.0 and split.fraction_from_rates(1.0, 1.0) == 0.5
    assert split.n_cpu_images(7, 0.3) == 2 and split.n_cpu_images(3, 1.0) == 3


def test_auto_gives_a_slow_cpu_few_images():
    """A CPU stand-in made slow (each projection call sleeps) gets a small share, from its measured rate."""
    main, cpu = _two_cpus()
    prob = synthetic_problem(24, 2, n_orient=16, n_images=40)
    fast = prob.project

    def project_on(b):
        if b is main:
            return fast

        def slow(o0, o1):
            time.sleep(0.05)
            return fast(o0, o1)
        return slow

    prob = dataclasses.replace(prob, project_on=project_on)
    got, info = split.integrate_shared(prob, main, None, False, "auto", cpu=cpu)
    # probe: 2 orientations; the CPU took 1 image and slept >= 0.05 s, the main part 39 images without sleeping
    assert info["rate_cpu"] < info["rate_main"] / 5
    assert info["fraction"] < 0.15 and info["images_cpu"] == split.n_cpu_images(40, info["fraction"])
    _assert_same(got, integrate(prob, main))


def test_fraction_parsing_and_defaults():
    assert split.parse_fraction("0.25") == 0.25 and split.parse_fraction("auto") == "auto"
    with pytest.raises(InputError):
        split.parse_fraction("1.5")
    with pytest.raises(InputError):
        split.parse_fraction("half")
    assert split.resolve_fraction(None, get_backend("cpu")) == 0.0
    gpu_like = dataclasses.replace(get_backend("cpu"), name="gpu")
    assert split.resolve_fraction(None, gpu_like) == "auto"


def test_stage_shares_images_and_records_the_split(tmp_path):
    star, _, _ = make_demo_particles(tmp_path, n=5, box=32, angpix=5.0, snr=0.5)
    ds = stage.load_particles(star)
    params = stage.RankParams(orientation_order=0, defocus_grid=(-300, 300, 2), max_shift_px=2)
    rng = np.random.default_rng(3)
    model = stage.PointModel(rng.normal(0.0, 8.0, (40, 3)), np.full(40, 6.0), 1.8, "gaussian")  # small: fast
    plain = stage.compute_log_p(model, ds, params, get_backend("cpu"))
    assert plain.split["mode"] == "off"
    shared = stage.compute_log_p(model, ds, dataclasses.replace(params, cpu_fraction="0.4"), get_backend("cpu"))
    assert shared.split["images_cpu"] == 2 and shared.split["mode"] == "fixed"
    assert np.isfinite(plain.log_p).all()
    np.testing.assert_allclose(shared.log_p, plain.log_p, rtol=0, atol=1e-8)
    np.testing.assert_array_equal(shared.best["cpOrientationIndex"], plain.best["cpOrientationIndex"])
