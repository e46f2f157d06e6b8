"""Accuracy of MRA 2D classification on simulated particles with ground truth (and GPU = CPU)."""

import logging
import re

import numpy as np
import pytest

from cryopipe.backend import get_backend
from cryopipe.class2d import Class2DParams, classify, load_particles
from cryopipe.class2d.stage import _reseed


def accuracy(alignment, truth, k):
    """Purity, median in-plane angle error (deg) and median shift error (px) after each class's own offset.

    Per class: the in-plane offset is the circular mean of (true psi - recorded psi); the class centre c
    (px) is the least-squares solution of true displacement - recorded shift = A(psi) c (the class average's
    own off-centring). Returns (purity, angle error, shift error, (K, 2) class centres).
    """
    view = truth["view"].to_numpy()
    counts = np.zeros((k, view.max() + 1), int)
    np.add.at(counts, (alignment.ref, view), 1)
    purity = counts.max(1).sum() / len(view)
    angle_err, shift_err, centres = [], [], np.zeros((k, 2))
    d = truth[["dx", "dy"]].to_numpy()
    for c in range(k):
        m = alignment.ref == c
        if not m.any():
            continue
        diff = truth["psi"].to_numpy()[m] - alignment.psi[m]
        offset = np.angle(np.exp(1j * np.deg2rad(diff)).mean(), deg=True)
        angle_err.append(np.abs((diff - offset + 180) % 360 - 180))
        psi = np.deg2rad(alignment.psi[m])
        A = np.stack([np.stack([np.cos(psi), np.sin(psi)], -1), np.stack([-np.sin(psi), np.cos(psi)], -1)], -2)
        r = d[m] - alignment.shift[m]
        centres[c] = np.linalg.lstsq(A.reshape(-1, 2), r.ravel(), rcond=None)[0]
        shift_err.append(np.linalg.norm(r - A @ centres[c], axis=1))
    return purity, np.median(np.concatenate(angle_err)), np.median(np.concatenate(shift_err)), centres


@pytest.mark.slow
def test_classes_angles_and_shifts_match_the_truth(particles_5views):
    """500 particles, 5 views, SNR 0.07, random psi and shifts up to 2.5 px, phase-flipped, 64 px."""
    params = Class2DParams(classes=5, mask_diameter_A=130.0, iterations=20, shift_range=3.0)
    table, stack = load_particles(particles_5views.star, params, get_backend("cpu"))
    result = classify(stack, params, get_backend("cpu"), progress=False)
    purity, angle_err, shift_err, centres = accuracy(result.alignment, particles_5views.truth, 5)
    assert purity >= 0.9
    assert angle_err <= 3.0
    assert shift_err <= 1.0
    assert np.abs(centres).max() < 1.5  # re-centred averages: recorded shift ~ true displacement
    assert result.sizes.tolist() == sorted(result.sizes.tolist(), reverse=True)
    assert result.changed[-1] < params.convergence and result.iterations < params.iterations
    assert np.all(result.resolution_A < 15.0) and np.all(result.mean_score > 0.2)


def test_reseed_splits_the_largest_class():
    averages = np.arange(3.0)[:, None, None] * np.ones((3, 4, 4))
    split = np.stack([averages + 10, averages + 20], axis=1)  # (high, low) per class
    sizes = np.array([2, 90, 40])
    assert _reseed(averages, split, sizes, min_size=20) == [(0, 1)]
    assert averages[0, 0, 0] == 21 and averages[1, 0, 0] == 11 and averages[2, 0, 0] == 2
    assert sizes.tolist() == [45, 45, 40]


@pytest.mark.gpu
def test_gpu_classification_equals_cpu(particles_small):
    params = Class2DParams(classes=3, box=48, mask_diameter_A=130.0, iterations=4, ctf="wiener")
    out = []
    for device in ("cpu", "gpu"):
        bk = get_backend(device)
        _, stack = load_particles(particles_small.star, params, bk)
        out.append(classify(stack, params, bk, progress=False))
    cpu, gpu = out
    assert (cpu.alignment.ref == gpu.alignment.ref).mean() >= 0.99
    same = cpu.alignment.ref == gpu.alignment.ref
    dpsi = ((cpu.alignment.psi - gpu.alignment.psi)[same] + 180) % 360 - 180
    assert np.median(np.abs(dpsi)) < 0.05
    np.testing.assert_allclose(gpu.averages, cpu.averages, atol=0.02 * np.abs(cpu.averages).max())


def test_image_names_stay_as_the_input_gives_them(particles_small, tmp_path, monkeypatch):
    """The table class2d writes keeps rlnImageName as the input STAR gives it where it resolves from the working
    directory (RELION's rule; the index used to be rewritten to six digits), and gives the path from the working
    directory where the name resolves only against the STAR file's folder."""
    import shutil

    from cryopipe.io.star import read_star, write_star

    blocks = read_star(particles_small.star)
    blocks["particles"] = blocks["particles"].iloc[:4].assign(rlnImageName=[f"{i + 1}@particles.mrcs"
                                                                            for i in range(4)])
    folder = tmp_path / "data"
    folder.mkdir()
    shutil.copy(particles_small.star.parent / "particles.mrcs", folder / "particles.mrcs")
    write_star(folder / "four.star", blocks)
    params = Class2DParams(classes=2, mask_diameter_A=130.0)
    monkeypatch.chdir(folder)
    table, _ = load_particles("four.star", params, get_backend("cpu"))
    assert table["rlnImageName"].tolist() == ["1@particles.mrcs", "2@particles.mrcs", "3@particles.mrcs",
                                              "4@particles.mrcs"]
    monkeypatch.chdir(folder.parent)
    table, _ = load_particles(f"{folder.name}/four.star", params, get_backend("cpu"))
    assert table["rlnImageName"][3] == f"4@{folder.name}/particles.mrcs"


def test_an_early_stop_ends_the_log_with_the_whole_time(particles_small, caplog):
    """One plain line per iteration (no terminal bar in a log file): i/N, its time and the time left; converging
    before the last scheduled iteration says so and gives the whole time."""
    caplog.set_level(logging.INFO, logger="cryopipe.class2d")
    params = Class2DParams(classes=3, box=32, mask_diameter_A=130.0, iterations=10, convergence=0.99,
                           min_class_fraction=0.0)  # no reseeding: the second iteration converges
    _, stack = load_particles(particles_small.star, params, get_backend("cpu"))
    result = classify(stack, params, get_backend("cpu"))
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("iteration ")]
    assert result.iterations == 2 and len(lines) == 2
    assert re.fullmatch(r"iteration 1/10: .* changed class, class sizes .*, [^,]+ s, about [^,]+ s left", lines[0])
    assert re.fullmatch(r"iteration 2/10: .* changed class \(converged\), .*, [^,]+ s, [^,]+ s in all", lines[1])
