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
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cryopipe.ctf import CTFParams, ctf_2d
from cryopipe.errors import require
from cryopipe.geometry import euler_to_matrix, random_euler
from cryopipe.io.models import write_model
from cryopipe.io.mrc import write_mrc
from cryopipe.io.star import write_star
from cryopipe.simulate.complex import build_models, electrons_of
from cryopipe.simulate.ice import ice_field_spectrum, ice_image
from cryopipe.simulate.render import project_atoms, render_volume

log = logging.getLogger(__name__)

ICE_STREAM = 1  # third word of the ice generators' seeds, (seed, micrograph index, ICE_STREAM)


@dataclass
class SimulateParams:
    """What to simulate. Lengths in Angstrom, voltage kV, Cs mm, defocus Angstrom."""

    seed: int = 2024
    micrographs: int = 16
    size_px: int = 1024
    angpix: float = 2.5
    particles_per_micrograph: int = 40
    fraction_conformation_1: float = 0.6
    snr: float = 0.1
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


def _positions(rng: np.random.Generator, n: int, size: int, margin: int, min_dist: float) -> np.ndarray:
    """Up to ``n`` random (x, y) pixel positions at least ``min_dist`` apart, ``margin`` from the edges."""
    pts: list[np.ndarray] = []
    for _ in range(200 * n):
        if len(pts) == n:
            break
        p = rng.uniform(margin, size - 1 - margin, size=2)
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


def simulate_micrograph(
    params: SimulateParams, rng: np.random.Generator, models: dict, ctf: CTFParams, with_gradient: bool,
    index: int = 0,
) -> tuple[np.ndarray, pd.DataFrame, float]:
    """One micrograph (size, size) float32 with its particles' truth table and the noise s.d.

    ``index`` (the micrograph's 0-based number) seeds its ice background, drawn only when ``params.ice_snr > 0``
    from a generator of its own: (params.seed, index).
    """
    p = params
    size = p.size_px
    margin = p.map_box // 2 + 2
    xy = _positions(rng, p.particles_per_micrograph, size, margin, p.diameter_A / p.angpix)
    n = len(xy)
    angles = random_euler(n, rng)
    conformation = np.where(rng.random(n) < p.fraction_conformation_1, 1, 2)
    radius_A = max(np.linalg.norm(m.xyz, axis=1).max() for m in models.values())
    # each particle is rendered in a window of rbox px about its centre: half-width = the farthest atom plus 4 atom
    # s.d. plus a pixel for the sub-pixel offset, so that no density is cut off (a window of half this size clipped
    # every particle to a 70 A square: ~5% of its mass and ~25% of the difference between the conformations)
    rbox = 2 * int(np.ceil((radius_A + 4 * p.atom_sigma_A) / p.angpix + 1))
    potential = np.zeros((size, size))
    for k in range(n):
        model = models[f"conformation_{conformation[k]}"]
        ix, iy = (int(np.floor(v)) for v in xy[k])
        image = project_atoms(
            model.xyz, electrons_of(model), p.atom_sigma_A, euler_to_matrix(*angles[k]), rbox, p.angpix,
            offset_px=(xy[k, 0] - ix, xy[k, 1] - iy),
        )
        y0, x0 = iy - rbox // 2, ix - rbox // 2
        ys, xs = slice(max(0, y0), min(size, y0 + rbox)), slice(max(0, x0), min(size, x0 + rbox))
        potential[ys, xs] += image[ys.start - y0 : ys.stop - y0, xs.start - x0 : xs.stop - x0]
    ctf_image = np.asarray(ctf_2d(ctf, size, p.angpix, half=True), dtype=np.float64).reshape(size, size // 2 + 1)
    clean = -np.fft.irfft2(np.fft.rfft2(potential) * ctf_image, s=(size, size))
    signal_var = _circle_variance(clean, xy, 0.5 * p.diameter_A / p.angpix) if n else float(clean.var() or 1.0)
    noise_sd = np.sqrt(signal_var / p.snr)
    image = clean + rng.normal(0.0, noise_sd, size=clean.shape)
    if p.ice_snr > 0:
        ice_rng = np.random.default_rng([p.seed, index, ICE_STREAM])
        image += ice_image(ice_field_spectrum(size, ice_rng), ctf, p.angpix, p.ice_snr * noise_sd**2)
    if with_gradient:
        theta = rng.uniform(0, 2 * np.pi)
        yy, xx = np.mgrid[0:size, 0:size] / size - 0.5
        image += 3.0 * noise_sd * (np.cos(theta) * xx + np.sin(theta) * yy)
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
    return image.astype(np.float32), truth, float(noise_sd)


def simulate_dataset(params: SimulateParams, out: Path, names_root: Path | None = None) -> list[Path]:
    """Write the whole demo dataset into ``out``; return the files written.

    ``names_root`` is the folder that paths written into STAR files refer to
    (default ``out``); it differs from ``out`` when writing into a staging folder.

    Layout::

        models/{conformation_1,conformation_2,decoy}.pdb   pseudo-atomic models (gemmi)
        maps/{conformation_1,conformation_2,decoy}.mrc      true maps, map_box^3 at angpix
        micrographs/mic_NNN.mrc                             simulated micrographs
        micrographs_ctf.star                                CTF per micrograph (CTFFIND/RELION style)
        truth/particles.star                                true coordinates, angles, conformation, CTF
        truth/micrographs.star                              true CTF incl. B-factor, noise s.d., gradient
    """
    params.validate()
    out = Path(out)
    root = Path(names_root) if names_root is not None else out
    rng = np.random.default_rng(params.seed)
    models = build_models(params.seed)
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
        image, truth, noise_sd = simulate_micrograph(params, rng, models, ctf, gradient, index=m)
        write_mrc(out / "micrographs" / name, image, params.angpix)
        written.append(out / "micrographs" / name)
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
                **({"cpIceSnr": params.ice_snr} if params.ice_snr > 0 else {}),
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
    save_figure(fig, out / "report" / "micrograph.png")
    maps = {name: read_mrc(out / "maps" / f"{name}.mrc")[0] for name in ("conformation_1", "conformation_2", "decoy")}
    save_figure(orthogonal_projections(maps), out / "report" / "maps.png")
    return [out / "report" / "micrograph.png", out / "report" / "maps.png"]
