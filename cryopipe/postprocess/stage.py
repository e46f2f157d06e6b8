"""Solvent mask, masked FSC corrected by phase randomisation, Guinier B-factor and sharpening.

* Mask (when none is given): the average of the half-maps low-pass filtered at ``mask_lowpass_A``, thresholded
  at ``mask_threshold`` x its maximum, dilated by ``extend_px`` and given a raised-cosine edge of ``edge_px``.
* FSC of the unmasked and of the masked half-maps; the masked FSC is corrected for the mask's own correlation
  (Chen et al. 2013): both half-maps get random phases beyond the shell where the unmasked FSC first drops
  below 0.8, are masked again, and FSC_true = (FSC_masked - FSC_random) / (1 - FSC_random) from two shells beyond
  that shell on (FSC_masked below). The final resolution is where FSC_true drops below 0.143.
* Sharpening: the amplitudes of the averaged map are weighted by sqrt(2 FSC / (1 + FSC)) (Rosenthal & Henderson
  2003), the B-factor is the slope (x 4) of ln|F| against 1/d^2 from ``fit_low_A`` to the final resolution
  (Guinier plot; from 1.5 x the resolution when that is coarser), the map is multiplied by exp(-B s^2 / 4)
  (B negative: sharpening) and low-pass filtered at the final resolution.

When the map is not sharpened, it says so. The fit range does not adapt to a map whose final resolution is worse
than ``fit_low_A`` (default 10 A, RELION's --autob_lowres): the Guinier plot of a protein is a straight line only
beyond ~10 A, and what lies before it is the particle's form factor, whose fall-off a fit would turn into a
"sharpening" by thousands of A^2 that boosts noise. RELION does not adapt either: its help for the automatic
B-factor says the map must extend well beyond the lowest fit resolution, and to give an own B-factor for a map that
does not extend beyond 10 A (--bfactor here). Such a map, and one whose fitted slope is positive (clipped to B = 0),
or given ``bfactor`` >= 0, is FSC-weighted and low-pass filtered but not sharpened: ``cpSharpened`` is 0 in
postprocess.star's general block (1 when a negative B-factor was applied), the log says "not sharpened: <why>",
and the notes of the run record ``sharpened`` and ``not_sharpened`` (the reason). No STAR field holds NaN: the
Guinier fit's slope and intercept (rlnFittedSlopeGuinierPlot, rlnFittedInterceptGuinierPlot) are written only when
a B-factor was fitted, as relion_postprocess writes them only with --auto_bfac. rlnAngstromResolution is 999 at
shell 0 of the FSC table, as RELION writes it (the DC shell has no resolution).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage

from cryopipe.em3d.model import write_star_exact
from cryopipe.em3d.report import plot_slices
from cryopipe.errors import require
from cryopipe.fourier import fsc, lowpass, resolution_at
from cryopipe.io.atomic import atomic_path
from cryopipe.io.mrc import read_mrc, write_mrc
from cryopipe.stage import StageContext, StageResult

log = logging.getLogger(__name__)


@dataclass
class PostprocessParams:
    """Options (lengths in Angstrom). ``bfactor`` None: fitted."""

    mask_lowpass_A: float = 15.0
    mask_threshold: float = 0.05
    extend_px: float = 3.0
    edge_px: float = 6.0
    fit_low_A: float = 10.0
    bfactor: float | None = None
    seed: int = 0


def _shells(n: int) -> np.ndarray:
    k = np.fft.fftfreq(n, 1.0 / n)
    return np.rint(np.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + np.arange(n // 2 + 1) ** 2)).astype(int)


def make_mask(volume: np.ndarray, angpix: float, params: PostprocessParams) -> np.ndarray:
    """Soft solvent mask (N^3) float32 in [0, 1] from a map."""
    low = lowpass(np.asarray(volume, dtype=np.float32), angpix, params.mask_lowpass_A, ndim=3)
    binary = low > params.mask_threshold * float(low.max())
    outside = ndimage.distance_transform_edt(~binary)
    dist = outside - params.extend_px
    soft = np.where(dist <= 0, 1.0, np.where(dist >= params.edge_px, 0.0, 0.5 + 0.5 * np.cos(np.pi * dist /
                                                                                                 params.edge_px)))
    return soft.astype(np.float32)


def randomise_phases(volume: np.ndarray, from_shell: int, rng) -> np.ndarray:
    """The map with uniformly random phases at shells >= ``from_shell`` (amplitudes kept)."""
    n = volume.shape[0]
    f = np.fft.rfftn(volume)
    sel = _shells(n) >= from_shell
    f[sel] = np.abs(f[sel]) * np.exp(2j * np.pi * rng.random(int(sel.sum())))
    return np.fft.irfftn(f, s=volume.shape, axes=(0, 1, 2))


def guinier(volume: np.ndarray, angpix: float) -> tuple[np.ndarray, np.ndarray]:
    """(1/d^2 in 1/A^2, ln of the mean amplitude) per shell 1..N/2."""
    n = volume.shape[0]
    shells = _shells(n)
    amp = np.abs(np.fft.rfftn(volume))
    keep = (shells >= 1) & (shells <= n // 2)
    mean = np.bincount(shells[keep], amp[keep], minlength=n // 2 + 1) / np.maximum(
        np.bincount(shells[keep], minlength=n // 2 + 1), 1)
    s2 = (np.arange(n // 2 + 1) / (n * angpix)) ** 2
    return s2[1:], np.log(np.maximum(mean[1:], 1e-30))


def fit_bfactor(s2: np.ndarray, log_amp: np.ndarray, low_A: float, high_A: float) -> tuple[float, float]:
    """B-factor (A^2) and intercept of the straight line ln|F| = a + (B/4) s^2 between low_A and high_A."""
    sel = (s2 >= 1 / low_A**2) & (s2 <= 1 / high_A**2)
    require(sel.sum() >= 3, f"too few shells between {low_A} and {high_A:.1f} A for the Guinier fit", field="--fit-low")
    slope, intercept = np.polyfit(s2[sel], log_amp[sel], 1)
    return float(4 * slope), float(intercept)


@dataclass
class PostprocessInputs:
    """The two gold-standard half-maps (MRC, same box and pixel size) and an optional soft mask in [0, 1]
    (None: made from the averaged half-maps)."""

    half1: Path
    half2: Path
    mask: Path | None = None


def run(params: PostprocessParams, inputs: PostprocessInputs, out: Path, ctx: StageContext) -> StageResult:
    """Post-process ``inputs``' half-maps into ``out`` (see :func:`postprocess`). Notes: resolution_A, bfactor,
    sharpened (bool) and, when not, not_sharpened (why)."""
    result = postprocess(inputs.half1, inputs.half2, out, params, final_out=ctx.final(out), mask=inputs.mask)
    notes = {"resolution_A": round(result["resolution_A"], 3), "bfactor": round(result["bfactor"], 1),
             "sharpened": result["sharpened"]}
    if not result["sharpened"]:
        notes["not_sharpened"] = result["not_sharpened"]
    return StageResult(files=result["files"], notes=notes)


def postprocess(half1_path, half2_path, out: Path, params: PostprocessParams, final_out: Path | None = None,
                mask: Path | None = None) -> dict:
    """Run post-processing; write map_sharpened.mrc, mask.mrc, postprocess.star and PNGs into ``out``
    (``final_out``: the folder they will end up in, for the mask path recorded in the STAR; default ``out``).
    ``mask``: a soft mask MRC in [0, 1] (None: made from the maps). Returns resolution_A, bfactor, sharpened
    (whether a negative B-factor was applied), not_sharpened (why not, else None), fsc (table), files, map and mask
    ((n, n, n) arrays)."""
    mask_path = mask
    h1, angpix = read_mrc(half1_path)
    h2, angpix2 = read_mrc(half2_path)
    require(h1.ndim == 3 and h1.shape[0] == h1.shape[1] == h1.shape[2], "half-map must be a cube", half1_path,
            "shape")
    require(h1.shape == h2.shape, f"half-maps differ in shape {h1.shape} vs {h2.shape}", half2_path, "shape")
    require(angpix is not None and angpix2 is not None and abs(angpix - angpix2) < 1e-3 * angpix,
            f"half-maps differ in pixel size ({angpix} vs {angpix2} A)", half2_path, "angpix")
    for half, path in ((h1, half1_path), (h2, half2_path)):
        require(float(half.max()) > float(half.min()), f"map holds no signal: every voxel is {float(half.min()):g}",
                path, "data")
    require(not np.array_equal(h1, h2), f"half-maps are identical (the same data as {half1_path}): give the two "
            "half-maps refined independently from the two random halves of the particles", half2_path, "data")
    n = h1.shape[0]
    h1, h2 = h1.astype(np.float64), h2.astype(np.float64)
    if mask_path is not None:
        mask, _ = read_mrc(mask_path)
        require(mask.shape == h1.shape, f"mask shape {mask.shape} differs from the maps' {h1.shape}", mask_path,
                "shape")
        require(mask.min() >= -1e-3 and mask.max() <= 1 + 1e-3, "mask values must lie in [0, 1]", mask_path,
                "data")
        require(mask.max() > 0, "mask is empty (every voxel is 0)", mask_path, "data")
    else:
        mask = make_mask(0.5 * (h1 + h2), angpix, params)
    fsc_unmasked = np.asarray(fsc(h1, h2))
    fsc_masked = np.asarray(fsc(h1 * mask, h2 * mask))
    below = np.flatnonzero(fsc_unmasked[1:] < 0.8)
    rand_shell = int(below[0] + 1) if len(below) else n // 2
    rng = np.random.default_rng(params.seed)
    fsc_random = np.asarray(fsc(randomise_phases(h1, rand_shell, rng) * mask,
                                randomise_phases(h2, rand_shell, rng) * mask))
    corrected = fsc_masked.copy()
    tail = np.arange(len(corrected)) >= rand_shell + 2
    corrected[tail] = (fsc_masked[tail] - fsc_random[tail]) / np.maximum(1 - fsc_random[tail], 1e-6)
    resolution = resolution_at(corrected, n, angpix, 0.143)
    require(resolution < n * angpix, "the half-maps do not correlate even at the lowest frequency (corrected FSC "
            "below 0.143 from shell 1 on): not two halves of one reconstruction"
            + ("" if mask_path is None else ", or the mask misses the density"), half2_path, "data")
    if fsc_unmasked[1:].min() > 0.99:
        log.warning("the half-maps agree up to Nyquist (unmasked FSC > 0.99 in every shell): were they refined "
                    "independently? The resolution (%.2f A) is then meaningless", resolution)
    average = 0.5 * (h1 + h2)
    weight = np.sqrt(np.clip(2 * corrected / (1 + corrected), 0.0, 1.0))
    shells = np.minimum(_shells(n), n // 2)
    weighted = np.fft.irfftn(np.fft.rfftn(average) * weight[shells], s=average.shape, axes=(0, 1, 2))
    s2, log_orig = guinier(average * mask, angpix)
    _, log_weighted = guinier(weighted * mask, angpix)
    fit = None  # (slope, intercept) of the Guinier fit, when one was made
    if params.bfactor is not None:
        bfactor = float(params.bfactor)
        why = None if bfactor < 0 else f"--bfactor {bfactor:g} given (a B-factor >= 0 does not sharpen)"
    elif resolution > params.fit_low_A:
        # no Guinier region (it starts near 10 A): a slope fitted to the form factor's fall-off would "sharpen"
        # a 12 A map by thousands of A^2 and boost noise 100-fold; RELION, too, fits only beyond autob_lowres
        bfactor = 0.0
        why = (f"final resolution {resolution:.1f} A is worse than --fit-low {params.fit_low_A:g} A, so there is no "
               "Guinier region to fit a B-factor to; give one with --bfactor to sharpen")
    else:
        fitted, intercept = fit_bfactor(s2, log_weighted, max(params.fit_low_A, 1.5 * resolution), resolution)
        fit = (fitted / 4, intercept)
        bfactor = min(fitted, 0.0)
        why = None if bfactor < 0 else f"the fitted Guinier slope is not negative (B = {fitted:+.0f} A^2): none applied"
    if why is not None:
        (log.info if params.bfactor is not None else log.warning)("not sharpened: %s", why)
    s2_grid = (shells / (n * angpix)) ** 2
    sharpened = np.fft.irfftn(np.fft.rfftn(weighted) * np.exp(-bfactor * s2_grid / 4), s=average.shape, axes=(0, 1, 2))
    sharpened = lowpass(sharpened, angpix, resolution, ndim=3)
    _, log_sharp = guinier(sharpened * mask, angpix)

    out = Path(out)
    write_mrc(out / "map_sharpened.mrc", sharpened, angpix)
    write_mrc(out / "mask.mrc", mask, angpix)
    freq = np.arange(n // 2 + 1) / (n * angpix)
    general = {"rlnFinalResolution": resolution, "rlnBfactorUsedForSharpening": bfactor}
    if fit is not None:  # RELION writes the fit only when it made one (--auto_bfac)
        general.update(rlnFittedSlopeGuinierPlot=fit[0], rlnFittedInterceptGuinierPlot=fit[1])
    general.update(rlnRandomiseFrom=n * angpix / max(rand_shell, 1),
                   rlnMaskName=str(mask_path or Path(final_out or out) / "mask.mrc"), cpSharpened=int(why is None))
    curves = pd.DataFrame({
        "rlnSpectralIndex": np.arange(n // 2 + 1), "rlnResolution": freq,
        "rlnAngstromResolution": np.where(freq > 0, 1 / np.where(freq > 0, freq, 1), 999.0),
        "rlnFourierShellCorrelationCorrected": corrected, "rlnFourierShellCorrelationUnmaskedMaps": fsc_unmasked,
        "rlnFourierShellCorrelationMaskedMaps": fsc_masked,
        "rlnCorrectedFourierShellCorrelationPhaseRandomizedMaskedMaps": fsc_random})
    guinier_table = pd.DataFrame({"rlnResolutionSquared": s2, "rlnLogAmplitudesOriginal": log_orig,
                                  "rlnLogAmplitudesWeighted": log_weighted, "rlnLogAmplitudesSharpened": log_sharp})
    write_star_exact(out / "postprocess.star", {"general": general, "fsc": curves, "guinier": guinier_table})
    figures = _figures(out, freq, curves, guinier_table, sharpened, mask, resolution, bfactor, why is None)
    files = [out / "map_sharpened.mrc", out / "mask.mrc", out / "postprocess.star", *figures]
    return {"resolution_A": resolution, "bfactor": bfactor, "sharpened": why is None, "not_sharpened": why,
            "fsc": curves, "files": files, "map": sharpened, "mask": mask}


def _figures(out, freq, curves, guinier_table, sharpened, mask, resolution, bfactor, is_sharpened) -> list:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.5))
    for col, label in (("rlnFourierShellCorrelationCorrected", "corrected"),
                       ("rlnFourierShellCorrelationUnmaskedMaps", "unmasked"),
                       ("rlnFourierShellCorrelationMaskedMaps", "masked"),
                       ("rlnCorrectedFourierShellCorrelationPhaseRandomizedMaskedMaps", "phase-randomised")):
        a1.plot(freq, curves[col], label=label)
    a1.axhline(0.143, color="k", lw=0.5)
    a1.set(xlabel="resolution (1/A)", ylabel="FSC", title=f"final resolution {resolution:.2f} A")
    a1.legend(fontsize=7)
    for col, label in (("rlnLogAmplitudesOriginal", "original"), ("rlnLogAmplitudesWeighted", "FSC-weighted"),
                       ("rlnLogAmplitudesSharpened", "sharpened")):
        a2.plot(guinier_table["rlnResolutionSquared"], guinier_table[col], label=label)
    a2.set(xlabel="1/d^2 (1/A^2)", ylabel="ln |F|",
           title=f"Guinier plot, B = {bfactor:.0f} A^2" + ("" if is_sharpened else " (not sharpened)"))
    a2.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(out / "postprocess_fsc_guinier.png") as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return [out / "postprocess_fsc_guinier.png",
            plot_slices([sharpened, mask], ["sharpened" if is_sharpened else "not sharpened", "mask"],
                        out / "postprocess_slices.png")]
