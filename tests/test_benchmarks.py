"""The benchmarks' shared runner (benchmarks/common.py) and the phases the scaling benchmark times."""

import importlib
import sys
import threading
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

common = importlib.import_module("common")
scaling_stages = importlib.import_module("scaling_stages")
class3d_benchmark = importlib.import_module("class3d")


def _targets():
    for stage in scaling_stages.STAGES.values():
        yield from stage.phases
    yield from scaling_stages.IO_PHASES
    yield from class3d_benchmark.PROFILED


@pytest.mark.parametrize("target, label", sorted(set(_targets())))
def test_timed_phases_are_public_functions_that_exist(target, label):
    """The profilers time public functions and methods only, and each one named still exists (else its time would
    silently stay with its caller)."""
    assert common.is_public(target), target
    mod_name, qual = target.split(":")
    obj = importlib.import_module(mod_name)
    for i, part in enumerate(qual.split(".")):
        obj = vars(obj)[part] if i else getattr(obj, part)
    assert callable(obj), target


def test_is_public():
    assert common.is_public("cryopipe.em3d.estep:EStep.__init__")
    assert common.is_public("cryopipe.io.mrc:read_mrc")
    assert not common.is_public("cryopipe.class3d.stage:_maximise")
    assert not common.is_public("cryopipe.em3d.estep:EStep._batch")
    assert not common.is_public("cryopipe.em3d._private:f")
    assert not common.is_public("cryopipe.io.mrc")


@pytest.mark.parametrize("exclusive", [True, False])
def test_phase_timer_exclusive_and_inclusive(exclusive, monkeypatch):
    clock = [0.0]  # a fake clock: only the wrapped functions move it
    monkeypatch.setattr(common.time, "perf_counter", lambda: clock[0])

    def work(seconds):
        clock[0] += seconds

    timer = common.PhaseTimer(exclusive=exclusive)
    inner = timer.wrap(lambda: work(2.0), "inner")
    outer = timer.wrap(lambda: (work(1.0), inner(), work(0.5)), "outer")
    outer()
    assert timer.seconds() == {"inner": 2.0, "outer": 1.5 if exclusive else 3.5}
    assert timer.totals["outer"][1] == timer.totals["inner"][1] == 1
    thread = threading.Thread(target=inner)
    thread.start()
    thread.join()
    assert timer.totals["background thread: inner"][:2] == [2.0, 1]


def test_phase_timer_refuses_private_names_and_records_missing_ones():
    timer = common.PhaseTimer()
    with pytest.raises(ValueError, match="public"):
        timer.time_public("cryopipe.projection:_half_plane", "x")
    assert not timer.time_public("cryopipe.projection:no_such_function", "x")
    assert timer.missing == ["cryopipe.projection:no_such_function"]


def test_markdown_table():
    table = common.markdown_table(["a", "b"], [[1, "x"], ["2", 3.5]])
    assert table == "| a | b |\n| --- | --- |\n| 1 | x |\n| 2 | 3.5 |"
    assert common.key_value_table([("k", "v"), ("long key", "w")]) == "k         v\nlong key  w"


def test_probe_reports_survive_interleaved_rank_output():
    """Two ranks' lines may arrive interleaved (text of one, then the other, then both newlines)."""
    text = 'PROBE {"size": 2, "rank": 1}PROBE {"size": 2, "rank": 0, "vars": {"A": "1"}}\n\nother output\n'
    assert common.probe_reports(text) == [{"size": 2, "rank": 1}, {"size": 2, "rank": 0, "vars": {"A": "1"}}]


def test_pipeline_benchmark_attributes_gpu_samples_to_stage_spans(tmp_path):
    """The whole-pipeline benchmark reads each stage's provenance spans (every job of a stage) and averages only
    the GPU samples inside them."""
    import json

    pipeline = importlib.import_module("pipeline")
    for stage, job, start, end in (("pick", "b1", "00:00:10", "00:00:20"), ("pick", "b2", "00:00:30", "00:00:40"),
                                   ("class3d", ".", "00:01:00", "00:02:00")):
        folder = tmp_path / stage / job
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "provenance.json").write_text(json.dumps({"start": f"2026-12-07T{start}+00:00",
                                                            "end": f"2026-12-07T{end}+00:00"}))
    spans = pipeline.stage_spans(tmp_path)
    assert sorted(spans) == ["class3d", "pick"] and len(spans["pick"]) == 2
    t0 = spans["pick"][0][0] - 10  # 00:00:00
    sampler = pipeline.GpuSampler()
    sampler.samples = [(t0 + 15, 50.0, 1000.0), (t0 + 25, 0.0, 9000.0), (t0 + 35, 100.0, 2000.0),
                       (t0 + 90, 80.0, 4096.0)]
    assert sampler.over(spans["pick"]) == (75.0, 2000.0)
    assert sampler.over(spans["class3d"]) == (80.0, 4096.0)
    util, mem = sampler.over([(t0 + 500, t0 + 600)])
    assert util != util and mem != mem  # NaN: no samples there
