# cryopipe workflow: what runs when. The science lives in the `cryopipe` command.
# Run: snakemake --cores all            (default config/config.yaml)
#      snakemake --profile profiles/local
#      snakemake <target>               (simulate, ctf_all, pick_all, extract_all, class2d, select2d, ...)

import os


configfile: os.path.join(workflow.basedir, "config", "config.yaml")


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/simulate.smk"
include: "workflow/rules/ctf.smk"
include: "workflow/rules/pick.smk"
include: "workflow/rules/extract.smk"
include: "workflow/rules/class2d.smk"
include: "workflow/rules/pick_templates.smk"
include: "workflow/rules/initial_model.smk"
include: "workflow/rules/class3d.smk"
include: "workflow/rules/refine3d.smk"
include: "workflow/rules/postprocess.smk"
include: "workflow/rules/bioem.smk"
include: "workflow/rules/summary.smk"


rule all:
    input:
        get_final_targets(),
