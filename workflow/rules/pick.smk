# Template picking (gEMpicker-style NCC), one job per batch of micrographs.


rule pick:
    input:
        micrographs=lambda w: BATCHES[w.batch],  # its own micrographs only: new ones leave finished batches alone
        templates=pick_templates(),  # the reference map; nothing for blobs
        ctf=pick_ctf,  # CTF-aware templates (pick.ctf): the batch's CTF STAR
    output:
        picks=f"{RESULTS}/pick/batch_{{batch}}/picks.star",
        preview=f"{RESULTS}/pick/batch_{{batch}}/picks_preview.png",  # the first batch's goes into the summary
    params:
        out=f"{RESULTS}/pick/batch_{{batch}}",
        angpix=angpix_flag(),
        diameter=arg("diameter", config["particle_diameter"]),
        source=pick_source(),  # --reference (input.templates follows) or --blob KIND
        ctf=flag("ctf", config["pick"]["ctf"]),  # input.ctf follows
        ctf_rows=pick_ctf_rows,  # compared, not passed: this batch's rows of your CTF STAR (see rule extract)
        directions=arg("directions", config["pick"]["directions"]),
        step=arg("angular-step", config["pick"]["angular_step"]),
        lowpass=arg("lowpass", config["pick"]["lowpass"]),
        threshold=arg("threshold", config["pick"]["threshold"]),
        fdr=flag("fdr", config["pick"]["fdr"]),
        device=arg("device", DEVICE),
    threads: 4
    resources:
        **stage_resources(),
    conda:
        "../../envs/gpu.yaml"
    log:
        f"{RESULTS}/logs/pick_{{batch}}.log",
    shell:
        "cryopipe pick --micrographs {input.micrographs:q} {params.source:q} {input.templates:q}"
        " {params.ctf:q} {input.ctf:q} {params.angpix:q}"
        " {params.diameter:q} {params.directions:q} {params.step:q}"
        " {params.lowpass:q} {params.threshold:q} {params.fdr:q} {params.device:q}"
        " --out {params.out:q} 2> {log:q}"


rule pick_all:
    """Target: every batch picked (`snakemake pick_all`; `pick` itself has a batch wildcard)."""
    input:
        expand(f"{RESULTS}/pick/batch_{{batch}}/picks.star", batch=sorted(BATCHES)),
