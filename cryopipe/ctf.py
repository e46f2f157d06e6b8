"""Contrast transfer function, exactly as RELION defines it (``ctf.h``, ``CTF::getCTF``).

With s = (sx, sy) the spatial frequency in 1/A, u = |s|^2 and alpha = atan2(sy, sx)::

    lambda  = 12.2643247 / sqrt(V * (1 + 0.978466e-6 V))            V in volts, lambda in A
    deltaf  = -(dU + dV)/2 - (dU - dV)/2 * cos(2 (alpha - theta))      RELION's sign: underfocus < 0
    K1 = pi lambda,  K2 = pi/2 Cs lambda^3 (Cs in A),  K3 = atan(Q0 / sqrt(1 - Q0^2)),  K5 = phase shift
    gamma   = K1 deltaf u + K2 u^2 - K5 - K3
    CTF     = -scale * sin(gamma) * exp(-B u / 4)

Equivalently, with the positive defocus Df(alpha) = (dU + dV)/2 + (dU - dV)/2 cos(2 (alpha - theta)),
CTF = scale * sin(pi lambda Df u - pi/2 Cs lambda^3 u^2 + K5 + K3) * exp(-B u / 4), so CTF(0) = Q0
(positive) for scale 1 and no phase shift, and the first zero is where the sine's argument is pi.

Astigmatism: ``defocus_angle`` theta is the angle of the U axis from the x axis (image columns)
towards y (image rows), in degrees, as RELION's rlnDefocusAngle; along the U axis the defocus is
``defocus_u``. Grids follow :mod:`cryopipe.fourier` (unshifted, half spectra, Nyquist row at -N/2;
RELION samples that one row at +N/2, which differs only for astigmatic CTFs, at Nyquist).

Device rule as in :mod:`cryopipe.fourier`: functions taking arrays run where the arrays are;
:func:`ctf_2d` builds arrays and takes ``bk`` (CPU when None).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cryopipe.backend import Backend
from cryopipe.errors import InputError
from cryopipe.fourier import as_float, backend_of, backend_or_cpu, frequency_grid, image_box

_REQUIRED = {
    "defocus_u": "rlnDefocusU",
    "defocus_v": "rlnDefocusV",
    "defocus_angle": "rlnDefocusAngle",
    "voltage": "rlnVoltage",
    "cs": "rlnSphericalAberration",
    "amplitude_contrast": "rlnAmplitudeContrast",
}
_OPTIONAL = {"bfactor": ("rlnCtfBfactor", 0.0), "phase_shift": ("rlnPhaseShift", 0.0),
             "scale": ("rlnCtfScalefactor", 1.0)}


def electron_wavelength(voltage_kv):
    """Relativistic electron wavelength in Angstrom for an acceleration voltage in kV (float or array)."""
    v = np.asarray(voltage_kv, dtype=np.float64) * 1e3
    return 12.2643247 / np.sqrt(v * (1.0 + v * 0.978466e-6))


@dataclass
class CTFParams:
    """CTF parameters in RELION's units; each field is a float or a host (NumPy) array of shape (B,).

    defocus_u, defocus_v: Angstrom, positive = underfocus. defocus_angle: degrees, U axis from x.
    voltage: kV. cs: mm. amplitude_contrast: Q0 in [0, 1]. bfactor: A^2 (envelope exp(-B s^2/4)).
    phase_shift: degrees (phase plate). scale: overall factor.
    """

    defocus_u: float | np.ndarray
    defocus_v: float | np.ndarray
    defocus_angle: float | np.ndarray
    voltage: float | np.ndarray
    cs: float | np.ndarray
    amplitude_contrast: float | np.ndarray
    bfactor: float | np.ndarray = 0.0
    phase_shift: float | np.ndarray = 0.0
    scale: float | np.ndarray = 1.0

    @classmethod
    def from_star(cls, df_rows, path=None) -> CTFParams:
        """Parameters (float64 arrays of shape (B,)) from the B rows of a pandas DataFrame.

        The frame needs rlnDefocusU, rlnDefocusV, rlnDefocusAngle, rlnVoltage,
        rlnSphericalAberration and rlnAmplitudeContrast (merge the optics-group columns into
        the particle rows first); rlnCtfBfactor, rlnPhaseShift and rlnCtfScalefactor default
        to 0, 0 and 1. Raises InputError naming ``path`` and the column when one is missing,
        not finite, or rlnAmplitudeContrast lies outside [0, 1].
        """
        values = {}
        for name, column in _REQUIRED.items():
            if column not in df_rows.columns:
                raise InputError(f"missing CTF column {column}", path=path, field=column)
            values[name] = df_rows[column].to_numpy(dtype=np.float64)
        for name, (column, default) in _OPTIONAL.items():
            values[name] = (df_rows[column].to_numpy(dtype=np.float64) if column in df_rows.columns
                            else np.full(len(df_rows), default))
        for name, v in values.items():
            column = _REQUIRED.get(name) or _OPTIONAL[name][0]
            if not np.all(np.isfinite(v)):
                raise InputError(f"non-finite values in {column}", path=path, field=column)
        q0 = values["amplitude_contrast"]
        if np.any((q0 < 0) | (q0 > 1)):
            raise InputError("amplitude contrast must lie in [0, 1]", path=path, field="rlnAmplitudeContrast")
        return cls(**values)


def ctf_2d(params: CTFParams, box: int, angpix: float, bk: Backend | None = None, half: bool = True,
           dtype=np.float32):
    """CTF images on the unshifted Fourier grid of a box-N image with pixel size ``angpix`` (A/px).

    Returns (B, N, N//2+1) (half=True, for rfft2 spectra) or (B, N, N) (full, for fft2), where B
    is the broadcast length of the parameter arrays (1 when all are scalars), on ``bk``'s device,
    in ``dtype``. Grid geometry is formed in float64, the per-image terms in ``dtype``.
    """
    bk = backend_or_cpu(bk)
    sy, sx = frequency_grid(box, angpix, half, 2, bk, np.float64)
    return ctf_on_grid(params, sy, sx, bk, dtype)


def ctf_on_grid(params: CTFParams, sy, sx, bk: Backend | None = None, dtype=np.float32):
    """CTF images at the frequencies ``sy`` (rows, 1/A) and ``sx`` (columns), broadcastable float64 device arrays,
    e.g. (H, 1) and (1, W//2+1) for a rectangular grid. Returns (B, *broadcast shape) in ``dtype``."""
    bk = backend_or_cpu(bk)
    xp = bk.xp
    fields = np.broadcast_arrays(*(np.atleast_1d(np.asarray(getattr(params, f), dtype=np.float64)) for f in (
        "defocus_u", "defocus_v", "defocus_angle", "voltage", "cs", "amplitude_contrast", "bfactor",
        "phase_shift", "scale")))
    du, dv, angle, kv, cs, q0, bfac, phase, scale = fields
    lam = electron_wavelength(kv)
    theta = np.deg2rad(angle)
    per_image = {
        "mean": -0.5 * (du + dv), "dev": -0.5 * (du - dv), "cos2t": np.cos(2 * theta), "sin2t": np.sin(2 * theta),
        "k1": np.pi * lam, "k2": 0.5 * np.pi * cs * 1e7 * lam ** 3,
        "offset": np.deg2rad(phase) + np.arctan2(q0, np.sqrt(1.0 - q0 ** 2)), "k4": -0.25 * bfac, "scale": scale,
    }
    c = {k: bk.asarray(v.reshape(-1, 1, 1), dtype=dtype) for k, v in per_image.items()}

    u = sx * sx + sy * sy
    alpha = xp.arctan2(sy, sx)
    cos2a, sin2a = (xp.cos(2 * alpha).astype(dtype), xp.sin(2 * alpha).astype(dtype))
    u = u.astype(dtype)

    deltaf = c["mean"] + c["dev"] * (cos2a * c["cos2t"] + sin2a * c["sin2t"])  # cos(2(alpha - theta))
    gamma = c["k1"] * deltaf * u + c["k2"] * u * u - c["offset"]
    return (-c["scale"]) * xp.sin(gamma) * xp.exp(c["k4"] * u)


def phase_flip(images_ft, ctf):
    """Multiply spectra by the sign of the CTF (+1 where CTF >= 0, as RELION); same dtype as images_ft."""
    xp = backend_of(images_ft).xp
    return images_ft * xp.where(ctf < 0, -1.0, 1.0).astype(ctf.dtype)


def wiener_filter(images_ft, ctf, snr):
    """Wiener-correct spectra: images_ft * ctf / (ctf^2 + 1/snr).

    images_ft and ctf broadcast (e.g. (B, N, N//2+1) both). ``snr`` is a float, a (B,) array
    (one value per image), or an array broadcasting against ``ctf`` (e.g. per frequency).
    """
    xp = backend_of(images_ft).xp
    snr = xp.asarray(snr, dtype=ctf.dtype)
    if snr.ndim == 1:
        snr = snr.reshape(-1, 1, 1)
    return images_ft * (ctf / (ctf * ctf + 1.0 / snr))


def apply_ctf(images_real, params: CTFParams, angpix: float):
    """Real images (..., N, N) convolved with the CTF (multiplied in rfft2 space); real out.

    The CTF batch (B,) broadcasts against the image batch dimensions, so the result has the
    broadcast shape of images_real and (B, N, N), in the images' floating dtype.
    """
    bk = backend_of(images_real)
    images_real = as_float(images_real, bk.xp)
    n = image_box(images_real, 2)
    ctf = ctf_2d(params, n, angpix, bk, half=True, dtype=images_real.dtype)
    return bk.fft.irfft2(bk.fft.rfft2(images_real) * ctf, s=(n, n)).astype(images_real.dtype, copy=False)
