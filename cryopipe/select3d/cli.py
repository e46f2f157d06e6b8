"""``cryopipe select3d``: the particles of one 3D class and its map, for refinement.

    cryopipe select3d --particles class3d/run_it015_data.star --maps class3d/run_it015_class*.mrc --out select3d
                      [--class K]

writes ``OUT/particles.star`` and ``OUT/reference.mrc``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cryopipe.cli import add_common
from cryopipe.select3d.stage import Select3DInputs, Select3DParams, run

__all__ = ["HELP", "add_arguments", "configure", "run"]

HELP = "select one 3D class (a number, or the most populated) and keep its particles and map"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--particles", required=True, type=Path, help="class3d data STAR (run_itNNN_data.star)")
    p.add_argument("--maps", required=True, type=Path, nargs="+", help="the class maps (run_itNNN_classKKK.mrc)")
    p.add_argument("--class", dest="chosen", type=int, default=0,
                   help="class number to keep (default 0: the most populated)")
    add_common(p, device=False)


def configure(args: argparse.Namespace) -> tuple[Select3DParams, Select3DInputs]:
    return Select3DParams(chosen=args.chosen), Select3DInputs(args.particles, list(args.maps))
