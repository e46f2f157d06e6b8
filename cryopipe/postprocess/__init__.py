"""Post-processing of gold-standard half-maps (``cryopipe postprocess``): solvent mask, mask-corrected FSC,
B-factor sharpening (RELION's relion_postprocess)."""

from cryopipe.postprocess.run import PostprocessParams, postprocess

__all__ = ["PostprocessParams", "postprocess"]
