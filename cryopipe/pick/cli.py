"""``cryopipe pick``: template picking by FFT locally normalised cross-correlation (gEMpicker / RELION-2 autopick).

Writes ``OUT/coords/<micrograph>.star`` (rlnCoordinateX/Y in micrograph pixels, rlnAutopickFigureOfMerit = NCC,
rlnClassNumber = template, rlnAnglePsi), ``OUT/picks.star`` (all picks with rlnMicrographName),
``OUT/picks_preview.png`` and, with ``--write-maps``, ``OUT/maps/<micrograph>_ncc.mrc``.
Under ``mpiexec -n N`` ranks split micrographs, or template-rotations when micrographs are fewer than ranks.
"""

from __future__ import annotations

import argparse

from cryopipe.cli import add_common
from cryopipe.pick.stage import PickInputs, PickParams, run

__all__ = ["HELP", "add_arguments", "configure", "run"]

HELP = "pick particles by FFT locally normalised cross-correlation with rotated templates"


def _threshold(text: str) -> float | None:
    return None if text == "auto" else float(text)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = __doc__
    p.add_argument("--micrographs", nargs="+", required=True,
                   help="micrograph files, quoted glob patterns, or a micrographs STAR file (rlnMicrographName)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--templates", nargs="+",
                     help="2D templates: MRCS stacks or MRC images of one box size (e.g. class averages; white "
                          "protein by default)")
    src.add_argument("--reference", help="3D map (MRC) projected along --directions directions as templates")
    p.add_argument("--masks", help="masks for --templates (MRCS, one per template or one for all; default circular)")
    p.add_argument("--directions", type=int, default=PickParams.directions,
                   help=f"projection directions for --reference (default {PickParams.directions})")
    p.add_argument("--template-angpix", type=float, help="pixel size of templates/reference (default: header)")
    p.add_argument("--angpix", type=float, help="micrograph pixel size, A/px (default: STAR optics, else header)")
    p.add_argument("--diameter", type=float, required=True, help="particle diameter, Angstrom")
    p.add_argument("--angular-step", type=float, default=PickParams.angular_step,
                   help=f"in-plane rotation step, degrees (default {PickParams.angular_step:g})")
    p.add_argument("--lowpass", type=float, default=PickParams.lowpass_A,
                   help="low-pass micrographs and templates to this resolution (A) and shrink the micrographs "
                        f"accordingly; 0: full resolution (default {PickParams.lowpass_A:g})")
    p.add_argument("--highpass", type=float, help="also high-pass at this resolution, Angstrom (default none)")
    p.add_argument("--threshold", type=_threshold, default=None,
                   help="minimum NCC of a pick, or 'auto' (default): median + K robust s.d. of the micrograph's "
                        "NCC map (K = --auto-sigmas)")
    p.add_argument("--auto-sigmas", type=float, default=PickParams.auto_sigmas,
                   help=f"K of the automatic threshold (default {PickParams.auto_sigmas})")
    p.add_argument("--min-distance", type=float, help="minimum distance between picks, Angstrom (default: diameter)")
    p.add_argument("--max-picks", type=int, help="keep at most this many picks per micrograph (the best)")
    p.add_argument("--box", type=int, help="no pick whose box of this size (px) leaves the micrograph "
                   "(default: the template box at the micrograph pixel size)")
    p.add_argument("--invert", action=argparse.BooleanOptionalAction, default=True,
                   help="templates have the opposite contrast to the micrographs: white-protein templates, "
                        "dark-protein micrographs (default yes, as RELION)")
    p.add_argument("--write-maps", action="store_true", help="write the NCC maps (working grid) as MRC")
    p.add_argument("--preview", type=int, default=PickParams.preview,
                   help=f"micrographs shown in picks_preview.png (default {PickParams.preview})")
    p.add_argument("--batch-size", type=int, help="template-rotations per batched FFT (default: from free memory)")
    p.add_argument("--mpi-mode", choices=["auto", "micrographs", "templates"], default=PickParams.mpi_mode,
                   help="under MPI, split micrographs or template-rotations between ranks (default auto)")
    add_common(p)


def configure(args: argparse.Namespace) -> tuple[PickParams, PickInputs]:
    params = PickParams(
        diameter_A=args.diameter, angular_step=args.angular_step, lowpass_A=args.lowpass or None,
        highpass_A=args.highpass, threshold=args.threshold, auto_sigmas=args.auto_sigmas,
        min_distance_A=args.min_distance, max_picks=args.max_picks, box_px=args.box, invert=args.invert,
        batch_size=args.batch_size, angpix=args.angpix, template_angpix=args.template_angpix,
        directions=args.directions, write_maps=args.write_maps, preview=args.preview, mpi_mode=args.mpi_mode,
    )
    return params, PickInputs(args.micrographs, args.templates, args.reference, args.masks)
