"""The driver shared by class3d and refine3d: parameter resolution (defaults, checkpoint options, casting), the
checks of the shared options, and the resolution schedule."""

import pytest

from cryopipe.class3d import Class3DParams
from cryopipe.em3d import driver
from cryopipe.em3d.runner import check_options
from cryopipe.errors import InputError
from cryopipe.refine3d import Refine3DParams


def test_resolution_increment_scales_with_the_box():
    assert driver.resolution_increment(360) == 10
    assert driver.resolution_increment(32) == 3  # at least 3
    assert driver.resolution_increment(128) == 4


@pytest.mark.parametrize("cls", [Class3DParams, Refine3DParams])
def test_parameters_left_out_take_defaults_or_the_checkpoints_values(cls):
    params = driver.given(cls, seed=7)
    assert params.seed == 7 and params.symmetry is None and params.particle_diameter is None
    fresh = driver.with_defaults(params)
    assert fresh == cls(seed=7)
    # checkpoint options come back from STAR as str/int/float: cast to the field's type ("2.0" -> 2)
    stored = {**{k: str(v) for k, v in driver.with_defaults(params).__dict__.items() if v is not None},
              "healpix_order": "2.0", "particle_diameter": 144, "particles": "/data/p.star"}
    merged = check_options(stored, driver.given(cls, max_significant=50).__dict__, fixed=("symmetry",))
    resumed = driver.params_from_options(cls, merged)
    assert resumed.healpix_order == 2 and isinstance(resumed.healpix_order, int)
    assert resumed.particle_diameter == 144.0 and isinstance(resumed.particle_diameter, float)
    assert resumed.max_significant == 50 and resumed.symmetry == "C1" and resumed.seed == 7
    assert driver.params_from_options(cls, {}) == cls()  # options an older checkpoint lacks: the defaults


def test_a_fixed_option_changed_on_continue_names_its_flag():
    with pytest.raises(InputError) as exc:
        check_options({"particle_diameter": 130.0}, {"particle_diameter": 150.0}, ("particle_diameter",),
                      driver.FLAGS)
    assert exc.value.field == "--diameter"
    with pytest.raises(InputError) as exc:
        check_options({"ini_high": 60.0}, {"ini_high": 50.0}, ("ini_high",), driver.FLAGS)
    assert exc.value.field == "--ini-high"


@pytest.mark.parametrize("cls", [Class3DParams, Refine3DParams])
@pytest.mark.parametrize("field, value, flag", [
    ("ini_high", 0.0, "--ini-high"), ("healpix_order", 9, "--healpix-order"), ("offset_step", 0.0, "--offset-step"),
    ("offset_range", -1.0, "--offset-range"), ("particle_diameter", -5.0, "--diameter"),
    ("tau2_fudge", 0.0, "--tau2-fudge"), ("max_significant", 0, "--max-significant"),
    ("symmetry", "X7", "--symmetry")])
def test_both_drivers_check_the_shared_options_alike(cls, field, value, flag):
    with pytest.raises(InputError) as exc:
        cls(**{field: value}).validate()
    assert exc.value.field == flag
