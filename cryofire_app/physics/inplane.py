"""In-plane rotation of particle images and the pose change that goes with it.

Conventions (as everywhere in :mod:`cryofire_app.physics`): image pixel ``[row, col]``, offsets ``(x, y) = (col, row)``
measured from the centre pixel ``D//2``; ``rot`` rows are the volume-frame directions of the image x axis, y axis and
view axis; ``trans (tx, ty)`` in pixels is the shift that re-centres the observed particle.

``rotate_images(x, a)`` moves the content at offset ``p`` to ``Q(a) p`` with ``Q = [[cos a, -sin a], [sin a, cos a]]``
(bilinear interpolation, zeros outside). If ``x`` is the image of a volume at pose ``(rot, trans)``, the rotated image
is the image of the same volume at ``rot' = Q3 @ rot`` (``Q3 = diag(Q, 1)``) and ``trans' = Q @ trans``
(tests/test_inplane.py checks this against the Fourier projector). The trainer uses it to augment the encoder's input:
an encoder that must answer ``(Q3 R, Q t)`` for every in-plane turn of an image cannot memorise the image's noise.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def inplane_matrix(angles: torch.Tensor) -> torch.Tensor:
    """(B,) angles in radians -> (B, 3, 3) ``Q3 = [[cos, -sin, 0], [sin, cos, 0], [0, 0, 1]]``."""
    c, s = torch.cos(angles), torch.sin(angles)
    out = torch.zeros(angles.shape + (3, 3), dtype=angles.dtype, device=angles.device)
    out[..., 0, 0], out[..., 0, 1], out[..., 1, 0], out[..., 1, 1] = c, -s, s, c
    out[..., 2, 2] = 1.0
    return out


def rotate_images(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """(B, D, D) images, (B,) radians -> (B, D, D): content at offset p moves to Q(a) p about the pixel (D//2, D//2).

    Bilinear resampling (it damps the highest frequencies; the encoder's input box crops most of them away)."""
    with torch.autocast(x.device.type, enabled=False):   # geometry in fp32 even under mixed precision
        return _rotate_images(x.float(), angles.float())


def _rotate_images(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    B, D = x.shape[0], x.shape[-1]
    a = angles
    c, s = torch.cos(a), torch.sin(a)
    # affine_grid maps output -> input coordinates, normalized to [-1, 1] with align_corners=False: pixel index i sits
    # at (2 i + 1) / D - 1, so the centre pixel D//2 (D even) sits at 1/D; the source of output p is Q^T p
    qt = torch.stack([torch.stack([c, s], -1), torch.stack([-s, c], -1)], -2)   # Q^T, (B, 2, 2)
    cen = x.new_full((2,), 1.0 / D)
    theta = torch.cat([qt, (cen - qt @ cen)[..., None]], -1)
    grid = F.affine_grid(theta, (B, 1, D, D), align_corners=False)
    return F.grid_sample(x[:, None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[:, 0]


def rotate_poses(rot: torch.Tensor, trans: torch.Tensor, angles: torch.Tensor, inverse: bool = False):
    """The pose of the rotated image: ``(Q3 rot, Q trans)``; ``inverse=True`` undoes it: ``(Q3^T rot, Q^T trans)``."""
    with torch.autocast(rot.device.type, enabled=False):   # fp32 even under mixed precision
        q3 = inplane_matrix(angles.float())
        if inverse:
            q3 = q3.transpose(-1, -2)
        return q3 @ rot.float(), torch.einsum("bij,bj->bi", q3[:, :2, :2], trans.float())
