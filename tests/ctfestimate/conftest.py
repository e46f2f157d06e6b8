"""Simulated micrographs with known CTFs: Thon rings from the simulator's CTF-modulated amorphous ice
(:mod:`cryopipe.simulate.ice`), white detector noise of variance 1, optional particles and ice gradient."""

from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import pytest

from cryopipe.ctf import CTFParams
from cryopipe.simulate.complex import build_models
from cryopipe.simulate.ice import ice_field_spectrum, ice_image
from cryopipe.simulate.micrographs import SimulateParams, simulate_micrograph

VOLTAGE, CS, Q0 = 300.0, 2.7, 0.1


@dataclass
class Truth:
    """A micrograph's true CTF: defocus U >= V (A), angle and phase shift (degrees)."""

    defocus_u: float
    defocus_v: float
    angle: float
    phase: float = 0.0

    @property
    def mean(self) -> float:
        return 0.5 * (self.defocus_u + self.defocus_v)

    def ctf(self, bfactor: float = 50.0) -> CTFParams:
        return CTFParams(self.defocus_u, self.defocus_v, self.angle, VOLTAGE, CS, Q0, bfactor=bfactor,
                         phase_shift=self.phase)


def random_truth(rng, defocus_A=(5000.0, 40000.0), astigmatism_A=(0.0, 1500.0), phase=False) -> Truth:
    """Mean-defocus U... : U uniform in defocus_A, U - V uniform in astigmatism_A, angle uniform in [0, 180)."""
    u = rng.uniform(*defocus_A)
    return Truth(u, u - rng.uniform(*astigmatism_A), rng.uniform(0.0, 180.0), rng.uniform(0.0, 180.0) if phase else 0.0)


def gradient_image(rng, size: int, amplitude: float) -> np.ndarray:
    """A linear ramp of peak-to-peak ``amplitude`` in a random direction, as the simulator's ice gradient."""
    theta = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:size, 0:size] / size - 0.5
    return amplitude * (np.cos(theta) * xx + np.sin(theta) * yy)


def ice_micrograph(rng, truth: Truth, size: int = 1024, angpix: float = 1.5, ice_snr: float = 0.1,
                   gradient: float = 0.0, bfactor: float | None = None) -> np.ndarray:
    """(size, size) float32: CTF-modulated ice of variance ice_snr + white noise of variance 1 (+ a gradient of
    ``gradient`` noise s.d. peak to peak)."""
    b = rng.uniform(20.0, 80.0) if bfactor is None else bfactor
    image = ice_image(ice_field_spectrum(size, rng), truth.ctf(b), angpix, ice_snr) + rng.standard_normal((size, size))
    if gradient:
        image += gradient_image(rng, size, gradient)
    return image.astype(np.float32)


def particle_micrograph(seed: int, truth: Truth, size: int = 1024, angpix: float = 2.0, snr: float = 0.1,
                        ice_snr: float = 0.1, particles: int = 20, gradient: bool = False) -> np.ndarray:
    """The simulator's micrograph (particles at particle SNR ``snr``, ice at ``ice_snr``, its gradient)."""
    p = SimulateParams(seed=seed, size_px=size, angpix=angpix, particles_per_micrograph=particles, snr=snr,
                       ice_snr=ice_snr, diameter_A=100.0)
    image, _, _ = simulate_micrograph(p, np.random.default_rng(seed), build_models(seed), truth.ctf(), gradient,
                                      index=0)
    return image


def tilted_micrograph(rng, mean_A: float, plane: tuple[float, float], size: int = 1024, angpix: float = 1.5,
                      astigmatism_A: float = 400.0, angle: float = 30.0, ice_snr: float = 0.3,
                      level_step_A: float = 50.0) -> np.ndarray:
    """Ice whose defocus varies as mean_A + A (x - size/2) + B (y - size/2), (A, B) = ``plane`` in A/px: one ice
    field imaged at defocus levels ``level_step_A`` apart, blended pixel by pixel with linear weights."""
    field = ice_field_spectrum(size, rng)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    local = mean_A + plane[0] * (xx - size / 2) + plane[1] * (yy - size / 2)
    levels = np.arange(np.floor(local.min() / level_step_A) - 1, np.ceil(local.max() / level_step_A) + 2)
    levels = levels * level_step_A
    image = np.zeros((size, size))
    for lv in levels:
        w = np.clip(1.0 - np.abs(local - lv) / level_step_A, 0.0, None)
        if w.any():
            t = Truth(lv + astigmatism_A / 2, lv - astigmatism_A / 2, angle)
            image += w * ice_image(field, t.ctf(40.0), angpix, ice_snr)
    return (image + rng.standard_normal((size, size))).astype(np.float32)


def angle_error(estimate: float, truth: float) -> float:
    """Signed difference of two astigmatism angles, degrees, modulo 180 into [-90, 90)."""
    return (estimate - truth + 90.0) % 180.0 - 90.0


@pytest.fixture
def sim():
    """The helpers above (tests import them through this fixture: pytest runs with --import-mode=importlib)."""
    return SimpleNamespace(VOLTAGE=VOLTAGE, CS=CS, Q0=Q0, Truth=Truth, random_truth=random_truth,
                           ice_micrograph=ice_micrograph, particle_micrograph=particle_micrograph,
                           tilted_micrograph=tilted_micrograph, angle_error=angle_error, gradient_image=gradient_image)
