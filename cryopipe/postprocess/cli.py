"""``cryopipe postprocess``: solvent mask, mask-corrected FSC, B-factor sharpening of two half-maps."""

from __future__ import annotations

import argparse
from pathlib import Path

from cryopipe.cli import add_common
from cryopipe.postprocess.stage import PostprocessInputs, PostprocessParams, run

__all__ = ["HELP", "add_arguments", "configure", "run"]

HELP = "post-process half-maps: soft solvent mask, phase-randomisation-corrected FSC, Guinier B-factor, sharpening"

_D = PostprocessParams()


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--half1", required=True, type=Path, help="first gold-standard half-map (MRC)")
    p.add_argument("--half2", required=True, type=Path, help="second half-map (same box and pixel size)")
    p.add_argument("--mask", type=Path, help="soft mask in [0, 1] (default: made from the averaged half-maps)")
    p.add_argument("--mask-lowpass", type=float, default=_D.mask_lowpass_A,
                   help=f"mask low-pass, A (default {_D.mask_lowpass_A:g})")
    p.add_argument("--mask-threshold", type=float, default=_D.mask_threshold,
                   help="mask threshold as a fraction of the low-passed map's maximum "
                   f"(default {_D.mask_threshold:g})")
    p.add_argument("--extend", type=float, default=_D.extend_px, help=f"mask dilation, px (default {_D.extend_px:g})")
    p.add_argument("--soft-edge", type=float, default=_D.edge_px,
                   help=f"mask raised-cosine edge, px (default {_D.edge_px:g})")
    p.add_argument("--fit-low", type=float, default=_D.fit_low_A, help="lowest resolution of the Guinier fit, A "
                   f"(default {_D.fit_low_A:g})")
    p.add_argument("--bfactor", type=float, help="B-factor to apply, A^2 (default: fitted)")
    add_common(p, device=False)


def configure(args: argparse.Namespace) -> tuple[PostprocessParams, PostprocessInputs]:
    params = PostprocessParams(mask_lowpass_A=args.mask_lowpass, mask_threshold=args.mask_threshold,
                               extend_px=args.extend, edge_px=args.soft_edge, fit_low_A=args.fit_low,
                               bfactor=args.bfactor)
    return params, PostprocessInputs(args.half1, args.half2, args.mask)
