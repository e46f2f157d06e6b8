"""check_pixel_size: a STAR file's pixel size against an MRC header's (1% tolerance; 0 and 1.0 mean unset)."""

import pytest

from cryopipe.errors import InputError
from cryopipe.io.mrc import check_pixel_size


@pytest.mark.parametrize("star, header", [(2.5, 2.5), (2.5, 2.52), (2.5, 2.48), (1.0, 1.0), (1.005, 1.0)])
def test_agreeing_pixel_sizes(star, header):
    assert check_pixel_size(star, header, "p.star", "s.mrcs") is True


@pytest.mark.parametrize("header", [None, 0.0, 1.0])
def test_unset_header_trusts_the_star(header):
    assert check_pixel_size(2.5, header, "p.star", "s.mrcs") is False


@pytest.mark.parametrize("header", [2.0, 2.53, 1.1])
def test_disagreeing_pixel_sizes_name_the_star_file_and_field(header):
    with pytest.raises(InputError) as exc:
        check_pixel_size(2.5, header, "p.star", "s.mrcs", field="rlnMicrographPixelSize")
    assert (exc.value.path, exc.value.field) == ("p.star", "rlnMicrographPixelSize")
    assert str(exc.value) == (f"p.star [rlnMicrographPixelSize]: 2.5 A/px differs from the {header:g} A/px in the MRC "
                              "header of s.mrcs by more than 1% (fix the STAR file or the header)")
