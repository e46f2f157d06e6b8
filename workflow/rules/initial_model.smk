# De novo initial model of the selected 2D particles (stochastic minibatch EM from a random start), when no map is
# given for your data (initial_model.use): class3d starts from its most populated class, or from all K maps
# (initial_model.class3d_start).

if RUN_INITIAL_MODEL:

    rule initial_model:
        input:
            particles=rules.select2d.output.particles,
        output:
            map=f"{RESULTS}/initial_model/initial_model.mrc",
            # every class's map only when class3d reads them all: an output nothing asks for would have no
            # metadata, and a job with such an output is not rerun when its parameters change
            classes=initial_maps() if START_FROM_ALL else [],
            particles=f"{RESULTS}/initial_model/particles.star",
            record=f"{RESULTS}/initial_model/provenance.json",  # its recorded params rerun the job when they change
            figures=report(
                [
                    f"{RESULTS}/initial_model/initial_model_slices.png",
                    f"{RESULTS}/initial_model/initial_model_progress.png",
                ],
                caption="../report/initial_model.rst",
                category="4. 3D classification",
            ),
        params:
            out=f"{RESULTS}/initial_model",
            launch=mpi_launch,
            classes=arg("classes", IM["classes"]),
            iterations=arg("iterations", IM["iterations"]),
            batch=arg("batch-size", IM["batch_size"]),
            schedule=arg("resolution-schedule", IM["resolution_schedule"]),
            seed=arg("seed", IM["seed"]),
            flip=flag("flip-hand", IM["flip_hand"]),
            symmetry=arg("symmetry", IM["symmetry"]),
            diameter=arg("diameter", config["particle_diameter"]),
            device=arg("device", DEVICE),
        threads: STAGE_THREADS  # BLAS and FFT threads
        resources:
            **stage_resources(mpi=True),
        conda:
            "../../envs/gpu.yaml"
        log:
            f"{RESULTS}/logs/initial_model.log",
        shell:
            "{params.launch:q} cryopipe initial-model --particles {input.particles:q} {params.classes:q}"
            " {params.iterations:q} {params.batch:q} {params.schedule:q} {params.seed:q} {params.flip:q}"
            " {params.symmetry:q}"
            " {params.diameter:q} {params.device:q} --out {params.out:q} 2> {log:q}"
