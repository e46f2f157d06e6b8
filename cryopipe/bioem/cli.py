"""``cryopipe bioem``: rank structural models by their BioEM posterior against individual particle images.

Default mode::

    cryopipe bioem --particles particles.star --models a.pdb b.pdb map.mrc --out bioem/ \\
        [--orientation-grid 2 | --orientations poses.star [--orientation-prior refined.star] \\
         | --local-orientations refined.star [--local-radius 10 --local-step 5]] \\
        [--defocus-grid -500 500 5] [--amplitude-grid 0.07 0.13 3] [--bfactor-grid 0 100 3] [--displacement 3 1]

BioEM 2.1 inputs and numbers::

    cryopipe bioem --compat bioem2.1 --params param.txt --particles particles.txt|.mrc|list.txt \\
        --models model.txt|.pdb [--orientations angles.txt] --out bioem/

Flags become :class:`~cryopipe.bioem.stage.RankParams` and :class:`~cryopipe.bioem.stage.BioEMInputs`; the stage
is :func:`cryopipe.bioem.stage.run`. Outputs in --out: logp.star (per particle and model: ln P and the maximising
parameters), ranking.star (per model: summed ln P, difference to the best, ensemble weight +- s.d., particles
preferring it), ranking.png, cumulative_logp.png, orientation_logp.npz with --keep-orientations, and with --compat
the reference's Output_Probabilities[_model] (and ANG_PROB[_model] with WRITE_PROB_ANGLES).
"""

from __future__ import annotations

import argparse

from cryopipe.bioem.stage import BioEMInputs, RankParams, run
from cryopipe.cache import add_arguments as add_cache_arguments
from cryopipe.cli import add_common

__all__ = ["HELP", "add_arguments", "configure", "run"]

HELP = "rank structural models (PDB/mmCIF, maps, BioEM text) by BioEM posteriors against particle images"


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = RankParams()
    p.add_argument("--particles", required=True,
                   help="particles: RELION STAR (default mode); BioEM text, MRC, or a text file naming one MRC stack "
                   "per line (BioEM's --ReadMultipleMRC list, names relative to the working directory) (--compat)")
    p.add_argument("--models", required=True, nargs="+", help="model files: .pdb/.cif, .mrc map, or BioEM text model")
    add_common(p)
    add_cache_arguments(p)
    p.add_argument("--compat", choices=["bioem2.1"], help="reproduce BioEM 2.1 from its input files and conventions")
    p.add_argument("--params", help="BioEM parameter file (with --compat)")
    p.add_argument("--orientations", help="orientation list: STAR with rlnAngleRot/Tilt/Psi (BioEM list with --compat)")
    p.add_argument("--orientation-grid", type=int, default=d.orientation_order, metavar="ORDER",
                   help="HEALPix order of the global orientation grid: 1 -> 576, 2 -> 4608 (default 1)")
    p.add_argument("--orientation-prior", help="STAR with each particle's refined angles: Gaussian orientation prior")
    p.add_argument("--orientation-prior-sigma", type=float, default=d.orientation_prior_sigma,
                   help=f"width of the orientation prior, degrees (default {d.orientation_prior_sigma})")
    p.add_argument("--local-orientations", metavar="STAR",
                   help="STAR with each particle's refined angles: integrate each particle only over a ball of "
                        "orientations around them (every model at its own best pose; instead of a global grid)")
    p.add_argument("--local-map", metavar="MRC",
                   help="the map the --local-orientations were found against (e.g. the refinement's, from a de novo "
                        "initial model): each model is fitted into it (rotation, hand) and the poses follow")
    p.add_argument("--local-radius", type=float, default=d.local_radius,
                   help=f"radius of that ball, degrees (default {d.local_radius:g})")
    p.add_argument("--local-step", type=float, default=d.local_step,
                   help=f"lattice step inside the ball, degrees (default {d.local_step:g}: 33 orientations per "
                        "particle at radius 10)")
    p.add_argument("--defocus-grid", type=float, nargs=3, default=d.defocus_grid, metavar=("START", "END", "N"),
                   help="defocus offsets from each particle's estimate, A, N values end inclusive (default 0 0 1)")
    p.add_argument("--defocus-sigma", type=float, default=d.defocus_sigma,
                   help=f"defocus prior width, A (default {d.defocus_sigma:g})")
    p.add_argument("--defocus-center", type=float, default=d.defocus_center,
                   help="defocus prior centre, A, for particles without a CTF estimate (the grid is then absolute) "
                   f"(default {d.defocus_center:g})")
    p.add_argument("--amplitude-grid", type=float, nargs=3, metavar=("START", "END", "N"),
                   help="amplitude contrast values (default: each particle's rlnAmplitudeContrast)")
    p.add_argument("--amplitude-center", type=float, help="amplitude contrast prior centre (default: the particles')")
    p.add_argument("--amplitude-sigma", type=float, default=d.amplitude_sigma,
                   help=f"amplitude contrast prior width (default {d.amplitude_sigma:g})")
    p.add_argument("--bfactor-grid", type=float, nargs=3, default=d.bfactor_grid, metavar=("START", "END", "N"),
                   help="B-factor envelope values exp(-B s^2/4), A^2 (default 0 0 1)")
    p.add_argument("--bfactor-sigma", type=float, default=d.bfactor_sigma, help="half-normal B-factor prior width, A^2 "
                   f"(default {d.bfactor_sigma:g})")
    p.add_argument("--displacement", type=int, nargs=2, default=(d.max_shift_px, d.shift_step_px), metavar=("M", "G"),
                   help="displacements up to +-M pixels in steps of G (default 3 1)")
    p.add_argument("--points", choices=["atom", "residue"], default=d.points,
                   help="atomic models: one point per atom, or one sphere per residue (BioEM's table)")
    p.add_argument("--shape", choices=["gaussian", "sphere"], default=d.shape, help="shape of each point")
    p.add_argument("--atom-sigma", type=float, default=d.atom_sigma,
                   help=f"Gaussian width of an atom, A (default {d.atom_sigma:g})")
    p.add_argument("--center-models", action="store_true", help="move each model to its electron-weighted centre")
    p.add_argument("--keep-orientations", action="store_true", help="write ln P per particle and orientation")
    p.add_argument("--cpu-fraction", metavar="F|auto", help="share of the images a CPU backend scores beside the "
                   "GPU, in [0, 1], or auto (by measured rates); default auto on a GPU, 0 on the CPU")
    p.add_argument("--precision", choices=["auto", "single", "double"], default=d.precision,
                   help="auto: double on the CPU, single-precision FFTs on the GPU")


def configure(args: argparse.Namespace) -> tuple[RankParams, BioEMInputs]:
    def grid(g):
        return None if g is None else (g[0], g[1], int(g[2]))

    params = RankParams(
        orientation_order=args.orientation_grid, orientations=args.orientations,
        orientation_prior=args.orientation_prior, orientation_prior_sigma=args.orientation_prior_sigma,
        local_orientations=args.local_orientations, local_map=args.local_map, local_radius=args.local_radius,
        local_step=args.local_step,
        defocus_grid=grid(args.defocus_grid), defocus_sigma=args.defocus_sigma, defocus_center=args.defocus_center,
        amplitude_grid=grid(args.amplitude_grid), amplitude_center=args.amplitude_center,
        amplitude_sigma=args.amplitude_sigma, bfactor_grid=grid(args.bfactor_grid), bfactor_sigma=args.bfactor_sigma,
        max_shift_px=args.displacement[0], shift_step_px=args.displacement[1], points=args.points, shape=args.shape,
        atom_sigma=args.atom_sigma, center_models=args.center_models, keep_orientations=args.keep_orientations,
        precision=args.precision, cpu_fraction=args.cpu_fraction, compat=args.compat)
    return params, BioEMInputs(args.particles, list(args.models), args.params)
