"""Align one map onto another (rotation, shift, hand) and compare them by FSC: ``cryopipe align-maps``.

The numerics are :func:`cryopipe.mapalign.align`; this module reads the two maps, checks that they share a box and
a pixel size, and writes

* ``aligned.mrc``: the moving map resampled onto the reference's grid (same box and pixel size);
* ``alignment.star``: one block ``data_alignment``: rlnAngleRot, rlnAngleTilt, rlnAnglePsi (RELION's Euler angles of
  the rotation ``R``, degrees), cpShiftXAngst, cpShiftYAngst, cpShiftZAngst (the shift ``s``, A), cpHand (+1, or -1
  when the mirrored moving map, the other enantiomer, fits), cpCorrelation (masked NCC of the aligned map with the
  reference), cpResolutionFsc05 and cpResolutionFsc0143 (A), rlnPixelSize, cpMovingMap, cpReferenceMap. The aligned
  map is ``aligned(r) = moving_h(R.T @ (r - s))`` with ``r = (x, y, z)`` about the box centre N//2 and ``moving_h``
  the moving map, z-flipped about the centre when cpHand is -1 (:mod:`cryopipe.mapalign`);
* ``fsc.star``: ``data_general`` (rlnFinalResolution at FSC 0.143, cpResolutionFsc05, rlnPixelSize,
  rlnOriginalImageSize) and ``data_fsc`` (rlnSpectralIndex, rlnResolution 1/A, rlnAngstromResolution, 999 at shell
  0 as RELION writes it, rlnFourierShellCorrelation), as refine3d's fsc.star;
* ``fsc.png``: the FSC curve with the 0.5 and 0.143 thresholds.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cryopipe.errors import require
from cryopipe.io.mrc import PIXEL_SIZE_TOLERANCE, read_mrc, write_mrc
from cryopipe.io.star import UNKNOWN_RESOLUTION_A, write_star
from cryopipe.mapalign import MapAlignment, align
from cryopipe.stage import StageContext, StageResult

log = logging.getLogger(__name__)


@dataclass
class AlignMapsParams:
    """Options (lengths in Angstrom); see :func:`cryopipe.mapalign.align`. ``angpix`` None: from the MRC headers,
    which must agree; given: the pixel size of both maps."""

    lowpass_A: float = 20.0
    angpix: float | None = None
    diameter_A: float | None = None
    max_shift_A: float | None = None
    healpix_order: int = 2
    candidates: int = 3
    refine_box: int = 128

    def validate(self) -> None:
        require(self.angpix is None or self.angpix > 0, f"must be positive, got {self.angpix}", field="--angpix")
        require(self.lowpass_A > 0, f"must be positive, got {self.lowpass_A}", field="--lowpass")


@dataclass
class AlignMapsInputs:
    """The map to move and the map it is aligned onto (MRC, cubic, the same box and pixel size)."""

    moving: Path
    reference: Path


def _read_map(path: Path, angpix: float | None) -> tuple[np.ndarray, float | None]:
    vol, apix = read_mrc(path, angpix=angpix)
    require(vol.ndim == 3 and len(set(vol.shape)) == 1 and vol.shape[0] % 2 == 0,
            f"expected a cubic 3D map with an even box, got shape {vol.shape}", path, "shape")
    require(float(vol.max()) > float(vol.min()), f"map holds no signal: every voxel is {float(vol.min()):g}", path,
            "data")
    return vol, apix


def read_pair(inputs: AlignMapsInputs, angpix: float | None = None) -> tuple[np.ndarray, np.ndarray, float]:
    """(moving, reference) (N, N, N) float32 and their pixel size (A): ``angpix`` when given, else the headers'.
    InputError naming the moving map and the field when the boxes ("shape") or the header pixel sizes ("angpix";
    more than 1% apart, or absent) differ."""
    reference, ref_apix = _read_map(inputs.reference, angpix)
    moving, mov_apix = _read_map(inputs.moving, angpix)
    require(moving.shape == reference.shape, f"box {moving.shape[0]} differs from the reference's "
            f"{reference.shape[0]} ({inputs.reference}): resample one map onto the other's grid first",
            inputs.moving, "shape")
    for path, apix in ((inputs.reference, ref_apix), (inputs.moving, mov_apix)):
        require(apix is not None, "the MRC header holds no pixel size; give --angpix", path, "angpix")
    require(abs(mov_apix - ref_apix) <= PIXEL_SIZE_TOLERANCE * ref_apix,
            f"pixel size {mov_apix:g} A differs from the reference's {ref_apix:g} A ({inputs.reference}): resample "
            "one map onto the other's pixel size first (or give --angpix if a header is wrong)", inputs.moving,
            "angpix")
    return moving, reference, float(ref_apix)


def run(params: AlignMapsParams, inputs: AlignMapsInputs, out: Path, ctx: StageContext) -> StageResult:
    """Align ``inputs.moving`` onto ``inputs.reference`` and write aligned.mrc, alignment.star, fsc.star and fsc.png
    into ``out`` (module docstring). Notes: rot/tilt/psi (deg), shift_A (x, y, z), hand, correlation,
    resolution_05_A, resolution_0143_A, correlation_by_hand."""
    params.validate()
    moving, reference, angpix = read_pair(inputs, params.angpix)
    result = align(moving, reference, angpix, lowpass_A=params.lowpass_A, diameter_A=params.diameter_A,
                   max_shift_A=params.max_shift_A, healpix_order=params.healpix_order, candidates=params.candidates,
                   refine_box=params.refine_box, bk=ctx.backend)
    out = Path(out)
    files = [out / "aligned.mrc", out / "alignment.star", out / "fsc.star", out / "fsc.png"]
    write_mrc(files[0], result.aligned, angpix)
    rot, tilt, psi = result.euler
    write_star(files[1], {"alignment": {
        "rlnAngleRot": rot, "rlnAngleTilt": tilt, "rlnAnglePsi": psi,
        **{f"cpShift{axis}Angst": float(v) for axis, v in zip("XYZ", result.shift_A, strict=True)},
        "cpHand": result.hand, "cpCorrelation": result.correlation,
        "cpResolutionFsc05": result.resolution_05_A, "cpResolutionFsc0143": result.resolution_0143_A,
        "rlnPixelSize": angpix, "cpMovingMap": str(inputs.moving), "cpReferenceMap": str(inputs.reference)}})
    _write_fsc(files[2], result)
    _plot_fsc(files[3], result)
    notes = {"rot": round(rot, 3), "tilt": round(tilt, 3), "psi": round(psi, 3),
             "shift_A": [round(float(v), 3) for v in result.shift_A], "hand": result.hand,
             "correlation": round(result.correlation, 4), "resolution_05_A": round(result.resolution_05_A, 2),
             "resolution_0143_A": round(result.resolution_0143_A, 2),
             "correlation_by_hand": {f"{h:+d}": round(c, 4) for h, c in result.hand_correlations.items()}}
    return StageResult(files=files, notes=notes)


def _write_fsc(path: Path, result: MapAlignment) -> None:
    freq = result.frequencies
    shells = np.arange(freq.size)
    write_star(path, {
        "general": {"rlnFinalResolution": result.resolution_0143_A, "cpResolutionFsc05": result.resolution_05_A,
                    "rlnPixelSize": result.angpix, "rlnOriginalImageSize": 2 * (freq.size - 1)},
        "fsc": pd.DataFrame({"rlnSpectralIndex": shells, "rlnResolution": freq,
                             "rlnAngstromResolution": np.where(freq > 0, 1 / np.where(freq > 0, freq, 1),
                                                               UNKNOWN_RESOLUTION_A),
                             "rlnFourierShellCorrelation": result.fsc})})


def _plot_fsc(path: Path, result: MapAlignment) -> None:
    import matplotlib.pyplot as plt

    from cryopipe.plots import save_figure  # selects matplotlib's Agg backend (no display needed)

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(result.frequencies, result.fsc, color="tab:blue")
    for threshold, res in ((0.5, result.resolution_05_A), (0.143, result.resolution_0143_A)):
        ax.axhline(threshold, color="k", ls=":", lw=0.8)
        ax.text(0.0, threshold + 0.02, f"{threshold:g}: {res:.1f} A", fontsize=7)
    hand = "" if result.hand == 1 else ", mirrored (other hand)"
    ax.set(xlabel="resolution (1/A)", ylabel="FSC", ylim=(-0.1, 1.02),
           title=f"aligned vs reference: NCC {result.correlation:.3f}{hand}")
    fig.tight_layout()
    save_figure(fig, path)
