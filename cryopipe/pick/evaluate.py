"""Picks against ground truth: one-to-one matching, precision, recall and F1, and the best fixed threshold.

Used by the accuracy tests and ``benchmarks/pick_accuracy.py``; a user with annotated micrographs can call it
the same way. Coordinates are micrograph pixels.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment
from scipy.spatial import cKDTree

from cryopipe.io.mrc import read_mrc
from cryopipe.io.star import match_names, read_table
from cryopipe.pick.stage import Micrograph, micrograph_ctfs


@dataclass(frozen=True)
class Score:
    """Matched picks ``tp`` out of ``picks`` picked and ``truth`` true particles."""

    tp: int
    picks: int
    truth: int

    @property
    def precision(self) -> float:
        return self.tp / self.picks if self.picks else 1.0

    @property
    def recall(self) -> float:
        return self.tp / self.truth if self.truth else 1.0

    @property
    def f1(self) -> float:
        total = self.picks + self.truth
        return 2.0 * self.tp / total if total else 1.0

    def __add__(self, other: Score) -> Score:
        return Score(self.tp + other.tp, self.picks + other.picks, self.truth + other.truth)


def matched(picks_xy: np.ndarray, truth_xy: np.ndarray, radius: float) -> np.ndarray:
    """(P,) bool: which picks (P, 2) are matched one-to-one to a true particle (T, 2) within ``radius`` px
    (a maximum matching that prefers the closest pairs)."""
    picks_xy, truth_xy = np.reshape(picks_xy, (-1, 2)), np.reshape(truth_xy, (-1, 2))
    hit = np.zeros(len(picks_xy), bool)
    if len(picks_xy) == 0 or len(truth_xy) == 0:
        return hit
    pairs = cKDTree(picks_xy).sparse_distance_matrix(cKDTree(truth_xy), radius, output_type="coo_matrix")
    if pairs.nnz == 0:
        return hit
    cost = np.full((len(picks_xy), len(truth_xy)), 1e9)
    cost[pairs.row, pairs.col] = pairs.data
    rows, cols = linear_sum_assignment(cost)
    hit[rows[cost[rows, cols] <= radius]] = True
    return hit


def score(picks_xy: np.ndarray, truth_xy: np.ndarray, radius: float) -> Score:
    """:class:`Score` of picks (P, 2) against true particles (T, 2), matched within ``radius`` px."""
    return Score(int(matched(picks_xy, truth_xy, radius).sum()), len(np.reshape(picks_xy, (-1, 2))),
                 len(np.reshape(truth_xy, (-1, 2))))


def score_picks(picks: pd.DataFrame, truth: dict[str, np.ndarray], radius: float) -> Score:
    """:class:`Score` of the picks of several micrographs (``rlnMicrographName``, ``rlnCoordinateX/Y``: e.g. a pick
    stage's picks.star) against each micrograph's true positions (``truth``: name -> (T, 2) x y px), matched
    within ``radius`` px. Names are matched as the stages match them (:func:`cryopipe.io.star.match_names`); a
    micrograph without picks has missed all its particles."""
    keys = list(truth)
    xy = {key: [] for key in keys}
    if len(picks):
        groups = dict(tuple(picks.groupby(picks["rlnMicrographName"].astype(str))))
        for name, i in match_names(list(groups), keys).items():
            if i is not None:
                xy[keys[i]].append(groups[name][["rlnCoordinateX", "rlnCoordinateY"]].to_numpy(float))
    total = Score(0, 0, 0)
    for key in keys:
        total = total + score(np.concatenate(xy[key]) if xy[key] else np.zeros((0, 2)), truth[key], radius)
    return total


@dataclass
class Evaluation:
    """A picker on micrographs with ground truth: ``default`` (its own threshold), ``best`` (the best fixed
    threshold, ``best_threshold``), ``excluded_fraction`` (of the default picks, those inside excluded regions:
    carbon, contaminants, aggregates), ``statuses`` (each micrograph's threshold status)."""

    default: Score
    best: Score
    best_threshold: float
    excluded_fraction: float
    statuses: list[str]


def picks_at(picker, scores, thresholds) -> Iterator[pd.DataFrame]:
    """The picks of one score map at each fixed threshold of ``thresholds``, as ``picker.peaks(scores, t)`` gives
    them. Greedy suppression keeps the highest first, so (with no cap on their number) a threshold's picks are
    those of the lowest threshold that reach it: one search serves the whole sweep."""
    if picker.params.max_picks is not None:
        yield from (picker.peaks(scores, threshold=float(t)).picks for t in thresholds)
        return
    lowest = picker.peaks(scores, threshold=float(np.min(thresholds))).picks
    merit = lowest["rlnAutopickFigureOfMerit"].to_numpy(np.float32)  # find_peaks compares in float32
    for t in thresholds:
        yield lowest[merit >= np.float32(t)]


def evaluate(picker, micrographs, radius: float, thresholds=None) -> Evaluation:
    """Score a :class:`cryopipe.pick.Picker` on ``micrographs``: an iterable of (image (H, W), true positions
    (T, 2) x y px, excluded mask (H, W) bool or None, CTF or None). Each micrograph is correlated once; the
    fixed thresholds ``thresholds`` (default 0.02 to 0.98 in steps of 0.01) reuse its maps."""
    thresholds = np.arange(0.02, 0.99, 0.01) if thresholds is None else np.asarray(thresholds)
    default, swept = Score(0, 0, 0), [Score(0, 0, 0)] * len(thresholds)
    outside = inside = 0
    statuses = []
    for image, truth_xy, excluded, ctf in micrographs:
        scores = picker.score(image, ctf=ctf)
        found = picker.peaks(scores)
        xy = found.picks[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy()
        default = default + score(xy, truth_xy, radius)
        statuses.append(found.threshold.status)
        if excluded is not None and len(xy):
            ij = np.clip(np.round(xy[:, ::-1]).astype(int), 0, np.array(excluded.shape) - 1)
            hits = int(excluded[ij[:, 0], ij[:, 1]].sum())
            inside, outside = inside + hits, outside + len(xy) - hits
        for k, picks in enumerate(picks_at(picker, scores, thresholds)):
            swept[k] = swept[k] + score(picks[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy(), truth_xy, radius)
    k = int(np.argmax([s.f1 for s in swept]))
    return Evaluation(default, swept[k], float(thresholds[k]), inside / max(1, inside + outside), statuses)


def simulated_micrographs(folder: Path) -> list[tuple]:
    """What :func:`evaluate` takes, from a ``cryopipe simulate`` folder: per micrograph, in name order, (image
    (H, W), true positions (T, 2) x y px, excluded mask (H, W) bool from ``truth/excluded/`` or None, CTF)."""
    folder = Path(folder)
    truth = read_table(folder / "truth" / "particles.star")
    by_file = {Path(name).name: rows for name, rows in truth.groupby("rlnMicrographName")} if len(truth) else {}
    paths = sorted((folder / "micrographs").glob("*.mrc"))
    ctfs = micrograph_ctfs([Micrograph(str(p), str(p)) for p in paths], folder / "micrographs_ctf.star")
    items = []
    for path in paths:
        rows = by_file.get(path.name)
        xy = np.zeros((0, 2)) if rows is None else rows[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy()
        excluded = folder / "truth" / "excluded" / path.name
        mask = read_mrc(excluded)[0] > 0.5 if excluded.exists() else None
        items.append((read_mrc(path)[0], xy, mask, ctfs[str(path)]))
    return items
