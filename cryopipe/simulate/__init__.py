"""The embedded demo dataset: a pseudo-atomic complex, its maps and simulated micrographs with ground truth."""
