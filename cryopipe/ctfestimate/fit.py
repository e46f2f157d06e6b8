"""What a fitted CTF is worth: its fit resolution, whether to trust it, and a defocus plane from the tiles.

* :func:`equiphase_average`: the background-subtracted spectrum averaged along lines of equal CTF phase (an
  astigmatic ellipse maps onto the ring of the mean defocus with the same phase), as CTFFIND 4.1's "equiphase
  average" (Rohou and Grigorieff 2015): a 1D profile over Fourier shells of the tile, and the fitted CTF^2 there;
  every spectrum of a batch in one pass (one bincount, one copy to the host).
* :func:`fit_resolution`: the Pearson correlation of that profile with the fitted CTF^2 in a window sliding
  out from the low-resolution limit (1.5 ring periods wide, at least 7 shells); the fit resolution is where it
  first drops below ``threshold`` (default 0.3, linearly interpolated), searched up to Nyquist or to where the
  rings become too fine for the tile (a period below 3 shells), which then bounds the answer. It goes into
  rlnCtfMaxResolution. :func:`fit_resolutions` does it for a batch of curves at once.
* :func:`is_flagged`: no trustworthy Thon rings: the figure of merit (the fit's NCC over P band pixels) is
  below ``min_z / sqrt(P)`` (NCC of pure noise has s.d. ~1/sqrt(P), and the search takes the best of many
  candidates), or no shell beyond the low-resolution limit is fitted.
* :func:`tile_defocus` and :func:`fit_plane`: each tile's mean defocus with the micrograph's astigmatism and
  phase shift fixed (all tiles x candidates in one matrix product, then a finer local grid and a parabola),
  and a robust weighted least-squares plane through them (cryoSPARC's Patch CTF, reduced to a plane).
"""

from __future__ import annotations

import numpy as np

from cryopipe.ctfestimate.search import BandPixels, Optics, augment, band_data, scores_batched, scores_shared
from cryopipe.ctfestimate.spectrum import SpectrumGrid

FIT_THRESHOLD = 0.3
MIN_Z = 7.0
MIN_WINDOW = 7
TILE_RANGE_A = 2000.0  # tile defocus searched within +-this of the micrograph's
TILE_STEP_A = 50.0


def equiphase_average(spectra, theta: np.ndarray, grid: SpectrumGrid, optics: Optics, bk):
    """1D equiphase averages of background-subtracted spectra (B, T, T//2+1) (device) for their CTFs ``theta``
    (B, 4) [mean, a_c, a_s, phase rad] (host), all in one pass (one spectrum (T, T//2+1) and theta (4,) give
    unbatched results).

    Returns (s (n,) 1/A, profile (B, n), ctf2 (B, n), counts (B, n)), host float64, for shells 0..n-1 of width
    1/(T angpix), n = T//2+1 (to Nyquist along the axes). Pixels whose phase lies beyond the phase maximum of
    the mean-defocus CTF (high resolution, Cs-dominated) are left out.
    """
    xp = bk.xp
    single = spectra.ndim == 2
    spectra = spectra[None] if single else spectra
    theta = np.asarray(theta, dtype=np.float64).reshape(-1, 4)
    B = theta.shape[0]
    T, a = grid.tile, grid.angpix
    k1, k2 = optics.k1, optics.k2
    mean = theta[:, 0]

    def per_spectrum(values):  # (B,) float64 host -> (B, 1, 1) float32 device, as a scalar of the float32 terms
        return xp.asarray(np.asarray(values, dtype=np.float32).reshape(B, 1, 1))

    m, ac, as_ = (per_spectrum(theta[:, i]) for i in range(3))
    km, km2 = per_spectrum(k1 * mean), per_spectrum((k1 * mean) ** 2)
    sy = xp.asarray(np.fft.fftfreq(T, a).astype(np.float32))[:, None]
    sx = xp.asarray(np.fft.rfftfreq(T, a).astype(np.float32))[None, :]
    u = sx * sx + sy * sy
    alpha = xp.arctan2(sy, sx)
    df = m + ac * xp.cos(2 * alpha) + as_ * xp.sin(2 * alpha)  # (B, T, T//2+1)
    g = k1 * df * u - k2 * u * u  # the pixel's phase (without the constant terms)
    disc = km2 - 4.0 * k2 * g  # k2 v^2 - k1 mean v + g = 0 for the equivalent v = s_eq^2
    ok = (disc >= 0) & (u > 0)
    v = (km - xp.sqrt(xp.maximum(disc, 0.0))) / (2.0 * k2) if k2 > 0 else g / km
    shell = xp.rint(xp.sqrt(xp.maximum(v, 0.0)) * T * a).astype(xp.int64)
    n = T // 2 + 1
    ok &= shell < n
    idx = (xp.where(ok, shell, n) + xp.arange(B, dtype=xp.int64)[:, None, None] * (n + 1)).ravel()
    sums = xp.bincount(idx, weights=spectra.ravel().astype(xp.float64), minlength=B * (n + 1))
    counts = xp.bincount(idx, minlength=B * (n + 1)).astype(xp.float64)
    sums, counts = bk.asnumpy(xp.stack([sums, counts])).reshape(2, B, n + 1)[:, :, :n]
    profile = np.where(counts > 0, sums / np.maximum(counts, 1), 0.0)
    s = np.arange(n) / (T * a)
    ctf2 = np.sin(optics.phase(s[None, :], mean[:, None]) + theta[:, 3:4]) ** 2
    if single:
        return s, profile[0], ctf2[0], counts[0]
    return s, profile, ctf2, counts


def windowed_correlation(profile: np.ndarray, ctf2: np.ndarray, half_widths: np.ndarray) -> np.ndarray:
    """Pearson correlation of two curves (..., n) in windows [i - h_i, i + h_i] (clipped to the curve), along the
    last axis; half_widths (n,) or (..., n)."""
    n = profile.shape[-1]
    zero = np.zeros(profile.shape[:-1] + (1,))
    cums = [np.concatenate([zero, np.cumsum(x, axis=-1)], axis=-1)
            for x in (profile, ctf2, profile * profile, ctf2 * ctf2, profile * ctf2, np.ones(profile.shape))]
    i = np.arange(n)
    lo = np.broadcast_to(np.clip(i - half_widths, 0, n), profile.shape)
    hi = np.broadcast_to(np.clip(i + half_widths + 1, 0, n), profile.shape)
    sx, sy, sxx, syy, sxy, m = ((np.take_along_axis(c, hi, -1) - np.take_along_axis(c, lo, -1)) for c in cums)
    m = np.maximum(m, 1.0)
    cov = sxy - sx * sy / m
    vx, vy = sxx - sx * sx / m, syy - sy * sy / m
    den = np.sqrt(np.maximum(vx, 0.0) * np.maximum(vy, 0.0))
    return np.where(den > 0, cov / np.where(den > 0, den, 1.0), 0.0)


def fit_resolution(s: np.ndarray, profile: np.ndarray, ctf2: np.ndarray, counts: np.ndarray, mean_defocus: float,
                   grid: SpectrumGrid, optics: Optics, threshold: float = FIT_THRESHOLD):
    """Fit resolution in A (see the module docstring) and the windowed correlation curve (n,) (0 outside the
    searched shells). Returns (resolution_A, correlation, first_shell, last_shell). One curve of
    :func:`fit_resolutions`."""
    res, corr, first, last = fit_resolutions(s, profile[None], ctf2[None], counts[None], np.array([mean_defocus]),
                                             grid, optics, threshold)
    return float(res[0]), corr[0], first, int(last[0])


def fit_resolutions(s: np.ndarray, profiles: np.ndarray, ctf2: np.ndarray, counts: np.ndarray,
                    mean_defocus: np.ndarray, grid: SpectrumGrid, optics: Optics, threshold: float = FIT_THRESHOLD):
    """:func:`fit_resolution` of B curves at once: profiles, ctf2, counts (B, n) host, mean_defocus (B,).

    Returns (resolution_A (B,), correlation (B, n) (0 outside each curve's searched shells), first_shell (int,
    the same for all), last_shell (B,) int).
    """
    T, a = grid.tile, grid.angpix
    B, n = profiles.shape
    slope = np.abs(optics.dphase_ds(s[None, :], np.asarray(mean_defocus, dtype=np.float64)[:, None]))
    period = np.where(slope > 0, np.pi / np.maximum(slope, 1e-12) * T * a, np.inf)  # shells per CTF^2 period
    half = np.clip(np.ceil(0.75 * period), MIN_WINDOW // 2, n).astype(np.int64)
    corr = windowed_correlation(profiles, ctf2, half)
    first = int(np.ceil(grid.r_min_px)) + 1
    resolvable = (period >= 3.0) & (counts > 0)
    tail = resolvable[:, first + 1:]  # the shells must be resolvable without a gap from first on
    run = np.where(tail.all(axis=1), tail.shape[1], np.argmin(tail, axis=1)) if tail.shape[1] else np.zeros(B, int)
    last = first + run.astype(np.int64)
    inside = (np.arange(n) >= first) & (np.arange(n) <= last[:, None])
    out = np.where(inside, corr, 0.0)
    res = np.full(B, 1.0 / grid.s_min)  # no ring fitted at all
    if first >= n:
        return res, out, first, last
    fitted = corr[:, first] >= threshold
    below = (corr < threshold) & inside
    ends = fitted & ~below.any(axis=1)
    res[ends] = 1.0 / s[last[ends]]
    cut = fitted & below.any(axis=1)
    i = np.argmax(below, axis=1)[cut]  # the first shell below the threshold (> first)
    c0, c1 = corr[cut, i - 1], corr[cut, i]
    t = (c0 - threshold) / np.maximum(c0 - c1, 1e-12)
    res[cut] = 1.0 / (s[i - 1] + np.clip(t, 0.0, 1.0) * (s[i] - s[i - 1]))
    return res, out, first, last


def is_flagged(score: float, n_pixels: int, resolution_A: float, grid: SpectrumGrid, min_z: float = MIN_Z) -> bool:
    """True when a fit is not to be trusted: NCC below min_z / sqrt(P), or no shell fitted beyond the low-res limit."""
    no_rings = resolution_A >= 1.0 / grid.s_min - 1e-6
    return bool(not np.isfinite(score) or score * np.sqrt(n_pixels) < min_z or no_rings)


def tile_defocus(tile_spectra, theta: np.ndarray, band: BandPixels, bk, range_A: float = TILE_RANGE_A,
                 step_A: float = TILE_STEP_A):
    """Mean defocus of each tile of one micrograph, its astigmatism and phase shift fixed to ``theta`` (4,).

    tile_spectra : (n_tiles, T, T//2+1) background-subtracted, on the device. A grid of mean defocus every
    ``step_A`` within +-range_A of theta's scores all tiles in one product; each tile then gets 11 candidates
    step_A/5 apart about its best, and a parabola through the best three. Returns (defocus (n,), score (n,)),
    host float64.
    """
    xp = bk.xp
    data, norms = band_data(tile_spectra, band, xp)
    offsets = np.arange(-range_A, range_A + 0.5 * step_A, step_A)
    cand = np.repeat(np.asarray(theta, dtype=np.float64)[None], len(offsets), axis=0)
    cand[:, 0] = np.maximum(cand[:, 0] + offsets, 1.0)
    coarse = bk.asnumpy(scores_shared(xp.asarray(augment(cand)), band, data, norms, bk))  # (C, n)
    best = cand[np.argmax(coarse, axis=0), 0]
    fine_step = step_A / 5
    fine_off = np.arange(-5, 6) * fine_step
    fine = np.repeat(np.asarray(theta, dtype=np.float64)[None, None], len(best), axis=0).repeat(len(fine_off), axis=1)
    fine[..., 0] = np.maximum(best[:, None] + fine_off[None], 1.0)
    s = bk.asnumpy(scores_batched(xp.asarray(augment(fine)), band, data, norms, bk)).astype(np.float64)  # (n, 11)
    k = np.clip(np.argmax(s, axis=1), 1, len(fine_off) - 2)
    r = np.arange(len(best))
    y0, y1, y2 = s[r, k - 1], s[r, k], s[r, k + 1]
    den = y0 - 2 * y1 + y2
    shift = np.where(den < 0, 0.5 * (y0 - y2) / np.where(den < 0, den, -1.0), 0.0)
    defocus = fine[r, k, 0] + np.clip(shift, -1.0, 1.0) * fine_step
    return defocus, s.max(axis=1)


def fit_plane(xy: np.ndarray, defocus: np.ndarray, weights: np.ndarray, centre: tuple[float, float],
              rounds: int = 3, reject_sigmas: float = 3.0, floor_A: float = 20.0):
    """Weighted least-squares plane defocus = c + A (x - cx) + B (y - cy) through tile defoci.

    xy : (n, 2) tile centres (x, y) px; defocus (n,) A; weights (n,) >= 0 (0 drops a tile). Tiles further than
    reject_sigmas robust s.d. (>= floor_A) from the plane are dropped and the plane fitted again, ``rounds`` times.
    Returns (A A/px, B A/px, c A, rms A of the kept tiles, kept (n,) bool); zeros and all False when fewer than 3
    tiles have weight.
    """
    x = xy[:, 0] - centre[0]
    y = xy[:, 1] - centre[1]
    keep = weights > 0
    coef = np.zeros(3)
    for _ in range(rounds + 1):
        if keep.sum() < 3:
            return 0.0, 0.0, 0.0, 0.0, np.zeros(len(defocus), dtype=bool)
        w = np.sqrt(weights[keep])
        M = np.stack([np.ones(keep.sum()), x[keep], y[keep]], axis=1) * w[:, None]
        coef = np.linalg.lstsq(M, defocus[keep] * w, rcond=None)[0]
        resid = defocus - (coef[0] + coef[1] * x + coef[2] * y)
        mad = 1.4826 * np.median(np.abs(resid[keep]))
        new = (weights > 0) & (np.abs(resid) <= max(reject_sigmas * mad, floor_A))
        if np.array_equal(new, keep):
            break
        keep = new
    rms = float(np.sqrt(np.mean(resid[keep] ** 2))) if keep.any() else 0.0
    return float(coef[1]), float(coef[2]), float(coef[0]), rms, keep
