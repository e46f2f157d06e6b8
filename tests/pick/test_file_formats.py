"""Picking reads micrographs as real microscopes and denoisers export them: an 8-bit denoised export stored as
signed bytes (MRC mode 0), as unsigned 16-bit integers (mode 6) or as half floats (mode 12) gives the picks that the
same levels give in float32 (mode 2). The levels differ by an offset in mode 0, which the picker's normalisation
removes."""

import mrcfile
import numpy as np
import pytest

from cryopipe.cli import main as cli_main
from cryopipe.io.mrc import read_mrc
from cryopipe.io.star import read_table
from cryopipe.simulate.micrographs import HARD_CONDITIONS, SimulateParams, simulate_dataset

FORMATS = {"float32": (np.float32, 0, 2), "int8": (np.int8, -128, 0), "uint16": (np.uint16, 0, 6),
           "float16": (np.float16, 0, 12)}  # name: (dtype, offset added to the levels 0..255, MRC mode)


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """One denoised micrograph (20% covered, 256 integer levels) written in each format, and the true map."""
    folder = tmp_path_factory.mktemp("formats")
    params = SimulateParams(**{**HARD_CONDITIONS["denoised"], "micrographs": 1, "size_px": 512})
    simulate_dataset(params, folder)
    levels, angpix = read_mrc(folder / "micrographs" / "mic_001.mrc")
    assert levels.min() >= 0 and levels.max() <= 255 and np.array_equal(levels, np.round(levels))
    for name, (dtype, offset, mode) in FORMATS.items():
        path = folder / "mics" / f"{name}.mrc"
        path.parent.mkdir(exist_ok=True)
        with mrcfile.new(path) as mrc:
            mrc.set_data((levels + offset).astype(dtype))
            mrc.voxel_size = angpix
        with mrcfile.open(path) as mrc:
            assert int(mrc.header.mode) == mode
    return folder


def test_every_format_gives_the_float32_picks(exports, tmp_path):
    out = tmp_path / "pick"
    rc = cli_main(["pick", "--micrographs", str(exports / "mics" / "*.mrc"), "--reference",
                   str(exports / "maps" / "conformation_1.mrc"), "--diameter", "120", "--out", str(out),
                   "--device", "cpu"])
    assert rc == 0
    coords = {name: read_table(out / "coords" / f"{name}.star") for name in FORMATS}
    reference = coords["float32"][["rlnCoordinateX", "rlnCoordinateY"]].to_numpy()
    assert len(reference) >= 20
    for name, table in coords.items():
        xy = table[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy()
        assert xy.shape == reference.shape, name
        np.testing.assert_allclose(xy, reference, atol=0.01, err_msg=name)
