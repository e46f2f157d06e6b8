"""Gold-standard auto-refinement helpers (RELION's 3D auto-refine): random halves, joining the halves at low
resolution, changes of the hidden variables between iterations and the automatic sampling schedule.

Conventions: maps (N, N, N) float32 on the host; rotations (n, 3, 3) RELION matrices; the orientation ``R @ op``
is equivalent to ``R`` for every symmetry operator ``op`` (the E-step back-projects ``rot @ op``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from cryopipe.backend import get_backend
from cryopipe.errors import InputError
from cryopipe.geometry import angular_sampling_deg, rotation_angle_between

MAX_ORDER = 7  # coarse HEALPix order cap (the fine pass is one finer; OrientationGrid allows 8)


def random_subsets(table, seed: int, path=None) -> np.ndarray:
    """(n,) int 1/2: ``rlnRandomSubset`` of the table when present (checked), else a balanced random split.

    Balanced: a seeded permutation gives the first floor(n/2) particles subset 1, the rest subset 2.
    """
    if "rlnRandomSubset" in table.columns:
        sub = table["rlnRandomSubset"].to_numpy()
        if not np.isin(sub, (1, 2)).all():
            raise InputError("rlnRandomSubset must be 1 or 2 for every particle", path, "rlnRandomSubset")
        sub = sub.astype(np.int64)
        if not ((sub == 1).any() and (sub == 2).any()):
            raise InputError("both random subsets (1 and 2) need particles", path, "rlnRandomSubset")
        return sub
    n = len(table)
    if n < 2:
        raise InputError("gold-standard refinement needs at least 2 particles", path, "data_particles")
    perm = np.random.default_rng(seed).permutation(n)
    sub = np.full(n, 2, dtype=np.int64)
    sub[perm[: n // 2]] = 1
    return sub


def _shell_radius(n: int, xp=np):
    k = xp.fft.fftfreq(n, 1.0 / n)
    return xp.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + xp.arange(n // 2 + 1)[None, None, :] ** 2)


def join_low_resolution(half1: np.ndarray, half2: np.ndarray, angpix: float, resolution_A: float, bk=None):
    """Replace the Fourier coefficients of both half-maps (N^3) at resolutions coarser than ``resolution_A``
    (|k| / (N angpix) < 1 / resolution_A) by their average (RELION's --low_resol_join_halves), so that both halves
    share the overall shape and hand while the FSC at finer resolutions stays independent. Returns two float32
    host maps; nothing is joined when ``resolution_A`` <= 0. Computed on ``bk`` (default: the CPU) as
    half1 + d and half2 - d with d the low-passed half difference: two FFTs instead of four."""
    if resolution_A <= 0:
        return half1, half2
    bk = bk or get_backend("cpu")
    xp, n = bk.xp, half1.shape[0]
    h1, h2 = (bk.asarray(h, dtype=xp.float64 if not bk.is_gpu else xp.float32) for h in (half1, half2))
    diff = bk.fft.rfftn(0.5 * (h2 - h1))
    diff *= _shell_radius(n, xp) < n * angpix / resolution_A
    d = bk.fft.irfftn(diff, s=h1.shape)
    return bk.asnumpy(h1 + d).astype(np.float32), bk.asnumpy(h2 - d).astype(np.float32)


def symmetric_angle(prev_rot: np.ndarray, new_rot: np.ndarray, ops: np.ndarray) -> np.ndarray:
    """(n,) angle (deg) between orientations (n, 3, 3) up to the symmetry: min over ops of angle(prev, new @ op)."""
    ang = np.stack([rotation_angle_between(prev_rot, new_rot @ op) for op in np.asarray(ops)])
    return np.atleast_1d(ang.min(axis=0))


def finest_order(resolution_A: float, diameter_A: float) -> int:
    """Coarse HEALPix order beyond which finer sampling cannot help at ``resolution_A``.

    RELION stops refining the sampling once it is finer than the accuracy of the orientations. Here the accuracy
    is the rotation that moves the particle's rim (radius diameter / 2) by half the resolution,
    acc = degrees(resolution / diameter); the finest order is the first whose fine pass (order + 1) samples at
    <= acc (capped at :data:`MAX_ORDER`).
    """
    acc = np.degrees(resolution_A / diameter_A)
    for order in range(MAX_ORDER + 1):
        if angular_sampling_deg(order + 1) <= acc:
            return order
    return MAX_ORDER


@dataclass
class AutoSampling:
    """State of the auto-sampling schedule (all floats/ints, so it round-trips through a STAR file).

    order : coarse HEALPix order. offset_range, offset_step : px. local : 1 when searches are local.
    best_resolution_A : best gold-standard resolution so far. n_wo_gain : iterations without resolution gain.
    n_small : iterations whose orientation/offset changes were small. min_angle, min_offset : smallest mean
    changes (deg, px) since the sampling last changed. fine_enough : 1 once at the finest useful order.
    n_converged : iterations at the finest order without gain and with small changes. converged : 1 when the
    next iteration is the final one. angle_change, offset_change : the last iteration's mean changes.
    """

    order: int
    offset_range: float
    offset_step: float
    local: int = 0
    best_resolution_A: float = 1e9
    n_wo_gain: int = 0
    n_small: int = 0
    min_angle: float = 1e9
    min_offset: float = 1e9
    fine_enough: int = 0
    n_converged: int = 0
    converged: int = 0
    angle_change: float = 1e9
    offset_change: float = 1e9

    PREFIX = "state_"

    def to_options(self) -> dict:
        return {f"{self.PREFIX}{k}": v for k, v in asdict(self).items()}

    @classmethod
    def from_options(cls, options: dict) -> AutoSampling:
        fields = cls.__dataclass_fields__
        values = {k[len(cls.PREFIX):]: v for k, v in options.items() if k.startswith(cls.PREFIX)}
        return cls(**{k: (int(float(v)) if fields[k].type == "int" else float(v)) for k, v in values.items()})

    @property
    def sampling_deg(self) -> float:
        return angular_sampling_deg(self.order)

    def update(self, resolution_A: float, angle_change: float, offset_change: float, diameter_A: float,
               auto_local_order: int) -> list[str]:
        """Advance the schedule after an iteration (RELION's updateAngularSampling and checkConvergence).

        * Resolution gain: the gold-standard resolution beats the best so far by > 0.1% (else ``n_wo_gain`` + 1).
        * Small changes: the mean orientation change is below the fine sampling step and the rms offset change
          below half the offset step, or both stopped decreasing (>= 0.9 x their smallest values at this
          sampling); ``n_small`` counts them in a row.
        * With no gain and small changes: at the finest useful order (:func:`finest_order`), ``n_converged`` + 1
          (converged at 2); else one HEALPix order finer, offset step halved, range halved (>= 2 steps), local
          searches from ``auto_local_order`` on, and the counters restart.

        Returns log messages.
        """
        msgs = []
        self.angle_change, self.offset_change = float(angle_change), float(offset_change)
        if resolution_A < self.best_resolution_A * 0.999:
            self.best_resolution_A, self.n_wo_gain = float(resolution_A), 0
        else:
            self.n_wo_gain += 1
        below = angle_change < angular_sampling_deg(self.order + 1) and offset_change < 0.5 * self.offset_step
        stalled = angle_change >= 0.9 * self.min_angle and offset_change >= 0.9 * self.min_offset
        self.n_small = self.n_small + 1 if (below or stalled) else 0
        self.min_angle = min(self.min_angle, float(angle_change))
        self.min_offset = min(self.min_offset, float(offset_change))
        self.fine_enough = int(self.order >= finest_order(self.best_resolution_A, diameter_A))
        if self.n_wo_gain >= 1 and self.n_small >= 1:
            if self.fine_enough:
                self.n_converged += 1
                self.converged = int(self.n_converged >= 2)
                msgs.append(f"no resolution gain and small changes at the finest sampling ({self.n_converged})")
            else:
                self.order += 1
                self.offset_step *= 0.5
                self.offset_range = max(0.5 * self.offset_range, 2 * self.offset_step)
                self.local = int(self.order >= auto_local_order)
                self.n_wo_gain, self.n_small, self.min_angle, self.min_offset = 0, 0, 1e9, 1e9
                self.fine_enough = int(self.order >= finest_order(self.best_resolution_A, diameter_A))
                msgs.append(f"HEALPix order {self.order} ({self.sampling_deg:.2f} deg), offsets "
                            f"{self.offset_range:.2f}/{self.offset_step:.2f} px, "
                            f"{'local' if self.local else 'global'} searches")
        return msgs
