"""Checkpoint files of the 3D EM model: exact round trip, --continue parsing and option checks."""

from pathlib import Path

import numpy as np
import pytest

from cryopipe.em3d.model import Model, parse_continue, read_model, write_model
from cryopipe.em3d.runner import check_options
from cryopipe.errors import InputError


def test_model_round_trip_is_exact(tmp_path, rng):
    k, n = 2, 16
    model = Model(maps=rng.standard_normal((k, n, n, n)).astype(np.float32), pdf_class=np.array([1 / 3, 2 / 3]),
                  sigma2=rng.random((1, n // 2 + 1)) * 1e-7, tau2=rng.random((k, n // 2 + 1)) * 1e9,
                  ssnr=rng.random((k, n // 2 + 1)), resolution_A=np.array([12.3, 45.6]), sigma_offset_px=1.2345678901,
                  r_max=7, iteration=3, angpix=4.0, options={"classes": 2, "symmetry": "C1"},
                  extra={"rlnFourierShellCorrelation": rng.random(n // 2 + 1)})
    files = write_model(tmp_path / "run_it003", model)
    assert [f.name for f in files] == ["run_it003_model.star", "run_it003_class001.mrc", "run_it003_class002.mrc"]
    back = read_model(tmp_path / "run_it003")
    for name in ("maps", "pdf_class", "sigma2", "tau2", "ssnr", "resolution_A"):
        np.testing.assert_array_equal(getattr(back, name), getattr(model, name))
    assert (back.sigma_offset_px, back.r_max, back.iteration) == pytest.approx((1.2345678901, 7, 3), rel=1e-15)
    assert back.options == {"classes": 2, "symmetry": "C1"}
    np.testing.assert_array_equal(back.extra["rlnFourierShellCorrelation"], model.extra["rlnFourierShellCorrelation"])


def test_continue_needs_a_checkpoint(tmp_path, rng):
    with pytest.raises(InputError, match="not a checkpoint"):
        parse_continue(tmp_path / "run_it004")
    n = 8
    model = Model(maps=rng.standard_normal((1, n, n, n)).astype(np.float32), pdf_class=np.ones(1),
                  sigma2=np.ones((1, n // 2 + 1)), tau2=np.ones((1, n // 2 + 1)), ssnr=np.ones((1, n // 2 + 1)),
                  resolution_A=np.array([20.0]), sigma_offset_px=1.0, r_max=3, iteration=4, angpix=4.0)
    write_model(tmp_path / "run_it004", model)
    (tmp_path / "run_it004_data.star").write_text("")
    assert parse_continue(tmp_path / "run_it004_class001.mrc") == (tmp_path / "run_it004", 4)


def test_fixed_options_cannot_change_on_continue():
    stored = {"classes": 2, "iterations": 5, "tau2_fudge": 4.0}
    merged = check_options(stored, {"classes": None, "iterations": 9, "tau2_fudge": 4}, fixed=("classes",))
    assert merged == {"classes": 2, "iterations": 9, "tau2_fudge": 4}
    with pytest.raises(InputError, match="cannot change classes"):
        check_options(stored, {"classes": 3}, fixed=("classes",))


def test_model_star_names_its_maps_with_the_published_folder(tmp_path, rng):
    """rlnReferenceImage names each map as RELION does, with the folder the result is published to (it used to be
    the bare file name); a checkpoint is still read from the maps beside its STAR: in the run folder it was written
    to, or in a copy of its folder (never the published folder's maps of another run)."""
    import shutil

    from cryopipe.io.star import read_star

    n = 8
    model = Model(maps=rng.standard_normal((2, n, n, n)).astype(np.float32), pdf_class=np.array([0.5, 0.5]),
                  sigma2=np.ones((1, n // 2 + 1)), tau2=np.ones((2, n // 2 + 1)), ssnr=np.ones((2, n // 2 + 1)),
                  resolution_A=np.array([20.0, 22.0]), sigma_offset_px=1.0, r_max=3, iteration=5, angpix=4.0)
    run = tmp_path / "Class3D" / "job010" / ".run-abc"
    run.mkdir(parents=True)
    write_model(run / "run_it005", model, names_root=Path("Class3D/job010"))
    names = read_star(run / "run_it005_model.star")["model_classes"]["rlnReferenceImage"].tolist()
    assert names == ["Class3D/job010/run_it005_class001.mrc", "Class3D/job010/run_it005_class002.mrc"]
    np.testing.assert_array_equal(read_model(run / "run_it005").maps, model.maps)
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    (run / "run_it005_class002.mrc").unlink()
    np.testing.assert_array_equal(read_model(copy / "run_it005").maps, model.maps)
    write_model(tmp_path / "run_it006", model)  # no names_root: the folder written into
    names = read_star(tmp_path / "run_it006_model.star")["model_classes"]["rlnReferenceImage"].tolist()
    assert names == [str(tmp_path / "run_it006_class001.mrc"), str(tmp_path / "run_it006_class002.mrc")]
