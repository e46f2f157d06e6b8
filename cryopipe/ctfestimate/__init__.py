"""CTF estimation of micrographs after CTFFIND4 (Rohou and Grigorieff 2015): ``cryopipe ctf``."""

from cryopipe.ctfestimate.stage import (
                                        CtfEstimateInputs,
                                        CtfEstimateParams,
                                        CtfEstimator,
                                        CtfFit,
                                        CtfResult,
                                        estimate_micrographs,
                                        run,
)

__all__ = ["CtfEstimateInputs", "CtfEstimateParams", "CtfEstimator", "CtfFit", "CtfResult", "estimate_micrographs",
           "run"]
