"""``cryopipe align-maps``: align a map onto a reference (rotation, shift, hand) and compare them by FSC.

    cryopipe align-maps --moving B.mrc --reference A.mrc --out DIR [--lowpass 20] [--angpix A]

writes ``DIR/aligned.mrc``, ``DIR/alignment.star``, ``DIR/fsc.star`` and ``DIR/fsc.png``
(:mod:`cryopipe.alignmaps.stage`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cryopipe.alignmaps.stage import AlignMapsInputs, AlignMapsParams, run
from cryopipe.cli import add_common

__all__ = ["HELP", "add_arguments", "configure", "run"]

HELP = "align one map onto another (rotation, shift, hand) and write the aligned map and their FSC"

_D = AlignMapsParams()


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--moving", required=True, type=Path, help="the map to align (MRC)")
    p.add_argument("--reference", required=True, type=Path, help="the map it is aligned onto (same box, pixel size)")
    p.add_argument("--lowpass", type=float, default=_D.lowpass_A,
                   help=f"resolution of the global search, A (default {_D.lowpass_A:g})")
    p.add_argument("--angpix", type=float, help="pixel size of both maps, A (default: from the MRC headers)")
    p.add_argument("--diameter", type=float, help="diameter of the soft spherical mask, A (default 0.8 x the box)")
    p.add_argument("--max-shift", type=float, help="largest shift searched, A (default 0.1 x the box)")
    p.add_argument("--healpix-order", type=int, default=_D.healpix_order,
                   help=f"rotation grid of the global search: 1 (30 deg) or 2 (15 deg) (default {_D.healpix_order})")
    p.add_argument("--candidates", type=int, default=_D.candidates,
                   help=f"best grid rotations per hand refined locally (default {_D.candidates})")
    p.add_argument("--refine-box", type=int, default=_D.refine_box,
                   help=f"largest box of the final refinement, px (default {_D.refine_box})")
    add_common(p)


def configure(args: argparse.Namespace) -> tuple[AlignMapsParams, AlignMapsInputs]:
    params = AlignMapsParams(lowpass_A=args.lowpass, angpix=args.angpix, diameter_A=args.diameter,
                             max_shift_A=args.max_shift, healpix_order=args.healpix_order, candidates=args.candidates,
                             refine_box=args.refine_box)
    return params, AlignMapsInputs(args.moving, args.reference)
