"""The ``cryopipe`` command: one subcommand per stage.

Each stage's ``cli`` module follows the stage contract (:mod:`cryopipe.stage`):
``HELP``, ``add_arguments(parser)``, ``configure(args) -> (params, inputs)``,
``run(params, inputs, out, ctx) -> StageResult`` (and ``ITERATIVE = True`` for
stages that checkpoint iterations). The CLI parses flags, sets up logging, takes
the output folder's lock, runs the stage in a work folder inside ``--out`` (the
context's ``out_final`` is the folder the user named, for paths written into
files) and, only when it succeeds, publishes the work folder as the whole new
result and writes ``provenance.json`` (see :mod:`cryopipe.outdir`). A user's mistake
(:class:`InputError`) is printed as one line and exits with status 2; a staging
folder is removed, so earlier outputs stay untouched. An iterative stage keeps
its run folder, and the same command continues from its last checkpoint.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import logging
import shutil
import sys
import uuid
from pathlib import Path

from cryopipe import __version__, outdir
from cryopipe.backend import get_backend
from cryopipe.errors import InputError
from cryopipe.parallel import get_comm
from cryopipe.provenance import Recorder, lineage
from cryopipe.stage import StageContext, StageResult, input_files

log = logging.getLogger("cryopipe")

# stage name -> its cli module (HELP, add_arguments, configure, run; optional ITERATIVE = True)
STAGES = {
    "simulate": "cryopipe.simulate.cli",
    "ctf": "cryopipe.ctfestimate.cli",
    "pick": "cryopipe.pick.cli",
    "extract": "cryopipe.extract.cli",
    "class2d": "cryopipe.class2d.cli",
    "select2d": "cryopipe.select2d.cli",
    "class3d": "cryopipe.class3d.cli",
    "refine3d": "cryopipe.refine3d.cli",
    "select3d": "cryopipe.select3d.cli",
    "postprocess": "cryopipe.postprocess.cli",
    "bioem": "cryopipe.bioem.cli",
    "summary": "cryopipe.summary.cli",
    "initial-model": "cryopipe.initmodel.cli",
    "align-maps": "cryopipe.alignmaps.cli",
}


class _LineageCommand:
    HELP = "print how a file was made: the chain of cryopipe commands and inputs back to the raw data"

    @staticmethod
    def add_arguments(p: argparse.ArgumentParser) -> None:
        p.add_argument("file", help="any file written by a cryopipe command")


def _load_stage(name: str):
    """The stage's CLI module. A missing dependency or a bug inside it fails loudly (a traceback naming it), so
    that a stage never silently vanishes from the command."""
    return importlib.import_module(STAGES[name])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cryopipe",
        description="Single-particle cryo-EM processing: simulate, pick, extract, classify, refine, rank models.",
    )
    parser.add_argument("--version", action="version", version=f"cryopipe {__version__}")
    sub = parser.add_subparsers(dest="stage", metavar="<stage>", required=True)
    for name in STAGES:
        module = _load_stage(name)
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


def add_deprecated_alias(p: argparse.ArgumentParser, old: str, new: str, **kwargs) -> None:
    """Accept ``old`` (hidden from --help) as a spelling of ``new`` for one release, saying so on stderr. ``kwargs``
    (``dest``, ``type``) must match ``new``'s."""

    class _Alias(argparse.Action):
        def __call__(self, parser, namespace, values, option_string=None):
            sys.stderr.write(f"cryopipe: warning: {old} is deprecated and will be removed; use {new}\n")
            setattr(namespace, self.dest, values)

    p.add_argument(old, action=_Alias, help=argparse.SUPPRESS, default=argparse.SUPPRESS, **kwargs)


def _setup_logging(verbose: bool, rank: int, size: int) -> None:
    prefix = f"[rank {rank}/{size}] " if size > 1 else ""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format=f"%(asctime)s {prefix}%(name)s %(levelname)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )


VOLATILE = {"out", "device", "verbose", "stage", "scratch_dir", "scratch_quota_gb", "continue_from"}


def _run_identity(name: str, args: argparse.Namespace) -> str:
    """The run-folder key of an iterative stage: its parameters (not where or on what it runs) and its inputs'
    contents, so that the same command after a kill finds its checkpoints and any change starts afresh."""
    from cryopipe.em3d.model import parse_continue

    params, inputs = {}, []
    for key, value in sorted(vars(args).items()):
        if key in VOLATILE:
            continue
        params[key] = value
        if isinstance(value, Path) and value.is_file():
            inputs.append(value)
    if args.continue_from is not None:
        prefix, _ = parse_continue(args.continue_from)
        inputs += [Path(f"{prefix}_model.star"), Path(f"{prefix}_data.star")]
        params["continue_iteration"] = prefix.name
    return outdir.run_key(name, params, inputs)


def _prepare_run_folder(run: Path, args: argparse.Namespace) -> dict:
    """Fill an iterative stage's run folder: the earlier iterations of an explicit --continue (so the published
    run is whole), or find the last complete checkpoint of an interrupted run with the same key and continue from
    it. Returns notes for the record."""
    from cryopipe.em3d.model import parse_continue, read_model

    run.mkdir(parents=True, exist_ok=True)
    if args.continue_from is not None:
        prefix, it = parse_continue(args.continue_from)
        for src in prefix.parent.glob("run_it*"):
            if src.is_file() and (i := outdir.iteration_of(src)) is not None and i <= it:
                outdir.link_or_copy(src, run / src.name)
        outdir.drop_after(run, it)
        return {}
    last = outdir.last_checkpoint(run)
    while last is not None:
        try:
            parse_continue(run / f"run_it{last:03d}")
            read_model(run / f"run_it{last:03d}")
            break
        except InputError as exc:
            log.warning("checkpoint run_it%03d of the interrupted run is unreadable (%s); trying the one before",
                        last, exc)
            last = outdir.last_checkpoint(run, before=last)
    if last is None:
        for p in run.iterdir():  # a run killed before its first checkpoint
            if p.is_file():
                p.unlink()
        return {}
    outdir.drop_after(run, last)
    log.info("resuming an interrupted run with the same parameters and inputs from its iteration %d (%s)",
             last, run)
    args.continue_from = run / f"run_it{last:03d}"
    args.resumed = True
    return {"resumed_from_iteration": last}


def _start(name: str, module, args: argparse.Namespace, argv: list[str]):
    """Rank 0: take --out's lock, clear what ended runs left, make the work folder. Returns (lock, work, notes)."""
    final = Path(args.out)
    lock = outdir.OutputLock(final, name, ["cryopipe", *argv])
    try:
        token = uuid.uuid4().hex[:8]
        if getattr(module, "ITERATIVE", False):
            work = final / f".run-{_run_identity(name, args)}"
            notes = _prepare_run_folder(work, args)
        else:
            work, notes = final / f".staging-{token}", {}
            work.mkdir()
        outdir.remove_leftovers(final, keep=work)
        return lock, work, token, notes
    except BaseException:
        lock.release()
        raise


def _run_module(module, args: argparse.Namespace, recorder: Recorder, comm, work: Path, final: Path) -> StageResult:
    """Flags -> (params, inputs) -> ``run(params, inputs, work, ctx)``; the record gets the inputs, the resolved
    parameters and the stage's notes."""
    params, inputs = module.configure(args)
    backend = get_backend(args.device) if getattr(args, "device", None) else None
    if backend is not None:
        recorder.device = backend.describe()
    ctx = StageContext(backend=backend, comm=comm, out_final=final, recorder=recorder,
                       cache_args=args if hasattr(args, "scratch_dir") else None, resumed=args.resumed)
    result = module.run(params, inputs, work, ctx)
    recorder.add_input(*(input_files(inputs) if result.inputs is None else result.inputs))
    if dataclasses.is_dataclass(params):
        recorder.note(parameters=dataclasses.asdict(params))
    recorder.note(**result.notes)
    return result


def _check_files(result: StageResult, work: Path) -> None:
    """A stage lists only files it wrote into its work folder (a bug otherwise, so it keeps its traceback)."""
    root = work.resolve()
    for f in result.files:
        if not any(p.is_file() and root in p.resolve().parents for p in (Path(f), work / f)):
            raise RuntimeError(f"stage listed {f} among its outputs, but it is not a file in {work}")


def run_stage(name: str, args: argparse.Namespace, argv: list[str]) -> None:
    module = _load_stage(name)
    comm = get_comm()
    rank, size = comm.Get_rank(), comm.Get_size()
    _setup_logging(getattr(args, "verbose", False), rank, size)
    final = Path(args.out)
    args.resumed = False
    if not hasattr(args, "continue_from"):
        args.continue_from = None
    started, error = None, None
    if rank == 0:
        try:
            started = _start(name, module, args, argv)
        except (InputError, OSError) as exc:
            error = exc
    error = comm.bcast(error, root=0)
    if error is not None:
        raise error
    lock, work, token, notes = started if rank == 0 else (None, None, None, {})
    work = comm.bcast(work, root=0)
    resumed = comm.bcast((args.continue_from, args.resumed), root=0)
    args.continue_from, args.resumed = resumed
    recorder = Recorder(final, name, {k: v for k, v in vars(args).items()
                                      if k not in {"stage", "verbose", "resumed"}
                                      and not (k == "continue_from" and (v is None or args.resumed))})
    recorder.command = ["cryopipe", *argv]
    recorder.mpi_size = size
    if notes:
        recorder.note(**notes)
    try:
        result = _run_module(module, args, recorder, comm, work, final)
        comm.Barrier()
        if rank == 0:
            _check_files(result, work)
            # every file of the work folder is an output (a resumed run's earlier iterations included); they are
            # hashed before publishing, so the record follows the published files at once
            staged = {str(final / p.relative_to(work)): p for p in sorted(work.rglob("*")) if p.is_file()}
            recorder.outputs = list(staged)
            record = recorder.prepare(hashed_at=staged)
            outdir.publish(work, final, token, keep=[Path(i) for i in recorder.inputs])
            recorder.write(record)
    except BaseException as exc:
        # an iterative run keeps its checkpoints to continue from, unless the user's input was wrong
        if rank == 0 and (not getattr(module, "ITERATIVE", False) or isinstance(exc, InputError)):
            shutil.rmtree(work, ignore_errors=True)
        if isinstance(exc, OSError) and exc.filename:
            exc.filename = outdir.public_name(exc.filename, work, final)
        raise
    finally:
        if lock is not None:
            lock.release()


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
    except OSError as exc:
        status = outdir.STORAGE_ERRNOS.get(exc.errno)
        if status is None:
            raise
        # a read-only, forbidden or full output folder: the run was rolled back; say which file in one line
        print(f"cryopipe {args.stage}: error: {exc.filename or args.out}: {exc.strerror} (nothing was published; "
              "earlier outputs are unchanged)", file=sys.stderr)
        return status


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
