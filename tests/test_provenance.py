"""Provenance records and lineage: paths relative to the record, checksums as proof, every file checked.

Three fake stages chained by hand in a project folder, run from the project (as Snakemake runs them):
A reads ``raw/r.txt`` and writes ``results/a/a1.txt``; B reads a1 and writes ``results/b/b1.txt``; C reads b1 and
writes ``results/c/c1.txt``.
"""

import json
import os
import shutil
from pathlib import Path

import pytest

from cryopipe.provenance import Recorder, find_producer, lineage, sha256

STAGES = [("A", "raw/r.txt", "results/a/a1.txt"), ("B", "results/a/a1.txt", "results/b/b1.txt"),
          ("C", "results/b/b1.txt", "results/c/c1.txt")]
CHAIN = ["results/c/c1.txt", "results/b/b1.txt", "results/a/a1.txt", "raw/r.txt"]  # c1's lineage, in order


def run_stage(stage: str, src: str, dst: str, record: str = "provenance.json") -> dict:
    """One fake stage, run from the project folder: read ``src``, write ``dst``, record both."""
    out = Path(dst).parent
    out.mkdir(parents=True, exist_ok=True)
    Path(dst).write_text(f"{stage}({Path(src).read_text()})")
    rec = Recorder(out, stage, {"stage": stage}, name=record)
    rec.add_input(src)
    rec.add_output(Path(dst).resolve())  # the CLI hands outputs over as absolute resolved paths
    return rec.write()


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A project with raw/r.txt and the records of A -> B -> C; the current folder is tmp_path."""
    proj = tmp_path / "proj"
    (proj / "raw").mkdir(parents=True)
    (proj / "raw/r.txt").write_text("raw data")
    monkeypatch.chdir(proj)
    for stage in STAGES:
        run_stage(*stage)
    monkeypatch.chdir(tmp_path)
    return proj


def walk(lines: list[str]) -> list[tuple[int, str, str]]:
    """(depth, path as shown, rest of the line) of each file line of a lineage."""
    files = []
    for line in "\n".join(lines).splitlines():
        text = line.lstrip(" ")
        if not text or text.startswith(("<-", "$", "record:", "WARNING")):
            continue
        shown, _, rest = text.partition("  ")
        files.append(((len(line) - len(text)) // 2, shown, rest))
    return files


def flagged(lines: list[str]) -> dict[str, str]:
    """path as shown -> its flags, for the file lines that carry one."""
    return {shown: rest[rest.index("["):] for _, shown, rest in walk(lines) if "[" in rest}


def test_records_name_files_relative_to_their_folder(project):
    rec = json.loads((project / "results/b/provenance.json").read_text())
    assert [e["path"] for e in rec["inputs"]] == ["../a/a1.txt"]
    assert [e["path"] for e in rec["outputs"]] == ["b1.txt"]
    b1 = project / "results/b/b1.txt"
    assert rec["outputs"][0]["sha256"] == sha256(b1) and rec["outputs"][0]["size"] == b1.stat().st_size
    assert rec["cwd"] == str(project.resolve())
    raw = json.loads((project / "results/a/provenance.json").read_text())["inputs"][0]
    assert raw["path"] == "../../raw/r.txt" and raw["sha256"] == sha256(project / "raw/r.txt")


def test_lineage_of_c1_reaches_the_raw_input(project):
    lines = lineage(project / "results/c/c1.txt")
    assert [(d, p) for d, p, _ in walk(lines)] == [(d, f"proj/{f}") for d, f in enumerate(CHAIN)]
    assert walk(lines)[-1][2].endswith("(raw input)")
    text = "\n".join(lines)
    assert "<- C " in text and "<- B " in text and "<- A " in text
    assert "record: proj/results/a/provenance.json" in text
    assert "CHANGED" not in text and "MISSING" not in text and "WARNING" not in text


def test_a_copied_results_tree_keeps_its_lineage(project, tmp_path):
    copy = tmp_path / "elsewhere" / "proj"
    shutil.copytree(project, copy)
    # the original changes afterwards: a lineage that strayed back into it would say so
    (project / "raw/r.txt").write_text("edited original")
    (project / "results/b/b1.txt").write_text("edited original")
    lines = lineage(copy / "results/c/c1.txt")
    files = walk(lines)
    assert [p for _, p, _ in files] == [f"elsewhere/proj/{f}" for f in CHAIN]
    text = "\n".join(lines)
    for stage in "ABC":
        assert f"record: elsewhere/proj/results/{stage.lower()}/provenance.json" in text
    assert "CHANGED" not in text and "MISSING" not in text and "WARNING" not in text
    assert find_producer(copy / "results/a/a1.txt")[1] == (copy / "results/a/provenance.json").resolve()


def test_a_raw_input_changed_after_use_is_flagged_at_the_deepest_level(project):
    (project / "raw/r.txt").write_text("raw data, edited")
    for target in ["results/c/c1.txt", "results/b/b1.txt", "results/a/a1.txt"]:
        lines = lineage(project / target)
        assert flagged(lines) == {"proj/raw/r.txt": "[CHANGED since it was used]"}, target
        assert lines[-1].startswith("WARNING: 1 file(s) changed")
    assert walk(lineage(project / "results/c/c1.txt"))[-1][0] == 3


def test_a_raw_input_used_twice_is_checked_under_each_record(project, monkeypatch):
    """Like a micrograph read by both pick and extract: D reads r and c1; A is met a second time below D."""
    monkeypatch.chdir(project)
    Path("results/d").mkdir()
    Path("results/d/d1.txt").write_text("D")
    rec = Recorder("results/d", "D", {})
    rec.add_input("results/c/c1.txt", "raw/r.txt")
    rec.add_output(Path("results/d/d1.txt").resolve())
    rec.write()
    Path("raw/r.txt").write_text("edited")
    lines = lineage("results/d/d1.txt")
    raw_lines = [(d, rest) for d, p, rest in walk(lines) if p == "raw/r.txt"]
    assert raw_lines == [(4, "sha256:" + sha256("raw/r.txt")[:12] + "  (raw input)  [CHANGED since it was used]"),
                         (1, "sha256:" + sha256("raw/r.txt")[:12] + "  (raw input)  [CHANGED since it was used]")]


def test_an_intermediate_changed_after_use_is_flagged(project):
    (project / "results/b/b1.txt").write_text("B(edited)")
    lines = lineage(project / "results/c/c1.txt")
    assert flagged(lines) == {"proj/results/b/b1.txt": "[CHANGED since it was made]  [CHANGED since it was used]"}
    assert [p for _, p, _ in walk(lines)][-1] == "proj/raw/r.txt"  # the walk goes on below it
    # asked about directly, the file is checked against the record that made it
    assert flagged(lineage(project / "results/b/b1.txt")) == {"proj/results/b/b1.txt": "[CHANGED since it was made]"}


def test_a_deleted_intermediate_is_missing_and_its_producer_still_followed(project):
    (project / "results/b/b1.txt").unlink()
    lines = lineage(project / "results/c/c1.txt")
    assert flagged(lines) == {"proj/results/b/b1.txt": "[MISSING]"}
    assert [p for _, p, _ in walk(lines)][-1] == "proj/raw/r.txt"


def test_the_checksum_picks_the_producer_among_records_naming_the_file(project, monkeypatch):
    """A second record in the folder that names b1 with other content (an older run) loses to the true one."""
    b = project / "results/b"
    older = json.loads((b / "provenance.json").read_text())
    older["stage"], older["outputs"][0]["sha256"] = "B-older", "0" * 64
    (b / "provenance_0.json").write_text(json.dumps(older))  # sorts before provenance.json
    (b / "provenance.json").rename(b / "provenance_1.json")
    rec, rec_path = find_producer(b / "b1.txt")
    assert rec["stage"] == "B" and rec_path.name == "provenance_1.json"
    assert "CHANGED" not in "\n".join(lineage(project / "results/c/c1.txt"))


def _make_old_style(proj: Path) -> None:
    """Rewrite the project's records as records used to be written: absolute resolved paths."""
    for rec_path in proj.rglob("provenance*.json"):
        rec = json.loads(rec_path.read_text())
        for entry in rec["inputs"] + rec["outputs"]:
            entry["path"] = os.path.normpath(rec_path.parent.resolve() / entry["path"])
        rec_path.write_text(json.dumps(rec))


def test_old_records_with_absolute_paths_still_work(project):
    _make_old_style(project)
    assert json.loads((project / "results/b/provenance.json").read_text())["inputs"][0]["path"] == str(
        (project / "results/a/a1.txt").resolve())
    lines = lineage(project / "results/c/c1.txt")
    assert [p for _, p, _ in walk(lines)] == [f"proj/{f}" for f in CHAIN]
    assert "CHANGED" not in "\n".join(lines)
    (project / "raw/r.txt").write_text("edited")
    assert flagged(lineage(project / "results/c/c1.txt")) == {"proj/raw/r.txt": "[CHANGED since it was used]"}


def test_old_records_in_a_moved_tree_are_found_by_name_and_checksum(project, tmp_path):
    _make_old_style(project)
    moved = tmp_path / "moved"
    shutil.move(project, moved)
    lines = lineage(moved / "results/c/c1.txt")
    assert [p for _, p, _ in walk(lines)] == [f"moved/{f}" for f in CHAIN]
    text = "\n".join(lines)
    assert "CHANGED" not in text and "MISSING" not in text
    (moved / "raw/r.txt").write_text("edited")
    assert flagged(lineage(moved / "results/c/c1.txt")) == {"moved/raw/r.txt": "[CHANGED since it was used]"}
