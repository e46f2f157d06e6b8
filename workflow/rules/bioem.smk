# BioEM: rank candidate structural models against the refined particles (around each particle's refined
# orientation, or over a global orientation grid: config bioem.orientations).

BIO = config["bioem"]

if RUN_BIOEM:
    BIOEM_PARTICLES = rules.refine3d.output.particles if RUN_REFINE3D else rules.class3d.output.data
    BIOEM_MAP = rules.refine3d.output.map if RUN_REFINE3D else rules.class3d.output.maps[0]  # the poses' frame

    rule bioem:
        input:
            # particles at their refined orientations: refine3d's when it runs, else class3d's
            particles=BIOEM_PARTICLES,
            models=bioem_models(),
            frame=BIOEM_MAP,  # the map the particles' poses refer to (local orientations fit each model into it)
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
            orientations=bioem_orientation_flags(BIOEM_PARTICLES, BIOEM_MAP),
            shift=arg("displacement", [BIO["max_shift"], BIO["shift_step"]]),
            defocus=arg("defocus-grid", BIO["defocus_grid"]),
            device=arg("device", DEVICE),
        threads: STAGE_THREADS  # BLAS and FFT threads
        resources:
            **stage_resources(mpi=True),
        conda:
            "../../envs/gpu.yaml"
        log:
            f"{RESULTS}/logs/bioem.log",
        shell:
            "{params.launch:q} cryopipe bioem --particles {input.particles:q} --models {input.models:q}"
            " {params.orientations:q} {params.shift:q}"
            " {params.defocus:q} {params.device:q} --out {params.out:q} 2> {log:q}"
