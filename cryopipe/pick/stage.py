"""The picking stage: micrographs in, coordinates out (per micrograph and merged), on CPU/GPU, 1 or N MPI ranks.

Notebook use::

    stack = load_templates("classes.mrcs")
    picker = Picker(stack, angpix=1.0, params=PickParams(diameter_A=150), bk=get_backend("auto"))
    picks = picker.pick(micrograph)        # DataFrame: rlnCoordinateX/Y, rlnAutopickFigureOfMerit, ...

:func:`pick_micrographs` runs a whole batch: a producer thread reads the next micrographs while the device
correlates (gEMpicker's producer-consumer). Under MPI, ranks split the micrographs (``mode="micrographs"``)
or, for fewer micrographs than ranks, the template-rotations (``mode="templates"``): each rank then
computes its share's NCC max/argmax maps and rank 0 combines them with ``MPI_Reduce(MAXLOC)`` (a tree
reduction; ties go to the lower template index, as on one rank).
"""

from __future__ import annotations

import glob
import logging
import os
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from cryopipe.ctf import CTFParams
from cryopipe.errors import InputError, require
from cryopipe.io.atomic import atomic_path
from cryopipe.io.mrc import read_mrc, read_mrc_header, write_mrc
from cryopipe.io.star import match_names, read_table, write_star
from cryopipe.parallel import SerialComm, split_range
from cryopipe.pick.artefacts import OUTLIER_REASONS, artefact_map
from cryopipe.pick.ncc import Correlator, Grid, grid_ctf, plan_grid, prepare_micrograph
from cryopipe.pick.peaks import Threshold, f1_threshold, fdr_threshold, find_peaks, local_maxima
from cryopipe.pick.templates import (
    BLOB_KINDS,
    TemplateStack,
    blob_templates,
    build_bank,
    load_templates,
    project_reference,
    psi_angles,
    rescale_templates,
)
from cryopipe.stage import StageContext, StageResult

log = logging.getLogger(__name__)

PICK_COLUMNS = ["rlnCoordinateX", "rlnCoordinateY", "rlnAutopickFigureOfMerit", "rlnClassNumber", "rlnAnglePsi"]


MASK_FACTOR = 1.2  # default local-normalisation mask diameter / particle diameter
DISTANCE_FACTOR = 0.8  # default minimum distance between picks / particle diameter
CONTEXT_FACTOR = 1.0  # s.d. of the artefact rejection's Gaussian window / particle diameter


@dataclass
class PickParams:
    """Picking parameters. Lengths in Angstrom unless marked px; angles in degrees.

    diameter_A : particle diameter (sets the default mask, minimum distance and blob size).
    mask_diameter_A : diameter of the circular mask under which templates and micrograph are normalised (None:
        ``MASK_FACTOR`` x diameter: a little wider than the particle, so that the ring of ice around it is part
        of the match, as a plain NCC picker does).
    angular_step : in-plane rotation step of the templates (blobs are not rotated).
    lowpass_A : low-pass the micrographs and templates and shrink the micrographs to match (None: full size).
    highpass_A : optional high-pass of micrographs and templates (e.g. against ice gradients).
    threshold : minimum NCC of a pick; None: automatic, chosen per micrograph from the candidates' and the null's
        peaks (:mod:`cryopipe.pick.peaks`): the best estimated F1, or the FDR rule when ``fdr`` is given.
    fdr : keep the estimated false-discovery rate at this value instead (None: maximise the estimated F1).
    min_distance_A : non-maximum suppression distance (None: ``DISTANCE_FACTOR`` x diameter).
    max_picks : at most this many picks per micrograph (the best), None: no cap.
    box_px : no pick whose box of this size (micrograph px) leaves the micrograph (None: the template box).
    invert : templates have the opposite contrast to the micrographs (white-protein templates, e.g.
        projections or class averages, against dark-protein micrographs; RELION's default).
    blob : pick with a blob of the particle diameter instead of templates: "disc" or "ring" (None: templates).
    reject_sigmas : set aside picks where the micrograph's mean or s.d. in a window of about the particle's size
        (a Gaussian of ``CONTEXT_FACTOR`` diameters) stands out from the micrograph's trend and from the other
        picks by more than this many robust s.d. (carbon, contaminants, aggregates); None: keep all.
    batch_size : template-rotations per batched FFT (None: from free device memory).
    angpix : micrograph pixel size, A/px (None: the STAR's optics, else the MRC header).
    template_angpix : pixel size of the templates or reference (None: their header).
    directions : projection directions when templates are projected from a 3D reference.
    write_maps : also write the NCC maps (working grid) as MRC.
    preview : micrographs shown in picks_preview.png.
    mpi_mode : under MPI, ranks split "micrographs" or "templates" (template-rotations); "auto": templates when
        there are fewer micrographs than ranks.
    """

    diameter_A: float
    mask_diameter_A: float | None = None
    angular_step: float = 5.0
    lowpass_A: float | None = 20.0
    highpass_A: float | None = None
    threshold: float | None = None
    fdr: float | None = None
    min_distance_A: float | None = None
    max_picks: int | None = None
    box_px: int | None = None
    invert: bool = True
    blob: str | None = None
    reject_sigmas: float | None = 6.0
    batch_size: int | None = None
    angpix: float | None = None
    template_angpix: float | None = None
    directions: int = 20
    write_maps: bool = False
    preview: int = 3
    mpi_mode: str = "auto"

    def validate(self) -> None:
        require(self.diameter_A > 0, f"must be positive, got {self.diameter_A}", field="--diameter")
        require(self.mask_diameter_A is None or self.mask_diameter_A > 0, "must be positive", field="--mask-diameter")
        require(self.lowpass_A is None or self.lowpass_A > 0, "must be positive", field="--lowpass")
        require(self.highpass_A is None or self.highpass_A > (self.lowpass_A or 0), "must be coarser than --lowpass",
                field="--highpass")
        require(self.threshold is None or -1 <= self.threshold <= 1, "NCC threshold must lie in [-1, 1]",
                field="--threshold")
        require(self.fdr is None or 0 < self.fdr < 1, f"must lie in (0, 1), got {self.fdr}", field="--fdr")
        require(self.min_distance_A is None or self.min_distance_A > 0, "must be positive", field="--min-distance")
        require(self.max_picks is None or self.max_picks >= 1, "must be >= 1", field="--max-picks")
        require(self.box_px is None or self.box_px >= 2, "must be >= 2 px", field="--box")
        require(self.blob is None or self.blob in BLOB_KINDS, f"choose from {', '.join(BLOB_KINDS)}", field="--blob")
        require(self.reject_sigmas is None or self.reject_sigmas > 0, "must be positive", field="--reject-sigmas")

    @property
    def mask_diameter(self) -> float:
        return self.mask_diameter_A or MASK_FACTOR * self.diameter_A

    @property
    def rotation_step(self) -> float:
        """The in-plane step the templates are rotated by: none for blobs (they look the same at every psi)."""
        return 360.0 if self.blob else self.angular_step

    @property
    def min_distance(self) -> float:
        return self.min_distance_A or DISTANCE_FACTOR * self.diameter_A


@dataclass
class ScoreMap:
    """One micrograph's maps on the host, (Hc, Wc) on the working ``grid``: ``ncc`` (float32, NCC max over the
    template-rotations), ``index`` (int32, its bank index), ``null`` (the contrast-inverted templates' max NCC,
    the automatic threshold's null, or None),
    ``mean`` and ``sd`` (the micrograph in the artefact rejection's window, or None), and the prepared
    micrograph ``work`` (device) or None."""

    grid: Grid
    ncc: np.ndarray
    index: np.ndarray
    null: np.ndarray | None = None
    mean: np.ndarray | None = None
    sd: np.ndarray | None = None
    work: object = None


@dataclass
class Picks:
    """What :meth:`Picker.peaks` found on one micrograph: ``picks`` (DataFrame, :data:`PICK_COLUMNS`, best
    first), ``rejected`` (the same columns plus ``cpRejected``: why), and the ``threshold``."""

    picks: pd.DataFrame
    rejected: pd.DataFrame
    threshold: Threshold

    def summary(self) -> dict:
        """One row for the micrograph's summary: threshold, estimated FDR, counts, status."""
        t = self.threshold
        return {"cpPickThreshold": t.value, "cpPickFdr": t.fdr, "cpPicks": len(self.picks),
                "cpRejected": len(self.rejected), "cpCandidates": t.candidates, "cpNullCandidates": t.background,
                "cpPickStatus": t.status.replace(" ", "_")}


class Picker:
    """Templates prepared for micrographs at ``angpix``; score and pick micrographs one at a time.

    subset : the template-rotations this instance correlates (MPI per-template mode; default all).
    """

    def __init__(self, templates: TemplateStack, angpix: float, params: PickParams, bk, subset=slice(None)):
        params.validate()
        self.params, self.bk, self.angpix, self.subset = params, bk, float(angpix), subset
        self.templates = rescale_templates(templates, self.angpix)
        self.box_px = params.box_px or self.templates.images.shape[-1]
        self.margin_px = 0.5 * max(self.box_px, params.diameter_A / self.angpix)  # micrograph px
        self.grid: Grid | None = None

    def _setup(self, shape: tuple[int, int]) -> None:
        if self.grid is not None and self.grid.shape == shape:
            return
        p = self.params
        H, W = shape
        require(min(H, W) >= 2 * self.margin_px, f"micrograph {W}x{H} px is smaller than the {self.box_px} px box "
                f"(and particle diameter {p.diameter_A} A)", field="--box")
        self.grid = plan_grid(shape, self.angpix, p.lowpass_A)
        self.bank = build_bank(self.templates, self.grid.scale, p.diameter_A, p.rotation_step, p.lowpass_A,
                               p.highpass_A, p.invert, mask_diameter_A=p.mask_diameter)
        context = CONTEXT_FACTOR * p.diameter_A / self.grid.work_angpix if p.reject_sigmas is not None else None
        self.correlator = Correlator(self.bank, self.grid, self.bk, p.batch_size, self.subset,
                                     null=p.threshold is None, context_px=context)
        log.info("working grid %s -> %s at %.3g A/px (%s FFTs), %d template-rotations of %d px",
                 shape, self.grid.crop, self.grid.work_angpix, self.grid.corr, len(self.bank),
                 self.bank.images.shape[-1])

    def score(self, image: np.ndarray, keep_work: bool = False, ctf: CTFParams | None = None) -> ScoreMap | None:
        """NCC maps of one micrograph (H, W); None when it is flat (constant: nothing to pick). With its ``ctf``
        the templates are correlated as imaged under it (CTF-aware picking)."""
        self._setup(tuple(image.shape))
        p = self.params
        work = prepare_micrograph(image, self.grid, self.bk, p.lowpass_A, p.highpass_A)
        if work is None:
            return None
        c = self.correlator(work, None if ctf is None else grid_ctf(ctf, self.grid, self.bk))
        host = self.bk.asnumpy
        return ScoreMap(self.grid, host(c.best), host(c.index), None if c.null is None else host(c.null),
                        None if c.mean is None else host(c.mean), None if c.sd is None else host(c.sd),
                        work if keep_work else None)

    def valid(self, grid: Grid) -> np.ndarray:
        """(Hc, Wc) bool: working positions whose box stays inside the micrograph."""
        (H, W), (sy, sx) = grid.shape, grid.scale
        ys, xs = np.arange(grid.corr[0]) * sy, np.arange(grid.corr[1]) * sx
        m = self.margin_px
        return ((ys >= m) & (ys <= H - 1 - m))[:, None] & ((xs >= m) & (xs <= W - 1 - m))[None, :]

    def peaks(self, scores: ScoreMap, threshold: float | None = None) -> Picks:
        """Picks from a score map, micrograph pixels. With artefact rejection, a first threshold's picks serve as
        the reference of :func:`cryopipe.pick.artefacts.artefact_map`; then the threshold (fixed, or automatic
        over the candidates outside artefacts), non-maximum suppression, and the peaks above it inside
        artefacts listed as rejected, with the reason.
        ``threshold`` overrides the parameters' (e.g. to sweep fixed thresholds over one score map)."""
        p, grid = self.params, scores.grid
        fixed = p.threshold if threshold is None else threshold
        valid = self.valid(grid)
        dist = p.min_distance / self.angpix  # micrograph px
        sy, sx = grid.scale
        spacing = (dist / sy, dist / sx)
        # candidates once per map (a candidate at an artefact's border may be one that a peak inside it hid)
        maxima = local_maxima(scores.ncc, valid, spacing)
        null = None if scores.null is None else local_maxima(scores.null, valid, spacing)
        code = None
        if p.reject_sigmas is not None and scores.mean is not None:
            # the reference picks: the automatic threshold's when the null is there (also under a fixed threshold)
            first = self._threshold(scores, maxima, null, valid, None if null is not None else fixed, quiet=True)
            iy, ix = find_peaks(scores.ncc, valid, first.value, spacing, p.max_picks, maxima)[3:]
            iy, ix = iy[: max(3, len(iy) // 2)], ix[: max(3, len(ix) // 2)]  # the better half: surest particles
            grow = 0.5 * p.diameter_A / grid.work_angpix
            code = artefact_map(scores.mean, scores.sd, valid, iy, ix, p.reject_sigmas, grow)
        clean = valid if code is None else valid & (code == 0)
        threshold = self._threshold(scores, maxima, null, clean, fixed)
        picks = self._table(scores, *find_peaks(scores.ncc, clean, threshold.value, spacing, p.max_picks, maxima))
        rejected = empty_rejected()
        if code is not None and code.any():
            y, x, value, iy, ix = find_peaks(scores.ncc, valid & (code > 0), threshold.value, spacing, None, maxima)
            rejected = self._table(scores, y, x, value, iy, ix).assign(
                cpRejected=[OUTLIER_REASONS[c] for c in code[iy, ix]])
        return Picks(picks, rejected, threshold)

    def _threshold(self, scores: ScoreMap, maxima: np.ndarray, null: np.ndarray | None, where: np.ndarray,
                   fixed: float | None, quiet: bool = False) -> Threshold:
        """The fixed threshold, or the automatic one over the candidates (``maxima`` of the real map, ``null``
        of the null map) at ``where``."""
        if fixed is not None:
            return Threshold(fixed, float("nan"), "fixed")
        p = self.params
        real, background = scores.ncc[maxima & where].astype(np.float64), scores.null[null & where].astype(np.float64)
        threshold = f1_threshold(real, background) if p.fdr is None else fdr_threshold(real, background, p.fdr)
        if threshold.status not in ("f1", "fdr") and not quiet:
            log.warning("no picks: %s (%d candidates)", threshold.status, threshold.candidates)
        return threshold

    def _table(self, scores: ScoreMap, y, x, value, iy, ix) -> pd.DataFrame:
        grid = scores.grid
        (H, W), m = grid.shape, self.margin_px
        yo, xo = grid.to_micrograph(y, x)
        k = scores.index[iy, ix]
        psi = self.bank.psi[k]
        return pd.DataFrame({
            "rlnCoordinateX": np.clip(xo, m, W - 1 - m),
            "rlnCoordinateY": np.clip(yo, m, H - 1 - m),
            "rlnAutopickFigureOfMerit": value.astype(np.float64),
            "rlnClassNumber": self.bank.template[k] + 1,
            "rlnAnglePsi": np.where(psi > 180.0, psi - 360.0, psi),
        })

    def pick(self, image: np.ndarray, ctf: CTFParams | None = None) -> pd.DataFrame:
        """Score and pick one micrograph (H, W) at ``angpix`` (CTF-aware with its ``ctf``); an empty table when it
        is flat."""
        scores = self.score(image, ctf=ctf)
        return empty_picks() if scores is None else self.peaks(scores).picks


def empty_picks() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=np.int64 if c == "rlnClassNumber" else np.float64) for c in PICK_COLUMNS})


def empty_rejected() -> pd.DataFrame:
    return empty_picks().assign(cpRejected=pd.Series(dtype=str))


# --------------------------------------------------------------------------------------------- micrograph lists


@dataclass(frozen=True)
class Micrograph:
    """One micrograph: ``name`` as written to rlnMicrographName, ``path`` to read, ``angpix`` from its STAR."""

    name: str
    path: str
    angpix: float | None = None

    @property
    def stem(self) -> str:
        return Path(self.name).stem


def list_micrographs(specs: list[str]) -> list[Micrograph]:
    """Micrographs from paths, glob patterns and micrograph STAR files (rlnMicrographName, optics pixel size).

    Names from a STAR file are kept as written there (so they match a CTF STAR); relative ones are read
    relative to the STAR file's folder when they do not exist relative to the working directory.
    """
    out: list[Micrograph] = []
    for spec in specs:
        if spec.endswith(".star"):
            table = read_table(spec, "micrographs", required=["rlnMicrographName"])
            apix = table["rlnMicrographPixelSize"] if "rlnMicrographPixelSize" in table else [None] * len(table)
            for name, a in zip(table["rlnMicrographName"].astype(str), apix, strict=True):
                path = name
                if not os.path.isabs(name) and not os.path.exists(name):
                    path = str(Path(spec).parent / name)
                out.append(Micrograph(name, path, None if a is None else float(a)))
        elif glob.has_magic(spec):
            matches = sorted(glob.glob(spec))
            require(bool(matches), "no file matches this pattern", spec, "--micrographs")
            out += [Micrograph(m, m) for m in matches]
        else:
            out.append(Micrograph(spec, spec))
    require(bool(out), "no micrographs given", field="--micrographs")
    stems = [m.stem for m in out]
    dup = sorted({s for s in stems if stems.count(s) > 1})
    if dup:
        raise InputError(f"micrograph names must be unique, {dup[0]!r} occurs twice", field="--micrographs")
    return out


def micrograph_angpix(mics: list[Micrograph], angpix: float | None) -> float:
    """The pixel size: ``angpix`` if given, else the STAR's, else the MRC header's; one value for the batch."""
    if angpix is not None:
        require(angpix > 0, f"must be positive, got {angpix}", field="--angpix")
        return float(angpix)
    values = set()
    for m in mics:
        a = m.angpix if m.angpix is not None else read_mrc_header(m.path).angpix
        require(a is not None, "pixel size unknown: not in the header, the STAR file or --angpix", m.path, "angpix")
        values.add(round(float(a), 4))
    require(len(values) == 1, f"micrographs have different pixel sizes {sorted(values)}; pick them separately",
            field="--angpix")
    return values.pop()


def micrograph_ctfs(mics: list[Micrograph], path: Path) -> dict[str, CTFParams]:
    """Each micrograph's CTF from a micrographs CTF STAR (CTFFIND/RELION/``cryopipe ctf``), by micrograph name."""
    table = read_table(path, "micrographs", required=["rlnMicrographName"])
    rows = match_names([m.name for m in mics], table["rlnMicrographName"])
    missing = [name for name, i in rows.items() if i is None]
    require(not missing, f"micrograph {missing[0] if missing else ''} is not in the CTF STAR file", path,
            "rlnMicrographName")
    return {name: CTFParams.from_star(table.iloc[[i]], path) for name, i in rows.items()}


# --------------------------------------------------------------------------------------------- batch driver


def prefetch(mics: list[Micrograph], depth: int = 2) -> Iterator[tuple[Micrograph, np.ndarray | None, Exception | None]]:  # noqa: E501
    """Yield (micrograph, image or None, read error or None) in order; a producer thread reads ahead ``depth``."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce():
        for m in mics:
            try:
                item = (m, read_mrc(m.path)[0], None)
            except Exception as exc:  # handed to the consumer, which raises it
                item = (m, None, exc)
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if stop.is_set():
                return

    thread = threading.Thread(target=produce, name="micrograph-reader", daemon=True)
    thread.start()
    try:
        for _ in mics:
            yield q.get()
    finally:
        stop.set()
        thread.join()


def _reduce_maxloc(comm, scores: ScoreMap) -> ScoreMap | None:
    """Element-wise (max NCC, its index) over ranks at rank 0 (MPI_Reduce with MAXLOC), and the null's maximum
    (MPI_Reduce with MAX); None elsewhere. The mean and s.d. maps are the same on every rank."""
    from mpi4py import MPI

    buf = np.empty(scores.ncc.shape, dtype=[("v", np.float32), ("i", np.int32)])
    buf["v"], buf["i"] = scores.ncc, scores.index
    root = comm.Get_rank() == 0
    out = np.empty_like(buf) if root else None
    comm.Reduce([buf, MPI.FLOAT_INT], [out, MPI.FLOAT_INT] if root else None, op=MPI.MAXLOC, root=0)
    null = None
    if scores.null is not None:
        null = np.empty_like(scores.null) if root else None
        comm.Reduce(np.ascontiguousarray(scores.null), null, op=MPI.MAX, root=0)
    if not root:
        return None
    return ScoreMap(scores.grid, np.ascontiguousarray(out["v"]), np.ascontiguousarray(out["i"]), null, scores.mean,
                    scores.sd, scores.work)


@dataclass
class PickInputs:
    """Micrographs (files, glob patterns or a micrographs STAR) and the templates: 2D ``templates`` (MRCS stacks or
    MRC images, optional ``masks``) or a 3D ``reference`` map projected into templates (neither with
    ``PickParams.blob``). ``ctf``: the micrographs' CTF STAR, for CTF-aware templates (None: templates as given)."""

    micrographs: list[str]
    templates: list[Path] | None = None
    reference: Path | None = None
    masks: Path | None = None
    ctf: Path | None = None


def run(params: PickParams, inputs: PickInputs, out: Path, ctx: StageContext) -> StageResult:
    """Pick every micrograph (:func:`pick_micrographs`) with templates from ``inputs``. Notes: counts, timings,
    the MPI mode."""
    params.validate()
    mics = list_micrographs(inputs.micrographs)
    angpix = micrograph_angpix(mics, params.angpix)
    if params.blob:
        templates = blob_templates(params.diameter_A, angpix, params.blob)
    elif inputs.templates:
        templates = load_templates(inputs.templates, params.template_angpix, inputs.masks, fallback_angpix=angpix)
    else:
        templates = project_reference(inputs.reference, ctx.backend, params.directions, params.template_angpix,
                                      angpix)
    ctfs = micrograph_ctfs(mics, inputs.ctf) if inputs.ctf else None
    result = pick_micrographs(mics, templates, params, out, ctx.backend, ctx.comm, angpix, params.mpi_mode,
                              params.write_maps, params.preview, ctfs)
    used = [m.path for m in mics] + list(inputs.templates or [inputs.reference] * bool(inputs.reference)) \
        + [inputs.masks] * bool(inputs.masks) + [inputs.ctf] * bool(inputs.ctf)
    return StageResult(files=result.outputs, notes=result.notes, inputs=used)


@dataclass
class PickResult:
    """What :func:`pick_micrographs` did (complete on rank 0): the merged ``picks``, ``outputs`` written,
    ``notes`` (counts, timings, mode)."""

    picks: pd.DataFrame
    outputs: list[Path] = field(default_factory=list)
    notes: dict = field(default_factory=dict)


def pick_micrographs(
    mics: list[Micrograph],
    templates: TemplateStack,
    params: PickParams,
    out: Path,
    bk,
    comm=None,
    angpix: float | None = None,
    mode: str = "auto",
    write_maps: bool = False,
    preview: int = 3,
    ctfs: dict[str, CTFParams] | None = None,
) -> PickResult:
    """Pick every micrograph; write ``out/coords/<stem>.star`` (the picks, then a ``pick_summary`` block: threshold,
    estimated FDR, counts), ``out/picks.star``, ``out/pick_summary.star`` (one row per micrograph),
    ``out/rejected.star`` (picks set aside as artefacts, with the reason), optional ``out/maps/<stem>_ncc.mrc``
    (NCC map on the working grid) and ``out/picks_preview.png`` (picks in red, rejected ones in yellow).

    mode : "micrographs" (ranks split micrographs), "templates" (ranks split template-rotations, maps
    reduced to rank 0) or "auto" (templates when there are fewer micrographs than ranks).
    ctfs : each micrograph's CTF by name (:func:`micrograph_ctfs`) for CTF-aware templates; None: templates as given.
    A flat micrograph is skipped with a warning (no picks); a bad one (unreadable, NaN, smaller than the box)
    stops every rank with an InputError.
    """
    comm = comm or SerialComm()
    rank, size = comm.Get_rank(), comm.Get_size()
    out = Path(out)
    require(mode in {"auto", "micrographs", "templates"}, f"unknown mode {mode!r}", field="--mpi-mode")
    if mode == "auto":
        mode = "templates" if len(mics) < size else "micrographs"
    angpix = micrograph_angpix(mics, angpix)
    n_rot = len(templates.images) * len(psi_angles(params.rotation_step))
    share = split_range(n_rot, rank, size) if mode == "templates" else slice(None)
    picker = Picker(templates, angpix, params, bk, share)
    mine = mics if mode == "templates" else mics[split_range(len(mics), rank, size)]
    finalise = mode == "micrographs" or rank == 0
    tables, rejected, summaries, written, previews, error = [], [], [], [], [], None
    t_score = 0.0
    t0 = time.perf_counter()
    progress = tqdm(prefetch(mine), total=len(mine), desc="pick", unit="mic", disable=None if rank == 0 else True)
    for mic, image, err in progress:
        if err is not None:
            if not isinstance(err, InputError):
                raise err
            error = err
            break
        try:
            ts = time.perf_counter()
            ctf = None if ctfs is None else ctfs[mic.name]
            scores = picker.score(image, keep_work=finalise and len(previews) < preview, ctf=ctf)
            if mode == "templates":
                flat = comm.allreduce(scores is None)  # identical data: every rank agrees
                scores = None if flat else _reduce_maxloc(comm, scores)
            t_score += time.perf_counter() - ts
            if not finalise:
                continue
            if scores is None:
                log.warning("%s: flat micrograph (zero variance), skipped: no picks", mic.path)
                found = Picks(empty_picks(), empty_rejected(), Threshold(float("inf"), float("nan"), "flat"))
            else:
                found = picker.peaks(scores)
            picks, summary = found.picks, pd.DataFrame([found.summary()])
            coords = out / "coords" / f"{mic.stem}.star"
            write_star(coords, {"": picks, "pick_summary": summary})
            written.append(coords)
            if write_maps and scores is not None:
                h, w = scores.grid.extent
                maps = out / "maps" / f"{mic.stem}_ncc.mrc"
                write_mrc(maps, scores.ncc[:h, :w], scores.grid.work_angpix)
                written.append(maps)
            if scores is not None and scores.work is not None:
                previews.append((mic, bk.asnumpy(scores.work), scores.grid, found))
            tables.append(picks.assign(rlnMicrographName=mic.name))
            rejected.append(found.rejected.assign(rlnMicrographName=mic.name))
            summaries.append(summary.assign(rlnMicrographName=mic.name))
            t = found.threshold
            log.info("%s: %d picks (threshold %.3f, %s, estimated FDR %.3f), %d rejected as artefacts", mic.name,
                     len(picks), t.value, t.status, t.fdr, len(found.rejected))
        except InputError as exc:
            error = InputError(exc.message, exc.path or mic.path, exc.field)
            break
    t_total = time.perf_counter() - t0
    errors = [e for e in comm.allgather(error) if e is not None]
    if errors:
        raise errors[0]
    gathered = comm.gather((tables, rejected, summaries, written, t_score / max(1, len(mine))), root=0)
    if rank != 0:
        return PickResult(empty_picks())
    tables, rejected, summaries, written = ([t for g in gathered for t in g[k]] for k in range(4))
    picks = pd.concat(tables, ignore_index=True) if tables else empty_picks().assign(rlnMicrographName="")
    picks = picks[["rlnMicrographName", *PICK_COLUMNS]]
    write_star(out / "picks.star", {"particles": picks})
    rejected = pd.concat(rejected, ignore_index=True) if rejected else empty_rejected().assign(rlnMicrographName="")
    write_star(out / "rejected.star", {"particles": rejected[["rlnMicrographName", *rejected.columns[:-1]]]})
    summaries = pd.concat(summaries, ignore_index=True)
    write_star(out / "pick_summary.star", {"micrographs": summaries[["rlnMicrographName", *summaries.columns[:-1]]]})
    written += [out / "picks.star", out / "rejected.star", out / "pick_summary.star"]
    if previews:
        written.append(write_preview(out / "picks_preview.png", previews, params.diameter_A))
    notes = {
        "micrographs": len(mics), "picks": len(picks), "mpi_mode": mode, "mpi_size": size,
        "template_rotations": n_rot, "working_angpix": picker.grid and round(picker.grid.work_angpix, 4),
        "rejected": len(rejected),
        "no_picks": sorted(str(r.rlnMicrographName) for r in summaries.itertuples() if r.cpPicks == 0),
        "score_seconds_per_micrograph": round(max(g[4] for g in gathered), 4),
        "wall_seconds": round(t_total, 3),
    }
    return PickResult(picks, written, notes)


def write_preview(path: Path, previews: list, diameter_A: float) -> Path:
    """PNG of a few working micrographs (list of (Micrograph, work image, Grid, Picks)): picks circled in red,
    picks set aside as artefacts in yellow with their reason; the title gives the threshold and its FDR."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Circle

    fig = Figure(figsize=(5 * len(previews), 5.4))
    for ax, (mic, work, grid, found) in zip(fig.subplots(1, len(previews), squeeze=False)[0], previews, strict=True):
        h, w = grid.extent
        lo, hi = np.percentile(work[:h, :w], [1, 99])
        ax.imshow(work[:h, :w], cmap="gray", vmin=lo, vmax=hi)
        radius = 0.5 * diameter_A / grid.work_angpix
        for table, colour in ((found.picks, "red"), (found.rejected, "yellow")):
            y, x = table["rlnCoordinateY"] / grid.scale[0], table["rlnCoordinateX"] / grid.scale[1]
            for xy in zip(x, y, strict=True):
                ax.add_patch(Circle(xy, radius, fill=False, color=colour, lw=0.8))
        for why, n in found.rejected["cpRejected"].value_counts().items() if len(found.rejected) else ():
            ax.plot([], [], "o", mfc="none", color="yellow", label=f"{n} rejected: {why}")
        if len(found.rejected):
            ax.legend(loc="lower right", fontsize=7, framealpha=0.6)
        t = found.threshold
        rule = f"NCC >= {t.value:.3f}, FDR {t.fdr:.2f}" if t.status in ("f1", "fdr") else t.status
        ax.set_title(f"{mic.stem}: {len(found.picks)} picks ({rule})", fontsize=9)
        ax.set_axis_off()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    return path
