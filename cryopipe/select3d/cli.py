"""``cryopipe select3d``: the particles of one 3D class and its map, for refinement.

    cryopipe select3d --particles class3d/run_it015_data.star --maps class3d/run_it015_class*.mrc --out select3d
                      [--class K]

writes ``OUT/particles.star`` and ``OUT/reference.mrc``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cryopipe.cli import add_common
from cryopipe.select3d.stage import select_class

HELP = "select one 3D class (a number, or the most populated) and keep its particles and map"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--particles", required=True, type=Path, help="class3d data STAR (run_itNNN_data.star)")
    p.add_argument("--maps", required=True, type=Path, nargs="+", help="the class maps (run_itNNN_classKKK.mrc)")
    p.add_argument("--class", dest="chosen", type=int, default=0,
                   help="class number to keep (default 0: the most populated)")
    add_common(p, device=False)


def main(args: argparse.Namespace, recorder) -> None:
    result = select_class(args.particles, args.maps, args.chosen, args.out)
    recorder.add_input(args.particles, *(m for m in args.maps if m.name.endswith(f"class{result.chosen:03d}.mrc")))
    recorder.add_output(*result.files)
    recorder.note(chosen_class=result.chosen, particles=result.count, of=result.total)
