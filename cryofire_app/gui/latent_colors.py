"""The Latent-space dock's point colourings: RGBA (n, 4) float32 per scatter row, components in [0, 1].

Categorical labels (k-means clusters, the seed's states, a ground-truth label) take CATEGORICAL's colours; continuous
values (the seed's coordinate, point density) map to viridis. Particles without a value are UNLABELLED_RGBA grey.
"""
from __future__ import annotations

import numpy as np

CATEGORICAL = np.array([
    [0.122, 0.467, 0.706], [1.000, 0.498, 0.055], [0.173, 0.627, 0.173], [0.839, 0.153, 0.157],
    [0.580, 0.404, 0.741], [0.549, 0.337, 0.294], [0.890, 0.467, 0.761], [0.498, 0.498, 0.498],
    [0.737, 0.741, 0.133], [0.090, 0.745, 0.812]], np.float32)


def categorical_colors(labels: np.ndarray, alpha: float = 0.8) -> np.ndarray:
    """RGBA (n, 4) per label: the distinct label values in sorted order take CATEGORICAL's colours in turn."""
    _, inv = np.unique(labels, return_inverse=True)
    rgb = CATEGORICAL[inv % len(CATEGORICAL)]
    return np.concatenate([rgb, np.full((len(rgb), 1), alpha, np.float32)], axis=1)


UNLABELLED_RGBA = np.array([0.62, 0.62, 0.62, 0.5], np.float32)


def state_colors(labels: np.ndarray, alpha: float = 0.8) -> np.ndarray:
    """Colour label ``j >= 0`` as k-means cluster ``j`` is coloured (CATEGORICAL[j]); -1 (not classified) grey."""
    lab = np.asarray(labels, np.int64)
    rgb = CATEGORICAL[np.maximum(lab, 0) % len(CATEGORICAL)]
    rgba = np.concatenate([rgb, np.full((len(rgb), 1), alpha, np.float32)], axis=1)
    rgba[lab < 0] = UNLABELLED_RGBA
    return rgba


def coordinate_colors(values: np.ndarray, alpha: float = 0.8) -> np.ndarray:
    """Colour a continuous per-particle value (the seed's coordinate) with viridis between its 2nd and 98th
    percentiles (outliers clipped, so a few extreme particles do not wash out the rest); NaN (held-out particles the
    seed did not see) grey, as unclassified particles are for the seed's states."""
    from vispy.color import get_colormap

    v = np.asarray(values, np.float64).reshape(-1)
    ok = np.isfinite(v)
    rgba = np.tile(UNLABELLED_RGBA, (len(v), 1))
    if ok.any():
        lo, hi = np.percentile(v[ok], [2, 98])
        t = np.clip((v[ok] - lo) / (hi - lo), 0, 1) if hi > lo else np.full(int(ok.sum()), 0.5)
        rgba[ok] = np.asarray(get_colormap("viridis").map(t), np.float32)
        rgba[ok, 3] = alpha
    return rgba


def density_colors(xy: np.ndarray, bins: int = 96, alpha: float = 0.8) -> np.ndarray:
    """Colour each point by the log count of its 2-D histogram bin (a fast stand-in for a KDE), viridis."""
    from vispy.color import get_colormap

    if len(xy) == 0:
        return np.zeros((0, 4), np.float32)
    h, ex, ey = np.histogram2d(xy[:, 0], xy[:, 1], bins=bins)
    ix = np.clip(np.searchsorted(ex, xy[:, 0], side="right") - 1, 0, bins - 1)
    iy = np.clip(np.searchsorted(ey, xy[:, 1], side="right") - 1, 0, bins - 1)
    d = np.log1p(h[ix, iy])
    d = (d - d.min()) / max(float(np.ptp(d)), 1e-12)
    rgba = np.asarray(get_colormap("viridis").map(d), np.float32)
    rgba[:, 3] = alpha
    return rgba


SEED_STATE = "seed state"
SEED_COORD = "seed coordinate"
COLOR_MODES = ["k-means cluster", SEED_STATE, SEED_COORD, "density", "ground truth", "none"]
AUTO_MODES = ("k-means cluster", SEED_STATE, SEED_COORD)   # the colourings the dock may choose itself for a new run
