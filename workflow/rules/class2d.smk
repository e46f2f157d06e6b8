# 2D classification by multi-reference alignment, then class selection.


rule class2d:
    input:
        particles=rules.gather_particles.output.particles,
    output:
        particles=f"{RESULTS}/class2d/particles.star",
        classes=f"{RESULTS}/class2d/classes.star",
        averages=f"{RESULTS}/class2d/class_averages.mrcs",
        figures=report(
            [f"{RESULTS}/class2d/class_averages.png", f"{RESULTS}/class2d/class2d_histograms.png"],
            caption="../report/class2d.rst",
            category="3. 2D classification",
        ),
    params:
        out=f"{RESULTS}/class2d",
        launch=mpi_launch,
        classes=arg("classes", config["class2d"]["classes"]),
        iterations=arg("iterations", config["class2d"]["iterations"]),
        box=flag("box", config["class2d"]["box"]),
        shift=arg("shift-range", config["class2d"]["shift_range"]),
        ctf=arg("ctf", config["class2d"]["ctf"]),
        diameter=arg("diameter", config["particle_diameter"]),
        device=arg("device", DEVICE),
    threads: STAGE_THREADS  # BLAS and FFT threads
    resources:
        **stage_resources(mpi=True),
    conda:
        "../../envs/gpu.yaml"
    log:
        f"{RESULTS}/logs/class2d.log",
    shell:
        "{params.launch:q} cryopipe class2d --particles {input.particles:q} {params.classes:q}"
        " {params.iterations:q} {params.box:q} {params.shift:q} {params.ctf:q}"
        " {params.diameter:q} {params.device:q} --out {params.out:q} 2> {log:q}"


rule select2d:
    input:
        particles=rules.class2d.output.particles,
        classes=rules.class2d.output.classes,
    output:
        particles=f"{RESULTS}/select2d/particles.star",
        table=f"{RESULTS}/select2d/selection.tsv",
        figure=report(f"{RESULTS}/select2d/select2d.png", caption="../report/select2d.rst", category="3. 2D classification"),
    params:
        out=f"{RESULTS}/select2d",
        keep=flag("keep", config["select2d"]["keep"]),
        min_size=arg("min-size", config["select2d"]["min_size"]),
        max_resolution=arg("max-resolution", config["select2d"]["max_resolution"]),
    conda:
        "../../envs/cpu.yaml"
    log:
        f"{RESULTS}/logs/select2d.log",
    shell:
        "cryopipe select2d --particles {input.particles:q} --classes-star {input.classes:q} {params.keep:q}"
        " {params.min_size:q} {params.max_resolution:q} --out {params.out:q} 2> {log:q}"
