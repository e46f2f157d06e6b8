"""Particle extraction as RELION's ``relion_preprocess --extract``, and merging of per-batch particle STARs.

Per particle: a ``box`` x ``box`` window centred on the rounded coordinate (coordinate at pixel box//2),
optionally Fourier-cropped to ``out_box`` (downscaling), normalised so that the background (pixels farther
than ``bg_radius`` from the centre) has mean 0 and s.d. 1, and optionally contrast-inverted. Particles whose
box leaves the micrograph are skipped (counted and logged), as RELION does.

Outputs: ``<out>/Particles/<micrograph stem>.mrcs`` (one stack per micrograph) and ``<out>/particles.star``
(RELION 3.1: ``data_optics`` with rlnImagePixelSize, rlnImageSize, rlnImageDimensionality = 2 and the CTF
STAR's voltage, Cs, amplitude contrast; ``data_particles`` with rlnImageName = ``NNNNNN@<stack>`` (1-based),
rlnMicrographName, rlnCoordinateX/Y, the picks' other columns and the micrograph's CTF columns).

Empty data: no particle at all (an empty picks file, or every pick too close to an edge) is an InputError naming
the picks file. A micrograph without picks is a logged warning; so is a batch (``mics``) that yields no particle
while the picks file holds picks of other micrographs: it writes a ``particles.star`` with the batch's
``data_optics`` and an empty ``data_particles``, which :func:`gather_particles` skips.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from cryopipe.errors import InputError, require
from cryopipe.fourier import fourier_crop, normalise_background
from cryopipe.io.mrc import UNSET_PIXEL_SIZES, check_pixel_size, read_mrc, read_mrc_header, write_mrc
from cryopipe.io.star import OPTICS_COLUMNS, match_names, parse_image_name, read_star, read_table, write_star
from cryopipe.pick.stage import Micrograph, list_micrographs
from cryopipe.progress import PERIOD_S, Progress, format_duration
from cryopipe.stage import StageContext, StageResult

log = logging.getLogger(__name__)

CTF_REQUIRED = ["rlnMicrographName", "rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnVoltage",
                "rlnSphericalAberration", "rlnAmplitudeContrast"]
CTF_PREFIXES = ("rlnDefocus", "rlnCtf", "rlnPhaseShift")  # per-micrograph CTF columns copied to each particle
OPTICS_COPY = ["rlnOpticsGroupName", "rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast"]


@dataclass
class ExtractParams:
    """box_px : window in micrograph pixels (even). out_box_px : Fourier-cropped box (even, <= box; None: box).
    bin_factor : alternative to out_box_px, out_box = box / bin (rounded to even). invert : flip contrast
    (dark-protein micrographs -> white particles, RELION's usual choice). bg_radius_px : background radius in
    output pixels (None: 0.375 * out_box, RELION's default). normalise : RELION normalisation (default on).
    max_ctf_resolution_A : drop micrographs whose Thon rings were fitted only to a worse resolution
    (rlnCtfMaxResolution above it, Angstrom) or that CTF estimation flagged (cpCtfFlagged = 1); None: keep all.
    angpix : micrograph pixel size, A/px (None: the CTF STAR's optics, else the MRC header). ``box_px`` is
    required to extract (not to gather)."""

    box_px: int | None = None
    out_box_px: int | None = None
    bin_factor: float | None = None
    invert: bool = True
    bg_radius_px: float | None = None
    normalise: bool = True
    max_ctf_resolution_A: float | None = None
    angpix: float | None = None

    @property
    def out_box(self) -> int:
        if self.out_box_px:
            return int(self.out_box_px)
        if self.bin_factor:
            return max(2, 2 * int(round(self.box_px / self.bin_factor / 2)))
        return int(self.box_px)

    @property
    def bg_radius(self) -> float:
        return self.bg_radius_px if self.bg_radius_px is not None else 0.375 * self.out_box

    def validate(self) -> None:
        require(self.box_px >= 2 and self.box_px % 2 == 0, f"box must be even and >= 2, got {self.box_px}",
                field="--box")
        require(not (self.out_box_px and self.bin_factor), "give --out-box or --bin, not both", field="--bin")
        require(self.bin_factor is None or self.bin_factor >= 1, "must be >= 1", field="--bin")
        ob = self.out_box
        require(2 <= ob <= self.box_px and ob % 2 == 0, f"output box must be even and <= {self.box_px}, got {ob}",
                field="--out-box")
        require(0 < self.bg_radius < ob / 2 * np.sqrt(2), f"background radius {self.bg_radius} px leaves no "
                f"background in a {ob} px box", field="--bg-radius")


def extract_windows(image: np.ndarray, x, y, box: int) -> tuple[np.ndarray, np.ndarray]:
    """Boxes (n, box, box) centred on the rounded (x, y) (at pixel box//2) and the (n,) mask of those inside."""
    H, W = image.shape
    x0 = np.rint(np.asarray(x, float)).astype(np.int64) - box // 2
    y0 = np.rint(np.asarray(y, float)).astype(np.int64) - box // 2
    inside = (x0 >= 0) & (y0 >= 0) & (x0 + box <= W) & (y0 + box <= H)
    r = np.arange(box)
    stack = image[y0[inside, None, None] + r[None, :, None], x0[inside, None, None] + r[None, None, :]]
    return stack.astype(np.float32, copy=False), inside


def process_particles(stack: np.ndarray, params: ExtractParams, bk) -> np.ndarray:
    """Downscale, normalise and invert boxes (n, box, box) on the device; returns (n, out_box, out_box) float32."""
    out = np.empty((len(stack), params.out_box, params.out_box), dtype=np.float32)
    chunk = bk.batch_size(stack.shape[-1] ** 2 * 4 * 8, fraction=0.25, cap=1024)
    for k in range(0, len(stack), chunk):
        x = bk.asarray(stack[k : k + chunk], dtype=bk.xp.float32)
        if params.out_box != stack.shape[-1]:
            x = fourier_crop(x, params.out_box)
        if params.normalise:
            x = normalise_background(x, params.bg_radius)
        if params.invert:
            x = -x
        out[k : k + chunk] = bk.asnumpy(x)
    return out


@dataclass
class ExtractInputs:
    """To extract: ``picks`` (picks STAR), optionally ``ctf`` (micrographs CTF STAR; None: particles without CTF
    parameters, for data whose CTF is unknown, e.g. denoised exports) and the ``micrographs`` of this
    batch (files, glob patterns or a STAR; None: every micrograph in ``picks``). To gather instead: ``gather``,
    the per-batch particle STARs to merge."""

    picks: Path | None = None
    ctf: Path | None = None
    micrographs: list[str] | None = None
    gather: list[Path] | None = None


def run(params: ExtractParams, inputs: ExtractInputs, out: Path, ctx: StageContext) -> StageResult:
    """Extract a batch (:func:`extract_particles`) into ``out``, or merge batches (:func:`gather_particles`) into
    ``out/particles.star``. Notes: counts (particles, micrographs, dropped ones)."""
    out = Path(out)
    if inputs.gather:
        particles = gather_particles(inputs.gather, out / "particles.star")
        return StageResult(files=[out / "particles.star"], inputs=list(inputs.gather),
                           notes={"particles": len(particles), "batches": len(inputs.gather)})
    for flag, value in (("picks", inputs.picks), ("box", params.box_px)):
        require(value is not None, "required unless --gather is given", field=f"--{flag}")
    require(inputs.ctf is not None or not params.max_ctf_resolution_A, "needs the CTF STAR (--ctf) whose fits it "
            "judges", field="--max-ctf-resolution")
    params.validate()
    picks = read_table(inputs.picks, "particles", required=["rlnMicrographName", "rlnCoordinateX", "rlnCoordinateY"])
    ctf = read_table(inputs.ctf, "micrographs", required=CTF_REQUIRED) if inputs.ctf is not None else None
    mics = list_micrographs(inputs.micrographs) if inputs.micrographs else None
    result = extract_particles(picks, ctf, params, out, ctx.backend, mics, params.angpix, ctx.final(out),
                               inputs.picks, inputs.ctf)
    read = [Path(inputs.picks), *([Path(inputs.ctf)] if inputs.ctf is not None else [])]
    return StageResult(files=result.outputs, notes=result.notes, inputs=[*read, *(m.path for m in (mics or []))])


@dataclass
class ExtractResult:
    """``particles`` (flat table as written), ``outputs`` written, ``notes`` (counts)."""

    particles: pd.DataFrame
    outputs: list[Path] = field(default_factory=list)
    notes: dict = field(default_factory=dict)


def extract_particles(
    picks: pd.DataFrame,
    ctf: pd.DataFrame | None,
    params: ExtractParams,
    out: Path,
    bk,
    mics: list[Micrograph] | None = None,
    angpix: float | None = None,
    names_root: Path | None = None,
    picks_path=None,
    ctf_path=None,
) -> ExtractResult:
    """Extract the picked particles of each micrograph and write stacks and ``particles.star`` into ``out``.

    Parameters
    ----------
    picks : rlnMicrographName, rlnCoordinateX/Y (micrograph px) and any other per-pick columns to keep.
    ctf : micrographs joined with their optics (rlnMicrographName, rlnDefocusU/V/Angle, rlnVoltage,
        rlnSphericalAberration, rlnAmplitudeContrast, optional rlnOpticsGroup, rlnMicrographPixelSize...); None:
        the particles get no CTF columns (class2d --ctf none can use them; stages that correct for the CTF refuse
        them) and the pixel size comes from ``angpix`` or the MRC headers, which must hold one.
    mics : the micrographs to extract (a batch; default: every micrograph in ``picks``, read from its name
        relative to the working directory or to ``picks_path``'s folder).
    angpix : micrograph pixel size (default: CTF STAR rlnMicrographPixelSize, else the MRC header).
    names_root : folder that rlnImageName paths refer to (default ``out``; the final folder when ``out`` is a
        staging folder).
    """
    params.validate()
    out = Path(out)
    root = Path(names_root) if names_root is not None else out
    require(len(picks) > 0, "holds no picks: nothing to extract", picks_path, "data_particles")
    if mics is None:
        base = Path(picks_path).parent if picks_path else Path(".")
        mics = [Micrograph(n, n if os.path.exists(n) or os.path.isabs(n) else str(base / n))
                for n in dict.fromkeys(picks["rlnMicrographName"].astype(str))]
    if ctf is None:
        log.warning("no CTF STAR: the particles carry no CTF parameters (class2d --ctf none can use them; class3d, "
                    "refine3d and class2d's CTF modes will refuse them)")
        ctf = pd.DataFrame({"rlnMicrographName": [m.name for m in mics]})
    ctf_rows = match_names([m.name for m in mics], ctf["rlnMicrographName"])
    missing = [n for n, i in ctf_rows.items() if i is None]
    if missing:
        raise InputError(f"micrograph {missing[0]} is not in the CTF STAR file", ctf_path, "rlnMicrographName")
    groups = dict(list(picks.groupby(picks["rlnMicrographName"].astype(str), sort=False)))
    pick_names = list(groups)
    pick_of = match_names([m.name for m in mics], pick_names)
    ctf_cols = [c for c in ctf.columns if c.startswith(CTF_PREFIXES) and c != "rlnCtfImage"]
    drop = {"rlnImageName", "rlnMicrographName", "rlnOpticsGroup", *OPTICS_COLUMNS, *ctf_cols}
    tables, outputs, skipped, picked, unset, dropped = [], [], 0, 0, 0, []
    optics_rows = {}
    progress = Progress(len(mics), log, "micrograph", every_s=PERIOD_S)
    for mic in progress.each(mics, lambda: f"{sum(map(len, tables))} particles so far"):
        group = groups[pick_names[pick_of[mic.name]]] if pick_of[mic.name] is not None else picks.iloc[:0]
        if len(group) == 0:
            log.warning("%s: no picks in %s, no particles from this micrograph", mic.name, picks_path or "the picks")
            continue
        ctf_row = ctf.iloc[ctf_rows[mic.name]]
        if params.max_ctf_resolution_A and _poor_ctf(ctf_row, params.max_ctf_resolution_A):
            log.warning("%s: CTF fitted to %.1f A (limit %.1f A)%s: micrograph dropped", mic.name,
                        float(ctf_row.get("rlnCtfMaxResolution", float("nan"))), params.max_ctf_resolution_A,
                        ", flagged as without Thon rings" if int(ctf_row.get("cpCtfFlagged", 0)) else "")
            dropped.append(mic.name)
            continue
        picked += len(group)
        image, header_apix = read_mrc(mic.path)
        apix, known = _pixel_size(mic, ctf_row, angpix, header_apix, ctf_path)
        unset += not known
        windows, inside = extract_windows(image, group["rlnCoordinateX"], group["rlnCoordinateY"], params.box_px)
        skipped += int((~inside).sum())
        if (~inside).any():
            log.info("%s: %d of %d particles too close to the edge, skipped", mic.name, (~inside).sum(), len(group))
        if not inside.any():
            log.warning("%s: all %d picks too close to the edge for a %d px box, no particles from this micrograph",
                        mic.name, len(group), params.box_px)
            continue
        stack_path = out / "Particles" / f"{mic.stem}.mrcs"
        out_apix = float(apix) * params.box_px / params.out_box
        write_mrc(stack_path, process_particles(windows, params, bk), out_apix, stack=True)
        outputs.append(stack_path)
        kept = group[inside].reset_index(drop=True)
        name = str(root / "Particles" / f"{mic.stem}.mrcs")
        opt = int(ctf_row.get("rlnOpticsGroup", 1))
        table = kept.drop(columns=[c for c in kept.columns if c in drop])
        table.insert(0, "rlnImageName", [f"{i + 1:06d}@{name}" for i in range(len(kept))])
        table.insert(1, "rlnMicrographName", mic.name)
        table = table.assign(**{c: ctf_row[c] for c in ctf_cols}, rlnOpticsGroup=opt)
        if "cpDefocusPlaneA" in ctf_row.index:
            table = _defocus_at_positions(table, ctf_row, image.shape)
        tables.append(table)
        previous = optics_rows.setdefault(opt, _optics_row(ctf_row, apix, params))
        require(abs(previous["rlnImagePixelSize"] - out_apix) < 1e-4, "micrographs of one optics group have "
                "different pixel sizes", mic.path, "angpix")
    log.info("extracted %d particles from %d of %d micrographs in %s (%d picks too close to an edge, %d micrographs "
             "dropped for their CTF)", sum(map(len, tables)), len(tables), len(mics),
             format_duration(progress.elapsed_s), skipped, len(dropped))
    if unset:
        log.warning("%d micrographs hold no pixel size in their MRC header (0 or 1.0): using the CTF STAR file's "
                    "rlnMicrographPixelSize", unset)
    if not tables:
        everything = {pick_names[i] for i in pick_of.values() if i is not None} == set(pick_names)
        why = (f"all {picked} picks lie too close to a micrograph edge for a {params.box_px} px box" if picked else
               "no pick belongs to these micrographs (rlnMicrographName)")
        # every pick of the file was tried: the whole data set is empty, which no later stage can use
        require(not everything, f"no particle to extract: {why}", picks_path,
                "rlnCoordinateX/Y" if picked else "rlnMicrographName")
        log.warning("no particles in this batch of %d micrographs (%s): writing an empty particles.star, which "
                    "--gather skips", len(mics), why)
        for mic in mics:  # the batch's optics groups, so that the empty STAR merges with the others
            ctf_row = ctf.iloc[ctf_rows[mic.name]]
            apix, _ = _pixel_size(mic, ctf_row, angpix, read_mrc_header(mic.path).angpix, ctf_path)
            optics_rows.setdefault(int(ctf_row.get("rlnOpticsGroup", 1)), _optics_row(ctf_row, apix, params))
    particles = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(
        {"rlnImageName": pd.Series(dtype=str), "rlnMicrographName": pd.Series(dtype=str),
         "rlnCoordinateX": pd.Series(dtype=float), "rlnCoordinateY": pd.Series(dtype=float),
         "rlnOpticsGroup": pd.Series(dtype=int)})
    optics = pd.DataFrame([optics_rows[k] for k in sorted(optics_rows)])
    if "rlnOpticsGroupName" not in optics:
        optics.insert(1, "rlnOpticsGroupName", [f"opticsGroup{g}" for g in optics["rlnOpticsGroup"]])
    write_star(out / "particles.star", {"optics": optics, "particles": particles})
    outputs.append(out / "particles.star")
    notes = {"micrographs": len(mics), "particles": len(particles), "skipped_at_edge": skipped,
             **({"dropped_for_ctf": dropped} if params.max_ctf_resolution_A else {}),
             "box": params.box_px, "out_box": params.out_box}
    return ExtractResult(particles, outputs, notes)


def _defocus_at_positions(table: pd.DataFrame, ctf_row: pd.Series, shape) -> pd.DataFrame:
    """Each particle's defocus U/V at its position on a micrograph with a fitted defocus plane (cryopipe ctf
    --per-tile: defocus(x, y) = rlnDefocusU/V + cpDefocusPlaneA (x - nx/2) + cpDefocusPlaneB (y - ny/2), A and px
    as rlnCoordinateX/Y; ``shape`` (ny, nx)). Rows without a plane (NaN) keep the micrograph's defocus."""
    a, b = float(ctf_row["cpDefocusPlaneA"]), float(ctf_row.get("cpDefocusPlaneB", 0.0))
    if not (np.isfinite(a) and np.isfinite(b)):
        return table
    ny, nx = shape
    x, y = table["rlnCoordinateX"].to_numpy(float), table["rlnCoordinateY"].to_numpy(float)
    shift = a * (x - nx / 2) + b * (y - ny / 2)
    return table.assign(rlnDefocusU=float(ctf_row["rlnDefocusU"]) + shift,
                        rlnDefocusV=float(ctf_row["rlnDefocusV"]) + shift)


def _poor_ctf(ctf_row: pd.Series, limit_A: float) -> bool:
    """Thon rings fitted only to a resolution worse than ``limit_A`` (or not at all), or flagged by cryopipe ctf."""
    fitted = float(ctf_row.get("rlnCtfMaxResolution", 0.0) or 0.0)
    return fitted > limit_A or int(ctf_row.get("cpCtfFlagged", 0) or 0) == 1


def _pixel_size(mic: Micrograph, ctf_row: pd.Series, angpix: float | None, header_apix: float | None,
                ctf_path) -> tuple[float, bool]:
    """A micrograph's pixel size: --angpix, else the CTF STAR's rlnMicrographPixelSize (checked against the MRC
    header: more than 1% apart is an InputError), else the header. Returns (pixel size, False when the STAR's
    value was used because the header holds none)."""
    if angpix:
        if header_apix and abs(header_apix - angpix) > 0.01 * angpix and header_apix not in UNSET_PIXEL_SIZES:
            log.warning("%s: --angpix %g A/px overrides the %g A/px of the MRC header", mic.name, angpix, header_apix)
        return float(angpix), True
    star_apix = ctf_row.get("rlnMicrographPixelSize")
    if star_apix is not None and star_apix > 0:
        return float(star_apix), check_pixel_size(float(star_apix), header_apix, ctf_path, mic.path,
                                                  "rlnMicrographPixelSize")
    require(header_apix is not None and header_apix > 0 and (ctf_path is not None or header_apix not in
            UNSET_PIXEL_SIZES), "pixel size unknown: not in --angpix, the CTF STAR or the header", mic.path, "angpix")
    return float(header_apix), True


def _optics_row(ctf_row: pd.Series, apix: float, params: ExtractParams) -> dict:
    """The data_optics row of the particles of a micrograph (its CTF row) of pixel size ``apix``."""
    opt = int(ctf_row.get("rlnOpticsGroup", 1))
    return {"rlnOpticsGroup": opt, **{c: ctf_row[c] for c in OPTICS_COPY if c in ctf_row.index},
            "rlnMicrographOriginalPixelSize": float(ctf_row.get("rlnMicrographOriginalPixelSize", apix)),
            "rlnImagePixelSize": float(apix) * params.box_px / params.out_box, "rlnImageSize": params.out_box,
            "rlnImageDimensionality": 2}


def gather_particles(stars: list, out_star: Path) -> pd.DataFrame:
    """Merge per-batch particle STARs into ``out_star`` with one ``data_optics`` table; returns the particles.

    Optics groups are matched by rlnOpticsGroup and must agree between inputs. Image names are kept, except
    that a stack found only relative to its STAR file's folder is rewritten relative to the working directory.
    A batch without particles (its STAR has data_optics and an empty data_particles) is skipped with a warning;
    when every batch is empty, that is an InputError.
    """
    require(len(stars) > 0, "nothing to gather", field="--gather")
    optics, parts = {}, []
    for star in stars:
        blocks = read_star(star)
        require("optics" in blocks and "particles" in blocks, "needs data_optics and data_particles", star)
        for row in blocks["optics"].to_dict("records"):
            g = int(row["rlnOpticsGroup"])
            if g in optics and any(optics[g].get(k) != v for k, v in row.items() if k != "rlnOpticsGroupName"):
                raise InputError(f"optics group {g} differs from the one in an earlier file", star, "data_optics")
            optics.setdefault(g, row)
        p = blocks["particles"]
        if not len(p):
            log.warning("%s: no particles (a batch whose micrographs had none), skipped", star)
            continue
        idx, stacks = parse_image_name(p["rlnImageName"], star)
        parts.append(p.assign(rlnImageName=[f"{i + 1:06d}@{os.path.normpath(s)}"
                                            for i, s in zip(idx, stacks, strict=True)]))
    if not parts:
        names = ", ".join(str(s) for s in stars[:3]) + (f" and {len(stars) - 3} more" if len(stars) > 3 else "")
        raise InputError(f"no particles in any of the {len(stars)} STAR files to gather (every batch was empty: "
                         "check the picks)", names, "data_particles")
    particles = pd.concat(parts, ignore_index=True)
    write_star(out_star, {"optics": pd.DataFrame([optics[g] for g in sorted(optics)]), "particles": particles})
    return particles
