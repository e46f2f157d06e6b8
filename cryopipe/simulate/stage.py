"""``cryopipe simulate`` as a stage: the demo dataset is a deterministic function of its parameters (no inputs)."""

from __future__ import annotations

from pathlib import Path

from cryopipe.simulate.micrographs import SimulateParams, simulate_dataset
from cryopipe.stage import StageContext, StageResult


def run(params: SimulateParams, inputs: None, out: Path, ctx: StageContext) -> StageResult:
    """Write the dataset (models, maps, micrographs, their CTF STAR and the ground truth) into ``out``; file names
    inside the STAR files point at ``ctx.final(out)``. Notes: micrographs."""
    written = simulate_dataset(params, out, names_root=ctx.final(out))
    return StageResult(files=written, notes={"micrographs": params.micrographs}, inputs=[])
