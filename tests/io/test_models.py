import numpy as np
import pytest

from cryopipe.errors import InputError
from cryopipe.io.models import AtomModel, read_model, write_model


@pytest.mark.parametrize("suffix", [".pdb", ".cif"])
def test_round_trip(tmp_path, rng, suffix):
    n = 12
    model = AtomModel(
        xyz=rng.uniform(-50, 50, (n, 3)),
        element=np.array(["C", "N", "O", "S"] * 3),
        bfactor=np.full(n, 30.0),
        chain=np.array(["A"] * 6 + ["B"] * 6),
        residue=np.array(["ALA"] * n),
        resseq=np.arange(n) // 3 + 1,
        atom_name=np.array(["C", "N", "O", "SD"] * 3),
    )
    write_model(tmp_path / f"m{suffix}", model)
    back = read_model(tmp_path / f"m{suffix}")
    np.testing.assert_allclose(back.xyz, model.xyz, atol=1e-3)  # PDB keeps 3 decimals
    assert list(back.element) == list(model.element)
    assert list(back.chain) == list(model.chain)
    assert list(back.resseq) == list(model.resseq)


def test_empty_model_is_an_error(tmp_path):
    (tmp_path / "e.pdb").write_text("END\n")
    with pytest.raises(InputError, match=r"e.pdb \[ATOM\]: model contains no atoms"):
        read_model(tmp_path / "e.pdb")
