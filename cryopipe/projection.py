"""Fourier-slice projection and back-projection of 3D maps (RELION's projector and back-projector).

Conventions (see DESIGN.md): volumes ``vol[z, y, x]``, images ``img[y, x]``, even box ``N``, real-space
origin (rotation centre) at index ``N//2``. A rotation matrix ``A`` (RELION's ``Euler_angles2matrix``)
maps a 3D point ``r = (x, y, z)`` to the image point ``(A @ r)[:2]``:

    p(x, y) = integral dz V(A.T @ (x, y, z))      <=>      P(kx, ky) = V(A.T @ (kx, ky, 0))   (Fourier slice)

Spectra are unshifted half spectra (``rfft2``/``rfftn`` of the array ``ifftshift``-ed so that the origin at
``N//2`` moves to index 0); frequencies are integers in units of 1/(N px).

The 3D transform is held zero-padded (box ``P = padding * N``) as a half grid ``grid[kz, ky, kx]`` of shape
``(P, P, P//2 + 1)``; a 2D frequency ``k`` of the N box sits at ``padding * k`` in it. Points with ``kx < 0``
are read from (and written to) their Friedel mate ``F(-k) = conj F(k)``. Trilinear interpolation in
Fourier space multiplies real space by the kernel's transform ``g(r) = prod_i sinc^2(r_i / P)`` (``r``
relative to the centre, px); the projector divides the map by ``g`` before its FFT and the back-projector
divides its result by ``g`` (gridding correction). We use the exact separable ``g`` of the trilinear
kernel, where RELION uses the radial ``sinc^2(|r| / P)``.

Trilinear interpolation and insertion on the GPU run as kernels of :mod:`cryopipe.slice_kernels` (one thread per
point, atomicAdd), which compute what the array code here computes without its (8, ...) index and weight
temporaries. On the CPU, trilinear reads are ``scipy.ndimage.map_coordinates`` (order 1, compiled, releasing the
GIL so that the backend's threads share a batch) on an edge-padded copy of the grid whose last planes repeat the
wrapped or clamped neighbours; a :class:`Projector` keeps that copy and its ``grid`` is a view of it. Scatter-add
in the array code (:func:`scatter_add`, also used by :mod:`cryopipe.bioem.forward`): ``cupy.add.at`` on the GPU; on
the CPU ``np.bincount(idx, weights)``, because ``np.add.at`` is ~20x slower for millions of updates (NumPy 2.4).
Both accumulate repeated indices. Complex grids are updated through a real view of their (re, im) pairs.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
from scipy import ndimage

from cryopipe import slice_kernels
from cryopipe.errors import InputError
from cryopipe.parallel import allreduce_sum

_MAX_BATCH = 512  # orientations per batch; temporaries are ~300 B per Fourier pixel per orientation
# trilinear corners as (x, y, z) offsets of the lower corner, in the order grid_corners stacks them
CORNER_OFFSETS = np.array([(i, j, k) for k in (0, 1) for j in (0, 1) for i in (0, 1)], dtype=np.float32)


def _as_rotations(rotations, bk) -> np.ndarray:
    """Rotations as a host float64 array of shape (B, 3, 3)."""
    rot = np.asarray(bk.asnumpy(rotations), dtype=np.float64)
    if rot.ndim not in (2, 3) or rot.shape[-2:] != (3, 3):
        raise InputError(f"rotations must have shape (3, 3) or (B, 3, 3), got {rot.shape}", field="rotations")
    return rot.reshape(-1, 3, 3)


def _batch_size(bk, n_pix: int) -> int:
    return min(_MAX_BATCH, bk.batch_size(300 * n_pix, fraction=0.1))


def _half_plane(box: int, r_max: float, xp):
    """Flat indices into an (N, N//2+1) half spectrum within radius ``r_max`` and their (kx, ky), (n_pix, 2)."""
    ky = np.fft.fftfreq(box, 1.0 / box)
    kx = np.arange(box // 2 + 1, dtype=np.float64)
    kyy, kxx = np.meshgrid(ky, kx, indexing="ij")
    flat = np.flatnonzero(kxx**2 + kyy**2 <= r_max**2)
    k2 = np.stack([kxx.ravel()[flat], kyy.ravel()[flat]], axis=-1)
    return xp.asarray(flat), xp.asarray(k2, dtype=xp.float32)


def _slice_coords(k2, rot_batch, padding: int, xp):
    """Padded-grid coordinates (b, n_pix, 3) = padding * A.T @ (kx, ky, 0), as (x, y, z)."""
    a = xp.asarray(rot_batch[:, :2, :] * padding, dtype=xp.float32)
    return xp.einsum("pi,bij->bpj", k2, a)


def _gridding_window(box: int, padded: int, xp):
    """Real-space transform of the trilinear kernel on the central (N, N, N) box: g = prod sinc^2(r_i / P)."""
    s = xp.sinc((xp.arange(box, dtype=xp.float64) - box // 2) / padded) ** 2
    return s[:, None, None] * s[None, :, None] * s[None, None, :]


def grid_corners(coords, shape, xp, interpolation: str = "trilinear"):
    """Grid cells and weights for points ``coords`` (..., 3) = (x, y, z) in padded-grid units.

    Returns flat indices (K, ...) into a half grid of ``shape`` = (P, P, P//2+1), weights (K, ...) with
    K = 8 (trilinear, corners in the order of ``CORNER_OFFSETS``) or 1 (nearest), the fractional position
    (..., 3) in the lower corner's cell, and the mask (...) of points mirrored to their Friedel mate (x < 0).
    """
    p, _, h = shape
    flip = coords[..., 0] < 0
    c = xp.where(flip[..., None], -coords, coords)
    if interpolation == "nearest":
        i = xp.rint(c).astype(xp.int64)
        idx = ((i[..., 2] % p) * p + i[..., 1] % p) * h + xp.minimum(i[..., 0], h - 1)
        return idx[None], xp.ones((1,) + idx.shape, dtype=c.dtype), c - i, flip
    if interpolation != "trilinear":
        raise InputError(f"unknown interpolation {interpolation!r}; use trilinear or nearest", field="interpolation")
    c0 = xp.floor(c)
    t = c - c0
    i0 = c0.astype(xp.int64)
    xs = (i0[..., 0], xp.minimum(i0[..., 0] + 1, h - 1))  # x = P/2 + 1 only ever gets weight 0
    ys = (i0[..., 1] % p, (i0[..., 1] + 1) % p)
    zs = (i0[..., 2] % p, (i0[..., 2] + 1) % p)
    ws = [(1 - t[..., d], t[..., d]) for d in range(3)]
    idx = [(zs[k] * p + ys[j]) * h + xs[i] for k in (0, 1) for j in (0, 1) for i in (0, 1)]
    w = [ws[2][k] * ws[1][j] * ws[0][i] for k in (0, 1) for j in (0, 1) for i in (0, 1)]
    return xp.stack(idx), xp.stack(w), t, flip


def _scatter(grid, idx, w, flip, values, xp) -> None:
    """grid[idx] += w * values (values conjugated where flipped), accumulating repeated indices."""
    if xp.iscomplexobj(grid):
        values = xp.where(flip, xp.conj(values), values)
        flat = grid.reshape(-1).view(grid.real.dtype)  # interleaved (re, im)
        scatter_add(flat, 2 * idx.ravel(), (w * values.real).ravel(), xp)
        scatter_add(flat, 2 * idx.ravel() + 1, (w * values.imag).ravel(), xp)
    else:
        scatter_add(grid.reshape(-1), idx.ravel(), (w * values).ravel(), xp)


def scatter_add(flat, idx, vals, xp) -> None:
    """``flat[idx] += vals`` in place, accumulating repeated indices: flat (M,) real, idx (n,) int, vals (n,) real,
    all on ``xp``'s device. ``cupy.add.at`` on the GPU, ``np.bincount`` on the CPU (module docstring)."""
    if xp is np:
        flat += np.bincount(idx, weights=vals, minlength=flat.size)
    else:
        xp.add.at(flat, idx, vals)


def slice_interpolate(grid, coords, xp, interpolation: str = "trilinear"):
    """Values of a half grid at arbitrary 3D frequencies (no gridding correction).

    grid: (P, P, P//2+1) complex half spectrum ``grid[kz, ky, kx]``. coords: (..., 3) real, (x, y, z) in
    grid units, ``|coords| <= P/2``. Returns (...) complex; points with x < 0 read ``conj F(-k)``.
    """
    if interpolation == "trilinear":
        if xp is not np:
            return slice_kernels.interpolate(grid, coords, xp)
        return _interpolate_host(grid, coords)
    idx, w, _, flip = grid_corners(coords, grid.shape, xp, interpolation)
    vals = (w * grid.reshape(-1)[idx]).sum(axis=0)
    return xp.where(flip, xp.conj(vals), vals)


def _edge_padded(grid):
    """Copy of a half grid (P, P, H) as (P+1, P+1, H+1) whose last plane of each axis repeats the wrapped (y, z) or
    clamped (x) neighbour: trilinear reads at y, z in [0, P] and x in [0, H-1] then need no wrap."""
    p, _, h = grid.shape
    padded = np.empty((p + 1, p + 1, h + 1), dtype=grid.dtype)
    padded[:p, :p, :h] = grid
    padded[p, :p, :h] = grid[0]
    padded[:, p, :h] = padded[:, 0, :h]
    padded[:, :, h] = padded[:, :, h - 1]
    return padded


def _interpolate_padded(padded, zyx, out) -> None:
    """out[i] = trilinear value of an edge-padded half grid (:func:`_edge_padded`) at the frequency zyx[:, i].

    zyx: (3, n) float64 (z, y, x) in grid units, any sign; overwritten. out: (n,) complex. A point with x < 0 reads
    its Friedel mate, conjugated. ``scipy.ndimage.map_coordinates`` (order 1, compiled, no GIL) does the gathers.
    """
    flip = zyx[2] < 0
    np.negative(zyx, out=zyx, where=flip)
    np.mod(zyx[:2], padded.shape[0] - 1, out=zyx[:2])
    ndimage.map_coordinates(padded, zyx, output=out, order=1, prefilter=False, mode="nearest")
    np.conjugate(out, out=out, where=flip)


def _interpolate_host(grid, coords):
    """:func:`slice_interpolate` (trilinear) on the CPU: coords (..., 3) (x, y, z) -> (...) values."""
    zyx = np.array(coords.reshape(-1, 3)[:, ::-1].T, dtype=np.float64)
    out = np.empty(zyx.shape[1], dtype=np.result_type(grid.dtype, coords.dtype))
    _interpolate_padded(_edge_padded(grid), zyx, out)
    return out.reshape(coords.shape[:-1])


def slice_insert(grid, coords, values, xp) -> None:
    """Adjoint of trilinear :func:`slice_interpolate`: scatter-add ``values`` (...) at ``coords`` (..., 3).

    Adjoint for the real inner product ``Re <a, b> = Re sum a * conj(b)``: a value at x < 0 goes, conjugated,
    to the Friedel mate. ``grid`` (P, P, P//2+1), complex or real (weights), is updated in place.
    """
    idx, w, _, flip = grid_corners(coords, grid.shape, xp)
    _scatter(grid, idx, w, flip, values, xp)


class Projector:
    """Fourier-slice projector of a real (N, N, N) map.

    Parameters
    ----------
    volume : (N, N, N) real array (host or device), N even, origin at N//2.
    bk : backend from :func:`cryopipe.backend.get_backend`.
    padding : oversampling of the 3D transform (2 as RELION).
    interpolation : "trilinear" (with gridding pre-correction) or "nearest" (without).

    Attributes: ``grid`` (P, P, P//2+1) complex64 on the device, ``box`` N, ``padding``, ``r_max`` (N//2).
    """

    def __init__(self, volume, bk, padding: int = 2, interpolation: str = "trilinear"):
        xp = bk.xp
        vol = bk.asarray(volume, dtype=xp.float32)
        n = vol.shape[0]
        if vol.ndim != 3 or vol.shape != (n, n, n) or n % 2:
            raise InputError(f"volume must be a cube with an even box, got shape {vol.shape}", field="volume")
        self.bk, self.box, self.padding, self.interpolation = bk, n, int(padding), interpolation
        self.r_max = n // 2
        p = self.padding * n
        if interpolation == "trilinear":
            vol = vol / _gridding_window(n, p, xp).astype(xp.float32)
        padded = xp.zeros((p, p, p), dtype=xp.float32)
        lo = p // 2 - n // 2
        padded[lo : lo + n, lo : lo + n, lo : lo + n] = vol
        grid = bk.fft.rfftn(xp.fft.ifftshift(padded)).astype(xp.complex64)
        if bk.is_gpu or interpolation != "trilinear":
            self.grid = grid
        else:  # the host's reads go through an edge-padded copy; grid is a view of it, so memory is not doubled
            self._padded = _edge_padded(grid)
            self.grid = self._padded[:p, :p, : p // 2 + 1]

    def slice_values(self, rotations, kxy):
        """Central-slice values (B, n) complex64 (device) at 2D frequencies ``kxy`` (n, 2) = (kx, ky) float32
        (device; px of the N box) for rotations (B, 3, 3) float64 (host): the map's transform at A.T @ (kx, ky, 0).

        On the CPU the orientations are shared between the backend's threads (compiled trilinear reads that release
        the GIL); the grid must not change after construction.
        """
        xp = self.bk.xp
        a = np.asarray(rotations, dtype=np.float64)[:, :2, :] * self.padding  # (B, 2, 3)
        if self.bk.is_gpu or self.interpolation != "trilinear":
            coords = xp.einsum("pi,bij->bpj", kxy, xp.asarray(a, dtype=xp.float32))
            return slice_interpolate(self.grid, coords, xp, self.interpolation).astype(xp.complex64, copy=False)
        k = np.asarray(kxy, dtype=np.float64).T  # (2, n)
        out = np.empty((len(a), k.shape[1]), dtype=np.complex64)

        def part(sl: slice) -> None:
            zyx = np.empty((3, len(a[sl]), k.shape[1]))
            for d in range(3):  # z, y, x; element-wise, not BLAS, so a point's value never depends on its batch
                np.multiply(a[sl, 0, 2 - d, None], k[0], out=zyx[d])
                zyx[d] += a[sl, 1, 2 - d, None] * k[1]
            _interpolate_padded(self._padded, zyx.reshape(3, -1), out[sl].reshape(-1))

        workers = max(1, min(self.bk.fft.workers, len(a)))
        bounds = np.linspace(0, len(a), workers + 1).astype(int)
        parts = [slice(b0, b1) for b0, b1 in zip(bounds[:-1], bounds[1:], strict=True)]
        if workers == 1:
            part(parts[0])
        else:
            with ThreadPoolExecutor(workers) as pool:
                list(pool.map(part, parts))
        return out

    def project(self, rotations, r_max: float | None = None):
        """Half spectra (B, N, N//2+1) complex64 (device) of the projections for rotations (B, 3, 3) or (3, 3).

        Normalised as ``rfft2`` of the line-integral image (unit voxel size along z) with its origin at
        N//2 moved to index 0. Frequencies beyond ``r_max`` (px of the N box, at most N//2) are zero.
        """
        xp, n = self.bk.xp, self.box
        rot = _as_rotations(rotations, self.bk)
        r_max = min(self.r_max if r_max is None else r_max, n // 2)
        flat, k2 = _half_plane(n, r_max, xp)
        out = xp.zeros((len(rot), n * (n // 2 + 1)), dtype=xp.complex64)
        step = _batch_size(self.bk, len(flat))
        for b0 in range(0, len(rot), step):
            out[b0 : b0 + step, flat] = self.slice_values(rot[b0 : b0 + step], k2)
        return out.reshape(len(rot), n, n // 2 + 1)

    def project_real(self, rotations, r_max: float | None = None):
        """Projection images (B, N, N) float32 (device), origin at N//2, pixel values = line integrals."""
        spec = self.project(rotations, r_max)
        img = self.bk.fft.irfft2(spec, s=(self.box, self.box))
        return self.bk.xp.fft.fftshift(img, axes=(-2, -1)).astype(self.bk.xp.float32)


class BackProjector:
    """Accumulates 2D half spectra in a padded 3D half grid and reconstructs the map (RELION's M-step).

    Parameters
    ----------
    box : N (even), the image and map box.
    bk : backend.
    padding : oversampling of the 3D grid (2 as RELION).
    double : accumulate in complex128/float64; default True on the CPU and False on the GPU (complex64 and
        float32 atomics, which are fast on every card; float64 atomics are slow on consumer GPUs).

    Attributes (device arrays holding plain sums, without Friedel symmetrisation, so that they can be
    summed across MPI ranks with Allreduce, or with :meth:`add`, before :meth:`reconstruct`):

    - ``data`` (P, P, P//2+1) complex: sum of trilinear weight * value.
    - ``weight`` (P, P, P//2+1) real: sum of trilinear weight * per-pixel weight.
    - ``moment`` (3, P, P, P//2+1) real: sum of trilinear weight * per-pixel weight * (x, y, z) offset of
      the sample from the voxel (padded voxels), for the first-order correction in :meth:`reconstruct`.
    """

    def __init__(self, box: int, bk, padding: int = 2, double: bool | None = None):
        if box % 2:
            raise InputError(f"box must be even, got {box}", field="box")
        xp = bk.xp
        self.bk, self.box, self.padding = bk, int(box), int(padding)
        double = not bk.is_gpu if double is None else double
        p = self.padding * self.box
        shape = (p, p, p // 2 + 1)
        self.data = xp.zeros(shape, dtype=xp.complex128 if double else xp.complex64)
        self.weight = xp.zeros(shape, dtype=xp.float64 if double else xp.float32)
        self.moment = xp.zeros((3,) + shape, dtype=self.weight.dtype)
        self.extent = 0  # largest r_max inserted (px of the N box): what lies beyond is zero

    def insert(self, images_ft, rotations, weights=None, r_max: float | None = None) -> None:
        """Add half spectra ``images_ft`` (B, N, N//2+1) (e.g. CTF * F) with real ``weights`` (B, N, N//2+1)
        (e.g. CTF^2; default 1) along the central slices of ``rotations`` (B, 3, 3) or (3, 3): the adjoint
        of the projector's trilinear interpolation (:func:`slice_insert`), as RELION. Frequencies beyond
        ``r_max`` (px of the N box, default and at most N//2) are skipped.
        """
        xp, n = self.bk.xp, self.box
        rot = _as_rotations(rotations, self.bk)
        if tuple(images_ft.shape) != (len(rot), n, n // 2 + 1):
            raise InputError(f"images_ft shape {images_ft.shape} != {(len(rot), n, n // 2 + 1)}", field="images_ft")
        r_max = min(n // 2 if r_max is None else r_max, n // 2)
        self.extent = max(self.extent, int(np.ceil(r_max)))
        flat, k2 = _half_plane(n, r_max, xp)
        corners = xp.asarray(CORNER_OFFSETS)
        step = _batch_size(self.bk, len(flat))
        for b0 in range(0, len(rot), step):
            sl = slice(b0, b0 + step)
            coords = _slice_coords(k2, rot[sl], self.padding, xp)
            vals, wts = (None if a is None else self.bk.asarray(a[sl]).reshape(-1, n * (n // 2 + 1))[:, flat]
                         for a in (images_ft, weights))
            if xp is not np:
                slice_kernels.insert(self.data, self.weight, self.moment, coords, vals, wts, xp)
                continue
            idx, w, t, flip = grid_corners(coords, self.data.shape, xp)
            _scatter(self.data, idx, w, flip, vals, xp)
            if wts is not None:
                w = w * wts.astype(w.dtype)
            _scatter(self.weight, idx, w, flip, 1.0, xp)
            for d in range(3):
                offset = t[None, ..., d] - corners[:, d].reshape((8,) + (1,) * (t.ndim - 1))
                _scatter(self.moment[d], idx, w, flip, offset, xp)

    def add(self, other: BackProjector) -> None:
        """Accumulate another back-projector's sums (same box and padding) into this one."""
        if other.data.shape != self.data.shape:
            raise InputError("back-projectors differ in box or padding", field="padding")
        self.data += self.bk.asarray(other.data)
        self.weight += self.bk.asarray(other.weight)
        self.moment += self.bk.asarray(other.moment)
        self.extent = max(self.extent, other.extent)

    def allreduce(self, comm) -> None:
        """Sum ``data``, ``weight`` and ``moment`` over the ranks of ``comm`` in place (every rank gets the totals).

        Only voxels that :meth:`insert` can have touched travel, those within padded radius ``padding * extent + 2``
        (trilinear corners): half the grid at Nyquist, 1/50 at a quarter of it. They travel in single precision
        (complex64 / float32, rounded once per rank: float32 tolerance against one rank, half the bytes).
        """
        if comm.Get_size() == 1:
            return
        xp = self.bk.xp
        self.extent = max(comm.allgather(self.extent))
        r = self.padding * self.extent + 2
        near = xp.flatnonzero((_radius2(self.data.shape[0], xp) <= r * r).ravel())
        for arr in (self.data, self.weight, *self.moment):
            flat = arr.reshape(-1)  # a view: the arrays are contiguous
            single = xp.complex64 if xp.iscomplexobj(arr) else xp.float32
            host = np.ascontiguousarray(self.bk.asnumpy(flat[near].astype(single)))
            flat[near] = self.bk.asarray(allreduce_sum(comm, host))

    def reconstruct(self, tau2=None, wiener_constant: float | None = None, iterations: int = 3):
        """The (N, N, N) float32 map (device) from the accumulated sums.

        Per voxel ``F = (data - grad F . moment) / (weight + reg)``:

        - ``reg = (wiener_constant + 1 / tau2[shell]) / padding**3`` (RELION's regularised M-step;
          ``padding**3`` is RELION's oversampling correction, which puts ``tau2`` and ``wiener_constant``
          in the units of the inserted weights of an unpadded N box). ``tau2`` (N//2+1,) is the signal
          power per shell of the N box, shell = round(|k_padded| / padding); voxels in shells with
          tau2 <= 0 or beyond its end are zeroed. Without either, voxels with weight below
          1e-8 * max(weight) are zeroed.
        - ``grad F . moment`` removes the first-order error of the weighted average ``data / weight``
          (RELION's estimate, ``iterations=0``): the samples around a voxel are not centred on it. The
          gradient comes from the current estimate (support-cropped to the N box, gridding-corrected), so
          ``iterations`` passes are made. On noiseless data (32 px, 3000 views) this lifts the FSC to the
          truth up to 0.8 Nyquist from 0.76 to 0.99 and cuts the real-space error from 5.5% to 1.4%, with or
          without CTF weighting; on noisy data it changes little. RELION's iterative density compensation
          (Pipe-Menon weights) did not help here: per-voxel weights cannot remove this bias.

        Then inverse FFT, crop to N and gridding correction. Cost per pass: one irfftn and three rfftn of P^3.
        """
        xp, fft, n, pad = self.bk.xp, self.bk.fft, self.box, self.padding
        p = pad * n
        lo = p // 2 - n // 2
        data = _friedel_sum(self.data, xp)
        weight = _friedel_sum(self.weight, xp)
        if tau2 is None and wiener_constant is None:
            valid = weight > 1e-8 * float(weight.max())
            inv = xp.where(valid, 1.0 / xp.where(valid, weight, 1.0), 0.0)
        else:
            reg = xp.zeros(weight.shape, dtype=weight.dtype) + (wiener_constant or 0.0)
            keep = None
            if tau2 is not None:
                tau2 = self.bk.asarray(tau2, dtype=weight.dtype)
                shell = xp.rint(xp.sqrt(_radius2(p, xp)) / pad).astype(xp.int64)
                t = tau2[xp.minimum(shell, len(tau2) - 1)]
                keep = (shell < len(tau2)) & (t > 0)
                reg = reg + 1.0 / xp.where(keep, t, 1.0)
            inv = 1.0 / (weight + reg / pad**3)
            if keep is not None:
                inv = xp.where(keep, inv, 0.0)
        inv = inv.astype(weight.dtype)
        vol_ft = data * inv
        if iterations:
            moment = [_friedel_sum(m, xp, sign=-1) for m in self.moment]  # offsets flip sign on mirroring
            to_map = xp.zeros((p, p, p), dtype=weight.dtype)  # crop to the N box and gridding correction
            to_map[lo : lo + n, lo : lo + n, lo : lo + n] = 1.0 / _gridding_window(n, p, xp)
            to_map = xp.fft.ifftshift(to_map)
            r = xp.fft.ifftshift(xp.arange(p, dtype=weight.dtype) - p // 2)
            r = (r[None, None, :], r[None, :, None], r[:, None, None])  # x, y, z in the wrapped layout
        for _ in range(iterations):
            vol = fft.irfftn(vol_ft, s=(p, p, p)) * to_map
            grad_dot_m = sum(fft.rfftn(r[d] * vol) * moment[d] for d in range(3)) * (-2j * np.pi / p)
            vol_ft = (data - grad_dot_m) * inv
        vol = xp.fft.fftshift(fft.irfftn(vol_ft, s=(p, p, p)))
        vol = vol[lo : lo + n, lo : lo + n, lo : lo + n] / _gridding_window(n, p, xp)
        return vol.astype(xp.float32)


def _radius2(p: int, xp):
    """|k|^2 on the (P, P, P//2+1) half grid, in padded voxels."""
    k = xp.fft.fftfreq(p, 1.0 / p)
    return k[:, None, None] ** 2 + k[None, :, None] ** 2 + xp.arange(p // 2 + 1)[None, None, :] ** 2


def _friedel_sum(a, xp, sign: int = 1):
    """Copy of half grid ``a`` whose kx = 0 plane holds a(k) + sign * conj a(-k): the sums of both mates."""
    p = a.shape[0]
    neg = (-xp.arange(p)) % p
    out = a.copy()
    out[:, :, 0] = a[:, :, 0] + sign * xp.conj(a[:, :, 0][neg][:, neg])
    return out
