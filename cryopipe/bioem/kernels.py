"""GPU kernels (CuPy RawKernel), compiled lazily on first use with the GPU backend.

:func:`fused_reduction` replaces, after the batched inverse FFT, the gather of the displacement values,
the closed form (in float64) and the max / argmax / sum-exp reductions by one kernel that reads each
correlation image once and writes four numbers per grid point. It returns the same per-image block
results as the array code in :func:`cryopipe.bioem.integrate.score_block`. It reads the correlations of either
transform of :mod:`cryopipe.bioem.pruned` through a value loader: from full N x N images at the displacements'
flat indices (FFT path), or combined on the fly from the folded transform's four GEMM outputs.

The factored transform (:mod:`cryopipe.bioem.factored`) has its own kernel, :data:`_FACTORED_SOURCE`: its GEMM
outputs hold the orientations fastest, so a thread takes one grid point (a warp 32 orientations, reading them in
one transaction) and a part of the displacements, with a one-pass (online) minimum and sum; the eight warps of
a block then combine their parts. The displacements come in quads (+-r, +-c') that share their four loaded
numbers, so each number is read once per grid point, not once per displacement.
"""

from __future__ import annotations

import functools

_LOADERS = {
    # full correlation images (FFT path): img = corr + g * img_size, value at flat index shift[s]
    "fft": ("const T* corr, const long long* shift, const long long img_size",
            "const T* img = corr + g * img_size;",
            "(double)img[shift[s]]"),
    # folded pruned transform: corr = X1 - s_c X2 - s_r (X3 + s_c X4) at table (4, D) = (ia, ib, jc, js)
    "folded": ("const T* x1, const T* x2, const T* x3, const T* x4, const int* tab, const T* sgn, "
               "const long long n_points, const int nkc, const int nks",
               "",
               "folded_value(x1, x2, x3, x4, tab, sgn, n_shift, n_points, nkc, nks, g, s)"),
}

_FOLDED_VALUE = r"""
__device__ __forceinline__ double folded_value(
    const T* x1, const T* x2, const T* x3, const T* x4, const int* tab, const T* sgn, const int d,
    const long long n_points, const int nkc, const int nks, const long long g, const int s)
{
    const int ia = tab[s], ib = tab[d + s], jc = tab[2 * d + s], js = tab[3 * d + s];
    const double s_row = (double)sgn[s], s_col = (double)sgn[d + s];
    double x = (double)x1[(ia * n_points + g) * nkc + jc];
    if (js >= 0) x -= s_col * (double)x2[(ia * n_points + g) * nks + js];
    if (ib >= 0) {
        double y = (double)x3[(ib * n_points + g) * nkc + jc];
        if (js >= 0) y += s_col * (double)x4[(ib * n_points + g) * nks + js];
        x -= s_row * y;
    }
    return x;
}
"""

_SOURCE = r"""
extern "C" __global__ void NAME(
    PARAMS, const int n_shift,
    const double* co, const double* coo, const double* cc, const double* ccc, const double* prior,
    const int n_img, const int n_ctf, const double n_pix,
    double* out_max, double* out_sum, int* out_arg, double* out_cco)
{
    const double NEG_INF = __longlong_as_double(0xfff0000000000000ULL);
    __shared__ double s_val[256];
    __shared__ int s_arg[256];
    const long long g = blockIdx.x;
    const int i = (int)((g / n_ctf) % n_img);
    PROLOGUE
    const double vco = co[i], vcoo = coo[i], vcc = cc[g], vccc = ccc[g];
    const double dd = n_pix * vccc - vcc * vcc;
    const bool ok_d = dd > 0.0;
    const double base = ok_d ? (0.5 * n_pix - 2.0) * log((n_pix - 2.0) * dd) + prior[g] : 0.0;
    const double a0 = vcoo * vccc, a1 = 2.0 * vco * vcc, a2 = vcoo * vcc * vcc + vco * vco * vccc;

    // l = (3 - Np)/2 ln e + base falls as e grows: the best displacement is the smallest positive e (one log)
    const double POS_INF = __longlong_as_double(0x7ff0000000000000ULL);
    double best = POS_INF;
    int barg = n_shift;
    if (ok_d) {
        for (int s = threadIdx.x; s < n_shift; s += blockDim.x) {
            const double x = VALUE;
            const double e = n_pix * (a0 - x * x) + a1 * x - a2;
            if (e > 0.0 && e < best) { best = e; barg = s; }
        }
    }
    s_val[threadIdx.x] = best;
    s_arg[threadIdx.x] = barg;
    __syncthreads();
    for (int h = blockDim.x / 2; h > 0; h >>= 1) {
        if (threadIdx.x < h) {
            const double v = s_val[threadIdx.x + h];
            const int a = s_arg[threadIdx.x + h];
            if (v < s_val[threadIdx.x] || (v == s_val[threadIdx.x] && a < s_arg[threadIdx.x])) {
                s_val[threadIdx.x] = v;
                s_arg[threadIdx.x] = a;
            }
        }
        __syncthreads();
    }
    const double e_min = s_val[0];
    const int arg = s_arg[0];
    const double half = 0.5 * (n_pix - 3.0);
    const double m = arg < n_shift ? -half * log(e_min) + base : NEG_INF;
    __syncthreads();

    // sum of exp(-half ln(e / e_min)); a term with half (1 - e_min / e) > 746 is below exp(-746), which is 0 in
    // double (ln r >= 1 - 1/r), so it is skipped without its log
    double sum = 0.0;
    if (arg < n_shift) {
        for (int s = threadIdx.x; s < n_shift; s += blockDim.x) {
            const double x = VALUE;
            const double e = n_pix * (a0 - x * x) + a1 * x - a2;
            if (e > 0.0 && half * (e - e_min) <= 746.0 * e) sum += exp(-half * log(e / e_min));
        }
    }
    s_val[threadIdx.x] = sum;
    __syncthreads();
    for (int h = blockDim.x / 2; h > 0; h >>= 1) {
        if (threadIdx.x < h) s_val[threadIdx.x] += s_val[threadIdx.x + h];
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        out_max[g] = m;
        out_sum[g] = s_val[0];
        out_arg[g] = arg < n_shift ? arg : 0;
        int s = arg < n_shift ? arg : 0;
        out_cco[g] = arg < n_shift ? VALUE : 0.0;
    }
}
"""
_THREADS = 256

_FACTORED_SOURCE = r"""
extern "C" __global__ void NAME(
    const T* x1, const T* x2, const T* x3, const T* x4, const int* quad, const int* member, const T* msgn,
    const int n_quad, const int n_a, const int n_b, const int n_per_kernel, const int n_shift, const int n_orient,
    const double* co, const double* coo, const double* cc, const double* ccc, const double* prior,
    const int n_img, const int n_ctf, const double n_pix,
    double* out_max, double* out_sum, int* out_arg, double* out_cco)
{
    // block (32 orientations, WARPS parts of the quads); grid (orientation blocks, CTF points, images).
    // A quad (ia, ib, jc, js) holds the up to 4 displacements (+-r, +-c') whose values combine the same four
    // numbers X1[jc, ia], X2[js, ia], X3[jc, ib], X4[js, ib]: loaded once, used by each member.
    const double POS_INF = __longlong_as_double(0x7ff0000000000000ULL);
    const double NEG_INF = __longlong_as_double(0xfff0000000000000ULL);
    __shared__ double s_e[WARPS][32], s_sum[WARPS][32], s_x[WARPS][32];
    __shared__ int s_arg[WARPS][32];
    const int o = blockIdx.x * 32 + threadIdx.x, c = blockIdx.y, i = blockIdx.z, w = threadIdx.y;
    const bool live = o < n_orient;
    const int ik = i / n_per_kernel, ir = i - ik * n_per_kernel;
    const long long s_row = (long long)n_ctf * n_per_kernel * n_orient;  // one row index (ia or ib)
    const long long inner = (long long)c * n_per_kernel * n_orient + (long long)ir * n_orient + (live ? o : 0);
    const long long off_a = (long long)ik * n_a * s_row + inner, off_b = (long long)ik * n_b * s_row + inner;
    const long long n_k = (long long)n_img / n_per_kernel;
    const long long sj_a = n_k * n_a * s_row, sj_b = n_k * n_b * s_row;
    const long long g = ((long long)(live ? o : 0) * n_img + i) * n_ctf + c;  // (B, ni, C) order
    const double vco = co[i], vcoo = coo[i], vcc = cc[g], vccc = ccc[g];
    const double dd = n_pix * vccc - vcc * vcc;
    const bool ok_d = live && dd > 0.0;
    const double a0 = vcoo * vccc, a1 = 2.0 * vco * vcc, a2 = vcoo * vcc * vcc + vco * vco * vccc;
    const double half = 0.5 * (n_pix - 3.0);

    // one pass over this warp's quads: the smallest positive e (the best l; ties to the lowest displacement
    // index, as the loop order of the array code) and the sum of (e_min / e)^half, rescaled when the minimum
    // moves; terms below exp(-746) relative to the running minimum are 0 in double relative to the final one
    // too, and are skipped without their log
    const int per = (n_quad + WARPS - 1) / WARPS, q0 = w * per, q1 = min(n_quad, q0 + per);
    double e_min = POS_INF, sum = 0.0, x_arg = 0.0;  // x_arg: the correlation at arg
    int arg = n_shift;
    if (ok_d) {
        for (int q = q0; q < q1; ++q) {
            const int ia = __ldg(quad + q), ib = __ldg(quad + n_quad + q);
            const int jc = __ldg(quad + 2 * n_quad + q), js = __ldg(quad + 3 * n_quad + q);
            const double v1 = (double)x1[jc * sj_a + ia * s_row + off_a];
            const double v2 = js >= 0 ? (double)x2[js * sj_a + ia * s_row + off_a] : 0.0;
            const double v3 = ib >= 0 ? (double)x3[jc * sj_b + ib * s_row + off_b] : 0.0;
            const double v4 = (ib >= 0 && js >= 0) ? (double)x4[js * sj_b + ib * s_row + off_b] : 0.0;
            for (int m = 0; m < 4; ++m) {
                const int s = __ldg(member + m * n_quad + q);
                if (s < 0) break;
                const double s_r = (double)__ldg(msgn + m * n_quad + q);
                const double s_c = (double)__ldg(msgn + (4 + m) * n_quad + q);
                const double x = v1 - s_c * v2 - s_r * (v3 + s_c * v4);
                const double e = n_pix * (a0 - x * x) + a1 * x - a2;
                if (!(e > 0.0)) continue;
                if (e < e_min) {
                    sum = e_min < POS_INF ? sum * exp(-half * log(e_min / e)) + 1.0 : 1.0;
                    e_min = e;
                    arg = s;
                    x_arg = x;
                } else {
                    if (e == e_min && s < arg) { arg = s; x_arg = x; }
                    if (half * (e - e_min) <= 746.0 * e) sum += exp(-half * log(e / e_min));
                }
            }
        }
    }
    s_e[w][threadIdx.x] = e_min;
    s_sum[w][threadIdx.x] = sum;
    s_arg[w][threadIdx.x] = arg;
    s_x[w][threadIdx.x] = x_arg;
    __syncthreads();
    if (w != 0 || !live) return;
    double e_all = POS_INF, x_all = 0.0;
    int a_all = n_shift;
    for (int k = 0; k < WARPS; ++k) {
        const int t = threadIdx.x;
        if (s_arg[k][t] < n_shift && (s_e[k][t] < e_all || (s_e[k][t] == e_all && s_arg[k][t] < a_all))) {
            e_all = s_e[k][t];
            a_all = s_arg[k][t];
            x_all = s_x[k][t];
        }
    }
    double total = 0.0;
    for (int k = 0; k < WARPS; ++k) {
        const int t = threadIdx.x;
        if (s_arg[k][t] < n_shift) total += s_sum[k][t] * exp(-half * log(s_e[k][t] / e_all));
    }
    const bool found = a_all < n_shift;
    const double base = ok_d ? (0.5 * n_pix - 2.0) * log((n_pix - 2.0) * dd) + prior[g] : 0.0;
    out_max[g] = found ? -half * log(e_all) + base : NEG_INF;
    out_sum[g] = total;
    out_arg[g] = found ? a_all : 0;
    out_cco[g] = found ? x_all : 0.0;
}
"""
_WARPS = 8


def kernel_source(loader: str, dtype_name: str) -> str:
    """CUDA source of the reduction kernel reading values through ``loader`` ('fft' or 'folded', see
    ``_LOADERS``) from arrays of C type ``float`` or ``double``."""
    params, prologue, value = _LOADERS[loader]
    body = (_SOURCE.replace("NAME", f"bioem_reduce_{loader}_{dtype_name}").replace("PARAMS", params)
            .replace("PROLOGUE", prologue).replace("VALUE", value))
    return f"typedef {dtype_name} T;\n" + (_FOLDED_VALUE if loader == "folded" else "") + body


@functools.cache
def _kernel(xp, loader: str, dtype_name: str):
    name = f"bioem_reduce_{loader}_{dtype_name}"
    if loader == "factored":
        src = _FACTORED_SOURCE.replace("NAME", name).replace("WARPS", str(_WARPS))
        return xp.RawKernel(f"typedef {dtype_name} T;\n" + src, name)
    return xp.RawKernel(kernel_source(loader, dtype_name), name)


def fused_reduction(bk):
    """The reduction step of :func:`~cryopipe.bioem.integrate.score_block` (its ``fused`` argument) for ``bk``, a GPU
    backend."""
    xp = bk.xp

    def run(transform, corr, co, coo, cc, ccc, prior, n_pix, keep_orientations):
        """corr: what ``transform.correlate`` returned for (B, ni, C) grid points; n_pix the pixels per image;
        co, coo, cc, ccc, prior broadcast to (B, ni, C)."""
        b, ni, c = cc.shape
        loader, args = transform.kernel_args(corr)
        name = "float" if args[0].dtype == xp.float32 else "double"
        f64 = [xp.ascontiguousarray(xp.broadcast_to(a, (b, ni, c)), dtype=xp.float64) for a in (cc, ccc, prior)]
        co1, coo1 = (xp.ascontiguousarray(a.reshape(-1), dtype=xp.float64) for a in (co, coo))
        mx, sm, cco = (xp.empty((b, ni, c), dtype=xp.float64) for _ in range(3))
        arg = xp.empty((b, ni, c), dtype=xp.int32)
        sums = (co1, coo1, f64[0], f64[1], f64[2], xp.int32(ni), xp.int32(c), xp.float64(n_pix), mx, sm, arg, cco)
        if loader == "factored":
            _kernel(xp, loader, name)((-(-b // 32), c, ni), (32, _WARPS),
                                      (*args, xp.int32(transform.n_shifts), xp.int32(b), *sums))
        else:
            _kernel(xp, loader, name)((b * ni * c,), (_THREADS,), (*args, xp.int32(transform.n_shifts), *sums))
        tot = xp.where(mx > -xp.inf, mx + xp.log(xp.where(sm > 0, sm, 1.0)), -xp.inf)
        lt = xp.moveaxis(tot, 1, 0).reshape(ni, -1)
        mt = xp.moveaxis(mx, 1, 0).reshape(ni, -1)
        top = xp.argmax(mt, axis=1)
        o, ci = top // c, top % c
        rows = xp.arange(ni)
        m = lt.max(axis=1)
        safe = xp.where(m > -xp.inf, m, 0.0)
        log_sum = xp.where(m > -xp.inf, safe + xp.log(xp.exp(lt - safe[:, None]).sum(axis=1)), -xp.inf)
        out = dict(log_sum=log_sum, best_l=mt[rows, top], orientation=o, ctf=ci, shift=arg[o, rows, ci],
                   cc=f64[0][o, rows, ci], ccc=f64[1][o, rows, ci], cco=cco[o, rows, ci])
        out = {k: bk.asnumpy(v) for k, v in out.items()}
        if keep_orientations:
            mo = tot.max(axis=2)
            so = xp.where(mo > -xp.inf, mo, 0.0)
            per = xp.where(mo > -xp.inf, so + xp.log(xp.exp(tot - so[..., None]).sum(axis=2)), -xp.inf)
            out["per_orientation"] = bk.asnumpy(per).T
        return out

    return run
