"""Class selection after 3D classification: the particles of one 3D class and that class's map."""

from cryopipe.select3d.stage import Select3DResult, select_class

__all__ = ["Select3DResult", "select_class"]
