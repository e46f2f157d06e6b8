"""Picking accuracy on the simulator's hard-mode conditions: F1 at the defaults beside the best fixed threshold.

For each condition of :data:`cryopipe.simulate.micrographs.HARD_CONDITIONS` (4 micrographs of 512^2 at 2.5 A/px,
120 A particles, SNR 0.05 unless the condition changes it) the picker runs with its defaults in three modes:
templates projected from the true map (20 directions), the same made CTF-aware with the micrographs' CTF, and a
blob of the particle diameter (a ring for ferritin). A pick matches a true particle within 0.2 diameters (one to
one). "best" is the fixed NCC threshold that maximises F1 on the same maps; "on excluded" is the fraction of the
default picks that lie on carbon, contaminants or aggregates; "empty" lists picks made on noise-only micrographs.

    python benchmarks/pick_accuracy.py                        # every condition, CPU
    python benchmarks/pick_accuracy.py --conditions crowded carbon_edge --modes reference
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from common import banner, markdown_table

from cryopipe.backend import get_backend
from cryopipe.pick import Picker, PickParams, project_reference
from cryopipe.pick.evaluate import evaluate, simulated_micrographs
from cryopipe.pick.templates import blob_templates
from cryopipe.simulate.micrographs import HARD_CONDITIONS, SimulateParams, simulate_dataset

MODES = ("reference", "reference+ctf", "blob")


def condition_data(name: str, folder: Path, micrographs: int | None = None, scale: int = 1):
    """Simulate one condition into ``folder``; return (params, :func:`simulated_micrographs`). ``scale`` multiplies
    the micrographs' sides, and their particles, contaminants and aggregates by its square (same density)."""
    values = dict(HARD_CONDITIONS[name])
    if micrographs:
        values["micrographs"] = micrographs
    if scale > 1:
        values["size_px"] *= scale
        values["height_px"] = values.get("height_px", 0) * scale
        for key in ("particles_per_micrograph", "contaminants", "aggregates"):
            values[key] = values.get(key, getattr(SimulateParams, key)) * scale * scale
    params = SimulateParams(**values)
    simulate_dataset(params, folder)
    return params, simulated_micrographs(folder)


def picker_for(mode: str, params: SimulateParams, folder: Path, bk) -> Picker:
    """The picker of one mode with default parameters (the particle diameter from the simulation)."""
    blob = ("ring" if params.molecule == "ferritin" else "disc") if mode == "blob" else None
    if blob:
        stack = blob_templates(params.diameter_A, params.angpix, blob)
    else:
        stack = project_reference(folder / "maps" / "conformation_1.mrc", bk, PickParams.directions)
    return Picker(stack, params.angpix, PickParams(diameter_A=params.diameter_A, blob=blob), bk)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "gpu", "auto"])
    parser.add_argument("--conditions", nargs="+", default=sorted(HARD_CONDITIONS), choices=sorted(HARD_CONDITIONS))
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--micrographs", type=int, help="micrographs per condition (default: the condition's)")
    parser.add_argument("--scale", type=int, default=1,
                        help="micrograph sides x this, particles and artefacts x its square (default 1: 512^2)")
    args = parser.parse_args(argv)
    bk = get_backend(args.device)
    print(banner("pick accuracy on hard-mode simulated micrographs", bk.name))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.conditions:
            params, items = condition_data(name, Path(tmp) / name, args.micrographs, args.scale)
            radius = 0.2 * params.diameter_A / params.angpix
            n_true = sum(len(i[1]) for i in items)
            for mode in args.modes:
                t0 = time.perf_counter()
                picker = picker_for(mode, params, Path(tmp) / name, bk)
                use = [(img, xy, mask, ctf if mode == "reference+ctf" else None) for img, xy, mask, ctf in items]
                ev = evaluate(picker, use, radius)
                d, b = ev.default, ev.best
                rows.append([name, mode, n_true, d.picks, f"{d.precision:.3f}", f"{d.recall:.3f}", f"{d.f1:.3f}",
                             f"{ev.best_threshold:.2f}", f"{b.f1:.3f}", f"{d.f1 - b.f1:+.3f}",
                             f"{ev.excluded_fraction:.3f}", f"{time.perf_counter() - t0:.1f}"])
                print(markdown_table(["condition", "mode", "true", "picks", "precision", "recall", "F1 default",
                                      "best t", "F1 best", "default - best", "on excluded", "s"], rows[-1:]),
                      flush=True)
    print()
    print(markdown_table(["condition", "mode", "true", "picks", "precision", "recall", "F1 default", "best t",
                          "F1 best", "default - best", "on excluded", "s"], rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
