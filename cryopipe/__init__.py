"""cryopipe: a single-particle cryo-EM processing pipeline (CPU/GPU, MPI, Snakemake)."""

__version__ = "0.1.0"
