"""``cryopipe initial-model``: K maps from the particles alone, by stochastic minibatch EM from random starts."""
