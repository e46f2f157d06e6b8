"""Map-to-map alignment: rotation, shift and hand of one map onto another, with their FSC."""

from cryopipe.alignmaps.stage import AlignMapsInputs, AlignMapsParams, read_pair, run

__all__ = ["AlignMapsInputs", "AlignMapsParams", "read_pair", "run"]
