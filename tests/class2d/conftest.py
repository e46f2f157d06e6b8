"""Simulated particle stacks with ground truth for the class2d and select2d tests.

Particles as extraction writes them: exact projections (positive density) of the demo complex at K distinct
views, random in-plane angle psi and displacement (dx, dy) of the particle centre from the box centre, times
RELION's CTF (CTF(0) = +Q0), plus white noise at a given SNR (variance of the noise-free CTF'd image inside
the particle circle / noise variance), background-normalised; one MRCS and a RELION 3.1 particles.star.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cryopipe import cli
from cryopipe.ctf import CTFParams, ctf_2d
from cryopipe.fourier import normalise_background
from cryopipe.geometry import euler_to_matrix
from cryopipe.io.mrc import write_mrc
from cryopipe.io.star import write_star
from cryopipe.simulate.complex import build_models, electrons_of
from cryopipe.simulate.render import project_atoms

# (rot, tilt) of the views: the 5 most dissimilar of a 30-degree grid (rotation-maximised NCC <= 0.83 at 15 A;
# the complex is globular, and e.g. (0, 0), (45, 45), (135, 60) reach 0.95)
VIEWS = ((210.0, 30.0), (330.0, 60.0), (120.0, 30.0), (120.0, 150.0), (180.0, 90.0))


@dataclass
class SimulatedParticles:
    star: Path
    truth: pd.DataFrame  # view (0-based), psi (deg), dx, dy (px: particle centre - box centre), in STAR order
    box: int
    angpix: float


def simulate_particles(out: Path, per_view: int = 100, views=VIEWS, box: int = 64, angpix: float = 2.5,
                       snr: float = 0.07, max_shift_px: float = 2.5, diameter_A: float = 120.0,
                       seed: int = 7) -> SimulatedParticles:
    rng = np.random.default_rng(seed)
    model = build_models(2024)["conformation_1"]
    weights = electrons_of(model)
    n = per_view * len(views)
    view = rng.permutation(np.repeat(np.arange(len(views)), per_view))
    psi = rng.uniform(-180.0, 180.0, n)
    shift = rng.uniform(-max_shift_px, max_shift_px, (n, 2))
    clean = np.stack([
        project_atoms(model.xyz, weights, 1.8, euler_to_matrix(*views[v], p), box, angpix, offset_px=tuple(s))
        for v, p, s in zip(view, psi, shift, strict=True)
    ])
    du = rng.uniform(10000.0, 25000.0, n)
    dv = du - rng.uniform(0.0, 500.0, n)
    dang = rng.uniform(0.0, 180.0, n)
    ctf = CTFParams(du, dv, dang, 300.0, 2.7, 0.1, bfactor=rng.uniform(20.0, 80.0, n))
    signal = np.fft.irfft2(np.fft.rfft2(clean) * ctf_2d(ctf, box, angpix, dtype=np.float64), s=(box, box))
    yy, xx = np.mgrid[:box, :box] - box // 2
    inside = np.hypot(xx, yy) <= 0.5 * diameter_A / angpix
    noise_sd = np.sqrt(signal[:, inside].var(axis=1).mean() / snr)
    images = normalise_background(signal + rng.normal(0.0, noise_sd, signal.shape), 0.375 * box)
    out.mkdir(parents=True, exist_ok=True)
    write_mrc(out / "particles.mrcs", images.astype(np.float32), angpix)
    optics = pd.DataFrame({
        "rlnOpticsGroupName": ["opticsGroup1"], "rlnOpticsGroup": [1], "rlnImagePixelSize": [angpix],
        "rlnImageSize": [box], "rlnImageDimensionality": [2], "rlnVoltage": [300.0],
        "rlnSphericalAberration": [2.7], "rlnAmplitudeContrast": [0.1],
    })
    particles = pd.DataFrame({
        "rlnImageName": [f"{i + 1:06d}@particles.mrcs" for i in range(n)], "rlnOpticsGroup": 1,
        "rlnDefocusU": du, "rlnDefocusV": dv, "rlnDefocusAngle": dang,
    })
    write_star(out / "particles.star", {"optics": optics, "particles": particles})
    truth = pd.DataFrame({"view": view, "psi": psi, "dx": shift[:, 0], "dy": shift[:, 1]})
    return SimulatedParticles(out / "particles.star", truth, box, angpix)


@pytest.fixture(scope="session")
def particles_5views(tmp_path_factory) -> SimulatedParticles:
    """500 particles, 5 views x 100, 64 px at 2.5 A/px, SNR 0.07, shifts up to +-2.5 px."""
    return simulate_particles(tmp_path_factory.mktemp("class2d_sim"))


@pytest.fixture(scope="session")
def particles_small(tmp_path_factory) -> SimulatedParticles:
    """120 particles, 3 views x 40, for CLI / MPI / error tests."""
    return simulate_particles(tmp_path_factory.mktemp("class2d_small"), per_view=40, views=VIEWS[:3], snr=0.1,
                              seed=11)


@pytest.fixture
def launcher(tmp_path) -> Path:
    """A script that runs the CLI in a subprocess (e.g. under mpiexec) with this checkout's cryopipe."""
    path = tmp_path / "launch_cryopipe.py"
    path.write_text("import sys\nfrom cryopipe import cli\nsys.exit(cli.main())\n")
    return path


@pytest.fixture
def run_cli():
    """``cryopipe`` in-process: run_cli([...]) -> exit status."""
    return cli.main
