# Template picking (gEMpicker-style NCC) and extraction, one job per batch of micrographs.


rule pick:
    input:
        micrographs=lambda w: BATCHES[w.batch],
        ctf=ctf_star,
        reference=pick_reference(),
    output:
        picks=f"{RESULTS}/pick/batch_{{batch}}/picks.star",
        preview=report(
            f"{RESULTS}/pick/batch_{{batch}}/picks_preview.png",
            caption="../report/pick.rst",
            category="2. Picking",
            subcategory="batch {batch}",
        ),
    params:
        out=lambda w: f"{RESULTS}/pick/batch_{w.batch}",
        angpix=flag("angpix", config["micrographs"].get("angpix", 0) if not USE_SIM else 0),
        diameter=arg("diameter", config["particle_diameter"]),
        directions=arg("directions", config["pick"]["directions"]),
        step=arg("angular-step", config["pick"]["angular_step"]),
        lowpass=arg("lowpass", config["pick"]["lowpass"]),
        threshold=arg("threshold", config["pick"]["threshold"]),
        device=arg("device", DEVICE),
    threads: 4
    resources:
        gpu=1 if DEVICE == "gpu" else 0,
    log:
        f"{RESULTS}/logs/pick_{{batch}}.log",
    shell:
        "cryopipe pick --micrographs {input.micrographs:q} --reference {input.reference:q} {params.angpix:q}"
        " {params.diameter:q} {params.directions:q} {params.step:q}"
        " {params.lowpass:q} {params.threshold:q} {params.device:q}"
        " --out {params.out:q} 2> {log:q}"


rule extract:
    input:
        picks=rules.pick.output.picks,
        ctf=ctf_star,
        micrographs=lambda w: BATCHES[w.batch],
    output:
        particles=f"{RESULTS}/extract/batch_{{batch}}/particles.star",
    params:
        out=lambda w: f"{RESULTS}/extract/batch_{w.batch}",
        box=arg("box", config["extract"]["box"]),
        out_box=flag("out-box", config["extract"]["out_box"]),
        invert=flag("invert", config["extract"]["invert"]),
        ctf_limit=flag("max-ctf-resolution", CTF["max_resolution"]),
        device=arg("device", DEVICE),
    threads: 2
    log:
        f"{RESULTS}/logs/extract_{{batch}}.log",
    shell:
        "cryopipe extract --picks {input.picks:q} --ctf {input.ctf:q} --micrographs {input.micrographs:q}"
        " {params.box:q} {params.out_box:q} {params.invert:q} {params.ctf_limit:q} {params.device:q}"
        " --out {params.out:q} 2> {log:q}"


rule gather_particles:
    input:
        expand(f"{RESULTS}/extract/batch_{{batch}}/particles.star", batch=sorted(BATCHES)),
    output:
        particles=f"{RESULTS}/extract/particles.star",
    params:
        out=f"{RESULTS}/extract",
    log:
        f"{RESULTS}/logs/gather_particles.log",
    shell:
        "cryopipe extract --gather {input:q} --out {params.out:q} 2> {log:q}"


ALL_TARGETS.append(rules.gather_particles.output.particles)


rule pick_all:
    """Target: every batch picked (`snakemake pick_all`; `pick` itself has a batch wildcard)."""
    input:
        expand(f"{RESULTS}/pick/batch_{{batch}}/picks.star", batch=sorted(BATCHES)),


rule extract_all:
    """Target: every batch extracted and gathered (`snakemake extract_all`)."""
    input:
        rules.gather_particles.output.particles,
