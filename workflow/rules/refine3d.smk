# 3D auto-refinement (gold standard) of the particles of one 3D class, then post-processing of its half-maps.

R3 = config["refine3d"]
PP = config["postprocess"]
REFINED_PARTICLES = None  # refined particles.star, for BioEM (bioem.smk prefers them to class3d's)


if class3d_reference() is not None and R3["enabled"]:

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
            chosen=arg("class", R3["class"]),
        log:
            f"{RESULTS}/logs/select3d.log",
        shell:
            "cryopipe select3d --particles {input.data:q} --maps {input.maps:q} {params.chosen:q}"
            " --out {params.out:q} 2> {log:q}"

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
            diameter=arg("particle-diameter", config["particle_diameter"]),
            device=arg("device", DEVICE),
        threads: STAGE_THREADS  # BLAS and FFT threads
        resources:
            mpi=MPI_DEFAULT,
            tasks=1,
            gpu=1 if DEVICE == "gpu" else 0,
        log:
            f"{RESULTS}/logs/refine3d.log",
        shell:
            "{params.launch:q} cryopipe refine3d --particles {input.particles:q} --reference {input.reference:q}"
            " {params.ini_high:q} {params.order:q} "
            " {params.local_order:q} {params.offset_range:q} {params.offset_step:q}"
            " {params.symmetry:q} {params.diameter:q} "
            " {params.join:q} {params.iterations:q} {params.device:q} --out {params.out:q}"
            " 2> {log:q}"

    rule postprocess:
        input:
            half1=rules.refine3d.output.half1,
            half2=rules.refine3d.output.half2,
        output:
            map=f"{RESULTS}/postprocess/map_sharpened.mrc",
            mask=f"{RESULTS}/postprocess/mask.mrc",
            star=f"{RESULTS}/postprocess/postprocess.star",
            figures=report(
                [f"{RESULTS}/postprocess/postprocess_fsc_guinier.png", f"{RESULTS}/postprocess/postprocess_slices.png"],
                caption="../report/refine3d.rst",
                category="5. 3D refinement",
            ),
        params:
            out=f"{RESULTS}/postprocess",
            mask=flag("mask", PP["mask"]),
            lowpass=arg("mask-lowpass", PP["mask_lowpass"]),
            threshold=arg("mask-threshold", PP["mask_threshold"]),
            dilate=arg("extend", PP["extend"]),
            edge=arg("soft-edge", PP["soft_edge"]),
            fit_low=arg("fit-low", PP["fit_low"]),
            bfactor=[] if PP["bfactor"] == "auto" else ["--bfactor", str(PP["bfactor"])],
        log:
            f"{RESULTS}/logs/postprocess.log",
        shell:
            "cryopipe postprocess --half1 {input.half1:q} --half2 {input.half2:q} {params.mask:q}"
            " {params.lowpass:q} {params.threshold:q} {params.dilate:q}"
            " {params.edge:q} {params.fit_low:q} {params.bfactor:q} --out {params.out:q} 2> {log:q}"

    ALL_TARGETS.append(rules.postprocess.output.star)
    REFINED_PARTICLES = rules.refine3d.output.particles
