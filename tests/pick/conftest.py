"""Fixtures for picking tests: an asymmetric blob template and synthetic micrographs with known particles."""

from types import SimpleNamespace

import numpy as np
import pytest
from scipy import ndimage

from cryopipe.geometry import euler_to_matrix
from cryopipe.simulate.micrographs import SimulateParams, simulate_dataset

BOX = 48  # template box, px
ANGPIX = 2.0


def blob_template(box: int = BOX, variant: int = 0) -> np.ndarray:
    """An asymmetric white blob (three Gaussians), (box, box) float32, centre box//2."""
    yy, xx = np.mgrid[:box, :box] - box // 2
    parts = [(0, 0, 6.0, 1.0), (10, 0, 3.5, 0.8), (-5, 9, 3.0, 0.6)] if variant == 0 else \
        [(0, 0, 5.0, 1.0), (-9, -4, 3.5, 0.9), (6, -9, 2.5, 0.7)]
    img = sum(a * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * s * s)) for cx, cy, s, a in parts)
    return img.astype(np.float32)


def rotate(img: np.ndarray, psi: float) -> np.ndarray:
    """``img`` rotated by psi degrees as RELION: out(x) = img(A^T x), A = euler_to_matrix(0, 0, psi)[:2, :2]."""
    b = img.shape[-1]
    A = euler_to_matrix(0.0, 0.0, psi)[:2, :2]
    gy, gx = np.mgrid[:b, :b] - b // 2
    qx = A[0, 0] * gx + A[1, 0] * gy + b // 2
    qy = A[0, 1] * gx + A[1, 1] * gy + b // 2
    return ndimage.map_coordinates(img.astype(np.float64), [qy, qx], order=3)


def synthetic_micrograph(rng, shape=(320, 384), n=10, templates=None, noise=0.7, min_dist=56, margin=30):
    """Dark copies of rotated templates pasted at integer positions into white noise.

    Returns (image float32, truth: (n, 4) array of x, y, psi, template index 0-based).
    """
    templates = [blob_template()] if templates is None else templates
    H, W = shape
    b = templates[0].shape[-1]
    truth = []
    for _ in range(2000):
        if len(truth) == n:
            break
        x, y = rng.integers(margin, W - margin), rng.integers(margin, H - margin)
        if all(np.hypot(x - t[0], y - t[1]) >= min_dist for t in truth):
            truth.append((x, y, rng.uniform(-180, 180), rng.integers(len(templates))))
    image = rng.normal(0.0, noise, shape)
    for x, y, psi, k in truth:
        x, y = int(x), int(y)
        ys, xs = slice(y - b // 2, y + b // 2), slice(x - b // 2, x + b // 2)
        image[ys, xs] -= rotate(templates[int(k)], psi)
    return image.astype(np.float32), np.array(truth, dtype=float)


def match(picks, truth_xy, radius):
    """(precision, recall) of picks (DataFrame) against true (n, 2) x, y within ``radius`` px (one-to-one)."""
    P = picks[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy()
    used, tp = set(), 0
    for p in P:
        d = np.hypot(*(truth_xy - p).T)
        d[list(used)] = np.inf
        j = int(np.argmin(d)) if len(d) else -1
        if j >= 0 and d[j] <= radius:
            used.add(j)
            tp += 1
    return tp / max(1, len(P)), tp / max(1, len(truth_xy))


@pytest.fixture
def synth():
    """Helpers as attributes: blob_template, rotate, synthetic_micrograph, match, BOX, ANGPIX."""
    return SimpleNamespace(blob_template=blob_template, rotate=rotate, micrograph=synthetic_micrograph,
                           match=match, BOX=BOX, ANGPIX=ANGPIX)


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory):
    """Two demo-like simulated micrographs (1024^2 at 2.5 A/px, 40 particles, SNR 0.1) with ground truth."""
    out = tmp_path_factory.mktemp("demo")
    simulate_dataset(SimulateParams(snr=0.1, seed=7, micrographs=2, size_px=1024), out)
    return out
