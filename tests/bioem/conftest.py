"""Inputs in BioEM 2.1's formats, written by plain NumPy from fixed seeds (no cryopipe code involved), so that
the numbers the reference program printed for them stay valid expected values (see test_compat.py)."""

from pathlib import Path

import mrcfile
import numpy as np
import pytest

RESIDUES = ["ALA", "GLY", "LEU", "TRP", "SER", "LYS", "ASP", "PHE", "VAL", "GLU", "TYR", "CYS", "ARG"]


def blob_images(xy, weights, n, angpix, sigma_A, rng, noise, offset=0.0, shifts=None):
    """(I, n, n) images I[i][j] (i along x): Gaussian blobs at the points' (x, y) (A, from pixel n/2) + noise."""
    grid = (np.arange(n) - n / 2) * angpix
    images = []
    for k in range(len(shifts)):
        sx, sy = shifts[k]
        gx = np.exp(-0.5 * ((grid[None, :] - xy[:, :1] - sx * angpix) / sigma_A) ** 2)
        gy = np.exp(-0.5 * ((grid[None, :] - xy[:, 1:2] - sy * angpix) / sigma_A) ** 2)
        clean = (weights[:, None] * gx).T @ gy
        images.append(clean + offset + noise * rng.standard_normal((n, n)))
    return np.array(images)


def write_text_model(path, rng, n_points=30):
    xyz = rng.normal(0.0, 6.0, size=(n_points, 3)) + np.array([1.5, -0.7, 0.4])
    radius = rng.uniform(1.5, 3.5, n_points)
    electrons = rng.uniform(5.0, 20.0, n_points)
    Path(path).write_text("".join(f"{x:.3f} {y:.3f} {z:.3f} {r:.3f} {e:.3f}\n"
                                  for (x, y, z), r, e in zip(xyz, radius, electrons, strict=True)))
    return xyz, electrons


def write_text_particles(path, images):
    lines = []
    for img in images:
        lines.append("PARTICLE")
        n = img.shape[0]
        lines += [f"{i:8d}{j:8d}{img[i, j]:16.8f}" for i in range(n) for j in range(n)]
    Path(path).write_text("\n".join(lines) + "\n")


def write_pdb(path, rng, n_res=25):
    """CA atoms of mixed residues plus N atoms and one HETATM calcium that BioEM ignores."""
    xyz = rng.normal(0.0, 7.0, size=(n_res, 3))
    lines, serial = [], 1
    for k in range(n_res):
        res = RESIDUES[k % len(RESIDUES)]
        for name, d in ((" N  ", -1.2), (" CA ", 0.0)):
            x, y, z = xyz[k] + d
            lines.append(f"ATOM  {serial:5d} {name} {res} A{k + 1:4d}    {x:8.3f}{y:8.3f}{z:8.3f}  1.00 20.00"
                         f"           {name.strip()[0]}")
            serial += 1
    lines.append(f"HETATM{serial:5d} CA    CA A 900    {1.0:8.3f}{2.0:8.3f}{3.0:8.3f}  1.00 20.00          CA")
    Path(path).write_text("\n".join(lines) + "\nEND\n")
    return xyz


def write_euler_list(path, rng, n=12, prior=False):
    alpha = rng.uniform(-np.pi, np.pi, n)
    beta = np.arccos(rng.uniform(-1, 1, n))
    ang = np.column_stack([alpha, beta, rng.uniform(-np.pi, np.pi, n)])
    ang[0] = (0.0, 0.0, 0.0)
    pri = rng.uniform(0.2, 1.0, n)
    rows = [("".join(f"{v:12.6f}" for v in a) + (f"{p:12.6f}" if prior else "")) for a, p in zip(ang, pri, strict=True)]
    Path(path).write_text(f"{n:12d}\n" + "\n".join(rows) + "\n")


def write_quaternion_list(path, rng, n=10):
    q = rng.standard_normal((n, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    q[0] = (0.0, 0.0, 0.0, 1.0)
    Path(path).write_text(f"{n:12d}\n" + "\n".join("".join(f"{v:12.6f}" for v in row) for row in q) + "\n")


def write_params(path, **kw):
    Path(path).write_text("".join(f"{k} {v}\n" for k, v in kw.items()))


BASE = dict(PIXEL_SIZE="1.8", NUMBER_PIXELS="24", CTF_B_ENV="10.0 50.0 2", CTF_DEFOCUS="0.5 2.5 2",
            CTF_AMPLITUDE="0.1 0.5 2", DISPLACE_CENTER="3 1")


def make_case(folder, name):
    """Write case ``name`` into ``folder``; return the reference program's command-line arguments (files)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(sum(map(ord, name)))
    if name == "pdb_mrc":
        xyz = write_pdb(folder / "model.pdb", rng)
        imgs = blob_images(xyz, np.full(len(xyz), 60.0), 32, 2.0, 3.0, rng, 4.0, offset=100.0,
                           shifts=[(0, 0), (1, -2), (-2, 1), (2, 2)])
        with mrcfile.new(folder / "particles.mrc", overwrite=True) as m:
            m.set_data(np.ascontiguousarray(imgs.transpose(0, 2, 1)).astype(np.float32))
        write_params(folder / "params.txt", PIXEL_SIZE="2.0", NUMBER_PIXELS="32", GRIDPOINTS_ALPHA="3",
                     GRIDPOINTS_BETA="3", CTF_B_ENV="20.0 60.0 2", CTF_DEFOCUS="1.0 3.0 3", CTF_AMPLITUDE="0.2 0.2 1",
                     DISPLACE_CENTER="2 1")
        return dict(Modelfile="model.pdb", Particlesfile="particles.mrc", Inputfile="params.txt",
                    flags=["--ReadPDB", "--ReadMRC"])
    if name == "multi_mrc":  # BioEM's --ReadMultipleMRC: a list naming MRC stacks, relative to the working folder
        xyz = write_pdb(folder / "model.pdb", rng)
        imgs = blob_images(xyz, np.full(len(xyz), 60.0), 32, 2.0, 3.0, rng, 4.0, offset=50.0,
                           shifts=[(0, 0), (1, -2), (-2, 1), (2, 2), (0, 1)])
        (folder / "stacks").mkdir(exist_ok=True)
        for stack, part in (("a.mrc", imgs[:2]), ("b.mrc", imgs[2:])):
            with mrcfile.new(folder / "stacks" / stack, overwrite=True) as m:
                m.set_data(np.ascontiguousarray(part.transpose(0, 2, 1)).astype(np.float32))
        (folder / "particles_list.txt").write_text("stacks/a.mrc\nstacks/b.mrc\nXXX\n")
        write_params(folder / "params.txt", PIXEL_SIZE="2.0", NUMBER_PIXELS="32", GRIDPOINTS_ALPHA="3",
                     GRIDPOINTS_BETA="2", CTF_B_ENV="20.0 60.0 2", CTF_DEFOCUS="1.0 3.0 2", CTF_AMPLITUDE="0.2 0.2 1",
                     DISPLACE_CENTER="2 1")
        return dict(Modelfile="model.pdb", Particlesfile="particles_list.txt", Inputfile="params.txt",
                    flags=["--ReadPDB", "--ReadMRC", "--ReadMultipleMRC"])
    xyz, e = write_text_model(folder / "model.txt", rng)
    centred = xyz - (e[:, None] * xyz).sum(0) / e.sum()
    imgs = blob_images(centred, e, 24, 1.8, 2.5, rng, 2.0, shifts=[(0, 0), (1, 0), (-1, 2)])
    write_text_particles(folder / "particles.txt", imgs)
    args = dict(Modelfile="model.txt", Particlesfile="particles.txt", Inputfile="params.txt", flags=[])
    params = dict(BASE)
    if name == "text":
        params.update(GRIDPOINTS_ALPHA="4", GRIDPOINTS_BETA="2")
    elif name == "euler_list":
        write_euler_list(folder / "angles.txt", rng)
        params.update(WRITE_PROB_ANGLES="3")
        args["ReadOrientation"] = "angles.txt"
    elif name == "quaternion_list":
        write_quaternion_list(folder / "quaternions.txt", rng)
        params.update(USE_QUATERNIONS="", WRITE_PROB_ANGLES="2")
        args["ReadOrientation"] = "quaternions.txt"
    elif name == "quaternion_grid":
        params.update(GRIDPOINTS_QUATERNION="2", DISPLACE_CENTER="2 2")
    elif name == "priors":
        write_euler_list(folder / "angles.txt", rng, prior=True)
        params.update(PRIOR_ANGLES="", WRITE_PROB_ANGLES="2", SIGMA_PRIOR_B_CTF="50.0", SIGMA_PRIOR_DEFOCUS="1.0",
                      PRIOR_DEFOCUS_CENTER="2.0", SIGMA_PRIOR_AMP_CTF="0.3", PRIOR_AMP_CTF_CENTER="0.2",
                      PRIOR_MODEL="0.5", ELECTRON_WAVELENGTH="0.025", CTF_DEFOCUS="0.5 2.5 1", DISPLACE_CENTER="4 2")
        args["ReadOrientation"] = "angles.txt"
    else:
        raise ValueError(name)
    write_params(folder / "params.txt", **params)
    return args


@pytest.fixture
def case(tmp_path):
    return lambda name: (make_case(tmp_path / name, name), tmp_path / name)


def make_demo_particles(folder, n=50, fraction_1=0.6, box=64, angpix=2.5, snr=0.1, seed=7, max_shift=2):
    """Particles of the simulator's test complex as extraction writes them: exact projection (positive density)
    x RELION CTF + white noise, with a STAR file (optics, per-particle defocus, true angles and classes).

    Returns (star path, {model name: PDB path}, truth DataFrame with the true class and integer shifts)."""
    import pandas as pd

    from cryopipe.ctf import CTFParams, ctf_2d
    from cryopipe.geometry import euler_to_matrix, random_euler
    from cryopipe.io.models import write_model
    from cryopipe.io.mrc import write_mrc
    from cryopipe.io.star import write_star
    from cryopipe.simulate.complex import build_models, electrons_of
    from cryopipe.simulate.render import project_atoms

    folder = Path(folder)
    rng = np.random.default_rng(seed)
    models = build_models(2024)
    paths = {}
    for name, model in models.items():
        paths[name] = folder / f"{name}.pdb"
        write_model(paths[name], model)
    cls = np.where(np.arange(n) < round(fraction_1 * n), 1, 2)
    angles = random_euler(n, rng)
    shifts = rng.integers(-max_shift, max_shift + 1, size=(n, 2))
    du = rng.uniform(10000, 25000, n)
    dv = du - rng.uniform(0, 400, n)
    dang = rng.uniform(0, 180, n)
    ctf = ctf_2d(CTFParams(du, dv, dang, 300.0, 2.7, 0.1, bfactor=30.0), box, angpix, half=True, dtype=np.float64)
    images = []
    for k in range(n):
        m = models[f"conformation_{cls[k]}"]
        proj = project_atoms(m.xyz, electrons_of(m), 1.8, euler_to_matrix(*angles[k]), box, angpix,
                             offset_px=tuple(float(s) for s in shifts[k]))
        clean = np.fft.irfft2(np.fft.rfft2(proj) * ctf[k], s=(box, box))
        sd = np.sqrt(clean.var() / snr)
        images.append(clean + rng.normal(0.0, sd, clean.shape))
    write_mrc(folder / "particles.mrcs", np.array(images, dtype=np.float32), angpix)
    optics = pd.DataFrame({"rlnOpticsGroup": [1], "rlnOpticsGroupName": ["opticsGroup1"], "rlnVoltage": [300.0],
                           "rlnSphericalAberration": [2.7], "rlnAmplitudeContrast": [0.1],
                           "rlnImagePixelSize": [angpix], "rlnImageSize": [box], "rlnImageDimensionality": [2]})
    parts = pd.DataFrame({"rlnImageName": [f"{k + 1}@particles.mrcs" for k in range(n)], "rlnOpticsGroup": 1,
                          "rlnDefocusU": du, "rlnDefocusV": dv, "rlnDefocusAngle": dang, "rlnAngleRot": angles[:, 0],
                          "rlnAngleTilt": angles[:, 1], "rlnAnglePsi": angles[:, 2], "rlnClassNumber": cls})
    write_star(folder / "particles.star", {"optics": optics, "particles": parts})
    truth = pd.DataFrame({"cls": cls, "shift_x": shifts[:, 0], "shift_y": shifts[:, 1]})
    return folder / "particles.star", paths, truth
