"""MPI: 2 ranks splitting micrographs or template-rotations give exactly the picks of one rank."""

import json
import subprocess
import sys

import numpy as np
import pytest

from cryopipe.cli import main as cli_main
from cryopipe.io.mrc import write_mrc
from cryopipe.io.star import read_table


@pytest.mark.mpi
@pytest.mark.parametrize("mode", ["micrographs", "templates"])
def test_two_ranks_equal_one_rank(tmp_path, synth, rng, mode, mpiexec):
    templates = np.stack([synth.blob_template(), synth.blob_template(variant=1)])
    write_mrc(tmp_path / "templates.mrcs", templates, synth.ANGPIX)
    for i in range(3):
        write_mrc(tmp_path / f"m{i}.mrc", synth.micrograph(rng, n=6, shape=(256, 256), templates=list(templates))[0],
                  synth.ANGPIX)
    args = ["pick", "--micrographs", str(tmp_path / "m*.mrc"), "--templates", str(tmp_path / "templates.mrcs"),
            "--diameter", "80", "--lowpass", "8", "--angular-step", "10", "--device", "cpu"]
    assert cli_main([*args, "--out", str(tmp_path / "one")]) == 0
    subprocess.run([str(mpiexec), "-n", "2", sys.executable, "-m", "cryopipe.cli", *args, "--mpi-mode", mode,
                    "--out", str(tmp_path / "two")], check=True, timeout=240)
    record = json.loads((tmp_path / "two" / "provenance.json").read_text())
    assert record["mpi_size"] == 2 and record["notes"]["mpi_mode"] == mode
    one, two = read_table(tmp_path / "one" / "picks.star"), read_table(tmp_path / "two" / "picks.star")
    assert len(one) == len(two) == 18
    assert (one["rlnMicrographName"] == two["rlnMicrographName"]).all()
    assert (one[["rlnClassNumber", "rlnAnglePsi"]] == two[["rlnClassNumber", "rlnAnglePsi"]]).all().all()
    np.testing.assert_allclose(two.select_dtypes("number"), one.select_dtypes("number"), rtol=0, atol=1e-5)
