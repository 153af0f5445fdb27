"""Data I/O: MRC maps/stacks, RELION STAR, cryoSPARC .cs, cryoDRGN pickles. No torch needed.

Conventions are in docs/design.md: stacks (N, D, D) [row, col]; volumes (z, y, x); rotations in cryoDRGN's
convention; translations in pixels; CTF rows [D, apix, dfU, dfV, dfang, kV, Cs, w, phase]. Every bad-input problem
raises `InputError` naming the file.
"""
from .cs import parse_ctf_cs, parse_pose_cs, read_cs
from .errors import InputError
from .euler import euler_relion_to_rot, rot_to_euler_relion, rot_to_rotvec, rotvec_to_rot
from .mrc import MrcInfo, MrcStackWriter, read_map, read_mrc, read_mrc_header, write_mrc
from .particles import ParticleSet, load_particles, resolve_image_paths
from .pickles import (
    load_pickle_safe,
    read_ctf_pkl,
    read_ind_pkl,
    read_pose_pkl,
    read_z_pkl,
    write_ctf_pkl,
    write_ind_pkl,
    write_pose_pkl,
    write_z_pkl,
)
from .stack import ImageStack, check_finite
from .star import StarTable, parse_ctf_star, parse_image_names, parse_pose_star, read_star, write_particles_star

__all__ = [
    "InputError", "MrcInfo", "MrcStackWriter", "StarTable",
    "euler_relion_to_rot", "rot_to_euler_relion", "rotvec_to_rot", "rot_to_rotvec",
    "read_mrc", "read_mrc_header", "read_map", "write_mrc",
    "load_pickle_safe", "read_ctf_pkl", "write_ctf_pkl", "read_pose_pkl", "write_pose_pkl", "read_z_pkl",
    "write_z_pkl", "read_ind_pkl", "write_ind_pkl",
    "read_star", "parse_ctf_star", "parse_pose_star", "parse_image_names", "write_particles_star",
    "read_cs", "parse_ctf_cs", "parse_pose_cs",
    "ImageStack", "check_finite", "ParticleSet", "load_particles", "resolve_image_paths",
]
