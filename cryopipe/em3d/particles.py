"""Particles for 3D expectation-maximisation: STAR table, image spectra, CTF parameters, optics groups.

Images are kept on the host as unshifted half spectra ``rfft2(ifftshift(img))`` (origin N//2 at index 0),
complex64 (n, N, N//2+1); E-step batches move the Fourier pixels they need to the device.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import numpy as np
import pandas as pd

from cryopipe.backend import get_backend
from cryopipe.cache import StackCache
from cryopipe.ctf import CTFParams
from cryopipe.errors import InputError, require
from cryopipe.io.mrc import check_pixel_size, read_mrc, read_mrc_header
from cryopipe.io.star import parse_image_name, read_particles
from cryopipe.parallel import split_range

log = logging.getLogger(__name__)

CTF_COLUMNS = ("rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnVoltage", "rlnSphericalAberration",
               "rlnAmplitudeContrast")


@dataclass
class ParticleSet:
    """Particles as the E-step uses them.

    table : the flat STAR table (optics merged), one row per particle.
    spectra : (n, N, N//2+1) complex64 host half spectra of the images.
    ctf : CTF parameters, float64 arrays (n,), or None when CTF correction is off.
    group : (n,) int optics-group index 0..G-1 (sigma2 is estimated per group).
    angpix : Angstrom per pixel; box : N.
    """

    table: pd.DataFrame
    spectra: np.ndarray
    ctf: CTFParams | None
    group: np.ndarray
    angpix: float
    box: int
    path: str

    def __len__(self) -> int:
        return len(self.table)

    @property
    def n_groups(self) -> int:
        return int(self.group.max()) + 1 if len(self.group) else 1

    def origins_px(self) -> np.ndarray:
        """(n, 2) rlnOriginX/YAngst in pixels (0 where absent)."""
        cols = ("rlnOriginXAngst", "rlnOriginYAngst")
        return np.column_stack([self.table[c].to_numpy(np.float64) if c in self.table else np.zeros(len(self))
                                for c in cols]) / self.angpix

    def ctf_subset(self, index) -> CTFParams | None:
        if self.ctf is None:
            return None
        return CTFParams(**{k: np.asarray(v)[index] if np.ndim(v) else v for k, v in vars(self.ctf).items()})


def load_particles(path: str | os.PathLike, use_ctf: bool = True, share: tuple[int, int] | None = None,
                   cache: StackCache | None = None) -> ParticleSet:
    """Read a RELION particle STAR file and its image stacks.

    ``share`` = (rank, size): read and transform only this MPI rank's particles (``split_range``); the spectra of
    the others stay zero (the table, CTFs and groups are complete on every rank). ``cache``: read the stacks this
    rank needs from their node-local copies where there are some, and stage the others (:mod:`cryopipe.cache`).

    Raises InputError for missing columns (rlnImageName; the CTF columns when ``use_ctf``), a missing pixel
    size, a pixel size that differs by more than 1% from a stack's MRC header (a header holding 0 or 1.0 is
    taken as unset: the STAR file's value is used, and that is logged), non-square images, stacks whose box
    disagrees with rlnImageSize or with each other, or NaNs.
    """
    path = os.fspath(path)
    table = read_particles(path, required=("rlnImageName",)).reset_index(drop=True)
    require(len(table) > 0, "no particles", path, "data_particles")
    if "rlnImagePixelSize" not in table.columns:
        raise InputError("pixel size missing (rlnImagePixelSize in data_optics)", path, "rlnImagePixelSize")
    angpix = table["rlnImagePixelSize"].to_numpy(np.float64)
    require(np.all(angpix == angpix[0]) and angpix[0] > 0, "all particles need the same positive pixel size",
            path, "rlnImagePixelSize")
    ctf = None
    if use_ctf:
        for col in CTF_COLUMNS:
            if col not in table.columns:
                raise InputError(f"CTF column {col} missing (CTF correction is on)", path, col)
        ctf = CTFParams.from_star(table, path)
    indices, stacks = parse_image_name(table["rlnImageName"], path)
    wanted = np.ones(len(table), dtype=bool)
    if share is not None:
        wanted[:] = False
        wanted[split_range(len(table), *share)] = True
    _, ny, box = read_mrc_header(stacks[0]).shape
    require(ny == box, f"images must be square, got {ny}x{box}", stacks[0], "nx/ny")
    unset = 0
    for stack in dict.fromkeys(stacks):  # every rank checks every header, so that all raise the same error
        header = read_mrc_header(stack)
        require(header.shape[1:] == (box, box), f"images are {header.shape[1]}x{header.shape[2]}, those of "
                f"{stacks[0]} {box}x{box}", stack, "nx/ny")
        unset += not check_pixel_size(float(angpix[0]), header.angpix, path, stack)
    if unset:
        log.warning("%d of %d stacks hold no pixel size in their MRC header (0 or 1.0): using the STAR file's "
                    "%g A/px (%s)", unset, len(set(stacks)), angpix[0], path)
    images = np.zeros((len(table), box, box // 2 + 1), dtype=np.complex64)
    cache = cache or StackCache.disabled()
    cache.adopt(dict.fromkeys(np.asarray(stacks, dtype=object)[wanted]))
    fft = get_backend("cpu").fft  # single-precision FFTs on all the cores: 3 ms an image at 360 px with NumPy
    for stack in dict.fromkeys(stacks):
        rows = np.flatnonzero(np.asarray(stacks) == stack)
        rows = rows[wanted[rows]]
        if not len(rows):
            continue
        data, _ = cache.read(stack, read_mrc, indices=indices[rows], require_square=True)
        require(data.shape[-1] == box, f"image box {data.shape[-1]} differs from {box}", stack, "box")
        images[rows] = fft.rfft2(np.fft.ifftshift(data, axes=(-2, -1)))
    if "rlnImageSize" in table.columns:
        require(bool(np.all(table["rlnImageSize"].to_numpy() == box)), f"rlnImageSize differs from stack box {box}",
                path, "rlnImageSize")
    group_ids = table["rlnOpticsGroup"].to_numpy() if "rlnOpticsGroup" in table.columns else np.ones(len(table))
    _, group = np.unique(group_ids, return_inverse=True)
    return ParticleSet(table, images, ctf, group.astype(np.int64), float(angpix[0]), int(box), path)


def check_reference(path: str | os.PathLike, particles: ParticleSet) -> None:
    """Raise InputError unless the map at ``path`` is a cube of the particles' box and pixel size (1% tolerance)."""
    header = read_mrc_header(path)
    n = particles.box
    require(header.shape == (n, n, n), f"reference box {header.shape} does not match the particles' box {n}",
            path, "box")
    require(header.angpix is not None and abs(header.angpix - particles.angpix) <= 0.01 * particles.angpix,
            f"reference pixel size {header.angpix} A differs from the particles' {particles.angpix} A", path,
            "angpix")
