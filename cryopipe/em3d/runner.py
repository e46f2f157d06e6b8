"""Bookkeeping shared by the iterative stages: gathering per-particle E-step results, table columns, checkpoints
(written in the background) and the options of --continue."""

from __future__ import annotations

import dataclasses
import logging
import threading
from pathlib import Path

import numpy as np

from cryopipe.em3d.estep import EStepResult
from cryopipe.em3d.model import Model, write_model, write_particles_exact
from cryopipe.em3d.particles import ParticleSet
from cryopipe.errors import InputError
from cryopipe.io.star import portable_image_names, read_particles

log = logging.getLogger(__name__)

RESULT_FIELDS = ("best_class", "euler", "origin_px", "loglik", "max_prob", "n_significant")


def gather_results(res: EStepResult, indices, n_total: int, comm) -> dict:
    """Per-particle results of all ranks as full arrays (every rank gets them): {field: (n_total, ...)} for
    ``RESULT_FIELDS``: best_class (n,) 0-based, euler (n, 3) deg, origin_px (n, 2) px, loglik (n,), max_prob (n,),
    n_significant (n,); ``indices`` (n_mine,) are the rows this rank's ``res`` holds."""
    parts = comm.allgather((np.asarray(indices), {f: getattr(res, f) for f in RESULT_FIELDS}))
    out = {}
    for f in RESULT_FIELDS:
        first = parts[0][1][f]
        out[f] = np.zeros((n_total,) + first.shape[1:], dtype=first.dtype)
        for idx, values in parts:
            out[f][idx] = values[f]
    return out


def update_table(particles: ParticleSet, results: dict) -> None:
    """Write best class (1-based), angles (deg), origins (A: px x angpix) and statistics into the particle table,
    in place (``results``: :func:`gather_results`)."""
    t = particles.table
    t["rlnClassNumber"] = results["best_class"] + 1
    t["rlnAngleRot"], t["rlnAngleTilt"], t["rlnAnglePsi"] = results["euler"].T
    t["rlnOriginXAngst"], t["rlnOriginYAngst"] = (results["origin_px"] * particles.angpix).T
    t["rlnLogLikeliContribution"] = results["loglik"]
    t["rlnMaxValueProbDistribution"] = results["max_prob"]
    t["rlnNrOfSignificantSamples"] = results["n_significant"]


def portable_names(particles: ParticleSet) -> None:
    """rlnImageName as the data STARs written into the output folder must give it, in place: as the input STAR
    had it where it resolves from the working directory (RELION's rule), else the path it resolved to
    (:func:`cryopipe.io.star.portable_image_names`)."""
    particles.table["rlnImageName"] = portable_image_names(particles.table["rlnImageName"], particles.path,
                                                           particles.stacks)


def write_checkpoint(out, iteration: int, model: Model, particles: ParticleSet, halves: bool = False,
                     names_root=None) -> list:
    """Write run_itNNN_{data,model}.star and the maps (``halves``: run_itNNN_half{1,2}_class001.mrc, else
    run_itNNN_classKKK.mrc) into ``out``; return the files. ``names_root``: the folder the model STAR's
    rlnReferenceImage names the maps in (the published folder, ``ctx.final(out)``; None: ``out``)."""
    out = Path(out)
    prefix = out / f"run_it{iteration:03d}"
    files = write_model(prefix, model, halves, names_root=out if names_root is None else names_root)
    write_particles_exact(f"{prefix}_data.star", particles.table)
    return [f"{prefix}_data.star", *files]


class CheckpointWriter:
    """Writes checkpoints (:func:`write_checkpoint`) in a background thread, so that rank 0 starts the next
    E-step while the maps go to disk (seconds per iteration at 360 px, serial work the other ranks would wait for).

    One write in flight at a time; :meth:`submit` snapshots the particle table (the next iteration rewrites it;
    the model is replaced, not changed). An error in a write is raised at the next :meth:`submit` or at
    :meth:`wait`, which returns every file written so far. ``names_root``: the folder the checkpoints' model STARs
    name their maps in (the stage's ``ctx.final(out)``; None: the folder written into).
    """

    def __init__(self, names_root=None):
        self.names_root = names_root
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self.files: list = []

    def submit(self, out, iteration: int, model: Model, particles: ParticleSet, halves: bool = False) -> None:
        self.wait()
        snapshot = dataclasses.replace(particles, table=particles.table.copy())

        def write():
            try:
                self.files += write_checkpoint(out, iteration, model, snapshot, halves, self.names_root)
            except BaseException as exc:  # noqa: BLE001 - handed to the main thread by wait()
                self._error = exc

        self._thread = threading.Thread(target=write, name=f"checkpoint-{iteration}")
        self._thread.start()

    def wait(self) -> list:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        return self.files


def restore_table(particles: ParticleSet, data_star, columns) -> None:
    """Copy ``columns`` from a checkpoint's data STAR into the particle table (rows must correspond)."""
    saved = read_particles(data_star)
    if len(saved) != len(particles):
        raise InputError(f"checkpoint holds {len(saved)} particles, --particles {len(particles)}", data_star,
                         "data_particles")
    for c in columns:
        if c in saved.columns:
            particles.table[c] = saved[c].to_numpy()
    # the checkpoint's column order, so a continued run writes the files an uninterrupted one would
    first = [c for c in saved.columns if c in particles.table.columns]
    particles.table = particles.table[first + [c for c in particles.table.columns if c not in first]]


def check_options(stored: dict, given: dict, fixed, flags: dict | None = None) -> dict:
    """Merge the options of a checkpoint with the ones given on --continue.

    ``given`` holds None for options the user did not give. An option in ``fixed`` given with a different value
    raises InputError naming its flag (``flags[key]``, else ``--key-with-dashes``); the others override the stored
    value. Returns the merged options.
    """
    merged = dict(stored)
    for key, value in given.items():
        if value is None:
            continue
        old = stored.get(key)
        same = old is not None and (str(old) == str(value) or _num_equal(old, value))
        if key in fixed and old is not None and not same:
            raise InputError(f"cannot change {key} on --continue (checkpoint has {old!r}, given {value!r})",
                             field=(flags or {}).get(key, f"--{key.replace('_', '-')}"))
        if not same and old is not None:
            log.info("option %s changed on continue: %r -> %r", key, old, value)
        merged[key] = value
    return merged


def _num_equal(a, b) -> bool:
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return False
