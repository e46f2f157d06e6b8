"""Fast locally normalised cross-correlation (Roseman 2003; gEMpicker; RELION-2 autopick) on CPU or GPU.

For a micrograph ``f`` and a template ``t`` with mask weights ``m`` (sum ``M``), normalised under the mask
to ``t' = m (t - mean_m t) / sd_m t``::

    NCC(v) = sum_u t'(u) f(v + u) / (M sd_m f(v)),
    sd_m f(v)^2 = (m * f^2)(v) / M - ((m * f)(v) / M)^2          (* = cross-correlation, by FFT)

so ``NCC`` is the Pearson correlation of template and micrograph under the mask centred at ``v``, in
[-1, 1]. With one mask shared by all template-rotations (the circular default) ``sd_m f`` is computed once
per micrograph and the maximum over templates is taken on the raw correlations (dividing by a positive
map commutes with the maximum), so each template-rotation costs one complex product and one inverse FFT:
the floor. The template spectra are computed once per working grid and cached on the device when they fit.

Micrograph preparation (:func:`plan_grid`, :func:`prepare_micrograph`) as RELION-2: normalise, zero-pad to an
FFT-friendly size, Fourier-crop ("shrink") so that the low-pass resolution sits just below Nyquist,
low-/high-pass with raised-cosine edges, and zero-pad the shrunk image to FFT-friendly sizes for the
correlations (gEMpicker). Working pixel ``(i, j)`` lies at micrograph pixel ``(i * sy, j * sx)``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from cryopipe.fourier import next_fast_size
from cryopipe.pick.templates import TemplateBank

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Grid:
    """Geometry of one micrograph shape.

    shape : (H, W) micrograph pixels. padded : (Hp, Wp) FFT-friendly size of the forward transform.
    crop : (h, w) shrunk size. corr : (Hc, Wc) FFT-friendly size of the correlations (>= crop).
    angpix : micrograph pixel size (A/px).
    """

    shape: tuple[int, int]
    padded: tuple[int, int]
    crop: tuple[int, int]
    corr: tuple[int, int]
    angpix: float

    @property
    def scale(self) -> tuple[float, float]:
        """(sy, sx): micrograph pixels per working pixel."""
        return self.padded[0] / self.crop[0], self.padded[1] / self.crop[1]

    @property
    def extent(self) -> tuple[int, int]:
        """(rows, columns) of the working grid that hold the micrograph (the rest is padding)."""
        return tuple(int(math.ceil(n / s)) for n, s in zip(self.shape, self.scale, strict=True))

    @property
    def work_angpix(self) -> float:
        return self.angpix * self.scale[0]

    def to_micrograph(self, y, x):
        """Working-grid (y, x) -> micrograph pixel (y, x)."""
        sy, sx = self.scale
        return np.asarray(y) * sy, np.asarray(x) * sx


def _even_fast(n: float) -> int:
    m = next_fast_size(max(2, math.ceil(n)))
    while m % 2:
        m = next_fast_size(m + 1)
    return m


def plan_grid(shape: tuple[int, int], angpix: float, lowpass_A: float | None = None) -> Grid:
    """Working-grid geometry for micrographs of ``shape`` at ``angpix`` low-passed to ``lowpass_A``.

    The crop keeps the frequencies up to the low-pass radius plus 2 Fourier pixels (the filter edge); rows
    and columns are shrunk by (nearly) the same factor, so working pixels stay square within 1/w.
    """
    H, W = (int(v) for v in shape)
    Hp, Wp = _even_fast(H), _even_fast(W)
    h, w = Hp, Wp
    if lowpass_A:
        r = Hp * angpix / lowpass_A  # low-pass radius in Fourier pixels (same in the cropped grid)
        h = min(Hp, 2 * math.ceil(r + 2))
        w = min(Wp, max(2, 2 * round(Wp * h / Hp / 2))) if h < Hp else Wp
    corr = (h, w) if (h, w) == (Hp, Wp) else (_even_fast(h), _even_fast(w))
    return Grid((H, W), (Hp, Wp), (h, w), corr, float(angpix))


def _raised_cosine(r, cutoff, width, xp):
    """1 below cutoff - width/2, 0 above cutoff + width/2, raised cosine between."""
    t = xp.clip((r - (cutoff - 0.5 * width)) / width, 0.0, 1.0)
    return 0.5 + 0.5 * xp.cos(np.pi * t)


def prepare_micrograph(image, grid: Grid, bk, lowpass_A: float | None = None, highpass_A: float | None = None):
    """Normalised (mean and best-fit plane removed), padded, shrunk and filtered micrograph on the device,
    (Hc, Wc) float32.

    Returns None when the micrograph is flat (zero variance: nothing to pick). The area outside the
    micrograph (padding) is zero, the micrograph's mean.
    """
    xp, fft = bk.xp, bk.fft
    img = bk.asarray(image, dtype=xp.float32)
    mean = float(img.mean(dtype=xp.float64))
    var = float((img * img).mean(dtype=xp.float64)) - mean * mean  # one pass each (CuPy's std is slow)
    if not var > 1e-12 * max(mean * mean, 1e-30):
        return None
    (H, W), (Hp, Wp), (h, w) = grid.shape, grid.padded, grid.crop
    padded = xp.zeros((Hp, Wp), dtype=xp.float32)
    # the best-fit plane goes too: an ice gradient is a step where the FFT wraps the micrograph around, whose
    # ringing after the low-pass would reach a particle's width into the micrograph
    ys = xp.arange(H, dtype=xp.float32) - 0.5 * (H - 1)
    xs = xp.arange(W, dtype=xp.float32) - 0.5 * (W - 1)
    slope_y = float((img.mean(axis=1, dtype=xp.float64) * ys).sum() / (ys * ys).sum())
    slope_x = float((img.mean(axis=0, dtype=xp.float64) * xs).sum() / (xs * xs).sum())
    plane = slope_y * ys[:, None] + slope_x * xs[None, :]
    padded[:H, :W] = (img - mean - plane) / np.sqrt(var)
    spec = fft.rfft2(padded)
    if (h, w) != (Hp, Wp):
        spec = xp.concatenate([spec[: h // 2, : w // 2 + 1], spec[Hp - h // 2 :, : w // 2 + 1]], axis=0)
    if lowpass_A or highpass_A:
        sy, sx = grid.scale
        ky = bk.asarray(fft.fftfreq(h, grid.angpix * sy), dtype=xp.float32)[:, None]
        kx = bk.asarray(fft.rfftfreq(w, grid.angpix * sx), dtype=xp.float32)[None, :]
        r = xp.sqrt(ky * ky + kx * kx)
        width = 2.0 / (Hp * grid.angpix)  # 2 Fourier pixels, in 1/A
        if lowpass_A:
            spec *= _raised_cosine(r, 1.0 / lowpass_A, width, xp)
        if highpass_A:
            spec *= 1.0 - _raised_cosine(r, 1.0 / highpass_A, width, xp)
    work = fft.irfft2(spec, s=(h, w)) * ((h * w) / (Hp * Wp))
    if (h, w) == grid.corr:
        return work.astype(xp.float32, copy=False)
    out = xp.zeros(grid.corr, dtype=xp.float32)
    out[:h, :w] = work
    return out


def grid_ctf(ctf, grid: Grid, bk):
    """The CTF (:class:`cryopipe.ctf.CTFParams` of one micrograph) on the correlation grid's half spectrum,
    (Hc, Wc//2+1) float32 on ``bk``'s device; the low-pass of the working grid is applied separately."""
    from cryopipe.ctf import ctf_on_grid

    (Hc, Wc), (sy, sx) = grid.corr, grid.scale
    ky = bk.asarray(np.fft.fftfreq(Hc, grid.angpix * sy))[:, None]
    kx = bk.asarray(np.fft.rfftfreq(Wc, grid.angpix * sx))[None, :]
    return ctf_on_grid(ctf, ky, kx, bk)[0]


class Correlator:
    """Max/argmax of the NCC over a range of template-rotations, for micrographs on one working grid.

    Parameters
    ----------
    bank : template-rotations on the working grid (:func:`cryopipe.pick.templates.build_bank`).
    grid : the working grid (only ``grid.corr`` is used).
    bk : backend. batch_size : template-rotations per batched FFT (default: from free memory).
    subset : the bank indices this instance handles (MPI per-template mode); indices returned are global.
    null : also return the null map for the automatic threshold: the maximum NCC with the contrast-inverted
        templates, ``max_k -NCC_k = -min_k NCC_k``, taken from the same correlations (no extra FFT).
    context_px : also return the micrograph's mean and s.d. in a Gaussian window of this s.d. (working pixels)
        about every position, for artefact rejection (:mod:`cryopipe.pick.artefacts`); None: not computed.
    """

    def __init__(self, bank: TemplateBank, grid: Grid, bk, batch_size: int | None = None,
                 subset: slice = slice(None), null: bool = False, context_px: float | None = None):
        self.bk, self.grid = bk, grid
        xp = bk.xp
        self.first, stop, _ = subset.indices(len(bank))
        self.count = max(0, stop - self.first)
        Hc, Wc = grid.corr
        spec_bytes = Hc * (Wc // 2 + 1) * 8
        shared = bank.shared_mask
        # per template-rotation: its spectrum made on the fly, the product, the correlation, argmax temporaries
        per_item = (1 if shared else 3) * (4 * spec_bytes + 3 * Hc * Wc * 4)
        self.batch = batch_size or bk.batch_size(per_item, fraction=0.25, cap=128 if bk.is_gpu else 16)
        part = slice(self.first, self.first + self.count)
        cached = (1 if shared else 2) * self.count * spec_bytes <= 0.25 * bk.free_bytes()
        self.null = null
        self._window = None
        if context_px:
            ky = np.fft.fftfreq(Hc)[:, None]
            kx = np.fft.rfftfreq(Wc)[None, :]
            window = np.exp(-2.0 * (np.pi * context_px) ** 2 * (ky * ky + kx * kx))  # a unit-sum Gaussian's FT
            self._window = bk.asarray(window, dtype=xp.float32)
            # the window's weight inside the micrograph (the padding around it is not micrograph: near the edges
            # the moments are taken over the part of the window that is)
            inside = np.zeros((Hc, Wc), np.float32)
            inside[: grid.extent[0], : grid.extent[1]] = 1.0
            weight = np.fft.irfft2(np.fft.rfft2(inside) * window, s=(Hc, Wc))
            self._weight = bk.asarray(np.maximum(weight, 1e-3), dtype=xp.float32)
        self._images = bank.images[part]
        self._masks = None if shared else bank.masks[part]
        self._spec = self._spectra(self._images) if cached else None
        self._mask_spec = self._spectra(self._masks) if (cached and not shared) else None
        if shared:
            self.shared_mask_spec = self._spectra(bank.masks[None])[0]
            self.shared_msum = float(bank.masks.sum())
        else:
            self.msum = xp.asarray(self._masks.sum(axis=(1, 2)), dtype=xp.float32)[:, None, None]
        log.debug("correlator: %d template-rotations, grid %s, batch %d, spectra cached: %s", self.count,
                  grid.corr, self.batch, cached)

    def _spectra(self, images: np.ndarray):
        """Conjugate spectra (n, Hc, Wc//2+1) complex64 of images (n, b, b) placed with centre b//2 at 0."""
        xp, fft = self.bk.xp, self.bk.fft
        Hc, Wc = self.grid.corr
        b = images.shape[-1]
        ys = xp.asarray((np.arange(b) - b // 2) % Hc)[:, None]
        xs = xp.asarray((np.arange(b) - b // 2) % Wc)[None, :]
        out = xp.empty((len(images), Hc, Wc // 2 + 1), dtype=xp.complex64)
        for k in range(0, len(images), self.batch):
            chunk = self.bk.asarray(images[k : k + self.batch], dtype=xp.float32)
            pad = xp.zeros((len(chunk), Hc, Wc), dtype=xp.float32)
            pad[:, ys, xs] = chunk
            xp.conjugate(fft.rfft2(pad), out=out[k : k + len(chunk)])
        return out

    def _local_moments(self, f_spec, f2_spec, mask_spec, msum):
        """Mean and sd of the micrograph under a mask (given by its spectrum and sum) at every position (sd 0 where
        the variance vanishes)."""
        xp, fft = self.bk.xp, self.bk.fft
        s = self.grid.corr
        mean = fft.irfft2(f_spec * mask_spec, s=s, overwrite_x=True) / msum
        var = fft.irfft2(f2_spec * mask_spec, s=s, overwrite_x=True) / msum - mean * mean
        return mean, xp.sqrt(xp.maximum(var, 0.0))

    def __call__(self, work, ctf=None) -> Correlation:
        """Best NCC and its bank index at every position of ``work`` (Hc, Wc), the null's best NCC, and the
        micrograph's mean and s.d. in the context window (device float32 arrays; see :class:`Correlation`).

        ctf : the micrograph's CTF on the correlation grid ((Hc, Wc//2+1) device float32, :func:`grid_ctf`), or
        None. With it every template is correlated as the microscope would have imaged it (RELION's CTF-aware
        autopick): the product with the micrograph's spectrum is multiplied by the CTF, and each template's
        score divided by ``||T_k CTF|| / ||T_k||`` so that NCC keeps its scale.
        Positions where the micrograph is flat under the mask score 0 (index of the first template). With
        no template-rotations (an empty MPI share) the scores are -inf.
        """
        xp, fft = self.bk.xp, self.bk.fft
        s = self.grid.corr
        f_spec = fft.rfft2(work)
        f2_spec = fft.rfft2(work * work)
        g_spec = f_spec if ctf is None else f_spec * ctf
        floor = 1e-6 * float(xp.sqrt((work * work).mean()))  # sd below this counts as flat
        shared = self._masks is None
        if shared:
            sd = self._local_moments(f_spec, f2_spec, self.shared_mask_spec, self.shared_msum)[1]
        context = (None, None) if self._window is None else \
            self._local_moments(f_spec, f2_spec, self._window, self._weight)
        best = xp.full(s, -xp.inf, dtype=xp.float32)
        worst = xp.full(s, xp.inf, dtype=xp.float32) if self.null else None
        arg = xp.zeros(s, dtype=xp.int32)
        for k0 in range(0, self.count, self.batch):
            k1 = min(self.count, k0 + self.batch)
            spec = self._spec[k0:k1] if self._spec is not None else self._spectra(self._images[k0:k1])
            c = fft.irfft2(g_spec[None] * spec, s=s, overwrite_x=True)
            if ctf is not None:
                power = spec.real * spec.real + spec.imag * spec.imag
                gain = xp.sqrt((power * (ctf * ctf)).sum(axis=(1, 2)) / power.sum(axis=(1, 2)))
                c /= xp.maximum(gain, 1e-6)[:, None, None].astype(xp.float32)
            if not shared:
                mspec = self._mask_spec[k0:k1] if self._mask_spec is not None else self._spectra(self._masks[k0:k1])
                msum = self.msum[k0:k1]
                local = self._local_moments(f_spec[None], f2_spec[None], mspec, msum)[1]
                c = xp.where(local > floor, c / (msum * xp.maximum(local, floor)), 0.0).astype(xp.float32)
            i = xp.argmax(c, axis=0)
            v = xp.take_along_axis(c, i[None], axis=0)[0]
            better = v > best
            best = xp.where(better, v, best)
            arg = xp.where(better, (i + self.first + k0).astype(xp.int32), arg)
            if self.null:
                worst = xp.minimum(worst, c.min(axis=0))
        null = -worst if self.null else None
        if shared and self.count:
            scale = xp.where(sd > floor, 1.0 / (self.shared_msum * xp.maximum(sd, floor)), 0.0)
            best = (best * scale).astype(xp.float32)
            null = None if null is None else (null * scale).astype(xp.float32)
        return Correlation(best, arg, null, *context)


@dataclass
class Correlation:
    """One micrograph's correlation maps on the working grid (device arrays, (Hc, Wc)).

    best : float32, the maximum NCC over the template-rotations. index : int32, its bank index.
    null : float32, the maximum NCC over the contrast-inverted templates (None unless asked for).
    mean, sd : float32, the micrograph's mean and s.d. in the Gaussian context window (None unless asked for).
    """

    best: object
    index: object
    null: object = None
    mean: object = None
    sd: object = None
