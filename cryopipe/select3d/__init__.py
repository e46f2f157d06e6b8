"""Class selection after 3D classification: the particles of one 3D class and that class's map."""

from cryopipe.select3d.stage import Select3DInputs, Select3DParams, run

__all__ = ["Select3DInputs", "Select3DParams", "run"]
