"""The closed form over normalisation, offset and noise against a brute-force numerical integral."""

import numpy as np
import pytest
from scipy.integrate import simpson

from cryopipe.bioem.likelihood import best_norm_offset, log_constant, log_kernel


def _brute_force(obs, cal, points=161, width=9.0):
    """ln of the integral over N, mu in R and lambda > 0 of (2 pi lambda^2)^(-Np/2) exp(-|obs - N cal - mu|^2 /
    (2 lambda^2)), by Simpson's rule on a grid of +-width standard deviations around the maximum."""
    o, c = obs.ravel(), cal.ravel()
    n = o.size
    design = np.column_stack([c, np.ones(n)])
    (n_hat, mu_hat), *_ = np.linalg.lstsq(design, o, rcond=None)
    smin = ((o - n_hat * c - mu_hat) ** 2).sum()
    lam = np.sqrt(smin / n)
    cov = lam ** 2 * np.linalg.inv(design.T @ design)
    N = n_hat + np.linspace(-width, width, points) * np.sqrt(cov[0, 0])
    M = mu_hat + np.linspace(-width, width, points) * np.sqrt(cov[1, 1])
    T = np.log(lam) + np.linspace(-width, width, points) / np.sqrt(2 * n)  # t = ln lambda
    NN, MM = np.meshgrid(N, M, indexing="ij")
    s = ((o[None, None] - NN[..., None] * c - MM[..., None]) ** 2).sum(-1)  # (N, mu)
    lam2 = np.exp(2 * T)[None, None, :]
    f = -0.5 * n * np.log(2 * np.pi * lam2) - s[..., None] / (2 * lam2) + T[None, None, :]  # + ln(d lambda / dt)
    peak = f.max()
    return peak + np.log(simpson(simpson(simpson(np.exp(f - peak), x=T), x=M), x=N))


def _closed_form(obs, cal, exact):
    co, coo = obs.sum(), (obs ** 2).sum()
    cc, ccc, cco = cal.sum(), (cal ** 2).sum(), (cal * obs).sum()
    return float(log_kernel(co, coo, cc, ccc, cco, obs.size)) + log_constant(obs.size, exact=exact)


@pytest.mark.parametrize("box", [6, 10, 32])
def test_closed_form_equals_brute_force_integral(rng, box):
    cal = rng.normal(size=(box, box)) ** 2
    obs = 0.7 * cal + 3.0 + rng.normal(scale=1.5, size=(box, box))
    assert _closed_form(obs, cal, exact=True) == pytest.approx(_brute_force(obs, cal), abs=1e-3)


def test_bioem_stirling_form_differs_by_a_constant_of_order_one_over_np(rng):
    cal = rng.normal(size=(32, 32))
    obs = 2.0 * cal - 1.0 + rng.normal(scale=3.0, size=(32, 32))
    assert _closed_form(obs, cal, exact=False) == pytest.approx(_brute_force(obs, cal), abs=1e-3)
    for n in (1024, 50176):
        assert log_constant(n, exact=False) - log_constant(n, exact=True) == pytest.approx(-0.92 / n, rel=0.05)


def test_best_norm_offset_is_least_squares(rng):
    cal = rng.normal(size=(8, 8))
    obs = 1.7 * cal - 0.4 + 0.1 * rng.normal(size=(8, 8))
    n_hat, mu_hat = best_norm_offset(obs.sum(), cal.sum(), (cal ** 2).sum(), (cal * obs).sum(), 64)
    ref, *_ = np.linalg.lstsq(np.column_stack([cal.ravel(), np.ones(64)]), obs.ravel(), rcond=None)
    assert (n_hat, mu_hat) == pytest.approx(tuple(ref), rel=1e-12)


def test_degenerate_calculated_image_has_zero_likelihood():
    assert log_kernel(0.0, 64.0, 0.0, 0.0, 0.0, 64) == -np.inf  # empty projection: D = 0
