"""The stage contract: what every ``cryopipe <stage>`` is made of (README "Adding a stage").

A stage is a package ``cryopipe/<stage>/`` with

* ``cli.py``: ``HELP`` (one line), ``add_arguments(parser)``, ``configure(args) -> (params, inputs)`` (flags to
  the stage's parameter dataclass and its inputs dataclass; defaults live in the dataclasses), ``run`` (the science
  entry point, imported from the science module) and ``ITERATIVE = True`` for stages that checkpoint iterations;
* one science module whose entry point is ``run(params, inputs, out, ctx) -> StageResult``: ``out`` is the folder
  to write into (the CLI's staging or run folder), ``ctx`` a :class:`StageContext`.

The CLI (:func:`cryopipe.cli.run_stage`) takes the output folder's lock, makes the staging folder, calls
``configure`` then ``run``, publishes the folder as the whole new result and writes the provenance record from the
:class:`StageResult`. From a notebook, the same function runs with ``StageContext.local()``::

    from cryopipe.select2d.stage import Select2DInputs, SelectParams, run
    result = run(SelectParams(min_size=10), Select2DInputs(particles, classes), Path("sel"), StageContext.local())
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryopipe.backend import Backend, get_backend
from cryopipe.parallel import SerialComm


@dataclass
class StageResult:
    """What a stage did: ``files`` it wrote (inside ``out``), ``notes`` for the provenance record (JSON-able) and
    ``inputs``, the files it read, where these are not simply every file its inputs dataclass names (micrographs
    found by a glob, the one map chosen among several); None: those files."""

    files: list[Path] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)
    inputs: list[Path] | None = None


@dataclass
class StageContext:
    """Where a stage runs.

    ``backend``: the array/FFT namespace (None for stages that compute nothing heavy); ``comm``: the MPI
    communicator (a one-rank stand-in without MPI); ``out_final``: the folder the results are published to, for
    paths written INTO files (STAR image names); ``recorder``: the provenance recorder (None outside the CLI);
    ``cache_args``: the ``--scratch-*`` flags (None: no node-local cache); ``resumed``: an iterative stage continues
    an interrupted run of the same command."""

    backend: Backend | None = None
    comm: Any = field(default_factory=SerialComm)
    out_final: Path | None = None
    recorder: Any = None
    cache_args: argparse.Namespace | None = None
    resumed: bool = False

    @classmethod
    def local(cls, device: str | None = "cpu", out_final: Path | None = None) -> StageContext:
        """A one-process context for notebooks and tests (``device=None``: no backend)."""
        return cls(backend=None if device is None else get_backend(device), out_final=out_final)

    def final(self, out: Path) -> Path:
        """The folder the results of ``out`` will be read from: where paths inside files must point."""
        return Path(self.out_final) if self.out_final is not None else Path(out)

    def cache(self):
        """A context manager yielding the node-local stack cache the flags ask for (a disabled one without flags);
        its statistics go into the record."""
        from cryopipe.cache import StackCache, stage_cache

        if self.cache_args is None:
            return contextlib.nullcontext(StackCache.disabled())
        return stage_cache(self.cache_args, self.recorder, self.comm)


def input_files(inputs) -> list[Path]:
    """The existing files an inputs dataclass names (fields holding a path or a list of paths)."""
    found: list[Path] = []
    for f in dataclasses.fields(inputs) if dataclasses.is_dataclass(inputs) else ():
        value = getattr(inputs, f.name)
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(v, (str, Path)) and Path(v).is_file():
                found.append(Path(v))
    return found
