"""The tables of ``benchmarks/scaling.py``: per stage the scaling table and, below the efficiency goal, where the time
goes; and the checks that make a run's report trustworthy."""

from __future__ import annotations

import json
from pathlib import Path

from common import markdown_header, markdown_row
from scaling_stages import IO_LABEL, MPI_LABEL, PROVENANCE_LABEL

EFFICIENCY_GOAL = 0.9  # below this, the table says where the time goes
SCALING_COLUMNS = ["ranks", "time (s)", "speed-up", "efficiency", "time excl. provenance (s)", "eff. excl. provenance",
                   "launch to exit (s)", "compute max / min (s)", "MPI max / min (s)", "I/O max / min (s)", "devices",
                   "cores / rank"]


def categories(rank: dict) -> dict:
    """(compute, MPI, I/O, provenance) seconds of one rank's report; compute = the rest of the wall."""
    ph = rank["phases"]
    mpi = sum(v[0] for k, v in ph.items() if k.startswith(MPI_LABEL))
    io = sum(v[0] for k, v in ph.items() if k.startswith(IO_LABEL))
    prov = ph.get(PROVENANCE_LABEL, [0.0])[0]
    return {"compute": rank["wall_s"] - mpi - io - prov, "mpi": mpi, "io": io, "provenance": prov}


def max_min(values) -> str:
    """"max / min" of ``values``, seconds to 0.01."""
    values = list(values)
    return f"{max(values):.2f} / {min(values):.2f}"


def stage_table(name: str, runs: list[dict]) -> str:
    """Markdown: the scaling table of one stage and, below the efficiency goal, where the time goes."""
    done = [r for r in runs if r.get("report")]
    lines = [markdown_header(SCALING_COLUMNS)]
    if not done:
        errors = ", ".join(r.get("error", "?") for r in runs)
        return "\n".join(lines + [markdown_row([f"(no run completed: {errors})"])])
    base = done[0]
    g0, t0 = base["ranks"], base["time"]
    t0x = t0 - base["prov"]
    for r in runs:
        if not r.get("report"):
            lines.append(markdown_row([r["ranks"], r.get("error", "failed")]))
            continue
        g, t = r["ranks"], r["time"]
        cats = [categories(x) for x in r["report"]["ranks"]]
        tx = t - r["prov"]
        devices = ", ".join(str(x.get("device_id", "cpu")) for x in r["report"]["ranks"])
        cores = ", ".join(sorted({str(x["cores"]) for x in r["report"]["ranks"]}))
        lines.append(markdown_row([g, f"{t:.2f}", f"{t0 / t:.2f}", f"{t0 * g0 / (t * g):.0%}", f"{tx:.2f}",
                                   f"{t0x * g0 / (tx * g):.0%}", f"{r['outer']:.1f}",
                                   max_min(c["compute"] for c in cats), max_min(c["mpi"] for c in cats),
                                   max_min(c["io"] for c in cats), devices, cores]))
    for r in done[1:]:
        g = r["ranks"]
        eff = t0 * g0 / (r["time"] * g)
        if eff >= EFFICIENCY_GOAL:
            continue
        lines += ["", f"Where the time goes at {g} ranks (efficiency {eff:.0%}; ideal time {t0 * g0 / g:.2f} s, "
                  f"measured {r['time']:.2f} s): rank 0's exclusive time per phase against {g0} rank(s) x {g0}/{g}, "
                  "largest excess first; max / min over the ranks shows imbalance.", "",
                  markdown_header(["phase", f"{g0} rank(s) (s)", f"ideal at {g} (s)", f"rank 0 at {g} (s)",
                                   "max / min over ranks (s)", "excess (s)", "share of the loss", "calls (rank 0)",
                                   "MB moved (rank 0)"])]
        b0 = base["report"]["ranks"][0]["phases"]
        ranks = r["report"]["ranks"]
        r0 = ranks[0]["phases"]
        loss = r["time"] - t0 * g0 / g
        rows = []
        for label in set(b0) | set(r0):
            if label.startswith("background thread"):
                continue
            tb = b0.get(label, [0.0])[0]
            tg = r0.get(label, [0.0, 0, 0])
            each = [x["phases"].get(label, [0.0])[0] for x in ranks]
            ideal = tb * g0 / g
            rows.append((tg[0] - ideal, label, tb, ideal, tg, each))
        for excess, label, tb, ideal, tg, each in sorted(rows, key=lambda x: -x[0])[:10]:
            share = f"{excess / loss:.0%}" if loss > 0 else "-"
            lines.append(markdown_row([label, f"{tb:.2f}", f"{ideal:.2f}", f"{tg[0]:.2f}", max_min(each),
                                       f"{excess:+.2f}", share, tg[1], f"{tg[2] / 1e6:.0f}"]))
        if ranks[0].get("not_timed"):
            lines.append(f"Not found, so not timed separately: {', '.join(ranks[0]['not_timed'])}.")
        bg = {k: v for k, v in r0.items() if k.startswith("background thread")}
        if bg:
            lines.append("Overlapped with the above (rank 0, reader threads): " + ", ".join(
                f"{k[len('background thread: '):]} {v[0]:.2f} s" for k, v in bg.items()))
    return "\n".join(lines)


def check_report(report: dict, g: int, device: str, out: Path) -> str | None:
    """Why a run's report cannot be trusted (wrong communicator size, shared GPUs), or None."""
    ranks = report["ranks"]
    if report["size"] != g or len(ranks) != g:
        return f"communicator of size {report['size']} with {len(ranks)} reports, expected {g}"
    bad = [x["rank"] for x in ranks if x["rc"]]
    if bad:
        return f"ranks {bad} returned non-zero"
    prov = out / "provenance.json"
    if prov.exists():
        size = json.loads(prov.read_text()).get("mpi_size")
        if size != g:
            return f"provenance.json records mpi_size {size}, expected {g}"
    if device == "gpu":
        ids = [x["pci_bus_id"] for x in ranks]
        if len(set(ids)) != len(ids) and g <= ranks[0]["visible_gpus"]:
            return f"ranks share GPUs: {ids}"
    return None
