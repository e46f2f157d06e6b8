"""Diagnostics of CTF estimation: CTFFIND's half-data, half-fit spectrum image and the summary over micrographs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from cryopipe.ctf import CTFParams, ctf_2d
from cryopipe.ctfestimate.spectrum import full_from_half
from cryopipe.io.atomic import atomic_path


def diagnostic_image(spectrum_half: np.ndarray, ctf: CTFParams, angpix: float, r_min_px: float) -> np.ndarray:
    """CTFFIND's diagnostic image (T, T) float32, centred (zero frequency at T//2): the left half (columns < T/2)
    the background-subtracted spectrum, the right half the fitted CTF^2 (:func:`cryopipe.ctf.ctf_2d`) scaled to
    the data's mean and s.d. in the ring just outside the low-resolution limit and clipped to +-3 s.d.

    spectrum_half : (T, T//2+1) host, unshifted half spectrum. ctf : the fit (one micrograph).
    """
    T = spectrum_half.shape[0]
    data = np.fft.fftshift(np.asarray(full_from_half(spectrum_half, np), dtype=np.float64))
    fit = np.fft.fftshift(np.asarray(ctf_2d(ctf, T, angpix, half=False), dtype=np.float64)[0] ** 2)
    k = np.arange(T) - T // 2
    r = np.hypot(k[:, None], k[None, :])
    ring = (r > r_min_px) & (r < T / 2)
    mu, sd = (data[ring].mean(), data[ring].std()) if ring.any() else (0.0, 1.0)
    sd = sd if sd > 0 else 1.0
    data = np.clip((data - mu) / sd, -3, 3)
    f = fit[ring]
    fit = (fit - f.mean()) / (f.std() if f.std() > 0 else 1.0)
    out = np.where(k[None, :] < 0, data, np.clip(fit, -3, 3))
    out[r < r_min_px] = 0.0
    return out.astype(np.float32)


def display_image(image: np.ndarray, radius_px: float, max_px: int = 256) -> np.ndarray:
    """The centre of a centred (T, T) diagnostic image out to ``radius_px``, block-averaged to at most ``max_px``
    pixels a side (fine Thon rings stay visible in a small PNG)."""
    T = image.shape[0]
    r = int(min(T // 2, np.ceil(radius_px)))
    crop = image[T // 2 - r : T // 2 + r, T // 2 - r : T // 2 + r]
    f = max(1, int(np.ceil(crop.shape[0] / max_px)))
    n = crop.shape[0] // f
    return crop[: n * f, : n * f].reshape(n, f, n, f).mean(axis=(1, 3))


def diagnostic_png(path: Path, image: np.ndarray, epa: dict, title: str, radius_px: float) -> Path:
    """A small PNG: the diagnostic image (out to ``radius_px``, the fit band's limit) and the 1D equiphase average
    with the fit and the windowed correlation.

    epa : {"s" (n,) 1/A, "profile", "ctf2", "corr" (n,), "first", "last" shells, "resolution_A", "threshold"}.
    """
    fig = Figure(figsize=(7.0, 3.2))
    ax0, ax1 = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1.35]})
    ax0.imshow(display_image(image, radius_px), cmap="gray", interpolation="nearest")
    ax0.set_title("data | fit", fontsize=8)
    ax0.set_axis_off()
    s, lo, hi = epa["s"], epa["first"], epa["last"]
    sl = slice(lo, hi + 1)
    prof = epa["profile"][sl]
    if prof.size and prof.std() > 0:
        prof = (prof - prof.mean()) / prof.std()
    fit = epa["ctf2"][sl]
    fit = (fit - fit.mean()) / (fit.std() or 1.0)
    ax1.plot(s[sl], prof, lw=0.7, color="0.3", label="equiphase average")
    ax1.plot(s[sl], fit, lw=0.7, color="tab:red", label="CTF$^2$ fit")
    ax1.plot(s[sl], 3 * epa["corr"][sl], lw=1.0, color="tab:blue", label="3 x windowed corr.")
    ax1.axhline(3 * epa["threshold"], color="tab:blue", lw=0.5, ls=":")
    res = epa["resolution_A"]
    ax1.axvline(1.0 / res, color="tab:green", lw=0.8, ls="--", label=f"fit resolution {res:.1f} A")
    ax1.set_xlabel("spatial frequency (1/A)", fontsize=8)
    ax1.tick_params(labelsize=7)
    ax1.legend(fontsize=6, loc="upper right")
    ax1.set_title(title, fontsize=8)
    fig.subplots_adjust(left=0.01, right=0.98, bottom=0.15, top=0.9, wspace=0.12)
    _save(fig, path)
    return path


def ready() -> None:
    """Nothing: submitted to a new worker process, it makes the worker import this module (matplotlib) before
    the first drawing is asked of it."""


def _save(fig: Figure, path: Path) -> None:
    """PNG at 80 dpi, atomically; a plain Figure (no pyplot state, no second layout pass): ~0.1 s."""
    FigureCanvasAgg(fig)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=80, format="png")


def summary_png(path: Path, table, truth=None) -> Path:
    """Defocus U/V (um) and fit resolution (A) per micrograph; flagged micrographs in red; with ``truth`` (the
    true rlnDefocusU/V of the same rows, simulated data) the true values as open circles. A plain Figure with a
    fixed layout (no pyplot, no layout passes): a fixed cost of every run, kept small."""
    n = np.arange(1, len(table) + 1)
    flagged = table["cpCtfFlagged"].to_numpy() == 1
    fig = Figure(figsize=(7.0, 4.2))
    ax0, ax1 = fig.subplots(2, 1, sharex=True)
    ax0.plot(n, table["rlnDefocusU"] / 1e4, ".", ms=3, label="defocus U")
    ax0.plot(n, table["rlnDefocusV"] / 1e4, ".", ms=3, label="defocus V")
    ax0.plot(n[flagged], table["rlnDefocusU"][flagged] / 1e4, "x", color="tab:red", ms=5, label="flagged")
    if truth is not None:
        for col in ("rlnDefocusU", "rlnDefocusV"):
            ax0.plot(n, truth[col].to_numpy() / 1e4, "o", mfc="none", mec="0.4", ms=5,
                     label="truth" if col == "rlnDefocusU" else None)
    ax0.set_ylabel("defocus (um)", fontsize=8)
    ax0.legend(fontsize=6)
    ax1.plot(n, table["rlnCtfMaxResolution"], ".", ms=3, color="tab:green")
    ax1.plot(n[flagged], table["rlnCtfMaxResolution"][flagged], "x", color="tab:red", ms=5)
    ax1.set_ylabel("fit resolution (A)", fontsize=8)
    ax1.set_xlabel("micrograph", fontsize=8)
    for ax in (ax0, ax1):
        ax.tick_params(labelsize=7)
    ax0.set_title(f"{len(table)} micrographs, {int(flagged.sum())} flagged", fontsize=8)
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.1, top=0.94, hspace=0.08)
    FigureCanvasAgg(fig)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    return path
