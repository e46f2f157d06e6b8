"""extract and the CTF STAR's per-micrograph extras: --max-ctf-resolution drops micrographs whose Thon rings fit only
to a worse resolution (or that CTF estimation flagged, listed in the record), and a defocus plane gives each particle
the defocus at its position."""

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


def test_a_defocus_plane_gives_each_particle_the_defocus_at_its_position(tmp_path):
    """cryopipe ctf --per-tile's plane (cpDefocusPlaneA/B, A per px): defocus(x, y) = U/V + A (x - nx/2) +
    B (y - ny/2)."""
    sim = tmp_path / "sim"
    assert main(["simulate", "--out", str(sim), "--micrographs", "1", "--size-px", "256",
                 "--particles-per-micrograph", "4"]) == 0
    blocks = read_star(sim / "micrographs_ctf.star")
    blocks["micrographs"]["cpDefocusPlaneA"] = [2.0]
    blocks["micrographs"]["cpDefocusPlaneB"] = [-1.5]
    write_star(tmp_path / "ctf.star", blocks)
    assert main(["extract", "--picks", str(sim / "truth/particles.star"), "--ctf", str(tmp_path / "ctf.star"),
                 "--box", "64", "--device", "cpu", "--out", str(tmp_path / "ex")]) == 0
    particles = read_star(tmp_path / "ex/particles.star")["particles"]
    mic = blocks["micrographs"].iloc[0]
    shift = 2.0 * (particles["rlnCoordinateX"] - 128) - 1.5 * (particles["rlnCoordinateY"] - 128)
    assert len(particles) > 0 and shift.abs().max() > 1.0
    assert (particles["rlnDefocusU"] - (mic["rlnDefocusU"] + shift)).abs().max() < 1e-6
    assert (particles["rlnDefocusV"] - (mic["rlnDefocusV"] + shift)).abs().max() < 1e-6
