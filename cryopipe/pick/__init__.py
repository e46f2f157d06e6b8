"""Template particle picking by FFT locally normalised cross-correlation (gEMpicker, RELION-2 autopick).

Public API: :class:`PickParams`, :class:`Picker` (one micrograph at a time), :func:`pick_micrographs` (a batch,
with producer thread and MPI), :func:`load_templates`, :func:`project_reference`, :class:`TemplateStack`.
"""

from cryopipe.pick.stage import Micrograph, Picker, PickParams, PickResult, list_micrographs, pick_micrographs
from cryopipe.pick.templates import TemplateStack, load_templates, project_reference

__all__ = [
    "Micrograph", "PickParams", "PickResult", "Picker", "TemplateStack", "list_micrographs", "load_templates",
    "pick_micrographs", "project_reference",
]
