# BioEM: rank candidate structural models against the refined particles (over a global orientation grid, or
# around each particle's refined orientation: config bioem.orientations).

BIO = config["bioem"]
# particles at their refined orientations: refine3d's when it runs, else class3d's
BIOEM_PARTICLES = REFINED_PARTICLES or POSED_PARTICLES


def bioem_orientation_flags(wildcards, input):
    """The orientations BioEM integrates over: a global grid, or each particle's refined one with a prior."""
    if BIO["orientations"] == "refined":
        return ["--orientations", input.particles, "--orientation-prior", input.particles,
                "--orientation-prior-sigma", str(BIO["orientation_prior_sigma"])]
    return ["--orientation-grid", str(BIO["orientation_grid"])]


def bioem_models():
    if BIO["models"]:
        return BIO["models"]
    if USE_SIM:
        return [f"{RESULTS}/simulate/models/{m}.pdb" for m in ("conformation_1", "conformation_2", "decoy")]
    return []


if BIOEM_PARTICLES is not None and bioem_models():

    rule bioem:
        input:
            particles=BIOEM_PARTICLES,
            models=bioem_models(),
        output:
            logp=f"{RESULTS}/bioem/logp.star",
            ranking=f"{RESULTS}/bioem/ranking.star",
            figures=report(
                [f"{RESULTS}/bioem/ranking.png", f"{RESULTS}/bioem/cumulative_logp.png"],
                caption="../report/bioem.rst",
                category="6. Model ranking",
            ),
        params:
            out=f"{RESULTS}/bioem",
            launch=mpi_launch,
            orientations=bioem_orientation_flags,
            shift=arg("displacement", BIO["max_shift"]),
            defocus=arg("defocus-grid", BIO["defocus_grid"]),
            device=arg("device", DEVICE),
        threads: STAGE_THREADS  # BLAS and FFT threads
        resources:
            mpi=MPI_DEFAULT,
            tasks=1,
            gpu=1 if DEVICE == "gpu" else 0,
        log:
            f"{RESULTS}/logs/bioem.log",
        shell:
            "{params.launch:q} cryopipe bioem --particles {input.particles:q} --models {input.models:q}"
            " {params.orientations:q} {params.shift:q} 1"
            " {params.defocus:q} {params.device:q} --out {params.out:q} 2> {log:q}"


    ALL_TARGETS.append(rules.bioem.output.ranking)
