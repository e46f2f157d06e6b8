"""The whole workflow end to end on one machine: wall time per stage, GPU utilisation where measurable, the total.

Runs ``snakemake`` on this checkout's Snakefile with the simulated dataset scaled up (``simulate`` keys), in a
fresh results folder, then reads each stage's provenance records (their start and end) and ``summary.tsv``.
While it runs, ``nvidia-smi`` is sampled once a second (when there is one); a stage's utilisation is the mean
over the samples inside its records' time spans.

    python benchmarks/pipeline.py                                        # the demo's dataset, all cores
    python benchmarks/pipeline.py --micrographs 200 --size 4096 --per-micrograph 200 --angpix 1.0 --box 192
    python benchmarks/pipeline.py --set 'class3d={iterations: 10}'      # any config override (snakemake --config)

Prints one table (stage, jobs, wall s, share of the total, mean GPU utilisation, peak GPU memory) and the total
wall time of the workflow, snakemake's start-up included.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

import pandas as pd
from common import banner, markdown_table

REPO = Path(__file__).resolve().parent.parent


class GpuSampler(threading.Thread):
    """Samples (time s, utilisation %, memory MiB) of GPU 0 with nvidia-smi once a second until stopped."""

    def __init__(self):
        super().__init__(daemon=True)
        self.samples: list[tuple[float, float, float]] = []
        self.available = shutil.which("nvidia-smi") is not None
        self._done = threading.Event()

    def run(self) -> None:
        while self.available and not self._done.is_set():
            out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,"
                                  "nounits", "--id=0"], capture_output=True, text=True, check=False).stdout.split(",")
            if len(out) == 2:
                self.samples.append((time.time(), float(out[0]), float(out[1])))
            self._done.wait(1.0)

    def stop(self) -> None:
        self._done.set()
        self.join(timeout=5)

    def over(self, spans: list[tuple[float, float]]) -> tuple[float, float]:
        """Mean utilisation % and peak memory MiB of the samples inside ``spans`` (NaN without samples)."""
        inside = [s for s in self.samples if any(a <= s[0] <= b for a, b in spans)]
        if not inside:
            return float("nan"), float("nan")
        return sum(s[1] for s in inside) / len(inside), max(s[2] for s in inside)


def device_name() -> str:
    """The GPU's name (nvidia-smi), else the CPU core count."""
    if shutil.which("nvidia-smi"):
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader", "--id=0"],
                             capture_output=True, text=True, check=False).stdout.strip()
        if out:
            return f"{out} ({os.cpu_count()} CPU cores)"
    return f"cpu ({os.cpu_count()} cores)"


def stage_spans(results: Path) -> dict[str, list[tuple[float, float]]]:
    """{stage folder: [(start, end) epoch s]} from every provenance record under ``results``."""
    spans: dict[str, list[tuple[float, float]]] = {}
    for path in results.glob("*/**/provenance.json"):
        record = json.loads(path.read_text())
        stage = path.relative_to(results).parts[0]
        start, end = (datetime.fromisoformat(record[k]).timestamp() for k in ("start", "end"))
        spans.setdefault(stage, []).append((start, end))
    return spans


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--micrographs", type=int, help="simulated micrographs (default: the config's)")
    p.add_argument("--size", type=int, help="micrograph side, px")
    p.add_argument("--per-micrograph", type=int, help="particles per micrograph")
    p.add_argument("--angpix", type=float, help="pixel size of the simulated micrographs, A/px")
    p.add_argument("--box", type=int, help="extraction box, px")
    p.add_argument("--cores", type=int, default=0, help="snakemake --cores (default: all)")
    p.add_argument("--set", action="append", default=[], help="more snakemake --config overrides (KEY=YAML)")
    p.add_argument("--workdir", type=Path, help="folder for the results (default: a temporary one, removed)")
    args = p.parse_args()

    simulate = {"enabled": True}
    for key, value in (("micrographs", args.micrographs), ("size_px", args.size),
                       ("particles_per_micrograph", args.per_micrograph), ("angpix", args.angpix)):
        if value is not None:
            simulate[key] = value
    overrides = [f"simulate={json.dumps(simulate)}"] + ([f"extract={{box: {args.box}}}"] if args.box else [])
    work = args.workdir or Path(tempfile.mkdtemp(prefix="cryopipe-pipeline-"))
    results = work / "results"
    cmd = ["snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(work), "--cores", str(args.cores or "all"),
           "--quiet", "--config",
           f"results={results}", *overrides, *args.set]
    print(banner("pipeline", device_name()))
    print("config overrides: " + " ".join(overrides + args.set))
    sampler = GpuSampler()
    sampler.start()
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO, check=False)
    total = time.perf_counter() - t0
    sampler.stop()
    if done.returncode != 0:
        sys.exit(f"snakemake failed (exit {done.returncode}); its outputs are in {work}")
    summary = pd.read_csv(results / "summary" / "summary.tsv", sep="\t")
    spans = stage_spans(results)
    rows = []
    for r in summary.itertuples():
        util, mem = sampler.over(spans.get(r.stage, []))
        rows.append([r.stage, r.jobs, f"{r.wall_time_s:.1f}", f"{100 * r.wall_time_s / total:.0f}%",
                     "-" if util != util else f"{util:.0f}%", "-" if mem != mem else f"{mem / 1024:.1f}", r.result])
    print(markdown_table(["stage", "jobs", "wall s (all jobs)", "of total", "mean GPU use", "peak GPU GiB",
                          "result"], rows))
    stages = summary.wall_time_s.sum()
    print(f"\nworkflow wall time {total:.1f} s ({total / 60:.1f} min); stages' own time {stages:.1f} s "
          f"(jobs of a stage may overlap, so this may exceed the wall time); the rest is snakemake and start-up")
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
