"""``cryopipe summary``: the run at a glance, from the stages' provenance records.

    cryopipe summary --results results --out results/summary

writes ``OUT/summary.tsv`` and ``OUT/summary.png`` (each stage's key numbers, jobs, wall time, peak memory) and
``OUT/picks.jpg`` (the first picking batch's preview, small, for the report).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cryopipe.cli import add_common
from cryopipe.summary.stage import SummaryInputs, SummaryParams, run

__all__ = ["HELP", "add_arguments", "configure", "run"]

HELP = "one page of a finished run: each stage's key numbers, time and memory (from the provenance records)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = SummaryParams()
    p.add_argument("--results", required=True, type=Path, help="the workflow's results folder")
    p.add_argument("--preview-px", type=int, default=d.preview_px,
                   help=f"long side of the picking preview in the summary, pixels (default {d.preview_px})")
    add_common(p, device=False)


def configure(args: argparse.Namespace) -> tuple[SummaryParams, SummaryInputs]:
    return SummaryParams(preview_px=args.preview_px), SummaryInputs(args.results)
