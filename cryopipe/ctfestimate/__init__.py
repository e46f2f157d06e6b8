"""CTF estimation of micrographs after CTFFIND4 (Rohou and Grigorieff 2015): ``cryopipe ctf``."""

from cryopipe.ctfestimate.stage import CtfEstimateParams, CtfEstimator, CtfFit, CtfResult, estimate_micrographs

__all__ = ["CtfEstimateParams", "CtfEstimator", "CtfFit", "CtfResult", "estimate_micrographs"]
