"""The CLI contract: help, one-line errors with exit status 2, staged outputs, provenance and lineage."""

import json
import subprocess
import sys

import numpy as np

from cryopipe.cli import main
from cryopipe.io.mrc import read_mrc
from cryopipe.provenance import file_entries, lineage, sha256

TINY = ["--micrographs", "1", "--size-px", "256", "--particles-per-micrograph", "3"]


def test_help_lists_the_stages(capsys):
    out = subprocess.run([sys.executable, "-m", "cryopipe.cli", "--help"], capture_output=True, text=True, check=True)
    for stage in ["simulate", "lineage"]:
        assert stage in out.stdout


def test_record_lists_inputs_outputs_with_checksums(tmp_path):
    assert main(["simulate", "--out", str(tmp_path / "sim"), *TINY]) == 0
    rec = json.loads((tmp_path / "sim/provenance.json").read_text())
    assert rec["stage"] == "simulate" and rec["mpi_size"] == 1
    assert rec["parameters"]["size_px"] == 256
    outputs = {o["path"]: o for o in rec["outputs"]}  # paths relative to the record's folder
    mic = str((tmp_path / "sim/micrographs/mic_001.mrc").resolve())
    assert outputs["micrographs/mic_001.mrc"]["sha256"] == sha256(mic)
    assert len(rec["outputs"]) > 2
    assert all(o["sha256"] == sha256(tmp_path / "sim" / o["path"]) for o in rec["outputs"])
    assert rec["cryopipe"]["version"] and rec["wall_time_s"] >= 0 and rec["peak_memory_mib"] > 0
    for key in ["command", "host", "device", "start", "end"]:
        assert rec[key]
    assert not list((tmp_path / "sim").glob(".staging-*"))
    text = "\n".join(lineage(mic))
    assert "<- simulate" in text and "--size-px 256" in text


def test_bad_parameter_exits_2_with_one_line_and_keeps_old_outputs(tmp_path):
    out = tmp_path / "sim"
    assert main(["simulate", "--out", str(out), *TINY]) == 0
    before = read_mrc(out / "micrographs/mic_001.mrc")[0]
    record = (out / "provenance.json").read_text()
    proc = subprocess.run(
        [sys.executable, "-m", "cryopipe.cli", "simulate", "--out", str(out), *TINY, "--seed", "9", "--angpix", "-1"],
        capture_output=True, text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "cryopipe simulate: error: [--angpix]: pixel size must be positive, got -1.0"
    )
    assert "Traceback" not in proc.stderr
    np.testing.assert_array_equal(read_mrc(out / "micrographs/mic_001.mrc")[0], before)
    assert (out / "provenance.json").read_text() == record
    assert not list(out.glob(".staging-*"))


def test_lineage_of_a_missing_file_is_an_input_error(tmp_path, capsys):
    assert main(["lineage", str(tmp_path / "nothing.mrc")]) == 2
    assert "nothing.mrc: file not found" in capsys.readouterr().err


def test_lineage_flags_a_changed_input(tmp_path):
    """A raw input edited after it was used shows up as CHANGED in the lineage."""
    from cryopipe.provenance import Recorder

    raw = tmp_path / "raw.txt"
    raw.write_text("v1")
    out = tmp_path / "stage"
    out.mkdir()
    (out / "result.txt").write_text("derived")
    rec = Recorder(out, "demo", {"x": 1})
    rec.add_input(raw)
    rec.add_output(out / "result.txt")
    rec.write()
    assert "CHANGED" not in "\n".join(lineage(out / "result.txt"))
    raw.write_text("v2")
    text = "\n".join(lineage(out / "result.txt"))
    assert "raw.txt" in text and "CHANGED since it was used" in text


def test_checksums_hashed_in_parallel_keep_the_order_given(tmp_path):
    names = ["e", "a", "c", "b", "d"]
    for i, name in enumerate(names):
        (tmp_path / name).write_bytes(bytes([i]) * (1 << 20) * (i + 1))
    paths = [tmp_path / n for n in ["e", "a", "c", "a", "b", "d"]]
    entries = file_entries(paths)
    assert [e["path"] for e in entries] == [str(tmp_path / n) for n in names]
    assert [e["sha256"] for e in entries] == [sha256(tmp_path / n) for n in names]
    assert [e["size"] for e in entries] == [(1 << 20) * (i + 1) for i in range(5)]


def test_every_default_is_shown_one_way_in_help():
    """An option with a default says "(default X)" (or "default: <how it is derived>"); no bare "(X)"."""
    import argparse
    import re

    from cryopipe.cli import build_parser

    subparsers = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    bad = []
    for stage, parser in subparsers.choices.items():
        for action in parser._actions:
            text = action.help or ""
            if text == argparse.SUPPRESS or isinstance(action, argparse._HelpAction):
                continue
            shown = action.default not in (None, False, argparse.SUPPRESS) and not isinstance(
                action, (argparse._StoreTrueAction, argparse._AppendAction)) and not action.required
            if shown and action.choices is None and "default" not in text:
                bad.append(f"{stage} {action.option_strings[0]}: {text!r} (default {action.default!r} not shown)")
            if re.search(r"\((?:-?[\d.]+|C1|True|False)\)$", text):
                bad.append(f"{stage} {action.option_strings[0]}: {text!r} (a bare value)")
    assert not bad, "\n".join(bad)
