"""Particle extraction (RELION-style boxing, Fourier downscaling, normalisation) and merging of particle STARs."""

from cryopipe.extract.stage import ExtractInputs, ExtractParams, ExtractResult, extract_particles, gather_particles, run

__all__ = ["ExtractInputs", "ExtractParams", "ExtractResult", "extract_particles", "gather_particles", "run"]
