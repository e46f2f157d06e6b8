"""``cryopipe select2d``: keep the particles of chosen 2D classes.

    cryopipe select2d --particles class2d/particles.star --classes-star class2d/classes.star --out select2d
                      [--keep 1 3 4 | --min-size auto --max-resolution auto --min-score auto]

writes ``OUT/particles.star`` (the kept classes' particles), ``OUT/selection.tsv`` (every class, kept or not
and why), ``OUT/class_averages.mrcs`` + ``OUT/classes.star`` (the kept classes) and ``OUT/select2d.png``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cryopipe.cli import add_common
from cryopipe.select2d.stage import Select2DInputs, SelectParams, run

__all__ = ["HELP", "add_arguments", "configure", "run"]

HELP = "select 2D classes (a list, or by size, FRC resolution and score) and keep their particles"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--particles", required=True, help="particles STAR with rlnClassNumber (cryopipe class2d)")
    p.add_argument("--classes-star", required=True,
                   help="classes STAR (data_model_classes with cpClassSize, rlnEstimatedResolution, cpMeanScore)")
    p.add_argument("--keep", type=int, nargs="+", metavar="CLASS",
                   help="keep exactly these class numbers (the criteria below are then ignored)")
    p.add_argument("--min-size", default="auto",
                   help="keep classes with at least this many particles; 'auto' (default): 20%% of the mean "
                        "class size; 'off'")
    p.add_argument("--max-resolution", default="auto",
                   help="keep classes whose FRC resolution is at most this, Angstrom; 'auto' (default): median + 3 "
                        "robust s.d. over the classes; 'off'")
    p.add_argument("--min-score", default="auto",
                   help="keep classes whose mean score is at least this; 'auto' (default): median - 3 robust s.d.; "
                        "'off'")
    add_common(p, device=False)


def configure(args: argparse.Namespace) -> tuple[SelectParams, Select2DInputs]:
    params = SelectParams(keep=args.keep, min_size=args.min_size, max_resolution_A=args.max_resolution,
                          min_score=args.min_score)
    return params, Select2DInputs(Path(args.particles), Path(args.classes_star))
