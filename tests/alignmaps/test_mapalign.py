"""cryopipe.mapalign: a rotated, shifted, noisy (and possibly mirrored) copy of a map is aligned back onto it."""

import numpy as np
import pytest

from cryopipe import mapalign
from cryopipe.backend import get_backend
from cryopipe.errors import InputError
from cryopipe.geometry import rotation_angle_between

FAST = {"healpix_order": 1}  # 30 deg grid: the local refinement must bridge up to ~15 deg


def test_rotate_map_and_mirror_match_analytic_maps(case):
    centres, sigmas, weights = case.model
    moved = case.render((centres - case.shift_A) @ case.rotation, sigmas, weights)
    back = mapalign.rotate_map(moved, case.rotation, case.shift_A / case.angpix)
    assert mapalign.masked_ncc(back, case.reference, case.mask()) > 0.999
    np.testing.assert_allclose(mapalign.rotate_map(case.reference, np.eye(3)), case.reference, atol=1e-5)
    mirrored = case.render(centres * [1, 1, -1], sigmas, weights)
    np.testing.assert_allclose(mapalign.mirror(case.reference), mirrored, atol=1e-5)


@pytest.mark.parametrize("hand", [1, -1])
def test_recovers_rotation_shift_and_hand(case, hand):
    result = mapalign.align(case.moving(hand), case.reference, case.angpix, **FAST)
    assert result.hand == hand
    assert result.hand_correlations[hand] > result.hand_correlations[-hand] + 0.1
    assert rotation_angle_between(result.rotation, case.rotation) < 3.0
    assert np.linalg.norm(result.shift_A - case.shift_A) / case.angpix < 1.0
    assert result.correlation > 0.8
    assert result.aligned.shape == (case.box,) * 3 and result.aligned.dtype == np.float32
    assert result.fsc.shape == (case.box // 2 + 1,) and result.fsc[1] > 0.99
    # as good as the noise allows: the FSC of the reference with an unmoved noisy copy of itself
    assert 0.85 * case.fsc05_limit_A < result.resolution_05_A < 1.15 * case.fsc05_limit_A
    assert 2 * case.angpix <= result.resolution_0143_A < result.resolution_05_A


def test_a_map_bigger_than_the_refinement_box_is_refined_cropped(case):
    result = mapalign.align(case.moving(1), case.reference, case.angpix, refine_box=32, **FAST)
    assert result.hand == 1 and result.aligned.shape == (case.box,) * 3
    assert rotation_angle_between(result.rotation, case.rotation) < 3.0
    assert np.linalg.norm(result.shift_A - case.shift_A) / case.angpix < 1.0


def test_an_unrelated_map_correlates_poorly(case):
    related = mapalign.align(case.moving(1), case.reference, case.angpix, **FAST)
    other = mapalign.align(case.unrelated(seed=7), case.reference, case.angpix, **FAST)
    # blob maps resemble each other at low resolution, so the best fit of another one still correlates somewhat
    assert other.correlation < 0.7 and related.correlation > 0.8
    assert other.resolution_05_A > 1.4 * related.resolution_05_A
    pure_noise = mapalign.align(case.noise(seed=8), case.reference, case.angpix, **FAST)
    assert abs(pure_noise.correlation) < 0.1 and pure_noise.resolution_05_A > 50


def test_bad_input_names_the_field(case):
    ref = case.reference
    with pytest.raises(InputError, match=r"\[shape\]: the maps differ in box"):
        mapalign.align(ref[:40, :40, :40], ref, case.angpix)
    with pytest.raises(InputError, match=r"\[moving shape\]"):
        mapalign.align(ref[:, :, :40], ref, case.angpix)
    with pytest.raises(InputError, match=r"\[angpix\]"):
        mapalign.align(ref, ref, 0.0)
    with pytest.raises(InputError, match=r"\[--lowpass\]"):
        mapalign.align(ref, ref, case.angpix, lowpass_A=5.0)
    with pytest.raises(InputError, match=r"\[moving\].*no signal"):
        mapalign.align(np.ones_like(ref), ref, case.angpix)


@pytest.mark.gpu
def test_gpu_equals_cpu(case):
    moving = case.moving(-1)
    cpu = mapalign.align(moving, case.reference, case.angpix, bk=get_backend("cpu"), **FAST)
    gpu = mapalign.align(moving, case.reference, case.angpix, bk=get_backend("gpu"), **FAST)
    # float32 interpolation and FFTs on both: the same path through the search to the same optimum, within rounding
    assert gpu.hand == cpu.hand == -1
    assert rotation_angle_between(gpu.rotation, cpu.rotation) < 0.02
    np.testing.assert_allclose(gpu.shift_A, cpu.shift_A, atol=0.01)
    assert gpu.correlation == pytest.approx(cpu.correlation, rel=1e-4)
    assert gpu.hand_correlations == pytest.approx(cpu.hand_correlations, rel=1e-4)
    np.testing.assert_allclose(gpu.aligned, cpu.aligned, atol=5e-3 * float(np.abs(cpu.aligned).max()))
    np.testing.assert_allclose(gpu.fsc, cpu.fsc, atol=1e-3)
