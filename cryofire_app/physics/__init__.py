"""Image-formation physics in torch: transforms, lattice, CTF, shifts, rotations, projector.

Conventions are stated in docs/design.md and repeated in each module's docstring. Batch dims lead; outputs follow the
inputs' device and dtype (float32 by default).
"""
from . import ctf, fft, lattice, projector, rotations, shift
from .ctf import compute_ctf, ctf_from_params
from .fft import (
    center_crop_pad,
    fft2_center,
    fft3_center,
    fourier_resize,
    ht2_center,
    ht3_center,
    ifft2_center,
    ifft3_center,
    iht2_center,
    iht3_center,
    iht3_center_crop,
    symmetrize_ht,
    symmetrize_ht3,
    symmetrized_ht3_padded,
    window_mask,
)
from .lattice import Lattice
from .projector import FourierProjector, lattice_to_image, project_fourier, project_real, rotate_volume, slice_ht_volume
from .rotations import (
    cryosparc_pose_to_matrix,
    euler_relion_to_matrix,
    geodesic_angle,
    matrix_to_euler_relion,
    matrix_to_quaternion,
    matrix_to_r6,
    quaternion_to_matrix,
    r6_to_matrix,
    random_rotations,
    rotvec_to_matrix,
)
from .shift import translate_ht, translate_ht_full

__all__ = [
    "fft", "lattice", "ctf", "shift", "rotations", "projector",
    "fft2_center", "ifft2_center", "fft3_center", "ifft3_center", "ht2_center", "iht2_center", "ht3_center",
    "iht3_center", "iht3_center_crop", "symmetrize_ht", "symmetrize_ht3", "symmetrized_ht3_padded", "fourier_resize",
    "center_crop_pad", "window_mask",
    "Lattice", "compute_ctf", "ctf_from_params", "translate_ht", "translate_ht_full",
    "r6_to_matrix", "matrix_to_r6", "quaternion_to_matrix", "matrix_to_quaternion", "random_rotations",
    "euler_relion_to_matrix", "matrix_to_euler_relion", "rotvec_to_matrix", "cryosparc_pose_to_matrix",
    "geodesic_angle", "slice_ht_volume", "FourierProjector", "lattice_to_image", "project_fourier", "project_real",
    "rotate_volume",
]
