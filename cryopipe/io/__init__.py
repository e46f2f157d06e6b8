"""File formats: MRC/MRCS (mrcfile), RELION STAR (starfile), PDB/mmCIF (gemmi), atomic writes."""

from cryopipe.io.atomic import atomic_path, atomic_write_text
from cryopipe.io.mrc import read_mrc, read_mrc_header, write_mrc
from cryopipe.io.star import read_particles, read_star, write_star

__all__ = [
    "atomic_path",
    "atomic_write_text",
    "read_mrc",
    "read_mrc_header",
    "write_mrc",
    "read_particles",
    "read_star",
    "write_star",
]
