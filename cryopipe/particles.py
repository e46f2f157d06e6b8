"""The particle source every particle stage shares (class2d, class3d, refine3d, bioem): a RELION particle STAR file
and the MRC stacks it names, read through the node-local stack cache (:mod:`cryopipe.cache`).

::

    particles = open_particles("extract/particles.star", ctf=True, share=(rank, size))  # table, checks, metadata
    with ctx.cache() as cache:
        images = particles.read_images(cache)    # (n_share, N, N) float32 host array: this rank's particles
    batch = bk.asarray(images[:256])             # the stage moves them to its device and preprocesses them

:func:`open_particles` reads the STAR file (optics groups merged into the particle rows) and checks it once: it
holds particles, one positive pixel size, image names ``index@stack``, and every stack's MRC header (square images,
one box for all stacks, agreeing with rlnImageSize, and a pixel size within 1% of the STAR file's, see
:func:`cryopipe.io.mrc.check_pixel_size`); with ``ctf=True`` the CTF columns too. Each problem is an
:class:`~cryopipe.errors.InputError` naming the file and the field. It reads no pixels: the images are read, for
this MPI rank's share only, by :meth:`ParticleSet.read_images` or stack by stack by :meth:`ParticleSet.iter_stacks`,
which first adopt the node-local copies of the share's stacks. Every rank checks every header, so that all raise
the same error. Stage-specific preprocessing (class2d's downscaling, phase flipping and normalisation, em3d's half
spectra, bioem's float64 images) stays in the stages.

Units: lengths in Angstrom (``angpix``: Angstrom per pixel), angles in degrees, images img[y, x] as the MRC file
stores them; arrays are NumPy arrays on the host.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd

from cryopipe.cache import StackCache
from cryopipe.ctf import CTFParams
from cryopipe.errors import require
from cryopipe.io.mrc import check_pixel_size, read_mrc, read_mrc_header
from cryopipe.io.star import parse_image_name, read_particles
from cryopipe.parallel import split_range

log = logging.getLogger(__name__)

PIXEL_SIZE_SPREAD_A = 1e-4  # particles whose pixel sizes differ by less than this share one pixel size
POSE_COLUMNS = ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")
ORIGIN_COLUMNS = ("rlnOriginXAngst", "rlnOriginYAngst")


def ctf_rows(ctf: CTFParams, rows) -> CTFParams:
    """The CTF parameters of a subset ``rows`` (indices or a slice) of the particles: array fields (n,) are
    indexed, scalar fields kept."""
    return dataclasses.replace(ctf, **{f.name: np.asarray(getattr(ctf, f.name))[rows] for f in dataclasses.fields(ctf)
                                       if np.ndim(getattr(ctf, f.name))})


@dataclass
class ParticleSet:
    """Particles of one STAR file: the table and per-particle metadata for all n particles, and the pixels a stage
    read or derived from them (for this rank's share).

    table : the flat STAR table (optics merged), one row per particle, index 0..n-1.
    spectra : em3d's (n, N, N//2+1) complex64 half spectra ``rfft2(ifftshift(img))`` (rows outside this rank's
        share are zero), or None (:func:`cryopipe.em3d.particles.load_particles` fills it).
    ctf : CTF parameters (RELION units, float64 arrays of shape (n,)), or None when not asked for.
    group : (n,) int64 optics-group index 0..G-1 (in the order of the rlnOpticsGroup values).
    angpix : Angstrom per pixel of the images; box : N, the images' side in pixels.
    path : the STAR file.
    images : real-space images a stage keeps on the host, e.g. bioem's (n, N, N) float64 img[y, x], or None.
    image_index : (n,) int64 0-based index of each particle's image in its stack.
    stacks : (n,) path of each particle's stack (relative names resolved against the STAR file's folder when they
        do not exist from the working directory).
    share : (rank, size) of the MPI share whose images are read (None: all particles).
    """

    table: pd.DataFrame
    spectra: np.ndarray | None = None
    ctf: CTFParams | None = None
    group: np.ndarray | None = None
    angpix: float = 0.0
    box: int = 0
    path: str = ""
    images: np.ndarray | None = None
    image_index: np.ndarray | None = None
    stacks: list[str] | None = None
    share: tuple[int, int] | None = None

    def __len__(self) -> int:
        return len(self.table)

    @property
    def n_groups(self) -> int:
        return int(self.group.max()) + 1 if len(self.group) else 1

    @property
    def rows(self) -> np.ndarray:
        """(n_share,) int64 global indices of this rank's particles (contiguous, ascending; all without a share)."""
        rows = np.arange(len(self), dtype=np.int64)
        return rows if self.share is None else rows[split_range(len(self), *self.share)]

    def origins_px(self) -> np.ndarray:
        """(n, 2) rlnOriginX/YAngst in pixels (0 where absent)."""
        return np.column_stack([self.table[c].to_numpy(np.float64) if c in self.table else np.zeros(len(self))
                                for c in ORIGIN_COLUMNS]) / self.angpix

    def angles(self) -> np.ndarray | None:
        """(n, 3) float64 RELION Euler angles rlnAngleRot, rlnAngleTilt, rlnAnglePsi in degrees, or None when the
        table holds no poses."""
        if not set(POSE_COLUMNS) <= set(self.table.columns):
            return None
        return self.table[list(POSE_COLUMNS)].to_numpy(np.float64)

    def ctf_subset(self, index) -> CTFParams | None:
        """The CTF parameters of the particles ``index`` (None without CTF)."""
        return None if self.ctf is None else ctf_rows(self.ctf, index)

    def iter_stacks(self, cache: StackCache | None = None, rows=None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Read the images of the particles ``rows`` (global indices; default :attr:`rows`, this rank's share) stack
        by stack: yields ``(k, images)``, ``k`` the (m,) positions in ``rows`` of the m particles of one stack and
        ``images`` their (m, N, N) float32 img[y, x].

        ``cache``: the stacks are read from their node-local copies where the node holds some (adopted first, in
        the order the particles name them), and the others are staged meanwhile for the jobs that follow. An
        InputError (index out of range, NaN or Inf) names the user's stack, not its copy.
        """
        rows = self.rows if rows is None else np.asarray(rows, dtype=np.int64)
        codes, names = pd.factorize(np.asarray(self.stacks, dtype=object)[rows])  # stacks in order of appearance
        order = np.argsort(codes, kind="stable")
        bounds = np.searchsorted(codes[order], np.arange(len(names) + 1))
        cache = cache or StackCache.disabled()
        cache.adopt(names)
        for c, stack in enumerate(names):
            k = order[bounds[c]:bounds[c + 1]]  # ascending
            data, _ = cache.read(stack, read_mrc, indices=self.image_index[rows[k]], require_square=True)
            require(data.shape[1:] == (self.box, self.box), f"image box {data.shape[-1]} differs from the header's "
                    f"{self.box}", stack, "nx/ny")
            yield k, data

    def read_images(self, cache: StackCache | None = None, rows=None, dtype=np.float32) -> np.ndarray:
        """(len(rows), N, N) host array of ``dtype``: the images of the particles ``rows`` (default: this rank's
        share) in that order, img[y, x]; read as :meth:`iter_stacks` does."""
        rows = self.rows if rows is None else np.asarray(rows, dtype=np.int64)
        images = np.empty((len(rows), self.box, self.box), dtype=dtype)
        for k, data in self.iter_stacks(cache, rows):
            images[k] = data
        return images


def open_particles(path: str | os.PathLike, ctf: bool = False, share: tuple[int, int] | None = None) -> ParticleSet:
    """Read a RELION particle STAR file and check it and its stacks' MRC headers; no pixels are read.

    ``ctf``: also read the CTF parameters (rlnDefocusU/V/Angle, rlnVoltage, rlnSphericalAberration,
    rlnAmplitudeContrast; :meth:`CTFParams.from_star`). ``share`` = (rank, size): the MPI share whose images
    :meth:`ParticleSet.read_images` reads (the table, CTFs and groups are complete on every rank).

    InputErrors, each naming the file and field: no particles (``data_particles``), a pixel size missing, not
    positive or differing between particles (rlnImagePixelSize), a bad image name (rlnImageName), a missing or
    unreadable stack, non-square images (nx/ny), stacks of different boxes (nx) or disagreeing with rlnImageSize,
    a pixel size more than 1% from a stack's MRC header (a header holding 0 or 1.0 is taken as unset: the STAR
    file's value is used, and that is logged once), missing or bad CTF columns.
    """
    path = os.fspath(path)
    table = read_particles(path, required=("rlnImageName",)).reset_index(drop=True)
    require(len(table) > 0, "holds no particles", path, "data_particles")  # before the columns an empty batch lacks
    require("rlnImagePixelSize" in table.columns, "pixel size missing: need rlnImagePixelSize (in data_optics)", path,
            "rlnImagePixelSize")
    sizes = np.unique(table["rlnImagePixelSize"].to_numpy(np.float64))
    require(bool(np.all(np.isfinite(sizes))) and sizes[0] > 0, f"pixel sizes must be positive, got {sizes[0]:g}",
            path, "rlnImagePixelSize")
    require(np.ptp(sizes) < PIXEL_SIZE_SPREAD_A, f"particles of different pixel sizes {sorted(sizes.tolist())}", path,
            "rlnImagePixelSize")
    angpix = float(sizes[0])
    ctf_params = CTFParams.from_star(table, path) if ctf else None
    if "rlnImageSize" in table.columns:
        boxes = sorted(int(b) for b in table["rlnImageSize"].unique())
        require(len(boxes) == 1, f"particles of different box sizes {boxes} px", path, "rlnImageSize")
    index, stacks = parse_image_name(table["rlnImageName"], path)
    box, unset = None, 0
    for stack in dict.fromkeys(stacks):  # every rank checks every header, so that all raise the same error
        header = read_mrc_header(stack)
        _, ny, nx = header.shape
        require(ny == nx, f"images must be square, got {ny}x{nx}", stack, "nx/ny")
        require(box is None or nx == box, f"particles of different box sizes ({box} and {nx} px)", stack, "nx")
        box = nx
        unset += not check_pixel_size(angpix, header.angpix, path, stack)
    if unset:
        log.warning("%d of %d stacks hold no pixel size in their MRC header (0 or 1.0): using the STAR file's "
                    "%g A/px (%s)", unset, len(set(stacks)), angpix, path)
    if "rlnImageSize" in table.columns:
        size = int(table["rlnImageSize"].iloc[0])
        require(size == box, f"rlnImageSize {size} differs from the stacks' box {box}", path, "rlnImageSize")
    group_ids = table["rlnOpticsGroup"].to_numpy() if "rlnOpticsGroup" in table.columns else np.ones(len(table))
    _, group = np.unique(group_ids, return_inverse=True)
    return ParticleSet(table, None, ctf_params, group.astype(np.int64), angpix, int(box), path, None, index, stacks,
                       share)
