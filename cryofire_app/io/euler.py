"""RELION ZYZ Euler angles and cryoSPARC rotation vectors <-> cryoDRGN rotation matrices (numpy).

cryoDRGN convention (docs/design.md): a 2D image frequency `k_img` (row vector) lands at `k_vol = k_img @ rot`.

- RELION: `rot = R_zyz(rlnAngleRot, rlnAngleTilt, rlnAnglePsi)^T`, where
  `R_zyz = scipy Rotation.from_euler('ZYZ', [rot, tilt, psi], degrees=True).as_matrix()` (intrinsic z-y'-z'').
- cryoSPARC: `rot = expmap(alignments3D/pose)^T`, the pose being a rotation vector (axis * angle, radians).

This module only needs numpy/scipy so that io has no torch dependency; `cryofire_app.physics.rotations` holds the
torch versions of the same conventions.
"""
from __future__ import annotations

import warnings

import numpy as np
from scipy.spatial.transform import Rotation


def euler_relion_to_rot(euler_deg: np.ndarray) -> np.ndarray:
    """(N, 3) RELION Euler angles [rot, tilt, psi] in degrees -> (N, 3, 3) float64 cryoDRGN `rot`."""
    euler = np.asarray(euler_deg, dtype=np.float64).reshape(-1, 3)
    if len(euler) == 0:
        return np.zeros((0, 3, 3))
    r_zyz = Rotation.from_euler("ZYZ", euler, degrees=True).as_matrix()
    return np.ascontiguousarray(np.transpose(r_zyz, (0, 2, 1)))


def rot_to_euler_relion(rot: np.ndarray) -> np.ndarray:
    """(N, 3, 3) cryoDRGN `rot` -> (N, 3) RELION [rot, tilt, psi] in degrees (tilt in [0, 180]).

    At tilt 0 or 180 only rot + psi (or rot - psi) is defined; scipy then sets psi = 0 (the warning is silenced).
    """
    rot = np.asarray(rot, dtype=np.float64).reshape(-1, 3, 3)
    if len(rot) == 0:
        return np.zeros((0, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # gimbal lock: angles are still a valid decomposition
        return Rotation.from_matrix(np.transpose(rot, (0, 2, 1))).as_euler("ZYZ", degrees=True)


def rotvec_to_rot(rotvec: np.ndarray) -> np.ndarray:
    """(N, 3) cryoSPARC rotation vectors (radians) -> (N, 3, 3) float64 cryoDRGN `rot` = expmap(rotvec)^T."""
    rv = np.asarray(rotvec, dtype=np.float64).reshape(-1, 3)
    if len(rv) == 0:
        return np.zeros((0, 3, 3))
    return np.ascontiguousarray(np.transpose(Rotation.from_rotvec(rv).as_matrix(), (0, 2, 1)))


def rot_to_rotvec(rot: np.ndarray) -> np.ndarray:
    """(N, 3, 3) cryoDRGN `rot` -> (N, 3) cryoSPARC rotation vectors (radians)."""
    rot = np.asarray(rot, dtype=np.float64).reshape(-1, 3, 3)
    if len(rot) == 0:
        return np.zeros((0, 3))
    return Rotation.from_matrix(np.transpose(rot, (0, 2, 1))).as_rotvec()
