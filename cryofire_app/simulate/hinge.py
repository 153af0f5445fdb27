"""Hinge motion of one map: a masked sub-region rotates rigidly about an axis (voxels from the box centre, x, y, z)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

from cryofire_app.physics import fourier_resize, rotate_volume, rotvec_to_matrix
from cryofire_app.simulate.config import HingeConfig


def auto_hinge_mask(vol: torch.Tensor, arm: Sequence[float], fraction: float, ramp: float = 2.0
                    ) -> tuple[torch.Tensor, float]:
    """Mask (z, y, x) of the part of ``vol`` beyond a plane normal to ``arm`` holding ``fraction`` of the positive
    density, with a linear ramp of ``ramp`` voxels; returns (mask, plane offset in voxels from the box centre)."""
    d = vol.shape[-1]
    a = torch.as_tensor(arm, dtype=torch.float64)
    a = a / a.norm()
    ax = torch.arange(d, dtype=torch.float64) - d // 2
    z, y, x = torch.meshgrid(ax, ax, ax, indexing="ij")
    s = x * a[0] + y * a[1] + z * a[2]
    w = torch.clamp(vol.to(torch.float64), min=0)
    order = torch.argsort(s.reshape(-1), descending=True)
    cum = torch.cumsum(w.reshape(-1)[order], 0) / w.sum()
    cut = float(s.reshape(-1)[order][int(torch.searchsorted(cum, torch.tensor(fraction, dtype=torch.float64)))])
    mask = torch.clamp((s - cut) / ramp + 0.5, 0.0, 1.0)
    return mask.to(vol.dtype), cut


@dataclass
class _Hinge:
    fixed: torch.Tensor
    moving: torch.Tensor
    pivot: torch.Tensor  # (3,) voxels from the centre, (x, y, z)
    axis: torch.Tensor   # (3,) unit
    angle_deg: float

    def motion(self, u: torch.Tensor) -> torch.Tensor:
        """Row-convention rotations A (B, 3, 3): moving content at r0 goes to (r0 - p) @ A + p."""
        rv = self.axis[None] * (u[:, None] * math.radians(self.angle_deg))
        return rotvec_to_matrix(rv).transpose(-1, -2)

    def volume(self, u: float, oversample: int = 2) -> torch.Tensor:
        """Ground-truth map at hinge coordinate u: the moving part is rotated by trilinear resampling on a grid
        ``oversample`` times finer (Fourier padded, then cropped back), which keeps interpolation blur small."""
        a = self.motion(torch.tensor([u], dtype=torch.float64))[0].to(self.moving.dtype)
        d = self.moving.shape[-1]
        if u == 0:
            return self.fixed + self.moving
        fine = fourier_resize(self.moving, d * oversample, ndim=3)
        centre = self.pivot.to(self.moving.dtype) * oversample + (d * oversample) // 2
        moved = fourier_resize(rotate_volume(fine, a, center=centre), d, ndim=3)
        # keep the change local: cut the resampling's ringing outside the moved support (+1 voxel)
        support = rotate_volume((self.moving != 0).to(self.moving.dtype), a,
                                center=self.pivot.to(self.moving.dtype) + d // 2) > 0
        region = torch.nn.functional.max_pool3d(support[None, None].to(self.moving.dtype), 3, stride=1,
                                                padding=1)[0, 0]
        return self.fixed + moved * region


def _default_pivot(vol: torch.Tensor, mask: torch.Tensor, cfg: HingeConfig, cut: float | None) -> torch.Tensor:
    """Pivot (x, y, z) in voxels from the box centre when none is given: the point of the automatic mask's cut plane
    level with the density's centre of mass, or, for a given mask, the midpoint of the density's and the masked
    density's centres of mass (positive density only)."""
    d = vol.shape[-1]
    ax = torch.arange(d, dtype=torch.float64) - d // 2
    z, y, x = torch.meshgrid(ax, ax, ax, indexing="ij")
    w = torch.clamp(vol.to(torch.float64), min=0)
    com = torch.stack([(w * x).sum(), (w * y).sum(), (w * z).sum()]) / w.sum()
    if cut is not None:
        a = torch.tensor(cfg.arm, dtype=torch.float64)
        a = a / a.norm()
        return com + (cut - (com @ a)) * a  # point of the cut plane level with the centre of mass
    wm = w * mask.to(torch.float64)
    mcom = torch.stack([(wm * x).sum(), (wm * y).sum(), (wm * z).sum()]) / wm.sum()
    return (com + mcom) / 2


def hinge_states(vol: torch.Tensor, cfg: HingeConfig, mask: torch.Tensor | None = None) -> _Hinge:
    """Split ``vol`` into fixed and moving parts for :class:`HingeConfig` (see there for the defaults)."""
    if mask is None:
        mask, cut = auto_hinge_mask(vol, cfg.arm, cfg.fraction)
    else:
        cut = None
    mask = mask.to(vol.dtype)
    if cfg.pivot is not None:
        pivot = torch.tensor(cfg.pivot, dtype=torch.float64)
    else:
        pivot = _default_pivot(vol, mask, cfg, cut)
    axis = torch.tensor(cfg.axis, dtype=torch.float64)
    axis = axis / axis.norm()
    return _Hinge(fixed=vol * (1 - mask), moving=vol * mask, pivot=pivot, axis=axis, angle_deg=cfg.angle_deg)
