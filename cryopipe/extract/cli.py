"""``cryopipe extract``: box, downscale and normalise picked particles; or merge per-batch particle STARs.

Extract (one job per batch of micrographs)::

    cryopipe extract --picks pick/picks.star --ctf micrographs_ctf.star --box 256 [--bin 2 | --out-box 128]
                     [--no-invert] [--micrographs <batch files | glob | STAR>] --out extract/batch_001

writes ``OUT/Particles/<micrograph>.mrcs`` and ``OUT/particles.star``. Gather (rule ``gather_particles``)::

    cryopipe extract --gather extract/batch_*/particles.star --out extract

writes ``OUT/particles.star``: all particles, one ``data_optics`` table, image names pointing at the batch stacks.
"""

from __future__ import annotations

import argparse

from cryopipe.cli import add_common
from cryopipe.extract.stage import ExtractInputs, ExtractParams, run

__all__ = ["HELP", "add_arguments", "configure", "run"]

HELP = "extract particles (box, Fourier-downscale, normalise, invert) into stacks + particles.star; --gather merges"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = __doc__
    p.add_argument("--picks", help="picks STAR (rlnMicrographName, rlnCoordinateX/Y), e.g. from cryopipe pick")
    p.add_argument("--ctf", help="micrographs CTF STAR (data_optics + data_micrographs with rlnDefocusU/V/Angle); "
                   "without it the particles carry no CTF (for class2d --ctf none) and the pixel size comes from "
                   "--angpix or the MRC headers")
    p.add_argument("--micrographs", nargs="+",
                   help="extract only these micrographs (files, quoted globs or a STAR; default: all in --picks)")
    p.add_argument("--box", type=int, help="box size in micrograph pixels (even)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--out-box", type=int, help="Fourier-downscale the boxes to this size (even, px)")
    size.add_argument("--bin", type=float, help="Fourier-downscale by this factor (output box = box / bin)")
    p.add_argument("--invert", action=argparse.BooleanOptionalAction, default=ExtractParams.invert,
                   help="invert contrast: dark protein in the micrographs -> white particles, as RELION expects "
                   f"(default {ExtractParams.invert}; --no-invert for micrographs with white protein)")
    p.add_argument("--bg-radius", type=float,
                   help="background radius for normalisation, output pixels (default 0.375 x output box)")
    p.add_argument("--no-normalise", action="store_true", help="skip RELION's background normalisation")
    p.add_argument("--angpix", type=float, help="micrograph pixel size, A/px (default: CTF STAR, else header)")
    p.add_argument("--max-ctf-resolution", type=float,
                   help="drop micrographs whose CTF was fitted only to a worse resolution (rlnCtfMaxResolution, A) "
                        "or flagged by cryopipe ctf (default: keep all); the dropped ones go into the record")
    p.add_argument("--gather", nargs="+", metavar="STAR",
                   help="instead of extracting: merge these particle STARs into OUT/particles.star")
    add_common(p)


def configure(args: argparse.Namespace) -> tuple[ExtractParams, ExtractInputs]:
    params = ExtractParams(box_px=args.box, out_box_px=args.out_box, bin_factor=args.bin, invert=args.invert,
                           bg_radius_px=args.bg_radius, normalise=not args.no_normalise,
                           max_ctf_resolution_A=args.max_ctf_resolution, angpix=args.angpix)
    return params, ExtractInputs(args.picks, args.ctf, args.micrographs, args.gather)
