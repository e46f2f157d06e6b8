"""A CTF-modulated structural background: the amorphous ice (or thin carbon) that gives real micrographs their
Thon rings.

The ice is modelled as a weak phase object: a Gaussian random field whose power spectrum is flat at low
frequency and decays slowly, ``S(s) = 1 / (1 + (s / s0)^2)`` with ``s0 = 1 / ICE_CORNER_A`` (a Lorentzian: ~1/4 of
its low-frequency power is left at 5 A). Its image is the field filtered by the micrograph's CTF (RELION's,
with the micrograph's defocus, astigmatism, phase shift and B-factor envelope; :func:`cryopipe.ctf.ctf_2d`), so
the rings of the power spectrum follow exactly the CTF that the truth files record. The image is scaled to a
stated variance; :mod:`cryopipe.simulate.micrographs` sets it to ``ice_snr`` times the white detector noise's.

Micrographs may be rectangular, (H, W) = (rows, columns): :func:`ctf_half` gives the CTF on the rfft2 grid of such
an image, whose row and column frequencies differ (k / (H angpix) and k / (W angpix)).
"""

from __future__ import annotations

import numpy as np

from cryopipe.ctf import CTFParams, ctf_2d, electron_wavelength

ICE_CORNER_A = 8.0  # Angstrom: the ice spectrum has fallen to half its low-frequency power at 1/8 A^-1


def ctf_rfft_grid(ctf: CTFParams, shape: tuple[int, int], angpix: float) -> np.ndarray:
    """RELION's CTF (:mod:`cryopipe.ctf`'s formula, scalar parameters) on the rfft2 grid of an (H, W) image, float64.

    Returns (H, W//2+1): row k holds frequency ``fftfreq(H, angpix)[k]``, column k ``rfftfreq(W, angpix)[k]``
    (1/A), so the Nyquist row is at -1/(2 angpix) as in :func:`cryopipe.ctf.ctf_2d`, which this equals on square
    grids (to its float32 precision).
    """
    h, w = shape
    sy = np.fft.fftfreq(h, angpix)[:, None]
    sx = np.fft.rfftfreq(w, angpix)[None, :]
    u = sx * sx + sy * sy
    lam = float(electron_wavelength(ctf.voltage))
    du, dv, q0 = float(ctf.defocus_u), float(ctf.defocus_v), float(ctf.amplitude_contrast)
    deltaf = -0.5 * (du + dv) - 0.5 * (du - dv) * np.cos(2.0 * (np.arctan2(sy, sx) - np.deg2rad(ctf.defocus_angle)))
    k2 = 0.5 * np.pi * float(ctf.cs) * 1e7 * lam**3
    offset = np.deg2rad(float(ctf.phase_shift)) + np.arctan2(q0, np.sqrt(1.0 - q0**2))
    gamma = np.pi * lam * deltaf * u + k2 * u * u - offset
    return -float(ctf.scale) * np.sin(gamma) * np.exp(-0.25 * float(ctf.bfactor) * u)


def ctf_half(ctf: CTFParams, shape: tuple[int, int], angpix: float) -> np.ndarray:
    """The CTF (H, W//2+1) float64 by which the simulator multiplies an (H, W) image's rfft2.

    Square images take :func:`cryopipe.ctf.ctf_2d` (float32 values, as the simulator always has, so square
    micrographs stay bit-identical); rectangular ones :func:`ctf_rfft_grid`.
    """
    h, w = shape
    if h == w:
        return np.asarray(ctf_2d(ctf, h, angpix, half=True), dtype=np.float64).reshape(h, h // 2 + 1)
    return ctf_rfft_grid(ctf, shape, angpix)


def ice_field_spectrum(size: int | tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """The ice's phase object as a half spectrum, complex128: white Gaussian noise's rfft2.

    size : N for an (N, N) micrograph, or its shape (H, W); returns (N, N//2+1) or (H, W//2+1).
    """
    shape = (size, size) if np.isscalar(size) else tuple(size)
    return np.fft.rfft2(rng.standard_normal(shape))


def ice_image(field_ft: np.ndarray, ctf: CTFParams, angpix: float, variance: float,
              width: int | None = None) -> np.ndarray:
    """The CTF-modulated image of an ice field (H, W), float64, scaled to ``variance`` (pixel variance).

    field_ft : (H, W//2+1) half spectrum from :func:`ice_field_spectrum` (the same field may be imaged
        under several CTFs, e.g. to build a defocus gradient). ctf : one micrograph's CTF. angpix : A/px.
    width : W, the image's columns (default H: a square image).
    The image is negated as the particles are (dark at low frequency) and has zero mean.
    """
    size = field_ft.shape[0]
    width = size if width is None else int(width)
    sy = np.fft.fftfreq(size, angpix)[:, None]
    sx = np.fft.rfftfreq(width, angpix)[None, :]
    spectrum = 1.0 / np.sqrt(1.0 + (np.hypot(sx, sy) * ICE_CORNER_A) ** 2)  # amplitude = sqrt(power)
    c = ctf_half(ctf, (size, width), angpix)
    ft = field_ft * spectrum * c
    ft[0, 0] = 0.0
    image = -np.fft.irfft2(ft, s=(size, width))
    sd = image.std()
    return image * (np.sqrt(variance) / sd) if sd > 0 else image
