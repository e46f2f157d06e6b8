"""``cryopipe class3d``: RELION-style 3D classification (regularised likelihood EM), CPU/GPU, MPI."""

from __future__ import annotations

import argparse
from pathlib import Path

from cryopipe.backend import get_backend
from cryopipe.cache import add_arguments as add_cache_arguments
from cryopipe.cache import stage_cache
from cryopipe.class3d.run import Class3DParams, run_class3d
from cryopipe.cli import add_common
from cryopipe.em3d.model import parse_continue
from cryopipe.errors import require
from cryopipe.outdir import link_or_copy
from cryopipe.parallel import get_comm

HELP = "3D classification: K class maps by regularised-likelihood EM (RELION), checkpoints every iteration"
ITERATIVE = True  # iterations checkpoint into a run folder; the same command resumes a killed run

_DEFAULTS = Class3DParams()


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--particles", type=Path, help="particle STAR file (RELION 3.1+, with data_optics and CTF)")
    p.add_argument("--reference", type=Path, help="initial 3D reference map (MRC, particle box and pixel size)")
    p.add_argument("--classes", "--K", dest="classes", type=int, help=f"number of classes K ({_DEFAULTS.classes})")
    p.add_argument("--iterations", type=int, help=f"last iteration number ({_DEFAULTS.iterations})")
    p.add_argument("--healpix-order", type=int, help=f"HEALPix order of the coarse search ({_DEFAULTS.healpix_order}"
                   " = 15 deg; the fine pass is one order finer)")
    p.add_argument("--offset-range", type=float, help=f"translation search range, px ({_DEFAULTS.offset_range})")
    p.add_argument("--offset-step", type=float, help=f"translation step, px ({_DEFAULTS.offset_step})")
    p.add_argument("--ini-high", type=float, help=f"resolution limit of iteration 1, A ({_DEFAULTS.ini_high})")
    p.add_argument("--tau2-fudge", type=float, help=f"regularisation parameter T ({_DEFAULTS.tau2_fudge})")
    p.add_argument("--particle-diameter", type=float, help="mask diameter, A (default 0.9 x box)")
    p.add_argument("--symmetry", help=f"point group ({_DEFAULTS.symmetry})")
    p.add_argument("--max-significant", type=int, help="cap on significant coarse samples per particle (RELION's "
                   f"--maxsig; bounds the fine pass while posteriors are broad) ({_DEFAULTS.max_significant})")
    p.add_argument("--seed", type=int, help=f"random seed of the initial class split ({_DEFAULTS.seed})")
    p.add_argument("--continue", dest="continue_from", type=Path,
                   help="resume from a checkpoint DIR/run_itNNN. Fixed: --particles, --classes, --symmetry, "
                   "--particle-diameter, --ini-high, --seed (give them unchanged or not at all); "
                   "--iterations may grow; --offset-range, --offset-step, --healpix-order, --tau2-fudge, "
                   "--max-significant may change; "
                   "no --reference (the maps come from the checkpoint). Rerunning a killed run's own command "
                   "resumes it without this flag")
    add_common(p)
    add_cache_arguments(p)


def main(args: argparse.Namespace, recorder) -> None:
    comm = get_comm()
    bk = get_backend(args.device)
    recorder.device = bk.describe()
    params = Class3DParams(**{name: getattr(args, name) for name in Class3DParams.__dataclass_fields__})
    require(args.continue_from is not None or args.particles is not None, "--particles is required",
            field="--particles")
    with stage_cache(args, recorder, comm) as cache:
        reference = None if args.resumed else args.reference  # a resumed run's maps are its own
        result = run_class3d(args.particles, reference, args.out, params, bk, comm, args.continue_from, cache)
    if comm.Get_rank() == 0:
        _link_final(args.out, result["model"].iteration)
        recorder.add_input(*(p for p in (args.particles, args.reference) if p is not None))
        if args.continue_from is not None and not args.resumed:  # a resumed run's checkpoints are its own
            prefix, _ = parse_continue(args.continue_from)
            recorder.add_input(f"{prefix}_model.star", f"{prefix}_data.star")
        recorder.add_output(*result["files"])
        model = result["model"]
        recorder.note(classes=int(model.maps.shape[0]), iteration=model.iteration,
                      class_distribution=[round(float(x), 4) for x in model.pdf_class],
                      resolution_A=[round(float(x), 2) for x in model.resolution_A])


def _link_final(out: Path, iteration: int) -> None:
    """``run_{data,model}.star`` and ``run_classKKK.mrc``: the last iteration's files under names that do not
    depend on the iteration count (links, no copies), so a workflow can name the result whatever the count."""
    prefix = f"run_it{iteration:03d}_"
    for src in sorted(Path(out).glob(f"{prefix}*")):
        link_or_copy(src, src.with_name("run_" + src.name[len(prefix):]))
