"""View encoder: a second encoder that reads the view direction from an image turned and shifted into a canonical frame.

The main encoder must recognise a particle at any in-plane angle and shift; its answer ``(rot, trans)`` is enough to
turn the image so that its in-plane angle is 0 in a fixed frame of its view (``canonical_angle``) and to re-centre
it (``canonicalise``). The view encoder sees only such images: the images of one view now look alike whatever their
in-plane angle, so it learns a 2-parameter family instead of a 3-parameter one. Its grid has ``dirs`` view directions
and 4 in-plane angles (the frame only; the targets' in-plane angle stays near 0). Trained on the seeded schedule's
pose rows, canonicalised at their target pose jittered as the main encoder errs; at inference it reads the image
canonicalised at the main encoder's pose, and its pose is turned back.

Why, and what it gains on new particles: docs/decisions/007-view-encoder.md.

Conventions as in physics.inplane: ``rot`` rows = the volume-frame directions of the image x, y and view axes; turning
an image by ``a`` (content at offset p -> Q(a) p) gives pose ``Q3(a) rot``; ``trans (tx, ty)`` px re-centres it.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from cryofire_app.model.encoder import Encoder
from cryofire_app.physics.fft import fourier_resize
from cryofire_app.physics.inplane import rotate_poses
from cryofire_app.reconstruct.grids import axis_angle_to_matrix, frames_from_directions

VIEW_PSI = 4   # in-plane angles of the view encoder's grid: a frame for the view, the targets sit at the first


def canonical_angle(rot: torch.Tensor) -> torch.Tensor:
    """``(n,)`` in-plane angle ``a`` (radians) that turns an image at pose ``rot (n, 3, 3)`` to the canonical frame of
    its view: ``(Q3(a) rot)[0]`` is reconstruct.grids.frames_from_directions' ``e1`` at psi 0 (the frame of the
    view encoder's grid)."""
    r = rot.double()
    e1 = frames_from_directions(r[:, 2], torch.zeros(1, dtype=torch.float64, device=rot.device))[:, 0, 0]
    return torch.atan2(-(e1 * r[:, 1]).sum(-1), (e1 * r[:, 0]).sum(-1)).float()


def canonicalise(x: torch.Tensor, angle: torch.Tensor, trans: torch.Tensor) -> torch.Tensor:
    """Images ``x (n, D, D)`` of particles at shifts ``trans (n, 2)`` px, turned by ``angle (n,)`` radians about the
    centre pixel (content at p -> Q p) and re-centred: ``out(p) = x(Q^T (p - Q t)) = x(Q^T p - t)``, bilinear, zeros
    outside. The particle of pose ``(rot, trans)`` then has pose ``(Q3(angle) rot, 0)``."""
    with torch.autocast(x.device.type, enabled=False):
        n, D = x.shape[0], x.shape[-1]
        a = angle.float()
        c, s = torch.cos(a), torch.sin(a)
        qt = torch.stack([torch.stack([c, s], -1), torch.stack([-s, c], -1)], -2)          # Q^T (n, 2, 2)
        # normalised coordinates (affine_grid, align_corners=False): pixel i at (2 i + 1) / D - 1, the centre D//2
        # at 1/D; the source of output u is cen + Q^T (u - cen) - 2 t / D
        cen = x.new_full((2,), 1.0 / D, dtype=torch.float32)
        theta = torch.cat([qt, (cen - qt @ cen - 2.0 * trans.float() / D)[..., None]], -1)
        grid = F.affine_grid(theta, (n, 1, D, D), align_corners=False)
        return F.grid_sample(x.float()[:, None], grid, mode="bilinear", padding_mode="zeros",
                             align_corners=False)[:, 0]


def jitter_pose(rot: torch.Tensor, trans: torch.Tensor, deg: float, px: float,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``rot (n, 3, 3)`` turned by a random small rotation (Gaussian rotation vector, ``deg`` per axis) and ``trans
    (n, 2)`` px moved by Gaussian ``px`` per axis (``generator``: CPU draws, rotation first)."""
    n = rot.shape[0]
    e = axis_angle_to_matrix(torch.randn(n, 3, generator=generator, dtype=torch.float64) * math.radians(deg))
    t = trans.float() + (torch.randn(n, 2, generator=generator) * px).to(trans.device)
    return e.float().to(rot.device) @ rot.float(), t


class ViewEncoder(nn.Module):
    """An :class:`Encoder` (no z, grid head of ``dirs`` directions x 4 in-plane angles) on canonicalised images.

    ``jitter_deg`` / ``jitter_px``: the spread (per axis, Gaussian) of the target pose at which training rows are
    canonicalised, standing for the main encoder's typical errors (docs/decisions/007-view-encoder.md)."""

    def __init__(self, D: int, dirs: int = 1024, jitter_deg: float = 3.0, jitter_px: float = 1.0, **encoder_kwargs):
        super().__init__()
        encoder_kwargs = {k: v for k, v in encoder_kwargs.items() if k not in ("rot_head", "grid_dirs", "grid_psi")}
        box = encoder_kwargs.pop("box", None)
        # the images are Fourier-cropped to the input box first and turned there (4x fewer pixels at 64 -> 32)
        self.D, self.box = D, (D if box is None or box >= D else int(box))
        self.net = Encoder(self.box, 0, rot_head="grid", grid_dirs=dirs, grid_psi=VIEW_PSI, **encoder_kwargs)
        # the decode's neighbourhood: 2 view spacings (the encoder's default uses the coarser in-plane spacing)
        self.net.neighbourhood = 2 * math.sqrt(2) * math.sin(math.sqrt(4 * math.pi / dirs))
        self.dirs, self.jitter_deg, self.jitter_px = dirs, jitter_deg, jitter_px

    def loss(self, x: torch.Tensor, rot: torch.Tensor, trans: torch.Tensor, width: float,
             generator: torch.Generator | None = None) -> torch.Tensor:
        """Per-row grid cross-entropy ``(n,)`` for images ``x (n, D, D)`` of known poses ``rot (n, 3, 3)``, ``trans
        (n, 2)`` px, canonicalised at the pose jittered by the training spread (``generator``: CPU draws)."""
        with torch.no_grad():
            rj, tj = jitter_pose(rot, trans, self.jitter_deg, self.jitter_px, generator)
            a = canonical_angle(rj)
            xc = self._canonicalise(x, a, tj)
            target = rotate_poses(rot, trans, a)[0]
        return self.net.grid_loss(self.net(xc)["rot_logits"], target, width)

    def _canonicalise(self, x: torch.Tensor, angle: torch.Tensor, trans: torch.Tensor) -> torch.Tensor:
        """``canonicalise`` at the input box: ``x (n, D, D)``, ``trans`` px of box D -> ``(n, box, box)``."""
        if self.box < self.D:
            x = fourier_resize(x.float(), self.box, ndim=2)
            trans = trans * (self.box / self.D)
        return canonicalise(x, angle, trans).to(x.dtype)

    def refine(self, x: torch.Tensor, rot: torch.Tensor, trans: torch.Tensor) -> torch.Tensor:
        """Rotations ``(n, 3, 3)`` of images ``x (n, D, D)`` whose poses the main encoder read as ``rot``, ``trans``
        px: the view encoder's answer on the canonicalised images, turned back (translation: the main encoder's)."""
        a = canonical_angle(rot)
        out = self.net(self._canonicalise(x, a, trans))["rot"]
        return rotate_poses(out, trans, a, inverse=True)[0]
