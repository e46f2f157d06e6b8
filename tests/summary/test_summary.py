"""The run summary: key numbers, jobs, time and memory per stage from the provenance records; batch stages added
up; one small picking preview; bad input named."""

import json

import numpy as np
import pandas as pd
import pytest

from cryopipe.cli import main as cli_main


def _record(folder, stage, notes, wall, memory):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "provenance.json").write_text(json.dumps({"stage": stage, "wall_time_s": wall,
                                                        "peak_memory_mib": memory, "notes": notes}))


@pytest.fixture
def results(tmp_path):
    from matplotlib.image import imsave

    res = tmp_path / "results"
    _record(res / "simulate", "simulate", {"micrographs": 8}, 10.0, 300.0)
    _record(res / "pick" / "batch_0001", "pick", {"micrographs": 4, "picks": 150, "rejected": 3, "no_picks": []},
            5.0, 700.0)
    _record(res / "pick" / "batch_0002", "pick", {"micrographs": 4, "picks": 90, "rejected": 1,
                                                  "no_picks": ["mic_8.mrc"]}, 6.0, 650.0)
    _record(res / "initial_model", "initial-model", {"classes": 1, "class_distribution": [1.0], "hand": "as found",
                                                     "symmetry": "D2", "symmetry_contrast": [0.93]}, 30.0, 500.0)
    _record(res / "class3d", "class3d", {"classes": 2, "class_distribution": [0.45, 0.55],
                                         "resolution_A": [16.0, 15.5]}, 200.0, 2200.0)
    _record(res / "postprocess", "postprocess", {"resolution_A": 10.95, "bfactor": 0.0,
                                                 "not_sharpened": "resolution never reaches the 10 A fit range"},
            2.0, 250.0)
    _record(res / "bioem", "bioem", {"best_model": "conformation_1",
                                     "ensemble_weights": {"conformation_1": 0.984, "conformation_2": 0.016}},
            34.0, 420.0)
    imsave(res / "pick" / "batch_0001" / "picks_preview.png", np.random.default_rng(0).random((900, 2400)))
    return res


def test_one_row_per_stage_in_pipeline_order_with_batches_added_up(results, tmp_path):
    out = tmp_path / "summary"
    assert cli_main(["summary", "--results", str(results), "--out", str(out), "--preview-px", "600"]) == 0
    table = pd.read_csv(out / "summary.tsv", sep="\t").set_index("stage")
    assert list(table.index) == ["simulate", "pick", "initial-model", "class3d", "postprocess", "bioem"]
    assert table.loc["initial-model", "result"] == ("1 de novo map(s), shares 1.00; hand as found (unknown from "
                                                    "projections: check it); D2 imposed (symmetry contrast 0.93; "
                                                    "near 0: the map lacks it)")
    assert table.loc["pick", "jobs"] == 2 and table.loc["pick", "wall_time_s"] == 11.0
    assert table.loc["pick", "peak_memory_mib"] == 700.0
    assert table.loc["pick", "result"] == ("240 picks on 8 micrographs (30 per micrograph); 4 set aside as "
                                           "artefacts; 1 micrographs without picks")
    assert table.loc["class3d", "result"] == "2 classes, shares 0.45, 0.55; resolution 16.0, 15.5 A"
    assert "not sharpened (resolution never reaches" in table.loc["postprocess", "result"]
    assert table.loc["bioem", "result"] == ("best model conformation_1; ensemble weights conformation_1 0.984, "
                                            "conformation_2 0.016")
    from PIL import Image

    with Image.open(out / "picks.jpg") as image:
        assert max(image.size) == 600 and image.format == "JPEG"
    assert (out / "summary.png").stat().st_size > 10_000
    record = json.loads((out / "provenance.json").read_text())
    assert record["notes"]["total_wall_time_s"] == pytest.approx(10 + 11 + 30 + 200 + 2 + 34)
    assert len(record["inputs"]) == 8  # seven records and the preview


def test_a_second_summary_ignores_the_first(results, tmp_path):
    out = results / "summary"
    assert cli_main(["summary", "--results", str(results), "--out", str(out)]) == 0
    assert cli_main(["summary", "--results", str(results), "--out", str(out)]) == 0
    assert "summary" not in pd.read_csv(out / "summary.tsv", sep="\t")["stage"].tolist()


def test_no_records_or_a_corrupt_one_is_one_clear_error(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli_main(["summary", "--results", str(empty), "--out", str(tmp_path / "s1")]) == 2
    assert "empty: no provenance.json" in capsys.readouterr().err
    (empty / "pick").mkdir()
    (empty / "pick" / "provenance.json").write_text("{not json")
    assert cli_main(["summary", "--results", str(empty), "--out", str(tmp_path / "s2")]) == 2
    err = capsys.readouterr().err
    assert "pick/provenance.json" in err and "unreadable provenance record" in err
    assert not (tmp_path / "s2" / "summary.tsv").exists()
