"""Scoring picks against ground truth."""

import numpy as np
import pandas as pd

from cryopipe.pick.evaluate import score_picks


def test_score_picks_matches_micrographs_by_name_and_counts_a_micrograph_without_picks_as_missed():
    picks = pd.DataFrame({"rlnMicrographName": ["/data/mics/a.mrc", "/data/mics/a.mrc", "/data/mics/b.mrc"],
                          "rlnCoordinateX": [10.0, 50.0, 30.0], "rlnCoordinateY": [10.0, 50.0, 30.0]})
    truth = {"a.mrc": np.array([[11.0, 10.0], [80.0, 80.0]]),  # one found, one missed; the pick at 50 is false
             "b.mrc": np.array([[30.0, 31.0]]),
             "c.mrc": np.array([[5.0, 5.0], [9.0, 9.0]])}  # no picks at all
    total = score_picks(picks, truth, radius=3.0)
    assert (total.tp, total.picks, total.truth) == (2, 3, 5)
    empty = score_picks(picks.iloc[:0], truth, radius=3.0)
    assert (empty.tp, empty.picks, empty.truth) == (0, 0, 5)
