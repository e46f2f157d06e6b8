import os

import numpy as np
import pandas as pd
import pytest

from cryopipe.errors import InputError
from cryopipe.io.star import (
    parse_image_name,
    portable_image_names,
    read_particles,
    read_table,
    write_star,
    write_table,
)


def _particles(n=4):
    return pd.DataFrame(
        {
            "rlnImageName": [f"{i + 1:06d}@stack.mrcs" for i in range(n)],
            "rlnOpticsGroup": [1, 2] * (n // 2),
            "rlnDefocusU": np.linspace(10000, 20000, n),
            "rlnImagePixelSize": [1.5, 3.0] * (n // 2),
            "rlnVoltage": [300.0, 200.0] * (n // 2),
        }
    )


def test_flat_table_round_trip_with_optics_groups(tmp_path):
    table = _particles()
    write_table(tmp_path / "p.star", table)
    text = (tmp_path / "p.star").read_text()
    assert "data_optics" in text and "data_particles" in text
    back = read_particles(tmp_path / "p.star", required=["rlnImageName", "rlnVoltage"])
    assert list(back["rlnVoltage"]) == [300.0, 200.0, 300.0, 200.0]
    assert list(back["rlnImagePixelSize"]) == [1.5, 3.0, 1.5, 3.0]
    np.testing.assert_allclose(back["rlnDefocusU"], table["rlnDefocusU"])


def test_missing_column_is_named(tmp_path):
    write_table(tmp_path / "p.star", _particles())
    with pytest.raises(InputError) as err:
        read_particles(tmp_path / "p.star", required=["rlnImageName", "rlnDefocusV"])
    assert "p.star [rlnDefocusV]" in str(err.value)


def test_unknown_optics_group_and_nan(tmp_path):
    optics = pd.DataFrame({"rlnOpticsGroup": [1], "rlnOpticsGroupName": ["g1"], "rlnVoltage": [300.0]})
    rows = _particles()[["rlnImageName", "rlnOpticsGroup", "rlnDefocusU"]]
    write_star(tmp_path / "p.star", {"optics": optics, "particles": rows})
    with pytest.raises(InputError, match=r"\[rlnOpticsGroup\]"):
        read_particles(tmp_path / "p.star")
    rows = rows.assign(rlnOpticsGroup=1)
    rows.loc[2, "rlnDefocusU"] = np.nan
    write_star(tmp_path / "q.star", {"optics": optics, "particles": rows})
    with pytest.raises(InputError, match=r"q.star \[rlnDefocusU\]: NaN"):
        read_particles(tmp_path / "q.star")


def test_relion30_file_without_optics_and_garbage(tmp_path):
    write_star(tmp_path / "old.star", {"": _particles()[["rlnImageName", "rlnDefocusU"]]})
    assert len(read_table(tmp_path / "old.star")) == 4
    (tmp_path / "junk.star").write_text("this is not a star file\n")
    with pytest.raises(InputError, match="junk.star"):
        read_table(tmp_path / "junk.star")
    with pytest.raises(InputError, match="file not found"):
        read_table(tmp_path / "none.star")


def test_image_names(tmp_path):
    (tmp_path / "stack.mrcs").write_bytes(b"")
    idx, stacks = parse_image_name(pd.Series(["000003@stack.mrcs", "1@/abs/s.mrcs"]), tmp_path / "p.star")
    assert list(idx) == [2, 0]
    assert stacks == [str(tmp_path / "stack.mrcs"), "/abs/s.mrcs"]
    with pytest.raises(InputError, match=r"\[rlnImageName\]"):
        parse_image_name(pd.Series(["stack.mrcs"]), tmp_path / "p.star")
    with pytest.raises(InputError, match="positive integer"):
        parse_image_name(pd.Series(["0@stack.mrcs"]), tmp_path / "p.star")


def test_portable_image_names_keep_what_resolves_from_the_working_directory(tmp_path, monkeypatch):
    """RELION resolves relative stack names against the working directory: such names (and absolute ones) are kept
    verbatim, index digits included; a name that resolves only against the STAR file's folder gets that path,
    relative to the working directory when the STAR path is relative (it used to be made absolute)."""
    project = tmp_path / "project"
    (project / "Extract" / "job007").mkdir(parents=True)
    (project / "Extract" / "job007" / "mic1.mrcs").write_bytes(b"")
    (project / "Extract" / "job007" / "local.mrcs").write_bytes(b"")
    monkeypatch.chdir(project)
    names = pd.Series(["000001@Extract/job007/mic1.mrcs", "2@Extract/job007/mic1.mrcs", "3@local.mrcs",
                       f"4@{project / 'Extract' / 'job007' / 'mic1.mrcs'}"])
    star = os.path.join("Extract", "job007", "particles.star")
    assert portable_image_names(names, star) == [
        "000001@Extract/job007/mic1.mrcs", "2@Extract/job007/mic1.mrcs", "3@Extract/job007/local.mrcs",
        f"4@{project / 'Extract' / 'job007' / 'mic1.mrcs'}"]
    # the STAR file named by an absolute path: the fallback gives the absolute path it resolved to
    assert portable_image_names(names[2:3], project / star) == [f"3@{project / 'Extract' / 'job007' / 'local.mrcs'}"]
