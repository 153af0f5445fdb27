"""Encoder: CNN over the windowed, normalized real-space image -> rotation (6D, Gram-Schmidt), translation, z.

Input `(B, D, D)` images `[row, col]`. Outputs:
- `rot (B, 3, 3)`: cryoDRGN convention, rows = volume-frame directions of the image x axis, image y axis, view axis
  (a 2D frequency k_img lands at k_img @ rot);
- `rot_logits (B, G)` with `rot_head="grid"`: scores over the G rotations of `Encoder.rot_grid`; `rot` is then their
  probability-weighted mean around the most likely one (differentiable, see `grid_pose`);
- `trans (B, 2)`: pixels (tx, ty) = (columns, rows), the shift that re-centres the observed particle;
- `z_mu (B, d)` and, if variational, `z_logvar (B, d)` (std = exp(logvar / 2)).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from cryofire_app.physics.fft import fourier_resize
from cryofire_app.physics.rotations import r6_to_matrix
from cryofire_app.reconstruct.grids import grid_spacing_deg, so3_grid


def _groups(c: int) -> int:
    for g in (16, 8, 4, 2, 1):
        if c % g == 0:
            return g
    return 1


class ConvBlock(nn.Sequential):
    """3x3 conv -> ReLU -> 3x3 conv -> ReLU -> 2x2 average pool -> GroupNorm (the original's block, any width), or
    BatchNorm with ``norm="batch"`` (running statistics in eval mode)."""

    def __init__(self, c_in: int, c_out: int, norm: str = "group"):
        if norm not in NORMS:
            raise ValueError(f"encoder norm must be one of {NORMS}, got {norm!r}")
        super().__init__(
            nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(c_out, c_out, 3, padding=1), nn.ReLU(inplace=True),
            nn.AvgPool2d(2), nn.GroupNorm(_groups(c_out), c_out) if norm == "group" else nn.BatchNorm2d(c_out),
        )


STEMS = ("conv", "unshuffle")
NORMS = ("group", "batch")
ROT_HEADS = ("r6", "grid")
GRID_TOPK = 16   # grid head: candidates averaged around the most likely rotation


def grid_pose(logits: torch.Tensor, grid: torch.Tensor, radius: float) -> torch.Tensor:
    """Rotation from scores over a rotation grid: the probability-weighted mean of the ``GRID_TOPK`` most likely grid
    rotations that lie within chordal distance ``radius`` of the most likely one, projected back to a rotation by
    Gram-Schmidt on its first two rows (stable gradients, unlike an SVD of a near-rotation). ``logits (..., G)``,
    ``grid (G, 3, 3)`` -> ``(..., 3, 3)``; only the neighbourhood of the mode counts, so a second, distant mode does not
    pull the answer between the two."""
    p = torch.softmax(logits.float(), -1)
    w, idx = p.topk(min(GRID_TOPK, grid.shape[0]), -1)
    cand = grid[idx]                                        # (..., k, 3, 3)
    near = ((cand - cand[..., :1, :, :]) ** 2).sum((-1, -2)) <= radius * radius
    w = w * near
    m = (w[..., None, None] * cand).sum(-3) / w.sum(-1)[..., None, None]
    return r6_to_matrix(m[..., :2, :].reshape(*m.shape[:-2], 6))


class Encoder(nn.Module):
    """CNN -> MLP -> heads. `stem="conv"`: the blocks start on the (1, D, D) image (the original); `"unshuffle"`:
    the image is first rearranged losslessly into 4 half-resolution channels (pixel_unshuffle: channel 2*dy + dx
    holds pixels [2i + dy, 2j + dx]), so the first block runs at D/2 (~5x fewer FLOPs at box 64 with the default
    widths, no pixel discarded). `channels_last`: NHWC memory format for the convolutions (faster with oneDNN on CPU
    and tensor cores on GPU; same math). `box`: the CNN sees the (B, D, D) input Fourier-cropped to this box
    (None or >= D: the input as is); a low-pass that drops frequencies which carry mostly noise at low SNR
    (docs/decisions/005-grid-rotation-head.md).
    `rot_head="r6"`: the 6D regression head (the original); `"grid"`: scores over a `grid_dirs x grid_psi` rotation
    grid (reconstruct.grids.so3_grid), trained by cross-entropy against soft targets (`grid_loss`) where poses are
    known (the seeded schedule's distill phase) and through `rot` (`grid_pose`) by the reconstruction loss."""

    def __init__(self, D: int, zdim: int = 8, channels: tuple[int, ...] = (16, 32, 64, 128, 128),
                 final_size: int = 4, hidden: int = 256, variational: bool = False, stem: str = "conv",
                 channels_last: bool = False, box: int | None = None, norm: str = "group", rot_head: str = "r6",
                 grid_dirs: int = 512, grid_psi: int = 24):
        super().__init__()
        if D % 2:
            raise ValueError(f"encoder box must be even, got {D}")
        if stem not in STEMS:
            raise ValueError(f"encoder stem must be one of {STEMS}, got {stem!r}")
        if box is not None and (box < 8 or box % 2):
            raise ValueError(f"encoder input box must be even and >= 8, got {box}")
        if rot_head not in ROT_HEADS:
            raise ValueError(f"encoder rot_head must be one of {ROT_HEADS}, got {rot_head!r}")
        self.D, self.zdim, self.variational, self.stem = D, zdim, variational, stem
        self.box = D if box is None or box >= D else int(box)
        blocks, c_in, size = [], 1, self.box
        if stem == "unshuffle":
            c_in, size = 4, self.box // 2
        for c in channels:
            if size <= final_size or size % 2:
                break
            blocks.append(ConvBlock(c_in, c, norm))
            c_in, size = c, size // 2
        self.cnn = nn.Sequential(*blocks)
        self.feat_dim = c_in * size * size
        self.mlp = nn.Sequential(nn.Linear(self.feat_dim, hidden), nn.ReLU(inplace=True),
                                 nn.Linear(hidden, hidden), nn.ReLU(inplace=True))
        self.rot_kind = rot_head
        if rot_head == "grid":
            if grid_dirs < 12 or grid_psi < 4:
                raise ValueError(f"encoder grid needs >= 12 directions and >= 4 in-plane angles, got {grid_dirs} x "
                                 f"{grid_psi}")
            # not saved in the state dict: rebuilt from (grid_dirs, grid_psi), which the config holds
            self.register_buffer("rot_grid", so3_grid(grid_dirs, grid_psi), persistent=False)
            self.grid_dirs, self.grid_psi = grid_dirs, grid_psi
            self._turn_index: dict = {}    # grid_turn_index's answers by (in-plane steps, device)
            spacing = math.radians(grid_spacing_deg(grid_dirs, grid_psi))   # the larger of view / in-plane spacing
            self.neighbourhood = 2 * math.sqrt(2) * math.sin(spacing)       # chordal distance of 2 spacings
            self.grid_sigma = math.sqrt(4 * math.pi / grid_dirs)             # target width: the view spacing, rad
            self.rot_head = nn.Linear(hidden, grid_dirs * grid_psi)
        else:
            self.rot_head = nn.Linear(hidden, 6)
        self.trans_head = nn.Linear(hidden, 2)
        self.z_head = nn.Linear(hidden, 2 * zdim if variational else zdim) if zdim > 0 else None
        self.channels_last = False
        self.set_channels_last(channels_last)

    def grid_loss(self, logits: torch.Tensor, rot: torch.Tensor, width: float = 1.0) -> torch.Tensor:
        """Per-image cross-entropy ``(B,)`` of grid scores ``logits (B, G)`` against target rotations ``rot (B, 3, 3)``
        spread over the grid as ``exp(-|rot - g|_F^2 / (4 (width sigma)^2))`` (``|.|_F^2 ~ 2 angle^2``: a Gaussian of
        angular width ``width`` view spacings); the soft target keeps the sub-grid position for :func:`grid_pose`."""
        with torch.autocast(logits.device.type, enabled=False):
            target = torch.softmax(self.grid_target_logits(rot, width), -1)
            return -(target * torch.log_softmax(logits.float(), -1)).sum(-1)

    def grid_target_logits(self, rot: torch.Tensor, width: float = 1.0) -> torch.Tensor:
        """``-|rot - g|_F^2 / (4 (width sigma)^2)`` over the grid ``(B, G)``: the log of :meth:`grid_loss`'s target
        up to a constant, i.e. the scores of a perfectly trained head."""
        d2 = torch.cdist(rot.float().reshape(-1, 9), self.rot_grid.reshape(-1, 9)) ** 2
        return -d2 / (4 * (width * self.grid_sigma) ** 2)

    def grid_score(self, logp: torch.Tensor, rot: torch.Tensor, width: float = 0.5) -> torch.Tensor:
        """Log-density ``(n,)`` of score maps ``logp (n, G)`` (log-probabilities over the grid) at rotations
        ``rot (n, 3, 3)`` off the grid: ``log sum_g p(g) exp(-|rot - g|_F^2 / (4 (width sigma)^2))``,
        the target's kernel at ``width`` view spacings (0.5 chooses best between an image's pose and its mirror's:
        docs/decisions/005-grid-rotation-head.md)."""
        return torch.logsumexp(logp.float() + self.grid_target_logits(rot, width), -1)

    def grid_turn_index(self, angle: float) -> torch.Tensor | None:
        """Where each grid rotation goes when its image is turned back by ``angle`` radians: index ``j (G,)`` with
        ``Q3(angle)^T g_i = g_j`` (physics.inplane.rotate_poses, inverse), so scores ``s`` of an image turned by
        ``angle`` are the scores of the image itself at ``j``. Exact for multiples of the in-plane spacing
        ``2 pi / grid_psi`` (a shift of the in-plane index: so3_grid's row ``e1`` turns by ``angle``), else None."""
        if self.rot_kind != "grid":
            return None
        steps = angle * self.grid_psi / (2 * math.pi)
        k = round(steps)
        if abs(steps - k) > 1e-4:
            return None
        key = (k % self.grid_psi, self.rot_grid.device)
        if key not in self._turn_index:
            self._turn_index[key] = self._make_turn_index(k, angle)
        return self._turn_index[key]

    def _make_turn_index(self, k: int, angle: float) -> torch.Tensor:
        idx = torch.arange(self.grid_dirs * self.grid_psi, device=self.rot_grid.device).view(self.grid_dirs, -1)
        j = ((idx % self.grid_psi + k) % self.grid_psi + idx // self.grid_psi * self.grid_psi).reshape(-1)
        c, s = math.cos(angle), math.sin(angle)
        qt = self.rot_grid.new_tensor([[c, s, 0.0], [-s, c, 0.0], [0.0, 0.0, 1.0]])    # Q3(angle)^T
        if not torch.allclose(qt @ self.rot_grid, self.rot_grid[j], atol=1e-4):
            raise AssertionError("rotation grid is not laid out as (direction, in-plane angle)")
        return j

    def set_channels_last(self, on: bool = True) -> "Encoder":
        """Switch the CNN's weights (and its inputs from now on) to NHWC (True) or NCHW (False)."""
        self.channels_last = bool(on)
        self.cnn.to(memory_format=torch.channels_last if on else torch.contiguous_format)
        return self

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """x: (B, D, D) real-space images. Returns dict rot, trans, z_mu, [z_logvar], [rot_logits]; trans in pixels
        of box D."""
        return self.heads(self.features(x))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, D, D) real-space images -> (B, hidden) shared features (CNN + MLP), the input of :meth:`heads`."""
        if self.box != self.D:
            x = fourier_resize(x.float(), self.box, ndim=2).to(x.dtype)
        x = x.unsqueeze(1)
        if self.stem == "unshuffle":
            x = F.pixel_unshuffle(x, 2)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.mlp(self.cnn(x).flatten(1))

    def heads(self, h: torch.Tensor, pose: bool = True) -> dict[str, torch.Tensor]:
        """Outputs from :meth:`features`; ``pose=False``: z only (the grid head's 12k scores are the costly part)."""
        # heads may run in reduced precision under autocast; the pose and z leave in fp32
        out = {}
        if pose:
            out["trans"] = self.trans_head(h).float() * (self.D / self.box)
            if self.rot_kind == "grid":
                out["rot_logits"] = self.rot_head(h).float()
                out["rot"] = grid_pose(out["rot_logits"], self.rot_grid, self.neighbourhood)
            else:
                out["rot"] = r6_to_matrix(self.rot_head(h).float())
        if self.z_head is not None:
            zz = self.z_head(h).float()
            if self.variational:
                out["z_mu"], out["z_logvar"] = zz[:, : self.zdim], zz[:, self.zdim:]
            else:
                out["z_mu"] = zz
        else:
            out["z_mu"] = h.new_zeros(h.shape[0], 0)
        return out
