import subprocess
import sys

import numpy as np
import pytest

from cryopipe.parallel import SerialComm, allreduce_sum, split_range


def test_split_range_covers_everything_once():
    for n in [0, 1, 7, 100]:
        for size in [1, 2, 3, 8]:
            parts = [split_range(n, r, size) for r in range(size)]
            covered = np.concatenate([np.arange(n)[p] for p in parts])
            np.testing.assert_array_equal(covered, np.arange(n))
            lengths = [p.stop - p.start for p in parts]
            assert max(lengths) - min(lengths) <= 1


def test_serial_comm_allreduce_is_identity():
    a = np.arange(5.0)
    np.testing.assert_array_equal(allreduce_sum(SerialComm(), a.copy()), a)


@pytest.mark.mpi
def test_two_ranks_really_are_two(tmp_path, mpiexec):
    script = tmp_path / "probe.py"
    script.write_text(
        "import numpy as np\n"
        "from cryopipe.parallel import get_comm, allreduce_sum\n"
        "c = get_comm()\n"
        "s = allreduce_sum(c, np.array([c.Get_rank() + 1.0]))\n"
        f"open(r'{tmp_path}/rank%d' % c.Get_rank(), 'w').write('%d %.1f' % (c.Get_size(), s[0]))\n"
    )
    subprocess.run([str(mpiexec), "-n", "2", sys.executable, str(script)], timeout=120, check=True)
    assert [(tmp_path / f"rank{r}").read_text() for r in range(2)] == ["2 3.0", "2 3.0"]
