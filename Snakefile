# cryopipe workflow: what runs when. The science lives in the `cryopipe` command.
# Run: snakemake --cores all            (default config/config.yaml)
#      snakemake --profile profiles/local
#      snakemake <target>               (simulate, pick, extract, ...)

import os
import sys

import jsonschema
import yaml


configfile: os.path.join(workflow.basedir, "config", "config.yaml")


def check_config(cfg, schema_path):
    """Stop with one line naming the bad key and exit status 2, as every cryopipe input error does."""
    with open(schema_path) as fh:
        schema = yaml.safe_load(fh)
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(cfg))
    if error is not None:
        key = ".".join(str(p) for p in error.absolute_path) or "(top level)"
        sys.stderr.write(f"cryopipe config: error: [{key}]: {error.message}\n")
        sys.exit(2)


check_config(config, os.path.join(workflow.basedir, "config", "config.schema.yaml"))


include: "workflow/rules/common.smk"
include: "workflow/rules/simulate.smk"
include: "workflow/rules/ctf.smk"
include: "workflow/rules/pick.smk"
include: "workflow/rules/class2d.smk"
include: "workflow/rules/class3d.smk"
include: "workflow/rules/refine3d.smk"
include: "workflow/rules/bioem.smk"


rule all:
    input:
        ALL_TARGETS,
