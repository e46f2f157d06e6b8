"""Every stage follows the stage contract (cryopipe/stage.py), and a new stage needs only the files README's
"Adding a stage" lists: a toy stage, written here the way that section says, runs, publishes and records."""

import inspect
import json
import textwrap

import pytest

from cryopipe import cli
from cryopipe.stage import StageContext, StageResult


@pytest.mark.parametrize("name", sorted(cli.STAGES))
def test_every_stage_has_the_same_shape(name):
    module = cli._load_stage(name)
    for attr in ("HELP", "add_arguments", "configure", "run"):
        assert hasattr(module, attr), f"cryopipe {name}: its cli module lacks {attr}"
    assert not hasattr(module, "main"), f"cryopipe {name}: main(args, recorder) is the old shape"
    assert list(inspect.signature(module.run).parameters) == ["params", "inputs", "out", "ctx"]
    package = module.__name__.rsplit(".", 1)[0]
    assert module.run.__module__ == f"{package}.stage", "the science entry point lives in <stage>/stage.py"


TOY_CLI = '''
"""``cryopipe toy``: doubles a number into OUT/value.txt."""
import argparse
from pathlib import Path

from cryopipe.cli import add_common
from toy.stage import ToyInputs, ToyParams, run

HELP = "double a number"


def add_arguments(p):
    p.add_argument("--number", type=Path, required=True, help="a text file holding a number")
    p.add_argument("--factor", type=float, default=ToyParams.factor, help="multiplier")
    add_common(p, device=False)


def configure(args):
    return ToyParams(factor=args.factor), ToyInputs(args.number)
'''

TOY_STAGE = '''
from dataclasses import dataclass
from pathlib import Path

from cryopipe.errors import require
from cryopipe.stage import StageResult


@dataclass
class ToyParams:
    factor: float = 2.0


@dataclass
class ToyInputs:
    number: Path


def run(params, inputs, out, ctx):
    text = Path(inputs.number).read_text().strip()
    require(text.lstrip("-").replace(".", "", 1).isdigit(), f"not a number: {text!r}", inputs.number, "value")
    (out / "value.txt").write_text(f"{params.factor * float(text):g}\\n")
    return StageResult(files=[out / "value.txt"], notes={"value": params.factor * float(text)})
'''


@pytest.fixture
def toy_dir(tmp_path, monkeypatch):
    package = tmp_path / "pkg" / "toy"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "cli.py").write_text(textwrap.dedent(TOY_CLI))
    (package / "stage.py").write_text(textwrap.dedent(TOY_STAGE))
    monkeypatch.syspath_prepend(str(tmp_path / "pkg"))
    monkeypatch.setitem(cli.STAGES, "toy", "toy.cli")
    return tmp_path


def test_a_toy_stage_runs_publishes_and_records(toy_dir, capsys):
    number, out = toy_dir / "n.txt", toy_dir / "out"
    number.write_text("21\n")
    assert cli.main(["toy", "--number", str(number), "--out", str(out)]) == 0
    assert (out / "value.txt").read_text() == "42\n"
    record = json.loads((out / "provenance.json").read_text())
    assert [e["path"] for e in record["inputs"]] == ["../n.txt"]
    assert [e["path"] for e in record["outputs"]] == ["value.txt"]
    assert record["notes"]["value"] == 42 and record["notes"]["parameters"] == {"factor": 2.0}
    assert sorted(p.name for p in out.iterdir()) == [".cryopipe.lock", ".cryopipe.published", "provenance.json",
                                                     "value.txt"]
    # a user's mistake: one line naming the file, exit 2, the earlier result untouched
    number.write_text("twenty\n")
    assert cli.main(["toy", "--number", str(number), "--out", str(out), "--factor", "3"]) == 2
    assert "n.txt" in capsys.readouterr().err and (out / "value.txt").read_text() == "42\n"
    assert not list(out.glob(".staging-*"))


def test_a_stage_listing_a_file_it_did_not_write_is_a_bug(toy_dir, monkeypatch):
    import toy.stage

    monkeypatch.setattr(toy.stage, "run", lambda p, i, out, ctx: StageResult(files=[out / "missing.txt"]))
    monkeypatch.setattr("toy.cli.run", toy.stage.run)
    number = toy_dir / "n.txt"
    number.write_text("1\n")
    with pytest.raises(RuntimeError, match="missing.txt"):
        cli.main(["toy", "--number", str(number), "--out", str(toy_dir / "out")])
    assert not (toy_dir / "out" / "provenance.json").exists()


def test_a_stage_runs_from_a_notebook(toy_dir):
    import toy.stage

    (toy_dir / "n.txt").write_text("5\n")
    (toy_dir / "nb").mkdir()
    result = toy.stage.run(toy.stage.ToyParams(factor=4), toy.stage.ToyInputs(toy_dir / "n.txt"), toy_dir / "nb",
                           StageContext.local(device=None))
    assert result.notes == {"value": 20.0} and (toy_dir / "nb" / "value.txt").read_text() == "20\n"
