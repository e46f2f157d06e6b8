"""Benchmark of ``cryopipe bioem``'s integration: microseconds per (image x orientation x CTF) grid point.

Workload (the full one, for which the target below is set): 224 x 224 px images, 81 x 81 displacements
(DISPLACE_CENTER 40 1), 4,608 orientations x 32 CTF points, a few thousand synthetic images; scale it with the flags.
The three correlation transforms (``--transform all``, or one of them) are timed on the same problem and must give
the same ln P:

* ``fft``: per grid point the product of spectra, one inverse FFT of 224 x 224, the gather of the 81 x 81
  displacements and the closed form, reduced by log-sum-exp. Its floor is the batched inverse real FFT alone.
* ``pruned``: the inverse DFT evaluated at the 81 x 81 displacements only, as folded real GEMMs over a batch of grid
  points. Its floor is those GEMMs alone. ``--band R`` zeroes the CTF beyond R Fourier pixels (a working
  resolution limit, e.g. R = 56 = Nyquist/2); the pruned transform then drops the zero rows and columns.
* ``factored``: the same sums with the CTF moved into the row matrices (:mod:`cryopipe.bioem.factored`), GEMMs
  batched over orientations. Its floor is its GEMMs alone.

CTF kernels (``--ctf-kind``): ``isotropic`` (default: BioEM's model, a defocus series without astigmatism, 300 kV),
``astigmatic`` (500 A astigmatism at 30 degrees: no mirror symmetry, the factored transform's general case) or
``random`` (uniform noise, as before 2026-12-02: no symmetry). ``--per-image-ctf`` gives every image its own
kernel set (as the stage does with per-particle defocus estimates).

Printed per transform: us per grid point, FLOPs per grid point (cost model) and the rate they imply, the floor,
the ratio to the floor, where one block's time goes; then the speed-up and largest ln P difference of each
pruned transform against the FFT path.

    python benchmarks/bioem.py --device gpu --images 64 --orientations 512 --ctf 32   # GPU, 1.05e6 grid points
    python benchmarks/bioem.py --device gpu --images 64 --orientations 512 --ctf 32 --band 56
    python benchmarks/bioem.py --device gpu --images 1000 --transform factored      # the full 1.47e8 points
    python benchmarks/bioem.py --device gpu --images 128 --orientations 1024 --ctf-kind astigmatic --per-image-ctf
    python benchmarks/bioem.py --small                                               # CPU, a few hundred points

Anchors: BioEM 2.1 takes 109 us per grid point on 2 CPU threads (224 px, 81 x 81 shifts); the paper 9.6 us on a
GTX Titan; a plain CuPy multiply + inverse FFT + max 1.07 us on one H100; target on one H100 <= 0.25 us.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from common import key_value_table, mean_time

from cryopipe.backend import get_backend, gpu_available
from cryopipe.bioem.compat import displacements
from cryopipe.bioem.factored import FactoredTransform
from cryopipe.bioem.integrate import Problem, integrate, score_block
from cryopipe.bioem.pruned import PrunedTransform, cost_model
from cryopipe.ctf import CTFParams, ctf_2d


def _fft_floor_us(bk, box: int, dtype, batch: int, repeat: int) -> float:
    """Time of one batched inverse real FFT (batch, box, box//2+1) -> (batch, box, box), per transform (us)."""
    rng = np.random.default_rng(1)
    shape = (batch, box, box // 2 + 1)
    z = bk.asarray(rng.standard_normal(shape) + 1j * rng.standard_normal(shape), dtype=dtype)
    return mean_time(lambda: bk.fft.irfft2(z, s=(box, box)), bk, repeat) / batch * 1e6


def _gemm_floor_us(bk, tr: PrunedTransform, real, batch: int, repeat: int) -> float:
    """Time of the pruned transform's GEMMs alone (rows then columns) for ``batch`` grid points, per point (us)."""
    rng = np.random.default_rng(2)
    zs, zd = (bk.asarray(rng.standard_normal((2, k, batch, tr.nvp)), dtype=real) for k in (tr.n_sp, tr.n_dp))
    return mean_time(lambda: tr.gemms(zs, zd), bk, repeat) / batch * 1e6


def _breakdown_us(bk, tr: PrunedTransform, prob: Problem, batch_images: int, repeat: int) -> dict:
    """Where one block's time goes (64 orientations x ``batch_images`` images x all CTF points), per grid point
    (us): the fold, the GEMMs, the transform (fold + GEMMs), and the whole block (with the CTF sums, G = K conj(I)
    and the reduction: the fused kernel on the GPU)."""
    from cryopipe.bioem.kernels import fused_reduction

    P = prob.project(0, 64)
    G = prob.ctf[:1] * bk.xp.conj(prob.spectra[:batch_images])[:, None]
    zs, zd = tr.fold_rows(P, G)
    g = 64 * batch_images * prob.ctf.shape[1]

    fused = fused_reduction(bk) if bk.is_gpu else None
    images = np.arange(batch_images)
    out = {"fold": lambda: tr.fold_rows(P, G), "GEMMs": lambda: tr.gemms(zs, zd),
           "fold + GEMMs": lambda: tr.correlate_products(P, G),
           "whole block": lambda: score_block(prob, P, images, bk, fused, False, 0, tr)}
    if fused is not None:
        xp, parts = bk.xp, tr.correlate_products(P, G)
        shape = (64, batch_images, prob.ctf.shape[1])
        sums = [xp.ones(shape, dtype=xp.float64) * v for v in (1.0, 2.0, 0.0)]
        co, coo = (bk.asarray(a[:batch_images])[None, :, None] for a in (prob.co, prob.coo))
        n_pix = prob.spectra.shape[-2] ** 2
        out["reduction kernel (+ per-image max, sum)"] = lambda: fused(tr, parts, co, coo, *sums, n_pix, False)
    return {k: mean_time(f, bk, repeat) / g * 1e6 for k, f in out.items()}


def _ctf_kernels(kind: str, box: int, n_ctf: int, n_sets: int, rng) -> np.ndarray:
    """(n_sets, C, N, H) float64 host CTF kernels of ``kind`` (module docstring), 1.1 A/px, defocus 0.8-3 um."""
    if kind == "random":
        return rng.uniform(-1, 1, (n_sets, n_ctf, box, box // 2 + 1))
    d = np.linspace(8000.0, 30000.0, n_ctf)[None] + rng.uniform(-500, 500, (n_sets, 1))
    astig = 250.0 if kind == "astigmatic" else 0.0
    p = CTFParams((d + astig).ravel(), (d - astig).ravel(), 30.0, 300.0, 2.7, 0.1)
    return ctf_2d(p, box, 1.1, get_backend("cpu"), half=True, dtype=np.float64).reshape(n_sets, n_ctf, box, -1)


def make_problem(bk, box: int, max_shift: int, n_orient: int, n_ctf: int, n_images: int, single: bool,
                 band: float | None, ctf_kind: str = "isotropic", per_image: bool = False) -> Problem:
    """A synthetic problem: random images, a bank of 64 random projection spectra, CTF kernels of ``ctf_kind``
    (one set, or one per image; zero beyond ``band`` Fourier pixels when given)."""
    xp = bk.xp
    real, cplx = (xp.float32, xp.complex64) if single else (xp.float64, xp.complex128)
    rng = np.random.default_rng(0)
    h = box // 2 + 1
    images = rng.standard_normal((n_images, box, box))
    spectra = bk.fft.rfft2(bk.asarray(images, dtype=real)).astype(cplx)
    ctf = _ctf_kernels(ctf_kind, box, n_ctf, n_images if per_image else 1, rng)
    if band is not None:
        ky, kx = np.fft.fftfreq(box, 1.0 / box)[:, None], np.arange(h)[None]
        ctf = ctf * (ky ** 2 + kx ** 2 <= band ** 2)
    ctf = bk.asarray(ctf, dtype=real)
    proj_bank = bk.asarray(rng.standard_normal((64, box, h)) + 1j * rng.standard_normal((64, box, h)), dtype=cplx)

    def project(o0, o1):  # synthetic projections: the per-grid-point cost is measured, not the forward model
        return proj_bank[np.arange(o0, o1) % 64]

    return Problem(spectra, images.sum(axis=(1, 2)), (images ** 2).sum(axis=(1, 2)), ctf, np.zeros((1, n_ctf)),
                   displacements(box, max_shift, 1), n_orient, project)


def _factored_breakdown_us(bk, tr: FactoredTransform, prob: Problem, batch_images: int, repeat: int) -> dict:
    """Where one block's time goes (256 orientations x ``batch_images`` images x all CTF points), per grid point
    (us): the operands (Q = P conj(I), folded, in the GEMM layout; the CTF matrices are cached when shared), the
    GEMMs, the reduction kernel, the whole block. The GEMMs alone are the floor."""
    from cryopipe.bioem.kernels import fused_reduction

    n_o = min(256, prob.n_orientations)
    P = prob.project(0, n_o)
    images = np.arange(batch_images)
    shared = prob.ctf.shape[0] == 1
    K = prob.ctf if shared else prob.ctf[:batch_images]
    conj = bk.xp.conj(prob.spectra[:batch_images])
    ops = tr.operands(P, K, conj, shared)
    g = n_o * batch_images * prob.ctf.shape[1]
    fused = fused_reduction(bk) if bk.is_gpu else None
    out = {"CTF matrices": lambda: tr.matrices(K, cached=False),
           "operands (Q, folded)": lambda: tr.operands(P, K, conj, shared), "GEMMs": lambda: tr.gemms(*ops),
           "row GEMMs alone": lambda: [bk.xp.matmul(m, q[t]) for m, q in ((ops[0], ops[2]), (ops[1], ops[3]))
                                       for t in (0, 1)],
           "whole block": lambda: score_block(prob, P, images, bk, fused, False, 0, tr)}
    if fused is not None:
        xp, parts = bk.xp, tr.gemms(*ops)
        shape = (n_o, batch_images, prob.ctf.shape[1])
        sums = [xp.ones(shape, dtype=xp.float64) * v for v in (1.0, 2.0, 0.0)]
        co, coo = (bk.asarray(a[:batch_images])[None, :, None] for a in (prob.co, prob.coo))
        n_pix = prob.spectra.shape[-2] ** 2
        out["reduction kernel (+ per-image max, sum)"] = lambda: fused(tr, parts, co, coo, *sums, n_pix, False)
    times = {k: mean_time(f, bk, repeat) / g * 1e6 for k, f in out.items()}
    tr.matrices(K)
    return times


def run(device: str, box: int, max_shift: int, n_orient: int, n_ctf: int, n_images: int, single: bool,
        transforms=("fft", "pruned", "factored"), band: float | None = None, repeat: int = 3,
        ctf_kind: str = "isotropic", per_image: bool = False) -> dict:
    """Time ``integrate`` with each transform; returns dict(device, points, paths={name: {...}}, max_dlogp)."""
    bk = get_backend(device)
    prob = make_problem(bk, box, max_shift, n_orient, n_ctf, n_images, single, band, ctf_kind, per_image)
    points = n_images * n_orient * n_ctf
    real = np.float32 if single else np.float64
    cplx = bk.xp.complex64 if single else bk.xp.complex128
    batch = min(256, max(8, points))
    paths, sums = {}, {}
    for name in transforms:
        stats: dict = {}
        integrate(make_problem(bk, box, max_shift, 2, min(n_ctf, 2), min(n_images, 2), single, band, ctf_kind,
                               per_image), bk, transform=name)  # warm-up: plans, kernel compilation
        bk.synchronize()
        t = time.perf_counter()
        res = integrate(prob, bk, transform=name, stats=stats)
        bk.synchronize()
        wall = time.perf_counter() - t
        sums[name] = res.log_sum
        if name == "fft":
            flop = cost_model(box, prob.shifts)["fft_flop"]
            floor = _fft_floor_us(bk, box, cplx, batch, repeat)
            alone = None
        elif name == "pruned":
            tr = PrunedTransform(box, prob.shifts, bk, real,
                                 None if band is None else _band_mask(box, band))
            flop = tr.cost["pruned_flop"]
            floor = _gemm_floor_us(bk, tr, real, 8 * batch, repeat)
            alone = _breakdown_us(bk, tr, prob, min(n_images, 8), repeat)
        else:
            tr = FactoredTransform(box, prob.shifts, bk, real, None if band is None else _band_mask(box, band))
            flop = stats["flop_per_point"]
            alone = _factored_breakdown_us(bk, tr, prob, min(n_images, 8), repeat)
            floor = alone["GEMMs"]
        us = wall / points * 1e6
        paths[name] = dict(wall_s=wall, us_per_point=us, flop=flop, gflops=flop / us * 1e-3, floor_us=floor,
                           used=stats.get("transform", name), transform_alone_us=alone,
                           symmetric=stats.get("mirror_symmetric"),
                           kept=(stats.get("kept_rows"), stats.get("kept_columns")))
    ref = sums.get("fft")
    dl = {k: float(np.max(np.abs(v - ref))) for k, v in sums.items() if k != "fft"} if ref is not None else {}
    return {"device": bk.describe(), "points": points, "paths": paths, "max_dlogp": dl,
            "mirror_symmetric": paths.get("factored", {}).get("symmetric")}


def _band_mask(box: int, band: float) -> np.ndarray:
    ky, kx = np.fft.fftfreq(box, 1.0 / box)[:, None], np.arange(box // 2 + 1)[None]
    return ky ** 2 + kx ** 2 <= band ** 2


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "gpu"],
                    help="auto: the GPU when CuPy sees one, else the CPU with the --small case")
    ap.add_argument("--small", "--quick", action="store_true",
                    help="a few hundred grid points at 224 px on the CPU (under a minute)")
    ap.add_argument("--box", type=int, default=224)
    ap.add_argument("--max-shift", type=int, default=40, help="displacements +-M px, step 1 (40: 81 x 81)")
    ap.add_argument("--orientations", type=int, default=4608)
    ap.add_argument("--ctf", type=int, default=32)
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--transform", choices=["all", "fft", "pruned", "factored"], default="all")
    ap.add_argument("--ctf-kind", choices=["isotropic", "astigmatic", "random"], default="isotropic")
    ap.add_argument("--per-image-ctf", action="store_true", help="one CTF kernel set per image")
    ap.add_argument("--band", type=float, help="zero the CTF beyond this radius (Fourier px): band-limited spectra")
    ap.add_argument("--precision", choices=["auto", "single", "double"], default="auto",
                    help="auto: single on the GPU, double on the CPU (as the stage)")
    a = ap.parse_args()
    if a.device == "auto":
        a.device = "gpu" if gpu_available() else "cpu"
        if a.device == "cpu" and not a.small:
            print("no GPU visible: running the --small case on the CPU")
            a.small = True
    if a.small:
        a.device, a.orientations, a.ctf, a.images = "cpu", 16, 4, 4
    single = a.precision == "single" or (a.precision == "auto" and a.device == "gpu")
    transforms = ("fft", "pruned", "factored") if a.transform == "all" else (a.transform,)
    r = run(a.device, a.box, a.max_shift, a.orientations, a.ctf, a.images, single, transforms, a.band,
            ctf_kind=a.ctf_kind, per_image=a.per_image_ctf)
    n_shift = 2 * a.max_shift + 1
    rows = [("workload", f"{a.box} px, {n_shift}x{n_shift} shifts, {a.orientations} orient x {a.ctf} CTF x "
                         f"{a.images} images = {r['points']:.3g} grid points"
                         + (f", CTF band-limited to {a.band:g} Fourier px" if a.band else "")
                         + f", {a.ctf_kind} CTF" + (" per image" if a.per_image_ctf else " shared")
                         + ("" if r["mirror_symmetric"] is None
                            else f" (mirror-symmetric: {r['mirror_symmetric']})")),
            ("device", f"{r['device']} ({'float32' if single else 'float64'})")]
    for name, p in r["paths"].items():
        floor_name = "batched irfft2 alone" if name == "fft" else "its GEMMs alone"
        if name == "factored":
            floor_name += " (one block)"
        kept = "" if p["kept"][0] is None else f", spectrum rows x cols kept {p['kept'][0]} x {p['kept'][1]}"
        rows += [(f"[{name}] us per grid point", f"{p['us_per_point']:.3f}  ({p['wall_s']:.3f} s{kept})"),
                 (f"[{name}] FLOP per grid point", f"{p['flop'] / 1e6:.2f} M  ({p['gflops']:.0f} GFLOP/s achieved)"),
                 (f"[{name}] floor: {floor_name}", f"{p['floor_us']:.3f} us per grid point"),
                 (f"[{name}] ratio to floor", f"{p['us_per_point'] / p['floor_us']:.2f}")]
        for part, us in (p["transform_alone_us"] or {}).items():
            rows.append((f"[{name}] one block: {part}", f"{us:.3f} us per grid point"))
    for name, dl in r["max_dlogp"].items():
        f, p = r["paths"]["fft"], r["paths"][name]
        rows += [(f"speed-up {name} vs fft", f"{f['us_per_point'] / p['us_per_point']:.2f}x"),
                 (f"max |ln P difference| {name} vs fft", f"{dl:.3g} (before the constant; float32 rounding)")]
    rows.append(("anchors", "BioEM 2.1 109 us (2 CPU threads); paper 9.6 us (GTX Titan); target <= 0.25 us (H100)"))
    print(key_value_table(rows))


if __name__ == "__main__":
    main()
