"""``cryopipe class2d``: 2D classification by multi-reference alignment (Cryo-RALib), on CPU/GPU, 1 or N MPI ranks.

    cryopipe class2d --particles extract/particles.star --classes 50 --out class2d [--box 64] [--iterations 20]
                     [--shift-range 3] [--shift-step 1] [--angular-sampling DEG] [--diameter 140 | --mask-diameter 150]
                     [--ctf phaseflip|wiener|none] [--references refs.mrcs] [--mirrors] [--device gpu]

writes ``OUT/class_averages.mrcs`` (largest class first), ``OUT/particles.star`` (rlnClassNumber, rlnAnglePsi,
rlnOriginXAngst/YAngst, cpScore), ``OUT/classes.star`` (data_model_classes: size, mean score, FRC resolution)
and ``OUT/class_averages.png``, ``OUT/class2d_histograms.png``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cryopipe.cache import add_arguments as add_cache_arguments
from cryopipe.class2d.stage import CTF_MODES, Class2DInputs, Class2DParams, run
from cryopipe.cli import add_common
from cryopipe.errors import InputError
from cryopipe.io.mrc import read_mrc_header

__all__ = ["HELP", "add_arguments", "configure", "run"]

HELP = "2D classification by multi-reference alignment (polar rotational correlation), with class averages"

_D = Class2DParams(classes=1)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--particles", required=True, help="particles STAR (e.g. from cryopipe extract)")
    p.add_argument("--classes", type=int, help="number of classes K (default: the number of --references)")
    p.add_argument("--box", type=int, help="Fourier-downscale the particles to this box, px (default: keep)")
    p.add_argument("--iterations", type=int, default=_D.iterations, help=f"at most this many (default {_D.iterations})")
    p.add_argument("--shift-range", type=float, default=_D.shift_range,
                   help=f"trial shifts up to +- this many particle pixels in x and y (default {_D.shift_range:g})")
    p.add_argument("--shift-step", type=float, default=_D.shift_step,
                   help=f"step of the trial shifts, particle pixels (default {_D.shift_step:g})")
    p.add_argument("--angular-sampling", type=float,
                   help="in-plane angular step, degrees (default: about 1 px on the outer ring)")
    p.add_argument("--diameter", type=float,
                   help="particle diameter, Angstrom: the mask diameter is round(1.1 x this) unless --mask-diameter")
    p.add_argument("--mask-diameter", type=float,
                   help="circular mask and alignment diameter, Angstrom (default: round(1.1 x --diameter), else 80%% "
                        "of the box)")
    p.add_argument("--ctf", choices=CTF_MODES, default=_D.ctf,
                   help="CTF correction: phase flip (default), Wiener-weighted averages, or none")
    p.add_argument("--wiener-snr", type=float, default=_D.wiener_snr,
                   help=f"particle SNR assumed by --ctf wiener (regularises by 1/SNR; default {_D.wiener_snr:g})")
    p.add_argument("--references", help="initial references, MRCS of K images (default: K random-subset averages)")
    p.add_argument("--mirrors", action="store_true", help="also align mirrored particles")
    p.add_argument("--convergence", type=float, default=_D.convergence,
                   help=f"stop when fewer than this fraction of particles change class (default {_D.convergence:g})")
    p.add_argument("--min-class-fraction", type=float, default=_D.min_class_fraction,
                   help="in the first half of the iterations, reseed classes smaller than this fraction of the mean "
                        f"class size by splitting the largest class (default {_D.min_class_fraction:g})")
    p.add_argument("--seed", type=int, default=_D.seed, help=f"random seed of the initial subsets (default {_D.seed})")
    p.add_argument("--batch-size", type=int, help="particles per device batch (default: from free memory)")
    add_common(p)
    add_cache_arguments(p)


def configure(args: argparse.Namespace) -> tuple[Class2DParams, Class2DInputs]:
    classes = args.classes
    if classes is None:
        if args.references is None:
            raise InputError("give --classes, or --references to take K from", field="--classes")
        classes = read_mrc_header(args.references).shape[0]
    params = Class2DParams(
        classes=classes, box=args.box, iterations=args.iterations, shift_range=args.shift_range,
        shift_step=args.shift_step, angular_sampling=args.angular_sampling, diameter_A=args.diameter,
        mask_diameter_A=args.mask_diameter, ctf=args.ctf, mirrors=args.mirrors, convergence=args.convergence,
        min_class_fraction=args.min_class_fraction, wiener_snr=args.wiener_snr, seed=args.seed,
        batch_size=args.batch_size,
    )
    return params, Class2DInputs(Path(args.particles), Path(args.references) if args.references else None)
