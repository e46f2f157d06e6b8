"""select3d keeps one 3D class's particles and map; the record names only the map it copied."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cryopipe import cli
from cryopipe.io.mrc import read_mrc, write_mrc
from cryopipe.io.star import read_particles, write_table
from cryopipe.select3d import Select3DInputs, Select3DParams, run
from cryopipe.stage import StageContext

COUNTS = {1: 7, 2: 12, 3: 5}


@pytest.fixture
def class3d_dir(tmp_path) -> Path:
    out = tmp_path / "class3d"
    out.mkdir()
    numbers = np.repeat(list(COUNTS), list(COUNTS.values()))
    write_table(out / "run_it003_data.star", pd.DataFrame({
        "rlnImageName": [f"{i + 1:06d}@stack.mrcs" for i in range(len(numbers))], "rlnOpticsGroup": 1,
        "rlnClassNumber": numbers, "rlnImagePixelSize": 3.0, "rlnImageSize": 8}))
    for k in COUNTS:
        write_mrc(out / f"run_it003_class{k:03d}.mrc", np.full((8, 8, 8), k, np.float32), 3.0)
    return out


def _inputs(folder: Path) -> Select3DInputs:
    return Select3DInputs(folder / "run_it003_data.star", sorted(folder.glob("run_it003_class*.mrc")))


@pytest.mark.parametrize("chosen, expected", [(0, 2), (3, 3)])
def test_keeps_the_chosen_or_the_largest_class(class3d_dir, tmp_path, chosen, expected):
    out = tmp_path / "sel"
    out.mkdir()
    result = run(Select3DParams(chosen=chosen), _inputs(class3d_dir), out, StageContext.local(device=None))
    kept = read_particles(out / "particles.star")
    assert set(kept["rlnClassNumber"].astype(int)) == {expected} and len(kept) == COUNTS[expected]
    assert read_mrc(out / "reference.mrc")[0].mean() == expected
    assert result.notes == {"chosen_class": expected, "particles": COUNTS[expected], "of": sum(COUNTS.values())}
    assert result.inputs == [class3d_dir / "run_it003_data.star", class3d_dir / f"run_it003_class{expected:03d}.mrc"]


def test_cli_records_only_the_copied_map(class3d_dir, tmp_path):
    maps = [str(p) for p in sorted(class3d_dir.glob("run_it003_class*.mrc"))]
    assert cli.main(["select3d", "--particles", str(class3d_dir / "run_it003_data.star"), "--maps", *maps,
                     "--out", str(tmp_path / "sel")]) == 0
    record = json.loads((tmp_path / "sel" / "provenance.json").read_text())
    names = sorted(Path(e["path"]).name for e in record["inputs"])
    assert names == ["run_it003_class002.mrc", "run_it003_data.star"]
    assert record["notes"]["parameters"] == {"chosen": 0}


def test_a_class_without_particles_or_map_is_an_input_error(class3d_dir, tmp_path, capsys):
    star = str(class3d_dir / "run_it003_data.star")
    one_map = str(class3d_dir / "run_it003_class001.mrc")
    assert cli.main(["select3d", "--particles", star, "--maps", one_map, "--class", "4",
                     "--out", str(tmp_path / "a")]) == 2
    assert "class 4 has no particles" in capsys.readouterr().err
    assert cli.main(["select3d", "--particles", star, "--maps", one_map, "--class", "2",
                     "--out", str(tmp_path / "b")]) == 2
    assert "no map named class002.mrc" in capsys.readouterr().err
    assert not (tmp_path / "b" / "particles.star").exists()
