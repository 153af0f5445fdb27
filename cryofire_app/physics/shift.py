"""Translation of images in Hartley space (method_spec 4.2).

    T_t[Y](k) = cos(2 pi k.t) Y(k) + sin(2 pi k.t) Y(-k)

with ``k`` in cycles/pixel and ``t = (tx, ty)`` in **pixels** (tx along columns, ty along rows). The content of the
image moves by ``+t``: ``T_(1,0)`` of a symmetrized HT equals the HT of ``torch.roll(x, +1, dims=-1)``.
In cryoDRGN/cryoFIRE the pose translation ``t`` re-centres the observed particle, so it is applied to the observed
image with ``+t`` (equivalently a centred projection is shifted by ``-t`` to simulate an observation).
"""
from __future__ import annotations

import math

import torch


def translate_ht(Y: torch.Tensor, Y_neg: torch.Tensor, freqs: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Shift Hartley coefficients ``Y (B, M)`` by ``t (B, 2)`` pixels; content moves by ``+t``.

    ``Y_neg (B, M)`` holds the coefficients at ``-k`` for each of the ``M`` points of ``freqs (M, 2)`` (cycles/px);
    on a full symmetrized lattice it is ``Y[:, lattice.neg_index]``, taken before any masking.
    """
    phase = 2 * math.pi * (t.to(freqs.dtype) @ freqs.T)  # (B, M)
    return torch.cos(phase) * Y + torch.sin(phase) * Y_neg


def translate_ht_full(Y: torch.Tensor, lattice, t: torch.Tensor) -> torch.Tensor:
    """Shift full-lattice coefficients ``Y (B, Dl*Dl)`` by ``t (B, 2)`` px (content moves by +t)."""
    return translate_ht(Y, Y[..., lattice.neg_index], lattice.freqs2d, t)
