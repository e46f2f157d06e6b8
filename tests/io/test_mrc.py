import mrcfile
import numpy as np
import pytest

from cryopipe.errors import InputError
from cryopipe.io.mrc import read_mrc, read_mrc_header, write_mrc


def test_round_trip_keeps_data_and_pixel_size(tmp_path, rng):
    data = rng.standard_normal((3, 16, 16)).astype(np.float32)
    write_mrc(tmp_path / "s.mrcs", data, 1.7)
    back, angpix = read_mrc(tmp_path / "s.mrcs")
    np.testing.assert_array_equal(back, data)
    assert angpix == pytest.approx(1.7)
    header = read_mrc_header(tmp_path / "s.mrcs")
    assert header.shape == (3, 16, 16) and header.is_stack and header.mode == 2


def test_float16_is_read_as_float32_and_override_pixel_size(tmp_path, rng):
    data = rng.standard_normal((8, 8)).astype(np.float16)
    with mrcfile.new(tmp_path / "h.mrc") as m:
        m.set_data(data)
        m.voxel_size = 2.0
    back, angpix = read_mrc(tmp_path / "h.mrc", angpix=3.0)
    assert back.dtype == np.float32 and angpix == 3.0
    np.testing.assert_array_equal(back, data.astype(np.float32))


def test_selected_indices(tmp_path, rng):
    data = rng.standard_normal((5, 4, 4)).astype(np.float32)
    write_mrc(tmp_path / "s.mrcs", data, 1.0)
    back, _ = read_mrc(tmp_path / "s.mrcs", indices=[4, 0])
    np.testing.assert_array_equal(back, data[[4, 0]])
    with pytest.raises(InputError, match=r"index 6 out of range 1..5"):
        read_mrc(tmp_path / "s.mrcs", indices=[5])


def test_truncated_file_is_an_input_error(tmp_path, rng):
    write_mrc(tmp_path / "t.mrc", rng.standard_normal((32, 32)).astype(np.float32), 1.0)
    raw = (tmp_path / "t.mrc").read_bytes()
    (tmp_path / "t.mrc").write_bytes(raw[: len(raw) - 100])
    with pytest.raises(InputError) as err:
        read_mrc(tmp_path / "t.mrc")
    assert "t.mrc" in str(err.value) and "[header]" in str(err.value)


def test_nan_non_square_and_missing(tmp_path):
    bad = np.zeros((8, 8), np.float32)
    bad[2, 3] = np.nan
    write_mrc(tmp_path / "n.mrc", bad, 1.0)
    with pytest.raises(InputError, match=r"n.mrc \[data\]: data contain NaN"):
        read_mrc(tmp_path / "n.mrc")
    write_mrc(tmp_path / "r.mrc", np.zeros((8, 6), np.float32), 1.0)
    with pytest.raises(InputError, match="must be square"):
        read_mrc(tmp_path / "r.mrc", require_square=True)
    with pytest.raises(InputError, match="file not found"):
        read_mrc(tmp_path / "missing.mrc")


def test_unsupported_mode(tmp_path):
    with mrcfile.new(tmp_path / "c.mrc") as m:
        m.set_data(np.zeros((4, 4), np.complex64))
    with pytest.raises(InputError, match=r"\[mode\]: unsupported MRC mode 4"):
        read_mrc(tmp_path / "c.mrc")


def test_failed_write_leaves_old_file(tmp_path, rng, monkeypatch):
    good = rng.standard_normal((4, 4)).astype(np.float32)
    write_mrc(tmp_path / "m.mrc", good, 1.0)

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(mrcfile.mrcfile.MrcFile, "update_header_stats", boom)
    with pytest.raises(RuntimeError):
        write_mrc(tmp_path / "m.mrc", np.zeros((4, 4)), 1.0)
    np.testing.assert_array_equal(read_mrc(tmp_path / "m.mrc")[0], good)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.mrc"]


@pytest.mark.parametrize("stamp, flags, expected", [(1146047817, 0, "unsigned"), (1146047817, 1, "signed"),
                                                    (0, 0, "signed")])
def test_mode_0_bytes_are_signed_unless_imod_says_unsigned(tmp_path, stamp, flags, expected):
    """MRC2014 (and RELION) read mode 0 as signed bytes; IMOD stamps its files and, without the signed-bytes flag,
    stores unsigned ones (an 8-bit export of levels 0..255): those read as 0..255, not wrapped to -128..-1."""
    levels = np.arange(256, dtype=np.uint8).reshape(16, 16)
    path = tmp_path / "bytes.mrc"
    with mrcfile.new(path) as mrc:
        mrc.set_data(levels.view(np.int8))
        mrc.voxel_size = 2.0
        extra = bytearray(mrc.header.extra2.tobytes())
        extra[40:48] = np.array([stamp, flags], "<i4").tobytes()
        mrc.header.extra2 = np.frombuffer(bytes(extra), dtype=mrc.header.extra2.dtype)
    data, _ = read_mrc(path)
    want = levels.astype(np.float32) if expected == "unsigned" else levels.view(np.int8).astype(np.float32)
    np.testing.assert_array_equal(data, want)
