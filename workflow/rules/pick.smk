# Template picking (gEMpicker-style NCC) and extraction, one job per batch of micrographs.


rule pick:
    input:
        micrographs=lambda w: BATCHES[w.batch],
        ctf=ctf_star(),
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
        diameter=config["particle_diameter"],
        directions=config["pick"]["directions"],
        step=config["pick"]["angular_step"],
        lowpass=config["pick"]["lowpass"],
        threshold=config["pick"]["threshold"],
        device=DEVICE,
    threads: 4
    resources:
        gpu=1 if DEVICE == "gpu" else 0,
    log:
        f"{RESULTS}/logs/pick_{{batch}}.log",
    shell:
        "cryopipe pick --micrographs {input.micrographs} --reference {input.reference} {params.angpix}"
        " --diameter {params.diameter} --directions {params.directions} --angular-step {params.step}"
        " --lowpass {params.lowpass} --threshold {params.threshold} --device {params.device}"
        " --out {params.out} 2> {log}"


rule extract:
    input:
        picks=rules.pick.output.picks,
        ctf=ctf_star(),
        micrographs=lambda w: BATCHES[w.batch],
    output:
        particles=f"{RESULTS}/extract/batch_{{batch}}/particles.star",
    params:
        out=lambda w: f"{RESULTS}/extract/batch_{w.batch}",
        box=config["extract"]["box"],
        out_box=flag("out-box", config["extract"]["out_box"]),
        invert=flag("invert", config["extract"]["invert"]),
        device=DEVICE,
    threads: 2
    log:
        f"{RESULTS}/logs/extract_{{batch}}.log",
    shell:
        "cryopipe extract --picks {input.picks} --ctf {input.ctf} --micrographs {input.micrographs}"
        " --box {params.box} {params.out_box} {params.invert} --device {params.device}"
        " --out {params.out} 2> {log}"


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
        "cryopipe extract --gather {input} --out {params.out} 2> {log}"


ALL_TARGETS.append(rules.gather_particles.output.particles)
