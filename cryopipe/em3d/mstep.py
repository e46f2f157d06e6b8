"""M-step: reduce the E-step sums over MPI ranks, reconstruct class maps, update noise, signal and priors.

Reconstruction per class is RELION's data / (weight + 1/tau2) on the 2x-oversampled grid with gridding
correction (:meth:`cryopipe.projection.BackProjector.reconstruct`), in double precision. The E-step sums every
class in two random halves of the particles; the FSC of the two unregularised half reconstructions gives the
class's spectral SNR (2 FSC / (1 - FSC)) and with it tau2 = tau2_fudge * SSNR / <weight>, the signal power in
the units of the weights (sum C^2 / sigma2); the class resolution is the last shell before the SNR first drops
below 1. (RELION's 3D classification takes tau2 from the map's power spectrum; from a low-passed reference that
holds the map near the reference's resolution, which the half-set SNR avoids.)
"""

from __future__ import annotations

import numpy as np

from cryopipe.em3d.estep import EStepResult, pad_map
from cryopipe.fourier import fsc, soft_circular_mask
from cryopipe.parallel import allreduce_sum


def reduce_sums(res: EStepResult, comm) -> None:
    """Sum the E-step accumulators of all ranks in place (every rank gets the totals)."""
    if comm.Get_size() == 1:
        return
    for bp in (bp for pair in res.backprojectors for bp in pair):
        bp.allreduce(comm)
    for name in ("sigma2_sum", "sigma2_count", "class_weight"):
        allreduce_sum(comm, getattr(res, name))
    scalars = allreduce_sum(comm, np.array([res.offset2_sum, float(res.n)]))
    res.offset2_sum, res.n = float(scalars[0]), int(scalars[1])


def _shell_index(shape, padding: int, xp):
    p = shape[0]
    kz = xp.fft.fftfreq(p, 1.0 / p)[:, None, None]
    ky = xp.fft.fftfreq(p, 1.0 / p)[None, :, None]
    kx = xp.arange(shape[2])[None, None, :]
    return xp.rint(xp.sqrt(kx**2 + ky**2 + kz**2) / padding).astype(xp.int64)


def mean_weight_per_shell(bp, bk) -> np.ndarray:
    """Mean back-projected weight per shell of the unpadded box (n//2+1,), in unpadded-voxel units (x padding^3)."""
    xp = bk.xp
    n = bp.box
    shell = _shell_index(bp.weight.shape, bp.padding, xp).ravel()
    keep = shell <= n // 2
    sums = xp.bincount(shell[keep], weights=bp.weight.ravel()[keep].astype(xp.float64), minlength=n // 2 + 1)
    counts = xp.bincount(shell[keep], minlength=n // 2 + 1)
    return bk.asnumpy(sums / xp.maximum(counts, 1)) * bp.padding**3


def signal_power(volume) -> np.ndarray:
    """Per-shell mean |F|^2 / 2 (N//2+1,) of a real map's unshifted rfftn (the per-component power of slices)."""
    vol = np.asarray(volume, dtype=np.float64)
    n = vol.shape[0]
    f = np.fft.rfftn(np.fft.ifftshift(vol))
    k = np.fft.fftfreq(n, 1.0 / n)
    shell = np.rint(np.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + np.arange(n // 2 + 1) ** 2)).astype(int)
    keep = shell <= n // 2
    power = np.bincount(shell[keep], weights=(np.abs(f) ** 2)[keep], minlength=n // 2 + 1)
    return 0.5 * power / np.maximum(np.bincount(shell[keep], minlength=n // 2 + 1), 1)


def half_fsc(bp1, bp2, bk, r_max: int) -> np.ndarray:
    """FSC (n//2+1,) of two back-projectors' nearly unregularised reconstructions, 0 beyond shell ``r_max``.

    data / (weight + eps) with eps = 1e-2 of the largest weight: without it, voxels at the edge of the data
    (weights near 0) dominate the FSC and make it depend on rounding (e.g. on the number of MPI ranks).
    """
    maps = []
    for bp in (bp1, bp2):
        eps = 1e-2 * float(bk.asnumpy(bp.weight.max())) * bp.padding**3
        maps.append(bp.reconstruct(wiener_constant=max(eps, 1e-300)).astype(bk.xp.float64))
    curve = np.array(bk.asnumpy(fsc(*maps)), dtype=np.float64)
    curve[int(r_max) + 1 :] = 0.0
    return curve


def ssnr_from_fsc(curve, combined: bool = True) -> np.ndarray:
    """Spectral SNR from an FSC of half-maps: 2 FSC / (1 - FSC) for the combined data, FSC / (1 - FSC) per half."""
    f = np.clip(np.asarray(curve, dtype=np.float64), 0.0, 0.999)
    return (2.0 if combined else 1.0) * f / (1.0 - f)


def reconstruct(bp, ssnr, tau2_fudge: float, box: int, bk) -> tuple[np.ndarray, np.ndarray]:
    """Regularised map (box^3) float32 host and its tau2 (box//2+1,) from a back-projector and the SSNR of its data.

    tau2 = tau2_fudge * SSNR / <weight> per shell (weights are sum C^2/sigma2), i.e. RELION's data / (weight +
    1/tau2) is a Wiener filter at that SNR. The SSNR comes from this iteration's half-map FSC, so a low-passed
    reference does not hold the map at its resolution. The reconstruction happens in the back-projector's
    (working) box and is zero-padded in Fourier to ``box``.
    """
    n = bp.box
    mean_w = mean_weight_per_shell(bp, bk)
    s = np.asarray(ssnr, dtype=np.float64)[: n // 2 + 1]
    tau2 = np.zeros(box // 2 + 1)
    tau2[: n // 2 + 1] = tau2_fudge * s / np.maximum(mean_w, 1e-300) * (mean_w > 0)
    vol = bk.xp.asarray(bp.reconstruct(tau2=tau2[: n // 2 + 1]), dtype=bk.xp.float64)
    return bk.asnumpy_pinned(pad_map(vol, box).astype(bk.xp.float32)), tau2  # cast before the copy: half the bytes


def resolution_shell(ssnr: np.ndarray) -> int:
    """Last shell before the spectral SNR first drops below 1 (>= 1)."""
    below = np.flatnonzero(np.asarray(ssnr)[1:] < 1.0)
    return int(below[0]) if len(below) else len(ssnr) - 1


def solvent_mask(box: int, angpix: float, diameter_A: float, edge_px: float = 3.0) -> np.ndarray:
    """Soft spherical mask (box^3) float32 of the particle diameter (RELION's solvent flattening)."""
    radius = min(0.5 * diameter_A / angpix, box / 2 - edge_px)
    return np.asarray(soft_circular_mask(box, radius, edge_px, ndim=3))


def update_sigma2(sigma2: np.ndarray, res: EStepResult) -> np.ndarray:
    """New (G, N//2+1) noise power: weighted sum |X - C P|^2 / (2 * weighted pixel count) where counted."""
    new = np.array(sigma2, dtype=np.float64, copy=True)
    ok = res.sigma2_count > 0
    ok[:, 0] = False
    new[ok] = res.sigma2_sum[ok] / (2.0 * res.sigma2_count[ok])
    return new


def update_sigma_offset(res: EStepResult) -> float:
    """Translation-prior s.d. (px): sqrt(sum w |origin|^2 / (2 n))."""
    return float(np.sqrt(res.offset2_sum / (2.0 * max(res.n, 1))))
