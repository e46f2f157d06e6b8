# CTF estimation (cryopipe ctf, after CTFFIND4), one job per batch of micrographs, before picking: when the
# micrographs come without a CTF STAR, or when ctf.estimate asks for it (ESTIMATE_CTF, common.smk).

if ESTIMATE_CTF:

    rule ctf:
        input:
            micrographs=lambda w: BATCHES[w.batch],
            # the demo compares its estimates with the simulated truth (summary plot, record)
            truth=[f"{RESULTS}/simulate/micrographs_ctf.star"] if USE_SIM else [],
        output:
            star=f"{RESULTS}/ctf/batch_{{batch}}/micrographs_ctf.star",
            summary=report(
                f"{RESULTS}/ctf/batch_{{batch}}/ctf_summary.png",
                caption="../report/ctf.rst",
                category="2. CTF estimation",
                subcategory="batch {batch}",
            ),
        params:
            out=f"{RESULTS}/ctf/batch_{{batch}}",
            angpix=angpix_flag(),
            voltage=arg("voltage", optics("voltage")),
            cs=arg("cs", optics("cs")),
            amplitude_contrast=arg("amplitude-contrast", optics("amplitude_contrast")),
            tile=arg("tile", CTF["tile"]),
            resolution=arg("resolution-range", CTF["resolution_range"]),
            defocus=arg("defocus-range", CTF["defocus_range"]),
            per_tile=flag("per-tile", CTF["per_tile"]),
            device=arg("device", DEVICE),
            truth=["--truth", f"{RESULTS}/simulate/micrographs_ctf.star"] if USE_SIM else [],
        threads: 2
        resources:
            **stage_resources(),
        conda:
            "../../envs/gpu.yaml"
        log:
            f"{RESULTS}/logs/ctf_{{batch}}.log",
        shell:
            "cryopipe ctf --micrographs {input.micrographs:q} {params.angpix:q} {params.voltage:q} {params.cs:q}"
            " {params.amplitude_contrast:q} {params.tile:q} {params.resolution:q} {params.defocus:q} {params.per_tile:q}"
            " {params.truth:q} {params.device:q} --out {params.out:q} 2> {log:q}"

    rule ctf_all:
        """Target: every batch's CTF estimated (`snakemake ctf_all`)."""
        input:
            expand(f"{RESULTS}/ctf/batch_{{batch}}/micrographs_ctf.star", batch=sorted(BATCHES)),
