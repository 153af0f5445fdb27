"""Latent-space analysis: PCA and k-means of z, the number of clusters chosen from the data (:func:`choose_k`),
trajectories along principal components, nearest-point helpers.

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
    """A fitted PCA of z. ``scores (N, k)`` are the particles' PC coordinates; ``std (k,)`` their standard
    deviations."""

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
        """Fraction of the variance along each PC (all 0 when z is constant, e.g. a run still in its pose-only
        phase)."""
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


AUTO_K_MAX = 8              # choose_k: Gaussian mixtures of 1..AUTO_K_MAX components
AUTO_K_PCS = 4              # choose_k: on the leading (at most) 4 principal components of z
AUTO_K_POINTS = 5000        # choose_k: a seeded random subset of this many particles when there are more
AUTO_K_VALLEY = 0.35        # choose_k: groups are apart when the density between them falls below 35 % of a peak
AUTO_K_MIN_FRACTION = 0.03  # choose_k: a group of fewer than 3 % of the particles is not a state of its own
AUTO_K_NEIGHBOURS = 10      # choose_k: paths between particles run on their 10-nearest-neighbour graph


@dataclass
class KChoice:
    """What :func:`choose_k` decided: ``k`` (1 = no discrete clusters) and why.

    bic: (k_max,) BIC of the 1..k_max component Gaussian mixtures; n_components: the mixture the BIC chose;
    valley: (n_components, n_components) density ratio between components (1 = no valley, 0 = no path), see
    :func:`choose_k`; groups: (n_components,) the group (0..k-1) of each component; fractions: (k,) share of the
    particles in each group; n_pcs / n_points: the principal components and particles used; reason: one sentence."""

    k: int
    bic: list
    n_components: int
    valley: np.ndarray
    groups: np.ndarray
    fractions: np.ndarray
    n_pcs: int
    n_points: int
    reason: str

    def to_dict(self) -> dict:
        return {"k": int(self.k), "rule": AUTO_K_RULE, "reason": self.reason,
                "bic_components": int(self.n_components), "bic": [float(b) for b in self.bic],
                "valley_ratio": np.round(self.valley, 4).tolist(), "component_group": self.groups.tolist(),
                "group_fractions": np.round(self.fractions, 4).tolist(), "pcs_used": int(self.n_pcs),
                "particles_used": int(self.n_points)}


AUTO_K_RULE = (f"Gaussian mixtures (full covariance) of 1..{AUTO_K_MAX} components on z's leading "
               f"{AUTO_K_PCS} principal components ({AUTO_K_POINTS} random particles at most), the number of "
               "components by the lowest BIC; components then count as separate states only when every path "
               f"between their densest particles (on the {AUTO_K_NEIGHBOURS}-nearest-neighbour graph) crosses a "
               f"density valley below {AUTO_K_VALLEY:.0%} of the lower peak, and hold at least "
               f"{AUTO_K_MIN_FRACTION:.0%} of the particles; k = the number of such states (1: one population or a "
               "continuum, no discrete clusters)")


def choose_k(z, k_max: int = AUTO_K_MAX, seed: int = 0) -> KChoice:
    """The number of discrete clusters of z, chosen from the data (``cryofire analyze -k auto``).

    Rule (:data:`AUTO_K_RULE`):

    1. z's leading ``min(zdim, 4)`` principal components, scaled by PC1's standard deviation; a seeded random 5,000
       particles when there are more (the answer does not grow with the particle count);
    2. Gaussian mixtures with full covariances of m = 1..``k_max`` components (scikit-learn, k-means++ starts, 2
       restarts); the mixture with the lowest BIC is kept;
    3. the mixture's components are grouped into states. The mixture density f is evaluated at every particle and
       the particles joined to their 10 nearest neighbours; the *bottleneck* between components i and j is the
       largest value b such that a path of edges whose ends all have f >= b joins the densest particles of i and
       j; their valley ratio is b / min(f(peak i), f(peak j)) (1: no valley on the best path, 0: no path at all).
       Components whose valley ratio exceeds 0.35 are one state (transitively); a state holding less than 3 % of
       the particles joins the state it connects to best;
    4. k = the number of states.

    Why not the BIC alone: a continuum (a line, an arc: a hinge motion) is not Gaussian and the BIC describes it
    with several components, but the density along it has no valley, so it gives k = 1 (measured on synthetic z:
    uniform lines, 90-270 degree arcs, 8 steps 3.3 sigma apart -> 1). Two equal Gaussian states count as two from
    ~3.8 sigma apart (their valley ratio is 0.35 there), a 90/10 pair from ~4.7 sigma; closer pairs form a
    single-peaked density and are reported as one population (k = 1). Deterministic for a given ``seed``; runs
    single-threaded (a few tenths of a second for 5,000 particles).
    """
    z = _as_z(z)
    n_all = len(z)
    rng = np.random.default_rng(seed)
    if n_all > AUTO_K_POINTS:
        z = z[np.sort(rng.choice(n_all, AUTO_K_POINTS, replace=False))]
    n, d = z.shape
    p = min(d, AUTO_K_PCS)

    def single(reason: str, bic=(), m: int = 1, valley=None) -> KChoice:
        return KChoice(k=1, bic=list(bic), n_components=m, valley=np.ones((1, 1)) if valley is None else valley,
                       groups=np.zeros(m, np.int64), fractions=np.ones(1), n_pcs=p, n_points=n, reason=reason)

    n_distinct = len(np.unique(z, axis=0))
    if n_distinct < 2:
        return single(f"z holds {n_distinct} distinct point(s): no clusters")
    m_max = max(1, min(int(k_max), n // 20, n_distinct))
    if n < 40:
        return single(f"{n} particles are too few to choose k from the data: no clusters")
    x = fit_pca(z, n_components=p).scores
    s = float(x[:, 0].std())
    x = x / (s if s > 0 else 1.0)
    fits, bic = _mixture_fits(x, m_max, seed)
    m = int(np.argmin(bic)) + 1
    pcs = f"PC1-{p}" if p > 1 else "PC1"
    if m == 1:
        return single(f"the BIC chose 1 Gaussian component on {pcs}: one population, no clusters", bic)
    g = fits[m - 1]
    f = np.exp(g.score_samples(x))
    comp = g.predict(x)
    valley = _valley_ratios(x, f, comp, m)
    groups = _group_components(valley, np.bincount(comp, minlength=m) / n)
    k = int(groups.max()) + 1
    fractions = np.bincount(groups[comp], minlength=k) / n
    return KChoice(k=k, bic=bic, n_components=m, valley=valley, groups=groups, fractions=fractions, n_pcs=p,
                   n_points=n, reason=_k_reason(m, k, pcs, valley, fractions))


def _mixture_fits(x: np.ndarray, m_max: int, seed: int) -> tuple[list, list[float]]:
    """Gaussian mixtures (full covariance, k-means++ starts, 2 restarts) of 1..m_max components on x (n, p), fitted
    single-threaded, and their BICs."""
    from sklearn.mixture import GaussianMixture

    fits, bic = [], []
    with _one_thread():
        for m in range(1, m_max + 1):
            g = GaussianMixture(m, covariance_type="full", n_init=2, init_params="k-means++", random_state=seed,
                                reg_covar=1e-4, tol=1e-3, max_iter=300).fit(x)
            fits.append(g)
            bic.append(float(g.bic(x)))
    return fits, bic


def _k_reason(m: int, k: int, pcs: str, valley: np.ndarray, fractions: np.ndarray) -> str:
    """The sentence explaining k for a BIC choice of m >= 2 components on ``pcs``."""
    if k == 1:
        worst = float(valley[np.triu_indices(m, 1)].min())
        return (f"the BIC chose {m} Gaussian components on {pcs}, but the density has no valley between them "
                f"(deepest valley ratio {worst:.2f} > {AUTO_K_VALLEY}): one continuous population, no clusters")
    return (f"the BIC chose {m} Gaussian components on {pcs}; {k} groups of them are separated by density "
            f"valleys below {AUTO_K_VALLEY:.0%} of their peaks (shares "
            + ", ".join(f"{100 * v:.0f}%" for v in sorted(fractions, reverse=True)) + ")")


def _one_thread():
    """BLAS/OpenMP limited to one thread (small fits: threads only add contention on a shared machine)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - scikit-learn depends on threadpoolctl
        import contextlib

        return contextlib.nullcontext()
    return threadpool_limits(limits=1)


def _valley_ratios(x: np.ndarray, f: np.ndarray, comp: np.ndarray, m: int) -> np.ndarray:
    """(m, m) valley ratio between mixture components (see :func:`choose_k`): the bottleneck density on the best
    path of the k-nearest-neighbour graph between the components' densest particles, over the lower peak. Kruskal
    order on edges of decreasing min(f(a), f(b)); the level at which two peaks first share a tree is their
    bottleneck."""
    from scipy.spatial import cKDTree

    nn = min(AUTO_K_NEIGHBOURS, len(x) - 1)
    peaks = np.full(m, -1, np.int64)
    for i in range(m):
        idx = np.flatnonzero(comp == i)
        if len(idx):
            peaks[i] = idx[np.argmax(f[idx])]
    _, nb = cKDTree(x).query(x, nn + 1)
    a = np.repeat(np.arange(len(x)), nn)
    b = nb[:, 1:].reshape(-1)
    w = np.minimum(f[a], f[b])
    parent = np.arange(len(x))

    def find(u: int) -> int:
        while parent[u] != u:
            parent[u] = parent[parent[u]]
            u = parent[u]
        return u

    valley = np.zeros((m, m))
    np.fill_diagonal(valley, 1.0)
    members = {int(find(pk)): {i} for i, pk in enumerate(peaks) if pk >= 0}
    left = len(members)
    for e in np.argsort(-w, kind="stable"):
        ra, rb = find(int(a[e])), find(int(b[e]))
        if ra == rb:
            continue
        sa, sb = members.pop(ra, set()), members.pop(rb, set())
        for i in sa:
            for j in sb:
                valley[i, j] = valley[j, i] = w[e] / min(f[peaks[i]], f[peaks[j]])
        parent[rb] = ra
        if sa or sb:
            members[ra] = sa | sb
            if sa and sb:
                left -= 1
                if left == 1:
                    break
    return np.clip(valley, 0.0, 1.0)


def _group_components(valley: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """(m,) group of each component: components whose valley ratio exceeds AUTO_K_VALLEY are joined
    (transitively); then groups below AUTO_K_MIN_FRACTION of the particles join the group they connect to best.
    Groups are numbered by decreasing share (0 = the largest)."""
    from scipy.sparse.csgraph import connected_components

    m = len(weight)
    _, g = connected_components(valley > AUTO_K_VALLEY, directed=False)
    while True:
        share = np.bincount(g, weights=weight)
        small = [j for j in np.unique(g) if share[j] < AUTO_K_MIN_FRACTION]
        if not small or len(np.unique(g)) == 1:
            break
        j = min(small, key=lambda t: share[t])
        inside, outside = g == j, g != j
        best = np.unravel_index(np.argmax(np.where(inside[:, None] & outside[None, :], valley, -1.0)), (m, m))[1]
        g[inside] = g[best]
    _, g = np.unique(g, return_inverse=True)
    share = np.bincount(g, weights=weight)
    order = np.argsort(-share, kind="stable")
    remap = np.empty(len(order), np.int64)
    remap[order] = np.arange(len(order))
    return remap[g].astype(np.int64)


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
