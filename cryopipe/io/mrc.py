"""MRC/MRCS images and maps via mrcfile.

Reads are memory-mapped and validated: a truncated file, an unsupported mode,
NaN/Inf values or non-square images raise :class:`InputError` naming the file.
Data come back as float32 (float16 files are converted); writes are float32 and atomic. Mode 0 is signed bytes
(MRC2014, as RELION and mrcfile read it), except in files IMOD stamped without its "bytes are signed" flag, whose
bytes are unsigned (IMOD's mrc_format.txt): those are read as unsigned, as IMOD reads them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import mrcfile
import numpy as np

from cryopipe.errors import InputError
from cryopipe.io.atomic import atomic_path

_SUPPORTED_MODES = {0: "int8", 1: "int16", 2: "float32", 6: "uint16", 12: "float16"}


@dataclass(frozen=True)
class MrcHeader:
    """What the stages need from an MRC header. ``shape`` is (nz, ny, nx); angpix in Angstrom."""

    shape: tuple[int, int, int]
    angpix: float | None
    mode: int
    is_stack: bool


def _open(path: str | os.PathLike):
    path = os.fspath(path)
    if not os.path.exists(path):
        raise InputError("file not found", path)
    try:
        return mrcfile.mmap(path, mode="r", permissive=False)
    except ValueError as exc:  # mrcfile raises ValueError for bad headers and truncated data
        raise InputError(f"not a valid MRC file ({exc})", path, "header") from None


IMOD_STAMP = 1146047817  # header bytes 152-155 (imodStamp) of files written by IMOD-aware software
IMOD_SIGNED_BYTES = 1  # bit of imodFlags (bytes 156-159): mode-0 bytes are signed


def unsigned_bytes(mrc) -> bool:
    """True for a mode-0 file that IMOD stamped without the signed-bytes flag: its bytes are unsigned."""
    if int(mrc.header.mode) != 0:
        return False
    raw = mrc.header.tobytes()[152:160]
    for order in ("little", "big"):  # the header's byte order
        if int.from_bytes(raw[:4], order) == IMOD_STAMP:
            return not int.from_bytes(raw[4:], order) & IMOD_SIGNED_BYTES
    return False


def _angpix(mrc) -> float | None:
    size = float(mrc.voxel_size.x)
    return size if size > 0 else None


UNSET_PIXEL_SIZES = (0.0, 1.0)  # what many MRC writers leave in a header whose pixel size was never set
PIXEL_SIZE_TOLERANCE = 0.01  # relative


def check_pixel_size(star_angpix: float, header_angpix: float | None, star, stack,
                     field: str = "rlnImagePixelSize") -> bool:
    """Compare a STAR file's pixel size with the one in an MRC header of the images it names.

    Returns True when they agree within 1%, False when the header holds none (0, or 1.0, which many MRC
    writers leave when the pixel size is unset: the STAR file's value is to be trusted, and the caller logs
    that, once); raises :class:`InputError` naming the STAR file ``star`` and its ``field`` when they differ.
    """
    header = 0.0 if header_angpix is None else float(header_angpix)
    if abs(header - star_angpix) <= PIXEL_SIZE_TOLERANCE * star_angpix:
        return True
    if header in UNSET_PIXEL_SIZES:
        return False
    raise InputError(f"{star_angpix:g} A/px differs from the {header:g} A/px in the MRC header of {os.fspath(stack)} "
                     f"by more than {PIXEL_SIZE_TOLERANCE:.0%} (fix the STAR file or the header)", star, field)


def read_mrc_header(path: str | os.PathLike) -> MrcHeader:
    """Header facts of an MRC/MRCS file without reading the data."""
    with _open(path) as mrc:
        h = mrc.header
        mode = int(h.mode)
        if mode not in _SUPPORTED_MODES:
            raise InputError(f"unsupported MRC mode {mode} (supported: {sorted(_SUPPORTED_MODES)})", path, "mode")
        shape = (int(h.nz), int(h.ny), int(h.nx))
        return MrcHeader(shape, _angpix(mrc), mode, bool(mrc.is_image_stack() or str(path).endswith(".mrcs")))


def read_mrc(
    path: str | os.PathLike,
    *,
    angpix: float | None = None,
    indices=None,
    require_square: bool = False,
    check_finite: bool = True,
) -> tuple[np.ndarray, float | None]:
    """Read an image, a stack or a map as float32.

    Parameters
    ----------
    path : MRC (2D image or 3D map) or MRCS (stack of 2D images).
    angpix : overrides the header pixel size (Angstrom/pixel) when given.
    indices : 0-based image indices to read from a stack (None: all).
    require_square : raise if the images (last two axes) are not square.
    check_finite : raise if any value is NaN or Inf.

    Returns
    -------
    data : (ny, nx) image, (n, ny, nx) stack or (nz, ny, nx) map, float32.
    angpix : Angstrom/pixel (override, else header, else None).
    """
    path = os.fspath(path)
    with _open(path) as mrc:
        mode = int(mrc.header.mode)
        if mode not in _SUPPORTED_MODES:
            raise InputError(f"unsupported MRC mode {mode} (supported: {sorted(_SUPPORTED_MODES)})", path, "mode")
        data = mrc.data
        if data is None:
            raise InputError("MRC file holds no data", path, "data")
        if unsigned_bytes(mrc):
            data = data.view(np.uint8)
        if indices is not None:
            idx = np.asarray(indices, dtype=np.int64)
            n = data.shape[0] if data.ndim == 3 else 1
            if idx.size and (idx.min() < 0 or idx.max() >= n):
                raise InputError(f"image index {int(idx.max()) + 1} out of range 1..{n}", path, "index")
            stack = data if data.ndim == 3 else data[None]
            out = np.asarray(stack[idx], dtype=np.float32)
        else:
            out = np.array(data, dtype=np.float32)
        header_angpix = _angpix(mrc)
    if require_square and out.shape[-1] != out.shape[-2]:
        raise InputError(f"images must be square, got {out.shape[-2]}x{out.shape[-1]}", path, "nx/ny")
    if check_finite and not np.isfinite(out).all():
        raise InputError("data contain NaN or Inf values", path, "data")
    if angpix is not None and angpix <= 0:
        raise InputError(f"pixel size must be positive, got {angpix}", path, "angpix")
    return out, (angpix if angpix is not None else header_angpix)


def write_mrc(path: str | os.PathLike, data: np.ndarray, angpix: float, *, stack: bool | None = None) -> None:
    """Write float32 ``data`` atomically with voxel size ``angpix`` (Angstrom).

    ``stack`` marks a 3D array as an image stack (default: True for ``.mrcs``).
    """
    data = np.ascontiguousarray(np.asarray(data), dtype=np.float32)
    if stack is None:
        stack = os.fspath(path).endswith(".mrcs")
    with atomic_path(path) as tmp:
        with mrcfile.new(tmp) as mrc:
            mrc.set_data(data)
            if stack and data.ndim == 3:
                mrc.set_image_stack()
            mrc.voxel_size = angpix
            mrc.update_header_stats()
