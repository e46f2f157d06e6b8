"""Finding a map's symmetry axes and imposing its point group (cryopipe.symalign): maps of known symmetry put into a
random frame and moved off centre come back to RELION's orientation, a group the map does not have shows a low
contrast, and particle poses follow the map."""

import numpy as np
import pytest

from cryopipe.backend import get_backend
from cryopipe.geometry import centre_of_mass, euler_to_matrix, matrix_to_euler, random_rotations, symmetry_operators
from cryopipe.mapalign import rotate_map
from cryopipe.symalign import apply_frame, find_frame, framed_poses, symmetrise

BOX, ANGPIX = 40, 4.0


def _ncc(a, b) -> float:
    return float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])


def symmetric_map(symmetry: str, seed: int) -> np.ndarray:
    """Gaussian blobs (8 A wide) at random points 10-40 A from the centre and their copies under the group,
    RELION's orientation: (BOX,)^3 float32."""
    rng = np.random.default_rng(seed)
    c = np.arange(BOX) - BOX // 2
    z, y, x = np.meshgrid(c, c, c, indexing="ij")
    points = rng.normal(0, 1, (4, 3))
    points *= rng.uniform(10, 40, (4, 1)) / ANGPIX / np.linalg.norm(points, axis=1, keepdims=True)
    vol = np.zeros((BOX,) * 3)
    for g in symmetry_operators(symmetry):
        for p, w in zip(points @ g.T, (1.0, 0.8, 0.6, 1.2), strict=True):
            vol += w * np.exp(-((x - p[0]) ** 2 + (y - p[1]) ** 2 + (z - p[2]) ** 2) / (2 * (8 / ANGPIX / 2.355) ** 2))
    return vol.astype(np.float32)


def _off_frame(vol, seed):
    rng = np.random.default_rng(seed)
    return rotate_map(vol, random_rotations(1, rng)[0], rng.uniform(-2, 2, 3))


@pytest.mark.parametrize(("symmetry", "seed"), [("C4", 1), ("D2", 2), ("T", 3)])
def test_axes_are_found_and_the_group_imposed(symmetry, seed):
    truth = symmetric_map(symmetry, seed)
    moved = _off_frame(truth, seed + 10)
    frame = find_frame(moved, symmetry, ANGPIX, lowpass_A=12.0)
    framed = apply_frame(moved, frame)
    assert frame.score >= 0.97 and frame.contrast >= 0.8, (frame.score, frame.baseline)
    assert _ncc(framed, symmetrise(framed, symmetry)) >= 0.98  # already symmetric in RELION's orientation
    # the truth, up to a rotation that maps the group onto itself (the frame is defined up to it): for D2 and T one
    # of the octahedral group O; for C4 any turn about z and the flip of z (compare averages over turns about z)
    if symmetry == "C4":
        flips = (np.eye(3), np.diag([1.0, -1.0, -1.0]))
        centred = rotate_map(truth, np.eye(3), -centre_of_mass(truth, 1.0, 3))  # as the frame is
        assert max(_ncc(symmetrise(rotate_map(framed, f), "C72"), symmetrise(centred, "C72")) for f in flips) >= 0.97
    else:
        assert max(_ncc(rotate_map(framed, g), truth) for g in symmetry_operators("O")) >= 0.95

def test_a_group_the_map_does_not_have_shows_a_low_contrast():
    moved = _off_frame(symmetric_map("C4", 1), 11)
    assert find_frame(moved, "C4", ANGPIX, lowpass_A=12.0).contrast >= 0.8
    assert find_frame(moved, "C5", ANGPIX, lowpass_A=12.0).contrast < 0.5
    assert find_frame(moved, "D4", ANGPIX, lowpass_A=12.0).contrast < 0.5


def test_c1_is_the_identity_frame():
    frame = find_frame(symmetric_map("C1", 4), "C1", ANGPIX)
    np.testing.assert_array_equal(frame.rotation, np.eye(3))


def test_poses_move_with_the_map():
    """A particle's projection (pose, origin) of the map equals its projection at the new pose and origin of the
    framed map (projections summed along z of rotate_map; RELION's origin: the image content sits at -origin)."""
    moved = _off_frame(symmetric_map("D2", 5), 12)
    frame = find_frame(moved, "D2", ANGPIX, lowpass_A=12.0)
    framed = apply_frame(moved, frame)
    rng = np.random.default_rng(6)
    rot, tilt, psi = matrix_to_euler(random_rotations(4, rng))
    origins = rng.uniform(-6, 6, (4, 2))
    new = framed_poses(rot, tilt, psi, origins[:, 0], origins[:, 1], frame, ANGPIX)
    for k in range(4):
        before = rotate_map(moved, euler_to_matrix(rot[k], tilt[k], psi[k]), (*(-origins[k] / ANGPIX), 0.0)).sum(0)
        after = rotate_map(framed, euler_to_matrix(new[0][k], new[1][k], new[2][k]),
                           (-new[3][k] / ANGPIX, -new[4][k] / ANGPIX, 0.0)).sum(0)
        assert _ncc(before, after) >= 0.995


@pytest.mark.gpu
def test_gpu_finds_the_cpu_frame():
    moved = _off_frame(symmetric_map("D2", 2), 12)
    cpu = find_frame(moved, "D2", ANGPIX, lowpass_A=12.0)
    gpu = find_frame(moved, "D2", ANGPIX, lowpass_A=12.0, bk=get_backend("gpu"))
    # D2's frame is defined up to the octahedral group (its axes may be permuted): float32 sums may pick another
    assert max(_ncc(rotate_map(apply_frame(moved, cpu), g), apply_frame(moved, gpu)) for g in symmetry_operators("O")
               ) >= 0.99
    assert gpu.score == pytest.approx(cpu.score, abs=1e-3)
