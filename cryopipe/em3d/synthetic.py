"""Synthetic particle stacks with ground truth, for tests and benchmarks of 3D classification and refinement.

Each particle is the exact projection of a pseudo-atomic model (:mod:`cryopipe.simulate`) in a uniformly
random orientation, its centre at the box centre minus its origin (RELION: the image shifted by +origin is
centred), multiplied by RELION's CTF (positive density, CTF(0) = +Q0, as extraction with --invert gives),
plus white noise; the background outside the particle circle is normalised to mean 0, s.d. 1, and the
images are Fourier-cropped to ``out_box``. SNR = variance of the noise-free CTF-modulated image inside the
particle circle / noise variance (at the simulation box).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cryopipe.ctf import CTFParams, ctf_2d
from cryopipe.fourier import fourier_crop, lowpass, normalise_background
from cryopipe.geometry import euler_to_matrix, random_euler
from cryopipe.io.mrc import write_mrc
from cryopipe.io.star import write_table
from cryopipe.simulate.complex import build_models, electrons_of
from cryopipe.simulate.render import project_atoms, render_volume


@dataclass
class SyntheticSpec:
    """What to simulate (lengths in Angstrom). ``models``: names of the models to mix, with ``fractions``."""

    n: int = 1000
    box: int = 64
    angpix: float = 2.5
    out_box: int = 40
    snr: float = 0.1
    models: tuple = ("conformation_1", "conformation_2")
    fractions: tuple = (0.5, 0.5)
    max_offset_A: float = 3.0
    defocus_A: tuple = (10000.0, 25000.0)
    bfactor: float = 0.0
    diameter_A: float = 130.0
    atom_sigma_A: float = 1.8
    seed: int = 7


def simulate_particles(spec: SyntheticSpec, out: Path, atoms: dict | None = None) -> dict:
    """Write ``out/particles.star`` + ``out/particles.mrcs`` and return the ground truth.

    atoms : {name: (xyz (n, 3) A, electrons (n,))}, default the demo complex (:func:`build_models`) after
        :func:`coarse_grain`.
    Returns {"star", "rotations" (n, 3, 3), "euler" (n, 3), "origins_A" (n, 2), "model" (n,) index into
    spec.models, "maps" {name: true map at out_box}, "angpix" (of out_box)}.
    """
    rng = np.random.default_rng(spec.seed)
    out = Path(out)
    if atoms is None:
        atoms = {k: coarse_grain(m.xyz, electrons_of(m)) for k, m in build_models().items()}
    which = rng.choice(len(spec.models), size=spec.n, p=np.asarray(spec.fractions) / np.sum(spec.fractions))
    euler = random_euler(spec.n, rng)
    rot = euler_to_matrix(euler[:, 0], euler[:, 1], euler[:, 2])
    origins = rng.uniform(-spec.max_offset_A, spec.max_offset_A, size=(spec.n, 2))
    du = rng.uniform(*spec.defocus_A, size=spec.n)
    dv = du - rng.uniform(0, 300, size=spec.n)
    dang = rng.uniform(0, 180, size=spec.n)
    ctf = CTFParams(du, dv, dang, 300.0, 2.7, 0.1, bfactor=spec.bfactor)
    n, nb = spec.box, spec.box // 2 + 1
    clean = np.empty((spec.n, n, n))
    for i in range(spec.n):
        xyz, el = atoms[spec.models[which[i]]]
        clean[i] = project_atoms(xyz, el, spec.atom_sigma_A, rot[i], n, spec.angpix,
                                 offset_px=tuple(-origins[i] / spec.angpix))
    c = np.asarray(ctf_2d(ctf, n, spec.angpix), dtype=np.float64).reshape(spec.n, n, nb)
    clean = np.fft.irfft2(np.fft.rfft2(clean) * c, s=(n, n))
    radius = 0.5 * spec.diameter_A / spec.angpix
    yy, xx = np.mgrid[:n, :n] - n // 2
    inside = yy**2 + xx**2 <= radius**2
    noise_sd = np.sqrt(clean[:, inside].var(axis=1).mean() / spec.snr)
    images = clean + rng.normal(0.0, noise_sd, size=clean.shape)
    images = normalise_background(images, radius)
    images = fourier_crop(images.astype(np.float32), spec.out_box)
    angpix = spec.angpix * spec.box / spec.out_box
    out.mkdir(parents=True, exist_ok=True)
    write_mrc(out / "particles.mrcs", images, angpix)
    table = pd.DataFrame({
        "rlnImageName": [f"{i + 1}@particles.mrcs" for i in range(spec.n)],
        "rlnDefocusU": du, "rlnDefocusV": dv, "rlnDefocusAngle": dang,
        "rlnAngleRot": euler[:, 0], "rlnAngleTilt": euler[:, 1], "rlnAnglePsi": euler[:, 2],
        "rlnOriginXAngst": origins[:, 0], "rlnOriginYAngst": origins[:, 1],
        "rlnOpticsGroup": 1, "rlnImagePixelSize": angpix, "rlnImageSize": spec.out_box, "rlnVoltage": 300.0,
        "rlnSphericalAberration": 2.7, "rlnAmplitudeContrast": 0.1,
    })
    truth_cols = ["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst"]
    write_table(out / "particles.star", table.drop(columns=truth_cols))
    maps = {name: render_volume(*atoms[name], spec.atom_sigma_A, spec.out_box, angpix) for name in spec.models}
    return {"star": out / "particles.star", "rotations": rot, "euler": euler, "origins_A": origins,
            "model": which, "maps": maps, "angpix": angpix}


def coarse_grain(xyz: np.ndarray, electrons: np.ndarray, grid_A: float = 4.0) -> tuple[np.ndarray, np.ndarray]:
    """Merge atoms in the same ``grid_A`` cube into one pseudo-atom at their electron-weighted centre.

    ~7x fewer atoms for the demo complex; the structure changes only at scales below ~grid_A, finer than the
    Nyquist limit of the test boxes (8 A at 4 A/px). Returns (xyz (m, 3), electrons (m,)).
    """
    _, cell = np.unique(np.floor(xyz / grid_A).astype(np.int64), axis=0, return_inverse=True)
    cell = cell.ravel()
    w = np.bincount(cell, electrons)
    centres = np.stack([np.bincount(cell, electrons * xyz[:, d]) for d in range(3)], axis=1) / w[:, None]
    return centres, w


def write_reference(volume: np.ndarray, angpix: float, resolution_A: float, path: Path) -> Path:
    """Write ``volume`` low-pass filtered at ``resolution_A`` as the initial reference."""
    write_mrc(path, lowpass(np.asarray(volume, dtype=np.float32), angpix, resolution_A, ndim=3), angpix)
    return Path(path)
