"""Implicit Hartley decoder V(k, z) -> one real Hartley coefficient (normalized data units).

k are 3D frequencies in cycles/pixel of the training box (|k| <= 0.5). Positional encoding: random Fourier features
gamma(k) = [sin(s * Omega k), cos(s * Omega k)] with Omega (pe_dim, 3) ~ N(0, feat_sigma^2), frozen, and the scale
s = D // 2 of the *training* box. Both Omega and s are buffers in the state dict, so a reloaded model evaluates the same
function; the decoder is only meaningful on the training lattice (spacing 1/D).
"""
from __future__ import annotations

import torch
from torch import nn


class ResidualMLP(nn.Module):
    """Linear(in -> h) -> ReLU -> layers x [h -> ReLU(W h + b + h)] -> Linear(h -> 1)."""

    def __init__(self, n_in: int, hidden: int, layers: int):
        super().__init__()
        self.inp = nn.Linear(n_in, hidden)
        self.blocks = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(layers))
        self.out = nn.Linear(hidden, 1)

    def forward_from_hidden(self, h: torch.Tensor) -> torch.Tensor:
        h = torch.relu(h)
        for lin in self.blocks:
            h = torch.relu(lin(h) + h)
        return self.out(h).squeeze(-1)


class HartleyDecoder(nn.Module):
    def __init__(self, D: int, zdim: int = 8, pe_dim: int = 64, feat_sigma: float = 0.5, hidden: int = 256,
                 layers: int = 3, generator: torch.Generator | None = None):
        super().__init__()
        self.D, self.zdim, self.pe_dim = D, zdim, pe_dim
        omega = torch.randn(pe_dim, 3, generator=generator) * feat_sigma
        self.register_buffer("omega", omega)
        self.register_buffer("pe_scale", torch.tensor(float(D // 2)))
        self.register_buffer("train_D", torch.tensor(D))
        self.mlp = ResidualMLP(2 * pe_dim + zdim, hidden, layers)

    def forward(self, k: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        """k: (B, M, 3) cycles/px; z: (B, d) or None (zeros). Returns (B, M).

        The first layer is split into its PE part and its z part, so z costs one (B, d) x (d, h) product per image
        instead of being concatenated to every point.
        """
        ph = (k @ self.omega.T) * self.pe_scale                      # (B, M, p)
        feats = torch.cat([torch.sin(ph), torch.cos(ph)], dim=-1)   # (B, M, 2p)
        w = self.mlp.inp.weight
        h = feats @ w[:, : 2 * self.pe_dim].T                        # (B, M, h)
        bias = self.mlp.inp.bias
        if self.zdim > 0:
            if z is None:
                z = k.new_zeros(k.shape[0], self.zdim)
            bias = bias + z @ w[:, 2 * self.pe_dim:].T               # (B, h)
            h = h + bias[:, None, :]
        else:
            h = h + bias
        return self.mlp.forward_from_hidden(h)


class GridDecoder(nn.Module):
    """Explicit Hartley voxel grid V(k) (no z): trilinear slices of a symmetrized (Dl, Dl, Dl) volume, axes (kz, ky, kx).

    Same call signature as HartleyDecoder (z is ignored). `from_volume(vol)` builds it from a real-space (D, D, D)
    map (z, y, x) divided by `scale`; used as a fixed ground-truth decoder and as a cheap consensus volume.
    """

    def __init__(self, vol_ht: torch.Tensor, trainable: bool = False):
        super().__init__()
        Dl = vol_ht.shape[-1]
        self.D, self.zdim = Dl - 1, 0
        if trainable:
            self.vol_ht = nn.Parameter(vol_ht.clone().float())
        else:
            self.register_buffer("vol_ht", vol_ht.clone().float())

    @classmethod
    def from_volume(cls, vol: torch.Tensor, scale: float = 1.0, trainable: bool = False) -> "GridDecoder":
        from cryofire_app.physics.fft import ht3_center, symmetrize_ht3

        return cls(symmetrize_ht3(ht3_center(vol.double())).float() / scale, trainable)

    def forward(self, k: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        from cryofire_app.physics.projector import slice_ht_volume

        return slice_ht_volume(self.vol_ht, k)
