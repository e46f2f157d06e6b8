"""Simulated micrographs with ground truth, as a microscope and CTFFIND would give them.

Image formation per micrograph: particles of randomly chosen conformations in
uniformly random orientations are projected exactly (Gaussian atoms, see
:mod:`cryopipe.simulate.render`) at random non-overlapping positions; the
projected potential is multiplied in Fourier space by RELION's CTF (own defocus,
astigmatism and B-factor envelope) and negated, so particles look dark as in
real data (extraction with ``--invert`` makes them white again, as RELION);
some micrographs get an ice-thickness gradient; white Gaussian noise is added.
Optionally (``ice_snr > 0``; off in the demo) a CTF-modulated amorphous-ice background
(:mod:`cryopipe.simulate.ice`) gives the micrographs Thon rings as real ones have, and
``phase_shift`` adds a phase-plate phase shift to every micrograph's CTF.

SNR definition: the variance of the noise-free, CTF-modulated image inside the
particles' circles (diameter ``diameter_A``, variance about each circle's mean,
averaged over the micrograph's particles) divided by the noise variance. The ice
background's ``ice_snr`` is its per-pixel variance divided by the same noise variance.
The ice of micrograph k is drawn from its own generator (seed, k), so switching it on
leaves every other random draw (particles, defocus, noise) as it was.

Hard mode (every option off by default; the demo's files stay bit-identical): rectangular micrographs
(``height_px``), crowding up to touching neighbours (``coverage``, random sequential addition, see
:mod:`cryopipe.simulate.crowding`), a carbon film beyond a curved edge, ice contaminants and particle aggregates
(:mod:`cryopipe.simulate.artefacts`; no true particle lies within a particle radius of them and their region is
written as a mask, ``truth/excluded/``), a smoothed 8-bit "denoised" export, a stronger ice gradient
(``ice_gradient_sd``) and other molecules (``molecule``, :mod:`cryopipe.simulate.molecules`). Each new random
feature draws from a generator of its own, (seed, micrograph index, stream), streams below.
:data:`HARD_CONDITIONS` names the conditions the picking tests use.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cryopipe.ctf import CTFParams
from cryopipe.errors import require
from cryopipe.geometry import euler_to_matrix, random_euler
from cryopipe.io.models import write_model
from cryopipe.io.mrc import write_mrc
from cryopipe.io.star import write_star
from cryopipe.simulate import artefacts
from cryopipe.simulate.complex import electrons_of
from cryopipe.simulate.crowding import accessible_area, allowed_centres, covered_fraction, disc_mask, rsa_positions
from cryopipe.simulate.ice import ctf_half, ice_field_spectrum, ice_image
from cryopipe.simulate.molecules import MOLECULE_RADIUS_A, MOLECULES, build_molecule
from cryopipe.simulate.render import project_atoms, render_volume

log = logging.getLogger(__name__)

# third word of the per-micrograph generators' seeds, (seed, micrograph index, STREAM): one stream per feature
ICE_STREAM = 1
PLACEMENT_STREAM = 2  # crowded placement (coverage > 0)
CARBON_STREAM = 3
CONTAMINANT_STREAM = 4
AGGREGATE_STREAM = 5
MAX_COVERAGE = 0.5  # random sequential addition jams at ~0.51-0.53 of the accessible area
MAX_CARBON = 0.8


@dataclass
class SimulateParams:
    """What to simulate. Lengths in Angstrom, voltage kV, Cs mm, defocus Angstrom."""

    seed: int = 2024
    micrographs: int = 20
    size_px: int = 1024
    angpix: float = 2.5
    particles_per_micrograph: int = 40
    fraction_conformation_1: float = 0.6
    snr: float = 0.3
    diameter_A: float = 120.0
    map_box: int = 64
    atom_sigma_A: float = 1.8
    voltage: float = 300.0
    cs: float = 2.7
    amplitude_contrast: float = 0.1
    defocus_min_A: float = 10000.0
    defocus_max_A: float = 25000.0
    astigmatism_max_A: float = 600.0
    bfactor_min: float = 20.0
    bfactor_max: float = 80.0
    ice_gradient_every: int = 4  # every k-th micrograph gets an ice gradient (0: none)
    ice_snr: float = 0.0  # per-pixel SNR of a CTF-modulated amorphous-ice background (0: none, the demo)
    phase_shift: float = 0.0  # phase-plate phase shift of every micrograph's CTF, degrees (0: none)
    height_px: int = 0  # rows of a rectangular micrograph (0: square, size_px x size_px); size_px is its width
    coverage: float = 0.0  # crowding: fill this fraction of the accessible area, overriding particles_per_micrograph
    carbon: float = 0.0  # fraction of each micrograph covered by a carbon film beyond a curved edge (0: none)
    contaminants: int = 0  # ice contaminants per micrograph
    aggregates: int = 0  # aggregates of 5-12 overlapping particles per micrograph (not in the truth particles)
    denoised: int = 0  # 1: write the smoothed, 8-bit "denoised" export instead of the raw micrograph
    molecule: str = "complex"  # "complex" (the demo), "ferritin" (hollow cage) or "rod" (elongated, 3:1)
    ice_gradient_sd: float = 3.0  # change of the ice gradient across the micrograph's width, noise s.d.

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, columns) of every micrograph."""
        return (self.height_px or self.size_px, self.size_px)

    @property
    def has_excluded(self) -> bool:
        """Whether micrographs have excluded regions (carbon, contaminants or aggregates)."""
        return self.carbon > 0 or self.contaminants > 0 or self.aggregates > 0

    def validate(self) -> None:
        require(self.micrographs >= 1, "must be >= 1", field="--micrographs")
        require(self.angpix > 0, f"pixel size must be positive, got {self.angpix}", field="--angpix")
        require(self.size_px >= 2 * self.map_box, "micrograph must be at least twice the map box", field="--size-px")
        require(self.size_px % 2 == 0 and self.map_box % 2 == 0, "sizes must be even", field="--size-px/--map-box")
        require(self.snr > 0, f"SNR must be positive, got {self.snr}", field="--snr")
        require(0 <= self.fraction_conformation_1 <= 1, "must be in [0, 1]", field="--fraction-conformation-1")
        require(0 < self.defocus_min_A <= self.defocus_max_A, "need 0 < min <= max",
                field="--defocus-min-A/--defocus-max-A")
        require(self.diameter_A / self.angpix < self.map_box, "particle must fit the map box", field="--diameter-A")
        require(0 <= self.amplitude_contrast < 1, "must be in [0, 1)", field="--amplitude-contrast")
        require(np.isfinite(self.ice_snr) and self.ice_snr >= 0, f"must be >= 0, got {self.ice_snr}",
                field="--ice-snr")
        require(bool(np.isfinite(self.phase_shift)), "must be finite", field="--phase-shift")
        require(self.particles_per_micrograph >= 0, "must be >= 0", field="--particles-per-micrograph")
        require(self.height_px == 0 or (self.height_px >= 2 * self.map_box and self.height_px % 2 == 0),
                "must be 0 (square) or even and at least twice the map box", field="--height-px")
        require(bool(np.isfinite(self.coverage)) and 0 <= self.coverage <= MAX_COVERAGE,
                f"must be in [0, {MAX_COVERAGE}] (random sequential addition jams above)", field="--coverage")
        require(bool(np.isfinite(self.carbon)) and 0 <= self.carbon <= MAX_CARBON, f"must be in [0, {MAX_CARBON}]",
                field="--carbon")
        require(self.contaminants >= 0, "must be >= 0", field="--contaminants")
        require(self.aggregates >= 0, "must be >= 0", field="--aggregates")
        require(self.denoised in (0, 1), "must be 0 (raw) or 1 (denoised export)", field="--denoised")
        require(self.molecule in MOLECULES, f"must be one of {', '.join(MOLECULES)}", field="--molecule")
        if self.molecule in MOLECULE_RADIUS_A:  # the demo complex keeps the diameter check above
            reach = MOLECULE_RADIUS_A[self.molecule] + 3 * self.atom_sigma_A
            require(2 * reach / self.angpix <= self.map_box,
                    f"{self.molecule} (radius {MOLECULE_RADIUS_A[self.molecule]:g} A) must fit the map box",
                    field="--map-box")
        require(bool(np.isfinite(self.ice_gradient_sd)), "must be finite", field="--ice-gradient-sd")


# Small micrographs for the picking tests: 512 px at 2.5 A/px (1280 A), a 120 A particle (48 px) in a 64 px map box,
# per-pixel SNR 0.05 and a normal density (12 particles: ~8% of the area), no ice gradient; each condition below
# changes this base in one way (a dict of SimulateParams overrides; build one with :func:`hard_params`).
HARD_BASE = {"micrographs": 4, "size_px": 512, "angpix": 2.5, "diameter_A": 120.0, "map_box": 64,
             "particles_per_micrograph": 12, "snr": 0.05, "ice_gradient_every": 0}
HARD_CONDITIONS: dict[str, dict] = {
    name: {**HARD_BASE, **changes}
    for name, changes in {
        "crowded": {"coverage": 0.4},  # touching neighbours, ~40% of the accessible area covered
        "low_snr": {"snr": 0.02},
        "carbon_edge": {"carbon": 0.3, "coverage": 0.25},  # a third on carbon, the ice side crowded
        "contaminants": {"contaminants": 3, "aggregates": 2},
        "denoised": {"denoised": 1, "coverage": 0.2},
        "rectangular": {"size_px": 640, "height_px": 448},
        "ice_gradient": {"ice_gradient_every": 1, "ice_gradient_sd": 10.0, "ice_snr": 0.5},  # + Thon-ring ice
        "ferritin": {"molecule": "ferritin"},
        "rod": {"molecule": "rod"},
        "empty": {"particles_per_micrograph": 0},  # noise only: every pick is a false positive
    }.items()
}


def hard_params(name: str, **overrides) -> SimulateParams:
    """SimulateParams of the hard condition ``name`` (a key of HARD_CONDITIONS), with ``overrides`` on top."""
    require(name in HARD_CONDITIONS, f"unknown condition {name!r} (known: {', '.join(HARD_CONDITIONS)})",
            field="--preset")
    return SimulateParams(**{**HARD_CONDITIONS[name], **overrides})


def _positions(rng: np.random.Generator, n: int, shape: tuple[int, int], margin: int, min_dist: float,
               allowed: np.ndarray | None = None) -> np.ndarray:
    """Up to ``n`` random (x, y) pixel positions at least ``min_dist`` apart, ``margin`` from the edges of an
    (H, W) micrograph and, when ``allowed`` (H, W) bool is given, on its True pixels (200 n tries)."""
    high = np.array([shape[1], shape[0]]) - 1 - margin
    pts: list[np.ndarray] = []
    for _ in range(200 * n):
        if len(pts) == n:
            break
        p = rng.uniform(margin, high, size=2)
        if allowed is not None and not allowed[int(round(p[1])), int(round(p[0]))]:
            continue
        if all(np.hypot(*(p - q)) >= min_dist for q in pts):
            pts.append(p)
    return np.array(pts).reshape(-1, 2)


def _circle_variance(image: np.ndarray, centres: np.ndarray, radius: float) -> float:
    """Mean over circles of the variance of ``image`` inside each circle."""
    r = int(np.ceil(radius))
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    variances = []
    for x, y in centres:
        ix, iy = int(round(x)), int(round(y))
        inside = (xx + ix - x) ** 2 + (yy + iy - y) ** 2 <= radius**2
        patch = image[iy - r : iy + r + 1, ix - r : ix + r + 1]
        variances.append(patch[inside].var())
    return float(np.mean(variances))


@dataclass
class SimulatedMicrograph:
    """One simulated micrograph with its ground truth.

    image : (H, W) float32, the micrograph as written (with ``denoised``, the export's 256 integer levels).
    truth : the true particles, a row each: rlnCoordinateX/Y (px), rlnAngleRot/Tilt/Psi (deg), rlnClassNumber.
    noise_sd : s.d. of the white noise added, in the raw (not exported) image's units.
    excluded : (H, W) bool, True on carbon, contaminants and aggregates; None when none of them is on.
    columns : the truth/micrographs.star columns of the hard-mode features switched on ({} for the demo):
        cpCoverage (fraction of the accessible area inside the true particles' circles, see
        :mod:`cryopipe.simulate.crowding`), cpCarbonFraction (of the pixels), cpContaminants, cpAggregates,
        cpAggregateParticles, cpExcludedFraction (of the pixels), cpDenoiseSigmaA (the export's low-pass, A) and
        cpLevelLow/cpLevelHigh (the raw values mapped to levels 0 and 255).
    """

    image: np.ndarray
    truth: pd.DataFrame
    noise_sd: float
    excluded: np.ndarray | None
    columns: dict


def _render(potential: np.ndarray, p: SimulateParams, models: dict, xy: np.ndarray, angles: np.ndarray,
            conformation: np.ndarray, rbox: int) -> None:
    """Add to ``potential`` (H, W) the exact projections of particles at ``xy`` (n, 2) px, with Euler ``angles``
    (n, 3) deg and ``conformation`` (n,) 1 or 2, each in a window of ``rbox`` px about its centre (clipped at the
    edges)."""
    h, w = potential.shape
    for k in range(len(xy)):
        model = models[f"conformation_{conformation[k]}"]
        ix, iy = (int(np.floor(v)) for v in xy[k])
        image = project_atoms(
            model.xyz, electrons_of(model), p.atom_sigma_A, euler_to_matrix(*angles[k]), rbox, p.angpix,
            offset_px=(xy[k, 0] - ix, xy[k, 1] - iy),
        )
        y0, x0 = iy - rbox // 2, ix - rbox // 2
        ys, xs = slice(max(0, y0), min(h, y0 + rbox)), slice(max(0, x0), min(w, x0 + rbox))
        potential[ys, xs] += image[ys.start - y0 : ys.stop - y0, xs.start - x0 : xs.stop - x0]


def simulate_micrograph(
    params: SimulateParams, rng: np.random.Generator, models: dict, ctf: CTFParams, with_gradient: bool,
    index: int = 0,
) -> tuple[np.ndarray, pd.DataFrame, float]:
    """One micrograph (H, W) float32 with its particles' truth table and the noise s.d.

    ``index`` (the micrograph's 0-based number) seeds its ice background, drawn only when ``params.ice_snr > 0``
    from a generator of its own: (params.seed, index), and its hard-mode features likewise.
    :func:`simulate_micrograph_full` gives the excluded regions and truth columns too.
    """
    m = simulate_micrograph_full(params, rng, models, ctf, with_gradient, index)
    return m.image, m.truth, m.noise_sd


def simulate_micrograph_full(
    params: SimulateParams, rng: np.random.Generator, models: dict, ctf: CTFParams, with_gradient: bool,
    index: int = 0,
) -> SimulatedMicrograph:
    """One micrograph (H, W) = ``params.shape`` with its ground truth; see :func:`simulate_micrograph`.

    ``rng`` draws what the demo draws (positions unless ``coverage``, angles, conformations, noise, gradient);
    every hard-mode feature draws from its own generator (params.seed, index, *_STREAM).
    """
    p = params
    h, w = p.shape
    margin = p.map_box // 2 + 2
    radius_px = 0.5 * p.diameter_A / p.angpix
    excluded, film, blobs, carbon_mask = None, None, None, None
    agg_xy = np.zeros((0, 2))
    if p.has_excluded:
        excluded = np.zeros((h, w), bool)
        if p.carbon > 0:
            film, carbon_mask = artefacts.carbon_film(
                np.random.default_rng([p.seed, index, CARBON_STREAM]), (h, w), p.carbon, p.angpix)
            excluded |= carbon_mask
        if p.contaminants > 0:
            blobs, blob_mask = artefacts.contaminants(
                np.random.default_rng([p.seed, index, CONTAMINANT_STREAM]), (h, w), p.contaminants, 2 * radius_px)
            excluded |= blob_mask
        if p.aggregates > 0:
            agg_rng = np.random.default_rng([p.seed, index, AGGREGATE_STREAM])
            agg_xy = artefacts.aggregate_centres(agg_rng, (h, w), p.aggregates, 2 * radius_px, margin)
            agg_angles = random_euler(len(agg_xy), agg_rng)
            agg_conformation = np.where(agg_rng.random(len(agg_xy)) < p.fraction_conformation_1, 1, 2)
            excluded |= disc_mask((h, w), agg_xy, radius_px)
    allowed = allowed_centres((h, w), margin, excluded, radius_px) if p.has_excluded or p.coverage > 0 else None
    if p.coverage > 0:
        xy = rsa_positions(np.random.default_rng([p.seed, index, PLACEMENT_STREAM]), p.coverage, allowed, radius_px)
    else:
        xy = _positions(rng, p.particles_per_micrograph, (h, w), margin, p.diameter_A / p.angpix, allowed)
    n = len(xy)
    angles = random_euler(n, rng)
    conformation = np.where(rng.random(n) < p.fraction_conformation_1, 1, 2)
    radius_A = max(np.linalg.norm(m.xyz, axis=1).max() for m in models.values())
    # each particle is rendered in a window of rbox px about its centre: half-width = the farthest atom plus 4 atom
    # s.d. plus a pixel for the sub-pixel offset, so that no density is cut off (a window of half this size clipped
    # every particle to a 70 A square: ~5% of its mass and ~25% of the difference between the conformations)
    rbox = 2 * int(np.ceil((radius_A + 4 * p.atom_sigma_A) / p.angpix + 1))
    potential = np.zeros((h, w))
    _render(potential, p, models, xy, angles, conformation, rbox)
    ctf_image = ctf_half(ctf, (h, w), p.angpix)
    clean = -np.fft.irfft2(np.fft.rfft2(potential) * ctf_image, s=(h, w))
    reference, reference_xy = clean, xy  # the SNR's signal: the true particles, else the aggregates' particles
    if len(agg_xy):
        agg_potential = np.zeros((h, w))
        _render(agg_potential, p, models, agg_xy, agg_angles, agg_conformation, rbox)
        agg_clean = -np.fft.irfft2(np.fft.rfft2(agg_potential) * ctf_image, s=(h, w))
        if not n:
            reference, reference_xy = agg_clean, agg_xy
    if len(reference_xy):
        signal_var = _circle_variance(reference, reference_xy, radius_px)
    else:
        signal_var = float(clean.var() or 1.0)
    noise_sd = np.sqrt(signal_var / p.snr)
    image = clean + rng.normal(0.0, noise_sd, size=clean.shape)
    if p.ice_snr > 0:
        ice_rng = np.random.default_rng([p.seed, index, ICE_STREAM])
        image += ice_image(ice_field_spectrum((h, w), ice_rng), ctf, p.angpix, p.ice_snr * noise_sd**2, width=w)
    if with_gradient:
        theta = rng.uniform(0, 2 * np.pi)
        xx = np.arange(w)[None, :] / w - 0.5
        yy = np.arange(h)[:, None] / w - 0.5 * h / w  # the same slope along y as along x
        image += p.ice_gradient_sd * noise_sd * (np.cos(theta) * xx + np.sin(theta) * yy)
    if len(agg_xy):
        image += agg_clean
    columns: dict = {}
    if film is not None:
        image += noise_sd * film
        columns["cpCarbonFraction"] = float(carbon_mask.mean())
    if blobs is not None:
        image += noise_sd * blobs
        columns["cpContaminants"] = p.contaminants
    if p.aggregates > 0:
        columns.update(cpAggregates=p.aggregates, cpAggregateParticles=len(agg_xy))
    if allowed is not None:
        columns["cpCoverage"] = covered_fraction(xy, radius_px, accessible_area(allowed, radius_px))
    if excluded is not None:
        columns["cpExcludedFraction"] = float(excluded.mean())
    if p.denoised:
        image, low, high = artefacts.denoised_export(image, p.angpix)
        columns.update(cpDenoiseSigmaA=artefacts.DENOISE_SIGMA_A, cpLevelLow=low, cpLevelHigh=high)
    truth = pd.DataFrame(
        {
            "rlnCoordinateX": xy[:, 0],
            "rlnCoordinateY": xy[:, 1],
            "rlnAngleRot": angles[:, 0],
            "rlnAngleTilt": angles[:, 1],
            "rlnAnglePsi": angles[:, 2],
            "rlnClassNumber": conformation,
        }
    )
    return SimulatedMicrograph(image.astype(np.float32), truth, float(noise_sd), excluded, columns)


def simulate_dataset(params: SimulateParams, out: Path, names_root: Path | None = None) -> list[Path]:
    """Write the whole demo dataset into ``out``; return the files written.

    ``names_root`` is the folder that paths written into STAR files refer to
    (default ``out``); it differs from ``out`` when writing into a staging folder.

    Layout::

        models/{conformation_1,conformation_2,decoy}.pdb   pseudo-atomic models (gemmi)
        maps/{conformation_1,conformation_2,decoy}.mrc      true maps, map_box^3 at angpix
        micrographs/mic_NNN.mrc                             simulated micrographs, (H, W) = params.shape
        micrographs_ctf.star                                CTF per micrograph (CTFFIND/RELION style)
        truth/particles.star                                true coordinates, angles, conformation, CTF
        truth/micrographs.star                              true CTF incl. B-factor, noise s.d., gradient
                                                            (and the hard-mode columns, SimulatedMicrograph)
        truth/excluded/mic_NNN.mrc                          float32 (H, W), 1 on carbon, contaminants and
                                                            aggregates, else 0 (only when one of them is on)

    With ``params.molecule`` other than "complex", models and maps are that molecule's (conformation_1, its
    variant conformation_2 and a decoy: :mod:`cryopipe.simulate.molecules`).
    """
    params.validate()
    out = Path(out)
    root = Path(names_root) if names_root is not None else out
    rng = np.random.default_rng(params.seed)
    models = build_molecule(params.molecule, params.seed)
    written: list[Path] = []
    for name, model in models.items():
        write_model(out / "models" / f"{name}.pdb", model)
        vol = render_volume(model.xyz, electrons_of(model), params.atom_sigma_A, params.map_box, params.angpix)
        write_mrc(out / "maps" / f"{name}.mrc", vol, params.angpix)
        written += [out / "models" / f"{name}.pdb", out / "maps" / f"{name}.mrc"]

    mic_rows, truth_tables = [], []
    # the demo (no phase plate) writes no rlnPhaseShift column, so its files stay as they were
    phase_column = {"rlnPhaseShift": params.phase_shift} if params.phase_shift != 0 else {}
    for m in range(params.micrographs):
        name = f"mic_{m + 1:03d}.mrc"
        d_u = rng.uniform(params.defocus_min_A, params.defocus_max_A)
        d_v = d_u - rng.uniform(0, params.astigmatism_max_A)
        angle = rng.uniform(0, 180)
        bfac = rng.uniform(params.bfactor_min, params.bfactor_max)
        ctf = CTFParams(
            defocus_u=d_u, defocus_v=d_v, defocus_angle=angle, voltage=params.voltage, cs=params.cs,
            amplitude_contrast=params.amplitude_contrast, bfactor=bfac, phase_shift=params.phase_shift,
        )
        gradient = params.ice_gradient_every > 0 and m % params.ice_gradient_every == params.ice_gradient_every - 1
        result = simulate_micrograph_full(params, rng, models, ctf, gradient, index=m)
        truth, noise_sd = result.truth, result.noise_sd
        write_mrc(out / "micrographs" / name, result.image, params.angpix)
        written.append(out / "micrographs" / name)
        if result.excluded is not None:
            write_mrc(out / "truth" / "excluded" / name, result.excluded.astype(np.float32), params.angpix)
            written.append(out / "truth" / "excluded" / name)
        mic_name = str(root / "micrographs" / name)
        truth.insert(0, "rlnMicrographName", mic_name)
        truth = truth.assign(rlnDefocusU=d_u, rlnDefocusV=d_v, rlnDefocusAngle=angle, **phase_column)
        truth_tables.append(truth)
        mic_rows.append(
            {
                "rlnMicrographName": mic_name, "rlnOpticsGroup": 1, "rlnDefocusU": d_u, "rlnDefocusV": d_v,
                "rlnCtfAstigmatism": d_u - d_v, "rlnDefocusAngle": angle, "rlnCtfFigureOfMerit": 0.2,
                "rlnCtfMaxResolution": 2 * params.angpix + 1.0, **phase_column, "rlnCtfBfactor": bfac,
                "cpNoiseSd": noise_sd, "cpIceGradient": int(gradient), "cpParticles": len(truth),
                **({"cpIceSnr": params.ice_snr} if params.ice_snr > 0 else {}), **result.columns,
            }
        )
        log.info("micrograph %s: %d particles, defocus %.0f A, B %.0f A^2", name, len(truth), d_u, bfac)

    optics = pd.DataFrame(
        {
            "rlnOpticsGroupName": ["opticsGroup1"], "rlnOpticsGroup": [1],
            "rlnMicrographOriginalPixelSize": [params.angpix], "rlnVoltage": [params.voltage],
            "rlnSphericalAberration": [params.cs], "rlnAmplitudeContrast": [params.amplitude_contrast],
            "rlnMicrographPixelSize": [params.angpix],
        }
    )
    mics = pd.DataFrame(mic_rows)
    ctf_cols = [c for c in mics.columns if not c.startswith("cp") and c != "rlnCtfBfactor"]
    write_star(out / "micrographs_ctf.star", {"optics": optics, "micrographs": mics[ctf_cols]})
    write_star(out / "truth" / "micrographs.star", {"optics": optics, "micrographs": mics})
    particles = pd.concat(truth_tables, ignore_index=True)
    particles.insert(1, "rlnOpticsGroup", 1)
    write_star(out / "truth" / "particles.star", {"optics": optics, "particles": particles})
    written += [out / "micrographs_ctf.star", out / "truth" / "micrographs.star", out / "truth" / "particles.star"]
    written += _figures(params, out, particles, root)
    return written


def _figures(params: SimulateParams, out: Path, particles: pd.DataFrame, root: Path) -> list[Path]:
    """Report figures: the first micrograph with its true particles circled; the true maps."""
    from cryopipe.io.mrc import read_mrc
    from cryopipe.plots import micrograph_with_circles, orthogonal_projections, save_figure

    first = particles[particles["rlnMicrographName"] == str(root / "micrographs" / "mic_001.mrc")]
    image, _ = read_mrc(out / "micrographs" / "mic_001.mrc")
    fig = micrograph_with_circles(
        image, first[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy(), 0.5 * params.diameter_A / params.angpix,
        f"mic_001: {len(first)} true particles (SNR {params.snr})",
    )
    excluded = out / "truth" / "excluded" / "mic_001.mrc"
    if excluded.exists():
        fig.axes[0].contour(read_mrc(excluded)[0], levels=[0.5], colors="tab:blue", linewidths=1)
    save_figure(fig, out / "report" / "micrograph.png")
    maps = {name: read_mrc(out / "maps" / f"{name}.mrc")[0] for name in ("conformation_1", "conformation_2", "decoy")}
    save_figure(orthogonal_projections(maps), out / "report" / "maps.png")
    return [out / "report" / "micrograph.png", out / "report" / "maps.png"]
