"""Class selection after 2D classification: keep the particles of listed or automatically good classes."""

from cryopipe.select2d.stage import Select2DInputs, SelectParams, run, select_classes

__all__ = ["SelectParams", "Select2DInputs", "run", "select_classes"]
