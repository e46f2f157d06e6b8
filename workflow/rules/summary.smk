# The run at a glance, after every stage: key numbers, time and memory per stage, and one picking preview.


rule summary:
    input:
        stage_results(),  # every stage's final result: the summary comes last
    output:
        table=f"{RESULTS}/summary/summary.tsv",
        figures=report(
            [f"{RESULTS}/summary/summary.png", f"{RESULTS}/summary/picks.jpg"],
            caption="../report/summary.rst",
            category="0. Summary of the run",
        ),
    params:
        results=RESULTS,
        out=f"{RESULTS}/summary",
    conda:
        "../../envs/cpu.yaml"
    log:
        f"{RESULTS}/logs/summary.log",
    shell:
        "cryopipe summary --results {params.results:q} --out {params.out:q} 2> {log:q}"
