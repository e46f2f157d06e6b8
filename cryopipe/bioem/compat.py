"""BioEM 2.1 compatibility: its input formats, grids, CTF kernels, volume element and output files.

Reproduces what the reference program computes (see ``shared/notes/bioem-reference.md``), quirks
included, so that ``cryopipe bioem --compat bioem2.1`` prints the same log-probabilities:

* images are ``I[x][y]`` (MRC particle ``arr[k].T``, standardised to mean 0 and population s.d. 1 unless
  NO_MAP_NORM; text particles as written);
* Euler angles (alpha, beta, gamma) are ZXZ, quaternions (q1, q2, q3, q4) scalar last, orientation files
  are parsed into float32;
* the CTF kernel ``K = CTF(s) / CTF(0)`` has no Cs and no astigmatism, and its half-spectrum rows are
  filled at ``u`` and ``N-1-u`` (quirk 1);
* the CTF priors reward defocus and amplitude far from their centres (quirk 2);
* grids ``start end n`` hold ``start + k (end - start) / n``, k < n.

Parsing errors raise :class:`~cryopipe.errors.InputError` naming the file and keyword.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import gemmi
import mrcfile
import numpy as np
from scipy.spatial.transform import Rotation

from cryopipe.bioem.forward import PointModel
from cryopipe.errors import InputError
from cryopipe.io.atomic import atomic_write_text

# Per-residue sphere radius (A) and electrons of BioEM's PDB reader (one sphere per CA).
RESIDUE_RADIUS_ELECTRONS = {
    "CYS": (2.75, 64.0), "PHE": (3.2, 88.0), "LEU": (3.1, 72.0), "TRP": (3.4, 108.0), "VAL": (2.95, 64.0),
    "ILE": (3.1, 72.0), "MET": (3.1, 80.0), "HIS": (3.05, 82.0), "TYR": (3.25, 96.0), "ALA": (2.5, 48.0),
    "GLY": (2.25, 40.0), "PRO": (2.8, 62.0), "ASN": (2.85, 66.0), "THR": (2.8, 64.0), "SER": (2.6, 56.0),
    "ARG": (3.3, 93.0), "GLN": (3.0, 78.0), "ASP": (2.8, 59.0), "LYS": (3.2, 79.0), "GLU": (2.95, 53.0),
}
DEFAULT_WAVELENGTH_A = 0.019866
_UNSUPPORTED = ("USE_PSF", "PSF_AMPLITUDE", "PSF_ENVELOPE", "PSF_PHASE", "WRITE_CTF_PARAM")


@dataclass
class BioEMParams:
    """A BioEM 2.1 input-parameter file. Lengths A, defocus um, B-envelope A^2 (``exp(-b s^2 / 2)``)."""

    pixel_size: float
    n_pixels: int
    defocus: tuple[float, float, int]
    amplitude: tuple[float, float, int]
    b_envelope: tuple[float, float, int]
    displace_center: tuple[int, int]
    grid_alpha: int = 0
    grid_beta: int = 0
    use_quaternions: bool = False
    grid_quaternion: int = 0
    wavelength: float = DEFAULT_WAVELENGTH_A
    prior_model: float = 1.0
    prior_angles: bool = False
    write_prob_angles: int = 0
    no_centerofmass: bool = False
    no_map_norm: bool = False
    shift: tuple[int, int] = (0, 0)
    sigma_prior_b: float = 100.0
    sigma_prior_defocus: float = 2.0
    prior_defocus_center: float = 3.0
    sigma_prior_amp: float = 0.5
    prior_amp_center: float = 0.0
    ignore_pdb: bool = False
    source: str | None = field(default=None, repr=False)

    @property
    def phase_per_um(self) -> float:
        """Defocus (um) -> BioEM's CTF phase coefficient ``a = 2 pi lambda df 1e4`` (A^2)."""
        return 2.0 * math.pi * 1e4 * self.wavelength


def read_parameter_file(path) -> BioEMParams:
    """Parse a BioEM input-parameter file (keywords as BioEM 2.1; '#' comments and blank lines skipped)."""
    path = str(path)
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise InputError(f"cannot read parameter file ({exc.strerror})", path) from None
    kw: dict[str, list[str]] = {}
    for line in lines:
        tokens = line.split()
        if tokens and not line.startswith("#"):
            kw[tokens[0]] = tokens[1:]

    def num(key, k=0, cast=float, required=True, default=None):
        if key not in kw:
            if required:
                raise InputError(f"keyword {key} missing", path, key)
            return default
        try:
            return cast(kw[key][k])
        except (IndexError, ValueError):
            raise InputError(f"keyword {key} needs a number in position {k + 1}", path, key) from None

    def grid(key, upper=None):
        start, end, n = num(key, 0), num(key, 1), num(key, 2, int)
        if start < 0 or end < 0 or n < 1 or start > end:
            raise InputError(f"grid must be 'start end n' with 0 <= start <= end and n >= 1, got {kw[key]}", path, key)
        if upper is not None and end > upper:
            raise InputError(f"end {end} exceeds the allowed {upper}", path, key)
        return start, end, n

    for key in _UNSUPPORTED:
        if key in kw:
            raise InputError("the PSF (real-space) variant is not supported; use the CTF keywords", path, key)
    quat = "USE_QUATERNIONS" in kw or "GRIDPOINTS_QUATERNION" in kw
    p = BioEMParams(
        pixel_size=num("PIXEL_SIZE"), n_pixels=num("NUMBER_PIXELS", cast=int),
        defocus=grid("CTF_DEFOCUS", upper=8.0), amplitude=grid("CTF_AMPLITUDE", upper=1.0),
        b_envelope=grid("CTF_B_ENV"),
        displace_center=(num("DISPLACE_CENTER", 0, int), num("DISPLACE_CENTER", 1, int)),
        grid_alpha=num("GRIDPOINTS_ALPHA", cast=int, required=False, default=0),
        grid_beta=num("GRIDPOINTS_BETA", cast=int, required=False, default=0),
        use_quaternions=quat, grid_quaternion=num("GRIDPOINTS_QUATERNION", cast=int, required=False, default=0),
        wavelength=num("ELECTRON_WAVELENGTH", required=False, default=DEFAULT_WAVELENGTH_A),
        prior_model=num("PRIOR_MODEL", required=False, default=1.0), prior_angles="PRIOR_ANGLES" in kw,
        write_prob_angles=num("WRITE_PROB_ANGLES", cast=int, required=False, default=0),
        no_centerofmass="NO_CENTEROFMASS" in kw, no_map_norm="NO_MAP_NORM" in kw,
        shift=(num("SHIFT_X", cast=int, required=False, default=0),
               num("SHIFT_Y", cast=int, required=False, default=0)),
        sigma_prior_b=num("SIGMA_PRIOR_B_CTF", required=False, default=100.0),
        sigma_prior_defocus=num("SIGMA_PRIOR_DEFOCUS", required=False, default=2.0),
        prior_defocus_center=num("PRIOR_DEFOCUS_CENTER", required=False, default=3.0),
        sigma_prior_amp=num("SIGMA_PRIOR_AMP_CTF", required=False, default=0.5),
        prior_amp_center=num("PRIOR_AMP_CTF_CENTER", required=False, default=0.0),
        ignore_pdb="IGNORE_PDB" in kw, source=path,
    )
    if p.pixel_size <= 0 or p.n_pixels < 4 or p.n_pixels % 2:
        raise InputError("PIXEL_SIZE must be > 0 and NUMBER_PIXELS even and >= 4", path, "NUMBER_PIXELS")
    m, g = p.displace_center
    if m < 0 or g < 1 or m >= p.n_pixels // 2:
        raise InputError(f"DISPLACE_CENTER needs 0 <= max < N/2 and step >= 1, got {m} {g}", path, "DISPLACE_CENTER")
    if p.amplitude[0] < 1e-10:
        raise InputError("CTF amplitude must be > 0 (the kernel is divided by CTF(0) = -A)", path, "CTF_AMPLITUDE")
    if p.wavelength < 0.015:
        raise InputError(f"wavelength {p.wavelength} A is not an electron wavelength", path, "ELECTRON_WAVELENGTH")
    if min(p.sigma_prior_b, p.sigma_prior_defocus, p.sigma_prior_amp) <= 0:
        raise InputError("prior widths must be positive", path, "SIGMA_PRIOR_*")
    return p


# --------------------------------------------------------------------------------------------- models


def read_text_model(path) -> PointModel:
    """BioEM text model: one sphere per line, 'x y z radius electrons' (A, A, A, A, e)."""
    try:
        if not Path(path).read_text().strip():
            raise InputError("model contains no points", path)
        data = np.loadtxt(path, ndmin=2, dtype=np.float64)
    except (OSError, ValueError) as exc:
        raise InputError(f"not a BioEM text model 'x y z radius electrons' ({exc})", path) from None
    if data.size == 0:
        raise InputError("model contains no points", path)
    if data.shape[1] != 5 or (data[:, 3] < 0).any():
        raise InputError("each line needs 'x y z radius electrons' with radius >= 0", path, "radius")
    return PointModel(data[:, :3], data[:, 4], data[:, 3], "sphere")


def read_pdb_residues(path) -> PointModel:
    """BioEM's PDB reading: one sphere per CA atom (ATOM records) with its residue's radius and electrons."""
    try:
        st = gemmi.read_structure(str(path))
    except Exception as exc:
        raise InputError(f"not a readable PDB/mmCIF file ({exc})", path) from None
    rows = []
    for chain in (st[0] if len(st) else []):
        for res in chain:
            if res.het_flag != "A":
                continue
            for atom in res:
                if atom.name == "CA":
                    if res.name not in RESIDUE_RADIUS_ELECTRONS:
                        raise InputError(f"residue {res.name} has no BioEM radius/electron entry", path, "resName")
                    rows.append((atom.pos.x, atom.pos.y, atom.pos.z, *RESIDUE_RADIUS_ELECTRONS[res.name]))
    if not rows:
        raise InputError("model contains no CA atoms", path, "ATOM")
    a = np.array(rows)
    return PointModel(a[:, :3], a[:, 4], a[:, 3], "sphere")


# ------------------------------------------------------------------------------------------- particles


def read_text_particles(path, n_pixels: int) -> np.ndarray:
    """BioEM text particles: 'PARTICLE' separators, then lines 'i j value' for every pixel -> (I, N, N) I[i][j]."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise InputError(f"cannot read particle file ({exc.strerror})", path) from None
    blocks = text.split("PARTICLE")
    if blocks[0].strip():
        raise InputError("particle file must start with PARTICLE", path, "PARTICLE")
    images = []
    for k, block in enumerate(blocks[1:]):
        rows = block.split("\n", 1)[1] if "\n" in block else ""
        try:
            v = np.loadtxt(rows.splitlines(), ndmin=2) if rows.strip() else np.empty((0, 3))
        except ValueError as exc:
            raise InputError(f"particle {k + 1}: bad pixel line ({exc})", path, "PARTICLE") from None
        i, j = v[:, 0].astype(np.int64), v[:, 1].astype(np.int64)
        if len(v) != n_pixels ** 2 or i.min() < 0 or j.min() < 0 or max(i.max(), j.max()) >= n_pixels:
            raise InputError(f"particle {k + 1}: need all {n_pixels}x{n_pixels} pixels indexed 0..{n_pixels - 1}",
                             path, "NUMBER_PIXELS")
        img = np.zeros((n_pixels, n_pixels))
        img[i, j] = v[:, 2]
        images.append(img)
    if not images:
        raise InputError("no PARTICLE in particle file", path, "PARTICLE")
    return np.stack(images)


def mrc_list(path) -> list[Path] | None:
    """The MRC files a BioEM multiple-MRC list names (``--ReadMultipleMRC``: one file name per line, relative to the
    working directory as BioEM reads them; blank lines and lines starting with "XXX", the tutorial's end marker,
    skipped), or None when ``path`` is not such a list (a text particle file starts with PARTICLE)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError as exc:
        raise InputError(f"cannot read particle file ({exc.strerror})", path) from None
    first = next((line.strip() for line in head.decode("latin-1").splitlines() if line.strip()), "")
    if not first.lower().endswith((".mrc", ".mrcs")) or first.startswith("PARTICLE"):
        return None
    names = [line.strip() for line in Path(path).read_text().splitlines()]
    files = [Path(n) for n in names if n and not n.startswith("XXX")]
    for k, name in enumerate(files):
        if not name.is_file():
            raise InputError(f"line {k + 1}: MRC file {str(name)!r} not found (names are read relative to the "
                             "working directory, as BioEM reads them)", path, "MRC list")
    return files


def read_mrc_particles(path, n_pixels: int, normalise: bool = True) -> np.ndarray:
    """MRC particle stack (mode 2) -> (I, N, N) float64 I[x][y] = arr[k].T, standardised per image
    (mean 0, population s.d. 1) unless ``normalise`` is False (NO_MAP_NORM)."""
    try:
        with mrcfile.open(str(path), permissive=False) as mrc:
            if int(mrc.header.mode) != 2:
                raise InputError(f"MRC mode {int(mrc.header.mode)}; BioEM reads mode 2 (float32) only", path, "mode")
            data = np.asarray(mrc.data, dtype=np.float64)
    except (OSError, ValueError) as exc:
        raise InputError(f"not a valid MRC file ({exc})", path, "header") from None
    data = data.reshape(-1, *data.shape[-2:])
    if data.shape[1:] != (n_pixels, n_pixels):
        raise InputError(f"images are {data.shape[2]}x{data.shape[1]}, NUMBER_PIXELS is {n_pixels}", path, "nx/ny")
    images = np.ascontiguousarray(data.transpose(0, 2, 1))
    if normalise:
        mean = images.mean(axis=(1, 2), keepdims=True)
        sd = np.sqrt((images ** 2).mean(axis=(1, 2), keepdims=True) - mean ** 2)
        images = images / sd - mean / sd
    return images


# ---------------------------------------------------------------------------------------- orientations


def euler_zxz_matrices(angles) -> np.ndarray:
    """(O, 3) Euler (alpha, beta, gamma) radians, ZXZ -> (O, 3, 3) rotations applied to model coordinates."""
    return Rotation.from_euler("ZXZ", np.asarray(angles, dtype=np.float64)).as_matrix().transpose(0, 2, 1)


def quaternion_matrices(q) -> np.ndarray:
    """(O, 4) quaternions (q1, q2, q3, q4), scalar last, not renormalised -> (O, 3, 3) as BioEM builds them."""
    q1, q2, q3, q4 = np.asarray(q, dtype=np.float64).T
    return np.stack([
        np.stack([1 - 2 * q2 * q2 - 2 * q3 * q3, 2 * (q1 * q2 + q3 * q4), 2 * (q1 * q3 - q2 * q4)], -1),
        np.stack([2 * (q1 * q2 - q3 * q4), 1 - 2 * q1 * q1 - 2 * q3 * q3, 2 * (q2 * q3 + q1 * q4)], -1),
        np.stack([2 * (q1 * q3 + q2 * q4), 2 * (q2 * q3 - q1 * q4), 1 - 2 * q1 * q1 - 2 * q2 * q2], -1),
    ], -2)


def read_orientation_file(path, quaternions: bool, with_prior: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """BioEM orientation list: count on line 1, then fixed 12-character columns (Euler alpha beta gamma in
    radians, or q1..q4) and, with ``with_prior``, one more column. Values pass through float32 as in BioEM.

    Returns (values (O, 3 or 4) float64, priors (O,) or None).
    """
    ncol = (4 if quaternions else 3) + (1 if with_prior else 0)
    try:
        lines = Path(path).read_text().splitlines()
        count = int(lines[0][:12])
        rows = [[float(line[12 * c:12 * c + 12]) for c in range(ncol)] for line in lines[1:] if line.strip()]
    except (OSError, IndexError, ValueError) as exc:
        raise InputError(f"not a BioEM orientation list with {ncol} columns of 12 characters ({exc})", path) from None
    if count < 1 or len(rows) == 0:
        raise InputError("orientation list is empty", path, "count")
    if len(rows) != count:
        raise InputError(f"header says {count} orientations, file has {len(rows)}", path, "count")
    values = np.asarray(rows, dtype=np.float32).astype(np.float64)
    if quaternions and (np.abs(values[:, :4]) > 1).any():
        raise InputError("quaternion components must lie in [-1, 1]", path, "q")
    nval = 4 if quaternions else 3
    return values[:, :nval], (values[:, nval] if with_prior else None)


def orientation_grid(p: BioEMParams) -> tuple[np.ndarray, float]:
    """BioEM's built-in grid: (values (O, 3|4), orientation volume factor without PRIOR_MODEL).

    Euler: alpha, gamma at the centres of ``GRIDPOINTS_ALPHA`` bins of [-pi, pi), beta = arccos of the
    centres of ``GRIDPOINTS_BETA`` bins of [-1, 1], order alpha, beta, gamma. Quaternions: the cube grid
    of ``GRIDPOINTS_QUATERNION + 1`` bin centres per axis inside the unit ball, each with q4 = +-sqrt(1 - |q|^2).
    """
    if p.use_quaternions:
        n = p.grid_quaternion + 1
        if p.grid_quaternion < 1:
            raise InputError("GRIDPOINTS_QUATERNION must be >= 1", p.source, "GRIDPOINTS_QUATERNION")
        step = 2.0 / n
        c = np.arange(n) * step - 1.0 + 0.5 * step
        q = np.stack(np.meshgrid(c, c, c, indexing="ij"), -1).reshape(-1, 3)
        q = q[(q ** 2).sum(1) <= 1.0]
        w = np.sqrt(1.0 - (q ** 2).sum(1))
        vals = np.stack([np.column_stack([q, w]), np.column_stack([q, -w])], 1).reshape(-1, 4)
        return vals, step ** 3
    na, nb = p.grid_alpha, p.grid_beta
    if na < 1 or nb < 1:
        raise InputError("GRIDPOINTS_ALPHA and GRIDPOINTS_BETA must be >= 1 (or give an orientation list)",
                         p.source, "GRIDPOINTS_ALPHA")
    da, db = 2.0 * math.pi / na, 2.0 / nb
    a = np.arange(na) * da - math.pi + 0.5 * da
    b = np.arccos(np.arange(nb) * db - 1.0 + 0.5 * db)
    vals = np.stack(np.meshgrid(a, b, a, indexing="ij"), -1).reshape(-1, 3)
    return vals, da * da * db / (2.0 * math.pi) / (2.0 * math.pi) / 2.0


# ------------------------------------------------------------------------------------------------- CTF


def _axis(grid: tuple[float, float, int]) -> tuple[np.ndarray, float]:
    start, end, n = grid
    step = start if n == 1 else (end - start) / n
    return start + np.arange(n) * ((end - start) / n), step


@dataclass
class CTFGrid:
    """The CTF grid in BioEM's loop order (amplitude, defocus, envelope): (C,) arrays and the volume steps.

    amplitude A, defocus (um), phase ``a`` (A^2), b envelope (A^2); steps of defocus (in phase units),
    envelope and the amplitude count, as BioEM's volume element uses them.
    """

    amplitude: np.ndarray
    defocus_um: np.ndarray
    phase: np.ndarray
    envelope: np.ndarray
    step_phase: float
    step_envelope: float
    n_amplitude: int


def ctf_grid(p: BioEMParams) -> CTFGrid:
    amp, _ = _axis(p.amplitude)
    dfc, step_df = _axis(p.defocus)
    env, step_env = _axis(p.b_envelope)
    a, d, e = (x.ravel() for x in np.meshgrid(amp, dfc, env, indexing="ij"))
    return CTFGrid(a, d, d * p.phase_per_um, e, step_df * p.phase_per_um, step_env, len(amp))


def ctf_kernels(grid: CTFGrid, n: int, pixel_size: float) -> np.ndarray:
    """(C, N, N//2+1) float64 half-spectrum kernels ``K = CTF(s) / CTF(0)`` with BioEM's row filling:
    ``K~[u][v] = K~[N-1-u][v] = K(u, v)`` for u = 0..N/2, later writes winning (quirk 1)."""
    h = n // 2 + 1
    u = np.arange(h, dtype=np.float64)
    s2 = (u[:, None] ** 2 + u[None, :] ** 2) / n / n / pixel_size / pixel_size  # (h, h)
    A, a, b = (x[:, None, None] for x in (grid.amplitude, grid.phase, grid.envelope))
    ctf = np.exp(-b * s2 / 2.0) * (-A * np.cos(a * s2 / 2.0) - np.sqrt(1.0 - A * A) * np.sin(a * s2 / 2.0))
    k = ctf / ctf[:, :1, :1]
    rows = np.empty(n, dtype=np.int64)  # which u ends up in each row
    for i in range(h):
        rows[i] = rows[n - 1 - i] = i
    return np.ascontiguousarray(k[:, rows, :])


def ctf_log_prior(grid: CTFGrid, p: BioEMParams) -> np.ndarray:
    """BioEM's prior term per CTF point (quirk 2: only the envelope term penalises), (C,)."""
    c_a = p.prior_defocus_center * p.phase_per_um
    s_a = p.sigma_prior_defocus * p.phase_per_um
    return (-grid.envelope ** 2 / 2.0 / p.sigma_prior_b ** 2 + (grid.phase - c_a) ** 2 / 2.0 / s_a ** 2
            + (grid.amplitude - p.prior_amp_center) ** 2 / 2.0 / p.sigma_prior_amp ** 2)


def log_volume(p: BioEMParams, orientation_volume: float, grid: CTFGrid) -> float:
    """ln of BioEM's volume element (orientations x displacements x CTF with its prior normalisation)."""
    m, g = p.displace_center
    v = (orientation_volume * p.prior_model * (g * p.pixel_size) ** 2 / (2.0 * m + 1.0) / (2.0 * (m + 1.0))
         / grid.n_amplitude * grid.step_envelope * grid.step_phase / 4.0 / math.pi / math.sqrt(2.0 * math.pi)
         / p.sigma_prior_b / (p.sigma_prior_defocus * p.phase_per_um) / p.sigma_prior_amp)
    return math.log(v) if v > 0 else -math.inf


def displacements(n: int, max_shift: int, step: int) -> np.ndarray:
    """(D, 2) circular correlation indices in BioEM's order: x over 0, g, .. <= M then N-M, N-M+g, .. < N;
    y likewise inside x. The displacement printed is ``-(index)`` wrapped to (-N/2, N/2]."""
    axis = np.concatenate([np.arange(0, max_shift + 1, step), np.arange(n - max_shift, n, step)])
    return np.stack(np.meshgrid(axis, axis, indexing="ij"), -1).reshape(-1, 2)


# ------------------------------------------------------------------------------------------------ output


def _fmt(x: float) -> str:
    return f"{x:.4f}"


def write_output_probabilities(path, p: BioEMParams, log_p, best: dict, orientations: np.ndarray,
                               grid: CTFGrid) -> None:
    """BioEM's Output_Probabilities: per image a 'LogProb' line and a 'Maximizing Param' line.

    best : per-image arrays 'orientation', 'ctf', 'shift_x', 'shift_y' (pixels), 'norm', 'offset', 'constant'.
    """
    names = "q1 q2 q3 q4" if p.use_quaternions else "alpha[rad] beta[rad] gamma[rad]"  # as BioEM names them
    out = ["# cryopipe bioem --compat bioem2.1: ln P per image and the maximising grid parameters",
           f"# RefMap: image LogProb: lnP Constant: max(logpro) / Maximizing Param: lnP {names} amp defocus[um]"
           " b-env[A^2] center-x center-y norm offset", ""]
    for i, lp in enumerate(log_p):
        o, c = int(best["orientation"][i]), int(best["ctf"][i])
        angles = " ".join(f"{_fmt(v)} []" for v in orientations[o])
        out.append(f"RefMap: {i} LogProb:  {_fmt(lp)} Constant: {_fmt(best['constant'][i])}")
        out.append(f"RefMap: {i} Maximizing Param: {_fmt(lp)} {angles} {_fmt(grid.amplitude[c])} [] "
                   f"{_fmt(grid.defocus_um[c])} [micro-m] {_fmt(grid.envelope[c])} [A²] "
                   f"{int(best['shift_x'][i])} [pix] {int(best['shift_y'][i])} [pix] "
                   f"{_fmt(best['norm'][i])} [] {_fmt(best['offset'][i])} [] ")
    atomic_write_text(path, "\n".join(out) + "\n")


def write_angle_probabilities(path, orient_log_p: np.ndarray, orientations: np.ndarray, k: int,
                              priors: np.ndarray | None = None) -> None:
    """BioEM's ANG_PROB: per image its ``k`` most probable orientations, best first (ties: lower index).

    orient_log_p : (I, O) ln P per image and orientation (constants included). With ``priors`` the
    printed value is ln P plus the prior value (as BioEM prints it) and the prior is appended.
    """
    names = "q1 q2 q3 q4" if orientations.shape[1] == 4 else "alpha[rad] beta[rad] gamma[rad]"  # as BioEM's
    out = [f"# cryopipe bioem --compat bioem2.1: image {names} lnP{' prior' if priors is not None else ''} per "
           "orientation, best first"]
    for i, row in enumerate(orient_log_p):
        order = sorted(range(len(row)), key=lambda o: (-row[o], o))[:k]
        for o in order:
            angles = " ".join(_fmt(v) for v in orientations[o])
            tail = f" {_fmt(row[o] + priors[o])} {_fmt(priors[o])}" if priors is not None else f" {_fmt(row[o])}"
            out.append(f" {i} {angles}{tail}")
    atomic_write_text(path, "\n".join(out) + "\n")


def parse_output_probabilities(text: str) -> dict[int, dict]:
    """Read an Output_Probabilities (the reference's or ours): {image: {'log_p', 'params' (list of floats)}}."""
    res: dict[int, dict] = {}
    for line in text.splitlines():
        t = line.split()
        if len(t) > 3 and t[0] == "RefMap:" and t[2] == "LogProb:":
            res.setdefault(int(t[1]), {})["log_p"] = float(t[3])
        elif len(t) > 4 and t[0] == "RefMap:" and t[2] == "Maximizing":
            vals = [float(v) for v in t[5:] if not v.startswith("[")]
            res.setdefault(int(t[1]), {})["params"] = vals
    return res
