"""Rotations: 6D representation, quaternions, uniform SO(3) sampling, RELION Euler angles, cryoSPARC rotation vectors.

Convention (cryoDRGN, docs/design.md): ``rot (..., 3, 3)`` maps image-frame row vectors to the volume frame,
``k_vol = k_img @ rot``. Its rows are the volume-frame directions of the image x axis (e1), the image y axis (e2) and
the viewing direction (e3). A projection image pixel ``(x, y)`` integrates the volume along ``x e1 + y e2 + z e3``.
All matrices are proper rotations (det +1). Angles in degrees unless a name says otherwise.
"""
from __future__ import annotations

import math

import torch


def r6_to_matrix(r6: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """6D -> rotation by Gram-Schmidt (Zhou et al.): ``r6 (..., 6) = [a1, a2]`` -> rows ``e1, e2, e3`` ``(..., 3, 3)``.

    ``e1 = a1/|a1|``, ``e2 = normalise(a2 - (e1.a2) e1)``, ``e3 = e1 x e2`` (cross product over the last axis).
    Norms are clamped at ``eps`` (1e-5) so degenerate inputs give finite gradients.
    """
    a1, a2 = r6[..., 0:3], r6[..., 3:6]
    e1 = a1 / torch.clamp(torch.linalg.norm(a1, dim=-1, keepdim=True), min=eps)
    u2 = a2 - (e1 * a2).sum(-1, keepdim=True) * e1
    e2 = u2 / torch.clamp(torch.linalg.norm(u2, dim=-1, keepdim=True), min=eps)
    e3 = torch.cross(e1, e2, dim=-1)
    return torch.stack([e1, e2, e3], dim=-2)


def matrix_to_r6(rot: torch.Tensor) -> torch.Tensor:
    """Rotation ``(..., 3, 3)`` -> 6D ``(..., 6)``: its first two rows concatenated (inverse of
    :func:`r6_to_matrix`)."""
    return torch.cat([rot[..., 0, :], rot[..., 1, :]], dim=-1)


def quaternion_to_matrix(q: torch.Tensor) -> torch.Tensor:
    """Unit quaternions ``(..., 4)`` scalar-first ``(w, x, y, z)`` -> rotation matrices ``(..., 3, 3)``.

    The matrix is the usual *active* rotation (column-vector form ``v' = R v``), same as
    ``scipy.spatial.transform.Rotation.from_quat([x, y, z, w]).as_matrix()``. Input is normalised first.
    """
    q = q / torch.linalg.norm(q, dim=-1, keepdim=True)
    w, x, y, z = q.unbind(-1)
    r = torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w),
        2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w),
        2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y),
    ], dim=-1)
    return r.reshape(*q.shape[:-1], 3, 3)


def matrix_to_quaternion(rot: torch.Tensor) -> torch.Tensor:
    """Rotation matrices ``(..., 3, 3)`` -> unit quaternions ``(w, x, y, z)`` with ``w >= 0`` (inverse of the above)."""
    m = rot
    m00, m11, m22 = m[..., 0, 0], m[..., 1, 1], m[..., 2, 2]
    # four candidate (unnormalised) quaternions; pick the numerically best one per element (Shepperd's method)
    cands = torch.stack([
        torch.stack([1 + m00 + m11 + m22, m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0],
                     m[..., 1, 0] - m[..., 0, 1]], -1),
        torch.stack([m[..., 2, 1] - m[..., 1, 2], 1 + m00 - m11 - m22, m[..., 0, 1] + m[..., 1, 0],
                     m[..., 0, 2] + m[..., 2, 0]], -1),
        torch.stack([m[..., 0, 2] - m[..., 2, 0], m[..., 0, 1] + m[..., 1, 0], 1 - m00 + m11 - m22,
                     m[..., 1, 2] + m[..., 2, 1]], -1),
        torch.stack([m[..., 1, 0] - m[..., 0, 1], m[..., 0, 2] + m[..., 2, 0], m[..., 1, 2] + m[..., 2, 1],
                     1 - m00 - m11 + m22], -1),
    ], dim=-2)  # (..., 4, 4): candidate i has component i equal to 4 q_i^2
    diag = torch.stack([1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22], -1)
    best = diag.argmax(-1, keepdim=True)
    q = torch.gather(cands, -2, best.unsqueeze(-1).expand(*best.shape[:-1], 1, 4)).squeeze(-2)
    q = q / torch.linalg.norm(q, dim=-1, keepdim=True)
    return torch.where(q[..., :1] < 0, -q, q)


def random_rotations(n: int, generator: torch.Generator | None = None, *, dtype: torch.dtype = torch.float32,
                     device: torch.device | str | None = None) -> torch.Tensor:
    """``n`` rotations ``(n, 3, 3)`` uniform on SO(3) (Haar): normalised 4D Gaussian quaternions."""
    q = torch.randn(n, 4, generator=generator, dtype=torch.float64,
                    device=generator.device if generator is not None else device)
    return quaternion_to_matrix(q).to(dtype=dtype, device=device)


def _rz(a: torch.Tensor) -> torch.Tensor:
    c, s = torch.cos(a), torch.sin(a)
    o, z = torch.ones_like(a), torch.zeros_like(a)
    return torch.stack([c, -s, z, s, c, z, z, z, o], -1).reshape(*a.shape, 3, 3)


def _ry(a: torch.Tensor) -> torch.Tensor:
    c, s = torch.cos(a), torch.sin(a)
    o, z = torch.ones_like(a), torch.zeros_like(a)
    return torch.stack([c, z, s, z, o, z, -s, z, c], -1).reshape(*a.shape, 3, 3)


def euler_relion_to_matrix(rot: torch.Tensor, tilt: torch.Tensor, psi: torch.Tensor) -> torch.Tensor:
    """RELION Euler angles (rlnAngleRot, rlnAngleTilt, rlnAnglePsi; degrees) -> cryoDRGN ``rot (..., 3, 3)``.

    ``rot = R_zyz(rot, tilt, psi)^T`` with ``R_zyz = Rz(rot) @ Ry(tilt) @ Rz(psi)`` (= scipy
    ``Rotation.from_euler('ZYZ', [rot, tilt, psi], degrees=True)``), exactly as cryoDRGN ``parse_pose_star``.
    """
    d = math.pi / 180
    rot, tilt, psi = (torch.as_tensor(v) for v in (rot, tilt, psi))
    dt = torch.promote_types(rot.dtype, torch.float32) if not rot.is_floating_point() else rot.dtype
    r = _rz(rot.to(dt) * d) @ _ry(tilt.to(dt) * d) @ _rz(psi.to(dt) * d)
    return r.transpose(-1, -2)


def matrix_to_euler_relion(rot: torch.Tensor) -> torch.Tensor:
    """cryoDRGN ``rot (..., 3, 3)`` -> RELION ``(rot, tilt, psi)`` degrees ``(..., 3)``; tilt in [0, 180], others in
    (-180, 180]. At tilt 0 or 180 (gimbal lock) psi is set to 0."""
    a = rot.transpose(-1, -2)  # = Rz(rot) Ry(tilt) Rz(psi)
    tilt = torch.acos(torch.clamp(a[..., 2, 2], -1.0, 1.0))
    sin_t = torch.sqrt(a[..., 0, 2] ** 2 + a[..., 1, 2] ** 2)
    regular = sin_t > 1e-6
    phi = torch.where(regular, torch.atan2(a[..., 1, 2], a[..., 0, 2]),
                      torch.atan2(a[..., 1, 0], a[..., 0, 0]) * torch.sign(a[..., 2, 2]))
    psi = torch.where(regular, torch.atan2(a[..., 2, 1], -a[..., 2, 0]), torch.zeros_like(phi))
    return torch.stack([phi, tilt, psi], -1) * (180 / math.pi)


def _skew(v: torch.Tensor) -> torch.Tensor:
    x, y, z = v.unbind(-1)
    o = torch.zeros_like(x)
    return torch.stack([o, -z, y, z, o, -x, -y, x, o], -1).reshape(*v.shape[:-1], 3, 3)


def rotvec_to_matrix(rotvec: torch.Tensor) -> torch.Tensor:
    """Rotation vectors ``(..., 3)`` (axis * angle, radians) -> active rotation matrices (exponential map, Rodrigues);
    same as scipy ``Rotation.from_rotvec(v).as_matrix()``."""
    theta = torch.linalg.norm(rotvec, dim=-1, keepdim=True).unsqueeze(-1)  # (..., 1, 1)
    k = _skew(rotvec)
    small = theta < 1e-6
    safe = torch.where(small, torch.ones_like(theta), theta)
    a = torch.where(small, 1 - theta ** 2 / 6, torch.sin(safe) / safe)
    b = torch.where(small, 0.5 - theta ** 2 / 24, (1 - torch.cos(safe)) / safe ** 2)
    eye = torch.eye(3, dtype=rotvec.dtype, device=rotvec.device).expand(k.shape)
    return eye + a * k + b * (k @ k)


def cryosparc_pose_to_matrix(rotvec: torch.Tensor) -> torch.Tensor:
    """cryoSPARC ``alignments3D/pose`` rotation vectors ``(..., 3)`` -> cryoDRGN ``rot = expmap(rotvec)^T``."""
    return rotvec_to_matrix(rotvec).transpose(-1, -2)


def geodesic_angle(r1: torch.Tensor, r2: torch.Tensor, degrees: bool = True) -> torch.Tensor:
    """Angle of the rotation ``r1 @ r2^T`` (``(...,)``; degrees by default, radians with ``degrees=False``)."""
    tr = (r1 * r2).sum(dim=(-1, -2))  # trace(r1 r2^T)
    ang = torch.acos(torch.clamp((tr - 1) / 2, -1.0, 1.0))
    return ang * (180 / math.pi) if degrees else ang


def chordal_mean(rots: torch.Tensor) -> torch.Tensor:
    """``(..., K, 3, 3)`` -> ``(..., 3, 3)``: the rotation nearest (Frobenius) to the sum of the K rotations, i.e. the
    chordal L2 mean (SVD of the sum, determinant forced to +1)."""
    U, _, Vh = torch.linalg.svd(rots.sum(-3))
    d = torch.sign(torch.linalg.det(U @ Vh))
    U = torch.cat([U[..., :2], U[..., 2:] * d[..., None, None]], -1)
    return U @ Vh
