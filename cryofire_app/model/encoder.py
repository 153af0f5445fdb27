"""Encoder: CNN over the windowed, normalized real-space image -> rotation (6D, Gram-Schmidt), translation, z.

Input `(B, D, D)` images `[row, col]`. Outputs:
- `rot (B, 3, 3)`: cryoDRGN convention, rows = volume-frame directions of the image x axis, image y axis, view axis
  (a 2D frequency k_img lands at k_img @ rot);
- `trans (B, 2)`: pixels (tx, ty) = (columns, rows), the shift that re-centres the observed particle;
- `z_mu (B, d)` and, if variational, `z_logvar (B, d)` (std = exp(logvar / 2)).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cryofire_app.physics.fft import fourier_resize
from cryofire_app.physics.rotations import r6_to_matrix


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


class Encoder(nn.Module):
    """CNN -> MLP -> heads. `stem="conv"`: the blocks start on the (1, D, D) image (the original); `"unshuffle"`:
    the image is first rearranged losslessly into 4 half-resolution channels (pixel_unshuffle: channel 2*dy + dx
    holds pixels [2i + dy, 2j + dx]), so the first block runs at D/2 (~5x fewer FLOPs at box 64 with the default
    widths, no pixel discarded). `channels_last`: NHWC memory format for the convolutions (faster with oneDNN on CPU
    and tensor cores on GPU; same math). `box`: the CNN sees the (B, D, D) input Fourier-cropped to this box
    (None or >= D: the input as is); a low-pass that drops frequencies which carry mostly noise at low SNR, measured
    on issue 5's set (SNR 0.1, box 64): box 32 learns the seed's poses as fast per image as box 64 at ~3x less cost."""

    def __init__(self, D: int, zdim: int = 8, channels: tuple[int, ...] = (16, 32, 64, 128, 128),
                 final_size: int = 4, hidden: int = 256, variational: bool = False, stem: str = "conv",
                 channels_last: bool = False, box: int | None = None, norm: str = "group"):
        super().__init__()
        if D % 2:
            raise ValueError(f"encoder box must be even, got {D}")
        if stem not in STEMS:
            raise ValueError(f"encoder stem must be one of {STEMS}, got {stem!r}")
        if box is not None and (box < 8 or box % 2):
            raise ValueError(f"encoder input box must be even and >= 8, got {box}")
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
        self.rot_head = nn.Linear(hidden, 6)
        self.trans_head = nn.Linear(hidden, 2)
        self.z_head = nn.Linear(hidden, 2 * zdim if variational else zdim) if zdim > 0 else None
        self.channels_last = False
        self.set_channels_last(channels_last)

    def set_channels_last(self, on: bool = True) -> "Encoder":
        """Switch the CNN's weights (and its inputs from now on) to NHWC (True) or NCHW (False)."""
        self.channels_last = bool(on)
        self.cnn.to(memory_format=torch.channels_last if on else torch.contiguous_format)
        return self

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """x: (B, D, D) real-space images. Returns dict rot, trans, z_mu, [z_logvar]; trans in pixels of box D."""
        if self.box != self.D:
            x = fourier_resize(x.float(), self.box, ndim=2).to(x.dtype)
        x = x.unsqueeze(1)
        if self.stem == "unshuffle":
            x = F.pixel_unshuffle(x, 2)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        h = self.cnn(x).flatten(1)
        h = self.mlp(h)
        # heads may run in reduced precision under autocast; the pose and z leave in fp32
        out = {"rot": r6_to_matrix(self.rot_head(h).float()), "trans": self.trans_head(h).float() * (self.D / self.box)}
        if self.z_head is not None:
            zz = self.z_head(h).float()
            if self.variational:
                out["z_mu"], out["z_logvar"] = zz[:, : self.zdim], zz[:, self.zdim:]
            else:
                out["z_mu"] = zz
        else:
            out["z_mu"] = h.new_zeros(h.shape[0], 0)
        return out
