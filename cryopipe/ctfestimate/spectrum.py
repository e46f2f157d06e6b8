"""Average amplitude spectra of micrograph tiles and their background removal, after CTFFIND4.

Rohou A, Grigorieff N (2015) CTFFIND4: Fast and accurate defocus estimation from electron micrographs.
J Struct Biol 192:216-221. doi:10.1016/j.jsb.2015.08.008

* Tiles of ``T`` px overlap by half (:func:`tile_starts`). Each tile loses its mean and linear ramp (an ice
  gradient would otherwise add a cross and low-frequency power) and is tapered at its edges by a separable
  Tukey window, then Fourier transformed; the power spectra of all tiles of a batch of micrographs come from
  one batched FFT (in chunks where memory is short) and are averaged per micrograph. The amplitude spectrum is
  the square root of the averaged power, as CTFFIND's.
* Background (:func:`subtract_background`): CTFFIND's box convolution. The spectrum inside the low-resolution
  limit (radius r_min px) is replaced by the mean of the ring just outside it, so that the low-frequency peak
  does not leak outwards, then a box filter of ``b = sqrt(2) r_min`` px (odd, >= 3), applied as a periodic
  convolution of the full unshifted spectrum (one FFT pair), gives the smooth background, which is
  subtracted. What is left oscillates about zero with the Thon rings.

Arrays follow :mod:`cryopipe.fourier`: unshifted half spectra (..., T, T//2+1), frequencies in 1/A.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

TAPER_FRACTION = 0.125  # Tukey window: a raised-cosine edge over 1/8 of the tile on each side


def tile_starts(length: int, tile: int) -> np.ndarray:
    """First pixels (int64) of tiles of ``tile`` px covering ``[0, length)`` with about half overlap.

    n = round((length - tile) / (tile / 2)) + 1 tiles, evenly spaced from 0 to length - tile (rounded), so the
    first and last tiles touch the edges.
    """
    if length < tile:
        raise ValueError(f"length {length} < tile {tile}")
    n = int(round((length - tile) / (tile / 2))) + 1
    return np.rint(np.linspace(0, length - tile, n)).astype(np.int64)


def tile_centres(shape: tuple[int, int], tile: int) -> np.ndarray:
    """(n_tiles, 2) tile centres (x, y) in micrograph pixels, in the order :func:`tile_power` uses (rows of y)."""
    ys, xs = tile_starts(shape[0], tile), tile_starts(shape[1], tile)
    yy, xx = np.meshgrid(ys + tile / 2, xs + tile / 2, indexing="ij")
    return np.stack([xx.ravel(), yy.ravel()], axis=1).astype(np.float64)


def _window(tile: int) -> np.ndarray:
    """Separable Tukey window (T, T), float32, on the host."""
    edge = max(1, int(round(TAPER_FRACTION * tile)))
    w = np.ones(tile)
    ramp = 0.5 - 0.5 * np.cos(np.pi * (np.arange(edge) + 0.5) / edge)
    w[:edge], w[tile - edge:] = ramp, ramp[::-1]
    return np.outer(w, w).astype(np.float32)


@functools.lru_cache(maxsize=8)
def _tile_constants(tile: int, bk):
    """(window (T, T) float32 on the device, sum of window^2, pixel coordinates (T,) float32 on the device about the
    tile's centre, sum over the tile of x^2): computed on the host once per tile size and device, so that
    :func:`tile_power` waits for nothing on the device."""
    win = _window(tile)
    coord = np.arange(tile, dtype=np.float32) - (tile - 1) / 2.0
    norm = float((win.astype(np.float64) ** 2).sum())
    cc = float((coord.astype(np.float64) ** 2).sum()) * tile
    return bk.xp.asarray(win), norm, bk.xp.asarray(coord), cc


def tile_power(images, tile: int, bk, keep_tiles: bool = False, chunk: int | None = None):
    """Mean power spectrum of the half-overlapping tiles of each micrograph.

    images : (B, H, W) float32 on ``bk``'s device, all of one shape (H, W >= tile).
    tile : T, even. chunk : tiles per FFT (default: every tile of the batch at once when device memory allows).
    Returns (mean (B, T, T//2+1) float32, tiles (B, n_tiles, T, T//2+1) float32 or None), on the device. Power is
    |rfft2(window * detrended tile)|^2 / sum(window^2): white noise of variance v gives v everywhere.
    """
    xp = bk.xp
    B, H, W = images.shape
    ys, xs = tile_starts(H, tile), tile_starts(W, tile)
    starts = np.stack(np.meshgrid(ys, xs, indexing="ij"), axis=-1).reshape(-1, 2)
    n_tiles = len(starts)
    win, norm, coord, cc = _tile_constants(tile, bk)  # cc: the sum over the tile of x^2 (= of y^2)
    cx, cy = coord[None, None, None, :], coord[None, None, :, None]
    area = float(tile * tile)
    if chunk is None:
        per_tile = B * tile * tile * 4 * 6  # tile, detrended copy, complex spectrum, power
        chunk = bk.batch_size(per_tile, cap=n_tiles if bk.is_gpu else 64)
    ar = xp.arange(tile)
    total = xp.zeros((B, tile, tile // 2 + 1), dtype=xp.float32)
    kept = xp.empty((B, n_tiles, tile, tile // 2 + 1), dtype=xp.float32) if keep_tiles else None
    for k in range(0, n_tiles, chunk):
        st = xp.asarray(starts[k:k + chunk])
        rows = st[:, 0, None, None] + ar[None, :, None]
        cols = st[:, 1, None, None] + ar[None, None, :]
        t = images[:, rows, cols]  # (B, n, T, T)
        col_sums, row_sums = t.sum(axis=-2), t.sum(axis=-1)  # (B, n, T) each: the plane's least squares
        mean = col_sums.sum(axis=-1)[..., None, None] / area
        gx = (col_sums @ coord)[..., None, None] / cc
        gy = (row_sums @ coord)[..., None, None] / cc
        t = (t - (mean + gx * cx + gy * cy)) * win
        f = bk.fft.rfft2(t)
        p = (f.real * f.real + f.imag * f.imag).astype(xp.float32, copy=False) / norm
        total += p.sum(axis=1)
        if keep_tiles:
            kept[:, k:k + len(st)] = p
    return total / n_tiles, kept


@dataclass(frozen=True)
class SpectrumGrid:
    """Geometry of a tile's half spectrum: T px tiles at ``angpix``, fit band [s_min, s_max] (1/A).

    r_min_px : the low-resolution limit in Fourier px (cycles per tile). box_px : the background box width.
    """

    tile: int
    angpix: float
    s_min: float
    s_max: float

    @property
    def r_min_px(self) -> float:
        return self.s_min * self.tile * self.angpix

    @property
    def box_px(self) -> int:
        b = int(self.r_min_px * np.sqrt(2.0))
        b += 1 - b % 2
        return max(3, b)

    def radius_px(self, xp):
        """|k| in Fourier px on the half grid (T, T//2+1), float32."""
        ky = xp.asarray(np.fft.fftfreq(self.tile, 1.0 / self.tile).astype(np.float32))[:, None]
        kx = xp.asarray(np.fft.rfftfreq(self.tile, 1.0 / self.tile).astype(np.float32))[None, :]
        return xp.sqrt(ky * ky + kx * kx)


def full_from_half(half, xp):
    """The full unshifted spectrum (..., T, T) of a real image from its half (..., T, T//2+1) (|F| symmetric)."""
    T = half.shape[-2]
    rows = xp.asarray((-np.arange(T)) % T)
    cols = xp.asarray(T - np.arange(T // 2 + 1, T))
    mirrored = half[..., rows[:, None], cols[None, :]]
    return xp.concatenate([half, mirrored], axis=-1)


@functools.lru_cache(maxsize=8)
def _background_constants(grid: SpectrumGrid, bk):
    """(inner disc, ring (T, T//2+1) bool, ring pixel count, box filter's transfer function), made on the host
    once per grid and device (no wait on the device per spectrum)."""
    xp = bk.xp
    T = grid.tile
    r = grid.radius_px(np)
    inner = r < grid.r_min_px
    ring = (r >= grid.r_min_px) & (r < grid.r_min_px + max(2.0, grid.box_px / 2))
    b = grid.box_px
    box = np.zeros((T, T), dtype=np.float32)
    idx = np.arange(-(b // 2), b // 2 + 1) % T
    box[np.ix_(idx, idx)] = 1.0 / (b * b)
    return xp.asarray(inner), xp.asarray(ring), max(1, int(ring.sum())), bk.fft.rfft2(xp.asarray(box))


def subtract_background(amplitude, grid: SpectrumGrid, bk):
    """Background-subtracted amplitude spectra (..., T, T//2+1), float32 (see the module docstring)."""
    xp = bk.xp
    T = grid.tile
    inner, ring, ring_count, kernel = _background_constants(grid, bk)
    ring_mean = (amplitude * ring).sum(axis=(-2, -1), keepdims=True) / ring_count
    clamped = xp.where(inner, ring_mean, amplitude)
    full = full_from_half(clamped, xp)
    background = bk.fft.irfft2(bk.fft.rfft2(full) * kernel, s=(T, T))[..., : T // 2 + 1]
    return (amplitude - background).astype(xp.float32)
