"""Pose grids for the exhaustive and local searches.

Rotations follow cryoDRGN (docs/design.md): ``rot (..., 3, 3)``, ``k_vol = k_img @ rot``; rows are the volume-frame
directions of the image x axis, the image y axis and the viewing direction. Shifts are ``(tx, ty)`` in pixels of the
box they are used at (columns, rows), with the design.md sign: ``+t`` re-centres the observed particle.
"""
from __future__ import annotations

import math

import torch


def fibonacci_sphere(n: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``n`` nearly uniform unit vectors ``(n, 3)`` on the sphere (golden-angle spiral)."""
    i = torch.arange(n, dtype=torch.float64) + 0.5
    z = 1 - 2 * i / n
    r = torch.sqrt(torch.clamp(1 - z * z, min=0.0))
    phi = i * math.pi * (3 - math.sqrt(5))
    return torch.stack([r * torch.cos(phi), r * torch.sin(phi), z], -1).to(dtype)


def frames_from_directions(view: torch.Tensor, psi: torch.Tensor) -> torch.Tensor:
    """Rotations ``(n_view, n_psi, 3, 3)`` whose viewing direction (row 2) is ``view (n_view, 3)`` and whose in-plane
    angle (radians) is ``psi (n_psi,)`` about it. Rows ``e1, e2, e3`` form a right-handed frame (det +1)."""
    v = view / torch.linalg.norm(view, dim=-1, keepdim=True)
    ref = torch.zeros_like(v)
    ref[:, 0] = 1.0
    near_x = v[:, 0].abs() > 0.9
    ref[near_x] = torch.tensor([0.0, 1.0, 0.0], dtype=v.dtype)
    a = torch.linalg.cross(v, ref)
    a = a / torch.linalg.norm(a, dim=-1, keepdim=True)
    b = torch.linalg.cross(v, a)
    c, s = torch.cos(psi)[None, :, None], torch.sin(psi)[None, :, None]
    e1 = c * a[:, None] + s * b[:, None]
    e3 = v[:, None].expand_as(e1)
    e2 = torch.linalg.cross(e3, e1)
    return torch.stack([e1, e2, e3], dim=-2)


def so3_grid(n_dir: int, n_psi: int, offset: torch.Tensor | None = None,
             dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Near-uniform SO(3) grid ``(n_dir * n_psi, 3, 3)``: Fibonacci view directions x equally spaced in-plane angles.

    Spacing is about ``sqrt(4 pi / n_dir)`` rad between views and ``360 / n_psi`` degrees in plane (192 x 24 gives
    ~15 degrees, like cryoDRGN's base HEALPix grid). ``offset (3, 3)`` rotates the whole grid in the volume frame
    (``rot @ offset``), which keeps it uniform; a random offset per iteration avoids grid bias.
    """
    psi = torch.arange(n_psi, dtype=torch.float64) * (2 * math.pi / n_psi)
    rots = frames_from_directions(fibonacci_sphere(n_dir), psi).reshape(-1, 3, 3)
    if offset is not None:
        rots = rots @ offset.to(torch.float64)
    return rots.to(dtype)


def grid_spacing_deg(n_dir: int, n_psi: int) -> float:
    """Approximate angular spacing (degrees) of :func:`so3_grid`: the larger of the view and in-plane spacings."""
    return max(math.degrees(math.sqrt(4 * math.pi / n_dir)), 360.0 / n_psi)


def axis_angle_to_matrix(v: torch.Tensor) -> torch.Tensor:
    """Rotation vectors ``(..., 3)`` (radians) -> rotation matrices (Rodrigues)."""
    theta = torch.linalg.norm(v, dim=-1, keepdim=True)
    k = v / torch.clamp(theta, min=1e-12)
    x, y, z = k.unbind(-1)
    o = torch.zeros_like(x)
    K = torch.stack([o, -z, y, z, o, -x, -y, x, o], -1).reshape(*v.shape[:-1], 3, 3)
    th = theta[..., None]
    eye = torch.eye(3, dtype=v.dtype, device=v.device).expand(K.shape)
    return eye + torch.sin(th) * K + (1 - torch.cos(th)) * (K @ K)


def local_perturbations(step_rad: float, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """27 small rotations ``(27, 3, 3)``: rotation vectors ``step * {-1, 0, 1}^3`` (index 13 is the identity).

    Applied as ``E @ rot`` (a rotation in the image frame), they cover a cube of half-width ``step`` around ``rot``.
    """
    g = torch.tensor([-1.0, 0.0, 1.0], dtype=torch.float64)
    v = torch.stack(torch.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3) * step_rad
    return axis_angle_to_matrix(v).to(dtype)


def shift_grid(extent: float, step: float, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Square grid of shifts ``(T, 2)`` in pixels, ``{-m..m} * step`` per axis with ``m = floor(extent / step)``."""
    m = int(math.floor(extent / step + 1e-9))
    a = torch.arange(-m, m + 1, dtype=torch.float64) * step
    ty, tx = torch.meshgrid(a, a, indexing="ij")
    return torch.stack([tx.reshape(-1), ty.reshape(-1)], -1).to(dtype)
