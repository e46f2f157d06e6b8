# Shared helpers for the rules: which stages the config turns on, their inputs, batches, flags and
# resources. No science here; the rule files only declare.

import glob
import os
import shlex
import shutil
import sys

import jsonschema
import yaml


def check_config(cfg, schema_path):
    """Stop with one line naming the bad key and exit status 2, as every cryopipe input error does."""
    with open(schema_path) as fh:
        schema = yaml.safe_load(fh)
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(cfg))
    if error is not None:
        key = ".".join(str(p) for p in error.absolute_path) or "(top level)"
        sys.stderr.write(f"cryopipe config: error: [{key}]: {error.message}\n")
        sys.exit(2)


check_config(config, os.path.join(workflow.basedir, "config", "config.schema.yaml"))  # before any key is read
# `--sdm conda`: the environments' post-deploy scripts (envs/*.post-deploy.sh) install cryopipe from this checkout
os.environ.update(CRYOPIPE_REPO=workflow.basedir)

RESULTS = config["results"]
SIM = config["simulate"]
USE_SIM = SIM["enabled"]
DEVICE = config["device"]


def config_error(key, message):
    """Stop with one line naming the config key and exit status 2, as every cryopipe input error does."""
    sys.stderr.write(f"cryopipe config: error: [{key}]: {message}\n")
    sys.exit(2)


STAR_UNSAFE = {'"': "a double quote", "'": "a single quote", "\t": "a tab", "\n": "a line break"}


def check_star_safe(key, path):
    """Paths end up in STAR files, whose readers (RELION's, starfile) cannot take quotes or line breaks in a value."""
    for char, name in STAR_UNSAFE.items():
        if char in str(path):
            config_error(key, f"{str(path)!r} contains {name}, which a STAR file cannot hold; rename it")
    return path


for _key, _value in [("results", config["results"]), ("micrographs.glob", config.get("micrographs", {}).get("glob", "")),
                     ("micrographs.ctf_star", config.get("micrographs", {}).get("ctf_star", "")),
                     ("pick.reference", config["pick"]["reference"]),
                     ("class3d.reference", config["class3d"]["reference"]),
                     ("refine3d.reference", config["refine3d"]["reference"]),
                     *(("bioem.models", m) for m in config["bioem"]["models"])]:
    check_star_safe(_key, _value)


def sim_flags():
    """`cryopipe simulate` flags from config.simulate (every key but `enabled`), as separate arguments."""
    return [a for k, v in SIM.items() if k != "enabled" for a in (f"--{k.replace('_', '-')}", str(v))]


def micrograph_paths():
    """The micrographs the workflow processes, known when the DAG is built."""
    if USE_SIM:
        return [f"{RESULTS}/simulate/micrographs/mic_{i + 1:03d}.mrc" for i in range(SIM.get("micrographs", 16))]
    pattern = config.get("micrographs", {}).get("glob", "")
    if not pattern:
        config_error("micrographs.glob", "must name your micrographs (e.g. Micrographs/*.mrc) when simulate.enabled "
                     "is false")
    paths = sorted(glob.glob(pattern))
    if not paths:
        config_error("micrographs.glob", f"{pattern!r} matches no file (relative to {os.getcwd()})")
    return [check_star_safe("micrographs.glob", p) for p in paths]


CTF = config["ctf"]
# estimate the CTF (rule ctf) when asked, or when real micrographs come without a CTF STAR
ESTIMATE_CTF = CTF["estimate"] or (not USE_SIM and not config["micrographs"].get("ctf_star", ""))
if ESTIMATE_CTF and USE_SIM and not SIM.get("ice_snr", 0):
    config_error("ctf.estimate", "the demo's micrographs have Thon rings only with simulate.ice_snr > 0 (e.g. 0.5)")


if not ESTIMATE_CTF and not USE_SIM and not os.path.isfile(config["micrographs"]["ctf_star"]):
    config_error("micrographs.ctf_star", f"{config['micrographs']['ctf_star']!r}: no such file")


def ctf_star(wildcards):
    """The CTF STAR of a batch of micrographs: estimated by the rule ctf, the simulator's, or the user's."""
    if ESTIMATE_CTF:
        return f"{RESULTS}/ctf/batch_{wildcards.batch}/micrographs_ctf.star"
    if USE_SIM:
        return f"{RESULTS}/simulate/micrographs_ctf.star"
    return config["micrographs"]["ctf_star"]


def optics(key):
    """The microscope's voltage, cs or amplitude_contrast: the config's, else (demo only) the simulator's."""
    value = config["micrographs"].get(key)
    if value is None and USE_SIM:
        from cryopipe.simulate.micrographs import SimulateParams

        return SimulateParams.__dataclass_fields__[key].default
    if value is None:
        config_error(f"micrographs.{key}", "needed to estimate the CTF of your micrographs (or give "
                     "micrographs.ctf_star); there is no safe default")
    return value


MICROGRAPHS = micrograph_paths()
BATCH_SIZE = config["pick"]["batch_size"]
BATCHES = {
    f"{k:04d}": MICROGRAPHS[i : i + BATCH_SIZE] for k, i in enumerate(range(0, len(MICROGRAPHS), BATCH_SIZE), start=1)
}


def pick_reference():
    ref = config["pick"]["reference"]
    if ref:
        return ref
    if USE_SIM:
        return f"{RESULTS}/simulate/maps/conformation_1.mrc"
    config_error("pick.reference", "must name a 3D map to pick with when simulate.enabled is false")


def class3d_reference():
    """The initial map: class3d.reference, else the demo's; None (no 3D stages) for real data without one."""
    if config["class3d"]["reference"]:
        return config["class3d"]["reference"]
    return f"{RESULTS}/simulate/maps/conformation_1.mrc" if USE_SIM else None


def bioem_models():
    """The models BioEM ranks: bioem.models, else the demo's three; none (no BioEM) for real data without any."""
    if config["bioem"]["models"]:
        return config["bioem"]["models"]
    if USE_SIM:
        return [f"{RESULTS}/simulate/models/{m}.pdb" for m in ("conformation_1", "conformation_2", "decoy")]
    return []


# The stages the config turns on (rule files define their rules only then; get_final_targets asks for their results)
RUN_CLASS3D = class3d_reference() is not None
RUN_REFINE3D = RUN_CLASS3D and config["refine3d"]["enabled"]  # refine3d and postprocess
RUN_BIOEM = RUN_CLASS3D and bool(bioem_models())


def bioem_orientation_flags(wildcards, input):
    """The orientations BioEM integrates over: a global grid, or each particle's refined one with a prior."""
    bio = config["bioem"]
    if bio["orientations"] == "refined":
        return ["--orientations", input.particles, "--orientation-prior", input.particles,
                "--orientation-prior-sigma", str(bio["orientation_prior_sigma"])]
    return ["--orientation-grid", str(bio["orientation_grid"])]


def angpix_flag():
    """[--angpix, value] when the config overrides the micrographs' header pixel size (never for the demo's)."""
    return flag("angpix", config["micrographs"].get("angpix", 0) if not USE_SIM else 0)


def flag(name, value):
    """CLI arguments from a config value, as a list for `{params.x:q}`: booleans become [--name] or [], zero or
    empty means 'not given' ([]), a list gives its items after the flag."""
    if isinstance(value, bool):
        return [f"--{name}"] if value else []
    if value in (0, "", None) or value == []:
        return []
    return [f"--{name}", *map(str, value if isinstance(value, (list, tuple)) else [value])]


def arg(name, value):
    """[--name, value] (a list value gives its items after the flag), for `{params.x:q}`. A parameter holds its
    flag name too: Snakemake compares a job's parameters as a SET of values, so bare values (say iterations 2
    and classes 2) could change places unnoticed; a flag with its value cannot."""
    return [f"--{name}", *map(str, value if isinstance(value, (list, tuple)) else [value])]


def mpi_launch(wildcards, resources):
    """[launcher words..., -n, tasks] for MPI rules (the profile's `mpi`, e.g. "srun --mpi=pmi2", split as a shell
    would split it, each word then passed quoted), or nothing when the profile sets no launcher (one-rank run)."""
    return [*shlex.split(resources.mpi), "-n", str(resources.tasks)] if resources.mpi else []


MPI_DEFAULT = "mpiexec" if shutil.which("mpiexec") else ""
GPUS = 1 if DEVICE == "gpu" else 0  # per job (per rank for MPI stages); a profile's set-resources may say more


def stage_resources(mpi=False):
    """`resources: **stage_resources(...)` of a stage's rule: its GPUs, and for an MPI stage its launcher and ranks
    (mpiexec when installed, one rank; a profile's set-resources overrides them, e.g. srun and 2 ranks on SLURM)."""
    return {"mpi": MPI_DEFAULT, "tasks": 1, "gpu": GPUS} if mpi else {"gpu": GPUS}


def _stage_threads():
    """Threads for one-job-at-a-time stages (class2d, class3d, bioem): every local core. Under a cluster
    executor there is no total (Snakemake raises): 1, and the profile's cpus_per_gpu sizes the job."""
    try:
        return workflow.cores if isinstance(workflow.cores, int) and 0 < workflow.cores < 1024 else 1
    except Exception:
        return 1


STAGE_THREADS = _stage_threads()


def get_final_targets():
    """The targets of `all`: each stage's final result, for the stages the config turns on. Called by the
    Snakefile after every rule file is included (it names their rules' outputs)."""
    targets = [rules.simulate.output.record] if USE_SIM else []
    if ESTIMATE_CTF:
        targets += rules.ctf_all.input
    targets += [rules.gather_particles.output.particles, rules.select2d.output.particles]
    if RUN_CLASS3D:
        targets.append(rules.class3d.output.model)
    if RUN_REFINE3D:
        targets.append(rules.postprocess.output.star)
    if RUN_BIOEM:
        targets.append(rules.bioem.output.ranking)
    return targets
