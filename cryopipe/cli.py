"""The ``cryopipe`` command: one subcommand per stage.

Each stage module exposes ``HELP`` (one line), ``add_arguments(parser)`` and
``main(args, recorder)``. The CLI parses flags, sets up logging, runs the stage
in a staging folder inside ``--out`` (``args.out``; ``args.out_final`` is the
folder the user named, for paths written into files) and, only when it
succeeds, moves the outputs into place and writes ``provenance.json``. A user's mistake
(:class:`InputError`) is printed as one line and exits with status 2; the
staging folder is removed, so earlier outputs stay untouched.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import shutil
import sys
import uuid
from pathlib import Path

from cryopipe import __version__
from cryopipe.errors import InputError
from cryopipe.parallel import get_comm
from cryopipe.provenance import Recorder, lineage

# stage name -> module providing HELP, add_arguments, main (and optional STAGED = False)
STAGES = {
    "simulate": "cryopipe.simulate.cli",
    "pick": "cryopipe.pick.cli",
    "extract": "cryopipe.extract.cli",
    "class2d": "cryopipe.class2d.cli",
    "select2d": "cryopipe.select2d.cli",
    "class3d": "cryopipe.class3d.cli",
    "refine3d": "cryopipe.refine3d.cli",
    "postprocess": "cryopipe.postprocess.cli",
    "bioem": "cryopipe.bioem.cli",
}


class _LineageCommand:
    HELP = "print how a file was made: the chain of cryopipe commands and inputs back to the raw data"

    @staticmethod
    def add_arguments(p: argparse.ArgumentParser) -> None:
        p.add_argument("file", help="any file written by a cryopipe command")


def _load_stage(name: str):
    try:
        return importlib.import_module(STAGES[name])
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith("cryopipe."):
            return None  # stage not built yet
        raise


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cryopipe",
        description="Single-particle cryo-EM processing: simulate, pick, extract, classify, refine, rank models.",
    )
    parser.add_argument("--version", action="version", version=f"cryopipe {__version__}")
    sub = parser.add_subparsers(dest="stage", metavar="<stage>", required=True)
    for name in STAGES:
        module = _load_stage(name)
        if module is None:
            continue
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p = sub.add_parser("lineage", help=_LineageCommand.HELP, description=_LineageCommand.HELP)
    _LineageCommand.add_arguments(p)
    return parser


def add_common(p: argparse.ArgumentParser, device: bool = True) -> None:
    """The flags every heavy stage shares: --out and --device."""
    p.add_argument("--out", required=True, type=Path, help="output folder (created; outputs replaced on success)")
    if device:
        p.add_argument("--device", default="auto", choices=["auto", "cpu", "gpu"], help="where to compute")


def _setup_logging(verbose: bool, rank: int, size: int) -> None:
    prefix = f"[rank {rank}/{size}] " if size > 1 else ""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format=f"%(asctime)s {prefix}%(name)s %(levelname)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )


def _publish(staging: Path, final: Path, recorder: Recorder) -> None:
    """Move every staged file into ``final`` (replacing older ones) and fix the recorded paths."""
    for src in sorted(staging.rglob("*")):
        if src.is_file():
            dst = final / src.relative_to(staging)
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dst)
    shutil.rmtree(staging, ignore_errors=True)
    s, f = str(staging.resolve()), str(final.resolve())
    recorder.outputs = [str(Path(o).resolve()).replace(s, f, 1) for o in recorder.outputs]


def run_stage(name: str, args: argparse.Namespace, argv: list[str]) -> None:
    module = _load_stage(name)
    comm = get_comm()
    rank, size = comm.Get_rank(), comm.Get_size()
    _setup_logging(getattr(args, "verbose", False), rank, size)
    final = Path(args.out)
    staged = getattr(module, "STAGED", True)
    token = comm.bcast(uuid.uuid4().hex[:8] if rank == 0 else None, root=0)
    work = final / f".staging-{token}" if staged else final
    if rank == 0:
        # a killed earlier run's staging folder is garbage: Snakemake never runs two jobs on one --out
        for old in final.glob(".staging-*") if staged else ():
            shutil.rmtree(old, ignore_errors=True)
        work.mkdir(parents=True, exist_ok=True)
    comm.Barrier()
    recorder = Recorder(final, name, {k: v for k, v in vars(args).items() if k not in {"stage", "verbose"}})
    recorder.command = ["cryopipe", *argv]
    recorder.mpi_size = size
    args.out = work  # everything is written here ...
    args.out_final = final  # ... and paths written INTO files (STAR image names) refer to here
    try:
        module.main(args, recorder)
        comm.Barrier()
        if rank == 0:
            if staged:
                _publish(work, final, recorder)
            recorder.write()
    except BaseException:
        if staged and rank == 0:
            shutil.rmtree(work, ignore_errors=True)
        raise


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    try:
        if args.stage == "lineage":
            print("\n".join(lineage(args.file)))
            return 0
        run_stage(args.stage, args, argv)
        return 0
    except InputError as exc:
        if get_comm().Get_rank() == 0:  # stages make input errors collective: say it once
            print(f"cryopipe {args.stage}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
