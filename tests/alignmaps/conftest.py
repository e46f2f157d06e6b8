"""Synthetic maps with ground truth for map alignment: asymmetric sets of Gaussian blobs rendered analytically, so
that a rotated and shifted copy carries no interpolation error."""

from dataclasses import dataclass

import numpy as np
import pytest

from cryopipe.fourier import fsc, resolution_at, soft_circular_mask
from cryopipe.geometry import euler_to_matrix, random_rotations, rotation_angle_between, so3_grid

BOX, ANGPIX, NOISE = 48, 3.0, 0.1
SHIFT_PX = np.array([2.3, -1.6, 2.8])  # (x, y, z) voxels
MIRROR = np.diag([1.0, 1.0, -1.0])  # z -> -z, as cryopipe.mapalign.mirror


def blob_model(rng, k: int = 8):
    """k blobs: centres (k, 3) (x, y, z) A within 45 A of the centre, widths 2.5-8 A, weights 0.5-2."""
    direction = rng.standard_normal((k, 3))
    centres = direction / np.linalg.norm(direction, axis=1, keepdims=True) * rng.uniform(8, 45, (k, 1))
    return centres, rng.uniform(2.5, 8.0, k), rng.uniform(0.5, 2.0, k)


def render(centres, sigmas, weights, box: int = BOX, angpix: float = ANGPIX) -> np.ndarray:
    """(box,)*3 float32 map [z, y, x] of the blobs, origin at box // 2."""
    c = (np.arange(box) - box // 2) * angpix
    z, y, x = np.meshgrid(c, c, c, indexing="ij")
    r = np.stack([x, y, z], axis=-1)
    vol = np.zeros((box,) * 3)
    for centre, sigma, weight in zip(centres, sigmas, weights, strict=True):
        vol += weight * np.exp(-((r - centre) ** 2).sum(axis=-1) / (2 * sigma**2))
    return vol.astype(np.float32)


def noise(rng, box: int = BOX) -> np.ndarray:
    return (NOISE * rng.standard_normal((box,) * 3)).astype(np.float32)


def default_mask(box: int = BOX) -> np.ndarray:
    """The soft sphere mapalign uses by default (diameter 0.8 x the box, edge 0.05 x the box)."""
    return soft_circular_mask(box, 0.4 * box, 0.05 * box, ndim=3)


@dataclass
class Case:
    """A reference map and a rotated, shifted, noisy copy of it: ``moving(hand)`` aligns onto ``reference`` with
    ``rotation``, ``shift_A`` and ``hand``. The helpers make further maps on the same grid (``box``, ``angpix``),
    their noise from ``seed``, so that each test sees the same maps whatever ran before it."""

    model: tuple
    reference: np.ndarray
    rotation: np.ndarray
    shift_A: np.ndarray
    fsc05_limit_A: float  # FSC 0.5 of the reference with a noisy copy of itself (same noise level, no alignment)
    box: int = BOX
    angpix: float = ANGPIX

    def moving(self, hand: int, seed: int = 1) -> np.ndarray:
        centres, sigmas, weights = self.model
        moved = (centres - self.shift_A) @ self.rotation  # rows: R.T @ (c - s)
        return render(moved @ MIRROR if hand == -1 else moved, sigmas, weights) + self.noise(seed)

    def render(self, centres, sigmas, weights) -> np.ndarray:
        return render(centres, sigmas, weights)

    def unrelated(self, seed: int) -> np.ndarray:
        """Another blob map (other positions, sizes, weights) with noise."""
        rng = np.random.default_rng(seed)
        return render(*blob_model(rng)) + noise(rng)

    def noise(self, seed: int) -> np.ndarray:
        return noise(np.random.default_rng(seed))

    @staticmethod
    def mask() -> np.ndarray:
        return default_mask()


@pytest.fixture(scope="module")
def case() -> Case:
    rng = np.random.default_rng(2024)
    model = blob_model(rng)
    reference = render(*model)
    rotation = random_rotations(1, rng)[0]
    grid = euler_to_matrix(*so3_grid(1).T)
    assert rotation_angle_between(grid, rotation).min() > 5.0, "the true rotation must lie off the search grid"
    mask = default_mask()
    limit = resolution_at(fsc((reference + noise(rng)) * mask, reference * mask), BOX, ANGPIX, 0.5)
    return Case(model, reference, rotation, SHIFT_PX * ANGPIX, limit)
