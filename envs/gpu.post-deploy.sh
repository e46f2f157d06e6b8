#!/bin/sh
# Runs once, in the new environment, after `snakemake --sdm conda` creates it from gpu.yaml (Snakemake's
# post-deploy script: same name, .post-deploy.sh). Installs cryopipe from the checkout whose Snakefile runs:
# the Snakefile exports CRYOPIPE_REPO. A relative pip path in gpu.yaml would not do: Snakemake copies the yaml
# into .snakemake/conda/ (or --conda-prefix) and conda resolves pip paths from there.
# Editable: the environment runs the checkout's current code, so a change to cryopipe needs no new environment.
set -eu
: "${CRYOPIPE_REPO:?is set by the cryopipe Snakefile; create this environment through it}"
python -m pip install --no-input -e "$CRYOPIPE_REPO[gpu,mpi]"
cryopipe --help > /dev/null  # the command the rules call is there
