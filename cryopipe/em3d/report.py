"""Report figures of 3D EM runs: orthogonal central slices of maps and per-iteration progress."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cryopipe.io.atomic import atomic_path


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_slices(maps, titles, path: Path) -> Path:
    """PNG of the central z, y and x slices of each map (rows)."""
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
    """PNG of class distribution (iterations x K) and resolution (iterations x K) per iteration."""
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
