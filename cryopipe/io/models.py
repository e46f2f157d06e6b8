"""Atomic models (PDB/mmCIF) via gemmi."""

from __future__ import annotations

import os
from dataclasses import dataclass

import gemmi
import numpy as np

from cryopipe.errors import InputError
from cryopipe.io.atomic import atomic_path


@dataclass
class AtomModel:
    """Atoms as arrays: ``xyz`` (n, 3) in Angstrom, ``element`` (n,) symbols, ``bfactor`` (n,) A^2,
    ``chain`` (n,) chain names, ``residue`` (n,) residue names, ``resseq`` (n,) residue numbers,
    ``atom_name`` (n,)."""

    xyz: np.ndarray
    element: np.ndarray
    bfactor: np.ndarray
    chain: np.ndarray
    residue: np.ndarray
    resseq: np.ndarray
    atom_name: np.ndarray

    def __len__(self) -> int:
        return len(self.xyz)


def read_model(path: str | os.PathLike) -> AtomModel:
    """Read the first model of a PDB or mmCIF file; an empty or unreadable file is an InputError."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise InputError("file not found", path)
    try:
        structure = gemmi.read_structure(path)
    except Exception as exc:
        raise InputError(f"not a readable PDB/mmCIF file ({exc})", path) from None
    rows = []
    if len(structure) > 0:
        for chain in structure[0]:
            for res in chain:
                for atom in res:
                    p = atom.pos
                    rows.append(
                        (p.x, p.y, p.z, atom.element.name, atom.b_iso, chain.name, res.name, res.seqid.num, atom.name)
                    )
    if not rows:
        raise InputError("model contains no atoms", path, "ATOM")
    x, y, z, el, b, ch, rn, rs, an = zip(*rows, strict=True)
    return AtomModel(
        np.column_stack([x, y, z]).astype(np.float64),
        np.array(el),
        np.array(b, dtype=np.float64),
        np.array(ch),
        np.array(rn),
        np.array(rs, dtype=np.int64),
        np.array(an),
    )


def write_model(path: str | os.PathLike, model: AtomModel) -> None:
    """Write ``model`` as PDB (``.pdb``) or mmCIF (``.cif``) atomically.

    Consecutive atoms with the same chain and residue number form one residue.
    """
    st = gemmi.Structure()
    st.name = "cryopipe"
    gm = gemmi.Model(1)
    for cname in dict.fromkeys(map(str, model.chain)):
        chain = gemmi.Chain(cname)
        in_chain = np.flatnonzero(model.chain == cname)
        residue, key = None, None
        for k in in_chain:
            if (model.resseq[k], model.residue[k]) != key:
                if residue is not None:
                    chain.add_residue(residue)
                key = (model.resseq[k], model.residue[k])
                residue = gemmi.Residue()
                residue.name = str(model.residue[k])
                residue.seqid = gemmi.SeqId(int(model.resseq[k]), " ")
            atom = gemmi.Atom()
            atom.name = str(model.atom_name[k])
            atom.element = gemmi.Element(str(model.element[k]))
            atom.pos = gemmi.Position(*map(float, model.xyz[k]))
            atom.b_iso = float(model.bfactor[k])
            atom.occ = 1.0
            residue.add_atom(atom)
        chain.add_residue(residue)
        gm.add_chain(chain)
    st.add_model(gm)
    st.setup_entities()
    with atomic_path(path) as tmp:
        if os.fspath(path).endswith((".cif", ".mmcif")):
            st.make_mmcif_document().write_file(str(tmp))
        else:
            st.write_pdb(str(tmp))
