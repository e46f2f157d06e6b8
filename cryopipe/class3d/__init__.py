"""RELION-style 3D classification (``cryopipe class3d``): regularised-likelihood EM over K class maps."""

from cryopipe.class3d.run import Class3DParams, run_class3d

__all__ = ["Class3DParams", "run_class3d"]
