"""Tests for cryopipe.geometry: RELION Euler angles, quaternions, HEALPix sampling, point groups."""

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from cryopipe import geometry as g
from cryopipe.errors import InputError


def _is_rotation(A, atol=1e-12):
    eye = np.broadcast_to(np.eye(3), A.shape)
    return np.allclose(A @ np.swapaxes(A, -1, -2), eye, atol=atol) and np.allclose(np.linalg.det(A), 1.0, atol=atol)


def _unit(directions_rot_tilt):
    return g.euler_to_direction(directions_rot_tilt[:, 0], directions_rot_tilt[:, 1])


@pytest.fixture
def eulers(rng):
    return g.random_euler(500, rng)


# ----------------------------------------------------------------------------------------------- Euler angles


def test_euler_to_matrix_relion_value():
    # RELION's Euler_angles2matrix(30, 40, 50), evaluated by hand from its formula.
    expected = [
        [0.043412044417, 0.909615886422, -0.413175911167],
        [-0.829598373326, 0.263258354810, 0.492403876506],
        [0.556670399226, 0.321393804843, 0.766044443119],
    ]
    np.testing.assert_allclose(g.euler_to_matrix(30, 40, 50), expected, atol=1e-11)


@pytest.mark.parametrize("rot", [0.0, 30.0, -120.0])
def test_rot_only_rotates_as_relion(rot):
    a = np.deg2rad(rot)
    np.testing.assert_allclose(g.euler_to_matrix(rot, 0, 0) @ [1, 0, 0], [np.cos(a), -np.sin(a), 0], atol=1e-15)


def test_euler_to_matrix_is_scipy_zyz_transposed(eulers):
    scipy_matrix = Rotation.from_euler("ZYZ", eulers, degrees=True).as_matrix()
    np.testing.assert_allclose(g.euler_to_matrix(*eulers.T), np.swapaxes(scipy_matrix, -1, -2), atol=1e-14)


def test_euler_to_matrix_broadcasts_and_is_rotation():
    A = g.euler_to_matrix(np.arange(0, 360, 30)[:, None], np.arange(0, 181, 20)[None, :], 15.0)
    assert A.shape == (12, 10, 3, 3)
    assert _is_rotation(A)
    np.testing.assert_allclose(A[3, 4], g.euler_to_matrix(90, 80, 15))


def test_projection_direction_is_third_row(eulers):
    A = g.euler_to_matrix(*eulers.T)
    np.testing.assert_allclose(g.euler_to_direction(eulers[:, 0], eulers[:, 1]), A[:, 2], atol=1e-15)
    np.testing.assert_allclose(np.swapaxes(A, -1, -2) @ [0, 0, 1], A[:, 2], atol=1e-15)


def test_euler_round_trip_random(eulers):
    rot, tilt, psi = g.matrix_to_euler(g.euler_to_matrix(*eulers.T))
    np.testing.assert_allclose(np.stack([rot, tilt, psi], -1), eulers, atol=1e-9)
    assert np.all((rot > -180) & (rot <= 180) & (psi > -180) & (psi <= 180) & (tilt >= 0) & (tilt <= 180))


def test_euler_round_trip_any_input_range(rng):
    angles = rng.uniform(-720, 720, (300, 3))
    A = g.euler_to_matrix(*angles.T)
    np.testing.assert_allclose(g.euler_to_matrix(*g.matrix_to_euler(A)), A, atol=1e-12)


@pytest.mark.parametrize("tilt", [0.0, 180.0, 1e-9, 180.0 - 1e-9])
def test_euler_round_trip_gimbal_lock(tilt):
    rot = np.array([0.0, 25.0, -170.0, 180.0])
    psi = np.array([10.0, -60.0, 100.0, 180.0])
    A = g.euler_to_matrix(rot, tilt, psi)
    r, t, p = g.matrix_to_euler(A)
    np.testing.assert_array_equal(r, 0.0)
    np.testing.assert_array_equal(t, 0.0 if tilt < 90 else 180.0)
    assert np.all((p > -180) & (p <= 180))
    np.testing.assert_allclose(g.euler_to_matrix(r, t, p), A, atol=1e-10)  # locked below |sin tilt| ~ 2e-6


def test_matrix_to_euler_scalar_range_edges():
    rot, tilt, psi = g.matrix_to_euler(g.euler_to_matrix(-180, 90, -180))
    assert (rot, psi) == pytest.approx((180.0, 180.0))
    assert tilt == pytest.approx(90.0)


def test_direction_to_euler_round_trip(eulers):
    rot, tilt = g.direction_to_euler(3.0 * g.euler_to_direction(eulers[:, 0], eulers[:, 1]))
    np.testing.assert_allclose(rot, eulers[:, 0], atol=1e-9)
    np.testing.assert_allclose(tilt, eulers[:, 1], atol=1e-9)
    rot, tilt = g.direction_to_euler([0.0, 1e-9, -1.0])
    assert rot == 0.0 and tilt == pytest.approx(180.0)


# ----------------------------------------------------------------------------------------------- quaternions


def test_quaternion_matrix_round_trip(rng):
    A = g.random_rotations(1000, rng)
    q = g.matrix_to_quaternion(A)
    assert q.shape == (1000, 4)
    np.testing.assert_allclose(np.linalg.norm(q, axis=-1), 1.0, atol=1e-14)
    assert np.all(q[:, 0] >= 0)
    np.testing.assert_allclose(g.quaternion_to_matrix(q), A, atol=1e-14)


@pytest.mark.parametrize("angle", [0.0, 1e-7, 90.0, 179.9999, 180.0])
def test_matrix_to_quaternion_any_angle(angle, rng):
    axes = rng.standard_normal((50, 3))
    A = g.axis_angle_to_matrix(axes, angle)
    np.testing.assert_allclose(g.quaternion_to_matrix(g.matrix_to_quaternion(A)), A, atol=1e-14)


def test_quaternion_matches_scipy(eulers):
    xyzw = Rotation.from_matrix(g.euler_to_matrix(*eulers.T)).as_quat()
    expected = np.roll(xyzw, 1, axis=-1) * np.sign(xyzw[:, 3:])
    np.testing.assert_allclose(g.euler_to_quaternion(*eulers.T), expected, atol=1e-14)


def test_quaternion_euler_round_trip(eulers):
    q = g.euler_to_quaternion(*eulers.T)
    np.testing.assert_allclose(np.stack(g.quaternion_to_euler(q), -1), eulers, atol=1e-9)


def test_quaternion_multiply_is_matrix_product(rng):
    A, B = g.random_rotations(200, rng), g.random_rotations(200, rng)
    q = g.quaternion_multiply(g.matrix_to_quaternion(A), g.matrix_to_quaternion(B))
    assert np.all(q[:, 0] >= 0)
    np.testing.assert_allclose(g.quaternion_to_matrix(q), A @ B, atol=1e-14)


def test_rotation_angle_between(rng):
    A = g.random_rotations(100, rng)
    angles = rng.uniform(0, 180, 100)
    B = g.axis_angle_to_matrix(rng.standard_normal((100, 3)), angles) @ A
    np.testing.assert_allclose(g.rotation_angle_between(A, B), angles, atol=1e-9)
    np.testing.assert_allclose(g.rotation_angle_between(B, A), angles, atol=1e-9)
    assert g.rotation_angle_between(A[0], g.axis_angle_to_matrix([1, 2, 3], 1e-8) @ A[0]) == pytest.approx(1e-8)
    assert g.rotation_angle_between(A[:, None], A[None, :3]).shape == (100, 3)


def test_random_rotations_uniform(rng):
    A = g.random_rotations(20000, rng)
    assert _is_rotation(A)
    # Uniform on SO(3): E[R] = 0 and the rotation angle has density (1 - cos t) / pi, mean pi/2 + 2/pi.
    np.testing.assert_allclose(A.mean(axis=0), 0.0, atol=0.02)
    mean_angle = np.deg2rad(g.rotation_angle_between(A, np.eye(3))).mean()
    assert mean_angle == pytest.approx(np.pi / 2 + 2 / np.pi, abs=0.02)
    e = g.random_euler(20000, rng)
    assert np.cos(np.deg2rad(e[:, 1])).mean() == pytest.approx(0.0, abs=0.02)


# --------------------------------------------------------------------------------------------------- HEALPix


def test_healpix_known_pixels():
    # pix2ang_ring(nside=1): pixel 0 (theta=acos(2/3), phi=45), 4 (90, 0), 11 (180-acos(2/3), 315 -> -45).
    d = g.healpix_directions(0)
    np.testing.assert_allclose(d[[0, 4, 11]], [[45, np.rad2deg(np.arccos(2 / 3))], [0, 90],
                                               [-45, 180 - np.rad2deg(np.arccos(2 / 3))]], atol=1e-12)
    # nside=2: north cap 0, first belt ring 4 (half-pixel phase), second belt ring 12 (phase 0), south cap 47.
    acosd = lambda z: np.rad2deg(np.arccos(z))  # noqa: E731
    np.testing.assert_allclose(g.healpix_directions(1)[[0, 4, 12, 47]],
                               [[45, acosd(11 / 12)], [22.5, acosd(2 / 3)], [0, acosd(1 / 3)], [-45, acosd(-11 / 12)]],
                               atol=1e-12)


@pytest.mark.parametrize("order", [0, 1, 2, 3, 4])
def test_healpix_ring_structure(order):
    nside = g.healpix_nside(order)
    d = g.healpix_directions(order)
    assert d.shape == (12 * nside**2, 2)
    assert np.all((d[:, 0] > -180) & (d[:, 0] <= 180))
    z = np.round(np.cos(np.deg2rad(d[:, 1])), 12)
    assert np.all(np.diff(z) <= 0)  # RING order runs from north to south
    rings, counts = np.unique(-z, return_counts=True)
    i = np.arange(1, 4 * nside)
    np.testing.assert_array_equal(counts, 4 * np.minimum(np.minimum(i, 4 * nside - i), nside))
    np.testing.assert_allclose(-rings, np.where(i < nside, 1 - i**2 / (3 * nside**2),
                                                np.where(i > 3 * nside, -1 + (4 * nside - i) ** 2 / (3 * nside**2),
                                                         4 / 3 - 2 * i / (3 * nside))), atol=1e-12)
    for zr, n in zip(-rings, counts, strict=True):  # equally spaced in phi within each ring
        phi = np.sort(np.mod(d[z == zr, 0], 360))
        np.testing.assert_allclose(np.diff(phi), 360 / n, atol=1e-9)


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_healpix_unit_distinct_and_spacing(order):
    v = _unit(g.healpix_directions(order))
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-15)
    cos = v @ v.T
    np.fill_diagonal(cos, -1)
    nearest = np.rad2deg(np.arccos(np.clip(cos.max(axis=1), -1, 1)))
    sampling = g.angular_sampling_deg(order)
    assert nearest.min() > 0.7 * sampling
    assert nearest.mean() == pytest.approx(sampling, rel=0.1)


def test_angular_sampling_values():
    assert [g.angular_sampling_deg(o) for o in range(6)] == [60, 30, 15, 7.5, 3.75, 1.875]
    assert g.healpix_nside(3) == 8


def test_healpix_uniform():
    v = _unit(g.healpix_directions(4))
    assert v[:, 2].mean() == pytest.approx(0.0, abs=1e-12)
    assert (v[:, 2] ** 2).mean() == pytest.approx(1 / 3, abs=1e-3)  # equal-area in z
    # shift off the symmetry planes so that no direction lies on an octant boundary
    octant = (v @ g.axis_angle_to_matrix([1, 2, 3], 1.0).T > 0) @ [4, 2, 1]
    np.testing.assert_allclose(np.bincount(octant, minlength=8) / len(v), 1 / 8, atol=0.01)


def test_so3_grid():
    grid = g.so3_grid(1)
    n_psi = 12  # 360 / 30
    assert grid.shape == (48 * n_psi, 3)
    np.testing.assert_array_equal(grid[:n_psi, :2], np.repeat(g.healpix_directions(1)[:1], n_psi, axis=0))
    np.testing.assert_allclose(grid[:n_psi, 2], np.arange(0, 360, 30))
    assert len(np.unique(np.round(g.euler_to_matrix(*grid.T), 9).reshape(len(grid), -1), axis=0)) == len(grid)
    psi = np.unique(g.so3_grid(0, psi_step=7)[:, 2])
    np.testing.assert_allclose(psi, np.arange(52) * 360 / 52)  # RELION: 360 / ceil(360 / 7)


@pytest.mark.parametrize("bad", [-1, 1.5])
def test_healpix_bad_order(bad):
    with pytest.raises(InputError):
        g.healpix_directions(bad)


# -------------------------------------------------------------------------------------------------- symmetry

GROUPS = {"C1": 1, "c4": 4, "C7": 7, "D2": 4, "d5": 10, "T": 12, "O": 24, "I": 60, "i2": 60}


@pytest.mark.parametrize("name, order", GROUPS.items())
def test_symmetry_group_closed(name, order):
    G = g.symmetry_operators(name)
    assert G.shape == (order, 3, 3)
    assert _is_rotation(G)
    np.testing.assert_allclose(G[0], np.eye(3), atol=1e-15)
    products = (G[:, None] @ G[None]).reshape(-1, 1, 3, 3)
    assert np.abs(products - G[None]).max(axis=(2, 3)).min(axis=1).max() < 1e-9  # every product is in G
    distances = np.abs(G[:, None] - G[None]).max(axis=(2, 3)) + np.eye(order)
    assert distances.min() > 0.1  # no duplicates


def _contains(G, R):
    return np.abs(G - R).max(axis=(1, 2)).min() < 1e-9


@pytest.mark.parametrize("name, fold, axis", [
    ("C5", 5, [0, 0, 1]),
    ("D3", 3, [0, 0, 1]),
    ("D3", 2, [1, 0, 0]),
    ("T", 3, [0, 0, 1]),
    ("T", 2, [0, np.sqrt(2), 1]),
    ("O", 4, [1, 0, 0]),
    ("O", 3, [1, 1, 1]),
    ("I", 2, [1, 0, 0]),
    ("I", 2, [0, 1, 0]),
    ("I", 2, [0, 0, 1]),
    ("I", 5, [0.525731112119, 0, 0.850650808352]),
    ("I", 3, [0, 0.356822089773, 0.934172358963]),
])
def test_symmetry_relion_axes(name, fold, axis):
    assert _contains(g.symmetry_operators(name), g.axis_angle_to_matrix(axis, 360 / fold))


def test_icosahedral_has_no_five_fold_in_yz_plane():
    assert not _contains(g.symmetry_operators("I"), g.axis_angle_to_matrix([0, 1, (1 + 5**0.5) / 2], 72))


@pytest.mark.parametrize("name", ["X", "C0", "D", "I5", "T2", "", "C-2"])
def test_unknown_symmetry(name):
    with pytest.raises(InputError, match="unknown symmetry") as err:
        g.symmetry_operators(name)
    assert err.value.field == "--symmetry"


@pytest.mark.parametrize("name", ["C1", "C3", "D4", "T", "O", "I"])
def test_asymmetric_unit_one_per_orbit(name, rng):
    G = g.symmetry_operators(name)
    seeds = _unit(g.random_euler(40, rng)[:, :2])
    orbits = np.einsum("gij,mj->gmi", G, seeds)  # (G, 40, 3)
    rot, tilt = g.direction_to_euler(orbits.reshape(-1, 3))
    mask = g.asymmetric_unit_mask(np.stack([rot, tilt], -1), name).reshape(len(G), -1)
    np.testing.assert_array_equal(mask.sum(axis=0), 1)


@pytest.mark.parametrize("name", ["C1", "C4", "D3", "T", "O", "I"])
def test_asymmetric_unit_fraction(name):
    d = g.healpix_directions(5)
    G = g.symmetry_operators(name)
    mask = g.asymmetric_unit_mask(d, G)
    assert mask.mean() * len(G) == pytest.approx(1.0, rel=0.03)
    np.testing.assert_array_equal(mask, g.asymmetric_unit_mask(d, name))
    # the kept directions' copies cover the sphere: every grid direction is near a copy of a kept one
    copies = np.einsum("gij,mj->gmi", G, _unit(d[mask])).reshape(-1, 3)
    nearest = np.rad2deg(np.arccos(np.clip((_unit(d) @ copies.T).max(axis=1), -1, 1)))
    assert nearest.max() < 1.5 * g.angular_sampling_deg(5)


def test_asymmetric_unit_cyclic_is_rot_wedge():
    d = g.healpix_directions(3)
    mask = g.asymmetric_unit_mask(d, "C4")
    wedge = (d[:, 0] > -180 + 1e-6) & (d[:, 0] <= -90 + 1e-6)
    pole = np.isin(d[:, 1], [0, 180])
    np.testing.assert_array_equal(mask, wedge | pole)


def test_centre_of_mass_in_2d_batches_and_3d():
    """A Gaussian blob placed at a known offset from the origin N//2 comes back as (x, y[, z]); empty or all
    negative data give zero; a batch keeps its leading axes."""
    n = 32
    grid = np.arange(n) - n // 2
    z, y, x = np.meshgrid(grid, grid, grid, indexing="ij")
    vol = np.exp(-((x - 3.0) ** 2 + (y + 2.0) ** 2 + (z - 5.0) ** 2) / 8.0)
    np.testing.assert_allclose(g.centre_of_mass(vol, 1.0, 3), [3.0, -2.0, 5.0], atol=1e-6)
    images = np.stack([vol[n // 2 + 5], -vol[n // 2 + 5], np.zeros((n, n))])
    np.testing.assert_allclose(g.centre_of_mass(images, 1.0, 2), [[3.0, -2.0], [0.0, 0.0], [0.0, 0.0]], atol=1e-6)
