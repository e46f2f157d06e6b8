# Template picking (gEMpicker-style NCC), one job per batch of micrographs.


rule pick:
    input:
        micrographs=lambda w: BATCHES[w.batch],  # its own micrographs only: new ones leave finished batches alone
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
        out=f"{RESULTS}/pick/batch_{{batch}}",
        angpix=angpix_flag(),
        diameter=arg("diameter", config["particle_diameter"]),
        directions=arg("directions", config["pick"]["directions"]),
        step=arg("angular-step", config["pick"]["angular_step"]),
        lowpass=arg("lowpass", config["pick"]["lowpass"]),
        threshold=arg("threshold", config["pick"]["threshold"]),
        device=arg("device", DEVICE),
    threads: 4
    resources:
        **stage_resources(),
    conda:
        "../../envs/gpu.yaml"
    log:
        f"{RESULTS}/logs/pick_{{batch}}.log",
    shell:
        "cryopipe pick --micrographs {input.micrographs:q} --reference {input.reference:q} {params.angpix:q}"
        " {params.diameter:q} {params.directions:q} {params.step:q}"
        " {params.lowpass:q} {params.threshold:q} {params.device:q}"
        " --out {params.out:q} 2> {log:q}"


rule pick_all:
    """Target: every batch picked (`snakemake pick_all`; `pick` itself has a batch wildcard)."""
    input:
        expand(f"{RESULTS}/pick/batch_{{batch}}/picks.star", batch=sorted(BATCHES)),
