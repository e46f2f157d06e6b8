# 3D classification (RELION-style regularised likelihood EM) of the selected particles, then the particles and map
# of one 3D class for refinement (refine3d.smk).

C3 = config["class3d"]

if RUN_CLASS3D:  # common.smk says what runs when it does not

    rule class3d:
        input:
            particles=rules.select2d.output.particles,
            reference=class3d_reference(),
        output:
            # the last iteration under names independent of the count: every run writes them, so Snakemake
            # holds their metadata and a changed parameter (iterations included) reruns the job
            data=f"{RESULTS}/class3d/run_data.star",
            model=f"{RESULTS}/class3d/run_model.star",
            maps=expand(f"{RESULTS}/class3d/run_class{{k:03d}}.mrc", k=range(1, C3["classes"] + 1)),
            record=f"{RESULTS}/class3d/provenance.json",  # its recorded params rerun the job when they change
            figures=report(
                [f"{RESULTS}/class3d/class3d_slices.png", f"{RESULTS}/class3d/class3d_progress.png"],
                caption="../report/class3d.rst",
                category="4. 3D classification",
            ),
        params:
            out=f"{RESULTS}/class3d",
            launch=mpi_launch,
            classes=arg("classes", C3["classes"]),
            iterations=arg("iterations", C3["iterations"]),
            order=arg("healpix-order", C3["healpix_order"]),
            offset_range=arg("offset-range", C3["offset_range"]),
            offset_step=arg("offset-step", C3["offset_step"]),
            ini_high=arg("ini-high", C3["ini_high"]),
            tau2_fudge=arg("tau2-fudge", C3["tau2_fudge"]),
            symmetry=arg("symmetry", C3["symmetry"]),
            diameter=arg("diameter", config["particle_diameter"]),
            device=arg("device", DEVICE),
        threads: STAGE_THREADS  # BLAS and FFT threads
        resources:
            **stage_resources(mpi=True),
        conda:
            "../../envs/gpu.yaml"
        log:
            f"{RESULTS}/logs/class3d.log",
        shell:
            "{params.launch:q} cryopipe class3d --particles {input.particles:q} --reference {input.reference:q}"
            " {params.classes:q} {params.iterations:q} {params.order:q}"
            " {params.offset_range:q} {params.offset_step:q} {params.ini_high:q}"
            " {params.tau2_fudge:q} {params.symmetry:q} {params.diameter:q}"
            " {params.device:q} --out {params.out:q} 2> {log:q}"


if RUN_REFINE3D:  # select3d feeds only the refinement

    rule select3d:
        """The particles of one 3D class (refine3d.class, 0: the most populated) and that class's map."""
        input:
            data=rules.class3d.output.data,
            maps=rules.class3d.output.maps,
        output:
            particles=f"{RESULTS}/select3d/particles.star",
            reference=f"{RESULTS}/select3d/reference.mrc",
        params:
            out=f"{RESULTS}/select3d",
            chosen=arg("class", config["refine3d"]["class"]),
        conda:
            "../../envs/cpu.yaml"
        log:
            f"{RESULTS}/logs/select3d.log",
        shell:
            "cryopipe select3d --particles {input.data:q} --maps {input.maps:q} {params.chosen:q}"
            " --out {params.out:q} 2> {log:q}"
