"""Figures for the Snakemake report (matplotlib, no display needed)."""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from scipy.ndimage import gaussian_filter  # noqa: E402

from cryopipe.io.atomic import atomic_path  # noqa: E402


def save_figure(fig, path: str | os.PathLike) -> None:
    """Save ``fig`` as PNG atomically and close it."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, bbox_inches="tight", format="png")
    plt.close(fig)


def micrograph_with_circles(image: np.ndarray, xy: np.ndarray, radius_px: float, title: str, smooth_px: float = 3.0):
    """A (low-passed) micrograph ``image`` (ny, nx) with circles of ``radius_px`` at ``xy`` (n, 2) = (x, y) pixels."""
    fig, ax = plt.subplots(figsize=(6, 6))
    ax.imshow(gaussian_filter(image, smooth_px), cmap="gray")
    for x, y in np.asarray(xy).reshape(-1, 2):
        ax.add_patch(plt.Circle((x, y), radius_px, fill=False, color="tab:red", lw=1))
    ax.set_title(title)
    ax.set_axis_off()
    return fig


def orthogonal_projections(maps: dict[str, np.ndarray]):
    """Sums of each map (z, y, x) along z, y and x, one row per map."""
    fig, axes = plt.subplots(len(maps), 3, figsize=(7.5, 2.5 * len(maps)), squeeze=False)
    for row, (name, vol) in zip(axes, maps.items(), strict=True):
        for ax, axis, label in zip(row, (0, 1, 2), ("along z", "along y", "along x"), strict=True):
            ax.imshow(vol.sum(axis), cmap="gray", origin="lower")
            ax.set_title(f"{name} {label}", fontsize=8)
            ax.set_axis_off()
    return fig
