"""The run at a glance: each stage's key numbers, jobs, wall time and peak memory, read from the provenance records
(``provenance.json``) the stages wrote into the results folder, and one small picking preview.

Notebook use::

    run(SummaryParams(), SummaryInputs(Path("results")), Path("results/summary"), StageContext.local())
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from cryopipe.errors import InputError, require
from cryopipe.io.atomic import atomic_path
from cryopipe.stage import StageContext, StageResult

log = logging.getLogger(__name__)

ORDER = ["simulate", "ctf", "pick", "extract", "class2d", "select2d", "initial-model", "class3d", "select3d",
         "refine3d", "postprocess", "bioem"]
COLUMNS = ["stage", "jobs", "wall_time_s", "peak_memory_mib", "result"]
SUMMED = ("micrographs", "picks", "rejected", "flagged")  # notes added up over a stage's batch jobs


@dataclass
class SummaryParams:
    """``preview_px``: the long side of the picking preview copied into the summary, pixels."""

    preview_px: int = 1200


@dataclass
class SummaryInputs:
    """The workflow's results folder (its stage folders hold provenance.json, batch stages per batch folder)."""

    results: Path


def read_records(results: Path) -> dict[str, list[dict]]:
    """stage name -> its provenance records (one per job, batch folders included), from ``results``."""
    records: dict[str, list[dict]] = {}
    for path in sorted([*results.glob("*/provenance.json"), *results.glob("*/batch_*/provenance.json")]):
        try:
            record = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise InputError(f"unreadable provenance record ({err})", path) from None
        if not isinstance(record, dict) or "stage" not in record:
            raise InputError("not a provenance record (no 'stage')", path, "stage")
        if record["stage"] != "summary":
            record["_path"] = str(path)
            records.setdefault(record["stage"], []).append(record)
    return records


def _notes(records: list[dict]) -> dict:
    """The notes of a stage: one job's as they are; a batch stage's with SUMMED counts added up and the other
    values of the last batch, plus ``no_picks`` joined."""
    notes = dict(records[-1].get("notes") or {})
    if len(records) > 1:
        for key in SUMMED:
            values = [(r.get("notes") or {}).get(key) for r in records]
            if all(isinstance(v, int | float) for v in values):
                notes[key] = sum(values)
        notes["no_picks"] = [m for r in records for m in (r.get("notes") or {}).get("no_picks", [])]
    return notes


def _fmt_list(values, digits=2) -> str:
    return ", ".join(f"{v:.{digits}f}" if isinstance(v, float) else str(v) for v in values)


def result_text(stage: str, n: dict) -> str:
    """One line of a stage's key numbers from its notes (what it found, not how it ran)."""
    g = n.get
    if stage == "simulate":
        return f"{g('micrographs', '?')} micrographs simulated"
    if stage == "ctf":
        text = f"{g('micrographs', '?')} micrographs, {g('flagged', 0)} flagged (no trustworthy Thon rings)"
        truth = g("against_truth") or {}
        if "median_defocus_error_A" in truth:
            text += f"; median defocus error {truth['median_defocus_error_A']:.0f} A"
        return text
    if stage == "pick":
        mics, picks = g("micrographs", 0), g("picks", 0)
        per = f" ({picks / mics:.0f} per micrograph)" if mics else ""
        return (f"{picks} picks on {mics} micrographs{per}; {g('rejected', 0)} set aside as artefacts; "
                f"{len(g('no_picks', []))} micrographs without picks")
    if stage == "extract":
        return f"{g('particles', '?')} particles extracted"
    if stage == "class2d":
        return f"{g('classes', '?')} classes, {g('iterations', '?')} iterations, {g('particles', '?')} particles"
    if stage == "select2d":
        kept = g("kept_classes", [])
        return f"{len(kept)} of {g('classes', '?')} classes kept ({g('kept_particles', '?')} particles)"
    if stage == "initial-model":
        sym = g("symmetry", "C1")
        contrast = g("symmetry_contrast", [])
        imposed = f"; {sym} imposed (symmetry contrast {_fmt_list(contrast)}; near 0: the map lacks it)" if (
            sym != "C1") else ""
        return (f"{g('classes', '?')} de novo map(s), shares {_fmt_list(g('class_distribution', []))}; hand "
                f"{g('hand', '?')} (unknown from projections: check it){imposed}")
    if stage == "class3d":
        return (f"{g('classes', '?')} classes, shares {_fmt_list(g('class_distribution', []))}; "
                f"resolution {_fmt_list(g('resolution_A', []), 1)} A")
    if stage == "select3d":
        return f"class {g('chosen_class', '?')}: {g('particles', '?')} of {g('of', '?')} particles"
    if stage == "refine3d":
        res = g("resolution_A")
        return (f"gold-standard resolution {res:.2f} A" if isinstance(res, int | float) else "resolution ?") + (
            f" after {g('iteration', '?')} iterations")
    if stage == "postprocess":
        res, b = g("resolution_A"), g("bfactor")
        text = f"masked FSC {res:.2f} A" if isinstance(res, int | float) else "resolution ?"
        if g("not_sharpened"):
            return text + f"; not sharpened ({g('not_sharpened')})"
        return text + (f"; B-factor {b:.0f} A^2" if isinstance(b, int | float) else "")
    if stage == "bioem":
        weights = g("ensemble_weights") or {}
        return f"best model {g('best_model', '?')}; ensemble weights " + ", ".join(
            f"{k} {v:.3f}" for k, v in weights.items())
    return ""


def summary_table(records: dict[str, list[dict]]) -> pd.DataFrame:
    """One row per stage that ran (pipeline order, then any other), COLUMNS."""
    rows = []
    for stage in [*(s for s in ORDER if s in records), *sorted(set(records) - set(ORDER))]:
        recs = records[stage]
        rows.append({"stage": stage, "jobs": len(recs),
                     "wall_time_s": round(sum(float(r.get("wall_time_s") or 0.0) for r in recs), 1),
                     "peak_memory_mib": round(max(float(r.get("peak_memory_mib") or 0.0) for r in recs), 0),
                     "result": result_text(stage, _notes(recs))})
    return pd.DataFrame(rows, columns=COLUMNS)


def _human(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


def summary_png(path: Path, table: pd.DataFrame) -> Path:
    """The table as a figure (stage, jobs, time, memory, result) beside a bar chart of the time per stage."""
    n = max(1, len(table))
    fig = Figure(figsize=(13.0, 1.2 + 0.42 * n))
    FigureCanvasAgg(fig)
    ax, bars = fig.subplots(1, 2, gridspec_kw={"width_ratios": [4.2, 1.0]})
    ax.set_axis_off()
    cells = [[r.stage, str(r.jobs), _human(r.wall_time_s), f"{r.peak_memory_mib / 1024:.1f} GiB", r.result]
             for r in table.itertuples()]
    if cells:
        t = ax.table(cellText=cells, colLabels=["stage", "jobs", "time", "peak mem.", "result"], loc="center",
                     cellLoc="left", colLoc="left", colWidths=[0.09, 0.04, 0.07, 0.07, 0.73])
        t.auto_set_font_size(False)
        t.set_fontsize(8)
        for cell in t.get_celld().values():
            cell.PAD = 0.02  # a fraction of the cell's width: the default 0.1 pushes the wide column's text in
        t.scale(1.0, 1.3)
    total = float(table["wall_time_s"].sum()) if len(table) else 0.0
    ax.set_title(f"cryopipe run: {len(table)} stages, {_human(total)} of stage time", fontsize=10, loc="left")
    y = list(range(len(table)))[::-1]
    bars.barh(y, table["wall_time_s"], color="tab:blue")
    bars.set_yticks(y, table["stage"], fontsize=8)
    bars.set_xlabel("wall time per stage (s, all jobs)", fontsize=8)
    bars.tick_params(labelsize=7)
    fig.subplots_adjust(left=0.01, right=0.99, top=0.9, bottom=0.12, wspace=0.12)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    return path


def preview_jpeg(source: Path, path: Path, max_px: int) -> Path:
    """``source`` (a picking preview PNG) scaled to at most ``max_px`` on its long side, as a JPEG."""
    from PIL import Image

    with Image.open(source) as image:
        image = image.convert("RGB")
        image.thumbnail((max_px, max_px))
        with atomic_path(path) as tmp:
            image.save(tmp, format="JPEG", quality=80, optimize=True)
    return path


def run(params: SummaryParams, inputs: SummaryInputs, out: Path, ctx: StageContext) -> StageResult:
    """Write ``out/summary.tsv`` and ``out/summary.png`` (every stage's key numbers, jobs, time and peak memory)
    and ``out/picks.jpg`` (the first picking batch's preview, small). Notes: stages, total_wall_time_s."""
    require(params.preview_px >= 100, "must be >= 100 pixels", field="--preview-px")
    results, out = Path(inputs.results), Path(out)
    if not results.is_dir():
        raise InputError("no such results folder", results)
    records = read_records(results)
    if not records:
        raise InputError("no provenance.json in its stage folders: run the workflow first", results)
    table = summary_table(records)
    with atomic_path(out / "summary.tsv") as tmp:
        table.to_csv(tmp, sep="\t", index=False)
    files = [out / "summary.tsv", summary_png(out / "summary.png", table)]
    previews = sorted(results.glob("pick/batch_*/picks_preview.png"))
    if previews:
        files.append(preview_jpeg(previews[0], out / "picks.jpg", params.preview_px))
    for row in table.itertuples():
        log.info("%-11s %3d job(s) %9s  %s", row.stage, row.jobs, _human(row.wall_time_s), row.result)
    read = [Path(p) for recs in records.values() for p in (r["_path"] for r in recs)] + previews[:1]
    return StageResult(files=files, notes={"stages": list(table["stage"]),
                                           "total_wall_time_s": float(table["wall_time_s"].sum())}, inputs=read)
