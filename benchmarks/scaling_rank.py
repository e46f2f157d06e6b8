"""One MPI rank of ``benchmarks/scaling.py``: times one ``cryopipe`` command in-process.

    mpiexec -n G python benchmarks/scaling_rank.py --stage S --device D --expect G --report R.json -- <argv>

Each rank

* pins itself to its own share of the host's cores and sets the BLAS/OpenMP threads to match, before NumPy is
  imported (``--no-pin`` leaves the launcher's binding);
* checks that the communicator has G ranks (a launcher that does not match mpi4py's MPI library silently starts G
  one-rank jobs: such a rank writes ``R.json.mismatch.<pid>`` and exits 3);
* creates its device context, waits at a barrier and times ``cryopipe.cli.main(argv)``, so interpreter start-up,
  imports and CUDA context creation are excluded;
* times, exclusively (a nested timed call is not counted in its caller), the MPI calls the stage makes (a timing
  proxy around :func:`cryopipe.parallel.get_comm`'s communicator), the MRC/STAR readers and writers, the provenance
  record, and the public functions of the stage's phases (:data:`scaling_stages.STAGES`, through
  :meth:`common.PhaseTimer.time_public`); the device is synchronised around each timed call (``--no-sync`` to
  skip), so GPU time lands in the phase that queued it.

Rank 0 writes the report R.json: per rank its wall time, phases {label: [seconds, calls, bytes]}, cores, device.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from common import PhaseTimer
from scaling_stages import IO_PHASES, MPI_LABEL, OTHER_LABEL, STAGES

# launcher variables of the host-local rank, read before NumPy (and so cryopipe.backend.local_rank) may be imported
_LOCAL_RANK_VARS = ("MPI_LOCALRANKID", "OMPI_COMM_WORLD_LOCAL_RANK", "MV2_COMM_WORLD_LOCAL_RANK", "PALS_LOCAL_RANKID",
                    "PMI_RANK", "PMIX_RANK", "OMPI_COMM_WORLD_RANK")


class TimedComm:
    """A communicator whose collective calls are timed under "MPI <method>" (rank queries pass through)."""

    def __init__(self, comm, timer: PhaseTimer):
        self._comm, self._timer = comm, timer

    def __getattr__(self, name: str):
        attr = getattr(self._comm, name)
        if not callable(attr) or name.startswith(("Get_", "Is_", "py2f")):
            return attr
        return self._timer.wrap(attr, MPI_LABEL + name, sync=False, count_bytes=True)


def local_rank_from_env() -> int:
    """This rank's index on its host, from the launcher's variables (0 without any)."""
    for key in _LOCAL_RANK_VARS:
        try:
            return int(os.environ[key])
        except (KeyError, ValueError):
            continue
    return 0


def pin(n_ranks: int) -> tuple[list[int], int]:
    """Restrict this rank to its share of the host's cores and set the BLAS/OpenMP threads to match; call before
    NumPy is imported. Returns (cores, local rank)."""
    local = local_rank_from_env()
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) >= n_ranks:
        base, extra = divmod(len(cores), n_ranks)
        start = local * base + min(local, extra)
        share = cores[start:start + base + (1 if local < extra else 0)]
    else:
        share = [cores[local % len(cores)]]
    os.sched_setaffinity(0, share)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
        os.environ[var] = str(len(share))
    return share, local


def main(argv: list[str] | None = None) -> int:
    """Time one ``cryopipe`` command (argv after ``--``); rank 0 writes the report."""
    ap = argparse.ArgumentParser(prog="scaling_rank.py", description="One MPI rank of benchmarks/scaling.py.")
    ap.add_argument("--stage", required=True, choices=list(STAGES))
    ap.add_argument("--device", required=True)
    ap.add_argument("--expect", type=int, required=True, help="the rank count mpiexec was asked for")
    ap.add_argument("--report", required=True, type=Path)
    ap.add_argument("--no-pin", action="store_true")
    ap.add_argument("--no-sync", action="store_true")
    ap.add_argument("command", nargs=argparse.REMAINDER)
    args = ap.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    cores, local = (None, None) if args.no_pin else pin(args.expect)

    import cryopipe.parallel as parallel

    real = parallel.get_comm()
    size, rank = real.Get_size(), real.Get_rank()
    info = {"rank": rank, "size": size, "pid": os.getpid(), "host": os.uname().nodename, "local_rank": local,
            "cores": len(cores) if cores else len(os.sched_getaffinity(0))}
    if size != args.expect:
        bad = args.report.with_name(f"{args.report.name}.mismatch.{os.getpid()}")
        bad.write_text(json.dumps(info))
        print(f"scaling: this rank sees a communicator of size {size}, launched as one of {args.expect}: "
              "mpiexec does not match mpi4py's MPI library", file=sys.stderr)
        return 3
    sync = None
    if args.device == "gpu":
        from cryopipe.backend import get_backend

        bk = get_backend("gpu")
        bk.asarray([0.0]).sum()  # create the context before the clock starts
        bk.synchronize()
        cp = bk.xp
        info.update(device_id=bk.device_id, pci_bus_id=cp.cuda.Device(bk.device_id).pci_bus_id,
                    visible_gpus=cp.cuda.runtime.getDeviceCount(), device=bk.describe())
        if not args.no_sync:
            sync = cp.cuda.runtime.deviceSynchronize  # every stream
    timer = PhaseTimer(sync)
    proxy = TimedComm(real, timer)
    parallel.get_comm = lambda: proxy  # before the stage modules import it
    import cryopipe.cli as cli

    cli.build_parser()  # imports every stage module, so that the timed functions reach their imported names
    for target, label in (*STAGES[args.stage].phases, *IO_PHASES):
        timer.time_public(target, label)
    info["not_timed"] = timer.missing
    run = timer.wrap(cli.main, OTHER_LABEL)
    real.Barrier()
    t0 = time.perf_counter()
    rc = run(command)
    info.update(rc=rc, wall_s=time.perf_counter() - t0, phases=timer.totals)
    reports = real.gather(info, root=0)
    if rank == 0:
        args.report.write_text(json.dumps({"size": size, "command": command, "ranks": reports}, indent=1))
    return int(rc or 0) if rank == 0 else 0


if __name__ == "__main__":
    sys.exit(main())
