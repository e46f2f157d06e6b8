"""Class selection after 2D classification: keep the particles of listed or automatically good classes."""

from cryopipe.select2d.stage import SelectParams, run_select2d, select_classes

__all__ = ["SelectParams", "run_select2d", "select_classes"]
