"""``cryopipe class3d``: RELION-style 3D classification (regularised likelihood EM), CPU/GPU, MPI.

    cryopipe class3d --particles select2d/particles.star --reference ref.mrc --out class3d [--classes 2]
    cryopipe class3d --particles select2d/particles.star --reference im/initial_model_class00[1-3].mrc --out class3d
                     [--iterations 10] [--healpix-order 2] [--diameter 150] [--symmetry C1] [--device gpu]
    cryopipe class3d --continue class3d/run_it010 --iterations 30 --out class3d

writes ``OUT/run_itNNN_{data,model}.star`` and ``OUT/run_itNNN_classKKK.mrc`` every iteration, the last one also as
``OUT/run_{data,model}.star`` and ``OUT/run_classKKK.mrc``, and ``OUT/class3d_{slices,progress}.png``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cryopipe.cache import add_arguments as add_cache_arguments
from cryopipe.class3d.stage import Class3DParams, run
from cryopipe.cli import add_common, add_deprecated_alias
from cryopipe.em3d import driver
from cryopipe.em3d.driver import DIAMETER_FLAG, EMInputs

__all__ = ["HELP", "ITERATIVE", "add_arguments", "configure", "run"]

HELP = "3D classification: K class maps by regularised-likelihood EM (RELION), checkpoints every iteration"
ITERATIVE = True  # iterations checkpoint into a run folder; the same command resumes a killed run

_DEFAULTS = Class3DParams()


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--particles", type=Path, help="particle STAR file (RELION 3.1+, with data_optics and CTF)")
    p.add_argument("--reference", type=Path, nargs="+", metavar="MAP",
                   help="initial 3D reference map (MRC, particle box and pixel size): one, from which every class "
                   "starts (iteration 1 splits the particles at random), or one per class (e.g. an initial model's "
                   "K maps; K is then their number)")
    p.add_argument("--classes", "--K", dest="classes", type=int,
                   help=f"number of classes K (default {_DEFAULTS.classes}, or the number of reference maps)")
    p.add_argument("--iterations", type=int, help=f"last iteration number (default {_DEFAULTS.iterations})")
    p.add_argument("--healpix-order", type=int, help="HEALPix order of the coarse search (default "
                   f"{_DEFAULTS.healpix_order} = {60 / 2 ** _DEFAULTS.healpix_order:g} deg; the fine pass is one "
                   "order finer)")
    p.add_argument("--offset-range", type=float,
                   help=f"translation search range, px (default {_DEFAULTS.offset_range})")
    p.add_argument("--offset-step", type=float, help=f"translation step, px (default {_DEFAULTS.offset_step})")
    p.add_argument("--ini-high", type=float, help=f"resolution limit of iteration 1, A (default {_DEFAULTS.ini_high})")
    p.add_argument("--tau2-fudge", type=float, help=f"regularisation parameter T (default {_DEFAULTS.tau2_fudge})")
    p.add_argument(DIAMETER_FLAG, dest="particle_diameter", type=float,
                   help="particle (mask) diameter, A (default 0.9 x box)")
    add_deprecated_alias(p, "--particle-diameter", DIAMETER_FLAG, dest="particle_diameter", type=float)
    p.add_argument("--symmetry", help=f"point group (default {_DEFAULTS.symmetry})")
    p.add_argument("--max-significant", type=int, help="cap on significant coarse samples per particle (RELION's "
                   f"--maxsig; bounds the fine pass while posteriors are broad) (default {_DEFAULTS.max_significant})")
    p.add_argument("--seed", type=int, help=f"random seed of the initial class split (default {_DEFAULTS.seed})")
    p.add_argument("--continue", dest="continue_from", type=Path,
                   help="resume from a checkpoint DIR/run_itNNN. Fixed: --particles, --classes, --symmetry, "
                   f"{DIAMETER_FLAG}, --ini-high, --seed (give them unchanged or not at all); "
                   "--iterations may grow; --offset-range, --offset-step, --healpix-order, --tau2-fudge, "
                   "--max-significant may change; "
                   "no --reference (the maps come from the checkpoint). Rerunning a killed run's own command "
                   "resumes it without this flag")
    add_common(p)
    add_cache_arguments(p)


def configure(args: argparse.Namespace) -> tuple[Class3DParams, EMInputs]:
    return driver.configure(Class3DParams, args)
