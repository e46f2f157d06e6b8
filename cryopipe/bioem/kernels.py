"""GPU kernels (CuPy RawKernel), compiled lazily on first use with the GPU backend.

:func:`fused_reduction` replaces, after the batched inverse FFT, the gather of the displacement values,
the closed form (in float64) and the max / argmax / sum-exp reductions by one kernel that reads each
correlation image once and writes four numbers per grid point. It returns the same per-image block
results as the array code in :func:`cryopipe.bioem.integrate._block`. It takes the correlations of either
transform of :mod:`cryopipe.bioem.pruned` (full N x N images, or the pruned rows x columns of the displacements)
with the flat indices of the displacements into them.
"""

from __future__ import annotations

import functools

_SOURCE = r"""
extern "C" __global__ void bioem_reduce_T(
    const T* corr, const long long* shift, const int n_shift, const long long img_size,
    const double* co, const double* coo, const double* cc, const double* ccc, const double* prior,
    const int n_img, const int n_ctf, const double n_pix,
    double* out_max, double* out_sum, int* out_arg, double* out_cco)
{
    const double NEG_INF = __longlong_as_double(0xfff0000000000000ULL);
    __shared__ double s_val[256];
    __shared__ int s_arg[256];
    const long long g = blockIdx.x;
    const int i = (int)((g / n_ctf) % n_img);
    const T* img = corr + g * img_size;
    const double vco = co[i], vcoo = coo[i], vcc = cc[g], vccc = ccc[g];
    const double dd = n_pix * vccc - vcc * vcc;
    const bool ok_d = dd > 0.0;
    const double base = ok_d ? (0.5 * n_pix - 2.0) * log((n_pix - 2.0) * dd) + prior[g] : 0.0;
    const double a0 = vcoo * vccc, a1 = 2.0 * vco * vcc, a2 = vcoo * vcc * vcc + vco * vco * vccc;

    double best = NEG_INF;
    int barg = n_shift;
    for (int s = threadIdx.x; s < n_shift; s += blockDim.x) {
        const double x = (double)img[shift[s]];
        const double e = n_pix * (a0 - x * x) + a1 * x - a2;
        const double l = (ok_d && e > 0.0) ? 0.5 * (3.0 - n_pix) * log(e) + base : NEG_INF;
        if (l > best) { best = l; barg = s; }
    }
    s_val[threadIdx.x] = best;
    s_arg[threadIdx.x] = barg;
    __syncthreads();
    for (int h = blockDim.x / 2; h > 0; h >>= 1) {
        if (threadIdx.x < h) {
            const double v = s_val[threadIdx.x + h];
            const int a = s_arg[threadIdx.x + h];
            if (v > s_val[threadIdx.x] || (v == s_val[threadIdx.x] && a < s_arg[threadIdx.x])) {
                s_val[threadIdx.x] = v;
                s_arg[threadIdx.x] = a;
            }
        }
        __syncthreads();
    }
    const double m = s_val[0];
    const int arg = s_arg[0];
    __syncthreads();

    double sum = 0.0;
    if (m > NEG_INF) {
        for (int s = threadIdx.x; s < n_shift; s += blockDim.x) {
            const double x = (double)img[shift[s]];
            const double e = n_pix * (a0 - x * x) + a1 * x - a2;
            if (e > 0.0) sum += exp(0.5 * (3.0 - n_pix) * log(e) + base - m);
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
        out_cco[g] = arg < n_shift ? (double)img[shift[arg]] : 0.0;
    }
}
"""
_THREADS = 256


def kernel_source(dtype_name: str) -> str:
    """CUDA source of the reduction kernel for correlation images of C type ``float`` or ``double``."""
    return _SOURCE.replace("const T*", f"const {dtype_name}*").replace("bioem_reduce_T", f"bioem_reduce_{dtype_name}")


@functools.cache
def _kernel(xp, dtype_name: str):
    return xp.RawKernel(kernel_source(dtype_name), f"bioem_reduce_{dtype_name}")


def fused_reduction(bk):
    """A function with the signature of the reduction step in ``_block`` for ``bk`` (a GPU backend)."""
    xp = bk.xp

    def run(corr, co, coo, cc, ccc, prior, flat, n_pix, keep_orientations):
        """corr (B, ni, C, S) correlations, flat (D,) host indices into S of the displacements (loop order),
        n_pix the pixels per image; co, coo, cc, ccc, prior broadcast to (B, ni, C)."""
        b, ni, c, size = corr.shape
        name = "float" if corr.dtype == xp.float32 else "double"
        corr = xp.ascontiguousarray(corr)
        flat = xp.asarray(flat, dtype=xp.int64)
        f64 = [xp.ascontiguousarray(xp.broadcast_to(a, (b, ni, c)), dtype=xp.float64) for a in (cc, ccc, prior)]
        co1, coo1 = (xp.ascontiguousarray(a.reshape(-1), dtype=xp.float64) for a in (co, coo))
        mx, sm, cco = (xp.empty((b, ni, c), dtype=xp.float64) for _ in range(3))
        arg = xp.empty((b, ni, c), dtype=xp.int32)
        _kernel(xp, name)((b * ni * c,), (_THREADS,),
                          (corr, flat, xp.int32(len(flat)), xp.int64(size), co1, coo1, f64[0], f64[1], f64[2],
                           xp.int32(ni), xp.int32(c), xp.float64(n_pix), mx, sm, arg, cco))
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
