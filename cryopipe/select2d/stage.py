"""Class selection after 2D classification: keep the particles of good classes.

Classes are kept from an explicit list of class numbers, or automatically when they pass every criterion:

* size: at least ``min_size`` particles (default "auto": 20% of the mean class size);
* resolution: FRC resolution (rlnEstimatedResolution) at most ``max_resolution_A`` Angstrom (default "auto":
  median + 3 robust s.d. over the classes, robust s.d. = 1.4826 x median absolute deviation). A resolution of
  999 A or more (RELION's value for "not estimated": class2d writes it for an empty class, one of whose half sets is
  empty, or whose FRC is below the threshold from the lowest frequency on) or not a finite number is unknown: it
  never enters the median and MAD, and the class fails this criterion with the reason "resolution unknown" (a
  class whose resolution could not be measured is not a good class). When no populated class has a known
  resolution, "auto" has nothing to measure against: the criterion is left out, with a warning;
* score: mean alignment score (cpMeanScore) at least ``min_score`` (default "auto": median - 3 robust s.d.).

Each criterion takes a number, "auto" or "off". Inputs are ``cryopipe class2d``'s particles.star and
classes.star (data_model_classes: rlnClassNumber, cpClassSize, rlnEstimatedResolution, cpMeanScore,
rlnReferenceImage).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cryopipe.errors import InputError, require
from cryopipe.io.atomic import atomic_write_text
from cryopipe.io.mrc import read_mrc, write_mrc
from cryopipe.io.star import (
    UNKNOWN_RESOLUTION_A,
    parse_image_name,
    read_particles,
    read_star,
    write_star,
    write_table,
)
from cryopipe.stage import StageContext, StageResult

log = logging.getLogger(__name__)

ROBUST_SIGMAS = 3.0
AUTO_SIZE_FRACTION = 0.2
CLASS_COLUMNS = ("rlnClassNumber", "cpClassSize", "rlnEstimatedResolution", "cpMeanScore")
_NOT = {">=": "<", "<=": ">"}


def _criterion(value, name: str) -> float | str:
    """A criterion as given by a user: a number, "auto" or "off"."""
    if isinstance(value, str) and value.lower() in ("auto", "off"):
        return value.lower()
    try:
        return float(value)
    except (TypeError, ValueError):
        raise InputError(f"must be a number, 'auto' or 'off', got {value!r}", field=name) from None


@dataclass
class SelectParams:
    """Which classes to keep: ``keep`` (class numbers; overrides the criteria) or the automatic criteria,
    each a number, "auto" or "off" (see the module docstring)."""

    keep: list[int] | None = None
    min_size: float | str = "auto"
    max_resolution_A: float | str = "auto"
    min_score: float | str = "auto"

    def validate(self) -> None:
        self.min_size = _criterion(self.min_size, "--min-size")
        self.max_resolution_A = _criterion(self.max_resolution_A, "--max-resolution")
        self.min_score = _criterion(self.min_score, "--min-score")
        require(self.keep is None or len(self.keep) > 0, "give at least one class number", field="--keep")


def known_resolution(values) -> np.ndarray:
    """(K,) bool: which resolutions (A) were estimated: finite and below RELION's 999 A for "unknown"."""
    v = np.asarray(values, dtype=float)
    return np.isfinite(v) & (v < UNKNOWN_RESOLUTION_A)


def _robust(values: np.ndarray) -> tuple[float, float] | None:
    """Median and robust s.d. (1.4826 x MAD) of the finite values; None when there are none."""
    v = values[np.isfinite(values)]
    if not len(v):
        return None
    med = float(np.median(v))
    return med, float(1.4826 * np.median(np.abs(v - med)))


def _thresholds(classes: pd.DataFrame, params: SelectParams) -> dict[str, float | None]:
    """Resolved thresholds {size, resolution, score} (None: criterion off), from the populated classes (for the
    resolution, those whose resolution is known)."""
    populated = classes[classes["cpClassSize"] > 0]
    measured = {"resolution": populated[known_resolution(populated["rlnEstimatedResolution"])],
                "score": populated}
    out: dict[str, float | None] = {}
    for key, value, column, sign in (("size", params.min_size, "cpClassSize", 0),
                                     ("resolution", params.max_resolution_A, "rlnEstimatedResolution", 1),
                                     ("score", params.min_score, "cpMeanScore", -1)):
        if value == "off":
            out[key] = None
        elif value != "auto":
            out[key] = float(value)
        elif key == "size":
            out[key] = AUTO_SIZE_FRACTION * classes["cpClassSize"].sum() / len(classes)
        else:
            stats = _robust(measured[key][column].to_numpy(dtype=float))
            if stats is None:
                log.warning("no populated class has a known %s (%s): the automatic %s criterion is left out", key,
                            column, key)
                out[key] = None
            else:
                out[key] = stats[0] + sign * ROBUST_SIGMAS * stats[1]
    return out


def select_classes(classes: pd.DataFrame, params: SelectParams, path=None) -> pd.DataFrame:
    """Decide per class: the classes table with columns cpKept (0/1) and cpReason (words) added.

    classes : data_model_classes of class2d (rlnClassNumber, cpClassSize, rlnEstimatedResolution, cpMeanScore).
    """
    params.validate()
    for column in CLASS_COLUMNS:
        require(column in classes.columns, f"missing column {column}", path, column)
    numbers = classes["rlnClassNumber"].astype(int)
    if params.keep is not None:
        unknown = sorted(set(params.keep) - set(numbers))
        require(not unknown, f"class(es) {unknown} not in the classes table {sorted(numbers)}", path, "--keep")
        kept = numbers.isin(params.keep).to_numpy()
        reasons = np.where(kept, "listed", "not listed")
        return classes.assign(cpKept=kept.astype(int), cpReason=reasons)
    t = _thresholds(classes, params)
    criteria = [(name, column, op, t[key], fmt) for key, name, column, op, fmt in (
        ("size", "size", "cpClassSize", ">=", "{:.0f}"),
        ("resolution", "resolution", "rlnEstimatedResolution", "<=", "{:.1f} A"),
        ("score", "score", "cpMeanScore", ">=", "{:.3f}"),
    ) if t[key] is not None]
    kept, reasons = [], []
    for _, row in classes.iterrows():
        results = []
        for name, column, op, limit, fmt in criteria:
            if column == "rlnEstimatedResolution" and not known_resolution(row[column]):
                results.append((False, "resolution unknown"))
                continue
            ok = row[column] >= limit if op == ">=" else row[column] <= limit
            results.append((ok, f"{name} {fmt.format(row[column])} {op if ok else _NOT[op]} {fmt.format(limit)}"))
        keep = row["cpClassSize"] > 0 and all(ok for ok, _ in results)
        words = ["empty class"] if row["cpClassSize"] == 0 else [w for ok, w in results if ok == keep]
        kept.append(keep)
        reasons.append(("kept: " if keep else "rejected: ") + ("; ".join(words) or "no criteria"))
    return classes.assign(cpKept=np.array(kept, dtype=int), cpReason=reasons)


@dataclass
class Select2DInputs:
    """class2d's particles STAR (with rlnClassNumber) and classes STAR (data_model_classes)."""

    particles: Path
    classes_star: Path


def run(params: SelectParams, inputs: Select2DInputs, out: Path, ctx: StageContext) -> StageResult:
    """Select classes and write ``out``/particles.star (the kept classes' particles), selection.tsv (every
    class: kept or not and why), classes.star and class_averages.mrcs (the kept classes' averages, when the
    averages stack can be read) and select2d.png. Notes: classes, kept_classes, kept_particles."""
    out = Path(out)
    root = ctx.final(out)
    blocks = read_star(inputs.classes_star)
    classes = blocks.get("model_classes", next(iter(blocks.values())))
    decision = select_classes(classes, params, inputs.classes_star)
    particles = read_particles(inputs.particles, ["rlnImageName", "rlnClassNumber"])
    known = set(decision["rlnClassNumber"].astype(int))
    stray = sorted(set(particles["rlnClassNumber"].astype(int)) - known)
    require(not stray, f"particles of class(es) {stray[:5]} not in {inputs.classes_star}", inputs.particles,
            "rlnClassNumber")
    keep_numbers = decision.loc[decision["cpKept"] == 1, "rlnClassNumber"].astype(int)
    selected = particles[particles["rlnClassNumber"].astype(int).isin(keep_numbers)]
    require(len(selected) > 0, "no class passes the selection; relax the criteria or list classes with --keep",
            inputs.classes_star, "--keep")
    written = [out / "particles.star", out / "selection.tsv"]
    write_table(out / "particles.star", selected)
    atomic_write_text(out / "selection.tsv", decision[[*CLASS_COLUMNS, "cpKept", "cpReason"]].to_csv(
        sep="\t", index=False, float_format="%.4g"))
    averages = _averages(decision, inputs.classes_star)
    if averages is not None:
        images, angpix = averages
        kept = decision["cpKept"].to_numpy() == 1
        write_mrc(out / "class_averages.mrcs", images[kept], angpix, stack=True)
        table = decision[kept].drop(columns=["cpKept", "cpReason"]).assign(
            rlnReferenceImage=[f"{i + 1:06d}@{root / 'class_averages.mrcs'}" for i in range(int(kept.sum()))])
        write_star(out / "classes.star", {"model_classes": table})
        written += [out / "class_averages.mrcs", out / "classes.star", _figure(decision, images, out)]
    log.info("kept %d of %d classes: %d of %d particles", len(keep_numbers), len(decision), len(selected),
             len(particles))
    return StageResult(files=written, notes={
        "classes": len(decision), "kept_classes": keep_numbers.tolist(), "kept_particles": len(selected)})


def _averages(classes: pd.DataFrame, classes_star) -> tuple[np.ndarray, float] | None:
    """The class averages (K, N, N) in table order and their pixel size, or None without rlnReferenceImage."""
    if "rlnReferenceImage" not in classes.columns:
        return None
    index, stacks = parse_image_name(classes["rlnReferenceImage"], classes_star)
    images, angpix = zip(*(read_mrc(s, indices=[i]) for i, s in zip(index, stacks, strict=True)), strict=True)
    return np.concatenate(images), float(angpix[0] or 1.0)


def _figure(decision: pd.DataFrame, images: np.ndarray, out: Path) -> Path:
    """select2d.png: every class average, titled with its number and size, kept in green, rejected in red."""
    import matplotlib.pyplot as plt

    from cryopipe.plots import save_figure

    k = len(images)
    cols = min(k, 10)
    rows = int(np.ceil(k / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(1.3 * cols, 1.5 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.set_axis_off()
    for ax, image, (_, row) in zip(axes.ravel(), images, decision.iterrows(), strict=False):
        ax.imshow(image, cmap="gray")
        ax.set_title(f"{int(row['rlnClassNumber'])}: {int(row['cpClassSize'])}", fontsize=7,
                     color="tab:green" if row["cpKept"] else "tab:red")
    fig.suptitle(f"2D class selection: {int(decision['cpKept'].sum())} of {k} kept (green)")
    save_figure(fig, out / "select2d.png")
    return out / "select2d.png"
