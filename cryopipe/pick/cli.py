"""``cryopipe pick``: template picking by FFT locally normalised cross-correlation (gEMpicker / RELION-2 autopick).

Templates: 2D images (class averages), projections of a 3D map, or blobs of the particle's size (no
reference at all). The threshold is chosen per micrograph against a null search with the contrast-inverted
templates: where the estimated F1 is best, or (--fdr) where the estimated false-discovery rate reaches a
given value. Picks where the micrograph's local mean or texture stands out (carbon, contaminants,
aggregates) are set aside.

Writes ``OUT/coords/<micrograph>.star`` (rlnCoordinateX/Y in micrograph pixels, rlnAutopickFigureOfMerit = NCC,
rlnClassNumber = template, rlnAnglePsi; then a ``pick_summary`` block: threshold, estimated FDR, counts),
``OUT/picks.star`` (all picks with rlnMicrographName), ``OUT/pick_summary.star`` (a row per micrograph),
``OUT/rejected.star`` (artefact picks with the reason), ``OUT/picks_preview.png`` and, with ``--write-maps``,
``OUT/maps/<micrograph>_ncc.mrc``.
Under ``mpiexec -n N`` ranks split micrographs, or template-rotations when micrographs are fewer than ranks.
"""

from __future__ import annotations

import argparse

from cryopipe.cli import add_common
from cryopipe.pick.stage import DISTANCE_FACTOR, MASK_FACTOR, PickInputs, PickParams, run
from cryopipe.pick.templates import BLOB_KINDS

__all__ = ["HELP", "add_arguments", "configure", "run"]

HELP = "pick particles by FFT locally normalised cross-correlation with rotated templates"


def _threshold(text: str) -> float | None:
    return None if text == "auto" else float(text)


def _off_or_float(text: str) -> float | None:
    return None if text == "off" else float(text)


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
    src.add_argument("--blob", choices=BLOB_KINDS,
                     help="no templates: blobs of the particle's size, 'disc' (spheres of 0.35-0.8 diameters, "
                          "a compact particle) or 'ring' (shells of 0.9-1.2 diameters, a hollow one)")
    p.add_argument("--ctf", help="the micrographs' CTF STAR: correlate templates as imaged under each micrograph's "
                   "CTF (RELION's CTF-aware autopick; default: templates as given)")
    p.add_argument("--masks", help="masks for --templates (MRCS, one per template or one for all; default circular)")
    p.add_argument("--directions", type=int, default=PickParams.directions,
                   help=f"projection directions for --reference (default {PickParams.directions})")
    p.add_argument("--template-angpix", type=float, help="pixel size of templates/reference (default: header)")
    p.add_argument("--angpix", type=float, help="micrograph pixel size, A/px (default: STAR optics, else header)")
    p.add_argument("--diameter", type=float, required=True, help="particle diameter, Angstrom")
    p.add_argument("--mask-diameter", type=float,
                   help=f"diameter of the normalisation mask, Angstrom (default {MASK_FACTOR:g} x --diameter)")
    p.add_argument("--angular-step", type=float, default=PickParams.angular_step,
                   help=f"in-plane rotation step, degrees (default {PickParams.angular_step:g})")
    p.add_argument("--lowpass", type=float, default=PickParams.lowpass_A,
                   help="low-pass micrographs and templates to this resolution (A) and shrink the micrographs "
                        f"accordingly; 0: full resolution (default {PickParams.lowpass_A:g})")
    p.add_argument("--highpass", type=float, help="also high-pass at this resolution, Angstrom (default none)")
    p.add_argument("--threshold", type=_threshold, default=None,
                   help="minimum NCC of a pick, or 'auto' (default): per micrograph, where the estimated F1 is best "
                        "(the background estimated by a null search with contrast-inverted templates)")
    p.add_argument("--fdr", type=float, default=PickParams.fdr,
                   help="instead, the lowest threshold that keeps the estimated false-discovery rate at this value "
                        "(e.g. 0.05; default: the best estimated F1)")
    p.add_argument("--reject-sigmas", type=_off_or_float, default=PickParams.reject_sigmas,
                   help="set aside picks where the local mean or s.d. is this many robust s.d. from the "
                        f"micrograph's trend (carbon, contaminants), or 'off' (default {PickParams.reject_sigmas:g})")
    p.add_argument("--min-distance", type=float,
                   help=f"minimum distance between picks, Angstrom (default {DISTANCE_FACTOR:g} x --diameter)")
    p.add_argument("--max-picks", type=int, help="keep at most this many picks per micrograph (the best)")
    p.add_argument("--box", type=int, help="no pick whose box of this size (px) leaves the micrograph "
                   "(default: the template box at the micrograph pixel size)")
    p.add_argument("--invert", action=argparse.BooleanOptionalAction, default=True,
                   help="templates have the opposite contrast to the micrographs: white-protein templates, "
                        "dark-protein micrographs, as RELION (default True)")
    p.add_argument("--write-maps", action="store_true", help="write the NCC maps (working grid) as MRC")
    p.add_argument("--preview", type=int, default=PickParams.preview,
                   help=f"micrographs shown in picks_preview.png (default {PickParams.preview})")
    p.add_argument("--batch-size", type=int, help="template-rotations per batched FFT (default: from free memory)")
    p.add_argument("--mpi-mode", choices=["auto", "micrographs", "templates"], default=PickParams.mpi_mode,
                   help="under MPI, split micrographs or template-rotations between ranks (default auto)")
    add_common(p)


def configure(args: argparse.Namespace) -> tuple[PickParams, PickInputs]:
    params = PickParams(
        diameter_A=args.diameter, mask_diameter_A=args.mask_diameter, angular_step=args.angular_step,
        lowpass_A=args.lowpass or None, highpass_A=args.highpass, threshold=args.threshold, fdr=args.fdr,
        min_distance_A=args.min_distance, max_picks=args.max_picks, box_px=args.box, invert=args.invert,
        blob=args.blob, reject_sigmas=args.reject_sigmas,
        batch_size=args.batch_size, angpix=args.angpix, template_angpix=args.template_angpix,
        directions=args.directions, write_maps=args.write_maps, preview=args.preview, mpi_mode=args.mpi_mode,
    )
    return params, PickInputs(args.micrographs, args.templates, args.reference, args.masks, args.ctf)
