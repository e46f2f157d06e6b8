"""Picking accuracy on real micrographs with annotated particle centres: F1 at the defaults beside the best fixed
threshold, with blob templates (no reference) or templates from a stack (e.g. class averages).

The micrographs may be MRC or an image format (PNG, JPEG, TIFF, 8 or 16 bit: how annotated sets are published);
the annotations are one CSV or STAR per micrograph, matched by file stem, whose first two numeric columns (or
``rlnCoordinateX/Y``) are the particle centres in pixels of the image (x = column, y = row). No third-party data
ship with the project: point the script at a copy of your own.

    python benchmarks/pick_real.py --images 'bgal/*.jpg' --coords bgal_coords/ --angpix 1.77 --diameter 190
    python benchmarks/pick_real.py ... --sweep-geometry      # mask and distance factors around the defaults

A pick matches an annotated centre within ``--match`` diameters (one to one, :func:`cryopipe.pick.evaluate.score`).
Annotated particles whose box would leave the micrograph are not counted (no picker extracts them); the header
says how many that drops. ``--picks STAR`` scores picks made earlier (a pick stage's picks.star, e.g. of the
workflow's class-average round) instead of picking.
"""

from __future__ import annotations

import argparse
import glob
import time
from pathlib import Path

import numpy as np
import pandas as pd
from common import banner, markdown_table

from cryopipe.backend import get_backend
from cryopipe.io.mrc import read_mrc
from cryopipe.io.star import read_table
from cryopipe.pick import Picker, PickParams
from cryopipe.pick.evaluate import evaluate, score_picks
from cryopipe.pick.stage import DISTANCE_FACTOR, MASK_FACTOR
from cryopipe.pick.templates import TemplateStack, blob_templates


def read_image(path: Path) -> np.ndarray:
    """(H, W) float32 of an MRC or an image file (rows from the top, as the annotations are)."""
    if path.suffix.lower() in (".mrc", ".mrcs"):
        return np.asarray(read_mrc(path)[0], dtype=np.float32)
    from PIL import Image

    with Image.open(path) as im:
        data = np.asarray(im)
    return (data.mean(axis=-1) if data.ndim == 3 else data).astype(np.float32)


def read_centres(path: Path) -> np.ndarray:
    """(T, 2) x, y centres from a CSV (lines starting with # skipped) or a STAR."""
    table = read_table(path) if path.suffix == ".star" else pd.read_csv(path, comment="#")
    if {"rlnCoordinateX", "rlnCoordinateY"} <= set(table.columns):
        return table[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy(float)
    numeric = table.select_dtypes("number")
    return numeric.iloc[:, :2].to_numpy(float)


def dataset(images: str, coords: Path, limit: int | None) -> tuple[list[tuple], list[Path]]:
    """What :func:`evaluate` takes, (image, centres, None, None) for each image with an annotation file, and the
    images' paths."""
    files = {p.stem: p for p in coords.iterdir() if p.suffix in (".csv", ".star")}
    items, paths = [], []
    for path in sorted(Path(p) for p in glob.glob(images)):
        # the annotation's stem is the image's, or begins with it ("mic.bin" -> "mic.bin_avg.csv")
        match = [s for s in files if s == path.stem or s.startswith(path.stem)]
        if len(match) == 1:
            items.append((read_image(path), read_centres(files[match[0]]), None, None))
            paths.append(path)
    if not items:
        raise SystemExit(f"no image of {images} has an annotation file in {coords}")
    return items[:limit], paths[:limit]


def inside(items: list[tuple], margin_px: float) -> list[tuple]:
    """``items`` with the annotated centres closer than ``margin_px`` to an edge dropped."""
    out = []
    for image, xy, excluded, ctf in items:
        (H, W), x, y = image.shape, xy[:, 0], xy[:, 1]
        keep = (x >= margin_px) & (x <= W - 1 - margin_px) & (y >= margin_px) & (y <= H - 1 - margin_px)
        out.append((image, xy[keep], excluded, ctf))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", required=True, help="glob of the micrographs")
    parser.add_argument("--coords", type=Path, required=True, help="folder of one CSV or STAR per micrograph")
    parser.add_argument("--angpix", type=float, required=True, help="pixel size of the images, A/px")
    parser.add_argument("--diameter", type=float, required=True, help="particle diameter, A")
    parser.add_argument("--blob", default="disc", choices=["disc", "ring"])
    parser.add_argument("--templates", type=Path, help="an MRCS of templates (white protein) instead of blobs")
    parser.add_argument("--no-invert", action="store_true", help="the particles are bright in the images")
    parser.add_argument("--reject-sigmas", type=float, default=PickParams.reject_sigmas,
                        help="artefact rejection (default: the picker's); 0: off")
    parser.add_argument("--match", type=float, default=0.3, help="match radius in diameters (default 0.3)")
    parser.add_argument("--limit", type=int, help="at most this many micrographs")
    parser.add_argument("--sweep-geometry", action="store_true",
                        help="also mask factors 1.0-1.4 and distance factors 0.6-1.0 of the diameter")
    parser.add_argument("--picks", type=Path, help="score these picks instead (a picks STAR: rlnMicrographName, "
                        "rlnCoordinateX/Y)")
    parser.add_argument("--label", default="", help="dataset name for the table")
    parser.add_argument("--device", default="cpu", choices=["cpu", "gpu", "auto"])
    args = parser.parse_args(argv)
    bk = get_backend(args.device)
    items, paths = dataset(args.images, args.coords, args.limit)
    print(banner("pick accuracy on real annotated micrographs", bk.name))
    shape = items[0][0].shape
    annotated = sum(len(i[1]) for i in items)
    if args.templates:
        stack = TemplateStack(*read_mrc(args.templates)[:2])
        mode = f"templates {args.templates.name}"
    else:
        stack = blob_templates(args.diameter, args.angpix, args.blob)
        mode = f"blob {args.blob}"
    margin = Picker(stack, args.angpix, PickParams(diameter_A=args.diameter), bk).margin_px
    items = inside(items, margin)
    n_true = sum(len(i[1]) for i in items)
    radius = args.match * args.diameter / args.angpix
    print(f"{args.label or args.images}: {len(items)} micrographs of {shape[1]} x {shape[0]} px at {args.angpix} A/px, "
          f"{annotated} annotated particles, {n_true} with their box inside, diameter {args.diameter} A, match "
          f"within {args.match} diameters")
    if args.picks:
        truth = {str(path): xy for path, (_, xy, _, _) in zip(paths, items, strict=True)}
        total = score_picks(read_table(args.picks), truth, radius)
        print(f"picks in {args.picks}: {total.picks}, precision {total.precision:.3f}, recall {total.recall:.3f}, "
              f"F1 {total.f1:.3f}")
        return 0
    geometries = [(MASK_FACTOR, DISTANCE_FACTOR)]
    if args.sweep_geometry:
        geometries += [(m, d) for m in (1.0, 1.2, 1.4) for d in (0.6, 0.8, 1.0) if (m, d) != geometries[0]]
    rows = []
    for mask, distance in geometries:
        params = PickParams(diameter_A=args.diameter, mask_diameter_A=mask * args.diameter,
                            min_distance_A=distance * args.diameter, invert=not args.no_invert,
                            reject_sigmas=args.reject_sigmas or None,
                            blob=None if args.templates else args.blob)
        t0 = time.perf_counter()
        ev = evaluate(Picker(stack, args.angpix, params, bk), items, radius)
        d, b = ev.default, ev.best
        rows.append([mode, f"{mask:g}", f"{distance:g}", n_true, d.picks, f"{d.precision:.3f}", f"{d.recall:.3f}",
                     f"{d.f1:.3f}", f"{ev.best_threshold:.2f}", f"{b.precision:.3f}", f"{b.recall:.3f}",
                     f"{b.f1:.3f}", f"{d.f1 - b.f1:+.3f}", f"{time.perf_counter() - t0:.1f}"])
        print(markdown_table(["templates", "mask / d", "distance / d", "true", "picks", "precision", "recall",
                              "F1 default", "best t", "best precision", "best recall", "F1 best", "default - best",
                              "s"], rows[-1:]), flush=True)
    print()
    print(markdown_table(["templates", "mask / d", "distance / d", "true", "picks", "precision", "recall",
                          "F1 default", "best t", "best precision", "best recall", "F1 best", "default - best", "s"],
                         rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
