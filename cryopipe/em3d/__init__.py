"""Shared expectation-maximisation machinery of 3D classification and auto-refinement (RELION's algorithm).

:mod:`~cryopipe.em3d.sampling` (orientations, translations, oversampling), :mod:`~cryopipe.em3d.particles`
(data), :mod:`~cryopipe.em3d.estep` (E-step as matrix products, back-projection sums),
:mod:`~cryopipe.em3d.mstep` (reconstruction and model updates), :mod:`~cryopipe.em3d.model` (state and
checkpoints), :mod:`~cryopipe.em3d.runner` (per-particle bookkeeping shared by the stages),
:mod:`~cryopipe.em3d.driver` (what every driver does around its iterations: parameters, --continue, initial model;
class3d and refine3d are drivers over it), :mod:`~cryopipe.em3d.gold` (gold-standard halves and auto-sampling),
:mod:`~cryopipe.em3d.report` (figures), :mod:`~cryopipe.em3d.synthetic` (simulated particle stacks with ground
truth).
"""
