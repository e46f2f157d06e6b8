"""``cryopipe initial-model``: K maps from the particles alone (stochastic minibatch EM from random starts).

    cryopipe initial-model --particles select2d/particles.star --out initial_model [--classes 1]
                           [--resolution-schedule 30 15] [--iterations 40] [--batch-size 200] [--seed 0]
                           [--diameter 150] [--flip-hand] [--device gpu]
    cryopipe initial-model --continue initial_model/run_it020 --out initial_model

writes ``OUT/initial_model_classNNN.mrc`` (the particles' box and pixel size; ``OUT/initial_model.mrc``: the most
populated class's), ``OUT/particles.star`` (class, angles
and origins of the final pass over all particles), checkpoints ``OUT/run_itNNN_{data,model}.star`` and
``OUT/run_itNNN_classKKK.mrc`` every iteration (class shares in the model STAR), and
``OUT/initial_model_{slices,progress}.png``. The hand of the maps is unknown (see ``--flip-hand``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cryopipe.cache import add_arguments as add_cache_arguments
from cryopipe.cli import add_common
from cryopipe.em3d import driver
from cryopipe.em3d.driver import DIAMETER_FLAG, EMInputs
from cryopipe.initmodel.stage import InitialModelParams, run

__all__ = ["HELP", "ITERATIVE", "add_arguments", "configure", "run"]

HELP = "de novo initial model: K maps from the particles alone (stochastic minibatch EM from random starts)"
ITERATIVE = True  # iterations checkpoint into a run folder; the same command resumes a killed run

_D = InitialModelParams()


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--particles", type=Path, help="particle STAR file (RELION 3.1+, with data_optics and CTF)")
    p.add_argument("--classes", "--K", dest="classes", type=int, help=f"number of maps K (default {_D.classes})")
    p.add_argument("--iterations", type=int, help=f"minibatch iterations; a pass over all particles follows "
                   f"(default {_D.iterations})")
    p.add_argument("--class-iterations", type=int, help=f"with K > 1: passes over all particles splitting the map "
                   f"into K classes after the minibatches (default {_D.class_iterations})")
    p.add_argument("--batch-size", type=int, help=f"particles per minibatch (default {_D.batch_size})")
    p.add_argument("--step", type=float, help=f"how far each minibatch moves the maps, (0, 1] (default {_D.step})")
    p.add_argument("--resolution-schedule", type=float, nargs=2, metavar=("START", "END"),
                   help="resolution limit of the first and the last iterations, A "
                   f"(default {_D.ini_high:g} {_D.final_high:g})")
    p.add_argument("--healpix-order", type=int,
                   help=f"HEALPix order of the coarse search (default {_D.healpix_order} = "
                   f"{60 / 2 ** _D.healpix_order:g} deg; the fine pass is one order finer)")
    p.add_argument("--offset-range", type=float, help=f"translation search range, px (default {_D.offset_range:g})")
    p.add_argument("--offset-step", type=float, help=f"translation step, px (default {_D.offset_step:g})")
    p.add_argument("--tau2-fudge", type=float, help=f"regularisation parameter T (default {_D.tau2_fudge:g})")
    p.add_argument(DIAMETER_FLAG, dest="particle_diameter", type=float,
                   help="particle (mask) diameter, A (default 0.9 x box)")
    p.add_argument("--symmetry", help="point group C<n>, D<n>, T, O or I: the optimisation runs in C1, then each map's "
                   f"axes are found and the group imposed, as RELION (default {_D.symmetry})")
    p.add_argument("--max-significant", type=int, help=f"cap on significant coarse samples per particle "
                   f"(default {_D.max_significant})")
    p.add_argument("--seed", type=int, help=f"random seed of the starts and the minibatches (default {_D.seed})")
    p.add_argument("--flip-hand", action="store_const", const=1, default=None,
                   help="mirror the output maps (the hand cannot be known from projections) and the poses with them")
    p.add_argument("--continue", dest="continue_from", type=Path,
                   help="resume from a checkpoint DIR/run_itNNN (every option is fixed; the maps come from the "
                   "checkpoint). Rerunning a killed run's own command resumes it without this flag")
    add_common(p)
    add_cache_arguments(p)


def configure(args: argparse.Namespace) -> tuple[InitialModelParams, EMInputs]:
    schedule = args.resolution_schedule or (None, None)
    params = driver.given(InitialModelParams, **{
        name: getattr(args, name) for name in InitialModelParams.__dataclass_fields__
        if name not in ("ini_high", "final_high")}, ini_high=schedule[0], final_high=schedule[1])
    return params, EMInputs(args.particles, None, args.continue_from)
