"""Loss pieces: symmetric minimum over branches, KL divergence (correct sign), latent sampling."""
from __future__ import annotations

import torch


def symmetric_min(err: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """err (S, B) per-branch mean squared errors -> (mean over images of the per-image minimum, branch (B,) int64).

    Ties go to branch 0. Gradients flow only through the selected branch.
    """
    best, branch = torch.min(err, dim=0)
    return best.mean(), branch


def kl_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) per row, >= 0: -1/2 sum(1 + logvar - mu^2 - exp(logvar))."""
    return -0.5 * torch.sum(1.0 + logvar - mu.pow(2) - logvar.exp(), dim=-1)


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """z = mu + eps * std with std = exp(logvar / 2)."""
    return mu + eps * torch.exp(0.5 * logvar)
