"""``cryopipe postprocess`` refuses half-maps it cannot measure: the same map twice (by content, not path), maps
without signal, and half-maps that do not correlate at all; each is one line naming the file, exit status 2,
and the outputs of an earlier run stay as they were."""

import numpy as np
import pytest

from cryopipe import cli
from cryopipe.io.mrc import write_mrc

BOX, ANGPIX = 32, 4.0


@pytest.fixture
def half1(tmp_path):
    """A smooth blob plus noise, 32^3 at 4 A/px."""
    rng = np.random.default_rng(1)
    z, y, x = np.mgrid[:BOX, :BOX, :BOX] - BOX // 2
    blob = np.exp(-(x**2 + y**2 + (z / 1.5) ** 2) / (2 * 4.0**2)) + 0.5 * np.exp(-((x - 5) ** 2 + y**2 + z**2) / 8)
    write_mrc(tmp_path / "half1.mrc", blob + 0.05 * rng.standard_normal(blob.shape), ANGPIX)
    return tmp_path / "half1.mrc"


def _run(h1, h2, out, capsys):
    """cryopipe postprocess -> (exit status, the lines it printed on stderr that are not log lines)."""
    status = cli.main(["postprocess", "--half1", str(h1), "--half2", str(h2), "--out", str(out)])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("cryopipe postprocess")]
    return status, err


def _earlier_output(out):
    out.mkdir()
    (out / "map_sharpened.mrc").write_bytes(b"an earlier result")


def test_identical_half_maps_are_refused(half1, tmp_path, capsys):
    out = tmp_path / "pp"
    _earlier_output(out)
    copy = tmp_path / "copy_of_half1.mrc"
    copy.write_bytes(half1.read_bytes())
    for h2 in (half1, copy):  # the same path, and the same content under another name
        status, err = _run(half1, h2, out, capsys)
        assert status == 2 and len(err) == 1, err
        assert f"{h2} [data]: half-maps are identical (the same data as {half1})" in err[0]
    assert (out / "map_sharpened.mrc").read_bytes() == b"an earlier result"
    assert not (out / "postprocess.star").exists()


@pytest.mark.parametrize("value", [0.0, 3.5])
def test_half_maps_without_signal_are_refused(half1, tmp_path, capsys, value):
    flat = tmp_path / "flat.mrc"
    write_mrc(flat, np.full((BOX, BOX, BOX), value, np.float32), ANGPIX)
    out = tmp_path / "pp"
    _earlier_output(out)
    for h1, h2 in ((flat, half1), (half1, flat)):
        status, err = _run(h1, h2, out, capsys)
        assert status == 2 and len(err) == 1, err
        assert f"{flat} [data]: map holds no signal: every voxel is {value:g}" in err[0]
    flat2 = tmp_path / "flat2.mrc"
    write_mrc(flat2, np.full((BOX, BOX, BOX), value, np.float32), ANGPIX)
    status, err = _run(flat, flat2, out, capsys)  # both empty: never "inf" A
    assert status == 2 and "map holds no signal" in err[0]
    assert (out / "map_sharpened.mrc").read_bytes() == b"an earlier result"


def test_uncorrelated_half_maps_are_refused(half1, tmp_path, capsys):
    """Half-maps whose FSC is below 0.143 from the first shell on have no resolution (it used to be 'inf')."""
    from cryopipe.io.mrc import read_mrc

    negative = tmp_path / "negative.mrc"
    write_mrc(negative, -read_mrc(half1)[0] + 1.0, ANGPIX)
    status, err = _run(half1, negative, tmp_path / "pp", capsys)
    assert status == 2 and len(err) == 1, err
    assert f"{negative} [data]: the half-maps do not correlate even at the lowest frequency" in err[0]
