"""2D classification by multi-reference alignment (Cryo-RALib): polar resampling, rotational correlation by FFT,
ring contraction as batched matrix products, exact MPI class sums; see :mod:`cryopipe.class2d.stage`."""

from cryopipe.class2d.align import Aligner, Alignment, shift_grid
from cryopipe.class2d.polar import PolarGrid, PolarSampler, transform_images
from cryopipe.class2d.stage import (
    Class2DInputs,
    Class2DParams,
    Class2DResult,
    ParticleStack,
    classify,
    load_particles,
    load_references,
    run,
    write_class2d,
)

__all__ = [
    "Aligner", "Alignment", "Class2DInputs", "Class2DParams", "Class2DResult", "ParticleStack", "PolarGrid",
    "PolarSampler", "classify", "load_particles", "load_references", "run", "shift_grid", "transform_images",
    "write_class2d",
]
