"""The pruned inverse DFT with the CTF moved into the row matrices: GEMMs over orientations, not grid points.

:class:`~cryopipe.bioem.pruned.PrunedTransform` forms Z = P_o K_ic conj(I_i) for every grid point (o, i, c) and
multiplies it by fixed cosine / sine matrices: a fold pass that writes 200 KB per grid point and GEMMs whose
small dimension (41 displacement rows) wastes most of cuBLAS's tiles. Here the factor that depends on the CTF
point goes into the matrix instead, and the data operand is the product Q_oi = P_o conj(I_i), formed once per
(orientation, image) pair, not once per CTF point:

    A_k(o, i, c, v) = sum_p cos(2 pi p k / N) K_ic[p, v] Q_oi[p, v],   B_k likewise with sin.

Folding the rows p and q = N - p (as :mod:`cryopipe.bioem.pruned`) with S = (K[p] + K[q]) / 2 and
D = (K[p] - K[q]) / 2 (for p = 0, N/2: S = K[p], D = 0), Qs = Q[p] + Q[q] and Qd = Q[p] - Q[q]:

    K[p] Q[p] + K[q] Q[q] = S Qs + D Qd,    K[p] Q[p] - K[q] Q[q] = S Qd + D Qs,

so for each kept column v and CTF kernel the row GEMMs are

    A(v) = [cos S | cos D] @ [Qs; Qd],   B(v) = [sin D | sin S] @ [Qs; Qd]
    ((n_A C) x (P_s + P_d)) @ ((P_s + P_d) x orientations), batched over (v, kernel).

A CTF that is mirror-symmetric in the row frequency (K[p] = K[q]: every CTF without astigmatism, BioEM's model,
and any astigmatic CTF with its axes on the image axes) has D = 0, and half of each product drops out: the row
GEMMs then do exactly the folded transform's multiply-adds. Otherwise they do twice as many, still in the better
shape. The matrices cost one pass per CTF kernel set (cached when all images share one set).

The columns are then summed as in :mod:`cryopipe.bioem.pruned` (one GEMM each: X1 = w_cos^T Re A, X2 = w_sin^T
Im A, X3 = w_cos^T Im B, X4 = w_sin^T Re B, contracting the kept columns), and the correlation at displacement
(r, c') is X1 - s_c X2 - s_r (X3 + s_c X4). Layout of every X: (column index, kernel, row index, CTF point,
image within the kernel's images, orientation), orientation fastest: the GPU reduction kernel
(:mod:`cryopipe.bioem.kernels`) gives one thread per grid point and reads 32 orientations in one transaction.

Counts per grid point (224 px, 81 x 81 displacements, float32, D = 0): row GEMMs 2.05 M multiply-adds (as the
folded transform) with a (1312 x 120) @ (120 x orientations) shape, column GEMMs 0.74 M; written and read: the
row outputs 73 KB, the column outputs 26 KB; the product Q and the matrices are amortised over the 32 CTF
points and the orientations. No fold pass per grid point.
"""

from __future__ import annotations

import functools

import numpy as np

from cryopipe.bioem.pruned import ALIGN, CorrelationTransform, combine_at_shifts, fold_indices, kept_spectrum, row_pairs

_OPERAND_SOURCE = r"""
extern "C" __global__ void NAME(
    const T2* P, const T2* cI, const int* rows_p, const int* rows_q, const int* mode, const int* cols,
    const int n_o, const int nv, const int n, const int h, const int k_tot, const int nk, const int nr, T* out)
{
    // block (32, 8): a tile of 32 orientations x 32 kept columns for one operand row r (blockIdx.y) and image
    // (blockIdx.z); reads run along the columns, writes along the orientations (the GEMM layout), through shared
    // memory. mode[r]: 0 Qs = Q[p] + Q[q] (Q[p] alone when q = p), 1 Qd = Q[p] - Q[q], -1 zero padding.
    __shared__ T t_re[32][33], t_im[32][33];
    const int tiles_o = (n_o + 31) / 32;
    const int o0 = (blockIdx.x % tiles_o) * 32, v0 = (blockIdx.x / tiles_o) * 32;
    const int r = blockIdx.y, i = blockIdx.z, md = mode[r];
    const int p = md >= 0 ? rows_p[r] : 0, q = md >= 0 ? rows_q[r] : 0;
    const int v = v0 + threadIdx.x;
    const bool v_ok = v < nv && md >= 0;
    const int col = v_ok ? cols[v] : 0;
    T2 ip = {0, 0}, iq = {0, 0};
    if (v_ok) { ip = cI[((long long)i * n + p) * h + col]; iq = cI[((long long)i * n + q) * h + col]; }
    for (int k = threadIdx.y; k < 32; k += 8) {
        const int o = o0 + k;
        T re = 0, im = 0;
        if (v_ok && o < n_o) {
            const T2 a = P[((long long)o * n + p) * h + col];
            re = a.x * ip.x - a.y * ip.y;
            im = a.x * ip.y + a.y * ip.x;
            if (q != p) {
                const T2 b = P[((long long)o * n + q) * h + col];
                const T re2 = b.x * iq.x - b.y * iq.y, im2 = b.x * iq.y + b.y * iq.x;
                re = md == 0 ? re + re2 : re - re2;
                im = md == 0 ? im + im2 : im - im2;
            }
        }
        t_re[threadIdx.x][k] = re;
        t_im[threadIdx.x][k] = im;
    }
    __syncthreads();
    const int ik = i / nr, ir = i - ik * nr, o = o0 + threadIdx.x;
    if (o >= n_o) return;
    const long long part = (long long)nv * nk * k_tot * nr * n_o;
    for (int k = threadIdx.y; k < 32; k += 8) {
        const int vv = v0 + k;
        if (vv >= nv) break;
        const long long at = ((((long long)vv * nk + ik) * k_tot + r) * nr + ir) * n_o + o;
        out[at] = t_re[k][threadIdx.x];
        out[part + at] = t_im[k][threadIdx.x];
    }
}
"""


@functools.cache
def _operand_kernel(xp, dtype_name: str):
    name = f"bioem_factored_operand_{dtype_name}"
    src = f"typedef {dtype_name} T;\ntypedef {dtype_name}2 T2;\n" + _OPERAND_SOURCE.replace("NAME", name)
    return xp.RawKernel(src, name)


def _padded(k: int) -> int:
    return max(ALIGN, -(-k // ALIGN) * ALIGN)


class FactoredTransform(CorrelationTransform):
    """Pruned inverse DFT with the CTF in the row matrices (module docstring). Arguments as
    :class:`~cryopipe.bioem.pruned.PrunedTransform`."""

    name = "factored"

    def __init__(self, n: int, shifts: np.ndarray, bk, real=np.float32, band_mask: np.ndarray | None = None):
        self.n, self.bk, self.real, self.n_shifts = n, bk, np.dtype(real), len(shifts)
        kept_rows, kept_cols = kept_spectrum(n, band_mask)
        self.u, self.v = np.flatnonzero(kept_rows), np.flatnonzero(kept_cols)
        ps, qs, pd, _ = row_pairs(kept_rows, n)
        self.ps, self.qs = ps, qs
        self.paired = np.flatnonzero(qs != ps)  # positions in ps of the rows with a partner (= pd)
        self.n_s, self.n_d = len(ps), len(pd)
        self.k_s, self.k_d = _padded(self.n_s), _padded(self.n_d)  # GEMM inner dimension: [Qs (k_s); Qd (k_d)]
        ka, kb, ia, ib, s_row = fold_indices(shifts[:, 0], n)
        kc, ks, jc, js, s_col = fold_indices(shifts[:, 1], n)
        self.n_a, self.n_b, self.n_kc, self.n_ks = len(ka), len(kb), len(kc), len(ks)
        two_pi = 2.0 * np.pi / n
        self._cos_s = np.cos(two_pi * ((ka[:, None] * ps[None]) % n))  # (n_A, P_s)
        self._cos_d = np.cos(two_pi * ((ka[:, None] * pd[None]) % n))  # (n_A, P_d)
        self._sin_s = np.sin(two_pi * ((kb[:, None] * ps[None]) % n))  # (n_B, P_s): 0 on the unpaired rows
        self._sin_d = np.sin(two_pi * ((kb[:, None] * pd[None]) % n))  # (n_B, P_d)
        v = self.v.astype(np.int64)
        edge = (v == 0) | (2 * v == n)
        w = np.where(edge, 1.0, 2.0)[:, None] / float(n * n)
        w_cos = w * np.cos(two_pi * ((v[:, None] * kc[None]) % n))  # (V, n_kc)
        w_sin = np.where(edge[:, None], 0.0, w * np.sin(two_pi * ((v[:, None] * ks[None]) % n)))  # (V, n_ks)
        self.wc_t, self.ws_t = (bk.asarray(np.ascontiguousarray(m.T), dtype=self.real) for m in (w_cos, w_sin))
        self.table = np.stack([ia, ib, jc, js]).astype(np.int32)  # (4, D)
        self.signs = np.stack([s_row, s_col])  # (2, D)
        self._table, self._signs = bk.asarray(self.table), bk.asarray(self.signs, dtype=self.real)
        self.quads, self.members, self.member_signs = _quads(self.table, self.signs)
        self._quads, self._members = bk.asarray(self.quads), bk.asarray(self.members)
        self._member_signs = bk.asarray(self.member_signs, dtype=self.real)
        self._ps, self._qs = bk.asarray(ps), bk.asarray(qs)
        self._v = bk.asarray(self.v)
        self._v32 = bk.asarray(self.v.astype(np.int32))
        self._row_maps: dict = {}  # GPU operand layouts: row -> (spectrum row p, partner q, mode)
        self._pair = bk.asarray(self.paired)
        self._cached = None  # (kernel array, its matrices) for a kernel set shared by all images
        self.symmetric = None  # whether the last kernels seen were mirror-symmetric

    def bytes_per_pair(self, n_ctf: int) -> int:
        """Device bytes per (orientation, image) pair: row outputs, column outputs, Q, and the host path's
        gathered values (float64, with temporaries)."""
        r = self.real.itemsize
        rows = 2 * (self.n_a + self.n_b) * len(self.v) * n_ctf * r
        cols = (self.n_a + self.n_b) * (self.n_kc + self.n_ks) * n_ctf * r
        gathered = 0 if self.bk.is_gpu else 4 * self.n_shifts * n_ctf * 8
        return rows + cols + 2 * 2 * (self.k_s + self.k_d) * len(self.v) * r + gathered

    def bytes_per_kernel_image(self, n_ctf: int) -> int:
        """Device bytes of the row matrices per CTF kernel set (per image when the images have their own)."""
        return len(self.v) * (self.n_a + self.n_b) * n_ctf * (self.k_s + self.k_d) * self.real.itemsize

    def max_orientations(self, shared_kernels: bool) -> int:
        """Per-image kernels: their matrices are rebuilt for every block, so the blocks hold more orientations."""
        return 256 if shared_kernels else 1024

    def matrices(self, K, cached: bool = True):
        """Row matrices for CTF kernels K (nk, C, N, H) real -> (Ma, Mb, symmetric). Ma (V, nk, n_A C, k) and
        Mb (V, nk, n_B C, k) with k = k_s + k_d ([cos S | cos D] and [sin D | sin S]); when the kernels are
        mirror-symmetric (D = 0 everywhere) only the non-zero halves: Ma = cos S (k = k_s) against Qs and
        Mb = sin S (k = k_d) against Qd. Cached while the same kernel array comes back (shared kernels), unless
        ``cached`` is False (they are built again, and cached)."""
        if cached and self._cached is not None and self._cached[0] is K:
            return self._cached[1]
        xp = self.bk.xp
        nk, c = K.shape[:2]
        kv = K[..., self._v]  # (nk, C, N, V)
        kp, kq = kv[:, :, self._ps], kv[:, :, self._qs]  # (nk, C, P_s, V)
        s = xp.ascontiguousarray((0.5 * (kp + kq)).transpose(3, 0, 1, 2))  # (V, nk, C, P_s)
        d = xp.ascontiguousarray((0.5 * (kp - kq)).transpose(3, 0, 1, 2))
        symmetric = not bool(xp.any(d != 0))
        nv = len(self.v)

        def build(trig_s, on_s, trig_d, on_d):  # (V, nk, rows C, width): [trig_s * on_s | trig_d * on_d]
            nrow = len(trig_s)
            width = (self.k_s if on_s is not None else 0) + (self.k_d if on_d is not None else 0)
            m = xp.zeros((nv, nk, nrow, c, width), dtype=self.real)
            if on_s is not None:
                m[..., :self.n_s] = self.bk.asarray(trig_s, dtype=self.real)[None, None, :, None] * on_s[:, :, None]
            if on_d is not None:
                d0 = width - self.k_d
                m[..., d0:d0 + self.n_d] = (self.bk.asarray(trig_d, dtype=self.real)[None, None, :, None]
                                            * on_d[..., self._pair][:, :, None])
            return m.reshape(nv, nk, nrow * c, width)

        if symmetric:
            out = (build(self._cos_s, s, None, None), build(self._sin_s, None, self._sin_d, s), True)
        else:
            out = (build(self._cos_s, s, self._cos_d, d), build(self._sin_s, d, self._sin_d, s), False)
        self._cached, self.symmetric = (K, out), symmetric
        return out

    def correlate(self, P, K, conj_spectra, shared: bool):
        """P (B, N, H) complex projections; K (nk, C, N, H) real CTF kernels, nk = 1 when ``shared`` by all images
        else one set per image; conj_spectra (ni, N, H) the images' conj(rfft2). Returns ((B, ni, C, nr), (X1, X2,
        X3, X4)) with nr the images per kernel set, X shaped (n_k, nk, n_row, C, nr, B) (module docstring)."""
        return self.gemms(*self.operands(P, K, conj_spectra, shared))

    def operands(self, P, K, conj_spectra, shared: bool):
        """The row GEMMs' operands for :meth:`correlate`'s arguments: (Ma, Mb, Qa, Qb, (B, ni, C, nr)), Q* (2 re/im,
        V, nk, k, nr B) matching the matrices of :meth:`matrices`."""
        xp = self.bk.xp
        b, ni, c = len(P), len(conj_spectra), K.shape[1]
        nk = 1 if shared else ni
        nr = ni // nk
        ma, mb, symmetric = self.matrices(K)
        if self.bk.is_gpu:
            layouts = ("s", "d") if symmetric else ("sd",)
            q = [self._operand_gpu(P, conj_spectra, nk, nr, lay) for lay in layouts]
            return ma, mb, q[0], q[-1], (b, ni, c, nr)
        nv = len(self.v)
        pv, iv = P[..., self._v], conj_spectra[..., self._v]  # (B, N, V), (ni, N, V)
        qp = pv[None, :, self._ps] * iv[:, None, self._ps]  # (ni, B, P_s, V)
        qq = pv[None, :, self._qs] * iv[:, None, self._qs]
        unpaired = (self._ps == self._qs)[None, None, :, None]
        qs = xp.where(unpaired, qp, qp + qq).reshape(nk, nr, b, self.n_s, nv)
        qd = (qp - qq)[:, :, self._pair].reshape(nk, nr, b, self.n_d, nv)

        def operand(z, k):  # (2 re/im, V, nk, k, nr B), zero padded rows
            out = xp.zeros((2, nv, nk, k, nr, b), dtype=self.real)
            out[0, :, :, :z.shape[3]] = z.real.transpose(4, 0, 3, 1, 2)
            out[1, :, :, :z.shape[3]] = z.imag.transpose(4, 0, 3, 1, 2)
            return out.reshape(2, nv, nk, k, nr * b)

        q_s, q_d = operand(qs, self.k_s), operand(qd, self.k_d)
        if symmetric:  # D = 0: A needs Qs only, B Qd only
            return ma, mb, q_s, q_d, (b, ni, c, nr)
        q = xp.concatenate([q_s, q_d], axis=3)
        return ma, mb, q, q, (b, ni, c, nr)

    def _operand_gpu(self, P, conj_spectra, nk: int, nr: int, layout: str):
        """The GPU kernel's operand (2, V, nk, k, nr B) for ``layout`` 's' (Qs rows), 'd' (Qd) or 'sd' (both)."""
        xp = self.bk.xp
        if layout not in self._row_maps:
            rp, rq, mode = [], [], []
            for part in layout:
                k, idx = (self.k_s, np.arange(self.n_s)) if part == "s" else (self.k_d, self.paired)
                rp += list(self.ps[idx]) + [0] * (k - len(idx))
                rq += list(self.qs[idx]) + [0] * (k - len(idx))
                mode += [0 if part == "s" else 1] * len(idx) + [-1] * (k - len(idx))
            self._row_maps[layout] = tuple(self.bk.asarray(np.asarray(a, dtype=np.int32)) for a in (rp, rq, mode))
        rp, rq, mode = self._row_maps[layout]
        b, nv, k_tot = len(P), len(self.v), len(mode)
        out = xp.empty((2, nv, nk, k_tot, nr * b), dtype=self.real)
        name = "float" if self.real == np.float32 else "double"
        grid = (-(-b // 32) * -(-nv // 32), k_tot, nk * nr)
        _operand_kernel(xp, name)(grid, (32, 8), (xp.ascontiguousarray(P), xp.ascontiguousarray(conj_spectra), rp,
                                                  rq, mode, self._v32, xp.int32(b), xp.int32(nv), xp.int32(self.n),
                                                  xp.int32(P.shape[-1]), xp.int32(k_tot), xp.int32(nk),
                                                  xp.int32(nr), out))
        return out

    def gemms(self, ma, mb, qa, qb, dims):
        """Row then column GEMMs on :meth:`operands` -> (dims, (X1, X2, X3, X4)) as :meth:`correlate`."""
        xp = self.bk.xp
        b, ni, c, nr = dims
        nv, nk = len(self.v), ni // nr
        a_re, a_im = (xp.matmul(ma, qa[t]) for t in (0, 1))  # (V, nk, n_A C, nr B)
        b_re, b_im = (xp.matmul(mb, qb[t]) for t in (0, 1))

        def cols(w_t, y, n_row):  # contract the kept columns: (n_k, nk, n_row, C, nr, B)
            return (w_t @ y.reshape(nv, -1)).reshape(len(w_t), nk, n_row, c, nr, b)

        xs = (cols(self.wc_t, a_re, self.n_a), cols(self.ws_t, a_im, self.n_a),
              cols(self.wc_t, b_im, self.n_b), cols(self.ws_t, b_re, self.n_b))
        return dims, xs

    def flop_per_point(self, symmetric: bool) -> float:
        """Useful FLOPs per grid point: row GEMMs (twice as many for kernels that are not mirror-symmetric),
        column GEMMs, and the combination of X1..X4 at the displacements (padding not counted)."""
        nv = len(self.v)
        rows = 2 * nv * (self.n_a * self.n_s + self.n_b * self.n_d) * (1 if symmetric else 2)
        cols = (self.n_a + self.n_b) * nv * (self.n_kc + self.n_ks)
        return 2.0 * (rows + cols) + 6.0 * self.n_shifts

    def at_shifts(self, parts):
        """(B, ni, C, D) correlation at the displacements, in their loop order, from :meth:`correlate`."""
        xp = self.bk.xp
        (b, ni, c, nr), xs = parts
        out = combine_at_shifts(xs, self._table, self._signs, lambda x, rows, cols: x[cols, :, rows], xp)
        d = out.shape[0]  # out: (D, nk, C, nr, B)
        out = out.transpose(0, 1, 3, 2, 4).reshape(d, ni, c, b)  # (D, nk nr = ni, C, B)
        return xp.ascontiguousarray(out.transpose(3, 1, 2, 0))

    def kernel_args(self, parts):
        """('factored', arguments of the reduction kernel's value load) for :mod:`cryopipe.bioem.kernels`."""
        xp = self.bk.xp
        (b, ni, c, nr), xs = parts
        return "factored", (*(xp.ascontiguousarray(x) for x in xs), self._quads, self._members, self._member_signs,
                            xp.int32(self.quads.shape[1]), xp.int32(self.n_a), xp.int32(self.n_b), xp.int32(nr))

    def stats(self) -> dict:
        """As :class:`~cryopipe.bioem.pruned.PrunedTransform`'s, with the FLOPs and mirror symmetry of the kernels
        seen last."""
        return dict(transform=self.name, kept_rows=len(self.u), kept_columns=len(self.v),
                    flop_per_point=self.flop_per_point(self.symmetric), mirror_symmetric=self.symmetric)


def _quads(table: np.ndarray, signs: np.ndarray):
    """Group the displacements by the four X entries they read: table (4, D) = (ia, ib, jc, js), signs (2, D).

    Returns quads (4, Q) int32 (the shared ia, ib, jc, js), members (4, Q) int32 displacement indices in
    increasing order (-1 pads), member signs (8, Q): s_row of members 0..3, then s_col of members 0..3.
    Distinct displacements give at most 4 per quad (+-r and +-c' fold to the same k)."""
    keys, inverse = np.unique(table.T, axis=0, return_inverse=True)
    inverse = inverse.ravel()
    order = np.argsort(inverse, kind="stable")  # by quad, then by displacement index
    counts = np.bincount(inverse, minlength=len(keys))
    if counts.max(initial=0) > 4:
        raise ValueError("displacements repeat: more than 4 share one folded row and column")
    slot = np.arange(len(order)) - np.repeat(np.cumsum(counts) - counts, counts)
    members = np.full((4, len(keys)), -1, dtype=np.int32)
    msgn = np.zeros((8, len(keys)))
    members[slot, inverse[order]] = order
    msgn[slot, inverse[order]] = signs[0, order]
    msgn[4 + slot, inverse[order]] = signs[1, order]
    return np.ascontiguousarray(keys.T, dtype=np.int32), members, msgn

