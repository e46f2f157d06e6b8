# The embedded demo dataset, generated deterministically from config.simulate.


rule simulate:
    output:
        ctf=f"{RESULTS}/simulate/micrographs_ctf.star",
        truth=f"{RESULTS}/simulate/truth/particles.star",
        maps=expand(f"{RESULTS}/simulate/maps/{{m}}.mrc", m=["conformation_1", "conformation_2", "decoy"]),
        models=expand(f"{RESULTS}/simulate/models/{{m}}.pdb", m=["conformation_1", "conformation_2", "decoy"]),
        micrographs=micrograph_paths() if USE_SIM else [],
        figures=report(
            [f"{RESULTS}/simulate/report/micrograph.png", f"{RESULTS}/simulate/report/maps.png"],
            caption="../report/simulate.rst",
            category="1. Demo dataset",
        ),
        record=f"{RESULTS}/simulate/provenance.json",
    params:
        flags=sim_flags(),
        out=f"{RESULTS}/simulate",
    conda:
        "../../envs/cpu.yaml"
    log:
        f"{RESULTS}/logs/simulate.log",
    shell:
        "cryopipe simulate --out {params.out:q} {params.flags:q} 2> {log:q}"
