"""Forward projection: central slices of a 3D Hartley volume (Fourier-slice theorem) and a real-space reference.

Conventions: volumes are ``(z, y, x)`` with the centre voxel at index ``D//2`` of each axis. ``rot (B, 3, 3)`` follows
cryoDRGN (``k_vol = k_img @ rot``, see :mod:`.rotations`): image pixel ``(x, y)`` (column, row, measured from the centre
pixel ``D//2``) is the line integral of the volume along the points ``x e1 + y e2 + z e3`` (``e_i`` = rows of ``rot``).
Projections are sums over voxels (unit step), so a volume of ones of extent L along the ray gives L.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .fft import iht2_center, symmetrized_ht3_padded
from .lattice import Lattice


def slice_ht_volume(vol_ht: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Trilinear samples ``(B, M)`` of a symmetrized Hartley volume at ``coords (B, M, 3)``.

    ``vol_ht``: ``(Dl, Dl, Dl)`` (shared) or ``(B, Dl, Dl, Dl)`` on the odd lattice of a box ``Dl - 1``, axes
    ``(kz, ky, kx)``, index ``j`` <-> ``-1/2 + j/(Dl-1)`` cycles/px. ``coords`` are ``(kx, ky, kz)`` in cycles/px of the
    volume's pixel (e.g. ``lattice.coords @ rot``). Points outside ``[-1/2, 1/2]^3`` give 0. Differentiable in both.
    """
    if coords.dim() == 2:
        coords = coords.unsqueeze(0)
    b, m, _ = coords.shape
    grid = (2 * coords).to(vol_ht.dtype)  # [-1/2, 1/2] -> [-1, 1]; align_corners=True puts -1/+1 on the end samples
    if vol_ht.dim() == 3:
        out = F.grid_sample(vol_ht[None, None], grid.reshape(1, 1, b, m, 3), mode="bilinear",
                            padding_mode="zeros", align_corners=True)
        return out.reshape(b, m)
    if vol_ht.dim() == 4 and vol_ht.shape[0] == b:
        out = F.grid_sample(vol_ht[:, None], grid.reshape(b, 1, 1, m, 3), mode="bilinear",
                            padding_mode="zeros", align_corners=True)
        return out.reshape(b, m)
    raise ValueError(f"vol_ht must be (Dl,Dl,Dl) or (B,Dl,Dl,Dl) with B={b}, got {tuple(vol_ht.shape)}")


def _sinc2_grid(n: int, dtype: torch.dtype, device, radial: bool = False, size: int | None = None) -> torch.Tensor:
    """(n, n, n) trilinear-interpolation kernel transform: product of sinc^2(x / n) over the three axes, or with
    ``radial=True`` sinc^2(|r| / n) as RELION's gridding correction uses (x, r in voxels from the centre voxel n//2);
    ``size``: only its central ``(size, size, size)`` voxels (as center_crop_pad would cut them), which is all a
    volume zero-padded from box ``size`` to ``n`` needs."""
    m = n if size is None else int(size)
    x = (torch.arange(m, dtype=torch.float64, device=device) - m // 2) / n
    s = torch.special.sinc(x) ** 2
    out = torch.empty(m, m, m, dtype=dtype, device=device)
    for z in range(m):   # plane by plane: float64 temporaries of one plane, not of the whole (n, n, n) grid
        if radial:
            out[z] = (torch.special.sinc(torch.sqrt(x[z] ** 2 + x[:, None] ** 2 + x[None, :] ** 2)) ** 2).to(dtype)
        else:
            out[z] = (s[z] * s[:, None] * s[None, :]).to(dtype)
    return out


class FourierProjector:
    """Projects one real-space volume ``(D, D, D)`` (D even) many times through the Fourier-slice theorem.

    The volume is zero-padded to ``pad * D`` (finer Fourier sampling makes trilinear interpolation accurate), its
    centered 3D HT is symmetrized to the odd lattice, and each image's ``(D+1)^2`` lattice is sampled on the rotated
    plane. ``gridding`` divides the padded volume by the trilinear kernel's transform first: ``"radial"`` (default,
    RELION's ``griddingCorrect``: sinc^2 of the radius), ``"separable"`` (product of sinc^2 per axis) or ``"none"``
    (also ``False``; ``True`` means radial). Frequencies beyond ``rmax`` cycles/px (default 0.5 = Nyquist; None keeps
    the whole cube) are zeroed in the 3D transform and in the slices. The defaults reproduce ``relion_project``
    (gridding correction, Nyquist sphere): tests/test_physics_oracles.py.
    """

    def __init__(self, vol: torch.Tensor, pad: int = 2, gridding: bool | str = "radial", rmax: float | None = 0.5):
        if vol.dim() != 3 or len(set(vol.shape)) != 1 or vol.shape[-1] % 2:
            raise ValueError(f"FourierProjector needs a cubic volume with an even box, got {tuple(vol.shape)}")
        self.D = vol.shape[-1]
        self.pad = int(pad)
        dp = self.pad * self.D
        mode = {True: "radial", False: "none"}.get(gridding, gridding)
        if mode not in ("radial", "separable", "none"):
            raise ValueError(f"gridding must be 'radial', 'separable' or 'none', got {gridding!r}")
        v = vol   # the padding is zero, so the correction applies to the volume's own voxels only
        if mode != "none":
            v = vol / _sinc2_grid(dp, vol.dtype, vol.device, radial=(mode == "radial"), size=self.D)
        self.vol_ht = symmetrized_ht3_padded(v, dp)
        self.lattice = Lattice(self.D, dtype=vol.dtype, device=vol.device)
        self.keep = None
        if rmax is not None:
            self.keep = (self.lattice.freqs2d ** 2).sum(-1) <= rmax * rmax + 1e-12
            ax = (torch.arange(dp + 1, dtype=torch.float64, device=vol.device) - dp // 2) / dp
            for z in range(dp + 1):   # plane by plane: no (dp+1)^3 float64 radius array
                r2 = ax[z] ** 2 + ax[:, None] ** 2 + ax[None, :] ** 2
                self.vol_ht[z] *= (r2 <= rmax * rmax + 1e-12).to(self.vol_ht.dtype)

    def slice(self, rot: torch.Tensor) -> torch.Tensor:
        """Symmetrized 2D HT ``(B, (D+1)^2)`` of the projections at ``rot (B, 3, 3)`` (flat lattice order)."""
        pts = self.lattice.coords if self.keep is None else self.lattice.coords[self.keep]
        y = slice_ht_volume(self.vol_ht, pts @ rot.to(pts.dtype))  # (B, M) at the kept lattice points
        if self.keep is None:
            return y
        out = y.new_zeros(y.shape[0], self.lattice.coords.shape[0])
        out[:, self.keep] = y
        return out

    def project(self, rot: torch.Tensor) -> torch.Tensor:
        """Real-space projections ``(B, D, D)``."""
        return lattice_to_image(self.slice(rot), self.D)


def lattice_to_image(y: torch.Tensor, D: int) -> torch.Tensor:
    """Inverse of symmetrization + HT: flat symmetrized HTs ``(B, (D+1)^2)`` -> real images ``(B, D, D)``.

    The +Nyquist row/column (a copy of -Nyquist on a symmetrized lattice) is dropped before the inverse HT.
    """
    y = y.reshape(*y.shape[:-1], D + 1, D + 1)[..., :D, :D]
    return iht2_center(y)


def project_fourier(vol: torch.Tensor, rot: torch.Tensor, pad: int = 2, gridding: bool | str = "radial",
                    rmax: float | None = 0.5) -> torch.Tensor:
    """Projections ``(B, D, D)`` of ``vol (D, D, D)`` at ``rot (B, 3, 3)`` via the Fourier-slice theorem.

    Pixel values are line integrals in voxel units (see module docstring). For many calls on one volume use
    :class:`FourierProjector`.
    """
    return FourierProjector(vol, pad=pad, gridding=gridding, rmax=rmax).project(rot)


def project_real(vol: torch.Tensor, rot: torch.Tensor, oversample: int = 2) -> torch.Tensor:
    """Reference projector (tests only): trilinear line integral in real space, ``(B, D, D)``.

    Samples ``oversample`` points per voxel along each ray ``x e1 + y e2 + z e3`` and sums with step
    ``1/oversample``; the volume is 0 outside its box. Slow; meant for smooth test volumes.
    """
    d = vol.shape[-1]
    c = d // 2
    ax = torch.arange(d, dtype=vol.dtype, device=vol.device) - c
    zs = (torch.arange(d * oversample, dtype=vol.dtype, device=vol.device) - c * oversample) / oversample
    yy, xx, zz = torch.meshgrid(ax, ax, zs, indexing="ij")
    pts = torch.stack([xx, yy, zz], -1)  # (D, D, Z, 3) image frame (x, y, z)
    out = []
    for r in rot.to(vol.dtype):
        p = pts @ r  # volume frame (x, y, z) relative to the centre voxel
        grid = (p + c) / (d - 1) * 2 - 1
        s = F.grid_sample(vol[None, None], grid[None], mode="bilinear", padding_mode="zeros", align_corners=True)
        out.append(s[0, 0].sum(-1) / oversample)
    return torch.stack(out)


def rotate_volume(vol: torch.Tensor, rot: torch.Tensor, center: torch.Tensor | None = None) -> torch.Tensor:
    """Rigid rotation of a real-space volume ``(D, D, D)`` by trilinear resampling (zero outside).

    The content at volume point ``r0`` (row vector ``(x, y, z)`` in voxels from ``center``, default the centre voxel)
    moves to ``r = (r0 - center) @ rot + center``; i.e. ``out(r) = vol((r - center) @ rot^T + center)``.
    ``rot`` ``(3, 3)`` gives ``(D, D, D)``; a batch ``(B, 3, 3)`` gives ``(B, D, D, D)`` (one pass of grid_sample).
    """
    d = vol.shape[-1]
    c0 = torch.full((3,), float(d // 2), dtype=vol.dtype, device=vol.device)
    center = c0 if center is None else torch.as_tensor(center, dtype=vol.dtype, device=vol.device)
    rots = rot.to(vol.dtype).reshape(-1, 3, 3)
    ax = torch.arange(d, dtype=vol.dtype, device=vol.device)
    zz, yy, xx = torch.meshgrid(ax, ax, ax, indexing="ij")
    r = torch.stack([xx, yy, zz], -1)
    src = torch.einsum("zyxi,bji->bzyxj", r - center, rots) + center
    grid = src / (d - 1) * 2 - 1
    out = F.grid_sample(vol[None, None].expand(len(rots), 1, d, d, d), grid, mode="bilinear", padding_mode="zeros",
                        align_corners=True)[:, 0]
    return out if rot.dim() == 3 else out[0]


__all__ = ["slice_ht_volume", "FourierProjector", "lattice_to_image", "project_fourier", "project_real",
           "rotate_volume"]
