"""Post-processing of gold-standard half-maps (``cryopipe postprocess``): solvent mask, mask-corrected FSC,
B-factor sharpening (RELION's relion_postprocess)."""

from cryopipe.postprocess.stage import PostprocessInputs, PostprocessParams, postprocess, run

__all__ = ["PostprocessInputs", "PostprocessParams", "postprocess", "run"]
