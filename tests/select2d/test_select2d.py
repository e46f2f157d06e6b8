"""``cryopipe select2d``: automatic criteria with reasons, explicit lists, thresholds, outputs and errors."""

import json

import numpy as np
import pandas as pd
import pytest

from cryopipe.errors import InputError
from cryopipe.io.mrc import read_mrc
from cryopipe.io.star import read_particles, read_star
from cryopipe.select2d import SelectParams, select_classes


def _classes(class2d_dir):
    return read_star(class2d_dir / "classes.star")["model_classes"]


def test_automatic_criteria_reject_the_tiny_and_the_poor_class(class2d_dir):
    decision = select_classes(_classes(class2d_dir), SelectParams())
    assert decision["cpKept"].tolist() == [1, 1, 1, 0, 0]
    reasons = decision["cpReason"].tolist()
    # size: 20% of the mean class size = 13.96; resolution: median 11 + 3 x 1.4826 x MAD 1 = 15.4 A;
    # score: median 0.38 - 3 x 1.4826 x MAD 0.03 = 0.247
    assert reasons[0] == "kept: size 100 >= 14; resolution 10.0 A <= 15.4 A; score 0.400 >= 0.247"
    assert reasons[3] == "rejected: size 4 < 14; resolution 30.0 A > 15.4 A; score 0.100 < 0.247"
    assert reasons[4] == "rejected: resolution 40.0 A > 15.4 A; score 0.200 < 0.247"


def test_explicit_list_and_numeric_or_off_criteria(class2d_dir):
    classes = _classes(class2d_dir)
    listed = select_classes(classes, SelectParams(keep=[2, 5]))
    assert listed["cpKept"].tolist() == [0, 1, 0, 0, 1] and listed["cpReason"][1] == "listed"
    by_size = select_classes(classes, SelectParams(min_size=50, max_resolution_A="off", min_score="OFF"))
    assert by_size["cpKept"].tolist() == [1, 1, 1, 0, 1]
    everything = select_classes(classes, SelectParams(min_size="off", max_resolution_A="off", min_score="off"))
    assert everything["cpKept"].all() and everything["cpReason"][0] == "kept: no criteria"


def test_empty_class_is_never_kept():
    classes = pd.DataFrame({"rlnClassNumber": [1, 2], "cpClassSize": [10, 0], "rlnEstimatedResolution": [9.0, 999.0],
                            "cpMeanScore": [0.3, 0.0]})
    decision = select_classes(classes, SelectParams(min_size="off", max_resolution_A="off", min_score="off"))
    assert decision["cpKept"].tolist() == [1, 0] and decision["cpReason"][1] == "rejected: empty class"


@pytest.mark.parametrize("params, field", [
    (SelectParams(keep=[7]), "--keep"),
    (SelectParams(min_size="many"), "--min-size"),
])
def test_bad_selection_is_an_input_error(class2d_dir, params, field):
    with pytest.raises(InputError) as err:
        select_classes(_classes(class2d_dir), params)
    assert err.value.field == field


def test_cli_writes_the_kept_particles_and_the_table(class2d_dir, run_cli, tmp_path, capsys):
    out = tmp_path / "select2d"
    args = ["select2d", "--particles", str(class2d_dir / "particles.star"), "--classes-star",
            str(class2d_dir / "classes.star"), "--out", str(out)]
    assert run_cli(args) == 0
    particles = read_particles(out / "particles.star", ["rlnClassNumber", "rlnImagePixelSize"])
    assert len(particles) == 285 and set(particles["rlnClassNumber"]) == {1, 2, 3}
    table = pd.read_csv(out / "selection.tsv", sep="\t")
    assert table["cpKept"].tolist() == [1, 1, 1, 0, 0] and table["cpReason"][3].startswith("rejected: size 4 < 14")
    averages, angpix = read_mrc(out / "class_averages.mrcs")
    np.testing.assert_array_equal(averages[:, 0, 0], [0, 1, 2])
    assert angpix == 4.0
    kept = read_star(out / "classes.star")["model_classes"]
    assert kept["rlnClassNumber"].tolist() == [1, 2, 3]
    assert kept["rlnReferenceImage"][2] == f"000003@{out / 'class_averages.mrcs'}"
    assert (out / "select2d.png").stat().st_size > 0
    record = json.loads((out / "provenance.json").read_text())
    assert record["notes"]["kept_classes"] == [1, 2, 3] and record["notes"]["kept_particles"] == 285
    assert run_cli([*args, "--min-size", "1000"]) == 2
    assert "no class passes the selection" in capsys.readouterr().err


def test_unknown_resolution_never_enters_the_statistics_and_fails_the_criterion(caplog):
    """rlnEstimatedResolution 999 (RELION's "not estimated": an FRC that never rises above the threshold, a half set
    empty) is no number of Angstrom: the automatic limit comes from the known resolutions only (with the 999s in the
    median and MAD it became "<= 2683.9 A" and kept everything), and such a class fails the criterion as "resolution
    unknown", also against a limit given as a number."""
    classes = pd.DataFrame({"rlnClassNumber": [1, 2, 3, 4, 5, 6], "cpClassSize": [100, 95, 90, 80, 85, 0],
                            "rlnEstimatedResolution": [10.0, 11.0, 10.5, 999.0, 999.0, 999.0],
                            "cpMeanScore": [0.40, 0.38, 0.41, 0.39, 0.40, 0.0]})
    decision = select_classes(classes, SelectParams(min_size="off", min_score="off"))
    assert decision["cpKept"].tolist() == [1, 1, 1, 0, 0, 0]
    # median 10.5 + 3 x 1.4826 x MAD 0.5 = 12.7 A
    assert decision["cpReason"][0] == "kept: resolution 10.0 A <= 12.7 A"
    assert decision["cpReason"][3] == "rejected: resolution unknown"
    assert decision["cpReason"][5] == "rejected: empty class"
    given = select_classes(classes, SelectParams(min_size="off", min_score="off", max_resolution_A=20))
    assert given["cpKept"].tolist() == [1, 1, 1, 0, 0, 0] and given["cpReason"][4] == "rejected: resolution unknown"
    # inf or NaN (a table from elsewhere) is unknown too
    odd = classes.assign(rlnEstimatedResolution=[10.0, 11.0, 10.5, np.inf, np.nan, 999.0])
    assert select_classes(odd, SelectParams(min_size="off", min_score="off"))["cpKept"].tolist() == [1, 1, 1, 0, 0, 0]
    # no known resolution at all: nothing to measure "auto" against, the criterion is left out and says so
    unknown = classes.assign(rlnEstimatedResolution=999.0)
    with caplog.at_level("WARNING", logger="cryopipe.select2d.stage"):
        decision = select_classes(unknown, SelectParams(min_size="off", min_score="off"))
    assert decision["cpKept"].tolist() == [1, 1, 1, 1, 1, 0] and decision["cpReason"][0] == "kept: no criteria"
    assert "the automatic resolution criterion is left out" in caplog.text
