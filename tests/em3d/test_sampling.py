"""Orientation and translation grids with RELION's one-level adaptive oversampling."""

import numpy as np
import pytest

from cryopipe.em3d.sampling import OrientationGrid, fine_translations, translation_grid
from cryopipe.geometry import euler_to_direction, healpix_directions


@pytest.mark.parametrize("order", [1, 2, 3])
def test_direction_children_partition_the_finer_healpix_grid(order):
    grid = OrientationGrid(order)
    fine = healpix_directions(order + 1)
    children = grid.child_directions.reshape(-1, 2)
    d_child = euler_to_direction(children[:, 0], children[:, 1])
    d_fine = euler_to_direction(fine[:, 0], fine[:, 1])
    match = np.argmax(d_child @ d_fine.T, axis=1)
    assert np.allclose(np.sort(match), np.arange(len(fine)))  # each finer pixel is the child of exactly one


def test_fine_orientations_surround_their_parent():
    grid = OrientationGrid(2)
    coarse = np.arange(0, grid.size, 97)
    fine = (coarse[:, None] * 8 + np.arange(8)).ravel()
    parent, child = np.repeat(grid.euler(coarse), 8, axis=0), grid.fine_euler(fine)
    d_parent = euler_to_direction(parent[:, 0], parent[:, 1])
    d_child = euler_to_direction(child[:, 0], child[:, 1])
    direction_angle = np.degrees(np.arccos(np.clip((d_parent * d_child).sum(1), -1, 1)))
    assert grid.size == 192 * 24 and grid.sampling_deg == 15.0
    assert direction_angle.max() < grid.sampling_deg
    assert np.allclose(np.abs(child[:, 2] - parent[:, 2]), grid.psi_step / 4)


def test_asymmetric_unit_reduces_directions():
    assert len(OrientationGrid(2, "C4").directions) * 4 == pytest.approx(len(OrientationGrid(2).directions), rel=0.1)


def test_translation_grid_is_relions():
    t = translation_grid(5, 2)
    assert len(t) == 21 and np.abs(t).max() == 4
    f = fine_translations(t, 2)
    assert f.shape == (84, 2)
    assert np.allclose(f.reshape(21, 4, 2).mean(axis=1), t)
    assert np.allclose(np.abs(f.reshape(21, 4, 2) - t[:, None]), 0.5)
