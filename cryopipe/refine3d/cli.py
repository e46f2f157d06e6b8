"""``cryopipe refine3d``: gold-standard 3D auto-refinement (RELION's 3D auto-refine), CPU/GPU, MPI."""

from __future__ import annotations

import argparse
from pathlib import Path

from cryopipe.backend import get_backend
from cryopipe.cache import add_arguments as add_cache_arguments
from cryopipe.cache import stage_cache
from cryopipe.cli import add_common
from cryopipe.em3d.model import parse_continue
from cryopipe.errors import require
from cryopipe.parallel import get_comm
from cryopipe.refine3d.run import Refine3DParams, run_refine3d

HELP = ("3D auto-refine: gold-standard half-maps, FSC-driven resolution and auto-sampling (RELION), "
        "checkpoints every iteration")
ITERATIVE = True  # iterations checkpoint into a run folder; the same command resumes a killed run

_D = Refine3DParams()


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--particles", type=Path, help="particle STAR file (RELION 3.1+, with data_optics and CTF); "
                   "rlnRandomSubset (1/2) is kept when present")
    p.add_argument("--reference", type=Path, help="initial 3D reference map (MRC, particle box and pixel size)")
    p.add_argument("--ini-high", type=float, help=f"initial low-pass of the reference, A ({_D.ini_high})")
    p.add_argument("--healpix-order", type=int, help=f"initial HEALPix order of the coarse search "
                   f"({_D.healpix_order} = 15 deg; the fine pass is one order finer)")
    p.add_argument("--auto-local-healpix-order", type=int, help="HEALPix order from which searches are local "
                   f"around each particle's previous orientation ({_D.auto_local_healpix_order})")
    p.add_argument("--offset-range", type=float, help=f"initial translation search range, px ({_D.offset_range})")
    p.add_argument("--offset-step", type=float, help=f"initial translation step, px ({_D.offset_step})")
    p.add_argument("--symmetry", help=f"point group C<n>, D<n>, T, O or I ({_D.symmetry})")
    p.add_argument("--particle-diameter", type=float, help="mask diameter, A (default 0.9 x box)")
    p.add_argument("--low-resol-join-halves", type=float, help="resolution, A, below which the half-maps are "
                   f"averaged ({_D.low_resol_join_halves}; 0: never)")
    p.add_argument("--max-iterations", type=int, help="last iteration number, the final one included "
                   f"({_D.max_iterations})")
    p.add_argument("--tau2-fudge", type=float, help=f"regularisation parameter T ({_D.tau2_fudge})")
    p.add_argument("--max-significant", type=int, help="cap on significant coarse samples per particle "
                   f"({_D.max_significant})")
    p.add_argument("--seed", type=int, help=f"random seed of the half split when rlnRandomSubset is absent ({_D.seed})")
    p.add_argument("--continue", dest="continue_from", type=Path,
                   help="resume from a checkpoint DIR/run_itNNN. Fixed: --particles, --symmetry, --particle-diameter, "
                   "--ini-high, --seed, --low-resol-join-halves, --healpix-order, --auto-local-healpix-order, "
                   "--offset-range, --offset-step, --tau2-fudge (give them unchanged or not at all); --max-iterations "
                   "may grow; --max-significant may change; no --reference (the maps come from the checkpoint). "
                   "Rerunning a killed run's own command resumes it without this flag")
    add_common(p)
    add_cache_arguments(p)


def main(args: argparse.Namespace, recorder) -> None:
    comm = get_comm()
    bk = get_backend(args.device)
    recorder.device = bk.describe()
    params = Refine3DParams(**{name: getattr(args, name) for name in Refine3DParams.__dataclass_fields__})
    require(args.continue_from is not None or args.particles is not None, "--particles is required",
            field="--particles")
    with stage_cache(args, recorder, comm) as cache:
        reference = None if args.resumed else args.reference  # a resumed run's maps are its own
        result = run_refine3d(args.particles, reference, args.out, params, bk, comm, args.continue_from, cache)
    if comm.Get_rank() == 0:
        recorder.add_input(*(p for p in (args.particles, args.reference) if p is not None))
        if args.continue_from is not None and not args.resumed:  # a resumed run's checkpoints are its own
            prefix, _ = parse_continue(args.continue_from)
            recorder.add_input(f"{prefix}_model.star", f"{prefix}_data.star")
        recorder.add_output(*result["files"])
        state = result["sampling"]
        recorder.note(iteration=result["model"].iteration, resolution_A=round(float(result["resolution_A"]), 3),
                      healpix_order=state.order, local_searches=bool(state.local),
                      converged=bool(state.converged), finished=result["map"] is not None)
