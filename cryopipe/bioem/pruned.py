"""The correlation at the few displacements BioEM needs, without a full inverse FFT per grid point.

For one grid point (image i, orientation o, CTF point c) the integration needs the circular correlation

    corr[r, c'] = irfft2(Z, s=(N, N))[r, c'],   Z = P_o K_ic conj(I_i)   (N x H half spectrum, H = N/2 + 1)

only at the displacement rows r in R and columns c' in C' (81 x 81 of 224 x 224 in the benchmark). Two
transforms compute it (:func:`make_transform` picks one):

``FFTTransform``: the multiply, one batched irfft2 (cuFFT / pocketfft) of N x N per grid point, then a gather.

``PrunedTransform``: the inverse DFT evaluated only at R x C', as two real matrix products over a batch of G
grid points (a GEMM, cuBLAS on the GPU, BLAS on the CPU):

1. rows (u -> r), with the symmetry of R: for k = |r| the cosine and sine sums A_k = sum_u Z[u] cos(2 pi u k/N),
   B_k = sum_u Z[u] sin(2 pi u k/N) give Y[k] = A_k + i B_k and Y[N-k] = A_k - i B_k. Z (complex) times a
   *real* matrix is a real GEMM on Z viewed as floats: (n_A + n_B) x U  @  U x (G 2V).
2. columns (v -> c', the c2r with Hermitian weights w_v = 1, 2, .., 2, 1 and the imaginary parts of v = 0 and
   v = N/2 dropped, exactly as irfft does): (n_A G) x 2V @ 2V x n_C' for the A rows and the same for the B rows;
   then corr[k] = a_k + b_k and corr[N-k] = a_k - b_k.

U and V are the spectrum rows and columns where Z can be non-zero: all N and H, or fewer when the inputs are
band-limited (exact zeros outside a radius: e.g. CTF kernels or images low-pass filtered to a working
resolution), option (iii) below. Nothing is approximated: both transforms give the same numbers up to
floating-point rounding (tests/bioem/test_pruned.py: equal ln P to 1e-4 relative; 1e-12 in float64).

Counts per grid point (N = 224, H = 113, 81 x 81 displacements, float32; MAC = multiply-add = 2 FLOP):

=============================================  ===================  ===================  =====================
option                                         arithmetic           bytes moved (HBM)    predicted H100 time
=============================================  ===================  ===================  =====================
FFT path (multiply + irfft2 + gather)          ~2 MFLOP (5 N H      Z 202 KB written +   measured 1.72 us
                                               log2 N^2) + 0.15 M   read, 200 KB out,    (cuFFT 224 = 2^5 7:
                                               for the multiply     gather 26 KB: ~0.7   multi-pass; floor
                                                                    MB                   1.12 us measured)
(i) pruned, complex GEMMs as 224x113x81 +      3.52 M complex MAC   Z 2 x 202 KB +       28 MFLOP / ~45 TFLOPS
    81x224x81                                  = 28.2 MFLOP         Y 2 x 73 KB ~0.6 MB  (SGEMM-class) ~0.6 us
(i') pruned, real GEMMs with the +-k cos/sin   81 x 224 x 226 +     as (i): ~0.6 MB      11.2 MFLOP: ~0.25 us
    split (implemented): rows then columns     81 x 226 x 81 =                           compute + ~0.1 us
                                               5.58 M MAC =                              memory (partly in L2)
                                               11.2 MFLOP                                => ~0.3-0.4 us
(ii) pad 224 to a faster FFT size              not allowed: a circular correlation of another size is another
                                               result (wrap-around differs); 224 is already 2^5 7
(iii) (i') on a band-limited spectrum,         81 x U x 2V + 81 x   Z 2 x 8 U V:         3.6 MFLOP: ~0.08 us
      radius kmax: U = 2 kmax + 1, V = kmax+1  2V x 81; kmax = 56   ~0.1 MB              + memory: ~0.1-0.15 us
      (Nyquist/2, e.g. 4.5 A at 1.1 A/px)      (half Nyquist):      (kmax = 56)          (meets <= 0.25 us)
                                               1.79 M MAC = 3.6 MF
=============================================  ===================  ===================  =====================

The GPU predictions assume FP32 SGEMM at 40-55 of the H100's 67 TFLOPS (no TF32 tensor cores: their 10-bit
mantissa would not keep the float32 tolerance) and 3 TB/s; the FLOP counts are exact for the shapes used.
The pruned path therefore wins by a factor 3-5 at full band and reaches the target only when the spectra
carry exact zeros outside a working resolution (option iii), which the transform detects by itself.
"""

from __future__ import annotations

import math

import numpy as np


def _fft_flops(n: int) -> float:
    """Nominal FLOPs of one inverse real FFT of n x n (5 N H log2 N^2 for the complex half)."""
    return 5.0 * n * (n // 2 + 1) * math.log2(n * n)


def pruned_macs(n_rows_out: int, n_cols_out: int, n_k: int, n_u: int, n_v: int) -> int:
    """Real multiply-adds per grid point of the pruned transform: (n_k cos/sin rows) x U x 2V + n_k x 2V x C'.

    n_rows_out, n_cols_out : the displacement rows and columns needed; n_k : cosine + sine rows (about
    n_rows_out); n_u, n_v : spectrum rows and half-spectrum columns kept (N and N/2+1 without band limit).
    """
    return n_k * n_u * 2 * n_v + n_k * 2 * n_v * n_cols_out + n_rows_out * n_cols_out


def cost_model(n: int, shifts: np.ndarray, n_u: int | None = None, n_v: int | None = None) -> dict:
    """FLOPs and float32 bytes per grid point of both transforms for an n x n box and displacements ``shifts``.

    Returns dict(fft_flop, pruned_flop, fft_bytes, pruned_bytes, n_u, n_v, rows, cols).
    """
    h = n // 2 + 1
    n_u = n if n_u is None else n_u
    n_v = h if n_v is None else n_v
    rows, cols = np.unique(shifts[:, 0]), np.unique(shifts[:, 1])
    ks = np.unique(np.minimum(rows, n - rows))
    n_k = len(ks) + int(np.sum((ks > 0) & (2 * ks != n)))
    mult = 6.0 * n_u * n_v
    return dict(fft_flop=_fft_flops(n) + 6.0 * n * h, pruned_flop=2.0 * pruned_macs(len(rows), len(cols), n_k, n_u,
                                                                                     n_v) + mult,
                fft_bytes=8 * n * h * 2 + 4 * n * n, pruned_bytes=8 * n_u * n_v * 2 + 4 * n_k * 2 * n_v * 2
                + 4 * len(rows) * len(cols) * 3, n_u=n_u, n_v=n_v, rows=len(rows), cols=len(cols))


class FFTTransform:
    """Multiply and one batched irfft2 per grid point; the displacements are gathered from the full image."""

    name = "fft"

    def __init__(self, n: int, shifts: np.ndarray, bk):
        self.n, self.bk = n, bk
        self.flat = (shifts[:, 0] * n + shifts[:, 1]).astype(np.int64)  # (D,) into the N*N image

    def correlate(self, P, G):
        """P (B, N, H), G (ni, C, N, H) complex -> correlations (B, ni, C, N*N) real; index with ``self.flat``."""
        b, (ni, c) = len(P), G.shape[:2]
        corr = self.bk.fft.irfft2(P[:, None, None] * G[None], s=(self.n, self.n))
        return corr.reshape(b, ni, c, self.n * self.n)


class PrunedTransform:
    """The inverse DFT at the displacement rows x columns only, as real GEMMs (see module docstring).

    n : box; shifts : (D, 2) correlation indices (row, column); bk : backend; real : float32 or float64;
    band_mask : (N, H) bool host array of the spectrum entries that may be non-zero (None: all).
    """

    name = "pruned"

    def __init__(self, n: int, shifts: np.ndarray, bk, real=np.float32, band_mask: np.ndarray | None = None):
        self.n, self.bk, self.real = n, bk, np.dtype(real)
        h = n // 2 + 1
        mask = np.ones((n, h), bool) if band_mask is None else np.asarray(band_mask, bool)
        self.u = np.flatnonzero(mask.any(axis=1))  # kept spectrum rows
        self.v = np.flatnonzero(mask.any(axis=0))  # kept half-spectrum columns
        if len(self.u) == 0:  # all zero: keep one row/column so that shapes stay valid (the result is 0)
            self.u, self.v = np.array([0]), np.array([0])
        self.full_u, self.full_v = len(self.u) == n, len(self.v) == h
        rows, cols = np.unique(shifts[:, 0]), np.unique(shifts[:, 1])
        k_of_row = np.minimum(rows, n - rows) % n
        ka = np.unique(k_of_row)  # cosine rows
        kb = ka[(ka > 0) & (2 * ka != n)]  # sine rows (B_0 = B_{N/2} = 0)
        a_idx = np.searchsorted(ka, k_of_row)
        b_pos = np.searchsorted(kb, k_of_row)
        has_b = (k_of_row > 0) & (2 * k_of_row != n)
        self.b_idx = np.where(has_b, b_pos, len(kb))  # len(kb): a zero row
        self.sign = np.where(rows > n // 2, -1.0, 1.0)  # Y[N-k] = A_k - i B_k
        self.a_idx, self.n_a, self.n_b, self.n_c = a_idx, len(ka), len(kb), len(cols)
        self.flat = (np.searchsorted(rows, shifts[:, 0]) * len(cols) + np.searchsorted(cols, shifts[:, 1])).astype(
            np.int64)
        self.cost = cost_model(n, shifts, len(self.u), len(self.v))
        two_pi = 2.0 * np.pi / n
        u = self.u.astype(np.int64)
        m1 = np.concatenate([np.cos(two_pi * ((u[None] * ka[:, None]) % n)),
                             np.sin(two_pi * ((u[None] * kb[:, None]) % n))])  # (n_a + n_b, U)
        v = self.v.astype(np.int64)
        phi = two_pi * ((v[:, None] * cols[None].astype(np.int64)) % n)  # (V, C')
        w = np.where((v == 0) | (2 * v == n), 1.0, 2.0)[:, None] / float(n * n)
        edge = ((v == 0) | (2 * v == n))[:, None]
        cos_w, sin_w = w * np.cos(phi), np.where(edge, 0.0, w * np.sin(phi))
        m2a = np.empty((2 * len(v), len(cols)))
        m2a[0::2], m2a[1::2] = cos_w, -sin_w  # a = sum_v w (Ar cos - Ai sin)
        m2b = np.empty_like(m2a)
        m2b[0::2], m2b[1::2] = -sin_w, -cos_w  # b = sum_v w (-Br sin - Bi cos)
        self.m1, self.m2a, self.m2b = (bk.asarray(m, dtype=self.real) for m in (m1, m2a, m2b))
        self._a_idx, self._b_idx = bk.asarray(self.a_idx), bk.asarray(self.b_idx)
        self._sign = bk.asarray(self.sign, dtype=self.real)
        self._u, self._v = bk.asarray(self.u), bk.asarray(self.v)

    def _sub(self, a):
        """a (..., N, H) -> (..., U, V): the kept rows and columns (no copy without band limit)."""
        if not self.full_u:
            a = a[..., self._u, :]
        if not self.full_v:
            a = a[..., self._v]
        return a

    def correlate(self, P, G):
        """P (B, N, H), G (ni, C, N, H) complex -> correlations (B, ni, C, R*C') real; index with ``self.flat``."""
        xp = self.bk.xp
        b, (ni, c) = len(P), G.shape[:2]
        g = b * ni * c
        Pt = xp.ascontiguousarray(xp.moveaxis(self._sub(P), -2, 0))[:, :, None, None, :]  # (U, B, 1, 1, V)
        Gt = xp.ascontiguousarray(xp.moveaxis(self._sub(G), -2, 0))[:, None]  # (U, 1, ni, C, V)
        nu, nv = Pt.shape[0], Pt.shape[-1]
        cplx = xp.complex64 if self.real == np.float32 else xp.complex128
        Z = xp.empty((nu, b, ni, c, nv), dtype=cplx)
        xp.multiply(Pt, Gt, out=Z)
        y1 = self.m1 @ _as_real(Z, self.real, xp).reshape(nu, g * 2 * nv)  # (n_a + n_b, G 2V)
        ya = (y1[:self.n_a].reshape(self.n_a * g, 2 * nv) @ self.m2a).reshape(self.n_a, g, self.n_c)
        yb = xp.zeros((self.n_b + 1, g, self.n_c), dtype=self.real)
        if self.n_b:
            yb[:self.n_b] = (y1[self.n_a:].reshape(self.n_b * g, 2 * nv) @ self.m2b).reshape(self.n_b, g, self.n_c)
        out = ya[self._a_idx] + self._sign[:, None, None] * yb[self._b_idx]  # (R, G, C')
        return xp.ascontiguousarray(xp.moveaxis(out, 0, 1)).reshape(b, ni, c, -1)


def _as_real(z, real, xp):
    """Complex (..., V) C-contiguous -> real (..., 2V) (re, im interleaved), a view where the array module can."""
    try:
        return z.view(real)
    except (ValueError, TypeError, NotImplementedError):  # pragma: no cover - array modules without such views
        return xp.stack([z.real, z.imag], axis=-1)


def support_mask(a, bk, axes) -> np.ndarray:
    """(N, H) host bool: where ``a`` (..., N, H) is non-zero anywhere along ``axes``."""
    return bk.asnumpy((a != 0).any(axis=axes))


def choose(transform: str, n: int, shifts: np.ndarray, bk, band_mask: np.ndarray | None = None) -> str:
    """'fft' or 'pruned' for ``transform`` in {'auto', 'fft', 'pruned'}.

    auto: pruned when its FLOPs are at most 8 times the FFT's. GPU: SGEMM runs at ~45 TFLOPS, cuFFT at 224 px
    at ~2 effective TFLOPS. CPU (measured, 2 cores, OpenBLAS vs pocketfft, float32 / float64): 224 px with
    81 x 81 shifts (FLOP ratio 5.3) 132 vs 268 us / 302 vs 1038 us per grid point; 64 px with 21 x 21 (ratio
    1.8) 6.7 vs 22.6 / 10.8 vs 95 us; 24 px with 7 x 7 (ratio 0.8) 1.5 vs 4.6 / 2.9 vs 6.7 us.
    """
    if transform in ("fft", "pruned"):
        return transform
    if transform != "auto":
        raise ValueError(f"transform must be auto, fft or pruned, got {transform!r}")
    nu = n if band_mask is None else max(1, int(band_mask.any(axis=1).sum()))
    nv = n // 2 + 1 if band_mask is None else max(1, int(band_mask.any(axis=0).sum()))
    cost = cost_model(n, shifts, nu, nv)
    return "pruned" if cost["pruned_flop"] <= 8.0 * cost["fft_flop"] else "fft"
