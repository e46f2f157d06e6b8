"""BioEM's per-grid-point likelihood with normalisation, offset and noise integrated out.

For an observed image ``I`` and a calculated image ``x`` (projection x CTF, shifted), each of
``Np`` pixels, the paper's likelihood (eq. 8) with ``I_cal = N x + mu`` and pixel noise ``lambda``
is integrated over ``N`` and ``mu`` in R and ``lambda > 0`` with flat priors. With the sums

    Co = sum I,  Coo = sum I^2,  Cc = sum x,  Ccc = sum x^2,  Cco = sum x I

and ``D = Np Ccc - Cc^2``, ``E = Np (Coo Ccc - Cco^2) + 2 Co Cc Cco - Coo Cc^2 - Co^2 Ccc`` (so that
``E / D`` is the least-squares residual), the integral is exactly

    ln P = (3 - Np)/2 ln E + (Np/2 - 2) ln D + c_exact(Np),
    c_exact = -Np/2 ln(2 pi) + (Np - 3)/2 ln 2 + ln Gamma((Np - 1)/2) + ln pi - ln((Np - 3)/2).

BioEM writes it with Stirling's formula: ``(3 - Np)/2 ln E + (Np/2 - 2) ln((Np - 2) D) + c_bioem`` with
``c_bioem = 1/2 ln pi + (1 - Np/2)(ln 2 pi + 1)``; the two differ by a constant of about ``-0.92 / Np``
(no effect on any ranking). :func:`log_kernel` is the data-dependent part shared by both (BioEM's
``logpro`` without priors); add :func:`log_constant` once per image.

The maximum-likelihood normalisation and offset are ``N^ = (Np Cco - Cc Co) / D`` and
``mu^ = (Ccc Co - Cc Cco) / D``.

Functions take arrays of any broadcastable shapes and any array module (NumPy or CuPy): they run
where their arguments are.
"""

from __future__ import annotations

import math

from cryopipe.fourier import backend_of


def log_kernel(co, coo, cc, ccc, cco, n_pix: int):
    """``(3 - Np)/2 ln E + (Np/2 - 2) ln((Np - 2) D)`` elementwise; -inf where E <= 0 or D <= 0.

    co, coo : per-image sums of I and I^2. cc, ccc : sums of x and x^2. cco : sum of x I. All broadcast;
    computed in the widest floating dtype of the inputs (pass float64 for BioEM's double precision).
    """
    xp = backend_of(cco).xp
    n = float(n_pix)
    d = n * ccc - cc * cc
    e = n * (coo * ccc - cco * cco) + 2.0 * co * cc * cco - coo * cc * cc - co * co * ccc
    ok = (e > 0) & (d > 0)
    e = xp.where(ok, e, 1.0)
    d = xp.where(ok, d, 1.0)
    out = 0.5 * (3.0 - n) * xp.log(e) + (0.5 * n - 2.0) * xp.log((n - 2.0) * d)
    return xp.where(ok, out, -xp.inf)


def log_constant(n_pix: int, exact: bool = True) -> float:
    """The image-independent term to add to :func:`log_kernel` for ln P (see module docstring).

    exact=False gives BioEM's Stirling form ``1/2 ln pi + (1 - Np/2)(ln 2 pi + 1)``; exact=True the
    exact integral's constant, from which ``(Np/2 - 2) ln(Np - 2)`` (inside log_kernel) is removed.
    """
    n = float(n_pix)
    if n <= 3:
        raise ValueError(f"need more than 3 pixels, got {n_pix}")
    if not exact:
        return 0.5 * math.log(math.pi) + (1.0 - 0.5 * n) * (math.log(2.0 * math.pi) + 1.0)
    c = (-0.5 * n * math.log(2.0 * math.pi) + 0.5 * (n - 3.0) * math.log(2.0) + math.lgamma(0.5 * (n - 1.0))
         + math.log(math.pi) - math.log(0.5 * (n - 3.0)))
    return c - (0.5 * n - 2.0) * math.log(n - 2.0)


def best_norm_offset(co, cc, ccc, cco, n_pix: int):
    """Maximum-likelihood normalisation N^ and offset mu^ (arrays broadcast like the inputs)."""
    d = n_pix * ccc - cc * cc
    return (n_pix * cco - cc * co) / d, (ccc * co - cc * cco) / d
