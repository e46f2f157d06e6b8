"""``cryopipe ctf``: CTF estimation of every micrograph after CTFFIND4 (Rohou and Grigorieff 2015).

    cryopipe ctf --micrographs 'Micrographs/*.mrc' --voltage 300 --cs 2.7 --amplitude-contrast 0.1 --out ctf
                 [--angpix 1.0] [--tile 512] [--resolution-range 30 5] [--defocus-range 0.3 5.0]
                 [--max-astigmatism 3000] [--phase-shift] [--per-tile] [--device auto]

writes ``OUT/micrographs_ctf.star`` (RELION's CtfFind job's: data_optics + data_micrographs with rlnDefocusU/V,
rlnDefocusAngle, rlnCtfAstigmatism, rlnCtfFigureOfMerit, rlnCtfMaxResolution, rlnPhaseShift, rlnCtfImage, and
cpCtfFlagged = 1 for micrographs without trustworthy Thon rings; with --per-tile cpDefocusPlaneA/B, the
defocus gradient in A per pixel: defocus(x, y) = rlnDefocusU/V + A (x - nx/2) + B (y - ny/2), in the pixel
coordinates of rlnCoordinateX/Y), ``OUT/spectra/<micrograph>.ctf`` (MRC: left half the background-subtracted
spectrum, right half the fit), ``OUT/diagnostics/<micrograph>.png``, ``OUT/ctf_summary.png`` and with
--per-tile ``OUT/tiles/<micrograph>.star``. Under ``mpiexec -n N`` ranks split the micrographs.
"""

from __future__ import annotations

import argparse

from cryopipe.cli import add_common
from cryopipe.ctfestimate.stage import PNG_WORKERS, CtfEstimateInputs, CtfEstimateParams, run

__all__ = ["HELP", "add_arguments", "configure", "run"]

HELP = "estimate each micrograph's CTF (defocus, astigmatism, phase shift) from its Thon rings, as CTFFIND4"

_D = CtfEstimateParams(voltage=300.0, cs=2.7, amplitude_contrast=0.1)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = __doc__
    p.add_argument("--micrographs", nargs="+", required=True,
                   help="micrograph files, quoted glob patterns, or a micrographs STAR file (rlnMicrographName)")
    p.add_argument("--angpix", type=float, help="pixel size, A/px (default: the STAR's optics, else the MRC header)")
    # required, but checked by the stage (one line, exit 2, like every input error) rather than by argparse
    p.add_argument("--voltage", type=float, help="acceleration voltage, kV (required)")
    p.add_argument("--cs", type=float, help="spherical aberration, mm (required)")
    p.add_argument("--amplitude-contrast", type=float, help="amplitude contrast Q0, e.g. 0.1 (required)")
    p.add_argument("--tile", type=int, default=_D.tile, help=f"tile size for the averaged spectrum, px (default "
                   f"{_D.tile}; tiles overlap by half)")
    p.add_argument("--resolution-range", type=float, nargs=2, default=list(_D.resolution_range_A),
                   metavar=("LOW", "HIGH"),
                   help="resolution band of the fit, Angstrom (default {:g} {:g})".format(*_D.resolution_range_A))
    p.add_argument("--defocus-range", type=float, nargs=2, default=list(_D.defocus_range_um), metavar=("MIN", "MAX"),
                   help="searched mean defocus, micrometres (default {:g} {:g})".format(*_D.defocus_range_um))
    p.add_argument("--max-astigmatism", type=float, default=_D.max_astigmatism_A,
                   help=f"largest |defocus U - V| of the coarse search, Angstrom (default {_D.max_astigmatism_A:g})")
    p.add_argument("--phase-shift", action="store_true", help="also fit a phase-plate phase shift (0-180 degrees)")
    p.add_argument("--per-tile", "--defocus-plane", dest="per_tile", action="store_true",
                   help="fit each tile's defocus (astigmatism fixed) and a defocus plane over the micrograph "
                        "(columns cpDefocusPlaneA/B, A per pixel; tables in OUT/tiles/)")
    p.add_argument("--fit-threshold", type=float, default=_D.fit_threshold,
                   help=f"windowed correlation of fit and data that defines the fit resolution (default "
                        f"{_D.fit_threshold:g})")
    p.add_argument("--min-z", type=float, default=_D.min_z,
                   help=f"flag micrographs whose FOM x sqrt(band pixels) is below this (default {_D.min_z:g})")
    p.add_argument("--batch-size", type=int, help="micrographs per batch (default: 4 on a CPU, 16 on a GPU)")
    p.add_argument("--no-diagnostics", action="store_true", help="skip the per-micrograph PNG and .ctf spectrum")
    p.add_argument("--png-workers", type=int, help="processes drawing the diagnostic PNGs beside the estimation "
                   f"(default: a quarter of the CPUs, 1 to {PNG_WORKERS}; 0: in the main thread)")
    p.add_argument("--truth", help="a CTF STAR of the true values (simulated data): the summary plot shows them and "
                   "the record gets the median errors")
    add_common(p)


def configure(args: argparse.Namespace) -> tuple[CtfEstimateParams, CtfEstimateInputs]:
    params = CtfEstimateParams(
        voltage=args.voltage, cs=args.cs, amplitude_contrast=args.amplitude_contrast, tile=args.tile,
        resolution_range_A=tuple(args.resolution_range), defocus_range_um=tuple(args.defocus_range),
        max_astigmatism_A=args.max_astigmatism, phase_shift=args.phase_shift, per_tile=args.per_tile,
        fit_threshold=args.fit_threshold, min_z=args.min_z, batch_size=args.batch_size,
        diagnostics=not args.no_diagnostics, png_workers=args.png_workers, angpix=args.angpix,
    )
    return params, CtfEstimateInputs(args.micrographs, args.truth)
