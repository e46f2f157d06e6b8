"""Report figures of 3D EM runs: orthogonal central slices of maps and per-iteration progress."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cryopipe.io.atomic import atomic_path
from cryopipe.io.star import read_star


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def iteration_models(out: Path, last: int) -> list[tuple[int, dict]]:
    """(i, the blocks of ``out``/run_it{i:03d}_model.star) for every iteration i in 1..last whose model STAR is
    there, in order (a continued run may start later)."""
    found = []
    for i in range(1, last + 1):
        star = Path(out) / f"run_it{i:03d}_model.star"
        if star.exists():
            found.append((i, read_star(star)))
    return found


def plot_slices(maps, titles, path: Path) -> Path:
    """PNG of the central z, y and x slices (xy, xz, yz) of each map (N, N, N) (one row per map, titled)."""
    plt = _figure()
    maps = [np.asarray(m) for m in maps]
    fig, axes = plt.subplots(len(maps), 3, figsize=(7.5, 2.6 * len(maps)), squeeze=False)
    for row, (vol, title) in enumerate(zip(maps, titles, strict=True)):
        c = vol.shape[0] // 2
        for col, (img, name) in enumerate(((vol[c], "xy"), (vol[:, c], "xz"), (vol[:, :, c], "yz"))):
            ax = axes[row, col]
            ax.imshow(img, cmap="gray", origin="lower")
            ax.set_title(f"{title} {name}", fontsize=8)
            ax.set_axis_off()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return Path(path)


def plot_progress(iterations, class_distribution, resolution_A, path: Path) -> Path:
    """PNG of class distribution (iterations x K, fractions) and resolution (iterations x K, A) per iteration
    (``iterations``: their numbers)."""
    plt = _figure()
    dist, res = np.atleast_2d(class_distribution), np.atleast_2d(resolution_A)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.2))
    for k in range(dist.shape[1]):
        a1.plot(iterations, dist[:, k], marker="o", label=f"class {k + 1}")
        a2.plot(iterations, res[:, k], marker="o", label=f"class {k + 1}")
    a1.set(xlabel="iteration", ylabel="class distribution", ylim=(0, 1))
    a2.set(xlabel="iteration", ylabel="resolution (A)")
    a1.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return Path(path)


def plot_fsc_progress(iterations, curves, resolution_A, threshold: float, path: Path) -> Path:
    """PNG of a gold-standard refinement: the half-map FSC of every iteration (left; ``curves``, one (frequency
    (S,) 1/A, FSC (S,)) pair per iteration, with the ``threshold`` line) and the resolution (A) per iteration
    (right)."""
    plt = _figure()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.2))
    for i, (freq, curve) in zip(iterations, curves, strict=True):
        a1.plot(freq, curve, lw=1, label=f"it {i}")
    a1.axhline(threshold, color="k", ls=":", lw=0.8)
    a1.set(xlabel="resolution (1/A)", ylabel="half-map FSC", ylim=(-0.1, 1.02))
    if len(iterations) <= 12:
        a1.legend(fontsize=6)
    a2.plot(iterations, resolution_A, marker="o")
    a2.set(xlabel="iteration", ylabel="gold-standard resolution (A)")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return Path(path)
