"""Keep the particles of one 3D class and copy its map: the input of a gold-standard refinement."""

from __future__ import annotations

import logging
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from cryopipe.errors import InputError, require
from cryopipe.io.atomic import atomic_path
from cryopipe.io.star import read_particles, write_table
from cryopipe.stage import StageContext, StageResult

log = logging.getLogger(__name__)


@dataclass
class Select3DParams:
    """``chosen``: the class number to keep (1-based; 0: the most populated class)."""

    chosen: int = 0


@dataclass
class Select3DInputs:
    """class3d's data STAR (rlnImageName, rlnClassNumber) and its class maps (named ``...classKKK.mrc``)."""

    particles: Path
    maps: list[Path]


def _class_of_map(path: Path) -> int | None:
    m = re.search(r"class(\d{3})\.mrc$", path.name)
    return int(m.group(1)) if m else None


def run(params: Select3DParams, inputs: Select3DInputs, out: Path, ctx: StageContext) -> StageResult:
    """Write ``out/particles.star`` (the rows of the chosen class) and ``out/reference.mrc`` (a copy of that class's
    map, found among the maps by its ``classNNN.mrc`` name). Notes: chosen_class, particles, of."""
    data_star, maps, chosen, out = inputs.particles, inputs.maps, params.chosen, Path(out)
    table = read_particles(data_star, required=("rlnImageName", "rlnClassNumber"))
    counts = table["rlnClassNumber"].astype(int).value_counts()
    require(chosen >= 0, "must be >= 0 (0: the most populated class)", field="--class")
    k = chosen or int(counts.idxmax())
    if k not in counts.index:
        raise InputError(f"class {k} has no particles (classes present: {sorted(counts.index.tolist())})",
                         data_star, "rlnClassNumber")
    by_class = {_class_of_map(Path(m)): Path(m) for m in maps}
    if k not in by_class:
        raise InputError(f"no map named class{k:03d}.mrc among --maps", field="--maps")
    particles, reference = out / "particles.star", out / "reference.mrc"
    write_table(particles, table[table["rlnClassNumber"].astype(int) == k])
    with atomic_path(reference) as tmp:
        shutil.copyfile(by_class[k], tmp)
    log.info("class %d: %d of %d particles", k, int(counts[k]), len(table))
    return StageResult(files=[particles, reference], notes={"chosen_class": k, "particles": int(counts[k]),
                                                            "of": len(table)},
                       inputs=[Path(data_star), by_class[k]])
