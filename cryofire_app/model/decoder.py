"""Implicit Hartley decoder V(k, z) -> one real Hartley coefficient (normalized data units).

k are 3D frequencies in cycles/pixel of the training box (|k| <= 0.5). Positional encoding: random Fourier features
gamma(k) = [sin(s * Omega k), cos(s * Omega k)] with Omega (pe_dim, 3) ~ N(0, feat_sigma^2), frozen, and the scale
s = D // 2 of the *training* box. Both Omega and s are buffers in the state dict, so a reloaded model evaluates the same
function; the decoder is only meaningful on the training lattice (spacing 1/D).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ResidualMLP(nn.Module):
    """Linear(in -> h) -> ReLU -> layers x [h -> ReLU(W h + b + h)] -> Linear(h -> 1)."""

    def __init__(self, n_in: int, hidden: int, layers: int, n_out: int = 1):
        super().__init__()
        self.inp = nn.Linear(n_in, hidden)
        self.blocks = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(layers))
        self.out = nn.Linear(hidden, n_out)

    def forward_from_hidden(self, h: torch.Tensor) -> torch.Tensor:
        """h: first-layer pre-activations (..., hidden) -> (...) for one output, else (..., n_out)."""
        h = torch.relu(h)
        for lin in self.blocks:
            h = lin(h).add_(h).relu_()     # relu(W h + b + h), in place on the fresh product (autograd-safe)
        out = self.out(h)
        return out.squeeze(-1) if out.shape[-1] == 1 else out

    def forward_channels_first(self, h: torch.Tensor) -> torch.Tensor:
        """Same network on a transposed layout: h (hidden, N) first-layer pre-activations -> (n_out, N). Products
        have the long point axis as their last dimension, so no transposes or copies of (N, hidden) tensors."""
        h = torch.relu(h)
        for lin in self.blocks:
            h = torch.addmm(lin.bias[:, None], lin.weight, h).add_(h).relu_()
        return torch.addmm(self.out.bias[:, None], self.out.weight, h)


class ZMix(nn.Module):
    """z (B, d) -> readout coefficients (B, C, n_out) = out(relu(inp(z))) (out(0) when hidden = 0). `out.bias` holds
    the z-independent (consensus) coefficients, so negating `out` negates the decoded volume."""

    def __init__(self, zdim: int, hidden: int, channels: int, n_out: int):
        super().__init__()
        self.C, self.n_out = channels, n_out
        self.inp = nn.Linear(zdim, hidden) if hidden > 0 else None
        self.out = nn.Linear(hidden if hidden > 0 else zdim, channels * n_out)
        with torch.no_grad():   # start from a small random consensus readout
            self.out.bias.normal_(0.0, 1.0 / channels ** 0.5)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.inp(z)) if self.inp is not None else torch.zeros_like(z)
        return self.out(h).view(-1, self.C, self.n_out)


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
        with torch.autocast(k.device.type, enabled=False):          # phases need fp32 under mixed precision
            ph = (k.float() @ self.omega.T) * self.pe_scale          # (B, M, p)
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
        return self.mlp.forward_from_hidden(h).float()


class GridDecoder(nn.Module):
    """Explicit Hartley voxel grid V(k) (no z): trilinear slices of a symmetrized (Dl, Dl, Dl) volume, axes
    (kz, ky, kx).

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


class FeatureGridDecoder(nn.Module):
    """Feature-grid Hartley decoder V(k, z) = MLP([trilinear(features, k), z]) -> one real Hartley coefficient.

    A learnable feature volume `grid (1, C, G, G, G)` (axes kz, ky, kx) covers k in [-1/2, 1/2]^3 cycles/px with node
    j at -1/2 + j/(G-1); the default G = D + 1 puts the nodes exactly on the training box's Hartley lattice (spacing
    1/D). It is sampled trilinearly at the slice points (differentiable in the features and in k, so poses get
    gradients), z is concatenated (as a per-image bias of the first layer) and a small residual MLP maps the C + d
    inputs to the coefficient. Per point this costs ~8C reads plus a (C + h + layers h^2)-wide MLP instead of the
    PE decoder's 2p + layers * 256^2, and it stores no (points x 256) activations.

    `grid_scale`: the features are `raw * grid_scale` with `raw` the parameter, so an optimizer step moves a feature by
    ~lr * grid_scale (Adam steps ~lr in raw units); the grid nodes see few samples each and need the larger step.
    Points outside the cube read zero features. The last layer is `mlp.out` like HartleyDecoder's (the trainer's
    contrast fix negates it).

    `hidden=0`: linear readout V(k, z) = sum_c f_c(k) A_c(z) with A(z) = out(relu(inp(z))) per image (ZMix): no
    per-point MLP at all (grid sampling + C multiply-adds per point, ~3x cheaper again); heterogeneity is then a
    C-dimensional linear family of volumes with z-dependent weights (exact for up to C - 1 discrete states around a
    consensus, an approximation for large continuous motions).

    Half-lattice evaluation (`half_lattice=True`, default). The Hartley coefficient of a real volume is H = Re F - Im F
    with F(-q) = conj F(q). The network gives F on the half-space U = {qz > 0} (ties on qz = 0 broken by qy, then qx):
    at u in U it outputs (a, b) = (Re F(u), Im F(u)). For any q let s = +1 if q in U else -1 and u = s q; then
    F(q) = a(u) + i s b(u) and H(q) = a(u) - s b(u). Any real H is representable (a = even part, -s b = odd part).
    A slice point k and its negative -k map to the same u with opposite s, so `forward_pairs` evaluates the network
    once for the pair: H(kR) = a - s b and H(-kR) = a + s b. CryoFIRE.branch_errors uses it with MaskPoints' order
    [half, -half]: half the decoder work per image. (The representation may be discontinuous across qz = 0, where
    both sides have their own nodes, as in cryoDRGN's half-space decoders.)
    """

    def __init__(self, D: int, zdim: int = 8, channels: int = 8, grid_size: int | None = None, hidden: int = 32,
                 layers: int = 1, grid_scale: float = 30.0, init_std: float = 0.1, half_lattice: bool = True,
                 generator: torch.Generator | None = None):
        super().__init__()
        self.half_lattice = bool(half_lattice)
        G = int(grid_size or D + 1)
        if G < 2:
            raise ValueError(f"grid_size must be >= 2, got {G}")
        self.D, self.zdim, self.channels, self.grid_size = D, zdim, channels, G
        self.register_buffer("train_D", torch.tensor(D))
        self.register_buffer("grid_scale", torch.tensor(float(grid_scale)))
        raw = torch.randn(1, channels, G, G, G, generator=generator) * (init_std / grid_scale)
        self.grid = nn.Parameter(raw)
        n_out = 2 if self.half_lattice else 1
        self.linear = hidden == 0
        if self.linear:   # readout linear in the features, coefficients a nonlinear function of z
            self.mlp = ZMix(max(zdim, 1), 32 if zdim > 0 else 0, channels, n_out)
        else:
            self.mlp = ResidualMLP(channels + zdim, hidden, layers, n_out)

    def features(self, k: torch.Tensor) -> torch.Tensor:
        """k (B, M, 3) cycles/px -> trilinear samples of the raw grid (C, B*M), channels first (times grid_scale
        they are the features)."""
        B, M, _ = k.shape
        with torch.autocast(k.device.type, enabled=False):           # coordinates and sampling stay fp32
            grid = (2 * k).float().reshape(1, 1, B, M, 3)              # [-1/2, 1/2] -> [-1, 1], corners on nodes
            f = F.grid_sample(self.grid, grid, mode="bilinear", padding_mode="zeros",
                              align_corners=True)                      # (1, C, 1, B, M)
        return f.reshape(self.channels, B * M)

    @staticmethod
    def half_space_sign(k: torch.Tensor) -> torch.Tensor:
        """(..., 3) -> (...) +1 where k is in U (kz > 0; on kz = 0: ky > 0; on ky = kz = 0: kx >= 0), else -1.
        Odd: sign(-k) = -sign(k) for every k != 0."""
        s = torch.sign(k[..., 2])
        tie = s == 0
        # on the plane kz = 0 (e.g. unrotated lattices) ky decides, then kx; the eager path skips this when no point
        # is on the plane (rotated slices), the compiled path is branch-free (no graph break)
        if torch.compiler.is_compiling() or bool(tie.any()):
            kx, ky = k[..., 0], k[..., 1]
            s2 = torch.sign(ky)
            s2 = torch.where(s2 == 0, torch.where(kx >= 0, 1.0, -1.0).to(k.dtype), s2)
            s = torch.where(tie, s2, s)
        return s

    def forward(self, k: torch.Tensor, z: torch.Tensor | None = None, pairs: bool = False) -> torch.Tensor:
        """k: (B, M, 3) cycles/px; z: (B, d) or None (zeros). Returns (B, M), or with pairs=True (B, 2M) =
        `forward_pairs(k, z)` (through __call__, so an in-place torch.compile of the module covers it)."""
        if pairs:
            return self.forward_pairs(k, z)
        if not self.half_lattice:
            return self._net(k, z)[0]
        s = self.half_space_sign(k)
        a, b = self._net(k * s[..., None], z)
        return a - s * b

    def forward_pairs(self, k: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        """k: (B, Mh, 3) -> (B, 2 Mh) = [H(k), H(-k)] with one network evaluation per pair (half_lattice only)."""
        if not self.half_lattice:
            return self._net(torch.cat([k, -k], 1), z)[0]
        s = self.half_space_sign(k)
        a, b = self._net(k * s[..., None], z)
        sb = s * b
        return torch.cat([a - sb, a + sb], 1)

    def _net(self, k: torch.Tensor, z: torch.Tensor | None) -> torch.Tensor:
        """(B, M, 3) -> network outputs (n_out, B, M) in fp32 (n_out = 2 with half_lattice: a, b)."""
        B, M, _ = k.shape
        C = self.channels
        f = self.features(k)                                           # (C, B*M), raw samples
        if self.linear:
            if z is None or self.zdim == 0:
                z = k.new_zeros(B, max(self.zdim, 1))
            A = self.mlp(z) * self.grid_scale                          # (B, C, n_out), the grid scale folded in
            out = torch.bmm(A.transpose(1, 2).to(f.dtype), f.view(C, B, M).transpose(0, 1))   # (B, n_out, M)
            return out.transpose(0, 1).float()
        # features = raw samples * grid_scale: the scale is folded into the (h, C) weight (same function and
        # gradients, no pass over the whole grid). Channels-first layout throughout: (h, B*M).
        w = self.mlp.inp.weight
        h = torch.mm((w[:, :C] * self.grid_scale).to(f.dtype), f).view(-1, B, M)   # (h, B, M)
        bias = self.mlp.inp.bias
        if self.zdim > 0 and z is not None:
            bias = bias + z @ w[:, C:].T                               # (B, h): z concatenated to every point
            h = h + bias.T[:, :, None].to(h.dtype)
        else:
            h = h + bias[:, None, None].to(h.dtype)
        out = self.mlp.forward_channels_first(h.view(-1, B * M))       # (n_out, B*M)
        return out.view(-1, B, M).float()
