"""Gold-standard 3D auto-refinement (``cryopipe refine3d``): RELION's 3D auto-refine on the em3d E- and M-steps."""

from cryopipe.refine3d.run import Refine3DParams, run_refine3d

__all__ = ["Refine3DParams", "run_refine3d"]
