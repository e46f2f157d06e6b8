"""Gold-standard 3D auto-refinement (``cryopipe refine3d``): RELION's 3D auto-refine on the em3d E- and M-steps."""

from cryopipe.refine3d.stage import EMInputs, Refine3DParams, Refine3DResult, refine, run

__all__ = ["EMInputs", "Refine3DParams", "Refine3DResult", "refine", "run"]
