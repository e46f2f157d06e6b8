"""A pseudo-atomic test complex built by code.

Four domains of "atoms" (carbon, nitrogen, oxygen, sulfur in protein-like
proportions) packed in ellipsoids whose centres are not coplanar, so the shape
is asymmetric and has a handedness. Conformation 2 rotates the arm domain about
a hinge where it meets the core; the decoy lacks the head domain.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation

from cryopipe.io.models import AtomModel

# (name, centre A, semi-axes A, atoms) — centres chosen so the complex is chiral.
DOMAINS = (
    ("core", (0.0, 0.0, 0.0), (26.0, 20.0, 16.0), 1600),
    ("arm", (34.0, 14.0, -4.0), (18.0, 8.0, 8.0), 500),
    ("head", (-10.0, -28.0, 14.0), (12.0, 12.0, 12.0), 600),
    ("knob", (-22.0, 16.0, -14.0), (7.0, 7.0, 7.0), 150),
)
HINGE_POINT = np.array([20.0, 10.0, -3.0])  # where the arm meets the core (A)
HINGE_AXIS = np.array([0.0, 0.3, 1.0])
HINGE_ANGLE_DEG = 35.0
ELEMENTS = np.array(["C", "N", "O", "S"])
ELEMENT_FRACTIONS = np.array([0.63, 0.17, 0.19, 0.01])
ELECTRONS = {"C": 6.0, "N": 7.0, "O": 8.0, "S": 16.0, "Fe": 26.0}  # Fe: the iron core of holoferritin
MIN_ATOM_SPACING_A = 1.2


def _domain_atoms(rng: np.random.Generator, centre, axes, n: int) -> np.ndarray:
    """``n`` points (n, 3) in Angstrom, uniform in an ellipsoid, none closer than MIN_ATOM_SPACING_A."""
    cand = rng.uniform(-1, 1, size=(8 * n, 3))
    cand = cand[(cand**2).sum(1) <= 1] * np.asarray(axes) + np.asarray(centre)
    # drop near-duplicates so the density is protein-like rather than clumped
    pairs = cKDTree(cand).query_pairs(MIN_ATOM_SPACING_A, output_type="ndarray")
    keep = np.ones(len(cand), bool)
    keep[pairs[:, 1]] = False
    cand = cand[keep]
    if len(cand) < n:
        raise ValueError(f"domain too small for {n} atoms")
    return cand[:n]


def build_models(seed: int = 2024) -> dict[str, AtomModel]:
    """The two conformations and the decoy, centred on conformation 1's electron-weighted centre.

    Returns {"conformation_1", "conformation_2", "decoy"} -> AtomModel (coordinates in Angstrom).
    """
    rng = np.random.default_rng(seed)
    xyz, chain = [], []
    for k, (_name, centre, axes, n) in enumerate(DOMAINS):
        xyz.append(_domain_atoms(rng, centre, axes, n))
        chain += [chr(ord("A") + k)] * n
    xyz = np.vstack(xyz)
    chain = np.array(chain)
    element = rng.choice(ELEMENTS, size=len(xyz), p=ELEMENT_FRACTIONS)
    electrons = np.array([ELECTRONS[e] for e in element])
    centre = (electrons[:, None] * xyz).sum(0) / electrons.sum()
    xyz = xyz - centre
    hinge = HINGE_POINT - centre  # the hinge is given in the frame of DOMAINS
    rot = Rotation.from_rotvec(np.deg2rad(HINGE_ANGLE_DEG) * HINGE_AXIS / np.linalg.norm(HINGE_AXIS))
    arm = chain == "B"
    xyz2 = xyz.copy()
    xyz2[arm] = rot.apply(xyz[arm] - hinge) + hinge

    def model(mask: np.ndarray, coords: np.ndarray) -> AtomModel:
        idx = np.flatnonzero(mask)
        return AtomModel(
            xyz=coords[idx],
            element=element[idx],
            bfactor=np.full(len(idx), 20.0),
            chain=chain[idx],
            residue=np.full(len(idx), "GLY"),
            resseq=idx // 4 + 1,
            atom_name=np.array([{"C": "C", "N": "N", "O": "O", "S": "SD"}[e] for e in element[idx]]),
        )

    everything = np.ones(len(xyz), bool)
    return {
        "conformation_1": model(everything, xyz),
        "conformation_2": model(everything, xyz2),
        "decoy": model(chain != "C", xyz),
    }


def electrons_of(model: AtomModel) -> np.ndarray:
    """Electrons per atom (n,), used as the atoms' scattering weights."""
    return np.array([ELECTRONS.get(str(e).capitalize(), 6.0) for e in model.element])
