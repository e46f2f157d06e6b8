"""Accuracy of a finished demo run against the simulation's truth (3D classes, BioEM ranking): run after
``make demo``.

Each particle of a stage's STAR is matched to the simulated particle on the same micrograph within ``--radius`` px
(a k-d tree per micrograph); its true conformation is that particle's ``rlnClassNumber`` in
``results/simulate/truth/particles.star``. Printed:

* class3d: the share of matched particles whose class is their conformation's (best class-to-conformation map);
* bioem: the true mixture of the ranked particles, the ensemble weights of ``ranking.star`` and, per true
  conformation, each model's summed ln P and how many particles prefer it.

    python benchmarks/demo_accuracy.py [--results results]
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree

from cryopipe.io.star import read_particles, read_star


def true_conformations(star: Path, truth: Path, radius: float) -> np.ndarray:
    """(n,) true conformation (1, 2, ...) of each particle of ``star``; 0 where no simulated particle is near."""
    cols = ["rlnMicrographName", "rlnCoordinateX", "rlnCoordinateY"]
    table, ref = read_particles(star, cols), read_particles(truth, [*cols, "rlnClassNumber"])
    mic, ref_mic = (t["rlnMicrographName"].map(lambda s: Path(s).name).to_numpy() for t in (table, ref))
    out = np.zeros(len(table), dtype=np.int64)
    for name in np.unique(mic):
        mine, theirs = np.flatnonzero(mic == name), np.flatnonzero(ref_mic == name)
        if not len(theirs):
            continue
        dist, j = cKDTree(ref[cols[1:]].to_numpy()[theirs]).query(table[cols[1:]].to_numpy()[mine])
        near = dist < radius
        out[mine[near]] = ref["rlnClassNumber"].to_numpy()[theirs[j[near]]]
    return out


def class3d_agreement(results: Path, truth: Path, radius: float) -> None:
    data = sorted((results / "class3d").glob("run_it*_data.star"))
    if not data:
        return
    conf = true_conformations(data[-1], truth, radius)
    cls = read_particles(data[-1], ["rlnClassNumber"])["rlnClassNumber"].to_numpy()
    m = conf > 0
    k = max(cls.max(), conf.max())
    best = max(np.mean([perm[c - 1] == t - 1 for c, t in zip(cls[m], conf[m], strict=True)])
               for perm in itertools.permutations(range(k)))
    print(f"class3d ({data[-1].name}): {m.sum()} of {len(m)} particles matched to the truth; "
          f"{100 * best:.1f}% in the class of their conformation")


def bioem_ranking(results: Path, truth: Path, radius: float) -> None:
    logp_path = results / "bioem" / "logp.star"
    if not logp_path.exists():
        return
    logp = read_star(logp_path)["logp"]
    models = list(dict.fromkeys(logp["cpModelName"]))
    per_model = [logp[logp["cpModelName"] == m].sort_values("cpParticleIndex") for m in models]
    lnp = np.stack([t["cpLogP"].to_numpy() for t in per_model])
    particles = read_particles(_bioem_particles(results), ["rlnImageName"])
    conf = true_conformations(_bioem_particles(results), truth, radius)
    assert len(particles) == lnp.shape[1], "logp.star and the ranked particles differ in length"
    m = conf > 0
    mixture = {int(c): round(float(np.mean(conf[m] == c)), 3) for c in np.unique(conf[m])}
    ranking = read_star(results / "bioem" / "ranking.star")["ranking"]
    weights = dict(zip(ranking["cpModelName"], ranking["cpEnsembleWeight"].round(3), strict=True))
    print(f"bioem: {m.sum()} of {len(m)} ranked particles matched; true mixture {mixture}; ensemble weights {weights}")
    for c in np.unique(conf[m]):
        sel = conf == c
        sums = ", ".join(f"{name} {s:.1f}" for name, s in zip(models, lnp[:, sel].sum(1), strict=True))
        prefer = np.bincount(lnp[:, sel].argmax(0), minlength=len(models))
        print(f"  conformation {c} ({sel.sum()} particles): summed ln P {sums}; preferred by "
              + ", ".join(f"{name} {n}" for name, n in zip(models, prefer, strict=True)))


def _bioem_particles(results: Path) -> Path:
    """The particles BioEM ranked: refine3d's, else class3d's last data STAR."""
    refined = results / "refine3d" / "particles.star"
    return refined if refined.exists() else sorted((results / "class3d").glob("run_it*_data.star"))[-1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", type=Path, default=Path("results"))
    ap.add_argument("--radius", type=float, default=24.0, help="matching radius, micrograph pixels")
    args = ap.parse_args()
    truth = args.results / "simulate" / "truth" / "particles.star"
    class3d_agreement(args.results, truth, args.radius)
    bioem_ranking(args.results, truth, args.radius)


if __name__ == "__main__":
    main()
