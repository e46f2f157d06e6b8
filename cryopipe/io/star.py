"""RELION 3.1+ STAR files via starfile.

Particles and micrographs come with a ``data_optics`` block; :func:`read_particles`
joins each row with its optics group so callers see one flat table (pandas) with
the standard ``rln*`` columns. :func:`write_star` writes both blocks back,
atomically.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
import starfile

from cryopipe.errors import InputError
from cryopipe.io.atomic import atomic_path

OPTICS_COLUMNS = (
    "rlnOpticsGroupName",
    "rlnImagePixelSize",
    "rlnMicrographPixelSize",
    "rlnMicrographOriginalPixelSize",
    "rlnVoltage",
    "rlnSphericalAberration",
    "rlnAmplitudeContrast",
    "rlnImageSize",
    "rlnImageDimensionality",
    "rlnCtfDataAreCtfPremultiplied",
)

# RELION's value for a resolution that was not estimated (rlnEstimatedResolution of an empty class, or of a class
# whose FRC is below its threshold from the lowest frequency on); a reader must treat it (and anything above it) as
# "unknown", never as a number of Angstrom that enters statistics. (rlnAngstromResolution 999 at shell 0 of a
# per-shell table is RELION's too: the DC shell has no resolution.)
UNKNOWN_RESOLUTION_A = 999.0


def read_star(path: str | os.PathLike) -> dict[str, pd.DataFrame]:
    """All data blocks of a STAR file as {block name: DataFrame}; a missing or unreadable file is an InputError."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise InputError("file not found", path)
    try:
        blocks = starfile.read(path, always_dict=True)
    except Exception as exc:  # starfile raises assorted parser errors
        raise InputError(f"not a readable STAR file ({exc})", path) from None
    if not blocks:
        raise InputError("STAR file holds no data block", path)
    return {name: (df if isinstance(df, pd.DataFrame) else pd.DataFrame([df])) for name, df in blocks.items()}


def _main_block(blocks: dict[str, pd.DataFrame], path: str, preferred: Iterable[str]) -> pd.DataFrame:
    for name in preferred:
        if name in blocks:
            return blocks[name]
    others = [n for n in blocks if n != "optics"]
    if len(others) == 1:
        return blocks[others[0]]
    raise InputError(f"no data block among {list(preferred)} (found {list(blocks)})", path, "data_")


def read_table(
    path: str | os.PathLike,
    kind: str = "particles",
    required: Iterable[str] = (),
) -> pd.DataFrame:
    """Read ``data_<kind>`` joined with ``data_optics`` into one flat table.

    Parameters
    ----------
    kind : "particles" or "micrographs".
    required : columns that must exist (after the optics join); a missing one is an
        InputError naming the file and the column.
    """
    path = os.fspath(path)
    blocks = read_star(path)
    table = _main_block(blocks, path, [kind, ""]).copy()
    optics = blocks.get("optics")
    if optics is not None and "rlnOpticsGroup" in table.columns and "rlnOpticsGroup" in optics.columns:
        unknown = set(table["rlnOpticsGroup"]) - set(optics["rlnOpticsGroup"])
        if unknown:
            raise InputError(f"optics group(s) {sorted(unknown)} not in data_optics", path, "rlnOpticsGroup")
        extra = [c for c in optics.columns if c not in table.columns or c == "rlnOpticsGroup"]
        table = table.merge(optics[extra], on="rlnOpticsGroup", how="left", sort=False)
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise InputError(f"required column {missing[0]} missing", path, missing[0])
    for col in table.columns:
        if table[col].dtype.kind == "f" and not np.isfinite(table[col].to_numpy()).all():
            raise InputError("NaN or Inf value", path, col)
    return table


def read_particles(path: str | os.PathLike, required: Iterable[str] = ("rlnImageName",)) -> pd.DataFrame:
    """Particles joined with their optics group (see :func:`read_table`)."""
    return read_table(path, "particles", required)


def split_optics(table: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split a flat table into (optics, rows) for writing; rows keep only per-row columns."""
    if "rlnOpticsGroup" not in table.columns:
        table = table.assign(rlnOpticsGroup=1)
    optics_cols = ["rlnOpticsGroup"] + [c for c in OPTICS_COLUMNS if c in table.columns]
    optics = table[optics_cols].drop_duplicates("rlnOpticsGroup").reset_index(drop=True)
    if "rlnOpticsGroupName" not in optics.columns:
        optics.insert(1, "rlnOpticsGroupName", [f"opticsGroup{g}" for g in optics["rlnOpticsGroup"]])
    rows = table[[c for c in table.columns if c not in optics_cols[1:]]]
    return optics, rows.reset_index(drop=True)


def write_star(path: str | os.PathLike, blocks: dict[str, pd.DataFrame]) -> None:
    """Write {block name: DataFrame} atomically (block 'optics' first if present)."""
    ordered = dict(sorted(blocks.items(), key=lambda kv: kv[0] != "optics"))
    with atomic_path(path) as tmp:
        starfile.write(ordered, tmp, overwrite=True)


def write_table(path: str | os.PathLike, table: pd.DataFrame, kind: str = "particles") -> None:
    """Write a flat table as RELION 3.1+ STAR: ``data_optics`` + ``data_<kind>``."""
    optics, rows = split_optics(table)
    write_star(path, {"optics": optics, kind: rows})


def parse_image_name(names: pd.Series, star_path: str | os.PathLike) -> tuple[np.ndarray, list[str]]:
    """Split RELION ``index@stack`` names into 0-based indices and stack paths.

    Relative stack paths are resolved against the STAR file's folder when they do
    not exist relative to the working directory (as RELION project folders do).
    """
    base = Path(star_path).parent
    indices = np.empty(len(names), dtype=np.int64)
    stacks: list[str] = []
    for k, name in enumerate(names.astype(str)):
        if "@" not in name:
            raise InputError(f"image name {name!r} is not of the form index@stack", star_path, "rlnImageName")
        idx, stack = name.split("@", 1)
        if not idx.isdigit() or int(idx) < 1:
            raise InputError(f"image index in {name!r} must be a positive integer", star_path, "rlnImageName")
        indices[k] = int(idx) - 1
        if not os.path.isabs(stack) and not os.path.exists(stack) and (base / stack).exists():
            stack = str(base / stack)
        stacks.append(stack)
    return indices, stacks


def portable_image_names(names: pd.Series, star_path: str | os.PathLike, stacks: list[str] | None = None) -> list[str]:
    """The image names ``names`` (``index@stack``) of the STAR file ``star_path`` as a STAR file written into another
    folder must give them.

    RELION resolves a relative stack path against the working directory (the project folder), so a name whose stack
    is absolute or exists from the working directory is kept exactly as the input gives it (relative stays relative,
    the index keeps its digits). Only a name that resolves against ``star_path``'s folder instead (the fallback of
    :func:`parse_image_name`, which RELION does not have) is rewritten to that path, normalised: relative to the
    working directory when ``star_path`` is relative, absolute when it is absolute. The index text is kept.
    ``stacks``: the stacks :func:`parse_image_name` resolved for ``names``, when the caller has them.
    """
    if stacks is None:
        _, stacks = parse_image_name(names, star_path)
    out = []
    for name, stack in zip(names.astype(str), stacks, strict=True):
        index, given = name.split("@", 1)
        out.append(name if stack == given else f"{index}@{os.path.normpath(stack)}")
    return out


def match_names(names, candidates) -> dict[str, int | None]:
    """Index into ``candidates`` (e.g. a CTF STAR's rlnMicrographName) of each of ``names``: the same string, else
    the same absolute path, else the same file name when only one candidate has it; None when none matches."""
    def key(name: str) -> str:
        return os.path.normpath(os.path.abspath(name))

    candidates = [str(c) for c in candidates]
    exact = {n: i for i, n in enumerate(candidates)}
    absolute = {key(n): i for i, n in enumerate(candidates)}
    by_file: dict[str, list[int]] = {}
    for i, n in enumerate(candidates):
        by_file.setdefault(os.path.basename(n), []).append(i)
    out = {}
    for n in names:
        same_file = by_file.get(os.path.basename(n), [])
        out[n] = exact.get(n, absolute.get(key(n), same_file[0] if len(same_file) == 1 else None))
    return out
