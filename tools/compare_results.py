"""Compare two results folders file by file: did a change of code (or of machine) change any result?

    python tools/compare_results.py A/results B/results [--rtol 1e-5] [--rename /old/project=/new/project]

Prints one line per file: ``identical`` (same bytes), ``equal`` (same numbers: MRC data and voxel size, STAR
tables cell by cell; only e.g. starfile's time-stamp comment differs), ``close`` (numbers within ``--rtol`` of
the largest magnitude), ``DIFFERENT`` (with the first differing block, column and row), or ``figure`` (PNGs differ
as bytes; not compared). ``--rename OLD=NEW`` replaces OLD by NEW in A's text fields first (absolute paths of two
runs in different folders). ``provenance.json``,
logs and lock/mark files are skipped: they name hosts, times and checksums by design. Exit status 0 when every
file is identical, equal, close or a figure and both folders hold the same files; 1 otherwise.
"""

from __future__ import annotations

import argparse
import filecmp
import sys
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import starfile

SKIP_NAMES = {"provenance.json", ".cryopipe.lock", ".cryopipe.published"}
SKIP_DIRS = {"logs", ".snakemake"}


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")
            if p.is_file() and p.name not in SKIP_NAMES and not SKIP_DIRS & set(p.relative_to(root).parts)}


def _array_status(a: np.ndarray, b: np.ndarray, rtol: float) -> tuple[str, float]:
    if a.shape != b.shape:
        return "DIFFERENT", float("inf")
    if np.array_equal(a, b, equal_nan=True):
        return "equal", 0.0
    diff = float(np.nanmax(np.abs(a.astype(np.float64) - b.astype(np.float64))))
    scale = float(np.nanmax(np.abs(a))) or 1.0
    return ("close" if diff <= rtol * scale else "DIFFERENT"), diff


def _compare_mrc(a: Path, b: Path, rtol: float) -> tuple[str, float]:
    with mrcfile.mmap(a, permissive=True) as ma, mrcfile.mmap(b, permissive=True) as mb:
        if ma.voxel_size != mb.voxel_size:
            return "DIFFERENT", float("inf")
        return _array_status(np.asarray(ma.data), np.asarray(mb.data), rtol)


def _compare_star(a: Path, b: Path, rtol: float, rename: tuple[str, str] | None) -> tuple[str, float]:
    ta, tb = starfile.read(a, always_dict=True), starfile.read(b, always_dict=True)
    if list(ta) != list(tb):
        return "DIFFERENT", float("inf")
    worst, status = 0.0, "equal"
    for name in ta:
        da, db = (pd.DataFrame([t[name]]) if isinstance(t[name], dict) else pd.DataFrame(t[name]) for t in (ta, tb))
        if list(da.columns) != list(db.columns) or len(da) != len(db):
            return "DIFFERENT", float("inf")
        for column in da.columns:
            x, y = da[column], db[column]
            if pd.api.types.is_numeric_dtype(x) and pd.api.types.is_numeric_dtype(y):
                s, d = _array_status(x.to_numpy(), y.to_numpy(), rtol)
                worst = max(worst, d)
                if s == "DIFFERENT":
                    return f"DIFFERENT: data_{name} {column}", worst
                if s == "close":
                    status = "close"
            else:
                x = x.astype(str).str.replace(*rename, regex=False) if rename else x.astype(str)
                if x.equals(y.astype(str)):
                    continue
                first = int(np.flatnonzero(x.to_numpy() != y.astype(str).to_numpy())[0])
                return f"DIFFERENT: data_{name} {column} row {first}: {x.iloc[first]!r} vs {y.iloc[first]!r}", \
                    float("inf")
    return status, worst


def compare(a_root: Path, b_root: Path, rtol: float, rename: tuple[str, str] | None = None
            ) -> list[tuple[str, str, float]]:
    """(relative path, status, largest absolute difference) for every file of either folder."""
    fa, fb = _files(a_root), _files(b_root)
    rows = [(f, "only in A", float("nan")) for f in sorted(fa - fb)]
    rows += [(f, "only in B", float("nan")) for f in sorted(fb - fa)]
    for f in sorted(fa & fb):
        a, b = a_root / f, b_root / f
        if filecmp.cmp(a, b, shallow=False):
            rows.append((f, "identical", 0.0))
        elif a.suffix in (".mrc", ".mrcs", ".ctf"):
            rows.append((f, *_compare_mrc(a, b, rtol)))
        elif a.suffix == ".star":
            rows.append((f, *_compare_star(a, b, rtol, rename)))
        elif a.suffix == ".png":
            rows.append((f, "figure", float("nan")))
        else:
            rows.append((f, "DIFFERENT", float("nan")))
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a", type=Path)
    ap.add_argument("b", type=Path)
    ap.add_argument("--rtol", type=float, default=1e-5, help="'close': |a - b| <= rtol x max |a| (default 1e-5)")
    ap.add_argument("--quiet", action="store_true", help="print only files that are not identical")
    ap.add_argument("--rename", metavar="OLD=NEW", help="replace OLD by NEW in A's STAR text fields first")
    args = ap.parse_args(argv)
    rows = compare(args.a, args.b, args.rtol, tuple(args.rename.split("=", 1)) if args.rename else None)
    width = max((len(f) for f, _, _ in rows), default=4)
    counts: dict[str, int] = {}
    for f, status, diff in rows:
        kind = status.split(":")[0]
        counts[kind] = counts.get(kind, 0) + 1
        if not (args.quiet and status == "identical"):
            print(f"{f:<{width}}  {status:<10}  {'' if np.isnan(diff) else f'max |diff| {diff:.3g}'}")
    print("summary: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    return 1 if any(s.startswith(("DIFFERENT", "only in")) for s in counts) else 0


if __name__ == "__main__":
    sys.exit(main())
