"""The correlation at the few displacements BioEM needs, without a full inverse FFT per grid point.

For one grid point (image i, orientation o, CTF point c) the integration needs the circular correlation

    corr[r, c'] = irfft2(Z, s=(N, N))[r, c'],   Z = P_o K_ic conj(I_i)   (N x H half spectrum, H = N/2 + 1)

only at the displacement rows r in R and columns c' in C' (81 x 81 of 224 x 224 in the benchmark). Two
transforms compute it (:func:`choose` picks one), behind the interface :class:`CorrelationTransform` that
:mod:`cryopipe.bioem.integrate` calls (as it calls :class:`~cryopipe.bioem.factored.FactoredTransform`):

``FFTTransform``: the multiply, one batched irfft2 (cuFFT / pocketfft) of N x N per grid point, then a gather.

``PrunedTransform``: the inverse DFT evaluated only at R x C', as real matrix products over a batch of G grid
points (GEMMs: cuBLAS on the GPU, BLAS on the CPU), folded by the symmetries of the cosine and sine:

1. fold the rows: for p = 0 .. N/2 and q = N - p, Zs[p] = Z[p] + Z[q] and Zd[p] = Z[p] - Z[q] (p = 0 and
   p = N/2 have no partner: Zs = Z, no Zd). Then the row sums of the inverse DFT at k = |r| are
   A_k = sum_p Zs[p] cos(2 pi p k/N) and B_k = sum_p Zd[p] sin(2 pi p k/N), and Y[k] = A_k + i B_k,
   Y[N-k] = A_k - i B_k. One pass (a GPU kernel) forms Zs, Zd from P and K conj(I) in the layout the GEMMs
   read: (re/im, p, grid point, v).
2. rows: A = cos (n_A x P_s) @ Zs, B = sin (n_B x P_d) @ Zd, each for the real and the imaginary part.
3. columns, folded the same way (c' and N - c' share cos and differ in the sign of sin; the c2r weights
   w_v = 1, 2, .., 2, 1 of irfft and its dropped imaginary parts at v = 0, N/2 are in the matrices):
   X1 = Re A @ Wcos, X2 = Im A @ Wsin, X3 = Im B @ Wcos, X4 = Re B @ Wsin, and
   corr[r, c'] = X1 - s_c X2 - s_r (X3 + s_c X4), s_r, s_c = -1 for r, c' > N/2 (+1 otherwise).
   The GPU reduction kernel reads X1..X4 at each displacement; nothing N x N is ever formed.

The kept spectrum rows and columns are those where Z can be non-zero: all, or fewer when the inputs are
band-limited (exact zeros outside a radius: e.g. CTF kernels or images low-pass filtered to a working
resolution). Nothing is approximated: both transforms give the same numbers up to floating-point rounding
(tests/bioem/test_pruned.py: equal ln P to 1e-4 relative in float32, 1e-9 in float64).

Counts per grid point (N = 224, H = 113, 81 x 81 displacements, float32; MAC = multiply-add = 2 FLOP):

=============================================  ===================  ===================  =====================
option                                         arithmetic           bytes moved (HBM)    time per grid point
=============================================  ===================  ===================  =====================
FFT path (multiply + irfft2 + gather)          ~2 MFLOP (5 N H      Z 202 KB written +   measured 1.72 us
                                               log2 N^2) + 0.15 M   read, 200 KB out,    (H100; cuFFT 224 =
                                               for the multiply     gather 26 KB: ~0.7   2^5 7, floor 1.12 us)
                                                                    MB
rows unfolded (until 2026-12): 81 x 224 x 226  5.58 M MAC =         Z 2 x 202 KB, Y 2 x  measured 1.03 us
+ 81 x 226 x 81 real MAC, Z by broadcasting,   11.2 MFLOP           73 KB, 3 copies of   (H100), GEMMs alone
the displacements gathered and transposed                           26 KB: ~0.9 MB       0.50 us
folded (now): rows 41 x 113 x 226 + 40 x 111   2.79 M MAC =         Zs+Zd 202 KB written predicted ~0.27 us
x 226, columns 81 x 113 x 81; fold kernel      5.6 MFLOP (+0.2 M    + read, A/B 73 KB    (H200); measured
writes the GEMM layout; reduction reads X1..4  for the fold)        x 2, X 26 KB x 2:    0.57 us: fold 0.17,
                                                                    ~0.6 MB              GEMMs 0.26 (64-row
                                                                                         tiles for 41 rows),
                                                                                         reduction 0.12
padding 224 to a faster FFT size               not allowed: a circular correlation of another size is another
                                               result (wrap-around differs); 224 is already 2^5 7
=============================================  ===================  ===================  =====================

TF32 tensor cores are not used: their 10-bit mantissa does not keep ln P within float32 tolerance (ln P
amplifies the relative error of E by ~Np/2, see tests/bioem/test_pruned.py).
"""

from __future__ import annotations

import abc
import functools
import math

import numpy as np


def _fft_flops(n: int) -> float:
    """Nominal FLOPs of one inverse real FFT of n x n (5 N H log2 N^2 for the complex half)."""
    return 5.0 * n * (n // 2 + 1) * math.log2(n * n)


def fold_indices(idx: np.ndarray, n: int):
    """Folded index set of ``idx`` (rows or columns mod n): (k values for cosines, k values for sines, per-entry
    cosine position, sine position or -1, sign of the sine: -1 above n/2)."""
    k_of = np.minimum(idx, n - idx) % n
    kc = np.unique(k_of)
    ks = kc[(kc > 0) & (2 * kc != n)]
    has_s = (k_of > 0) & (2 * k_of != n)
    return (kc, ks, np.searchsorted(kc, k_of), np.where(has_s, np.searchsorted(ks, k_of), -1),
            np.where(idx > n // 2, -1.0, 1.0))


def kept_spectrum(n: int, band_mask: np.ndarray | None):
    """(kept rows (N,), kept half-spectrum columns (H,)) bool of an (N, H) band mask (None: all); at least one
    column is kept so that shapes stay valid."""
    mask = np.ones((n, n // 2 + 1), bool) if band_mask is None else np.asarray(band_mask, bool)
    kept_rows, kept_cols = mask.any(axis=1), mask.any(axis=0)
    if not kept_cols.any():
        kept_cols[0] = True
    return kept_rows, kept_cols


def row_pairs(kept_rows: np.ndarray, n: int):
    """(p, q) pairs of spectrum rows (q = N - p) with either kept; and those with q != p (the Zd rows)."""
    p = np.arange(n // 2 + 1)
    q = (n - p) % n
    keep = kept_rows[p] | kept_rows[q]
    if not keep.any():  # all zero: keep row 0 so that shapes stay valid (the result is 0)
        keep[0] = True
    d = keep & (q != p)
    return p[keep], q[keep], p[d], q[d]


def cost_model(n: int, shifts: np.ndarray, kept_rows: np.ndarray | None = None,
               kept_cols: np.ndarray | None = None) -> dict:
    """FLOPs and float32 bytes per grid point of both transforms for an n x n box and displacements ``shifts``.

    kept_rows (N,), kept_cols (H,) bool: spectrum rows / half-spectrum columns that may be non-zero (default all).
    Returns dict(fft_flop, pruned_flop, pruned_macs, fft_bytes, pruned_bytes, rows, cols): pruned_macs are the
    GEMMs' real multiply-adds, pruned_flop adds the fold (two complex products and their sum and difference per
    folded entry, 16 FLOP) and the combination of X1..X4 (6 FLOP per displacement).
    """
    h = n // 2 + 1
    kept_rows = np.ones(n, bool) if kept_rows is None else np.asarray(kept_rows, bool)
    kept_cols = np.ones(h, bool) if kept_cols is None else np.asarray(kept_cols, bool)
    ps, _, pd, _ = row_pairs(kept_rows, n)
    nv = max(1, int(kept_cols.sum()))
    rows, cols = np.unique(shifts[:, 0]), np.unique(shifts[:, 1])
    ka, kb = fold_indices(rows, n)[:2]
    kc, ks = fold_indices(cols, n)[:2]
    na, nb, nc = len(ka), len(kb), len(kc) + len(ks)
    macs = 2 * nv * (na * len(ps) + nb * len(pd)) + (na + nb) * nv * nc
    d = len(shifts)
    return dict(fft_flop=_fft_flops(n) + 6.0 * n * h, pruned_flop=2.0 * macs + 16.0 * len(ps) * nv + 6.0 * d,
                pruned_macs=macs, fft_bytes=8 * n * h * 2 + 4 * n * n,
                pruned_bytes=4 * (2 * 2 * (len(ps) + len(pd)) * nv + 2 * 2 * (na + nb) * nv + 2 * (na + nb) * nc),
                rows=len(rows), cols=len(cols))


class CorrelationTransform(abc.ABC):
    """What :func:`cryopipe.bioem.integrate.integrate` asks of a correlation transform (:class:`FFTTransform`,
    :class:`PrunedTransform`, :class:`~cryopipe.bioem.factored.FactoredTransform`); all give the same numbers to
    rounding.

    For a block of grid points (B orientations x ni images x C CTF points):

    * :meth:`correlate` computes the correlations in the transform's own layout ("parts");
    * :meth:`at_shifts` reads them at the displacements (the array code), :meth:`kernel_args` hands them to the GPU
      reduction kernel of :mod:`cryopipe.bioem.kernels`;
    * :meth:`stats` says what was used, for the stage's record;
    * :meth:`bytes_per_pair`, :meth:`bytes_per_kernel_image` and :meth:`max_orientations` size the blocks. The
      defaults are the FFT path's: a product spectrum and a full correlation image per grid point, 64
      orientations per block.

    Attributes: ``name``, ``n`` (the box) and ``n_shifts`` (D, the displacements).
    """

    name: str = ""
    n: int
    n_shifts: int

    @abc.abstractmethod
    def correlate(self, P, K, conj_spectra, shared: bool):
        """P (B, N, H) complex projections; K (nk, C, N, H) real CTF kernels, nk = 1 when ``shared`` by all images
        else one set per image; conj_spectra (ni, N, H) the images' conj(rfft2) -> parts for :meth:`at_shifts` and
        :meth:`kernel_args`."""

    @abc.abstractmethod
    def at_shifts(self, parts):
        """(B, ni, C, D) correlation at the displacements, in their loop order, from :meth:`correlate`."""

    @abc.abstractmethod
    def kernel_args(self, parts):
        """(loader name, arguments of the reduction kernel's value load) for :mod:`cryopipe.bioem.kernels`."""

    def stats(self) -> dict:
        """The transform used and its counts (for the stage's provenance record)."""
        return {"transform": self.name}

    def bytes_per_pair(self, n_ctf: int) -> int:
        """Device bytes per (orientation, image) pair of a block."""
        n = self.n
        return n_ctf * (n * (n // 2 + 1) * 16 + n * n * 8)

    def bytes_per_kernel_image(self, n_ctf: int) -> int:
        """Device bytes held per image that has its own CTF kernel set (beyond :meth:`bytes_per_pair`)."""
        return 0

    def max_orientations(self, shared_kernels: bool) -> int:
        """Most orientations per block (with kernels shared by all images or one set per image)."""
        return 64


class FFTTransform(CorrelationTransform):
    """Multiply and one batched irfft2 per grid point; the displacements are gathered from the full image."""

    name = "fft"

    def __init__(self, n: int, shifts: np.ndarray, bk):
        self.n, self.bk = n, bk
        self.flat = (shifts[:, 0] * n + shifts[:, 1]).astype(np.int64)  # (D,) into the N*N image
        self.n_shifts = len(shifts)
        self._flat = bk.asarray(self.flat)

    def correlate(self, P, K, conj_spectra, shared: bool):
        """:meth:`correlate_products` of G = K conj(I) -> correlations (B, ni, C, N*N) real."""
        return self.correlate_products(P, K * conj_spectra[:, None])

    def correlate_products(self, P, G):
        """P (B, N, H), G (ni, C, N, H) complex -> correlations (B, ni, C, N*N) real."""
        b, (ni, c) = len(P), G.shape[:2]
        corr = self.bk.fft.irfft2(P[:, None, None] * G[None], s=(self.n, self.n))
        return corr.reshape(b, ni, c, self.n * self.n)

    def at_shifts(self, corr):
        """(B, ni, C, D) correlation at the displacements, in their loop order."""
        return corr[..., self._flat]

    def kernel_args(self, corr):
        """('fft', arguments of the reduction kernel's value load) for :mod:`cryopipe.bioem.kernels`."""
        xp = self.bk.xp
        return "fft", (xp.ascontiguousarray(corr), self._flat, xp.int64(corr.shape[-1]))


_FOLD_SOURCE = r"""
extern "C" __global__ void bioem_fold_T(
    const T2* P, const T2* G, const int* row_a, const int* row_b, const int n_s, const int n_d, const int n_sp,
    const int n_dp, const int* cols, const int nv, const int nvp, const int n_ig, const long long n_points,
    const int n, const int h, const int per_block, T* zs, T* zd)
{
    // block: folded row r (blockIdx.y) x per_block consecutive grid points; threads along the kept columns v
    // (padding written as zeros)
    const int r = blockIdx.y;
    const bool is_d = r >= n_sp;
    const int rr = is_d ? r - n_sp : r, rows_p = is_d ? n_dp : n_sp;
    const bool real_row = rr < (is_d ? n_d : n_s);
    const int u1 = real_row ? row_a[is_d ? n_s + rr : rr] : 0, u2 = real_row ? row_b[is_d ? n_s + rr : rr] : 0;
    const long long part = (long long)rows_p * n_points * nvp;
    const long long g0 = (long long)blockIdx.x * per_block;
    const long long g1 = min(g0 + per_block, n_points);
    for (int v = threadIdx.x; v < nvp; v += blockDim.x) {
        const bool live = real_row && v < nv;
        const int col = live ? cols[v] : 0;
        long long b = g0 / n_ig, ig = g0 - b * n_ig;  // grid point g = b n_ig + ig, stepped without division
        for (long long g = g0; g < g1; ++g, ig = (ig + 1 == n_ig) ? 0 : ig + 1, b += (ig == 0)) {
            T re = 0, im = 0;
            if (live) {
                const T2 p1 = P[(b * n + u1) * h + col], k1 = G[(ig * n + u1) * h + col];
                re = p1.x * k1.x - p1.y * k1.y;
                im = p1.x * k1.y + p1.y * k1.x;
                if (u2 != u1) {
                    const T2 p2 = P[(b * n + u2) * h + col], k2 = G[(ig * n + u2) * h + col];
                    const T re2 = p2.x * k2.x - p2.y * k2.y, im2 = p2.x * k2.y + p2.y * k2.x;
                    re = is_d ? re - re2 : re + re2;
                    im = is_d ? im - im2 : im + im2;
                }
            }
            T* out = (is_d ? zd : zs) + ((long long)rr * n_points + g) * nvp + v;
            out[0] = re;
            out[part] = im;
        }
    }
}
"""

_FOLD_POINTS_PER_BLOCK = 32

ALIGN = 8  # GEMM dimensions padded with zeros to multiples of this (measured on H200: GEMMs 0.268 vs 0.262 us unpadded)


def _padded(k: int) -> int:
    return -(-k // ALIGN) * ALIGN


@functools.cache
def _fold_kernel(xp, dtype_name: str):
    name = f"bioem_fold_{dtype_name}"
    types = f"typedef {dtype_name} T;\ntypedef {dtype_name}2 T2;\n"
    return xp.RawKernel(types + _FOLD_SOURCE.replace("bioem_fold_T", name), name)


class PrunedTransform(CorrelationTransform):
    """The inverse DFT at the displacement rows x columns only, folded, as real GEMMs (see module docstring).

    n : box; shifts : (D, 2) correlation indices (row, column); bk : backend; real : float32 or float64;
    band_mask : (N, H) bool host array of the spectrum entries that may be non-zero (None: all).
    Attributes u, v: the kept spectrum rows and half-spectrum columns. The GEMMs' inner and outer dimensions
    (folded rows, kept columns, cosine / sine columns) are padded with zeros to multiples of ``ALIGN``.
    """

    name = "pruned"

    def __init__(self, n: int, shifts: np.ndarray, bk, real=np.float32, band_mask: np.ndarray | None = None):
        self.n, self.bk, self.real, self.n_shifts = n, bk, np.dtype(real), len(shifts)
        kept_rows, kept_cols = kept_spectrum(n, band_mask)
        self.u, self.v = np.flatnonzero(kept_rows), np.flatnonzero(kept_cols)
        self.cost = cost_model(n, shifts, kept_rows, kept_cols)
        ps, qs, pd, qd = row_pairs(kept_rows, n)
        self.n_s, self.n_d = len(ps), len(pd)
        ka, kb, ia, ib, s_row = fold_indices(shifts[:, 0], n)
        kc, ks, jc, js, s_col = fold_indices(shifts[:, 1], n)
        self.n_a, self.n_b = len(ka), len(kb)
        self.n_sp, self.n_dp, self.nvp = _padded(self.n_s), _padded(self.n_d), _padded(len(self.v))
        self.n_kc, self.n_ks = _padded(len(kc)), _padded(len(ks))
        two_pi = 2.0 * np.pi / n
        m_cos = np.zeros((self.n_a, self.n_sp))
        m_cos[:, :self.n_s] = np.cos(two_pi * ((ka[:, None] * ps[None]) % n))  # (n_A, P_s)
        m_sin = np.zeros((self.n_b, self.n_dp))
        m_sin[:, :self.n_d] = np.sin(two_pi * ((kb[:, None] * pd[None]) % n))  # (n_B, P_d)
        v = self.v.astype(np.int64)
        edge = (v == 0) | (2 * v == n)
        w = np.where(edge, 1.0, 2.0)[:, None] / float(n * n)
        w_cos, w_sin = np.zeros((self.nvp, self.n_kc)), np.zeros((self.nvp, self.n_ks))
        w_cos[:len(v), :len(kc)] = w * np.cos(two_pi * ((v[:, None] * kc[None]) % n))  # (V, n_kc)
        w_sin[:len(v), :len(ks)] = np.where(edge[:, None], 0.0, w * np.sin(two_pi * ((v[:, None] * ks[None]) % n)))
        self.m_cos, self.m_sin, self.w_cos, self.w_sin = (bk.asarray(m, dtype=self.real)
                                                          for m in (m_cos, m_sin, w_cos, w_sin))
        self.table = np.stack([ia, ib, jc, js]).astype(np.int32)  # (4, D): X row blocks and columns per shift
        self.signs = np.stack([s_row, s_col])  # (2, D)
        self._table, self._signs = bk.asarray(self.table), bk.asarray(self.signs, dtype=self.real)
        self._rows = bk.asarray(np.concatenate([ps, pd]).astype(np.int32))
        self._partners = bk.asarray(np.concatenate([qs, qd]).astype(np.int32))
        self.ps, self.qs = ps, qs
        self._v32 = bk.asarray(self.v.astype(np.int32))

    def fold_rows(self, P, G):
        """Zs (2, P_s, g, V) and Zd (2, P_d, g, V) real (padded), g = B ni C grid points (module docstring)."""
        xp = self.bk.xp
        b, (ni, c) = len(P), G.shape[:2]
        g, nv = b * ni * c, len(self.v)
        if self.bk.is_gpu:
            zs = xp.empty((2, self.n_sp, g, self.nvp), dtype=self.real)
            zd = xp.empty((2, self.n_dp, g, self.nvp), dtype=self.real)
            name = "float" if self.real == np.float32 else "double"
            per = _FOLD_POINTS_PER_BLOCK
            _fold_kernel(xp, name)((-(-g // per), self.n_sp + self.n_dp), (min(256, -(-self.nvp // 32) * 32),),
                                   (xp.ascontiguousarray(P), xp.ascontiguousarray(G), self._rows, self._partners,
                                    xp.int32(self.n_s), xp.int32(self.n_d), xp.int32(self.n_sp),
                                    xp.int32(self.n_dp), self._v32, xp.int32(nv), xp.int32(self.nvp),
                                    xp.int32(ni * c), xp.int64(g), xp.int32(self.n), xp.int32(P.shape[-1]),
                                    xp.int32(per), zs, zd))
            return zs, zd
        # host: one spectrum row pair at a time, the products shared by Zs and Zd (cache-sized temporaries)
        zs = np.zeros((2, self.n_sp, g, self.nvp), dtype=self.real)
        zd = np.zeros((2, self.n_dp, g, self.nvp), dtype=self.real)
        pt = np.ascontiguousarray(P[..., self.v].transpose(1, 0, 2))  # (N, B, V)
        gt = np.ascontiguousarray(G[..., self.v].reshape(ni * c, self.n, nv).transpose(1, 0, 2))  # (N, ni C, V)
        za, zb = (np.empty((b, ni * c, nv), dtype=np.result_type(P, G)) for _ in range(2))
        zs_v = zs.reshape(2, self.n_sp, b, ni * c, self.nvp)[..., :nv]
        zd_v = zd.reshape(2, self.n_dp, b, ni * c, self.nvp)[..., :nv]
        r_d = 0
        for r, (p, q) in enumerate(zip(self.ps, self.qs, strict=True)):
            np.multiply(pt[p][:, None], gt[p][None], out=za)
            if q == p:
                zs_v[0, r], zs_v[1, r] = za.real, za.imag
                continue
            np.multiply(pt[q][:, None], gt[q][None], out=zb)
            np.add(za.real, zb.real, out=zs_v[0, r])
            np.add(za.imag, zb.imag, out=zs_v[1, r])
            np.subtract(za.real, zb.real, out=zd_v[0, r_d])
            np.subtract(za.imag, zb.imag, out=zd_v[1, r_d])
            r_d += 1
        return zs, zd

    def gemms(self, zs, zd):
        """The row and column GEMMs on folded spectra from :meth:`fold_rows` (g grid points) -> (X1, X2, X3, X4)
        real: (n_A, g, n_kc), (n_A, g, n_ks), (n_B, g, n_kc), (n_B, g, n_ks)."""
        g, nv = zs.shape[2], self.nvp
        a = self.m_cos @ zs.reshape(2, self.n_sp, g * nv)  # (2, n_A, g V): Re A, Im A
        x1 = (a[0].reshape(self.n_a * g, nv) @ self.w_cos).reshape(self.n_a, g, self.n_kc)
        x2 = (a[1].reshape(self.n_a * g, nv) @ self.w_sin).reshape(self.n_a, g, self.n_ks)
        if self.n_b:
            bb = self.m_sin @ zd.reshape(2, self.n_dp, g * nv)  # (2, n_B, g V): Re B, Im B
            x3 = (bb[1].reshape(self.n_b * g, nv) @ self.w_cos).reshape(self.n_b, g, self.n_kc)
            x4 = (bb[0].reshape(self.n_b * g, nv) @ self.w_sin).reshape(self.n_b, g, self.n_ks)
        else:
            x3 = x4 = self.bk.xp.zeros((0, g, 1), dtype=self.real)
        return x1, x2, x3, x4

    def correlate(self, P, K, conj_spectra, shared: bool):
        """:meth:`correlate_products` of G = K conj(I)."""
        return self.correlate_products(P, K * conj_spectra[:, None])

    def correlate_products(self, P, G):
        """P (B, N, H), G (ni, C, N, H) complex -> ((B, ni, C), :meth:`gemms` of the folded spectra), to read with
        :meth:`at_shifts` or the GPU kernel."""
        b, (ni, c) = len(P), G.shape[:2]
        return (b, ni, c), self.gemms(*self.fold_rows(P, G))

    def at_shifts(self, parts):
        """(B, ni, C, D) correlation at the displacements, in their loop order, from :meth:`correlate`."""
        xp = self.bk.xp
        (b, ni, c), xs = parts
        out = combine_at_shifts(xs, self._table, self._signs, lambda x, rows, cols: x[rows, :, cols], xp)  # (D, g)
        return xp.ascontiguousarray(out.T).reshape(b, ni, c, -1)

    def kernel_args(self, parts):
        """('folded', arguments of the reduction kernel's value load) for :mod:`cryopipe.bioem.kernels`."""
        xp = self.bk.xp
        (b, ni, c), xs = parts
        x1, x2, x3, x4 = (xp.ascontiguousarray(x) for x in xs)
        return "folded", (x1, x2, x3, x4, self._table, self._signs, xp.int64(b * ni * c), xp.int32(self.n_kc),
                          xp.int32(self.n_ks))

    def stats(self) -> dict:
        return dict(transform=self.name, kept_rows=len(self.u), kept_columns=len(self.v),
                    flop_per_point=self.cost["pruned_flop"])


def combine_at_shifts(xs, table, signs, take, xp):
    """Correlations at the displacements from a folded transform's (X1, X2, X3, X4):
    X1 - s_c X2 - s_r (X3 + s_c X4), with X2, X4 zero where the column has no sine and X3, X4 where the row has
    none. table (4, D) = (ia, ib, jc, js), signs (2, D) = (s_row, s_col) on ``xp``'s device; take(x, rows, cols)
    gathers x at (D,) row and column indices with the displacement axis first. Returns take's shape."""
    x1, x2, x3, x4 = xs
    ia, ib, jc, js = (table[k] for k in range(4))
    first = take(x1, ia, jc)

    def per_shift(a):  # (D,) -> broadcastable against take's result
        return a.reshape(-1, *([1] * (first.ndim - 1)))

    s_row, s_col, has_s, has_b = per_shift(signs[0]), per_shift(signs[1]), per_shift(js >= 0), per_shift(ib >= 0)
    js0, ib0 = xp.maximum(js, 0), xp.maximum(ib, 0)

    def pick(x, rows, cols, ok):
        return 0 if x.size == 0 else xp.where(ok, take(x, rows, cols), 0)

    out = first - s_col * pick(x2, ia, js0, has_s)
    return out - s_row * (pick(x3, ib0, jc, has_b) + s_col * pick(x4, ib0, js0, has_b & has_s))


def support_mask(a, bk, axes) -> np.ndarray:
    """(N, H) host bool: where ``a`` (..., N, H) is non-zero anywhere along ``axes``."""
    return bk.asnumpy((a != 0).any(axis=axes))


def choose(transform: str, n: int, shifts: np.ndarray, bk, band_mask: np.ndarray | None = None) -> str:
    """'fft' or 'pruned' for ``transform`` in {'auto', 'fft', 'pruned'}.

    auto: pruned when its FLOPs are at most 8 times the FFT's: GEMMs run at ~45 TFLOP/s on the GPU, cuFFT at
    224 px at ~2 effective TFLOP/s; on the CPU (2 cores, OpenBLAS vs pocketfft) the unfolded GEMMs already
    beat the FFT at 24 px with 7 x 7 shifts (1.5 vs 4.6 us per grid point).
    """
    if transform in ("fft", "pruned"):
        return transform
    if transform != "auto":
        raise ValueError(f"transform must be auto, fft or pruned, got {transform!r}")
    rows = None if band_mask is None else band_mask.any(axis=1)
    cols = None if band_mask is None else band_mask.any(axis=0)
    cost = cost_model(n, shifts, rows, cols)
    return "pruned" if cost["pruned_flop"] <= 8.0 * cost["fft_flop"] else "fft"
