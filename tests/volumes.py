"""Synthetic test volumes shared by the analysis tests."""
from __future__ import annotations

import numpy as np


def blob_volume(D: int, seed: int, sigma: tuple[float, float] = (1.5, 3.0),
                amplitude: tuple[float, float] | None = None, n_blobs: int = 6) -> np.ndarray:
    """(D, D, D) sum of Gaussian blobs (centres within D/5 of the box centre, widths in px from `sigma`).

    With `amplitude` each blob gets a random weight from that range (drawn after its width)."""
    rng = np.random.default_rng(seed)
    c = np.arange(D) - D // 2
    z, y, x = np.meshgrid(c, c, c, indexing="ij")
    v = np.zeros((D, D, D))
    for _ in range(n_blobs):
        p = rng.uniform(-D / 5, D / 5, 3)
        s = rng.uniform(*sigma)
        a = rng.uniform(*amplitude) if amplitude is not None else 1.0
        v += a * np.exp(-((x - p[0]) ** 2 + (y - p[1]) ** 2 + (z - p[2]) ** 2) / (2 * s * s))
    return v
