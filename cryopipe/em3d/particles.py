"""Particles for 3D expectation-maximisation: the shared particle source (:mod:`cryopipe.particles`) with the images
kept as half spectra.

Images are kept on the host as unshifted half spectra ``rfft2(ifftshift(img))`` (origin N//2 at index 0),
complex64 (n, N, N//2+1) in :attr:`ParticleSet.spectra`; E-step batches move the Fourier pixels they need to the
device.
"""

from __future__ import annotations

import os

import numpy as np

from cryopipe.backend import get_backend
from cryopipe.cache import StackCache
from cryopipe.errors import require
from cryopipe.io.mrc import read_mrc_header
from cryopipe.particles import ParticleSet, open_particles

__all__ = ["ParticleSet", "check_reference", "load_particles"]


def load_particles(path: str | os.PathLike, use_ctf: bool = True, share: tuple[int, int] | None = None,
                   cache: StackCache | None = None) -> ParticleSet:
    """Read a RELION particle STAR file and its image stacks (:func:`cryopipe.particles.open_particles`: the
    checks and their InputErrors), with the CTF parameters when ``use_ctf``.

    ``share`` = (rank, size): read and transform only this MPI rank's particles (``split_range``); the spectra of
    the others stay zero (the table, CTFs and groups are complete on every rank). ``cache``: read the stacks this
    rank needs from their node-local copies where there are some, and stage the others (:mod:`cryopipe.cache`).
    Returns the :class:`ParticleSet` with ``spectra`` (n, N, N//2+1) complex64.
    """
    particles = open_particles(path, ctf=use_ctf, share=share)
    n, box = len(particles), particles.box
    spectra = np.zeros((n, box, box // 2 + 1), dtype=np.complex64)
    fft = get_backend("cpu").fft  # single-precision FFTs on all the cores: 3 ms an image at 360 px with NumPy
    rows = particles.rows
    for k, data in particles.iter_stacks(cache):
        spectra[rows[k]] = fft.rfft2(np.fft.ifftshift(data, axes=(-2, -1)))
    particles.spectra = spectra
    return particles


def check_reference(path: str | os.PathLike, particles: ParticleSet) -> None:
    """Raise InputError unless the map at ``path`` is a cube of the particles' box and pixel size (1% tolerance)."""
    header = read_mrc_header(path)
    n = particles.box
    require(header.shape == (n, n, n), f"reference box {header.shape} does not match the particles' box {n}",
            path, "box")
    require(header.angpix is not None and abs(header.angpix - particles.angpix) <= 0.01 * particles.angpix,
            f"reference pixel size {header.angpix} A differs from the particles' {particles.angpix} A", path,
            "angpix")
