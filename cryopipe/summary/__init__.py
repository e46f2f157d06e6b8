"""``cryopipe summary``: one page of a finished run's results and costs, from the stages' provenance records."""
