"""``cryopipe refine3d``: gold-standard 3D auto-refinement (RELION's 3D auto-refine), CPU/GPU, MPI.

    cryopipe refine3d --particles select3d/particles.star --reference select3d/reference.mrc --out refine3d
                      [--ini-high 40] [--healpix-order 2] [--diameter 150] [--symmetry C1] [--device gpu]
    cryopipe refine3d --continue refine3d/run_it005 --max-iterations 30 --out refine3d

writes ``OUT/run_itNNN_{data,model}.star`` and ``OUT/run_itNNN_half{1,2}_class001.mrc`` every iteration, and after
the final one ``OUT/half1.mrc``, ``OUT/half2.mrc``, ``OUT/map.mrc``, ``OUT/fsc.star``, ``OUT/particles.star`` and
``OUT/refine3d_{progress,slices}.png``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cryopipe.cache import add_arguments as add_cache_arguments
from cryopipe.cli import add_common, add_deprecated_alias
from cryopipe.em3d import driver
from cryopipe.em3d.driver import DIAMETER_FLAG, EMInputs
from cryopipe.refine3d.stage import Refine3DParams, run

__all__ = ["HELP", "ITERATIVE", "add_arguments", "configure", "run"]

HELP = ("3D auto-refine: gold-standard half-maps, FSC-driven resolution and auto-sampling (RELION), "
        "checkpoints every iteration")
ITERATIVE = True  # iterations checkpoint into a run folder; the same command resumes a killed run

_D = Refine3DParams()


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--particles", type=Path, help="particle STAR file (RELION 3.1+, with data_optics and CTF); "
                   "rlnRandomSubset (1/2) is kept when present")
    p.add_argument("--reference", type=Path, help="initial 3D reference map (MRC, particle box and pixel size)")
    p.add_argument("--ini-high", type=float, help=f"initial low-pass of the reference, A (default {_D.ini_high})")
    p.add_argument("--healpix-order", type=int, help=f"initial HEALPix order of the coarse search "
                   f"(default {_D.healpix_order} = {60 / 2 ** _D.healpix_order:g} deg; the fine pass is one order "
                   "finer)")
    p.add_argument("--auto-local-healpix-order", type=int, help="HEALPix order from which searches are local "
                   f"around each particle's previous orientation (default {_D.auto_local_healpix_order})")
    p.add_argument("--offset-range", type=float,
                   help=f"initial translation search range, px (default {_D.offset_range})")
    p.add_argument("--offset-step", type=float, help=f"initial translation step, px (default {_D.offset_step})")
    p.add_argument("--symmetry", help=f"point group C<n>, D<n>, T, O or I (default {_D.symmetry})")
    p.add_argument(DIAMETER_FLAG, dest="particle_diameter", type=float,
                   help="particle (mask) diameter, A (default 0.9 x box)")
    add_deprecated_alias(p, "--particle-diameter", DIAMETER_FLAG, dest="particle_diameter", type=float)
    p.add_argument("--low-resol-join-halves", type=float, help="resolution, A, below which the half-maps are "
                   f"averaged (default {_D.low_resol_join_halves}; 0: never)")
    p.add_argument("--max-iterations", type=int, help="last iteration number, the final one included "
                   f"(default {_D.max_iterations})")
    p.add_argument("--tau2-fudge", type=float, help=f"regularisation parameter T (default {_D.tau2_fudge})")
    p.add_argument("--max-significant", type=int, help="cap on significant coarse samples per particle "
                   f"(default {_D.max_significant})")
    p.add_argument("--seed", type=int,
                   help=f"random seed of the half split when rlnRandomSubset is absent (default {_D.seed})")
    p.add_argument("--continue", dest="continue_from", type=Path,
                   help=f"resume from a checkpoint DIR/run_itNNN. Fixed: --particles, --symmetry, {DIAMETER_FLAG}, "
                   "--ini-high, --seed, --low-resol-join-halves, --healpix-order, --auto-local-healpix-order, "
                   "--offset-range, --offset-step, --tau2-fudge (give them unchanged or not at all); --max-iterations "
                   "may grow; --max-significant may change; no --reference (the maps come from the checkpoint). "
                   "Rerunning a killed run's own command resumes it without this flag")
    add_common(p)
    add_cache_arguments(p)


def configure(args: argparse.Namespace) -> tuple[Refine3DParams, EMInputs]:
    return driver.configure(Refine3DParams, args)
