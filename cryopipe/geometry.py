"""Rotations, Euler angles, quaternions, HEALPix orientation sampling and point-group symmetry.

Conventions (project-wide, as RELION). Angles a user sees are in degrees.

* Euler angles (rot, tilt, psi) are RELION's ZYZ angles; :func:`euler_to_matrix` gives RELION's
  ``Euler_angles2matrix`` ``A``. For a particle with these angles, the 3D point ``r = (x, y, z)`` of the
  map lands at image coordinate ``(A @ r)[:2]``: the projection integrates along the direction
  ``A.T @ (0, 0, 1)`` (:func:`euler_to_direction`). By the Fourier-slice theorem, the 2D frequency
  ``(kx, ky)`` of the image is the 3D frequency ``A.T @ (kx, ky, 0)`` of the map.
* Arrays: images are ``img[y, x]`` and volumes ``vol[z, y, x]``, with the origin at index ``N // 2``.
* Quaternions are ``(w, x, y, z)``, scalar first, unit, with ``w >= 0``; :func:`quaternion_to_matrix`
  gives the usual active rotation matrix, and the quaternion of an Euler triple is that of ``A``.
* Symmetry operators are proper rotations ``R`` about the axes RELION uses; the orientations
  ``A @ R`` are equivalent to ``A`` and the directions ``R @ d`` to ``d``.

Everything here is NumPy float64 on the host.
"""

from __future__ import annotations

import re

import numpy as np

from cryopipe.errors import InputError, require

_ANGLE_TOL = 1e-6  # degrees: directions closer than this in tilt or rot count as equal
_PHI = (1.0 + np.sqrt(5.0)) / 2.0

# Generators as (fold, axis) of RELION's SymList::fill_symmetry_class; axes are normalised on use.
_GENERATORS = {
    "T": [(3, (0.0, 0.0, 1.0)), (2, (0.0, np.sqrt(2.0), 1.0))],
    "O": [(3, (1.0, 1.0, 1.0)), (4, (0.0, 0.0, 1.0))],
    "I": [(2, (0.0, 0.0, 1.0)), (5, (1.0, 0.0, _PHI)), (3, (0.0, 1.0, _PHI**2))],
}


def centre_of_mass(data, mask, ndim: int, bk=None) -> np.ndarray:
    """Centre of mass of the positive part of ``data * mask``: (..., ndim) float64 on the host, (x, y[, z]) in px
    from the origin N//2 of the last ``ndim`` axes of ``data`` (..., [N,] N, N: axes [z,] y, x), zero where nothing
    is positive. ``bk``: the backend ``data`` lives on (None: NumPy arrays)."""
    xp = np if bk is None else bk.xp
    weight = xp.maximum(data * mask, 0)
    axes = tuple(range(-ndim, 0))
    total = weight.sum(axis=axes)
    coords = []
    for ax in axes[::-1]:  # x (the last axis) first
        n = data.shape[ax]
        grid = xp.arange(n, dtype=xp.float64) - n // 2
        coords.append((weight.sum(axis=tuple(a for a in axes if a != ax)) * grid).sum(-1))
    safe = xp.where(total > 0, total, 1.0)
    centre = xp.stack(coords, axis=-1) / safe[..., None] * (total > 0)[..., None]
    return np.asarray(centre, dtype=np.float64) if bk is None else bk.asnumpy(centre).astype(np.float64)


def _wrap180(angle):
    """Angles in degrees wrapped into (-180, 180]."""
    return 180.0 - np.mod(180.0 - angle, 360.0)


# --------------------------------------------------------------------------------------------- Euler angles


def euler_to_matrix(rot, tilt, psi) -> np.ndarray:
    """RELION's ``Euler_angles2matrix``: ``A = Rz(psi) Ry(tilt) Rz(rot)`` in RELION's sign convention.

    Parameters
    ----------
    rot, tilt, psi : float or array, degrees; broadcast against each other to shape ``S``.

    Returns
    -------
    A : (*S, 3, 3) float64. ``(A @ r)[:2]`` is the image position of map point ``r``; ``A.T @ (kx, ky, 0)``
        the map frequency of image frequency ``(kx, ky)``. ``A(rot, 0, 0) @ (1, 0, 0) = (cos rot, -sin rot, 0)``.
        It equals ``scipy.spatial.transform.Rotation.from_euler("ZYZ", [rot, tilt, psi], degrees=True)``'s
        matrix transposed.
    """
    a, b, g = np.broadcast_arrays(*(np.deg2rad(np.asarray(v, dtype=np.float64)) for v in (rot, tilt, psi)))
    ca, sa, cb, sb, cg, sg = np.cos(a), np.sin(a), np.cos(b), np.sin(b), np.cos(g), np.sin(g)
    return np.stack(
        [
            np.stack([cg * cb * ca - sg * sa, cg * cb * sa + sg * ca, -cg * sb], axis=-1),
            np.stack([-sg * cb * ca - cg * sa, -sg * cb * sa + cg * ca, sg * sb], axis=-1),
            np.stack([sb * ca, sb * sa, cb], axis=-1),
        ],
        axis=-2,
    )


def matrix_to_euler(A):
    """RELION's ``Euler_matrix2angles``: the inverse of :func:`euler_to_matrix`.

    Parameters
    ----------
    A : (*S, 3, 3) rotation matrices.

    Returns
    -------
    rot, tilt, psi : each shape ``S`` float64 degrees; rot and psi in (-180, 180], tilt in [0, 180].
        At gimbal lock (``|sin tilt| <= 16 * float32 eps``) rot = 0, tilt = 0 or 180 and psi carries the
        in-plane angle, as in RELION.
    """
    A = np.asarray(A, dtype=np.float64)
    abs_sb = np.hypot(A[..., 0, 2], A[..., 1, 2])
    regular = abs_sb > 16 * np.finfo(np.float32).eps
    up = A[..., 2, 2] > 0
    rot = np.where(regular, np.arctan2(A[..., 2, 1], A[..., 2, 0]), 0.0)
    tilt = np.where(regular, np.arctan2(abs_sb, A[..., 2, 2]), np.where(up, 0.0, np.pi))
    psi_locked = np.where(up, np.arctan2(-A[..., 1, 0], A[..., 0, 0]), np.arctan2(A[..., 1, 0], -A[..., 0, 0]))
    psi = np.where(regular, np.arctan2(A[..., 1, 2], -A[..., 0, 2]), psi_locked)
    return _wrap180(np.rad2deg(rot))[()], np.rad2deg(tilt)[()], _wrap180(np.rad2deg(psi))[()]


def euler_to_direction(rot, tilt) -> np.ndarray:
    """RELION's ``Euler_angles2direction``: the projection direction ``A.T @ (0, 0, 1)``.

    rot, tilt : degrees, broadcast to shape ``S``. Returns (*S, 3) unit vectors
    ``(sin tilt cos rot, sin tilt sin rot, cos tilt)``.
    """
    a, b = np.broadcast_arrays(*(np.deg2rad(np.asarray(v, dtype=np.float64)) for v in (rot, tilt)))
    return np.stack([np.sin(b) * np.cos(a), np.sin(b) * np.sin(a), np.cos(b)], axis=-1)


def direction_to_euler(v):
    """RELION's ``Euler_direction2angles``: (rot, tilt) degrees of (*S, 3) vectors (need not be unit).

    Returns rot in (-180, 180] and tilt in [0, 180], each shape ``S``; rot = 0 within 0.001 deg of a pole.
    """
    v = np.asarray(v, dtype=np.float64)
    tilt = np.rad2deg(np.arctan2(np.hypot(v[..., 0], v[..., 1]), v[..., 2]))
    rot = _wrap180(np.rad2deg(np.arctan2(v[..., 1], v[..., 0])))
    rot = np.where((tilt < 0.001) | (tilt > 179.999), 0.0, rot)
    return rot[()], tilt[()]


# ---------------------------------------------------------------------------------------------- quaternions


def _canonical(q) -> np.ndarray:
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    return np.where(q[..., :1] < 0, -q, q)


def quaternion_to_matrix(q) -> np.ndarray:
    """(*S, 4) quaternions (w, x, y, z; normalised here) -> (*S, 3, 3) active rotation matrices."""
    w, x, y, z = np.moveaxis(_canonical(np.asarray(q, dtype=np.float64)), -1, 0)
    return np.stack(
        [
            np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], axis=-1),
            np.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], axis=-1),
            np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], axis=-1),
        ],
        axis=-2,
    )


def matrix_to_quaternion(A) -> np.ndarray:
    """(*S, 3, 3) rotation matrices -> (*S, 4) unit quaternions (w, x, y, z) with w >= 0.

    Uses the largest of |w|, |x|, |y|, |z| as pivot, so it is accurate for every angle.
    """
    m = np.asarray(A, dtype=np.float64)
    d0, d1, d2 = m[..., 0, 0], m[..., 1, 1], m[..., 2, 2]
    wx, wy, wz = m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] - m[..., 0, 1]
    xy, xz, yz = m[..., 0, 1] + m[..., 1, 0], m[..., 0, 2] + m[..., 2, 0], m[..., 1, 2] + m[..., 2, 1]
    outer = np.stack(  # 4 q_i q_j for i, j in (w, x, y, z)
        [
            np.stack([1 + d0 + d1 + d2, wx, wy, wz], axis=-1),
            np.stack([wx, 1 + d0 - d1 - d2, xy, xz], axis=-1),
            np.stack([wy, xy, 1 - d0 + d1 - d2, yz], axis=-1),
            np.stack([wz, xz, yz, 1 - d0 - d1 + d2], axis=-1),
        ],
        axis=-2,
    )
    pivot = np.argmax(np.diagonal(outer, axis1=-2, axis2=-1), axis=-1)
    return _canonical(np.take_along_axis(outer, pivot[..., None, None], axis=-2)[..., 0, :])


def euler_to_quaternion(rot, tilt, psi) -> np.ndarray:
    """RELION Euler angles (degrees, broadcast to ``S``) -> (*S, 4) quaternion of :func:`euler_to_matrix`."""
    return matrix_to_quaternion(euler_to_matrix(rot, tilt, psi))


def quaternion_to_euler(q):
    """(*S, 4) quaternions -> (rot, tilt, psi) degrees, as :func:`matrix_to_euler`."""
    return matrix_to_euler(quaternion_to_matrix(q))


def quaternion_multiply(q1, q2) -> np.ndarray:
    """Hamilton product of (*S, 4) quaternions (broadcast), canonical (w >= 0).

    ``quaternion_to_matrix(quaternion_multiply(q1, q2)) == quaternion_to_matrix(q1) @ quaternion_to_matrix(q2)``.
    """
    w1, x1, y1, z1 = np.moveaxis(np.asarray(q1, dtype=np.float64), -1, 0)
    w2, x2, y2, z2 = np.moveaxis(np.asarray(q2, dtype=np.float64), -1, 0)
    product = np.stack(
        [
            w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2,
            w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
            w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2,
            w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2,
        ],
        axis=-1,
    )
    return _canonical(product)


def rotation_angle_between(A, B) -> np.ndarray:
    """Angle in degrees [0, 180] of the rotation taking B to A; (*S, 3, 3) inputs broadcast.

    Computed as atan2(sin, cos) of ``A @ B.T``, so it stays accurate for tiny angles.
    """
    R = np.asarray(A, dtype=np.float64) @ np.swapaxes(np.asarray(B, dtype=np.float64), -1, -2)
    cos = (np.trace(R, axis1=-2, axis2=-1) - 1.0) / 2.0
    skew = np.stack([R[..., 2, 1] - R[..., 1, 2], R[..., 0, 2] - R[..., 2, 0], R[..., 1, 0] - R[..., 0, 1]], -1)
    return np.rad2deg(np.arctan2(np.linalg.norm(skew, axis=-1) / 2.0, cos))[()]


def axis_angle_to_matrix(axis, angle) -> np.ndarray:
    """Active rotation by ``angle`` degrees (right-handed) about ``axis`` (*S, 3; normalised here) -> (*S, 3, 3)."""
    k = np.asarray(axis, dtype=np.float64)
    k = k / np.linalg.norm(k, axis=-1, keepdims=True)
    t = np.deg2rad(np.asarray(angle, dtype=np.float64))[..., None, None]
    zero = np.zeros(k.shape[:-1])
    K = np.stack(
        [
            np.stack([zero, -k[..., 2], k[..., 1]], axis=-1),
            np.stack([k[..., 2], zero, -k[..., 0]], axis=-1),
            np.stack([-k[..., 1], k[..., 0], zero], axis=-1),
        ],
        axis=-2,
    )
    return np.eye(3) + np.sin(t) * K + (1.0 - np.cos(t)) * (K @ K)


def random_rotations(n: int, rng=None) -> np.ndarray:
    """(n, 3, 3) rotations uniform on SO(3) (normalised Gaussian quaternions); ``rng``: Generator or seed."""
    return quaternion_to_matrix(np.random.default_rng(rng).standard_normal((n, 4)))


def random_euler(n: int, rng=None) -> np.ndarray:
    """(n, 3) (rot, tilt, psi) degrees of rotations uniform on SO(3), in RELION's ranges."""
    return np.stack(matrix_to_euler(random_rotations(n, rng)), axis=-1)


# ------------------------------------------------------------------------------------------------- HEALPix


def healpix_nside(order: int) -> int:
    """HEALPix N_side = 2**order."""
    return 2 ** int(order)


def angular_sampling_deg(order: int) -> float:
    """RELION's reported angular sampling 360 / (6 * 2**order) degrees: order 2 -> 15, 3 -> 7.5, 4 -> 3.75.

    (RELION's ``getAngularSampling`` uses order = healpix_order + adaptive oversampling order.)
    """
    return 360.0 / (6 * healpix_nside(order))


def healpix_directions(order: int) -> np.ndarray:
    """Centres of the 12 * nside**2 HEALPix pixels, RING order (``pix2ang_ring``, Gorski et al. 2005).

    Returns (12 * nside**2, 2) float64: (rot, tilt) degrees with rot = phi wrapped into (-180, 180] and
    tilt = theta in [0, 180], as RELION's ``getDirectionFromHealPix`` (which walks the same pixels in NEST
    order).
    """
    require(int(order) == order >= 0, f"HEALPix order must be an integer >= 0, got {order}", field="--healpix-order")
    nside = healpix_nside(order)
    npix, ncap = 12 * nside * nside, 2 * nside * (nside - 1)
    p = np.arange(npix)
    z, phi = np.empty(npix), np.empty(npix)

    # Polar caps: ring i = 1..nside-1 counted from the nearer pole holds 4i pixels, j = 1..4i eastwards from phi = 0
    # (the south cap is numbered backwards from the last pixel).
    for cap, k, sign in ((p < ncap, p + 1, 1.0), (p >= npix - ncap, npix - p, -1.0)):
        k = k[cap]
        i = (1 + np.floor(np.sqrt(2 * k - 0.5)).astype(np.int64)) // 2
        j = k - 2 * i * (i - 1) if sign > 0 else 4 * i + 1 - (k - 2 * i * (i - 1))
        z[cap] = sign * (1.0 - i * i / (3.0 * nside * nside))
        phi[cap] = np.pi / (2.0 * i) * (j - 0.5)

    # Equatorial belt: rings i = nside..3nside of 4 nside pixels; rings with i + nside odd start at phi = 0.
    belt = (p >= ncap) & (p < npix - ncap)
    i, j = np.divmod(p[belt] - ncap, 4 * nside)
    i += nside
    z[belt] = 4.0 / 3.0 - 2.0 * i / (3.0 * nside)
    phi[belt] = np.pi / (2.0 * nside) * (j + 0.5 * ((i + nside + 1) % 2))

    return np.stack([_wrap180(np.rad2deg(phi)), np.rad2deg(np.arccos(z))], axis=-1)


def so3_grid(order: int, psi_step: float | None = None) -> np.ndarray:
    """RELION's 3D orientation grid: every HEALPix direction combined with every in-plane angle.

    psi_step : degrees, default :func:`angular_sampling_deg`; as RELION, rounded to 360 / ceil(360 / psi_step).

    Returns (n_dir * n_psi, 3) float64 (rot, tilt, psi) degrees, direction-major (row = idir * n_psi + ipsi),
    psi = 0, step, ... < 360.
    """
    step = angular_sampling_deg(order) if psi_step is None else float(psi_step)
    require(0 < step <= 360, f"psi step must be in (0, 360] degrees, got {psi_step}", field="--psi-step")
    directions = healpix_directions(order)
    n_psi = int(np.ceil(360.0 / step - 1e-9))
    psi = np.arange(n_psi) * (360.0 / n_psi)
    return np.column_stack([np.repeat(directions, n_psi, axis=0), np.tile(psi, len(directions))])


# ------------------------------------------------------------------------------------------------- symmetry


def _unique_rotations(mats: np.ndarray) -> np.ndarray:
    """Drop matrices equal, after rounding to 1e-6, to an earlier one; keeps the order of first occurrence."""
    keys = np.round(mats.reshape(-1, 9), 6) + 0.0  # + 0.0 turns -0.0 into 0.0
    _, first = np.unique(keys, axis=0, return_index=True)
    return mats[np.sort(first)]


def symmetry_operators(name: str) -> np.ndarray:
    """Rotation matrices of a point group, in RELION's orientation, identity first.

    name : case-insensitive ``C<n>``, ``D<n>``, ``T``, ``O``, ``I`` or ``I2`` (the same group).

    * C<n>: n-fold axis along z (order n).
    * D<n>: n-fold axis along z and a 2-fold axis along x (order 2n).
    * T: 3-fold axis along z and a 2-fold axis along (0, sqrt(2/3), sqrt(1/3)) (order 12).
    * O: 4-fold axes along x, y, z and 3-fold axes along the cube diagonals (1, 1, 1) (order 24).
    * I: RELION's default I2 (Crowther 222): 2-fold axes along x, y and z, a 5-fold axis along
      (1, 0, phi) / |.| in the x-z plane, 31.72 deg from z, and a 3-fold axis along (0, 1, phi**2) / |.| in
      the y-z plane, 20.91 deg from z; phi = golden ratio (order 60).

    Returns (G, 3, 3) float64, built by closing RELION's generators under multiplication.
    Raises :class:`~cryopipe.errors.InputError` (field ``--symmetry``) for any other name.
    """
    key = str(name).strip().upper()
    key = "I" if key == "I2" else key
    match = re.fullmatch(r"([CD])([1-9]\d*)", key)
    if match:
        generators = [(int(match[2]), (0.0, 0.0, 1.0))] + ([(2, (1.0, 0.0, 0.0))] if match[1] == "D" else [])
    elif key in _GENERATORS:
        generators = _GENERATORS[key]
    else:
        raise InputError(f"unknown symmetry {name!r}; expected C<n>, D<n>, T, O or I", field="--symmetry")
    gens = np.stack([axis_angle_to_matrix(axis, 360.0 / fold) for fold, axis in generators])
    group = _unique_rotations(np.concatenate([np.eye(3)[None], gens]))
    while True:  # close under right-multiplication by the generators
        grown = _unique_rotations(np.concatenate([group, (group[:, None] @ gens[None]).reshape(-1, 3, 3)]))
        if len(grown) == len(group):
            return group
        group = grown


def asymmetric_unit_mask(directions_rot_tilt, symmetry) -> np.ndarray:
    """Keep each projection direction once up to the symmetry group.

    The representative of a direction ``d`` is the symmetry copy ``R @ d`` with the smallest tilt and, among
    copies of equal tilt, the smallest rot (rot in (-180, 180]; angles compared within 1e-6 deg). A direction is
    kept when it is its own representative, so the kept directions cover 1/|G| of the sphere (for C<n> the wedge
    rot in (-180, -180 + 360/n] plus the poles). Of a set made of whole orbits, exactly one member per orbit is kept.

    Parameters
    ----------
    directions_rot_tilt : (M, 2) (rot, tilt) degrees, e.g. :func:`healpix_directions`.
    symmetry : group name (see :func:`symmetry_operators`) or its (G, 3, 3) operators.

    Returns
    -------
    (M,) bool.
    """
    ops = symmetry_operators(symmetry) if isinstance(symmetry, str) else np.asarray(symmetry, dtype=np.float64)
    rot_tilt = np.asarray(directions_rot_tilt, dtype=np.float64).reshape(-1, 2)
    d = euler_to_direction(rot_tilt[:, 0], rot_tilt[:, 1])

    def key(v):
        rot, tilt = direction_to_euler(v)
        return np.where(rot <= -180.0 + _ANGLE_TOL, rot + 360.0, rot), tilt  # rot just above -180 is 180

    rot, tilt = key(d)
    rot_c, tilt_c = key(np.einsum("gij,mj->gmi", ops, d))
    smaller = (tilt_c < tilt - _ANGLE_TOL) | ((np.abs(tilt_c - tilt) <= _ANGLE_TOL) & (rot_c < rot - _ANGLE_TOL))
    return ~smaller.any(axis=0)
