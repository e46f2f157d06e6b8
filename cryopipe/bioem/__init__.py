"""BioEM: Bayesian ranking of structural models against individual particle images.

Modules: :mod:`~cryopipe.bioem.likelihood` (closed form over normalisation, offset and noise),
:mod:`~cryopipe.bioem.forward` (model -> projections), :mod:`~cryopipe.bioem.integrate` (numerical
integration over orientations, CTF and displacements; MPI reduction), :mod:`~cryopipe.bioem.kernels` (GPU),
:mod:`~cryopipe.bioem.compat` (BioEM 2.1 formats and quirks), :mod:`~cryopipe.bioem.ranking` (model
ranking and ensemble weights), :mod:`~cryopipe.bioem.stage` (the stage: ``run(params, inputs, out, ctx)``, and its
steps as functions) and :mod:`~cryopipe.bioem.cli` (``cryopipe bioem``: flags to :class:`RankParams` and
:class:`BioEMInputs`).
"""
