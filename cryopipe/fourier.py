"""Fourier-space tools: frequency grids, resizing, filters, shifts, FSC, masks.

Conventions (see DESIGN.md):

- Images are ``img[..., y, x]``, volumes ``vol[..., z, y, x]``, box ``N`` even, real-space
  origin at index ``N // 2``. Leading batch dimensions are allowed everywhere.
- Spectra are UNSHIFTED. Half spectra come from ``rfftn`` over the last 2 (or 3) axes and have
  shape ``(..., N, N//2 + 1)`` (or ``(..., N, N, N//2 + 1)``). Frequency components follow
  ``fftfreq``/``rfftfreq``: index ``i`` holds ``i`` cycles per box for ``i < N/2`` and ``i - N``
  otherwise (so the Nyquist row/plane is ``-N/2``).
- Frequencies are in 1/Angstrom, from ``angpix`` (Angstrom per pixel); "px" radii are in Fourier
  pixels, i.e. cycles per box.
- ``ndim`` (2 or 3) says how many trailing axes form one image; all other axes are batch axes.

Device rule (used in this module and in :mod:`cryopipe.ctf`): functions that take arrays run
on the device that holds them (NumPy -> CPU, CuPy -> GPU; see :func:`backend_of`) and return
arrays on that device; functions that build arrays from sizes take ``bk=None`` (CPU when None).
"""

from __future__ import annotations

import functools

import numpy as np

from cryopipe.backend import Backend, get_backend
from cryopipe.errors import InputError


@functools.lru_cache(maxsize=1)
def _cpu() -> Backend:
    return get_backend("cpu")


def backend_of(x) -> Backend:
    """The backend that holds array ``x``: CuPy arrays -> GPU (made current), anything else -> CPU."""
    if type(x).__module__.startswith("cupy"):
        return get_backend("gpu", x.device.id)
    return _cpu()


def backend_or_cpu(bk: Backend | None) -> Backend:
    """``bk``, or the CPU backend when None (the default of the functions that build arrays from sizes)."""
    return _cpu() if bk is None else bk


def as_float(x, xp):
    """``x`` unchanged when already real floating point, else as float32."""
    return x if np.issubdtype(x.dtype, np.floating) else x.astype(xp.float32)


def _check_box(box: int, name: str = "box") -> int:
    if int(box) != box or box < 2 or box % 2:
        raise InputError(f"box size must be an even integer >= 2, got {box}", field=name)
    return int(box)


def image_box(x, ndim: int) -> int:
    """The box N of the square (ndim=2) or cubic (ndim=3) images in the last ``ndim`` axes of ``x``; InputError
    unless they are square/cubic with an even N >= 2."""
    if ndim not in (2, 3):
        raise InputError(f"ndim must be 2 or 3, got {ndim}", field="ndim")
    shape = x.shape[-ndim:]
    if x.ndim < ndim or len(set(shape)) != 1:
        raise InputError(f"expected cubic/square images in the last {ndim} axes, got shape {x.shape}", field="shape")
    return _check_box(shape[0])


def _axes(ndim: int) -> tuple[int, ...]:
    return tuple(range(-ndim, 0))


# ----------------------------------------------------------------------------- frequency grids


def frequency_grid(box: int, angpix: float = 1.0, half: bool = True, ndim: int = 2, bk: Backend | None = None,
                   dtype=np.float32) -> tuple:
    """Frequency components in 1/A, as broadcastable arrays ``(ky, kx)`` or ``(kz, ky, kx)``.

    For ndim=2 the shapes are (N, 1) and (1, N//2+1) (half) or (1, N) (full); likewise in 3D.
    """
    bk = backend_or_cpu(bk)
    n = _check_box(box)
    comps = []
    for axis in range(ndim):
        last = axis == ndim - 1
        f = bk.fft.rfftfreq(n, angpix) if (half and last) else bk.fft.fftfreq(n, angpix)
        shape = [1] * ndim
        shape[axis] = f.shape[0]
        comps.append(bk.asarray(f).astype(dtype).reshape(shape))
    return tuple(comps)


def _radius(box, angpix, half, ndim, bk, dtype):
    return sum(k * k for k in frequency_grid(box, angpix, half, ndim, bk, dtype)) ** 0.5


def radial_frequency(box: int, angpix: float = 1.0, half: bool = True, bk: Backend | None = None, dtype=np.float32):
    """|s| in 1/A on the 2D grid: shape (N, N//2+1) (half) or (N, N) (full, unshifted)."""
    return _radius(box, angpix, half, 2, bk, dtype)


def radial_frequency_3d(box: int, angpix: float = 1.0, half: bool = True, bk: Backend | None = None,
                        dtype=np.float32):
    """|s| in 1/A on the 3D grid: shape (N, N, N//2+1) (half) or (N, N, N) (full, unshifted)."""
    return _radius(box, angpix, half, 3, bk, dtype)


def radial_shell_index(box: int, half: bool = True, ndim: int = 2, bk: Backend | None = None):
    """Integer Fourier shell of each grid point: round(|k| in Fourier pixels), int64, grid shape."""
    xp = backend_or_cpu(bk).xp
    return xp.rint(_radius(box, 1.0 / box, half, ndim, bk, np.float64)).astype(xp.int64)


def shell_frequencies(box: int, angpix: float, bk: Backend | None = None):
    """Spatial frequency of shells 0..N/2 in 1/A, float64, shape (N//2+1,)."""
    xp = backend_or_cpu(bk).xp
    return xp.arange(_check_box(box) // 2 + 1, dtype=xp.float64) / (box * angpix)


def hermitian_weights(box: int, bk: Backend | None = None):
    """Multiplicity of each half-spectrum column in the full spectrum, float64, shape (N//2+1,).

    2 for columns 0 < kx < N/2 (they stand for kx and -kx), 1 for kx = 0 and kx = N/2, so that
    ``sum(w * |F_half|**2) == sum(|F_full|**2)`` in 2D and 3D alike.
    """
    xp = backend_or_cpu(bk).xp
    w = xp.full(_check_box(box) // 2 + 1, 2.0, dtype=xp.float64)
    w[0] = w[-1] = 1.0
    return w


def _shell_sum(values, box: int, ndim: int, xp):
    """Sum real half-spectrum ``values`` (..., N, [N,] N//2+1) per shell 0..N/2 -> (..., N//2+1), float64."""
    nsh = box // 2 + 1
    bk = backend_of(values)
    idx = xp.minimum(radial_shell_index(box, True, ndim, bk), nsh).ravel()  # shell nsh collects the corners
    batch = values.shape[:-ndim]
    v = (values * hermitian_weights(box, bk)).reshape(-1, idx.size)
    flat = (xp.arange(v.shape[0])[:, None] * (nsh + 1) + idx[None, :]).ravel()
    sums = xp.bincount(flat, weights=v.ravel(), minlength=v.shape[0] * (nsh + 1))
    return sums.reshape(v.shape[0], nsh + 1)[:, :nsh].reshape(batch + (nsh,))


# ----------------------------------------------------------------------------- resizing


def _resize_spectrum(f, n: int, m: int, ndim: int, xp):
    """Crop or zero-pad a half spectrum from box n to box m (both even).

    Frequencies |k| < min(n, m)/2 are copied. The Nyquist bin of the smaller box stands for
    both +k and -k of the larger one: cropping folds the two into it (the exact aliasing of
    a band-limited signal), padding splits it in halves, so crop(pad(x)) == x.
    """
    k = min(n, m) // 2
    shrink = m < n
    last = f[..., : k + 1].copy()
    last[..., k] *= 2.0 if shrink else 0.5  # irfft keeps Re of the Nyquist column, counted once
    if not shrink:
        last = xp.concatenate([last, xp.zeros(last.shape[:-1] + (m // 2 - k,), dtype=last.dtype)], axis=-1)
    f = last
    for axis in range(f.ndim - ndim, f.ndim - 1):
        lo = xp.take(f, xp.arange(0, k), axis=axis)
        hi = xp.take(f, xp.arange(n - k + 1, n), axis=axis)  # frequencies -k+1..-1
        if shrink:
            nyq = xp.take(f, xp.asarray([n - k]), axis=axis) + xp.take(f, xp.asarray([k]), axis=axis)
            f = xp.concatenate([lo, nyq, hi], axis=axis)
        else:
            nyq = 0.5 * xp.take(f, xp.asarray([k]), axis=axis)
            zshape = list(nyq.shape)
            zshape[axis] = m - 2 * k - 1
            f = xp.concatenate([lo, nyq, xp.zeros(zshape, dtype=f.dtype), nyq, hi], axis=axis)
    return f


def _resize(images, new_box: int, ndim: int, grow: bool | None):
    bk = backend_of(images)
    xp = bk.xp
    images = as_float(images, xp)
    n, m = image_box(images, ndim), _check_box(new_box, "new_box")
    if grow is not None and (m > n) != grow and m != n:
        verb = "pad" if grow else "crop"
        raise InputError(f"cannot Fourier-{verb} a box of {n} to {m}", field="new_box")
    if m == n:
        return images.copy()
    axes = _axes(ndim)
    f = _resize_spectrum(bk.fft.rfftn(images, axes=axes), n, m, ndim, xp)
    out = bk.fft.irfftn(f, s=(m,) * ndim, axes=axes)
    return (out * (m / n) ** ndim).astype(images.dtype, copy=False)


def fourier_crop(images, new_box: int, ndim: int = 2):
    """Bin (..., N, N[, N]) real images to new_box <= N by cropping the spectrum; same dtype.

    The field of view is kept: the pixel size grows by N/new_box and a constant image keeps
    its value. The origin N//2 maps to new_box//2.
    """
    return _resize(images, new_box, ndim, grow=False)


def fourier_pad(images, new_box: int, ndim: int = 2):
    """Upsample (..., N, N[, N]) real images to new_box >= N by zero-padding the spectrum.

    The result is the band-limited (sinc) interpolation: pixel ``i * new_box/N`` of the output
    equals pixel ``i`` of the input when new_box/N is an integer; constants stay constant.
    """
    return _resize(images, new_box, ndim, grow=True)


def resize(images, new_box: int, ndim: int = 2):
    """:func:`fourier_crop` or :func:`fourier_pad`, whichever takes the images to ``new_box``."""
    return _resize(images, new_box, ndim, grow=None)


# ----------------------------------------------------------------------------- filters


def _raised_cosine_lowpass(radius_px, cutoff_px: float, edge_width_px: float, xp):
    """1 below cutoff - w/2, 0 above cutoff + w/2, raised cosine in between (w = edge width)."""
    if edge_width_px <= 0:
        return (radius_px <= cutoff_px).astype(radius_px.dtype)
    t = xp.clip((radius_px - (cutoff_px - 0.5 * edge_width_px)) / edge_width_px, 0.0, 1.0)
    return 0.5 + 0.5 * xp.cos(np.pi * t)


def _filter(images, angpix: float, ndim: int, weights_fn):
    bk = backend_of(images)
    xp = bk.xp
    images = as_float(images, xp)
    n = image_box(images, ndim)
    radius_px = _radius(n, 1.0 / n, True, ndim, bk, images.dtype)
    w = weights_fn(radius_px, n * angpix, xp)  # n * angpix / resolution = cutoff radius in px
    axes = _axes(ndim)
    return bk.fft.irfftn(bk.fft.rfftn(images, axes=axes) * w, s=(n,) * ndim, axes=axes).astype(images.dtype, copy=False)


def lowpass(images, angpix: float, resolution_A: float, edge_width_px: float = 2.0, ndim: int = 2):
    """Keep detail coarser than ``resolution_A`` (Angstrom), raised-cosine edge of ``edge_width_px``.

    The edge is centred on radius N*angpix/resolution_A Fourier pixels (weight 0.5 there).
    images: (..., N, N) for ndim=2 or (..., N, N, N) for ndim=3, real; returns the same shape and dtype.
    """
    def weights(r, fov, xp):
        return _raised_cosine_lowpass(r, fov / resolution_A, edge_width_px, xp)

    return _filter(images, angpix, ndim, weights)


def highpass(images, angpix: float, resolution_A: float, edge_width_px: float = 2.0, ndim: int = 2):
    """Remove detail coarser than ``resolution_A`` (the complement of :func:`lowpass`, DC included)."""
    def weights(r, fov, xp):
        return 1.0 - _raised_cosine_lowpass(r, fov / resolution_A, edge_width_px, xp)

    return _filter(images, angpix, ndim, weights)


def bandpass(images, angpix: float, low_res_A: float, high_res_A: float, edge_width_px: float = 2.0, ndim: int = 2):
    """Keep detail between ``low_res_A`` (coarse limit) and ``high_res_A`` (fine limit), soft edges."""
    def weights(r, fov, xp):
        keep_fine = _raised_cosine_lowpass(r, fov / high_res_A, edge_width_px, xp)
        return keep_fine * (1.0 - _raised_cosine_lowpass(r, fov / low_res_A, edge_width_px, xp))

    return _filter(images, angpix, ndim, weights)


# ----------------------------------------------------------------------------- shifts


def shift_phase(images_ft, shifts_px, box: int):
    """Shift images by multiplying their half spectra by exp(-2 pi i (kx dx + ky dy) / N).

    images_ft: (..., N, N//2+1) complex half spectra. shifts_px: (..., 2) as (dx, dy) in pixels,
    broadcast against the batch dimensions (e.g. (B, 2) for B images, or (2,) for all); sub-pixel
    values allowed. The real-space image moves by +shift: an integer shift equals
    ``np.roll(img, (dy, dx), axis=(-2, -1))``. Returns complex, the precision of ``images_ft``.
    """
    xp = backend_of(images_ft).xp
    real = xp.float32 if images_ft.dtype == xp.complex64 else xp.float64
    ky, kx = frequency_grid(box, 1.0, True, 2, backend_of(images_ft), real)  # cycles per pixel
    s = xp.asarray(shifts_px, dtype=real)
    dx, dy = s[..., 0, None, None], s[..., 1, None, None]
    phase = (-2.0 * np.pi) * (kx * dx + ky * dy)
    return images_ft * (xp.cos(phase) + 1j * xp.sin(phase)).astype(images_ft.dtype, copy=False)


# ----------------------------------------------------------------------------- FSC and spectra


def fsc(a, b, ndim: int | None = None):
    """Fourier shell (3D) or ring (2D) correlation of real maps, in float64.

    a, b: real (..., N, N) images or (..., N, N, N) volumes; ``ndim`` defaults to ``a.ndim``
    (give ndim=2 for batches of images). Returns (..., N//2+1): shells 0..N/2 of radius
    round(|k|) Fourier pixels, FSC = Re sum(A conj B) / sqrt(sum |A|^2 sum |B|^2); 0 where a
    shell has no power.
    """
    bk = backend_of(a)
    xp = bk.xp
    ndim = a.ndim if ndim is None else ndim
    n = image_box(a, ndim)
    axes = _axes(ndim)
    fa = bk.fft.rfftn(a.astype(xp.float64), axes=axes)
    fb = bk.fft.rfftn(xp.asarray(b).astype(xp.float64), axes=axes)
    num = _shell_sum((fa * fb.conj()).real, n, ndim, xp)
    den = xp.sqrt(_shell_sum(xp.abs(fa) ** 2, n, ndim, xp) * _shell_sum(xp.abs(fb) ** 2, n, ndim, xp))
    return xp.where(den > 0, num / xp.where(den > 0, den, 1.0), 0.0)


def resolution_at(fsc_curve, box: int, angpix: float, threshold: float = 0.143) -> float:
    """Resolution (Angstrom) where ``fsc_curve`` (shells 0..N/2) first drops below ``threshold``.

    Searched from shell 1; the crossing is interpolated linearly in frequency between the last
    shell at/above the threshold and the first below. Returns 2*angpix (Nyquist) if it never
    drops, and inf if it is already below at shell 0.
    """
    c = np.asarray(backend_of(fsc_curve).asnumpy(fsc_curve), dtype=np.float64)
    freqs = np.arange(c.size) / (box * angpix)
    below = np.nonzero(c[1:] < threshold)[0]
    if below.size == 0:
        return 2.0 * angpix
    i = below[0] + 1
    t = np.clip((c[i - 1] - threshold) / (c[i - 1] - c[i]), 0.0, 1.0)
    f = freqs[i - 1] + t * (freqs[i] - freqs[i - 1])
    return float(1.0 / f) if f > 0 else float("inf")


def power_spectrum_1d(images, ndim: int = 2):
    """Rotationally averaged power spectrum, float64, (..., N//2+1) for shells 0..N/2.

    Normalised as mean over the shell of |F|^2 / N^ndim, so white noise of variance v gives v.
    """
    bk = backend_of(images)
    xp = bk.xp
    n = image_box(images, ndim)
    f = bk.fft.rfftn(images.astype(xp.float64), axes=_axes(ndim))
    power = _shell_sum(xp.abs(f) ** 2, n, ndim, xp)
    counts = _shell_sum(xp.ones(f.shape[-ndim:], dtype=xp.float64), n, ndim, xp)
    return power / (counts * float(n) ** ndim)


def next_fast_size(n: int, primes: tuple[int, ...] = (2, 3, 5, 7)) -> int:
    """The smallest integer >= n whose prime factors are all in ``primes`` (FFT-friendly sizes)."""
    m = max(1, int(n))
    while True:
        r = m
        for p in primes:
            while r % p == 0:
                r //= p
        if r == 1:
            return m
        m += 1


# ----------------------------------------------------------------------------- real-space masks


def _real_radius(box: int, ndim: int, bk: Backend | None, dtype):
    """Distance in pixels from the origin N//2 on an (N,)*ndim grid."""
    xp = backend_or_cpu(bk).xp
    c = xp.arange(_check_box(box), dtype=dtype) - box // 2
    comps = [c.reshape([-1 if i == axis else 1 for i in range(ndim)]) for axis in range(ndim)]
    return sum(x * x for x in comps) ** 0.5


def soft_circular_mask(box: int, radius_px: float, edge_px: float, ndim: int = 2, bk: Backend | None = None,
                       dtype=np.float32):
    """Circular (spherical for ndim=3) mask centred on N//2, shape (N,)*ndim.

    1 for r <= radius_px, 0 for r >= radius_px + edge_px, 0.5 + 0.5 cos(pi (r - radius_px) / edge_px)
    in between (RELION's soft mask); edge_px = 0 gives a hard mask.
    """
    xp = backend_or_cpu(bk).xp
    r = _real_radius(box, ndim, bk, dtype)
    if edge_px <= 0:
        return (r <= radius_px).astype(dtype)
    t = xp.clip((r - radius_px) / edge_px, 0.0, 1.0)
    return (0.5 + 0.5 * xp.cos(np.pi * t)).astype(dtype)


def normalise_background(images, radius_px: float, ndim: int = 2):
    """RELION particle normalisation: pixels with r > radius_px from N//2 get mean 0, s.d. 1.

    Mean and s.d. are taken per image over the background pixels only and applied to the whole
    image. A flat background (s.d. 0) is only mean-subtracted (s.d. taken as 1, no NaNs).
    Returns the same shape, floating dtype of the input (float32 for integer input).
    """
    bk = backend_of(images)
    xp = bk.xp
    images = as_float(images, xp)
    n = image_box(images, ndim)
    outside = _real_radius(n, ndim, bk, xp.float64) > radius_px
    if not bool(outside.any()):
        raise InputError(f"background radius {radius_px} px leaves no background pixels in a box of {n}",
                         field="radius_px")
    axes = _axes(ndim)
    bg = images.astype(xp.float64) * outside
    count = int(outside.sum())
    mean = bg.sum(axis=axes, keepdims=True) / count
    var = ((bg - mean * outside) ** 2).sum(axis=axes, keepdims=True) / count
    std = xp.sqrt(var)
    std = xp.where(std > 0, std, 1.0)
    return ((images - mean) / std).astype(images.dtype)
