# cryopipe workflow: what runs when. The science lives in the `cryopipe` command.
# Run: snakemake --cores all            (default config/config.yaml)
#      snakemake --profile profiles/local
#      snakemake <target>               (simulate, pick, extract, ...)

from snakemake.utils import validate


configfile: "config/config.yaml"


validate(config, "config/config.schema.yaml")


include: "workflow/rules/common.smk"
include: "workflow/rules/simulate.smk"


rule all:
    input:
        ALL_TARGETS,
