"""The output folder's life (cryopipe/outdir.py and the CLI around it): one run at a time, whole results published
at once, stale files gone, other runs' folders and the user's files untouched, storage errors as one line."""

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cryopipe import outdir
from cryopipe.cli import main
from cryopipe.errors import InputError

TINY = ["--micrographs", "1", "--size-px", "256", "--particles-per-micrograph", "3"]


def test_a_second_run_on_a_locked_folder_is_refused_with_the_holder_named(tmp_path, capsys):
    lock = outdir.OutputLock(tmp_path / "sim", "pick", ["cryopipe", "pick"])
    (tmp_path / "sim" / ".staging-deadbeef").mkdir()  # the holder's staging: must survive the refused run
    try:
        assert main(["simulate", "--out", str(tmp_path / "sim"), *TINY]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "in use by cryopipe pick (pid" in err and str(tmp_path / "sim") in err
        assert (tmp_path / "sim" / ".staging-deadbeef").is_dir()
        assert not (tmp_path / "sim" / "provenance.json").exists()
    finally:
        lock.release()
    assert main(["simulate", "--out", str(tmp_path / "sim"), *TINY]) == 0
    assert not list((tmp_path / "sim").glob(".staging-*"))  # the ended run's leftovers are cleared by the next


def test_a_lock_of_a_killed_process_is_not_stale(tmp_path):
    """flock dies with its holder: a SIGKILLed run leaves the lock file but never a held lock."""
    code = ("import os, sys; from cryopipe import outdir; outdir.OutputLock(sys.argv[1], 'x', []); "
            "os.kill(os.getpid(), 9)")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "o")], timeout=60)
    assert proc.returncode == -9 and (tmp_path / "o" / outdir.LOCK_NAME).exists()
    outdir.OutputLock(tmp_path / "o", "y", []).release()


def _publish(final: Path, files: dict, token="t", keep=()):
    work = final / f".staging-{token}"
    work.mkdir(parents=True)
    for name, text in files.items():
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        (work / name).write_text(text)
    outdir.publish(work, final, token, keep=keep)


def test_publishing_replaces_the_whole_previous_result(tmp_path):
    final = tmp_path / "class3d"
    _publish(final, {"provenance.json": "{}", "run_it008_model.star": "old", "coords/a.star": "old"}, "a")
    nested = final / "batch_0001"  # another run's output folder inside this one (extract batches)
    nested.mkdir()
    (nested / "provenance.json").write_text("{}")
    _publish(final, {"provenance.json": "{}", "run_it006_model.star": "new", "coords/b.star": "new"}, "b")
    names = sorted(str(p.relative_to(final)) for p in final.rglob("*") if not p.name.startswith("."))
    assert names == ["batch_0001", "batch_0001/provenance.json", "coords", "coords/b.star", "provenance.json",
                     "run_it006_model.star"]
    assert not list(final.glob(".trash-*")) and not list(final.glob(".staging-*"))


def test_a_folder_without_a_result_keeps_the_users_files_and_the_runs_inputs(tmp_path):
    final = tmp_path / "mine"
    final.mkdir()
    (final / "notes.txt").write_text("the user's")
    _publish(final, {"provenance.json": "{}", "out.star": "1"}, "a")
    assert (final / "notes.txt").read_text() == "the user's"  # no earlier result here: nothing else touched
    (final / "input.star").write_text("an input of the next run")
    _publish(final, {"provenance.json": "{}", "out.star": "2"}, "b", keep=[final / "input.star"])
    assert (final / "input.star").exists() and (final / "out.star").read_text() == "2"
    assert not (final / "notes.txt").exists()  # a published result's folder is the stage's own


def test_checkpoint_helpers_find_the_last_complete_iteration_and_drop_later_files(tmp_path):
    for it in (1, 2, 3):
        (tmp_path / f"run_it{it:03d}_model.star").write_text("m")
    for it in (1, 2):
        (tmp_path / f"run_it{it:03d}_data.star").write_text("d")  # iteration 3's data STAR never came
    (tmp_path / "class3d_slices.png").write_text("png")
    assert outdir.last_checkpoint(tmp_path) == 2 and outdir.last_checkpoint(tmp_path, before=2) == 1
    outdir.drop_after(tmp_path, 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run_it001_data.star", "run_it001_model.star",
                                                          "run_it002_data.star", "run_it002_model.star"]


def test_run_key_changes_with_parameters_and_input_content(tmp_path):
    f = tmp_path / "in.star"
    f.write_text("a")
    k = outdir.run_key("class3d", {"tau2_fudge": 4}, [f])
    assert k == outdir.run_key("class3d", {"tau2_fudge": 4}, [f])
    assert k != outdir.run_key("class3d", {"tau2_fudge": 2}, [f])
    f.write_text("b")
    assert k != outdir.run_key("class3d", {"tau2_fudge": 4}, [f])


@pytest.mark.parametrize("err, status", [(errno.ENOSPC, 1), (errno.EROFS, 2), (errno.EACCES, 2)])
def test_storage_errors_are_one_line_and_leave_nothing_half_written(tmp_path, monkeypatch, capsys, err, status):
    """A full disk, a read-only or a forbidden output folder (a patched writer: CI cannot mount file systems)."""
    assert main(["simulate", "--out", str(tmp_path / "sim"), *TINY]) == 0
    before = {p: p.read_bytes() for p in (tmp_path / "sim").rglob("*") if p.is_file() and p.name != outdir.LOCK_NAME}
    import mrcfile

    real_new = mrcfile.new

    def failing_new(name, *args, **kwargs):
        raise OSError(err, os.strerror(err), str(name))

    monkeypatch.setattr(mrcfile, "new", failing_new)
    assert main(["simulate", "--out", str(tmp_path / "sim"), *TINY, "--seed", "3"]) == status
    monkeypatch.setattr(mrcfile, "new", real_new)
    lines = [x for x in capsys.readouterr().err.splitlines() if "error:" in x]
    assert len(lines) == 1 and os.strerror(err) in lines[0], lines
    assert f"{tmp_path / 'sim'}/maps/conformation_1.mrc: " in lines[0] and ".staging" not in lines[0]
    after = {p: p.read_bytes() for p in (tmp_path / "sim").rglob("*") if p.is_file() and p.name != outdir.LOCK_NAME}
    assert after == before


def test_stale_files_of_a_larger_run_are_gone_after_a_smaller_one(tmp_path):
    assert main(["simulate", "--out", str(tmp_path / "sim"), "--micrographs", "2", "--size-px", "256",
                 "--particles-per-micrograph", "3"]) == 0
    assert (tmp_path / "sim/micrographs/mic_002.mrc").exists()
    assert main(["simulate", "--out", str(tmp_path / "sim"), *TINY]) == 0
    assert not (tmp_path / "sim/micrographs/mic_002.mrc").exists()
    rec = json.loads((tmp_path / "sim/provenance.json").read_text())
    assert not any("mic_002" in o["path"] for o in rec["outputs"])


def test_input_errors_in_the_lock_step_reach_every_path_as_input_error(tmp_path):
    lock = outdir.OutputLock(tmp_path, "a", [])
    try:
        with pytest.raises(InputError, match="in use by cryopipe a"):
            outdir.OutputLock(tmp_path, "b", [])
    finally:
        lock.release()
