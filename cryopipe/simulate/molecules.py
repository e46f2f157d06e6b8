"""Test molecules unlike the demo complex, built by code as it is (:mod:`cryopipe.simulate.complex`).

* ``ferritin``: a hollow spherical cage of 24 identical subunit blobs related by octahedral (432) symmetry, outer
  diameter ~116 A and inner ~84 A, as apoferritin. Conformation 2 is holoferritin, the same cage holding an iron
  core (a 30 A-radius ball of Fe atoms); the decoy is the cage with its top cap of subunits missing.
* ``rod``: an elongated helical assembly (12 subunits, rise 9.3 A, twist 100 deg; ~114 A long, ~38 A wide, ~3:1).
  Conformation 2 is the rod kinked by 25 deg at its middle; the decoy is its lower two thirds.

Every molecule comes as {"conformation_1", "conformation_2", "decoy"} -> AtomModel (coordinates in Angstrom about
its centre), the layout :func:`cryopipe.simulate.complex.build_models` gives for the demo complex.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation

from cryopipe.io.models import AtomModel
from cryopipe.simulate.complex import ELEMENT_FRACTIONS, ELEMENTS, _domain_atoms, build_models

MOLECULES = ("complex", "ferritin", "rod")
# every atom of the new molecules lies within this distance of the map centre, Angstrom (tested)
MOLECULE_RADIUS_A = {"ferritin": 60.0, "rod": 60.0}

FERRITIN_SUBUNIT_RADIUS_A = 50.0  # distance of each subunit's centre from the cage centre
FERRITIN_SUBUNIT_AXES_A = (20.0, 10.0, 8.0)  # semi-axes: long tangential, short tangential, radial
FERRITIN_SUBUNIT_ATOMS = 150
FERRITIN_SUBUNIT_DIRECTION = (0.251, 0.462, 0.851)  # its orbit under 432 is the snub cube: subunits evenly spread
FERRITIN_CORE_RADIUS_A = 30.0
FERRITIN_CORE_ATOMS = 400
FERRITIN_DECOY_CAP_A = 20.0  # the decoy lacks the subunits whose centre lies above this height (z)

ROD_SUBUNITS = 12
ROD_RISE_A = 9.3
ROD_TWIST_DEG = 100.0
ROD_SUBUNIT_RADIUS_A = 11.0  # distance of each subunit's centre from the rod axis (z)
ROD_SUBUNIT_AXES_A = (8.0, 9.0, 6.0)  # semi-axes: radial, tangential, axial
ROD_SUBUNIT_ATOMS = 200
ROD_KINK_DEG = 25.0
ROD_DECOY_SUBUNITS = 8

_ATOM_NAMES = {"C": "C", "N": "N", "O": "O", "S": "SD", "FE": "FE"}


def _model(xyz: np.ndarray, element: np.ndarray, chain: np.ndarray, residue: str = "GLY") -> AtomModel:
    """An AtomModel of ``n`` atoms: xyz (n, 3) Angstrom, element (n,) symbols, chain (n,) names."""
    n = len(xyz)
    return AtomModel(
        xyz=np.asarray(xyz, dtype=np.float64), element=np.asarray(element), bfactor=np.full(n, 20.0),
        chain=np.asarray(chain), residue=np.full(n, residue), resseq=np.arange(n) // 4 + 1,
        atom_name=np.array([_ATOM_NAMES[str(e)] for e in element]),
    )


def _concat(models: list[AtomModel]) -> AtomModel:
    """The atoms of several models as one (residue numbers restart per part, as written)."""
    parts = {f: np.concatenate([getattr(m, f) for m in models]) for f in AtomModel.__dataclass_fields__}
    return AtomModel(**parts)


def build_ferritin(seed: int = 2024) -> dict[str, AtomModel]:
    """Apoferritin-like cage, holoferritin and an open-cage decoy (see the module doc), centred on the origin."""
    rng = np.random.default_rng(seed)
    local = _domain_atoms(rng, (0.0, 0.0, 0.0), FERRITIN_SUBUNIT_AXES_A, FERRITIN_SUBUNIT_ATOMS)
    element = rng.choice(ELEMENTS, size=len(local), p=ELEMENT_FRACTIONS)
    radial = np.asarray(FERRITIN_SUBUNIT_DIRECTION) / np.linalg.norm(FERRITIN_SUBUNIT_DIRECTION)
    long_axis = np.cross(radial, [0.0, 0.0, 1.0])
    long_axis /= np.linalg.norm(long_axis)
    basis = np.column_stack([long_axis, np.cross(radial, long_axis), radial])  # local (x, y, z) -> cage frame
    subunit = local @ basis.T + FERRITIN_SUBUNIT_RADIUS_A * radial
    group = Rotation.create_group("O")  # the 24 rotations of 432
    subunits = [
        _model(g.apply(subunit), element, np.full(len(subunit), chr(ord("A") + k))) for k, g in enumerate(group)
    ]
    centres_z = group.apply(FERRITIN_SUBUNIT_RADIUS_A * radial)[:, 2]
    core_xyz = _domain_atoms(rng, (0.0, 0.0, 0.0), (FERRITIN_CORE_RADIUS_A,) * 3, FERRITIN_CORE_ATOMS)
    core = _model(core_xyz, np.full(len(core_xyz), "FE"), np.full(len(core_xyz), "Y"), residue="FE")
    return {
        "conformation_1": _concat(subunits),
        "conformation_2": _concat([*subunits, core]),
        "decoy": _concat([s for s, z in zip(subunits, centres_z, strict=True) if z <= FERRITIN_DECOY_CAP_A]),
    }


def build_rod(seed: int = 2024) -> dict[str, AtomModel]:
    """Straight helical rod along z, the rod kinked at its middle, and a shortened decoy (see the module doc)."""
    rng = np.random.default_rng(seed)
    parts = []
    for k in range(ROD_SUBUNITS):
        phi = np.deg2rad(ROD_TWIST_DEG * k)
        z = ROD_RISE_A * (k - 0.5 * (ROD_SUBUNITS - 1))
        local = _domain_atoms(rng, (0.0, 0.0, 0.0), ROD_SUBUNIT_AXES_A, ROD_SUBUNIT_ATOMS)
        radial, tangential = np.array([np.cos(phi), np.sin(phi), 0.0]), np.array([-np.sin(phi), np.cos(phi), 0.0])
        basis = np.column_stack([radial, tangential, [0.0, 0.0, 1.0]])
        xyz = local @ basis.T + np.array([ROD_SUBUNIT_RADIUS_A * np.cos(phi), ROD_SUBUNIT_RADIUS_A * np.sin(phi), z])
        element = rng.choice(ELEMENTS, size=len(xyz), p=ELEMENT_FRACTIONS)
        parts.append(_model(xyz, element, np.full(len(xyz), chr(ord("A") + k))))
    straight = _concat(parts)
    upper = straight.xyz[:, 2] > 0
    kinked = _concat(parts)
    kinked.xyz[upper] = Rotation.from_euler("x", ROD_KINK_DEG, degrees=True).apply(straight.xyz[upper])
    return {"conformation_1": straight, "conformation_2": kinked, "decoy": _concat(parts[:ROD_DECOY_SUBUNITS])}


def build_molecule(name: str, seed: int = 2024) -> dict[str, AtomModel]:
    """{"conformation_1", "conformation_2", "decoy"} -> AtomModel of molecule ``name`` (one of MOLECULES);
    "complex" is the demo's :func:`cryopipe.simulate.complex.build_models` itself."""
    builders = {"complex": build_models, "ferritin": build_ferritin, "rod": build_rod}
    return builders[name](seed)
