"""RELION-style 3D classification (``cryopipe class3d``): regularised-likelihood EM over K class maps."""

from cryopipe.class3d.stage import Class3DParams, Class3DResult, EMInputs, classify, run

__all__ = ["Class3DParams", "Class3DResult", "EMInputs", "classify", "run"]
