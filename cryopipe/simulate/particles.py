"""Particle stacks with known poses, classes and CTF, as extraction writes them: for the tests and benchmarks of
the stages that start from particles (initial model, 3D classification).

Each particle is the exact projection of one molecule model (pixel-integrated Gaussian atoms,
:func:`cryopipe.simulate.render.project_atoms`) in a uniformly random orientation, shifted by whole pixels,
multiplied by its RELION CTF (random defocus and astigmatism), plus white noise at a per-particle SNR (variance
of the noise-free image over the noise variance). Positive density, as extract writes particles after --invert.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cryopipe.ctf import CTFParams, ctf_2d
from cryopipe.geometry import euler_to_matrix, random_euler
from cryopipe.io.mrc import write_mrc
from cryopipe.io.star import write_star
from cryopipe.simulate.complex import AtomModel, electrons_of
from cryopipe.simulate.render import project_atoms


def simulate_particles(folder, models: dict[str, AtomModel], fractions: dict[str, float], n: int, box: int = 64,
                       angpix: float = 2.5, snr: float = 0.1, seed: int = 0, max_shift_px: int = 2,
                       defocus_A: tuple[float, float] = (10000.0, 25000.0), atom_sigma_A: float = 1.8) -> pd.DataFrame:
    """Write ``folder/particles.mrcs`` and ``folder/particles.star`` (optics, per-particle CTF, true angles, class,
    origin); return the truth per particle: model name, rlnClassNumber (1-based in the order of ``fractions``),
    rlnAngleRot/Tilt/Psi (deg), shift_x/shift_y (px, the image content's shift; RELION's origin is minus it).

    fractions : model name -> share of the particles (rounded, the last takes the rest).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = list(fractions)
    counts = [int(round(fractions[m] * n)) for m in names[:-1]]
    counts.append(n - sum(counts))
    model_of = np.repeat(np.arange(len(names)), counts)
    rng.shuffle(model_of)
    angles = random_euler(n, rng)
    shifts = rng.integers(-max_shift_px, max_shift_px + 1, size=(n, 2))
    du = rng.uniform(*defocus_A, n)
    dv = du - rng.uniform(0, 400, n)
    dang = rng.uniform(0, 180, n)
    ctf = ctf_2d(CTFParams(du, dv, dang, 300.0, 2.7, 0.1, bfactor=30.0), box, angpix, half=True, dtype=np.float64)
    images = np.empty((n, box, box), dtype=np.float32)
    for k in range(n):
        m = models[names[model_of[k]]]
        proj = project_atoms(m.xyz, electrons_of(m), atom_sigma_A, euler_to_matrix(*angles[k]), box, angpix,
                             offset_px=(float(shifts[k, 0]), float(shifts[k, 1])))
        clean = np.fft.irfft2(np.fft.rfft2(proj) * ctf[k], s=(box, box))
        images[k] = clean + rng.normal(0.0, np.sqrt(clean.var() / snr), clean.shape)
    write_mrc(folder / "particles.mrcs", images, angpix)
    optics = pd.DataFrame({"rlnOpticsGroup": [1], "rlnOpticsGroupName": ["opticsGroup1"], "rlnVoltage": [300.0],
                           "rlnSphericalAberration": [2.7], "rlnAmplitudeContrast": [0.1],
                           "rlnImagePixelSize": [angpix], "rlnImageSize": [box], "rlnImageDimensionality": [2]})
    parts = pd.DataFrame({"rlnImageName": [f"{k + 1}@particles.mrcs" for k in range(n)], "rlnOpticsGroup": 1,
                          "rlnDefocusU": du, "rlnDefocusV": dv, "rlnDefocusAngle": dang})
    write_star(folder / "particles.star", {"optics": optics, "particles": parts})
    return pd.DataFrame({"model": np.array(names)[model_of], "rlnClassNumber": model_of + 1,
                         "rlnAngleRot": angles[:, 0], "rlnAngleTilt": angles[:, 1], "rlnAnglePsi": angles[:, 2],
                         "shift_x": shifts[:, 0], "shift_y": shifts[:, 1]})
