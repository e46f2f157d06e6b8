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

log = logging.getLogger(__name__)


@dataclass
class Select3DResult:
    """The chosen class (1-based), its particle count of ``total``, and the files written."""

    chosen: int
    count: int
    total: int
    files: list[Path]


def _class_of_map(path: Path) -> int | None:
    m = re.search(r"class(\d{3})\.mrc$", path.name)
    return int(m.group(1)) if m else None


def select_class(data_star: Path, maps: list[Path], chosen: int, out: Path) -> Select3DResult:
    """Write ``out/particles.star`` (the rows of class ``chosen``; 0: the most populated) and ``out/reference.mrc``
    (a copy of that class's map, found among ``maps`` by its ``classNNN.mrc`` name)."""
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
    return Select3DResult(k, int(counts[k]), len(table), [particles, reference])
