"""Accuracy on simulated micrographs with ground truth (cryopipe.simulate, demo settings)."""

import numpy as np
import pytest

from cryopipe.backend import get_backend
from cryopipe.geometry import euler_to_matrix
from cryopipe.io.mrc import read_mrc
from cryopipe.io.star import read_table
from cryopipe.pick import Micrograph, Picker, PickParams, TemplateStack, project_reference
from cryopipe.pick.stage import micrograph_ctfs
from cryopipe.projection import Projector
from cryopipe.simulate.micrographs import SimulateParams, simulate_dataset

DIAMETER = 120.0  # the simulator's default particle diameter, A


@pytest.mark.slow
def test_precision_and_recall_on_demo_micrographs(demo_data, synth):
    """Reference projections along 20 directions, CTF-aware as the workflow runs it, defaults (20 A low-pass,
    automatic threshold): precision and recall >= 0.95 at a match radius of 0.2 x diameter."""
    bk = get_backend("cpu")
    truth = read_table(demo_data / "truth" / "particles.star")
    stack = project_reference(demo_data / "maps" / "conformation_1.mrc", bk, 20)
    picker = Picker(stack, 2.5, PickParams(diameter_A=DIAMETER), bk)
    names = sorted(truth["rlnMicrographName"].unique())
    ctfs = micrograph_ctfs([Micrograph(n, n) for n in names], demo_data / "micrographs_ctf.star")
    n_true = n_picks = tp = 0
    for name, rows in truth.groupby("rlnMicrographName"):
        picks = picker.pick(read_mrc(name)[0], ctf=ctfs[name])
        p, r = synth.match(picks, rows[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy(), 0.2 * DIAMETER / 2.5)
        tp += r * len(rows)
        n_true += len(rows)
        n_picks += len(picks)
    precision, recall = tp / n_picks, tp / n_true
    print(f"demo picking: precision {precision:.3f} recall {recall:.3f} ({n_picks} picks, {n_true} true)")
    assert precision >= 0.95 and recall >= 0.95


@pytest.mark.slow
def test_psi_agrees_with_truth_for_templates_at_true_directions(tmp_path, synth):
    """Templates = projections at the true (rot, tilt, 0) of each micrograph's particles: the picks' psi is
    within the angular step of the true psi for most true particles (sparser micrographs: 10 per 512^2)."""
    simulate_dataset(SimulateParams(snr=0.1, seed=11, micrographs=2, size_px=512, particles_per_micrograph=10),
                     tmp_path)
    bk = get_backend("cpu")
    truth = read_table(tmp_path / "truth" / "particles.star")
    maps = {c: Projector(read_mrc(tmp_path / "maps" / f"conformation_{c}.mrc")[0], bk) for c in (1, 2)}
    params = PickParams(diameter_A=DIAMETER, lowpass_A=10.0)
    good = matched = 0
    for name, rows in truth.groupby("rlnMicrographName"):
        images = np.concatenate([bk.asnumpy(maps[r.rlnClassNumber].project_real(
            euler_to_matrix(r.rlnAngleRot, r.rlnAngleTilt, 0.0)[None])) for r in rows.itertuples()])
        picks = Picker(TemplateStack(images, 2.5), 2.5, params, bk).pick(read_mrc(name)[0])
        xy = picks[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy()
        for r in rows.itertuples():
            d = np.hypot(*(xy - (r.rlnCoordinateX, r.rlnCoordinateY)).T)
            if len(d) == 0 or d.min() > 0.2 * DIAMETER / 2.5:
                continue
            matched += 1
            dpsi = abs((picks["rlnAnglePsi"].iloc[int(np.argmin(d))] - r.rlnAnglePsi + 180) % 360 - 180)
            good += dpsi <= params.angular_step
    print(f"psi within {params.angular_step} deg of the truth: {good} of {matched} matched ({len(truth)} true)")
    assert matched >= 0.9 * len(truth)
    assert good >= 0.7 * matched
