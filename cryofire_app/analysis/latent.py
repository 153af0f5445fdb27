"""Latent-space analysis: PCA and k-means of z, trajectories along principal components, nearest-point helpers.

PC numbers are 1-based in every public function (PC1 is the first component), as users and the CLI say them.
A PC coordinate ``t`` is in the units of z (the PCA score); ``std`` units multiply by the PC's standard deviation.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def _as_z(z) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    if z.ndim == 1:
        z = z[:, None]
    if z.ndim != 2 or z.shape[0] == 0 or z.shape[1] == 0:
        raise ValueError(f"z must be (N, zdim) with N, zdim >= 1; got {z.shape}")
    if not np.all(np.isfinite(z)):
        raise ValueError("z contains NaN or Inf")
    return z


@dataclass
class LatentPCA:
    """A fitted PCA of z. ``scores (N, k)`` are the particles' PC coordinates; ``std (k,)`` their standard deviations."""

    pca: object  # sklearn.decomposition.PCA
    scores: np.ndarray

    @property
    def n_components(self) -> int:
        return int(self.scores.shape[1])

    @property
    def std(self) -> np.ndarray:
        return np.sqrt(np.asarray(self.pca.explained_variance_, dtype=np.float64))

    @property
    def explained_variance_ratio(self) -> np.ndarray:
        """Fraction of the variance along each PC (all 0 when z is constant, e.g. a run still in its pose-only phase)."""
        return np.nan_to_num(np.asarray(self.pca.explained_variance_ratio_, dtype=np.float64), nan=0.0)

    def _check_pc(self, pc: int) -> int:
        if not 1 <= int(pc) <= self.n_components:
            raise ValueError(f"PC{pc} does not exist: z has {self.n_components} principal component(s)")
        return int(pc) - 1

    def trajectory(self, pc: int, t) -> np.ndarray:
        """z = PCA^-1(t e_pc): points (len(t), zdim) on the line through the mean along PC ``pc`` (t in z units)."""
        i = self._check_pc(pc)
        t = np.asarray(t, dtype=np.float64).reshape(-1)
        coords = np.zeros((len(t), self.n_components))
        coords[:, i] = t
        return np.asarray(self.pca.inverse_transform(coords), dtype=np.float32)

    def points_along(self, pc: int, n: int = 10, lo: float | None = None, hi: float | None = None,
                     units: str = "std") -> tuple[np.ndarray, np.ndarray]:
        """``n`` evenly spaced points along PC ``pc`` -> (t (n,) in z units, z (n, zdim)).

        ``lo``/``hi`` in ``units``: "std" (multiples of the PC's standard deviation) or "z" (raw PC coordinate).
        Without them the line spans the particles' 5th to 95th percentile on that PC.
        """
        i = self._check_pc(pc)
        if n < 1:
            raise ValueError("need at least one point")
        if units not in ("std", "z"):
            raise ValueError(f"units must be 'std' or 'z', not {units!r}")
        s = self.scores[:, i]
        scale = float(self.std[i]) if units == "std" else 1.0
        a = float(np.percentile(s, 5)) if lo is None else lo * scale
        b = float(np.percentile(s, 95)) if hi is None else hi * scale
        t = np.linspace(a, b, n) if n > 1 else np.array([(a + b) / 2])
        return t, self.trajectory(pc, t)


def fit_pca(z, n_components: int | None = None) -> LatentPCA:
    """PCA of z (scikit-learn), all zdim components unless ``n_components`` is given."""
    from sklearn.decomposition import PCA

    z = _as_z(z)
    k = min(z.shape[1], z.shape[0]) if n_components is None else int(n_components)
    if not 1 <= k <= min(z.shape):
        raise ValueError(f"cannot fit {k} components to z of shape {z.shape}")
    pca = PCA(n_components=k, random_state=0)
    with np.errstate(invalid="ignore", divide="ignore"):  # constant z: 0/0 explained-variance ratios (reported as 0)
        scores = pca.fit_transform(z)
    return LatentPCA(pca=pca, scores=scores)


@dataclass
class KMeansResult:
    labels: np.ndarray  # (N,) cluster of each particle, 0..K-1 (clusters sorted by decreasing size)
    centers: np.ndarray  # (K, zdim) cluster means
    center_index: np.ndarray  # (K,) row of the particle nearest each centre (the "on-data" centre)
    sizes: np.ndarray  # (K,)


def kmeans(z, k: int, seed: int = 0) -> KMeansResult:
    """k-means of z (scikit-learn, 10 restarts); clusters renumbered by decreasing size, so 0 is the largest. The
    centres are the means of the returned clusters' z (scikit-learn's centres can trail its final labels by one
    update when it stops on its tolerance)."""
    from sklearn.cluster import KMeans

    z = _as_z(z)
    if not 1 <= k <= len(z):
        raise ValueError(f"k = {k} clusters for {len(z)} particles")
    n_distinct = len(np.unique(z, axis=0)) if len(z) <= 200_000 else k
    if n_distinct < k:
        raise ValueError(f"z holds only {n_distinct} distinct point(s): cannot form {k} clusters (was the run stopped "
                         "in its pose-only phase, where z is not trained?)")
    km = KMeans(n_clusters=k, random_state=seed, n_init=10).fit(z)
    sizes = np.bincount(km.labels_, minlength=k)
    order = np.argsort(-sizes, kind="stable")
    remap = np.empty(k, dtype=np.int64)
    remap[order] = np.arange(k)
    labels = remap[km.labels_]
    centers = np.stack([z[labels == j].mean(0) if sizes[order][j] else km.cluster_centers_[order][j]
                        for j in range(k)])
    idx, _ = nearest_points(z, centers)
    return KMeansResult(labels=labels, centers=centers.astype(np.float32), center_index=idx, sizes=sizes[order])


def group_centers(z, labels, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Centres of given groups of z (e.g. the seed's states), as :func:`kmeans` reports its clusters: the mean z of
    each label 0..k-1 (k, zdim) float32 and the row of the particle nearest each mean (k,). Rows labelled outside
    0..k-1 (e.g. -1: no label) are ignored; every label 0..k-1 must occur."""
    z = _as_z(z)
    lab = np.asarray(labels).reshape(-1)
    if len(lab) != len(z):
        raise ValueError(f"{len(lab)} labels for {len(z)} points")
    sizes = np.bincount(lab[(lab >= 0) & (lab < k)], minlength=k)
    if np.any(sizes == 0):
        raise ValueError(f"group(s) {np.nonzero(sizes == 0)[0].tolist()} have no points")
    centers = np.stack([z[lab == j].mean(0) for j in range(k)]).astype(np.float32)
    idx, _ = nearest_points(z, centers)
    return centers, idx


def nearest_points(z, query) -> tuple[np.ndarray, np.ndarray]:
    """For each query point (M, zdim): the row of the nearest particle in z (N, zdim) and its Euclidean distance."""
    z = _as_z(z)
    q = np.asarray(query, dtype=np.float64)
    if q.ndim == 1:
        q = q[None]
    if q.shape[1] != z.shape[1]:
        raise ValueError(f"query has dimension {q.shape[1]}, z has {z.shape[1]}")
    idx = np.empty(len(q), dtype=np.int64)
    dist = np.empty(len(q))
    zz = (z ** 2).sum(1)
    for a in range(0, len(q), 256):
        b = q[a:a + 256]
        d2 = zz[None, :] - 2 * b @ z.T + (b ** 2).sum(1)[:, None]
        j = np.argmin(d2, axis=1)
        idx[a:a + 256] = j
        dist[a:a + 256] = np.sqrt(np.maximum(d2[np.arange(len(b)), j], 0))
    return idx, dist


def parse_z_values(text: str, zdim: int) -> np.ndarray:
    """Parse ``--z`` values: ``zdim`` numbers per point, points separated by ';' (or given as one flat list whose
    length is a multiple of zdim). Returns (n, zdim) float32."""
    flat = [v for v in text.replace(";", " ").replace(",", " ").split() if v]
    try:
        vals = np.array([float(v) for v in flat], dtype=np.float32)
    except ValueError as exc:
        raise ValueError(f"--z: not a list of numbers: {text!r}") from exc
    if len(vals) == 0 or len(vals) % zdim:
        raise ValueError(f"--z: got {len(vals)} numbers, need a multiple of zdim = {zdim}")
    return vals.reshape(-1, zdim)
