# Particle extraction, one job per batch of micrographs, then one STAR of all batches' particles.


rule extract:
    input:
        picks=rules.pick.output.picks,
        ctf=ctf_star,  # the batch's own (estimated), or the whole STAR as ancient() with its rows in params
        micrographs=lambda w: BATCHES[w.batch],
    output:
        particles=f"{RESULTS}/extract/batch_{{batch}}/particles.star",
    params:
        out=f"{RESULTS}/extract/batch_{{batch}}",
        box=arg("box", EXTRACT_BOX),  # extract.box, or derived from particle_diameter (common.smk)
        angpix=angpix_flag(),
        out_box=flag("out-box", config["extract"]["out_box"]),
        invert="--invert" if config["extract"]["invert"] else "--no-invert",
        ctf_limit=flag("max-ctf-resolution", CTF["max_resolution"]),
        device=arg("device", DEVICE),
        ctf_rows=ctf_rows,  # compared, not passed: this batch's rows of your CTF STAR (a function of the batch)
    threads: 2
    conda:
        "../../envs/gpu.yaml"  # it passes --device on
    log:
        f"{RESULTS}/logs/extract_{{batch}}.log",
    shell:
        "cryopipe extract --picks {input.picks:q} --ctf {input.ctf:q} --micrographs {input.micrographs:q}"
        " {params.box:q} {params.angpix:q} {params.out_box:q} {params.invert:q} {params.ctf_limit:q} {params.device:q}"
        " --out {params.out:q} 2> {log:q}"


rule gather_particles:
    input:
        expand(f"{RESULTS}/extract/batch_{{batch}}/particles.star", batch=sorted(BATCHES)),
    output:
        particles=f"{RESULTS}/extract/particles.star",
    params:
        out=f"{RESULTS}/extract",
    conda:
        "../../envs/cpu.yaml"
    log:
        f"{RESULTS}/logs/gather_particles.log",
    shell:
        "cryopipe extract --gather {input:q} --out {params.out:q} 2> {log:q}"


rule extract_all:
    """Target: every batch extracted and gathered (`snakemake extract_all`)."""
    input:
        rules.gather_particles.output.particles,
