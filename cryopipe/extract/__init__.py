"""Particle extraction (RELION-style boxing, Fourier downscaling, normalisation) and merging of particle STARs."""

from cryopipe.extract.stage import ExtractParams, ExtractResult, extract_particles, gather_particles

__all__ = ["ExtractParams", "ExtractResult", "extract_particles", "gather_particles"]
