"""``cryopipe simulate``: generate the demo dataset (models, maps, micrographs, ground truth)."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from cryopipe.cli import add_deprecated_alias
from cryopipe.simulate.micrographs import SimulateParams
from cryopipe.simulate.stage import run

__all__ = ["HELP", "add_arguments", "configure", "run"]

HELP = "simulate the demo dataset: a two-conformation test complex, micrographs with CTF and noise, ground truth"

_FLAG_HELP = {
    "seed": "random seed (the dataset is a deterministic function of it)",
    "micrographs": "number of micrographs",
    "size_px": "micrograph size in pixels (square)",
    "angpix": "pixel size, Angstrom/pixel",
    "particles_per_micrograph": "particles per micrograph (fewer if they do not fit)",
    "fraction_conformation_1": "fraction of particles in conformation 1 (the rest are conformation 2)",
    "snr": "signal-to-noise ratio (variance inside the particle circle / noise variance)",
    "diameter_A": "particle circle diameter in Angstrom (minimum distance between particles)",
    "map_box": "box of the true maps in pixels",
    "atom_sigma_A": "Gaussian width of one atom in Angstrom",
    "voltage": "acceleration voltage, kV",
    "cs": "spherical aberration, mm",
    "amplitude_contrast": "amplitude contrast fraction",
    "defocus_min_A": "smallest defocus, Angstrom",
    "defocus_max_A": "largest defocus, Angstrom",
    "astigmatism_max_A": "largest astigmatism (defocus U - V), Angstrom",
    "bfactor_min": "smallest B-factor envelope, A^2",
    "bfactor_max": "largest B-factor envelope, A^2",
    "ice_gradient_every": "every k-th micrograph gets an ice-thickness gradient (0: none)",
    "ice_snr": "per-pixel SNR of a CTF-modulated amorphous-ice background that gives Thon rings (its variance / "
               "the white noise variance; 0: none)",
    "phase_shift": "phase-plate phase shift of every micrograph's CTF, degrees (0: none)",
}


_FLAGS = {"diameter_A": "--diameter"}  # the flag every stage names the particle diameter by


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, type=Path, help="output folder")
    for f in dataclasses.fields(SimulateParams):
        flag = _FLAGS.get(f.name, "--" + f.name.replace("_", "-"))
        helptext = f"{_FLAG_HELP[f.name]} (default {f.default})"
        p.add_argument(flag, dest=f.name, type=type(f.default), default=f.default, help=helptext)
    add_deprecated_alias(p, "--diameter-A", "--diameter", dest="diameter_A", type=float)


def configure(args: argparse.Namespace) -> tuple[SimulateParams, None]:
    return SimulateParams(**{f.name: getattr(args, f.name) for f in dataclasses.fields(SimulateParams)}), None
