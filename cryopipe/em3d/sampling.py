"""Orientation and translation sampling with RELION's adaptive oversampling (one level).

Coarse orientations are HEALPix directions of ``order`` (restricted to the asymmetric unit of the point
group) times in-plane angles psi at the same step. Each coarse orientation has 8 fine children: the 4
HEALPix directions of ``order + 1`` nearest to its direction (the nested children of its pixel, whose
common corner is the parent's centre) times psi -/+ step/4. Each coarse translation has 4 fine children
at -/+ step/4 in x and y. Fine orientation index = coarse index * 8 + 2 * direction child + psi child;
fine translation index = coarse index * 4 + 2 * y child + x child.
"""

from __future__ import annotations

import numpy as np

from cryopipe.errors import require
from cryopipe.geometry import (
    angular_sampling_deg,
    asymmetric_unit_mask,
    euler_to_direction,
    euler_to_matrix,
    healpix_directions,
    symmetry_operators,
)

ORIENTATION_CHILDREN = 8
TRANSLATION_CHILDREN = 4


class OrientationGrid:
    """Coarse orientations of HEALPix ``order`` within the asymmetric unit of ``symmetry``, and their children.

    Attributes: ``directions`` (n_dir, 2) (rot, tilt) deg; ``psi`` (n_psi,) deg; ``psi_step`` deg;
    ``child_directions`` (n_dir, 4, 2) (rot, tilt) deg; ``size`` = n_dir * n_psi (direction-major).
    """

    def __init__(self, order: int, symmetry: str = "C1"):
        require(int(order) == order and 0 <= order <= 8, f"HEALPix order must be 0..8, got {order}",
                field="--healpix-order")
        self.order, self.symmetry = int(order), symmetry
        dirs = healpix_directions(order)
        if len(symmetry_operators(symmetry)) > 1:
            dirs = dirs[asymmetric_unit_mask(dirs, symmetry)]
        self.directions = dirs
        n_psi = int(np.ceil(360.0 / angular_sampling_deg(order) - 1e-9))
        self.psi_step = 360.0 / n_psi
        self.psi = np.arange(n_psi) * self.psi_step
        fine = healpix_directions(order + 1)
        near = euler_to_direction(dirs[:, 0], dirs[:, 1]) @ euler_to_direction(fine[:, 0], fine[:, 1]).T
        self.child_directions = fine[np.argsort(-near, axis=1)[:, :4]]
        self.size = len(dirs) * n_psi
        self._rotation_table = None

    @property
    def sampling_deg(self) -> float:
        """Coarse angular step (RELION's reported sampling of ``order``)."""
        return angular_sampling_deg(self.order)

    @property
    def fine_sampling_deg(self) -> float:
        return angular_sampling_deg(self.order + 1)

    def euler(self, index) -> np.ndarray:
        """(m, 3) (rot, tilt, psi) deg of coarse orientations ``index`` (m,)."""
        index = np.asarray(index, dtype=np.int64)
        d, p = np.divmod(index, len(self.psi))
        return np.column_stack([self.directions[d], self.psi[p]])

    def fine_euler(self, index) -> np.ndarray:
        """(m, 3) (rot, tilt, psi) deg of fine orientations ``index`` (m,) = coarse * 8 + child."""
        index = np.asarray(index, dtype=np.int64)
        coarse, child = np.divmod(index, ORIENTATION_CHILDREN)
        d, p = np.divmod(coarse, len(self.psi))
        rot_tilt = self.child_directions[d, child // 2]
        psi = self.psi[p] + (child % 2 - 0.5) * self.psi_step / 2
        return np.column_stack([rot_tilt, psi])

    def rotations(self, index) -> np.ndarray:
        """(m, 3, 3) RELION rotation matrices of coarse orientations (from :meth:`rotation_table`)."""
        return self.rotation_table().reshape(-1, 3, 3)[np.asarray(index, dtype=np.int64)]

    def rotation_table(self) -> np.ndarray:
        """(n_dir, n_psi, 3, 3) rotation matrices of every coarse orientation (index = dir * n_psi + psi), kept."""
        if self._rotation_table is None:
            e = self.euler(np.arange(self.size))
            self._rotation_table = euler_to_matrix(e[:, 0], e[:, 1], e[:, 2]).reshape(len(self.directions), -1, 3, 3)
        return self._rotation_table

    def fine_rotations(self, index) -> np.ndarray:
        """(m, 3, 3) RELION rotation matrices of fine orientations."""
        e = self.fine_euler(index)
        return euler_to_matrix(e[:, 0], e[:, 1], e[:, 2])


def translation_grid(range_px: float, step_px: float) -> np.ndarray:
    """RELION's coarse translations: multiples of ``step_px`` within a circle of ``range_px``; (T, 2) (dx, dy) px."""
    require(step_px > 0, f"offset step must be positive, got {step_px}", field="--offset-step")
    require(range_px >= 0, f"offset range must be >= 0, got {range_px}", field="--offset-range")
    n = int(np.floor(range_px / step_px + 1e-9))
    g = np.arange(-n, n + 1) * float(step_px)
    yy, xx = np.meshgrid(g, g, indexing="ij")
    t = np.column_stack([xx.ravel(), yy.ravel()])
    return t[(t**2).sum(1) <= range_px**2 + 1e-9]


def fine_translations(coarse: np.ndarray, step_px: float) -> np.ndarray:
    """(4 T, 2) children of (T, 2) coarse translations at -/+ step/4 in x and y (index = coarse * 4 + child)."""
    d = np.array([[-1, -1], [1, -1], [-1, 1], [1, 1]], dtype=np.float64) * (step_px / 4)
    return (np.asarray(coarse, dtype=np.float64)[:, None, :] + d[None]).reshape(-1, 2)
