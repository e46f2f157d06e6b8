"""``--compat bioem2.1`` against the reference program.

The expected numbers below were printed by BioEM 2.1 (bio-phys/BioEM, CPU build with -DBIOEM_USE_DOUBLE,
OpenMP) run on exactly the inputs that ``make_case`` (conftest.py) writes; only its printed numbers are kept
here. Agreement asserted: ln P to 1e-3 and identical maximising parameters (orientation, CTF point, centre
shift exactly as printed; normalisation and offset to the printed 4 decimals)."""

import contextlib

import numpy as np
import pytest

import cryopipe.cli
from cryopipe.backend import get_backend
from cryopipe.bioem import compat, stage
from cryopipe.errors import InputError

REFERENCE = {  # case: [(ln P, maximising parameters as printed), ...] per image
    'text': [
        (-2132.9114, [-2.3562, 1.0472, -0.7854, 0.3, 1.5, 30.0, 0.0, 0.0, 2.8859, 6.0143]),
        (-2145.5595, [-2.3562, 1.0472, -0.7854, 0.3, 1.5, 30.0, 1.0, 0.0, 2.9466, 5.9399]),
        (-2144.3902, [-2.3562, 1.0472, -0.7854, 0.3, 1.5, 30.0, -1.0, 2.0, 2.8776, 6.083]),
    ],
    'pdb_mrc': [
        (-1072.1164, [-2.0944, 2.3005, 2.0944, 0.2, 2.3333, 40.0, 1.0, -1.0, 0.0423, -0.0721]),
        (-1113.439, [-2.0944, 2.3005, 2.0944, 0.2, 2.3333, 40.0, 2.0, -2.0, 0.0407, -0.0695]),
        (-1074.0201, [-2.0944, 2.3005, 2.0944, 0.2, 2.3333, 40.0, -1.0, 0.0, 0.0422, -0.072]),
        (-1115.5835, [-2.0944, 2.3005, -2.0944, 0.2, 2.3333, 40.0, 2.0, 1.0, 0.0413, -0.0705]),
    ],
    'multi_mrc': [  # --ReadPDB --ReadMRC --ReadMultipleMRC, run in the case's folder (the list names stacks/a.mrc ...)
        (-1083.0275, [0.0, 2.0944, -2.0944, 0.2, 2.0, 40.0, -2.0, -1.0, 0.0418, -0.0713]),
        (-1110.1159, [0.0, 2.0944, 0.0, 0.2, 1.0, 40.0, 0.0, -2.0, 0.0456, -0.0778]),
        (-1111.0927, [0.0, 2.0944, 2.0944, 0.2, 2.0, 40.0, -2.0, 0.0, 0.0401, -0.0684]),
        (-1086.3588, [0.0, 2.0944, -2.0944, 0.2, 2.0, 40.0, 0.0, 1.0, 0.0417, -0.0711]),
        (-1083.9759, [0.0, 2.0944, -2.0944, 0.2, 2.0, 40.0, -2.0, 0.0, 0.0418, -0.0713]),
    ],
    'euler_list': [
        (-2120.5438, [0.0, 0.0, 0.0, 0.3, 1.5, 30.0, 0.0, 0.0, 2.6342, 6.1055]),
        (-2119.8785, [0.0, 0.0, 0.0, 0.3, 1.5, 30.0, 1.0, 0.0, 2.6401, 6.1831]),
        (-2119.271, [0.0, 0.0, 0.0, 0.3, 1.5, 30.0, -1.0, 2.0, 2.6393, 6.2449]),
    ],
    'quaternion_list': [
        (-2226.6182, [-0.3374, 0.3407, 0.3592, 0.8007, 0.3, 1.5, 30.0, 0.0, 0.0, 3.0742, 6.2288]),
        (-2230.1322, [-0.3374, 0.3407, 0.3592, 0.8007, 0.3, 1.5, 30.0, 1.0, 0.0, 3.1246, 5.9364]),
        (-2227.9521, [-0.3374, 0.3407, 0.3592, 0.8007, 0.3, 1.5, 30.0, -1.0, 2.0, 3.1009, 6.0859]),
    ],
    'quaternion_grid': [
        (-2179.3055, [-0.0, -0.0, -0.0, 1.0, 0.3, 0.5, 30.0, 0.0, 0.0, 3.4761, 5.6918]),
        (-2191.8703, [-0.0, -0.6667, -0.0, -0.7454, 0.3, 1.5, 30.0, 2.0, 0.0, 3.3499, 5.6853]),
        (-2185.9633, [-0.0, -0.6667, -0.0, -0.7454, 0.3, 1.5, 30.0, 0.0, 2.0, 3.3115, 5.7937]),
    ],
    'priors': [
        (-2226.5699, [-0.1987, 1.0133, 1.0876, 0.3, 0.5, 30.0, 0.0, 0.0, 3.428, 5.528]),
        (-2234.7055, [-1.1853, 1.094, -1.6395, 0.3, 0.5, 30.0, 2.0, 0.0, 3.1208, 5.5441]),
        (-2236.2362, [-1.1853, 1.094, -1.6395, 0.3, 0.5, 30.0, 0.0, 2.0, 3.1081, 5.6066]),
    ],
}
ANGLES = {  # case: [(image, orientation values..., ln P as printed), ...] best first per image
    'euler_list': [
        (0, 0.0, 0.0, 0.0, -2121.0704),
        (0, 1.3858, 0.7669, -1.2837, -2121.8866),
        (0, -0.836, 1.1887, -2.6925, -2122.4523),
        (1, 0.0, 0.0, 0.0, -2119.8912),
        (1, -0.836, 1.1887, -2.6925, -2124.4048),
        (1, 1.3858, 0.7669, -1.2837, -2126.2016),
        (2, 0.0, 0.0, 0.0, -2119.2821),
        (2, -0.836, 1.1887, -2.6925, -2123.8032),
        (2, 1.3858, 0.7669, -1.2837, -2127.4364),
    ],
    'quaternion_list': [
        (0, -0.3374, 0.3407, 0.3592, 0.8007, -2226.627),
        (0, 0.0, 0.0, 0.0, 1.0, -2231.3579),
        (1, -0.3374, 0.3407, 0.3592, 0.8007, -2230.1323),
        (1, 0.0, 0.0, 0.0, 1.0, -2240.3269),
        (2, -0.3374, 0.3407, 0.3592, 0.8007, -2228.019),
        (2, 0.0, 0.0, 0.0, 1.0, -2230.6907),
    ],
    'priors': [
        (0, -0.1987, 1.0133, 1.0876, -2225.7032),
        (0, 2.4573, 2.4088, -2.8027, -2235.8219),
        (1, -1.1853, 1.094, -1.6395, -2234.436),
        (1, -0.1987, 1.0133, 1.0876, -2241.2295),
        (2, -1.1853, 1.094, -1.6395, -2236.1539),
        (2, -0.1987, 1.0133, 1.0876, -2237.1361),
    ],
}

CASES = sorted(REFERENCE)


def _run(case, name, tmp_path):
    args, folder = case(name)
    with contextlib.chdir(folder):  # as the reference ran: an MRC list names its stacks relative to the working folder
        run = stage.load_compat(folder / args["Inputfile"], folder / args["Particlesfile"],
                                folder / args["ReadOrientation"] if "ReadOrientation" in args else None)
    model_file = folder / args["Modelfile"]
    model = compat.read_pdb_residues(model_file) if model_file.suffix == ".pdb" else compat.read_text_model(model_file)
    res = stage.compute_compat(model, run, get_backend("cpu"))
    files = stage.write_compat_outputs(tmp_path, "", res, run)
    return res, files


@pytest.mark.parametrize("name", CASES)
def test_log_p_and_maximising_parameters_equal_the_reference(case, name, tmp_path):
    _res, files = _run(case, name, tmp_path)
    ours = compat.parse_output_probabilities(files[0].read_text())
    assert sorted(ours) == list(range(len(REFERENCE[name])))
    for i, (log_p, params) in enumerate(REFERENCE[name]):
        assert ours[i]["log_p"] == pytest.approx(log_p, abs=1e-3)
        got = np.array(ours[i]["params"])
        assert len(got) == len(params)
        np.testing.assert_allclose(got[:-2], params[:-2], atol=1e-9)  # grid values and shifts: identical
        np.testing.assert_allclose(got[-2:], params[-2:], atol=1.5e-4)  # N^ and mu^ as printed


@pytest.mark.parametrize("name", sorted(ANGLES))
def test_per_orientation_output_equals_the_reference(case, name, tmp_path):
    _res, files = _run(case, name, tmp_path)
    rows = [[float(v) for v in line.split()] for line in files[1].read_text().splitlines() if not line.startswith("#")]
    expected = ANGLES[name]
    assert len(rows) == len(expected)
    for got, ref in zip(rows, expected, strict=True):
        assert int(got[0]) == ref[0]
        np.testing.assert_allclose(got[1:len(ref) - 1], ref[1:-1], atol=1e-9)  # orientation (and order)
        assert got[len(ref) - 1] == pytest.approx(ref[-1], abs=1e-3)  # ln P (+ prior value with PRIOR_ANGLES)


def test_cli_compat_writes_reference_layout(case, tmp_path):
    args, folder = case("euler_list")
    out = tmp_path / "out"
    rc = cryopipe.cli.main(["bioem", "--compat", "bioem2.1", "--params", str(folder / "params.txt"),
                            "--particles", str(folder / "particles.txt"), "--models", str(folder / "model.txt"),
                            "--orientations", str(folder / "angles.txt"), "--out", str(out), "--device", "cpu"])
    assert rc == 0
    ours = compat.parse_output_probabilities((out / "Output_Probabilities").read_text())
    assert [ours[i]["log_p"] for i in range(3)] == pytest.approx([r[0] for r in REFERENCE["euler_list"]], abs=1e-3)
    for name in ("ANG_PROB", "logp.star", "ranking.star", "ranking.png", "cumulative_logp.png", "provenance.json"):
        assert (out / name).exists(), name


def test_cli_reads_a_multiple_mrc_list_and_names_its_stacks_as_inputs(case, tmp_path, monkeypatch, capsys):
    args, folder = case("multi_mrc")
    monkeypatch.chdir(folder)
    argv = ["bioem", "--compat", "bioem2.1", "--params", "params.txt", "--models", "model.pdb", "--device", "cpu"]
    assert cryopipe.cli.main([*argv, "--particles", "particles_list.txt", "--out", str(tmp_path / "out")]) == 0
    ours = compat.parse_output_probabilities((tmp_path / "out" / "Output_Probabilities").read_text())
    assert [ours[i]["log_p"] for i in range(5)] == pytest.approx([r[0] for r in REFERENCE["multi_mrc"]], abs=1e-3)
    record = (tmp_path / "out" / "provenance.json").read_text()
    assert "stacks/a.mrc" in record and "stacks/b.mrc" in record
    (folder / "bad_list.txt").write_text("stacks/a.mrc\nstacks/missing.mrc\n")
    assert cryopipe.cli.main([*argv, "--particles", "bad_list.txt", "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    assert "bad_list.txt" in err and "stacks/missing.mrc" in err and "line 2" in err


def test_headers_name_the_orientation_values_as_bioem_does(case, tmp_path):
    _res, files = _run(case, "quaternion_list", tmp_path)
    assert "Maximizing Param: lnP q1 q2 q3 q4 amp" in files[0].read_text()
    assert files[1].read_text().startswith("# cryopipe bioem --compat bioem2.1: image q1 q2 q3 q4 lnP per")
    _res, files = _run(case, "euler_list", tmp_path / "e")
    assert "Maximizing Param: lnP alpha[rad] beta[rad] gamma[rad] amp" in files[0].read_text()


def test_ctf_kernel_rows_follow_quirk_1():
    p = compat.BioEMParams(1.5, 16, (1.0, 1.0, 1), (0.1, 0.1, 1), (10.0, 10.0, 1), (2, 1))
    k = compat.ctf_kernels(compat.ctf_grid(p), 16, 1.5)[0]
    assert k[0, 0] == 1.0
    np.testing.assert_array_equal(k[15], k[0])  # row N-1 holds u = 0
    np.testing.assert_array_equal(k[9], k[6])  # row N-1-u holds u
    np.testing.assert_array_equal(k[7], k[8])  # row N/2 - 1 is overwritten by u = N/2


def test_bad_parameter_files_are_input_errors(tmp_path):
    f = tmp_path / "p.txt"
    good = dict(PIXEL_SIZE="1.8", NUMBER_PIXELS="24", CTF_B_ENV="10 50 2", CTF_DEFOCUS="0.5 2.5 2",
                CTF_AMPLITUDE="0.1 0.5 2", DISPLACE_CENTER="3 1", GRIDPOINTS_ALPHA="4", GRIDPOINTS_BETA="2")
    for key, value, field in (("CTF_DEFOCUS", "0.5 9.0 2", "CTF_DEFOCUS"), ("CTF_DEFOCUS", "2.5 0.5 2", "CTF_DEFOCUS"),
                              ("USE_PSF", "", "USE_PSF"), ("NUMBER_PIXELS", "23", "NUMBER_PIXELS"),
                              ("PIXEL_SIZE", None, "PIXEL_SIZE")):
        kw = dict(good, **({key: value} if value is not None else {}))
        if value is None:
            del kw[key]
        f.write_text("".join(f"{k} {v}\n" for k, v in kw.items()))
        with pytest.raises(InputError) as err:
            compat.read_parameter_file(f)
        assert err.value.field == field


def test_empty_orientation_list_is_an_input_error(tmp_path):
    f = tmp_path / "angles.txt"
    f.write_text(f"{0:12d}\n")
    with pytest.raises(InputError, match="empty"):
        compat.read_orientation_file(f, quaternions=False, with_prior=False)


def test_run_compat_from_a_notebook(case, tmp_path):
    """compat="bioem2.1" through stage.run: the reference's numbers and layout, the orientation list among the
    inputs the record names."""
    from cryopipe.stage import StageContext

    args, folder = case("euler_list")
    out = tmp_path / "nb"
    out.mkdir()
    params = stage.RankParams(compat="bioem2.1", orientations=str(folder / "angles.txt"))
    inputs = stage.BioEMInputs(str(folder / "particles.txt"), [str(folder / "model.txt")], str(folder / "params.txt"))
    result = stage.run(params, inputs, out, StageContext.local("cpu"))
    assert {p.name for p in result.files} >= {"Output_Probabilities", "ANG_PROB", "logp.star", "ranking.star"}
    assert result.inputs == [folder / f for f in ("particles.txt", "model.txt", "params.txt", "angles.txt")]
    ours = compat.parse_output_probabilities((out / "Output_Probabilities").read_text())
    assert [ours[i]["log_p"] for i in range(3)] == pytest.approx([r[0] for r in REFERENCE["euler_list"]], abs=1e-3)
    with pytest.raises(InputError) as err:
        stage.run(stage.RankParams(compat="bioem2.1"), stage.BioEMInputs(inputs.particles, inputs.models), out,
                  StageContext.local("cpu"))
    assert err.value.field == "--params"
