"""Numerics of the picking core: working grid, template bank, NCC against a direct float64 reference."""

import numpy as np
import pytest

from cryopipe.backend import get_backend
from cryopipe.fourier import next_fast_size
from cryopipe.geometry import euler_to_matrix
from cryopipe.pick.ncc import Correlator, plan_grid, prepare_micrograph
from cryopipe.pick.templates import TemplateStack, build_bank
from cryopipe.projection import Projector


def _direct_ncc(f, t, m, y, x):
    """Roseman's NCC in float64 by direct sums: sum t' f / (M sd_m f) for the window of f centred at (y, x).

    t = m (t0 - mean_m t0) / sd_m t0, so this is the Pearson correlation of t0 and f with weights m.
    """
    b = t.shape[0]
    win = f[y - b // 2 : y + b // 2, x - b // 2 : x + b // 2].astype(np.float64)
    w = m / m.sum()
    sd = np.sqrt((w * win**2).sum() - (w * win).sum() ** 2)
    return (t * win).sum() / (m.sum() * sd)


@pytest.mark.parametrize("own_masks", [False, True])
def test_ncc_equals_direct_pearson_correlation(synth, rng, own_masks):
    """The FFT NCC equals direct sums for every template-rotation; the map is their max, the index the argmax.
    The bank's templates are normalised under their masks: sum t' = 0 and sum t'^2 / m = M."""
    bk = get_backend("cpu")
    tmpl = synth.blob_template()
    masks = None
    if own_masks:  # an off-centre elliptical mask, rotated with the template
        yy, xx = np.mgrid[:48, :48] - 24
        masks = (((xx - 3) / 18.0) ** 2 + (yy / 12.0) ** 2 <= 1).astype(np.float32)[None]
    bank = build_bank(TemplateStack(tmpl[None], 2.0, masks), (1.0, 1.0), 80.0, angular_step=90, invert=False)
    f = rng.normal(size=(96, 110)).astype(np.float32)
    grid = plan_grid(f.shape, 2.0, None)
    work = prepare_micrograph(f, grid, bk)
    c = Correlator(bank, grid, bk, batch_size=3)(work)
    best, arg = bk.asnumpy(c.best), bk.asnumpy(c.index)
    yy, xx = np.mgrid[: f.shape[0], : f.shape[1]]
    basis = np.stack([np.ones(f.size), yy.ravel(), xx.ravel()], axis=1)
    plane = (basis @ np.linalg.lstsq(basis, f.ravel().astype(np.float64), rcond=None)[0]).reshape(f.shape)
    fn = (f - plane) / f.std()  # prepare_micrograph removes the best-fit plane (the scale does not matter to NCC)
    for k in range(len(bank)):
        m = bank.masks if bank.shared_mask else bank.masks[k]
        t = bank.images[k]
        assert abs(t.sum()) < 1e-3 and (t[m > 0] ** 2 / m[m > 0]).sum() == pytest.approx(m.sum(), rel=1e-4)
    for y, x in [(40, 50), (48, 60), (55, 31)]:
        masks = [bank.masks if bank.shared_mask else bank.masks[k] for k in range(len(bank))]
        scores = [_direct_ncc(fn, bank.images[k], masks[k], y, x) for k in range(len(bank))]
        assert best[y, x] == pytest.approx(max(scores), abs=2e-5)
        assert arg[y, x] == int(np.argmax(scores))


def test_grid_is_fft_friendly_and_keeps_square_pixels():
    g = plan_grid((3838, 3710), 1.0, 20.0)
    assert all(next_fast_size(n) == n and n % 2 == 0 for n in g.padded + g.corr)
    sy, sx = g.scale
    assert abs(sy / sx - 1) < 1.0 / g.crop[1]
    assert g.crop[0] / 2 >= g.padded[0] * 1.0 / 20.0 + 2  # low-pass radius + edge below Nyquist
    assert plan_grid((512, 512), 2.5, None).crop == (512, 512)


def test_flat_micrograph_is_none():
    bk = get_backend("cpu")
    assert prepare_micrograph(np.full((64, 64), 3.0, np.float32), plan_grid((64, 64), 1.0, 8.0), bk) is None


def test_rotated_template_is_projection_at_psi(rng):
    """The bank's template at psi equals the projection at (rot, tilt, psi): rlnAnglePsi is RELION's psi."""
    bk = get_backend("cpu")
    vol = np.zeros((48, 48, 48), np.float32)
    zz, yy, xx = np.mgrid[:48, :48, :48] - 24
    for cx, cy, cz, s in [(0, 0, 0, 4.0), (9, 2, -3, 2.5), (-4, 8, 5, 2.0)]:
        vol += np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2 + (zz - cz) ** 2) / (2 * s * s))
    proj = Projector(vol, bk)
    rot, tilt = 30.0, 60.0
    t0 = bk.asnumpy(proj.project_real(euler_to_matrix(rot, tilt, 0.0)[None]))
    bank = build_bank(TemplateStack(t0, 1.0), (1.0, 1.0), 40.0, angular_step=30, invert=False)
    for k in (1, 4, 7):
        psi = bank.psi[k]
        ref = bk.asnumpy(proj.project_real(euler_to_matrix(rot, tilt, psi)[None]))
        want = build_bank(TemplateStack(ref, 1.0), (1.0, 1.0), 40.0, angular_step=360, invert=False).images[0]
        assert np.corrcoef(bank.images[k].ravel(), want.ravel())[0, 1] > 0.995


def test_template_subsets_combine_to_the_full_map(synth, rng):
    """Max/argmax over two disjoint template subsets (MPI per-template mode) equals the full result."""
    bk = get_backend("cpu")
    bank = build_bank(TemplateStack(np.stack([synth.blob_template(), synth.blob_template(variant=1)]), 2.0),
                      (2.0, 2.0), 80.0, angular_step=20, lowpass_A=8.0)
    f, _ = synth.micrograph(rng, n=6)
    grid = plan_grid(f.shape, 2.0, 8.0)
    work = prepare_micrograph(f, grid, bk, 8.0)
    full = Correlator(bank, grid, bk, null=True)(work)
    a = Correlator(bank, grid, bk, subset=slice(0, 13), null=True)(work)
    b = Correlator(bank, grid, bk, subset=slice(13, None), null=True)(work)
    take_b = b.best > a.best
    np.testing.assert_array_equal(np.where(take_b, b.best, a.best), full.best)
    np.testing.assert_array_equal(np.where(take_b, b.index, a.index), full.index)
    np.testing.assert_array_equal(np.maximum(a.null, b.null), full.null)


def test_gpu_scores_equal_cpu(synth, rng, bk):
    """The same NCC map and argmax on the backend under test as on the CPU (float32 tolerance)."""
    cpu = get_backend("cpu")
    bank = build_bank(TemplateStack(synth.blob_template()[None], 2.0), (2.0, 2.0), 80.0, lowpass_A=8.0)
    f, _ = synth.micrograph(rng, n=6)
    grid = plan_grid(f.shape, 2.0, 8.0)
    ref = Correlator(bank, grid, cpu, null=True, context_px=10.0)(prepare_micrograph(f, grid, cpu, 8.0))
    got = Correlator(bank, grid, bk, null=True, context_px=10.0)(prepare_micrograph(f, grid, bk, 8.0))
    for name in ("best", "null", "mean", "sd"):
        np.testing.assert_allclose(bk.asnumpy(getattr(got, name)), getattr(ref, name), atol=2e-5, err_msg=name)
    assert (bk.asnumpy(got.index) == ref.index).mean() > 0.999
