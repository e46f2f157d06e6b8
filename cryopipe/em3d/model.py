"""The model of a 3D EM run (class maps, priors, noise and signal spectra) and its checkpoints.

Checkpoint of iteration i in folder D (RELION's names): ``D/run_it{i:03d}_model.star`` (model_general,
model_classes, model_class_K with tau2 and SSNR, model_group_G with sigma2), ``D/run_it{i:03d}_class{k:03d}.mrc``
(or ``_half{h}_class001.mrc`` for gold-standard halves) and ``D/run_it{i:03d}_data.star`` (particles with
their angles, origins and classes). Floats are written with 17 significant digits, so a continued run starts
from exactly the state an uninterrupted run holds.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import starfile

from cryopipe.ctf import ctf_2d
from cryopipe.em3d.estep import FourierPixels, project_pixels
from cryopipe.em3d.particles import ParticleSet
from cryopipe.errors import InputError
from cryopipe.geometry import random_rotations
from cryopipe.io.atomic import atomic_path
from cryopipe.io.mrc import read_mrc, write_mrc
from cryopipe.io.star import read_star, split_optics
from cryopipe.parallel import allreduce_sum
from cryopipe.projection import Projector

FLOAT_FORMAT = "%.17g"


@dataclass
class Model:
    """State between iterations.

    maps : (K, N, N, N) float32. pdf_class : (K,). sigma2 : (G, N//2+1) noise power per optics group.
    tau2 : (K, N//2+1) signal power (times tau2_fudge). ssnr : (K, N//2+1). resolution_A : (K,).
    sigma_offset_px : translation-prior s.d. r_max : E-step limit (Fourier px) of the next iteration.
    iteration : last completed iteration. angpix : A/px. options : the run's options (checked on --continue).
    extra : per-shell curves to keep in model_general-free blocks (e.g. {"fsc": (N//2+1,)}).
    """

    maps: np.ndarray
    pdf_class: np.ndarray
    sigma2: np.ndarray
    tau2: np.ndarray
    ssnr: np.ndarray
    resolution_A: np.ndarray
    sigma_offset_px: float
    r_max: int
    iteration: int
    angpix: float
    options: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    @property
    def box(self) -> int:
        return self.maps.shape[-1]


def write_star_exact(path, blocks: dict) -> None:
    """Write STAR blocks atomically with full float precision (block ``optics`` first)."""
    ordered = dict(sorted(blocks.items(), key=lambda kv: kv[0] != "optics"))
    with atomic_path(path) as tmp:
        starfile.write(ordered, tmp, float_format=FLOAT_FORMAT)


def write_particles_exact(path, table: pd.DataFrame) -> None:
    """Write a flat particle table (optics columns merged in) as data_optics + data_particles, full precision."""
    optics, rows = split_optics(table)
    write_star_exact(path, {"optics": optics, "particles": rows})


def map_names(prefix: Path, n_maps: int, halves: bool) -> list[Path]:
    """The map files of checkpoint ``prefix`` (DIR/run_itNNN): ``{prefix}_half{h}_class001.mrc`` for the
    gold-standard halves (``halves``), else ``{prefix}_class{k:03d}.mrc``, ``n_maps`` of them."""
    if halves:
        return [Path(f"{prefix}_half{h + 1}_class001.mrc") for h in range(n_maps)]
    return [Path(f"{prefix}_class{k + 1:03d}.mrc") for k in range(n_maps)]


def write_model(prefix: Path, model: Model, halves: bool = False, names_root=None) -> list[Path]:
    """Write ``{prefix}_model.star`` and the class maps; return the files written.

    model_classes' rlnReferenceImage names each map as RELION does, with its folder as seen from the project
    (working) directory: ``names_root``/file name, ``names_root`` the folder the result is published to (a stage's
    ``ctx.final(out)``; None: ``prefix``'s folder). :func:`read_checkpoint` reads the maps beside the STAR.
    """
    k, nsh = model.maps.shape[0], model.box // 2 + 1
    maps = map_names(prefix, k, halves)
    root = Path(prefix).parent if names_root is None else names_root
    for path, vol in zip(maps, model.maps, strict=True):
        write_mrc(path, vol, model.angpix)
    shells = np.arange(nsh)
    freq = shells / (model.box * model.angpix)
    general = {"rlnReferenceDimensionality": 3, "rlnDataDimensionality": 2, "rlnOriginalImageSize": model.box,
               "rlnCurrentResolution": float(np.min(model.resolution_A)), "rlnCurrentImageSize": 2 * model.r_max,
               "rlnPixelSize": model.angpix, "rlnNrClasses": k, "rlnNrGroups": model.sigma2.shape[0],
               "rlnSigmaOffsetsAngst": model.sigma_offset_px * model.angpix, "cpIteration": model.iteration,
               "cpNextRmax": model.r_max}
    general.update({f"cp_{key}": value for key, value in model.options.items()})
    blocks = {"model_general": general,
              "model_classes": pd.DataFrame({"rlnReferenceImage": [str(Path(root) / p.name) for p in maps],
                                             "rlnClassDistribution": model.pdf_class,
                                             "rlnEstimatedResolution": model.resolution_A})}
    for c in range(k):
        blocks[f"model_class_{c + 1}"] = pd.DataFrame({
            "rlnSpectralIndex": shells, "rlnResolution": freq,
            "rlnAngstromResolution": np.where(freq > 0, 1 / np.where(freq > 0, freq, 1), 999.0),
            "rlnSsnrMap": model.ssnr[c], "rlnReferenceTau2": model.tau2[c]})
    for g in range(model.sigma2.shape[0]):
        blocks[f"model_group_{g + 1}"] = pd.DataFrame({"rlnSpectralIndex": shells, "rlnResolution": freq,
                                                       "rlnSigma2Noise": model.sigma2[g]})
    if model.extra:
        blocks["model_curves"] = pd.DataFrame({"rlnSpectralIndex": shells, **model.extra})
    star = Path(f"{prefix}_model.star")
    write_star_exact(star, blocks)
    return [star, *maps]


def parse_continue(path) -> tuple[Path, int]:
    """``DIR/run_itNNN`` (or any of its files) -> (prefix, NNN); InputError if it names no checkpoint, or one
    whose ``_model.star`` is unreadable or cut short, or whose maps are missing (see :func:`read_checkpoint`)."""
    m = re.match(r"^(.*run_it(\d{3}))(_.*)?$", os.fspath(path))
    if not m or not Path(f"{m[1]}_model.star").exists() or not Path(f"{m[1]}_data.star").exists():
        raise InputError("not a checkpoint (expected DIR/run_itNNN with _model.star and _data.star)", path,
                         "--continue")
    _, maps = read_checkpoint(Path(m[1]))
    for map_path in maps:
        if not map_path.exists():
            raise InputError(f"map named by the checkpoint {m[1]}_model.star is missing", map_path,
                             "rlnReferenceImage")
    return Path(m[1]), int(m[2])


_GENERAL_KEYS = ("rlnOriginalImageSize", "rlnPixelSize", "rlnNrClasses", "rlnNrGroups", "rlnSigmaOffsetsAngst",
                 "cpIteration", "cpNextRmax")
_CUT_SHORT = "(the file is cut short or damaged: was the job killed while writing it?)"


def _numbers(star: Path, name: str, table: pd.DataFrame, column: str, rows: int) -> np.ndarray:
    """Column ``column`` of block ``name`` as float64, checked to hold ``rows`` finite numbers."""
    if column not in table.columns:
        raise InputError(f"column missing in data_{name} {_CUT_SHORT}", star, column)
    values = pd.to_numeric(table[column], errors="coerce").to_numpy(np.float64)
    if len(values) != rows:
        raise InputError(f"data_{name} holds {len(values)} rows, expected {rows} {_CUT_SHORT}", star, f"data_{name}")
    if not np.isfinite(values).all():
        raise InputError(f"missing, non-numeric, NaN or Inf value in data_{name} {_CUT_SHORT}", star, column)
    return values


def read_checkpoint(prefix: Path, halves: bool = False) -> tuple[dict, list[Path]]:
    """The checked contents of ``{prefix}_model.star`` and the map files it names (not read): the files of
    rlnReferenceImage's file names in the STAR's folder (``halves`` names them, as :func:`map_names`, only for a
    model STAR without rlnReferenceImage).

    Returns ({"general": model_general as a dict, plus "classes", "class_K", "group_G", "curves" as
    {column: float64 array}}, [map paths]). Everything :func:`read_model` needs is checked to be there, complete
    and finite: a file cut short (a job killed while writing it), a missing block, row or column is an
    :class:`InputError` naming the file and the block or field.
    """
    star = Path(f"{prefix}_model.star")
    if not star.exists():
        raise InputError("file not found", star)
    with open(star, "rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(max(size - 1, 0))
        if size == 0 or f.read(1) != b"\n":
            raise InputError(f"does not end with a line break {_CUT_SHORT}", star)
    blocks = read_star(star)

    def block(name: str) -> pd.DataFrame:
        if name not in blocks:
            raise InputError(f"block data_{name} missing {_CUT_SHORT}", star, f"data_{name}")
        return blocks[name]

    table = block("model_general")
    if len(table) != 1:
        raise InputError(f"data_model_general must hold one row, holds {len(table)} {_CUT_SHORT}", star,
                         "data_model_general")
    values = {key: _numbers(star, "model_general", table, key, 1)[0] for key in _GENERAL_KEYS}
    general = table.iloc[0].to_dict()
    general.update(values)
    box, k, groups = (int(values[key]) for key in ("rlnOriginalImageSize", "rlnNrClasses", "rlnNrGroups"))
    if box < 2 or k < 1 or groups < 1 or values["rlnPixelSize"] <= 0:
        raise InputError(f"impossible model_general (box {box}, {k} classes, {groups} groups, pixel size "
                         f"{values['rlnPixelSize']}) {_CUT_SHORT}", star, "data_model_general")
    nsh = box // 2 + 1
    out = {"general": general}
    classes = block("model_classes")
    out["classes"] = {c: _numbers(star, "model_classes", classes, c, k)
                      for c in ("rlnClassDistribution", "rlnEstimatedResolution")}
    for c in range(k):
        name = f"model_class_{c + 1}"
        out[name] = {col: _numbers(star, name, block(name), col, nsh) for col in ("rlnSsnrMap", "rlnReferenceTau2")}
    for g in range(groups):
        name = f"model_group_{g + 1}"
        out[name] = {"rlnSigma2Noise": _numbers(star, name, block(name), "rlnSigma2Noise", nsh)}
    curves = blocks.get("model_curves")
    if curves is not None:
        _numbers(star, "model_curves", curves, "rlnSpectralIndex", nsh)
    out["curves"] = {} if curves is None else {col: _numbers(star, "model_curves", curves, col, nsh)
                                               for col in curves.columns if col != "rlnSpectralIndex"}
    if "rlnReferenceImage" in classes.columns:
        # the maps beside the STAR: the folder in the name is where the result is published (RELION's project-relative
        # name), while a checkpoint is also read from its run folder (a resumed run) or from a copy of its folder
        maps = [star.parent / os.path.basename(str(n)) for n in classes["rlnReferenceImage"]]
    else:
        maps = map_names(prefix, k, halves)
    return out, maps


def read_model(prefix: Path, halves: bool = False) -> Model:
    """Read a model written by :func:`write_model`.

    The maps are the files the checkpoint names (model_classes' rlnReferenceImage's file names, in the STAR's
    folder); ``halves`` only names them for a model STAR without that column. A checkpoint cut short, a missing map
    or one of another box is an :class:`InputError` naming the file (see :func:`read_checkpoint`).
    """
    prefix = Path(prefix)
    blocks, maps = read_checkpoint(prefix, halves)
    general = blocks["general"]
    k, box = int(general["rlnNrClasses"]), int(general["rlnOriginalImageSize"])
    star = Path(f"{prefix}_model.star")
    volumes = []
    for path in maps:
        if not path.exists():
            raise InputError(f"map named by the checkpoint {star} is missing", path, "rlnReferenceImage")
        vol, _ = read_mrc(path)
        if vol.shape != (box, box, box):
            raise InputError(f"map is {vol.shape}, the checkpoint's box is {box}", path, "box")
        volumes.append(vol)
    return Model(
        maps=np.stack(volumes),
        pdf_class=blocks["classes"]["rlnClassDistribution"],
        sigma2=np.stack([blocks[f"model_group_{g + 1}"]["rlnSigma2Noise"] for g in range(int(general["rlnNrGroups"]))]),
        tau2=np.stack([blocks[f"model_class_{c + 1}"]["rlnReferenceTau2"] for c in range(k)]),
        ssnr=np.stack([blocks[f"model_class_{c + 1}"]["rlnSsnrMap"] for c in range(k)]),
        resolution_A=blocks["classes"]["rlnEstimatedResolution"],
        sigma_offset_px=float(general["rlnSigmaOffsetsAngst"]) / float(general["rlnPixelSize"]),
        r_max=int(general["cpNextRmax"]),
        iteration=int(general["cpIteration"]),
        angpix=float(general["rlnPixelSize"]),
        options={key[3:]: value for key, value in general.items() if key.startswith("cp_")},
        extra=blocks["curves"],
    )


def initial_sigma2(particles: ParticleSet, indices, comm) -> np.ndarray:
    """(G, N//2+1) initial noise power: half the per-shell variance of the spectra across particles (RELION)."""
    n, g = particles.box, particles.n_groups
    shell = np.minimum(np.rint(np.hypot(np.fft.fftfreq(n, 1 / n)[:, None], np.arange(n // 2 + 1)[None])), n // 2)
    shell = shell.astype(np.int64).ravel()
    sums = np.zeros((g, 3, n * (n // 2 + 1)))
    for gi in range(g):
        rows = np.asarray(indices)[particles.group[indices] == gi]
        for r0 in range(0, len(rows), 256):
            spec = particles.spectra[rows[r0 : r0 + 256]].reshape(-1, n * (n // 2 + 1)).astype(np.complex128)
            sums[gi, 0] += spec.real.sum(0)
            sums[gi, 1] += spec.imag.sum(0)
            sums[gi, 2] += (np.abs(spec) ** 2).sum(0)
    counts = allreduce_sum(comm, np.bincount(particles.group[indices], minlength=g).astype(np.float64))
    allreduce_sum(comm, sums)
    out = np.zeros((g, n // 2 + 1))
    for gi in range(g):
        c = max(counts[gi], 1.0)
        var = sums[gi, 2] / c - (sums[gi, 0] / c) ** 2 - (sums[gi, 1] / c) ** 2
        out[gi] = 0.5 * np.bincount(shell, var, minlength=n // 2 + 1) / np.bincount(shell, minlength=n // 2 + 1)
    out[:, 0] = out[:, 1]
    return out


def reference_scale(reference: np.ndarray, particles: ParticleSet, indices, r_max: int, bk, comm,
                    seed: int = 0) -> float:
    """Scale that puts the reference on the data's grey scale: fit of the particles' average spectrum by the
    average of CTF-modulated reference projections in uniformly random orientations (frequencies 1..r_max)."""
    xp = bk.xp
    n = particles.box
    pix = FourierPixels(n, n, r_max)
    kxy = xp.asarray(np.column_stack([pix.kx, pix.ky]), dtype=xp.float32)
    proj = Projector(reference, bk)
    rots = random_rotations(len(particles), np.random.default_rng(seed))
    sums = np.zeros((4, pix.n_pix))  # Re, Im of sum X; Re, Im of sum C P
    indices = np.asarray(indices)
    for r0 in range(0, len(indices), 256):
        idx = indices[r0 : r0 + 256]
        x = xp.asarray(particles.spectra[idx].reshape(len(idx), -1)[:, pix.flat])
        x = (x * pix.phases(particles.origins_px()[idx], xp)).sum(axis=0)
        p = project_pixels(proj, rots[idx], kxy, bk)
        if particles.ctf is not None:
            ctf = ctf_2d(particles.ctf_subset(idx), n, particles.angpix, bk).reshape(len(idx), -1)
            p = p * ctf[:, xp.asarray(pix.flat)]
        p = p.sum(axis=0)
        sums += bk.asnumpy(xp.stack([x.real, x.imag, p.real, p.imag])).astype(np.float64)
    allreduce_sum(comm, sums)
    keep = pix.shell > 0
    num = (sums[0] * sums[2] + sums[1] * sums[3])[keep].sum()
    den = (sums[2] ** 2 + sums[3] ** 2)[keep].sum()
    if not den > 0 or not num > 0:
        raise InputError("the reference does not correlate with the particles' average (check its contrast and "
                         "centring)", field="--reference")
    return float(num / den)
