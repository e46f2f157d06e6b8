"""The simulator's hard mode (issue #17): crowding, carbon, contaminants, aggregates, the denoised export,
rectangular micrographs, other molecules and the named conditions. Off by default, so the demo's files are
bit-identical to those before it existed; on, each feature does what its parameters say and the ground truth
(true particles, excluded regions) follows."""

import argparse
import hashlib
from pathlib import Path

import numpy as np
import pytest
from scipy.ndimage import distance_transform_edt
from scipy.spatial.distance import pdist

from cryopipe.ctf import CTFParams, ctf_2d
from cryopipe.errors import InputError
from cryopipe.io.mrc import read_mrc
from cryopipe.io.star import read_star
from cryopipe.simulate import artefacts, cli
from cryopipe.simulate.crowding import accessible_area, allowed_centres, covered_fraction, rsa_positions
from cryopipe.simulate.ice import ctf_half, ctf_rfft_grid
from cryopipe.simulate.micrographs import (
    HARD_CONDITIONS,
    SimulateParams,
    hard_params,
    simulate_dataset,
    simulate_micrograph_full,
)
from cryopipe.simulate.molecules import MOLECULE_RADIUS_A, build_molecule

# sha256 over each dataset's micrographs and maps (float32 bytes), models (PDB text) and STAR files (less their
# time-stamped comment lines), names rooted at /demo; computed with the simulator before hard mode existed (at
# the SNR that was the default then, 0.1)
DEMO_DIGESTS = [
    (dict(snr=0.1, seed=11, micrographs=3, size_px=256, particles_per_micrograph=6, ice_gradient_every=2),
     "a5aa773310fc1ac59680774e37168a9ae35bd61853579be46e9fa09f62df7310"),
    (dict(snr=0.1, seed=4, micrographs=2, size_px=256, particles_per_micrograph=8, ice_gradient_every=1, ice_snr=0.3,
          phase_shift=30.0),
     "686d1a67cc1c2bf9889c6c061cb72098bc2db1482abfaa34aa384c9468be9bd0"),
]
STARS = ("micrographs_ctf.star", "truth/micrographs.star", "truth/particles.star")
CTF = CTFParams(defocus_u=15000.0, defocus_v=13500.0, defocus_angle=30.0, voltage=300.0, cs=2.7,
                amplitude_contrast=0.1, bfactor=40.0)


def _digest(params: SimulateParams, out: Path) -> str:
    simulate_dataset(params, out, names_root=Path("/demo"))
    h = hashlib.sha256()
    for k in range(params.micrographs):
        h.update(read_mrc(out / "micrographs" / f"mic_{k + 1:03d}.mrc")[0].tobytes())
    for name in ("conformation_1", "conformation_2", "decoy"):
        h.update(read_mrc(out / "maps" / f"{name}.mrc")[0].tobytes())
        h.update((out / "models" / f"{name}.pdb").read_bytes())
    for star in STARS:
        h.update(b"".join(line for line in (out / star).read_bytes().splitlines(True) if not line.startswith(b"#")))
    return h.hexdigest()


@pytest.mark.parametrize(("overrides", "digest"), DEMO_DIGESTS)
def test_defaults_leave_the_dataset_bit_identical(tmp_path, overrides, digest):
    assert _digest(SimulateParams(**overrides), tmp_path) == digest
    assert not (tmp_path / "truth" / "excluded").exists()
    columns = read_star(tmp_path / "truth/micrographs.star")["micrographs"].columns
    assert not {"cpCoverage", "cpCarbonFraction", "cpContaminants", "cpAggregates", "cpLevelLow"} & set(columns)


def _micrograph(name: str, index: int = 0, **overrides):
    p = hard_params(name, **overrides)
    models = build_molecule(p.molecule, p.seed)
    return p, simulate_micrograph_full(p, np.random.default_rng(p.seed), models, CTF, False, index=index)


def _xy(result) -> np.ndarray:
    return result.truth[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy()


def test_crowded_micrograph_reaches_the_coverage_with_touching_allowed_neighbours():
    p, m = _micrograph("crowded")
    d = p.diameter_A / p.angpix
    xy = _xy(m)
    assert m.columns["cpCoverage"] == pytest.approx(0.4, abs=0.05)
    assert len(xy) > 40 and pdist(xy).min() >= d
    assert pdist(xy).min() < 1.05 * d  # some touch
    margin = p.map_box // 2 + 2
    assert xy.min() >= margin - 0.5 and xy.max() <= p.size_px - 1 - margin + 0.5


def test_random_sequential_addition_reaches_045_and_jams_near_half():
    allowed = allowed_centres((512, 768), 34, None, 24.0)
    accessible = accessible_area(allowed, 24.0)
    for coverage, (low, high) in ((0.45, (0.445, 0.47)), (0.5, (0.48, 0.53))):
        xy = rsa_positions(np.random.default_rng(3), coverage, allowed, 24.0)
        assert low <= covered_fraction(xy, 24.0, accessible) <= high
        assert pdist(xy).min() >= 48.0
        assert allowed[np.round(xy[:, 1]).astype(int), np.round(xy[:, 0]).astype(int)].all()


def test_excluded_regions_hold_no_true_particle_and_are_written(tmp_path):
    p = hard_params("contaminants", micrographs=1, carbon=0.2)
    simulate_dataset(p, tmp_path)
    mask, _ = read_mrc(tmp_path / "truth/excluded/mic_001.mrc")
    assert mask.shape == p.shape and set(np.unique(mask)) == {0.0, 1.0}
    truth = read_star(tmp_path / "truth/particles.star")["particles"]
    mics = read_star(tmp_path / "truth/micrographs.star")["micrographs"]
    assert len(truth) == mics["cpParticles"].sum() == p.particles_per_micrograph  # aggregates are not true
    xy = truth[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy()
    distance = distance_transform_edt(mask == 0)[np.round(xy[:, 1]).astype(int), np.round(xy[:, 0]).astype(int)]
    assert distance.min() > 0.5 * p.diameter_A / p.angpix - 1
    row = mics.iloc[0]
    assert row["cpContaminants"] == 3 and row["cpAggregates"] == 2 and 10 <= row["cpAggregateParticles"] <= 24
    assert row["cpCarbonFraction"] == pytest.approx(0.2, abs=0.02)
    assert row["cpExcludedFraction"] == pytest.approx(mask.mean()) and row["cpExcludedFraction"] > 0.25


def test_carbon_is_darker_than_the_ice_by_the_stated_offset():
    p, m = _micrograph("empty", carbon=0.3)
    assert m.columns["cpCarbonFraction"] == pytest.approx(0.3, abs=0.02)
    carbon = m.excluded
    depth = distance_transform_edt(~carbon) - distance_transform_edt(carbon)  # > 0 on the ice side
    edge_px = artefacts.CARBON_EDGE_A / p.angpix
    on_carbon, on_ice = m.image[depth < -4 * edge_px], m.image[depth > 4 * edge_px]
    step = (on_carbon.mean() - on_ice.mean()) / m.noise_sd
    assert step == pytest.approx(-artefacts.CARBON_OFFSET, abs=0.1)
    from scipy.ndimage import gaussian_filter

    smooth = gaussian_filter(m.image / m.noise_sd, artefacts.CARBON_TEXTURE_A / p.angpix)
    assert smooth[depth < -30].std() > 3 * smooth[depth > 30].std()  # the carbon's own texture


def test_contaminants_are_large_soft_dark_or_bright_blobs():
    peaks, diameters = [], []
    for seed in range(40):
        image, mask = artefacts.contaminants(np.random.default_rng(seed), (768, 768), 1, 48.0)
        if mask[[0, -1]].any() or mask[:, [0, -1]].any():
            continue  # cut by the edge
        peaks.append(image.flat[np.argmax(np.abs(image))])
        diameters.append(2 * np.sqrt(mask.sum() / np.pi) / 48.0)
        ramp = (np.abs(image) > 0.2 * abs(peaks[-1])) & (np.abs(image) < 0.8 * abs(peaks[-1]))
        assert ramp.sum() > 0.05 * mask.sum()  # a soft edge, not a step
    peaks, diameters = np.array(peaks), np.array(diameters)
    assert len(peaks) > 20 and 1.3 < diameters.min() and diameters.max() < 4.4 and np.ptp(diameters) > 1.0
    dark, bright = peaks[peaks < 0], peaks[peaks > 0]
    assert len(dark) > 2 * len(bright) > 0
    assert -4.0 <= dark.min() and dark.max() <= -2.0 and 0.5 <= bright.min() and bright.max() <= 1.5


def test_denoised_export_has_256_levels_and_the_same_truth():
    p, on = _micrograph("denoised", size_px=384)
    _, off = _micrograph("denoised", size_px=384, denoised=0)
    assert on.truth.equals(off.truth) and on.noise_sd == off.noise_sd
    levels = np.unique(on.image)
    assert len(levels) <= 256 and levels.min() == 0 and levels.max() == 255
    np.testing.assert_array_equal(levels, np.round(levels))
    raw = (np.clip(off.image, on.columns["cpLevelLow"], on.columns["cpLevelHigh"]) - on.columns["cpLevelLow"])
    corr = np.corrcoef(on.image.ravel(), raw.ravel())[0, 1]
    assert 0.1 < corr < 0.9  # the raw image, smoothed: its white noise is gone
    assert np.corrcoef(on.image[:, 1:].ravel(), on.image[:, :-1].ravel())[0, 1] > 0.9


def test_ctf_on_a_rectangular_grid_uses_each_axis_frequencies():
    square = np.asarray(ctf_2d(CTF, 512, 2.0))[0]
    assert np.abs(ctf_rfft_grid(CTF, (512, 512), 2.0) - square).max() < 1e-4
    # a 256-row image samples every second row of a 512 box's spectrum, a 256-column one every second column
    assert np.abs(ctf_half(CTF, (256, 512), 2.0) - square[::2]).max() < 1e-4
    assert np.abs(ctf_half(CTF, (512, 256), 2.0) - square[:, ::2]).max() < 1e-4


def test_rectangular_ice_has_its_thon_rings_where_the_ctf_has_zeros():
    p = SimulateParams(snr=0.1, seed=2, size_px=512, height_px=256, angpix=2.0, diameter_A=100.0,
                       particles_per_micrograph=0, ice_snr=50.0, ice_gradient_every=0)
    m = simulate_micrograph_full(p, np.random.default_rng(2), build_molecule("complex", 2), CTF, False)
    assert m.image.shape == (256, 512)
    power = np.abs(np.fft.rfft2(m.image - m.image.mean())) ** 2
    s = np.hypot(np.fft.fftfreq(256, 2.0)[:, None], np.fft.rfftfreq(512, 2.0)[None, :])
    band = (s > 1 / 40) & (s < 1 / 8)

    def zeros_over_peaks(ctf_image):
        c = np.abs(ctf_image)[band] / np.exp(-0.25 * CTF.bfactor * s[band] ** 2)  # |sin(gamma)|
        return power[band][c < 0.1].mean() / power[band][c > 0.95].mean()

    assert zeros_over_peaks(ctf_half(CTF, (256, 512), 2.0)) < 0.1
    # the square grid's CTF cut to the image's rows (as if rows had the columns' frequencies) misses the rings
    assert zeros_over_peaks(np.asarray(ctf_2d(CTF, 512, 2.0))[0][:256]) > 0.5


def test_rectangular_micrographs_place_particles_over_the_whole_width_and_grade_evenly():
    p, m = _micrograph("rectangular")
    assert m.image.shape == (448, 640)
    xy, margin = _xy(m), p.map_box // 2 + 2
    assert xy[:, 0].max() > 448 and xy[:, 0].max() <= 640 - 1 - margin and xy[:, 1].max() <= 448 - 1 - margin
    rng = np.random.default_rng(p.seed)
    models = build_molecule(p.molecule, p.seed)
    q = hard_params("rectangular", ice_gradient_sd=10.0, particles_per_micrograph=2)
    flat = simulate_micrograph_full(q, np.random.default_rng(p.seed), models, CTF, False)
    graded = simulate_micrograph_full(q, rng, models, CTF, True).image
    plane = graded.astype(np.float64) - flat.image
    yy, xx = np.mgrid[0:448, 0:640]
    coef, *_ = np.linalg.lstsq(np.column_stack([xx.ravel(), yy.ravel(), np.ones(xx.size)]), plane.ravel(), rcond=None)
    assert np.hypot(*coef[:2]) * 640 == pytest.approx(10.0 * flat.noise_sd, rel=1e-4)  # same slope in x and y


def test_ferritin_is_a_hollow_shell_and_the_rod_is_elongated(tmp_path):
    p = SimulateParams(snr=0.1, seed=6, micrographs=1, size_px=256, particles_per_micrograph=3, molecule="ferritin")
    simulate_dataset(p, tmp_path)
    vol, _ = read_mrc(tmp_path / "maps/conformation_1.mrc")
    z, y, x = np.mgrid[0:64, 0:64, 0:64] - 32
    r = np.sqrt(x**2 + y**2 + z**2) * p.angpix
    centre, shell = vol[r < 30].mean(), vol[(r > 45) & (r < 55)].mean()
    assert centre < 0.02 * shell
    holo, _ = read_mrc(tmp_path / "maps/conformation_2.mrc")
    assert holo[r < 30].mean() > 0.5 * shell  # holoferritin's iron core
    for name in ("ferritin", "rod"):
        for model in build_molecule(name, 6).values():
            assert np.linalg.norm(model.xyz, axis=1).max() <= MOLECULE_RADIUS_A[name]
    rod = build_molecule("rod", 6)["conformation_1"].xyz
    lengths = np.sort(np.ptp(rod, axis=0))
    assert 2.5 < lengths[2] / lengths[1] < 3.5


def test_empty_condition_has_no_particles_only_noise(tmp_path):
    simulate_dataset(hard_params("empty", micrographs=1), tmp_path)
    assert len(read_star(tmp_path / "truth/particles.star")["particles"]) == 0
    image, _ = read_mrc(tmp_path / "micrographs/mic_001.mrc")
    noise_sd = read_star(tmp_path / "truth/micrographs.star")["micrographs"]["cpNoiseSd"].iloc[0]
    assert image.std() == pytest.approx(noise_sd, rel=0.01) and abs(image.mean()) < 0.01 * noise_sd


def test_hard_conditions_are_valid_and_named():
    assert {"crowded", "low_snr", "carbon_edge", "contaminants", "denoised", "rectangular", "ice_gradient",
            "ferritin", "empty"} <= set(HARD_CONDITIONS)
    for name in HARD_CONDITIONS:
        hard_params(name).validate()
    assert HARD_CONDITIONS["rectangular"]["height_px"] != HARD_CONDITIONS["rectangular"]["size_px"]
    with pytest.raises(InputError, match="--preset"):
        hard_params("nope")


@pytest.mark.parametrize(("overrides", "flag"), [
    (dict(coverage=0.7), "--coverage"), (dict(carbon=-0.1), "--carbon"), (dict(height_px=100), "--height-px"),
    (dict(height_px=301), "--height-px"), (dict(denoised=2), "--denoised"), (dict(molecule="virus"), "--molecule"),
    (dict(molecule="ferritin", map_box=50), "--map-box"), (dict(contaminants=-1), "--contaminants"),
    (dict(aggregates=-2), "--aggregates"), (dict(particles_per_micrograph=-1), "--particles-per-micrograph"),
])
def test_bad_hard_mode_parameters_name_their_flag(overrides, flag):
    with pytest.raises(InputError, match=flag):
        SimulateParams(**overrides).validate()


def test_cli_preset_is_overridden_by_the_flags_given():
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    params, _ = cli.configure(parser.parse_args(["--out", "x", "--preset", "crowded", "--snr", "0.1",
                                                 "--micrographs", "2"]))
    assert params.coverage == 0.4 and params.size_px == 512
    assert params.snr == 0.1 and params.micrographs == 2  # given, though 0.1 is the default
    params, _ = cli.configure(parser.parse_args(["--out", "x", "--molecule", "rod", "--denoised", "1",
                                                 "--height-px", "384"]))
    assert (params.molecule, params.denoised, params.shape) == ("rod", 1, (384, 1024))
