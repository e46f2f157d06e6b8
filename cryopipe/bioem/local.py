"""Local orientation grids: each particle integrated only near its refined orientation.

BioEM integrates the likelihood over all orientations with a uniform prior. After a refinement the likelihood of a
particle is concentrated near its refined pose R_i, so the integral is approximated by its part over a ball of
orientations around R_i: the points R_i exp([v]) for rotation vectors v on a cubic lattice of ``step`` degrees with
|v| <= ``radius``. Every model is evaluated on its own best pose within the ball, so a pose refined against one map
does not force that map's pose onto the others (as the ``refined`` mode's fixed list does). Poses found against a
map in another frame (a de novo initial model's: any rotation, either hand) are first carried into each model's
frame by fitting the model into that map (:func:`into_model_frame`).

Each point carries its share of the uniform prior: the Haar volume of its lattice cell over the volume of SO(3),
``step^3 (2 sin(theta/2) / theta)^2 / (8 pi^2)`` (angles in radians, theta = |v|), so ln P keeps the scale of a
global grid's (whose points carry 1 / O each) and models compare on the same footing.
"""

from __future__ import annotations

import math

import numpy as np

from cryopipe.errors import InputError, require
from cryopipe.geometry import axis_angle_to_matrix, euler_to_matrix
from cryopipe.io.star import read_table

SO3_VOLUME = 8.0 * math.pi ** 2  # Haar volume of SO(3) in rotation-vector coordinates (rad^3)


def local_offsets(radius_deg: float, step_deg: float) -> tuple[np.ndarray, np.ndarray]:
    """The ball of small rotations around the identity: (K, 3, 3) matrices and (K,) ln prior weights.

    The identity comes first; the lattice is v = step * (a, b, c), integers, |v| <= radius (K = 33 for radius 10,
    step 5; 123 for radius 15, step 5).
    """
    require(step_deg > 0 and radius_deg >= 0, "the local grid needs radius >= 0 and step > 0 degrees",
            field="--local-radius/--local-step")
    m = int(math.floor(radius_deg / step_deg + 1e-9))
    a = np.arange(-m, m + 1)
    v = np.stack(np.meshgrid(a, a, a, indexing="ij"), -1).reshape(-1, 3).astype(np.float64) * step_deg
    v = v[np.linalg.norm(v, axis=1) <= radius_deg + 1e-9]
    v = v[np.argsort(np.linalg.norm(v, axis=1), kind="stable")]  # identity first
    theta = np.linalg.norm(v, axis=1)
    axis = np.where(theta[:, None] > 0, v, np.array([0.0, 0.0, 1.0]))
    rot = axis_angle_to_matrix(axis, theta)
    t = np.deg2rad(theta)
    haar = np.where(t > 0, (2.0 * np.sin(t / 2) / np.where(t > 0, t, 1.0)) ** 2, 1.0)
    log_w = np.log(np.deg2rad(step_deg) ** 3 * haar / SO3_VOLUME)
    return rot, log_w


def refined_rotations(path, image_names) -> np.ndarray:
    """(I, 3, 3) rotations of the particles ``image_names`` from a STAR file of refined angles (rlnImageName,
    rlnAngleRot/Tilt/Psi; e.g. a refinement's particles.star), matched by image name. Missing particles: an
    InputError naming the first."""
    t = read_table(path, "particles", ("rlnImageName", "rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"))
    t = t.drop_duplicates("rlnImageName").set_index("rlnImageName")
    names = np.asarray(image_names)
    missing = ~np.isin(names, t.index)
    if missing.any():
        raise InputError(f"{int(missing.sum())} particles have no entry (first: {names[missing][0]})", path,
                         "rlnImageName")
    rows = t.loc[names]
    return euler_to_matrix(rows["rlnAngleRot"], rows["rlnAngleTilt"], rows["rlnAnglePsi"])


MIRROR = np.diag([1.0, 1.0, -1.0])


def into_model_frame(poses: np.ndarray, rotation: np.ndarray, hand: int) -> np.ndarray:
    """(I, 3, 3) poses P found against a map, carried into the frame of a model fitted to that map.

    ``rotation`` R and ``hand`` are :func:`cryopipe.mapalign.align` of the map (moving) onto the model's map
    (reference): model(r) = map_h(R^T r), map_h the map or its mirror (hand -1, :func:`cryopipe.mapalign.mirror`).
    The map projects at P as the model at P R^T (hand +1), or at (M P M) R^T with M = diag(1, 1, -1) (hand -1: the
    mirrored map projects at M P M as the map at P).
    """
    poses = np.asarray(poses, dtype=np.float64)
    if hand == -1:
        poses = MIRROR @ poses @ MIRROR
    return poses @ np.asarray(rotation, dtype=np.float64).T


def local_grid(own: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """(I * K, 3, 3) orientations R_i @ dR_k, particle-major: particle i's K points are rows [i K, (i + 1) K)."""
    return np.einsum("iab,kbc->ikac", own, offsets).reshape(-1, 3, 3)


def block_prior(n_images: int, log_w: np.ndarray) -> np.ndarray:
    """(n, n K) ln prior of a chunk of ``n`` particles over their local grids (particle-major): particle i's own
    K points carry ``log_w``, every other particle's points -inf (skipped by the integration)."""
    k = len(log_w)
    prior = np.full((n_images, n_images * k), -np.inf)
    for i in range(n_images):
        prior[i, i * k:(i + 1) * k] = log_w
    return prior
