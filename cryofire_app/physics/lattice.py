"""The odd, symmetrized Hartley lattice of an even image box (method_spec 1.4, 1.7, 1.8).

For an image box ``D`` (even) the lattice has ``Dl = D + 1`` points per axis at ``-1/2 + j/D`` cycles/pixel
(spacing ``1/D``), so both +-Nyquist are present and DC sits at index ``D//2`` of each axis.
Flat index ``i * Dl + j`` is row ``i`` (ky) and column ``j`` (kx); coordinates are ``(kx, ky, 0)``.
Reversing the flat index maps ``k -> -k`` exactly.
"""
from __future__ import annotations

import torch


class Lattice:
    """Lattice of the symmetrized HT for image box ``D`` (even).

    Attributes (float32 by default, on ``device``):
        D: image box (even). Dl: ``D + 1`` lattice points per axis.
        coords: ``(Dl*Dl, 3)`` lattice points ``(kx, ky, 0)`` in cycles/pixel; kx along columns, ky along rows.
        freqs2d: ``(Dl*Dl, 2)`` = ``coords[:, :2]`` (cycles/pixel; divide by apix for 1/Angstrom).
        dc_index: flat index of DC (``Dl*Dl // 2``).
        neg_index: ``(Dl*Dl,)`` long permutation with ``coords[neg_index] == -coords`` (k -> -k).
        flipx_index: ``(Dl*Dl,)`` long permutation with ``coords[flipx_index] == (-kx, ky, 0)``.
    """

    def __init__(self, D: int, *, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None):
        if D < 2 or D % 2:
            raise ValueError(f"Lattice needs an even image box D >= 2, got {D}")
        self.D = int(D)
        self.Dl = self.D + 1
        self.dtype = dtype
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        ax = (torch.arange(self.Dl, dtype=torch.float64) - self.D // 2) / self.D  # exactly antisymmetric
        ky, kx = torch.meshgrid(ax, ax, indexing="ij")
        coords = torch.stack([kx.reshape(-1), ky.reshape(-1), torch.zeros(self.Dl * self.Dl, dtype=torch.float64)], 1)
        self.coords = coords.to(dtype=dtype, device=self.device)
        self.freqs2d = self.coords[:, :2]
        self.dc_index = self.Dl * self.Dl // 2
        n = self.Dl * self.Dl
        self.neg_index = torch.arange(n - 1, -1, -1, device=self.device)
        grid = torch.arange(n, device=self.device).view(self.Dl, self.Dl)
        self.flipx_index = grid.flip(1).reshape(-1)
        self._radius2 = (coords[:, 0] ** 2 + coords[:, 1] ** 2)  # float64, cycles/px squared

    def to(self, device: torch.device | str) -> "Lattice":
        """A copy of this lattice on ``device``."""
        return Lattice(self.D, dtype=self.dtype, device=device)

    def circle_mask(self, radius_px: float) -> torch.Tensor:
        """Bool ``(Dl*Dl,)``: lattice points with ``|k| <= radius_px / D`` cycles/px (radius in Fourier pixels).

        DC is always excluded (method_spec 1.8). ``radius_px = D // 2`` reaches Nyquist on the axes.
        """
        if radius_px < 0 or 2 * radius_px + 1 > self.Dl:
            raise ValueError(f"circle_mask radius {radius_px} outside [0, {self.D // 2}]")
        r = radius_px / (self.D // 2) * 0.5
        mask = self._radius2 <= r * r + 1e-12
        mask[self.dc_index] = False
        return mask.to(self.device)

    def volume_coords(self) -> torch.Tensor:
        """``(Dl**3, 3)`` 3D lattice points ``(kx, ky, kz)`` in cycles/px, flat order ``[kz, ky, kx]`` (z slowest)."""
        ax = (torch.arange(self.Dl, dtype=torch.float64) - self.D // 2) / self.D  # exactly antisymmetric
        kz, ky, kx = torch.meshgrid(ax, ax, ax, indexing="ij")
        return torch.stack([kx.reshape(-1), ky.reshape(-1), kz.reshape(-1)], 1).to(self.dtype).to(self.device)

    def __repr__(self) -> str:
        return f"Lattice(D={self.D}, Dl={self.Dl}, device={self.device})"
