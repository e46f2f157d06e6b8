"""A CTF-modulated structural background: the amorphous ice (or thin carbon) that gives real micrographs their
Thon rings.

The ice is modelled as a weak phase object: a Gaussian random field whose power spectrum is flat at low
frequency and decays slowly, ``S(s) = 1 / (1 + (s / s0)^2)`` with ``s0 = 1 / ICE_CORNER_A`` (a Lorentzian: ~1/4 of
its low-frequency power is left at 5 A). Its image is the field filtered by the micrograph's CTF (RELION's,
with the micrograph's defocus, astigmatism, phase shift and B-factor envelope; :func:`cryopipe.ctf.ctf_2d`), so
the rings of the power spectrum follow exactly the CTF that the truth files record. The image is scaled to a
stated variance; :mod:`cryopipe.simulate.micrographs` sets it to ``ice_snr`` times the white detector noise's.
"""

from __future__ import annotations

import numpy as np

from cryopipe.ctf import CTFParams, ctf_2d

ICE_CORNER_A = 8.0  # Angstrom: the ice spectrum has fallen to half its low-frequency power at 1/8 A^-1


def ice_field_spectrum(size: int, rng: np.random.Generator) -> np.ndarray:
    """The ice's phase object as a half spectrum (size, size//2+1), complex128: white Gaussian noise's rfft2."""
    return np.fft.rfft2(rng.standard_normal((size, size)))


def ice_image(field_ft: np.ndarray, ctf: CTFParams, angpix: float, variance: float) -> np.ndarray:
    """The CTF-modulated image of an ice field (size, size), float64, scaled to ``variance`` (pixel variance).

    field_ft : (size, size//2+1) half spectrum from :func:`ice_field_spectrum` (the same field may be imaged
        under several CTFs, e.g. to build a defocus gradient). ctf : one micrograph's CTF. angpix : A/px.
    The image is negated as the particles are (dark at low frequency) and has zero mean.
    """
    size = field_ft.shape[0]
    sy = np.fft.fftfreq(size, angpix)[:, None]
    sx = np.fft.rfftfreq(size, angpix)[None, :]
    spectrum = 1.0 / np.sqrt(1.0 + (np.hypot(sx, sy) * ICE_CORNER_A) ** 2)  # amplitude = sqrt(power)
    c = np.asarray(ctf_2d(ctf, size, angpix, half=True), dtype=np.float64).reshape(size, size // 2 + 1)
    ft = field_ft * spectrum * c
    ft[0, 0] = 0.0
    image = -np.fft.irfft2(ft, s=(size, size))
    sd = image.std()
    return image * (np.sqrt(variance) / sd) if sd > 0 else image
