"""``cryopipe simulate``: generate the demo dataset (models, maps, micrographs, ground truth)."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from cryopipe.cli import add_deprecated_alias
from cryopipe.simulate.micrographs import HARD_CONDITIONS, SimulateParams
from cryopipe.simulate.stage import run

__all__ = ["HELP", "add_arguments", "configure", "run"]

HELP = "simulate the demo dataset: a two-conformation test complex, micrographs with CTF and noise, ground truth"

_FLAG_HELP = {
    "seed": "random seed (the dataset is a deterministic function of it)",
    "micrographs": "number of micrographs",
    "size_px": "micrograph size in pixels (square; the width when --height-px is set)",
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
    "height_px": "micrograph height (rows) in pixels for rectangular micrographs, --size-px being the width "
                 "(0: square)",
    "coverage": "crowding: place particles (touching allowed) until their circles cover this fraction of the "
                "accessible area, overriding --particles-per-micrograph (0: off; at most 0.5)",
    "carbon": "fraction of each micrograph covered by a carbon film beyond a curved edge: darker by 0.5 noise s.d., "
              "with its own texture; no true particles on it (0: none)",
    "contaminants": "ice contaminants per micrograph: dark or bright blobs 1.5-4 particle diameters across, no true "
                    "particles under them",
    "aggregates": "aggregates per micrograph: clumps of 5-12 overlapping particles, not true particles (excluded)",
    "denoised": "1: write the 'denoised' export: Gaussian low-pass (5 A) and 256 levels (0.1/99.9 percentiles) "
                "stored as float32 (0: raw micrographs)",
    "molecule": "the particle: complex (the demo), ferritin (hollow 24-mer cage) or rod (elongated helix, 3:1)",
    "ice_gradient_sd": "strength of the ice gradient: change across the micrograph's width, noise s.d.",
}


_FLAGS = {"diameter_A": "--diameter"}  # the flag every stage names the particle diameter by


_GIVEN = "_given_fields"  # namespace attribute: the SimulateParams fields whose flags were on the command line


class _Given(argparse.Action):
    """Store a flag's value and note its field as given, so that it overrides a --preset's value."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        setattr(namespace, _GIVEN, tuple(sorted({*getattr(namespace, _GIVEN, ()), self.dest})))  # JSON-friendly


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--preset", choices=sorted(HARD_CONDITIONS), default=None,
                   help="start from a hard-mode test condition (cryopipe.simulate.micrographs.HARD_CONDITIONS: small "
                        "micrographs, one difficulty each); flags given as well override its values")
    for f in dataclasses.fields(SimulateParams):
        flag = _FLAGS.get(f.name, "--" + f.name.replace("_", "-"))
        helptext = f"{_FLAG_HELP[f.name]} (default {f.default})"
        p.add_argument(flag, dest=f.name, type=type(f.default), default=f.default, action=_Given, help=helptext)
    add_deprecated_alias(p, "--diameter-A", "--diameter", dest="diameter_A", type=float)


def configure(args: argparse.Namespace) -> tuple[SimulateParams, None]:
    """SimulateParams from the flags: the defaults, or a --preset's values, overridden by the flags given (a value
    that differs from its default counts as given, e.g. one set through the deprecated --diameter-A)."""
    fields = dataclasses.fields(SimulateParams)
    values = {f.name: getattr(args, f.name) for f in fields}
    if getattr(args, "preset", None) is not None:
        given = set(getattr(args, _GIVEN, ())) | {f.name for f in fields if values[f.name] != f.default}
        values.update({k: v for k, v in HARD_CONDITIONS[args.preset].items() if k not in given})
    return SimulateParams(**values), None
