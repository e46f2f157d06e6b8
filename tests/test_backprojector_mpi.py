"""BackProjector.allreduce: two MPI ranks that each insert half of the slices hold, after the reduction, the sums
of one back-projector that inserted them all (moments included), so their reconstructions agree."""

import subprocess
import sys

import pytest

SCRIPT = """
import numpy as np
from mpi4py import MPI
from scipy.spatial.transform import Rotation
from cryopipe.backend import get_backend
from cryopipe.projection import BackProjector

comm = MPI.COMM_WORLD
assert comm.Get_size() == 2
bk, n = get_backend("cpu"), 24
rng = np.random.default_rng(3)
images = (rng.normal(size=(40, n, n // 2 + 1)) + 1j * rng.normal(size=(40, n, n // 2 + 1))).astype(np.complex64)
weights = rng.uniform(0.5, 1.0, size=(40, n, n // 2 + 1))
rot = Rotation.random(40, random_state=4).as_matrix()
r_max = (5, 8)  # the ranks' extents differ: the larger one decides what travels
alone = BackProjector(n, bk)
for part in (slice(0, 20), slice(20, 40)):
    alone.insert(images[part], rot[part], weights[part], r_max[part.start // 20])
mine = slice(0, 20) if comm.Get_rank() == 0 else slice(20, 40)
bp = BackProjector(n, bk)
bp.insert(images[mine], rot[mine], weights[mine], r_max[comm.Get_rank()])
bp.allreduce(comm)
for name in ("data", "weight", "moment"):
    a, b = getattr(alone, name), getattr(bp, name)
    np.testing.assert_allclose(b, a, rtol=2e-6, atol=2e-6 * np.abs(a).max(), err_msg=name)
assert np.abs(bp.moment).max() > 0
v1, v2 = alone.reconstruct(wiener_constant=1.0), bp.reconstruct(wiener_constant=1.0)
np.testing.assert_allclose(v2, v1, rtol=1e-4, atol=1e-4 * np.abs(v1).max())
ranks = comm.gather(comm.Get_rank())  # one line from rank 0: two ranks' prints can interleave
if comm.Get_rank() == 0:
    print("ok", *ranks)
"""


@pytest.mark.mpi
def test_two_ranks_sum_to_one_back_projector(tmp_path, mpiexec):
    script = tmp_path / "bp.py"
    script.write_text(SCRIPT)
    proc = subprocess.run([str(mpiexec), "-n", "2", sys.executable, str(script)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split("\n")[0] == "ok 0 1"
