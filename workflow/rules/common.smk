# Shared helpers for the rules: which stages the config turns on, their inputs, batches, flags and
# resources. No science here; the rule files only declare.

import glob
import hashlib
import json
import math
import os
import shlex
import shutil
import sys

import jsonschema
import yaml


def check_config(cfg, schema):
    """Stop with one line naming the bad key and exit status 2, as every cryopipe input error does."""
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(cfg))
    if error is not None:
        key = ".".join(str(p) for p in error.absolute_path) or "(top level)"
        sys.stderr.write(f"cryopipe config: error: [{key}]: {error.message}\n")
        sys.exit(2)


def typed(value, schema):
    """A config value with the type its schema asks for. `--config 'class2d={classes: 4}'` (or the JSON form):
    Snakemake reads a value given on the command line with YAML's base loader, which leaves every scalar inside it
    a string ('4', 'true', 'null'); `--config results=2024` gives a number for a string key. A value the schema
    rejects is read again as YAML (or as text) and kept if that is valid; anything else is left for the check."""
    if isinstance(value, dict):
        props = schema.get("properties", {})
        return {k: typed(v, props.get(k, {})) for k, v in value.items()}
    if isinstance(value, list):
        items = schema.get("prefixItems", [])
        return [typed(v, items[i] if i < len(items) else schema.get("items", {})) for i, v in enumerate(value)]
    validator = jsonschema.Draft202012Validator(schema)
    if not schema or validator.is_valid(value):
        return value
    if isinstance(value, str):
        try:
            again = yaml.safe_load(value)
        except yaml.YAMLError:
            return value
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        again = str(value)
    else:
        return value
    return again if validator.is_valid(again) else value


def nested(cfg):
    """A dotted key (`class2d.classes: 4` in a --configfile) put into its section, as config/README.md names keys.
    (Snakemake 9's `--config` refuses dotted names itself, before the workflow is read.)"""
    for key in [k for k in cfg if isinstance(k, str) and "." in k]:
        *path, leaf = key.split(".")
        section = cfg
        for part in path:
            if not isinstance(section.get(part, {}), dict):
                break  # left as it is: the schema check names it
            section = section.setdefault(part, {})
        else:
            section[leaf] = cfg.pop(key)
    return cfg


with open(os.path.join(workflow.basedir, "config", "config.schema.yaml")) as _fh:
    SCHEMA = yaml.safe_load(_fh)
config.update(typed(nested(config), SCHEMA))
check_config(config, SCHEMA)  # before any key is read
# `--sdm conda`: the environments' post-deploy scripts (envs/*.post-deploy.sh) install cryopipe from this checkout
os.environ.update(CRYOPIPE_REPO=workflow.basedir)

RESULTS = config["results"]
SIM = config["simulate"]
USE_SIM = SIM["enabled"]
BLOB_TEMPLATES = {"blob": "disc", "ring": "ring"}  # pick.templates that need no reference -> cryopipe pick --blob
DEVICE = config["device"]


def get_key(key):
    """A config value by its dotted name."""
    value = config
    for part in key.split("."):
        value = value[part]
    return value


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
    """`cryopipe simulate` flags from config.simulate (every key but `enabled`), as separate arguments, in the
    schema's order: the order of keys in a config file (or of --configfile and the defaults) must not change the
    parameter Snakemake compares, or reordering a file would redo the whole workflow."""
    order = list(SCHEMA["properties"]["simulate"]["properties"])
    return [a for k in sorted(SIM, key=order.index) if k != "enabled" for a in (f"--{k.replace('_', '-')}", str(SIM[k]))]


if USE_SIM and config.get("micrographs", {}).get("glob", ""):
    config_error("simulate.enabled", "true runs the demo, yet micrographs.glob names micrographs of yours; set "
                 "simulate.enabled: false to process them (or empty micrographs.glob to run the demo)")


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


MICROGRAPHS = micrograph_paths()  # first: without micrographs nothing else can be checked
CTF = config["ctf"]
# estimate the CTF (rule ctf) when asked, or when real micrographs come without a CTF STAR
ESTIMATE_CTF = CTF["estimate"] or (not USE_SIM and not config["micrographs"].get("ctf_star", ""))
if ESTIMATE_CTF and USE_SIM and not SIM.get("ice_snr", 0):
    config_error("ctf.estimate", "the demo's micrographs have Thon rings only with simulate.ice_snr > 0 (e.g. 0.5)")


if not ESTIMATE_CTF and not USE_SIM and not os.path.isfile(config["micrographs"]["ctf_star"]):
    config_error("micrographs.ctf_star", f"{config['micrographs']['ctf_star']!r}: no such file (relative to "
                 f"{os.getcwd()}; empty: estimate the CTF with cryopipe ctf)")
if ESTIMATE_CTF and not USE_SIM:
    _missing = [k for k in ("voltage", "cs", "amplitude_contrast") if config["micrographs"].get(k) is None]
    if _missing:
        _also = f" (also missing: {', '.join('micrographs.' + k for k in _missing[1:])})" if _missing[1:] else ""
        config_error(f"micrographs.{_missing[0]}", "the microscope's optics are needed to estimate the CTF of your "
                     f"micrographs (there is no safe default; or give micrographs.ctf_star){_also}")


def ctf_star(wildcards):
    """The CTF STAR of a batch of micrographs: estimated by the rule ctf, the simulator's, or yours. Yours is
    ancient(): its time is not compared (rows appended for new micrographs leave finished batches alone); what a
    batch takes from it is compared instead, as the parameter ctf_rows."""
    if ESTIMATE_CTF:
        return f"{RESULTS}/ctf/batch_{wildcards.batch}/micrographs_ctf.star"
    if USE_SIM:
        return f"{RESULTS}/simulate/micrographs_ctf.star"
    return ancient(config["micrographs"]["ctf_star"])


def ctf_rows(wildcards):
    """What extraction of a batch takes from your CTF STAR: its micrographs' rows with their optics, as a digest
    Snakemake compares (a changed row, or optics group, reruns the batches it belongs to, and only those). Empty
    for estimated or simulated CTFs, whose STARs are inputs of their own."""
    if GIVEN_CTF is None:
        return ""
    rows = [GIVEN_CTF[os.path.basename(m)].to_dict() for m in BATCHES[wildcards.batch]]
    return "sha256:" + hashlib.sha256(json.dumps(rows, sort_keys=True, default=str).encode()).hexdigest()


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


# Files named in the config: missing ones stop here, naming the key, not later as a failed job
_FILES = ("pick.reference", "class3d.reference", "refine3d.reference", "postprocess.mask")
for _key, _path in [*((k, get_key(k)) for k in _FILES), *(("bioem.models", m) for m in config["bioem"]["models"])]:
    if _path and not os.path.isfile(_path):
        config_error(_key, f"{_path!r}: no such file (relative to {os.getcwd()})")


def read_given_ctf():
    """Your CTF STAR, as extraction reads it (each micrograph's row joined with its optics group), when extraction
    reads it (not cryopipe ctf's estimates, not the demo's): {file name: row} of your micrographs, each of which must
    have a row; None otherwise."""
    if USE_SIM or ESTIMATE_CTF:
        return None
    from cryopipe.errors import InputError
    from cryopipe.io.star import read_table

    path = config["micrographs"]["ctf_star"]
    try:
        table = read_table(path, "micrographs", required=("rlnMicrographName", "rlnDefocusU", "rlnDefocusV",
                                                          "rlnDefocusAngle"))
    except InputError as exc:
        config_error("micrographs.ctf_star", str(exc))
    rows = {os.path.basename(str(n)): i for i, n in enumerate(table["rlnMicrographName"])}
    missing = [m for m in MICROGRAPHS if os.path.basename(m) not in rows]
    if missing:
        config_error("micrographs.ctf_star", f"{len(missing)} of your {len(MICROGRAPHS)} micrographs have no row in "
                     f"{path!r} (first: {os.path.basename(missing[0])}); give a CTF STAR of all of them, or empty "
                     "the key to estimate the CTF")
    return {os.path.basename(m): table.iloc[rows[os.path.basename(m)]] for m in MICROGRAPHS}


GIVEN_CTF = read_given_ctf()


def micrograph_angpix():
    """The micrographs' pixel size, found as the stages find it: micrographs.angpix, else the CTF STAR's, else the
    first micrograph's MRC header (the demo: simulate.angpix); unknown: stop, naming micrographs.angpix. And whether
    to pass it to the stages as --angpix: when the config says it, or when only the CTF STAR says it (picking and
    CTF estimation read the header)."""
    if USE_SIM:
        return float(SIM["angpix"]), False
    if config["micrographs"].get("angpix", 0):
        return float(config["micrographs"]["angpix"]), True
    from cryopipe.errors import InputError
    from cryopipe.io.mrc import UNSET_PIXEL_SIZES, read_mrc_header

    try:
        header = read_mrc_header(MICROGRAPHS[0]).angpix or 0.0
    except InputError as exc:
        config_error("micrographs.glob", str(exc))
    star = float(GIVEN_CTF[os.path.basename(MICROGRAPHS[0])].get("rlnMicrographPixelSize", 0) or 0) if GIVEN_CTF else 0
    if star > 0:
        return star, header in UNSET_PIXEL_SIZES
    if header in UNSET_PIXEL_SIZES:
        config_error("micrographs.angpix", f"the MRC header of {MICROGRAPHS[0]} holds no pixel size ({header:g}); "
                     "give it here, in A/px")
    return header, False


def fft_friendly_box(size_px):
    """The smallest even box of at least ``size_px`` pixels whose only prime factors are 2, 3 and 5 (fast FFTs)."""
    box = max(8, math.ceil(size_px))
    box += box % 2
    while not _smooth(box):
        box += 2
    return box


def _smooth(n):
    for p in (2, 3, 5):
        while n % p == 0:
            n //= p
    return n == 1


ANGPIX, PASS_ANGPIX = micrograph_angpix()
DIAMETER = config["particle_diameter"]
# extract.box 0: RELION's rule of thumb, a box of 1.5-2 particle diameters: 1.5, rounded up to an even FFT size
EXTRACT_BOX = config["extract"]["box"] or fft_friendly_box(1.5 * DIAMETER / ANGPIX)
if config["extract"]["box"] == 0:
    sys.stderr.write(f"cryopipe: extract.box 0: {EXTRACT_BOX} px (1.5 x particle_diameter {DIAMETER:g} A at "
                     f"{ANGPIX:g} A/px, rounded up to an even FFT size)\n")
if EXTRACT_BOX < 8:
    config_error("extract.box", f"{EXTRACT_BOX} px: a box needs at least 8 pixels (0: derived from particle_diameter)")
if EXTRACT_BOX * ANGPIX < DIAMETER:
    config_error("extract.box", f"{EXTRACT_BOX} px is {EXTRACT_BOX * ANGPIX:g} A at {ANGPIX:g} A/px, less than "
                 f"particle_diameter {DIAMETER:g} A: particles would be cut (0: derived, "
                 f"{fft_friendly_box(1.5 * DIAMETER / ANGPIX)} px)")
if config["extract"]["out_box"] > EXTRACT_BOX:
    config_error("extract.out_box", f"{config['extract']['out_box']} px is larger than the {EXTRACT_BOX} px box: "
                 "Fourier downscaling only shrinks")
if config["class2d"]["box"] > (config["extract"]["out_box"] or EXTRACT_BOX):
    config_error("class2d.box", f"{config['class2d']['box']} px is larger than the particles' "
                 f"{config['extract']['out_box'] or EXTRACT_BOX} px box: Fourier downscaling only shrinks")

PARTICLE_BOX = config["extract"]["out_box"] or EXTRACT_BOX
PARTICLE_ANGPIX = ANGPIX * EXTRACT_BOX / PARTICLE_BOX


def check_map(key, path):
    """A map of yours that meets the particles' maps must be on their grid (class3d, refine3d and postprocess do not
    resample it)."""
    if not path:
        return
    from cryopipe.errors import InputError
    from cryopipe.io.mrc import UNSET_PIXEL_SIZES, read_mrc_header

    try:
        header = read_mrc_header(path)
    except InputError as exc:
        config_error(key, str(exc))
    apix = header.angpix or 0.0
    if header.shape != (PARTICLE_BOX,) * 3 or (apix not in UNSET_PIXEL_SIZES and abs(apix - PARTICLE_ANGPIX) >
                                               0.01 * PARTICLE_ANGPIX):
        config_error(key, f"{path}: a {'x'.join(map(str, header.shape[::-1]))} map at {apix:g} A/px, but the particles "
                     f"are {PARTICLE_BOX} px at {PARTICLE_ANGPIX:g} A/px (extract.box, extract.out_box, pixel size); "
                     "resample the map to that box and pixel size (e.g. relion_image_handler --rescale_angpix "
                     f"{PARTICLE_ANGPIX:g} --new_box {PARTICLE_BOX})")


for _key in ("class3d.reference", "refine3d.reference", "postprocess.mask"):
    check_map(_key, get_key(_key))

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
    config_error("pick.reference", "must name a 3D map to pick with when simulate.enabled is false (or pick "
                 "without one: pick.templates: blob)")


def pick_templates():
    """The file rule pick takes its templates from: the reference map, the class averages selected after the
    blob round (pick_templates.smk), or none for blobs."""
    kind = config["pick"]["templates"]
    if kind == "class2d":
        return f"{RESULTS}/select2d_blob/class_averages.mrcs"
    return [] if kind in BLOB_TEMPLATES else pick_reference()


def pick_source():
    """The flag that names rule pick's templates (its input.templates follows): --reference, --templates (class
    averages), or --blob KIND."""
    kind = config["pick"]["templates"]
    if kind in BLOB_TEMPLATES:
        return ["--blob", BLOB_TEMPLATES[kind]]
    return ["--templates"] if kind == "class2d" else ["--reference"]


def pick_ctf(wildcards):
    """The CTF STAR rule pick reads for CTF-aware templates (pick.ctf), else nothing."""
    return ctf_star(wildcards) if config["pick"]["ctf"] else []


def pick_ctf_rows(wildcards):
    """What picking takes from your CTF STAR when it reads it: its batch's rows (see ctf_rows)."""
    return ctf_rows(wildcards) if config["pick"]["ctf"] else ""


IM = config["initial_model"]
# the de novo initial model: always with use: true; with auto when no map is given for your own data
RUN_INITIAL_MODEL = IM["use"] is True or (IM["use"] == "auto" and not config["class3d"]["reference"] and not USE_SIM)
# class3d starts from all K initial maps (one class each) or from the most populated one (every class from it)
START_FROM_ALL = RUN_INITIAL_MODEL and IM["class3d_start"] == "all" and IM["classes"] > 1
if START_FROM_ALL and config["class3d"]["classes"] != IM["classes"]:
    config_error("initial_model.class3d_start", f"all: class3d starts one class from each of the initial model's "
                 f"{IM['classes']} maps, but class3d.classes is {config['class3d']['classes']}: make the two equal, "
                 "or start from the best map (best)")


def initial_maps():
    """The initial model's K maps (initial_model_classNNN.mrc)."""
    return [f"{RESULTS}/initial_model/initial_model_class{k:03d}.mrc" for k in range(1, IM["classes"] + 1)]


def class3d_reference():
    """The initial map(s): the initial model's (when it runs: all K, or its most populated class), else
    class3d.reference, else the demo's; None (no 3D stages) for real data without one and no initial model."""
    if START_FROM_ALL:
        return initial_maps()
    if RUN_INITIAL_MODEL:
        return f"{RESULTS}/initial_model/initial_model.mrc"
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


def what_runs():
    """One line on stderr when the config leaves stages out: what runs, what does not and which key says so."""
    runs = ["simulate"] * USE_SIM + ["ctf"] * ESTIMATE_CTF + ["pick", "extract", "class2d", "select2d"]
    runs += ["initial_model"] * RUN_INITIAL_MODEL + ["class3d"] * RUN_CLASS3D
    runs += ["select3d", "refine3d", "postprocess"] * RUN_REFINE3D + ["bioem"] * RUN_BIOEM
    why = []
    if not RUN_CLASS3D:
        why.append("class3d.reference is empty and initial_model.use is false (give a map at the particles' pixel "
                   "size, or let the initial model make one, for 3D classification, refinement and BioEM)")
    elif not RUN_BIOEM:
        why.append("bioem.models is empty (give PDB/mmCIF/MRC models to rank them)")
    if RUN_CLASS3D and not RUN_REFINE3D:
        why.append("refine3d.enabled is false")
    left = [s for s in ("class3d", "select3d", "refine3d", "postprocess", "bioem") if s not in runs]
    if left:
        sys.stderr.write(f"cryopipe: runs {', '.join(runs)}; leaves out {', '.join(left)}: {'; '.join(why)}\n")


what_runs()


def bioem_orientation_flags(particles, frame_map):
    """The orientations BioEM integrates over: a ball around each particle's refined orientation (read from
    `particles`, the rule's particle STAR), a global grid, or the refined ones as one list with a prior. A value, not a function of the job: Snakemake compares
    only values (and functions of wildcards alone) when it decides whether a changed parameter reruns a rule."""
    bio = config["bioem"]
    if bio["orientations"] == "local":  # each model is fitted into `frame_map`, the map the poses were found against
        return ["--local-orientations", particles, "--local-map", frame_map, "--local-radius",
                str(bio["local_radius"]), "--local-step", str(bio["local_step"])]
    if bio["orientations"] == "refined":
        return ["--orientations", particles, "--orientation-prior", particles,
                "--orientation-prior-sigma", str(bio["orientation_prior_sigma"])]
    return ["--orientation-grid", str(bio["orientation_grid"])]


def angpix_flag():
    """[--angpix, value] when the config gives the micrographs' pixel size, or only the CTF STAR does (never for
    the demo's)."""
    return flag("angpix", ANGPIX if PASS_ANGPIX else 0)


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
    """The targets of `all`: the run's summary (which follows every stage) and each stage's final result. Called
    by the Snakefile after every rule file is included (it names their rules' outputs)."""
    return [rules.summary.output.table, *stage_results()]


def stage_results():
    """Each stage's final result, for the stages the config turns on: the summary's inputs."""
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
