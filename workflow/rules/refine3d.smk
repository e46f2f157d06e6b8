# 3D auto-refinement (gold standard) of the particles of one 3D class (select3d, class3d.smk).

R3 = config["refine3d"]

if RUN_REFINE3D:

    rule refine3d:
        input:
            particles=rules.select3d.output.particles,
            reference=R3["reference"] or rules.select3d.output.reference,
        output:
            half1=f"{RESULTS}/refine3d/half1.mrc",
            half2=f"{RESULTS}/refine3d/half2.mrc",
            map=f"{RESULTS}/refine3d/map.mrc",
            fsc=f"{RESULTS}/refine3d/fsc.star",
            particles=f"{RESULTS}/refine3d/particles.star",
            record=f"{RESULTS}/refine3d/provenance.json",  # its recorded params rerun the job when they change
            figures=report(
                [f"{RESULTS}/refine3d/refine3d_progress.png", f"{RESULTS}/refine3d/refine3d_slices.png"],
                caption="../report/refine3d.rst",
                category="5. 3D refinement",
            ),
        params:
            out=f"{RESULTS}/refine3d",
            launch=mpi_launch,
            ini_high=arg("ini-high", R3["ini_high"]),
            order=arg("healpix-order", R3["healpix_order"]),
            local_order=arg("auto-local-healpix-order", R3["auto_local_healpix_order"]),
            offset_range=arg("offset-range", R3["offset_range"]),
            offset_step=arg("offset-step", R3["offset_step"]),
            symmetry=arg("symmetry", R3["symmetry"]),
            join=arg("low-resol-join-halves", R3["low_resol_join_halves"]),
            iterations=arg("max-iterations", R3["max_iterations"]),
            diameter=arg("diameter", config["particle_diameter"]),
            device=arg("device", DEVICE),
        threads: STAGE_THREADS  # BLAS and FFT threads
        resources:
            **stage_resources(mpi=True),
        conda:
            "../../envs/gpu.yaml"
        log:
            f"{RESULTS}/logs/refine3d.log",
        shell:
            "{params.launch:q} cryopipe refine3d --particles {input.particles:q} --reference {input.reference:q}"
            " {params.ini_high:q} {params.order:q} "
            " {params.local_order:q} {params.offset_range:q} {params.offset_step:q}"
            " {params.symmetry:q} {params.diameter:q} "
            " {params.join:q} {params.iterations:q} {params.device:q} --out {params.out:q}"
            " 2> {log:q}"
