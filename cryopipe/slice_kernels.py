"""GPU kernels (CuPy) for trilinear slice interpolation and insertion, compiled lazily on first use.

The functions take the GPU backend's array module ``xp`` (``bk.xp``, CuPy): :mod:`cryopipe.backend` is the only
module that imports CuPy. They compute what the array code of :mod:`cryopipe.projection` computes
(:func:`~cryopipe.projection.grid_corners` followed by the gather or the scatter-add), one thread per sample point,
without the (8, ...) index and weight temporaries that the array code materialises: on the GPU those temporaries,
not the arithmetic, set the time (int64 indices and float32 weights are ~100 B per point, against 12 B of
coordinates and 8 B of value).
Conventions as there: half grid ``grid[kz, ky, kx]`` of shape (P, P, P//2+1), points with x < 0 read from (and
write to) their Friedel mate, corners in the order z, y, x (outer to inner). Weights of a corner are float32
products (1 - t or t per axis), as the array code forms them.
"""

from __future__ import annotations

import functools

# lower corner (x0, y0, z0), fractions (tx, ty, tz) and the Friedel flip of point (x, y, z), as grid_corners
_CORNER_SETUP = r"""
    const bool flip = x < 0.0f;
    const float cx = flip ? -x : x, cy = flip ? -y : y, cz = flip ? -z : z;
    const float fx = floorf(cx), fy = floorf(cy), fz = floorf(cz);
    const float tx = cx - fx, ty = cy - fy, tz = cz - fz;
    const long long xs[2] = {(long long)fx, min((long long)fx + 1, h - 1)};
    const long long y0 = (((long long)fy % p) + p) % p, z0 = (((long long)fz % p) + p) % p;
    const long long ys[2] = {y0, (y0 + 1) % p}, zs[2] = {z0, (z0 + 1) % p};
    const float wx[2] = {1.0f - tx, tx}, wy[2] = {1.0f - ty, ty}, wz[2] = {1.0f - tz, tz};
"""

_INTERPOLATE = _CORNER_SETUP + r"""
    T v = T(0, 0);
    for (int iz = 0; iz < 2; ++iz)
        for (int iy = 0; iy < 2; ++iy)
            for (int ix = 0; ix < 2; ++ix)
            {
                const T g = grid[(zs[iz] * p + ys[iy]) * h + xs[ix]];
                const float w = wz[iz] * wy[iy] * wx[ix];
                v += T(g.real() * w, g.imag() * w);
            }
    out = flip ? T(v.real(), -v.imag()) : v;
"""

_INSERT = r"""
extern "C" __global__ void NAME(
    const float* coords, const REAL* values, const REAL* weights, const int has_weights, const long long n,
    const long long p, const long long h, const long long size, REAL* data, REAL* weight, REAL* moment)
{
    for (long long q = blockIdx.x * (long long)blockDim.x + threadIdx.x; q < n;
         q += (long long)blockDim.x * gridDim.x) {
        const float x = coords[3 * q], y = coords[3 * q + 1], z = coords[3 * q + 2];
        SETUP
        const REAL vr = values[2 * q], vi = flip ? -values[2 * q + 1] : values[2 * q + 1];
        const REAL ww = has_weights ? weights[q] : (REAL)1;
        for (int iz = 0; iz < 2; ++iz)
            for (int iy = 0; iy < 2; ++iy)
                for (int ix = 0; ix < 2; ++ix) {
                    const long long idx = (zs[iz] * p + ys[iy]) * h + xs[ix];
                    const REAL w = (REAL)(wz[iz] * wy[iy] * wx[ix]);
                    const REAL wv = w * ww;
                    atomicAdd(data + 2 * idx, w * vr);
                    atomicAdd(data + 2 * idx + 1, w * vi);
                    atomicAdd(weight + idx, wv);
                    atomicAdd(moment + idx, wv * (REAL)(tx - ix));
                    atomicAdd(moment + size + idx, wv * (REAL)(ty - iy));
                    atomicAdd(moment + 2 * size + idx, wv * (REAL)(tz - iz));
                }
    }
}
"""


@functools.cache
def _interpolate_kernel(xp):
    return xp.ElementwiseKernel(
        "raw T grid, float32 x, float32 y, float32 z, int64 p, int64 h", "T out", _INTERPOLATE,
        "cryopipe_slice_interpolate")


@functools.cache
def _insert_kernel(xp, real: str):
    name = f"cryopipe_slice_insert_{real}"
    source = _INSERT.replace("SETUP", _CORNER_SETUP).replace("NAME", name).replace("REAL", real)
    return xp.RawKernel(source, name)


def interpolate(grid, coords, xp):
    """Trilinear values (...) complex of half grid ``grid`` (P, P, P//2+1) at ``coords`` (..., 3) = (x, y, z),
    padded-grid units, float32 (others are cast). Points with x < 0 read ``conj F(-k)``. ``xp``: CuPy, the array
    module of a GPU backend (``bk.xp``)."""
    c = xp.asarray(coords, dtype=xp.float32)
    p, _, h = grid.shape
    return _interpolate_kernel(xp)(grid, c[..., 0], c[..., 1], c[..., 2], p, h)


def insert(data, weight, moment, coords, values, weights, xp) -> None:
    """Scatter-add into a back-projector's sums (in place), the adjoint of :func:`interpolate`.

    data (P, P, P//2+1) complex, weight (P, P, P//2+1) real, moment (3, P, P, P//2+1) real, all of one precision
    and contiguous; coords (n, 3) float32 padded-grid units; values (n,) complex; weights (n,) real or None (1).
    Per corner c of a point with trilinear weight w: data += w v (conj v where x < 0), weight += w u,
    moment[d] += w u (t_d - c_d), u the point's weight and t its fraction in the lower corner's cell.
    ``xp``: CuPy, as :func:`interpolate`.
    """
    real = weight.dtype
    name = {xp.dtype(xp.float32): "float", xp.dtype(xp.float64): "double"}[real]
    c = xp.ascontiguousarray(coords, dtype=xp.float32).reshape(-1, 3)
    n = c.shape[0]
    if n == 0:
        return
    vals = xp.ascontiguousarray(values, dtype=data.dtype).reshape(-1).view(real)
    wts = xp.ascontiguousarray(weights, dtype=real).reshape(-1) if weights is not None else xp.zeros(1, real)
    p, _, h = weight.shape
    threads = 256
    blocks = int(min((n + threads - 1) // threads, 65536))
    _insert_kernel(xp, name)((blocks,), (threads,), (
        c, vals, wts, xp.int32(weights is not None), xp.int64(n), xp.int64(p), xp.int64(h), xp.int64(weight.size),
        data.reshape(-1).view(real), weight.reshape(-1), moment.reshape(-1)))
