"""extract --max-ctf-resolution: micrographs whose Thon rings were fitted only to a worse resolution (or that CTF
estimation flagged) give no particles, and the record lists them."""

import json

from cryopipe.cli import main
from cryopipe.io.star import read_star, write_star


def test_poorly_fitted_micrographs_are_dropped_and_recorded(tmp_path):
    sim = tmp_path / "sim"
    assert main(["simulate", "--out", str(sim), "--micrographs", "3", "--size-px", "256",
                 "--particles-per-micrograph", "3"]) == 0
    blocks = read_star(sim / "micrographs_ctf.star")
    blocks["micrographs"]["rlnCtfMaxResolution"] = [4.0, 12.0, 5.0]
    blocks["micrographs"]["cpCtfFlagged"] = [0, 0, 1]
    write_star(tmp_path / "ctf.star", blocks)
    argv = ["extract", "--picks", str(sim / "truth/particles.star"), "--ctf", str(tmp_path / "ctf.star"),
            "--box", "64", "--device", "cpu"]
    assert main([*argv, "--out", str(tmp_path / "all")]) == 0
    assert main([*argv, "--max-ctf-resolution", "8", "--out", str(tmp_path / "good")]) == 0
    every = read_star(tmp_path / "all/particles.star")["particles"]
    kept = read_star(tmp_path / "good/particles.star")["particles"]
    first = blocks["micrographs"]["rlnMicrographName"].iloc[0]
    assert set(every["rlnMicrographName"]) > set(kept["rlnMicrographName"]) == {first}
    notes = json.loads((tmp_path / "good/provenance.json").read_text())["notes"]
    assert notes["dropped_for_ctf"] == blocks["micrographs"]["rlnMicrographName"].iloc[1:].tolist()
