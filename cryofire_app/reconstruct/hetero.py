"""Heterogeneity with the poses fixed: leading residual directions, their reproducibility across two halves of the
particles, a continuous coordinate per particle, and the number of discrete states chosen from the data.

Model: ``r_i = T_t[Y_i] - s_i C_i P_i V0 ~ C_i P_i (sum_j a_ij u_j) + noise`` with ``V0`` the consensus, ``s_i`` a
per-particle contrast scale, ``u_j`` the residual directions (unit-norm volumes, box ``d``) and ``a_ij`` the
particle's coordinates. Directions are found one at a time by alternating least squares (ALS; the rank-1 power
iteration of the back-projected residual covariance) and deflated, independently on two random halves. A direction
counts only when the halves agree: the coordinates that the two halves' directions give the *same* particles
correlate (``reproducibility``); for a direction fitted to noise that correlation is ~0, because noise fitted on one
half says nothing about the other. The reproducible directions give each particle a continuous coordinate (the mean of
the two halves' estimates, standardised). The discrete states are then the Gaussian mixture on those coordinates with
the lowest BIC, with the components that overlap merged (:func:`_merge`); when one component is left the
heterogeneity is continuous (one state).

Units: ``rot (n, 3, 3)`` cryoDRGN rows, ``trans (n, 2)`` box-``d`` px (the shift that re-centres the particle).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Generator

import numpy as np
import torch

from ..physics.fft import fourier_resize
from ..physics.projector import slice_ht_volume
from .data import StageData
from .volume import HartleyAccumulator, slicing_volume

KINDS = ("discrete", "continuous", "homogeneous")


@dataclass
class HeteroConfig:
    """``max_components``: residual directions tried per half; ``min_reproducibility``: correlation across halves a
    direction needs to count (None: ``max(0.1, 8 / sqrt(n))``, n particles: the across-half correlation of a direction
    fitted to noise is ~N(0, 1/n), measured within 0.06 of 0 at n = 5,000 on four maps without motion);
    ``max_states``: the largest K the mixture tries; ``n_states``: 0 = choose K from the data,
    K >= 1 forces K states; ``max_overlap``/``min_state_fraction``: mixture components that overlap more (see
    :func:`_merge`) or hold fewer particles are merged; ``iters_als``/``als_tol``: ALS rounds per direction and
    its convergence (1 - cos of the direction between rounds)."""

    max_components: int = 3
    min_reproducibility: float | None = None
    max_states: int = 6
    n_states: int = 0
    max_overlap: float = 0.1
    min_state_fraction: float = 0.02
    iters_als: int = 20
    als_tol: float = 1e-5
    scale_fit: bool = True
    mask_radius_frac: float = 0.9
    seed: int = 0
    batch: int = 512


@dataclass
class HeteroBasis:
    """What the coordinates of any other particle need (:func:`coordinates`): the consensus ``volume (d, d, d)`` the
    residuals are taken about, the two halves' reproducible ``directions (2, q, d, d, d)``, the ``center (q,)`` and
    ``scale (q,)`` that standardised the analysed particles' coordinates, the stage's ``radius`` (Fourier px of box
    d), ``scale_fit`` (a contrast scale per particle), and ``data_scale``: the analysed stack's normalisation
    (reconstruct.data.Particles.scale), so that other images are put in the same units."""

    volume: np.ndarray
    directions: np.ndarray
    center: np.ndarray
    scale: np.ndarray
    radius: float
    scale_fit: bool = True
    data_scale: float = 1.0
    mixture: dict | None = None   # the state mixture (hetero._states) on the coordinates; None for one state

    KEYS = ("volume", "directions", "center", "scale", "radius", "scale_fit", "data_scale")
    MIXTURE_KEYS = ("weights", "means", "covariances", "state")

    @property
    def d(self) -> int:
        return int(self.volume.shape[0])

    @property
    def q(self) -> int:
        return int(self.directions.shape[1])

    def to_arrays(self, prefix: str = "basis_") -> dict[str, np.ndarray]:
        """Flat numpy arrays (for an .npz), named ``prefix + field``."""
        out = {prefix + k: np.asarray(getattr(self, k), np.float32 if k in ("volume", "directions") else None)
               for k in self.KEYS}
        if self.mixture is not None:
            out.update({f"{prefix}mixture_{k}": np.asarray(self.mixture[k]) for k in self.MIXTURE_KEYS})
        return out

    @classmethod
    def from_arrays(cls, d: dict, prefix: str = "basis_") -> "HeteroBasis | None":
        """The basis saved by :meth:`to_arrays` in ``d``, or None when ``d`` holds none."""
        if any(prefix + k not in d for k in cls.KEYS):
            return None
        a = {k: np.asarray(d[prefix + k]) for k in cls.KEYS}
        mixture = None
        if all(f"{prefix}mixture_{k}" in d for k in cls.MIXTURE_KEYS):
            mixture = {k: np.asarray(d[f"{prefix}mixture_{k}"]) for k in cls.MIXTURE_KEYS}
        return cls(a["volume"].astype(np.float32), a["directions"].astype(np.float32), a["center"].astype(np.float64),
                   a["scale"].astype(np.float64), float(a["radius"]), bool(a["scale_fit"]), float(a["data_scale"]),
                   mixture)

    def states(self, x: np.ndarray) -> np.ndarray | None:
        """``(n,)`` state labels of standardised coordinates ``x (n, q)`` (as :func:`coordinates` gives them) under
        the analysed particles' state mixture: the state of the highest summed posterior (0 = the largest state);
        None for one state."""
        if self.mixture is None:
            return None
        m = self.mixture
        x = np.asarray(x, np.float64)
        logp = np.stack([np.log(max(float(w), 1e-300)) + _log_gauss(x, mu, cov)
                         for w, mu, cov in zip(m["weights"], m["means"], m["covariances"])], 1)
        post = np.exp(logp - logp.max(1, keepdims=True))
        K = int(m["state"].max()) + 1
        by_state = np.stack([post[:, m["state"] == k].sum(1) for k in range(K)], 1)
        return by_state.argmax(1).astype(np.int64)


def _log_gauss(x: np.ndarray, mu: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """Log density of N(mu, cov) at the rows of ``x``."""
    L = np.linalg.cholesky(cov)
    y = np.linalg.solve(L, (x - mu).T)
    return -0.5 * (y ** 2).sum(0) - np.log(np.diag(L)).sum() - 0.5 * len(mu) * np.log(2 * np.pi)


@dataclass
class HeteroResult:
    """``coords (n, q)`` standardised continuous coordinates (q reproducible directions, strongest first; q may be 0);
    ``labels (n,)`` int64 states, 0 = the largest; ``score (n,)`` a signed 1-D state score (K = 2: log posterior odds
    of state 1; otherwise the first coordinate; None when q = 0); ``kind`` one of :data:`KINDS`; ``components`` per
    tried direction: its across-half reproducibility and the two halves' volume correlation; ``bic`` per K tried."""

    coords: np.ndarray
    labels: np.ndarray
    score: np.ndarray | None
    kind: str
    components: list[dict] = field(default_factory=list)
    bic: dict = field(default_factory=dict)
    certainty: float | None = None
    basis: HeteroBasis | None = None   # None when no direction reproduced (q = 0)

    @property
    def n_states(self) -> int:
        return int(self.labels.max()) + 1 if len(self.labels) else 1


def residuals(data: StageData, rot: torch.Tensor, trans: torch.Tensor, vol: torch.Tensor, scale_fit: bool = True,
              batch: int = 512) -> torch.Tensor:
    """``(n, K)`` residuals ``T_t[Y_i] - s_i C_i P_i vol`` (``s_i`` the least-squares contrast scale, or 1)."""
    vh = slicing_volume(vol)
    out = torch.empty_like(data.Y)
    for s in range(0, data.n, batch):
        j = slice(s, s + batch)
        y = data.shifted(torch.arange(s, min(s + batch, data.n)), trans[j][:, None])[:, 0]
        q = data.ctf[j] * slice_ht_volume(vh, data.coords @ rot[j])
        if scale_fit:   # so that a direction does not become the consensus itself
            q = q * ((y * q).sum(1, keepdim=True) / (q * q).sum(1, keepdim=True).clamp(min=1e-30))
        out[j] = y - q
    return out


def _slices(data: StageData, rot: torch.Tensor, u: torch.Tensor, rows: torch.Tensor, batch: int):
    uh = slicing_volume(u)
    for s in range(0, len(rows), batch):
        r = rows[s:s + batch]
        yield s, r, data.ctf[r] * slice_ht_volume(uh, data.coords @ rot[r])


def _coefficients(data, rot, resid, u, rows, batch) -> torch.Tensor:
    """Least-squares ``a_i = <r_i, q_i> / |q_i|^2`` of ``rows`` on direction ``u``."""
    a = torch.empty(len(rows))
    for s, r, q in _slices(data, rot, u, rows, batch):
        a[s:s + len(r)] = (resid[r] * q).sum(1) / ((q * q).sum(1) + 1e-12)
    return a


def _direction(data, rot, resid, rows, sigma2, cfg: HeteroConfig, gen) -> tuple[torch.Tensor, int]:
    """Leading residual direction of ``rows`` by ALS from a smooth random start: (unit volume, rounds used)."""
    d = data.d
    u = torch.randn(d, d, d, generator=gen)
    u = fourier_resize(fourier_resize(u, max(8, d // 4), ndim=3), d, ndim=3)
    u = u / (u.norm() + 1e-12)
    for it in range(cfg.iters_als):
        a = _coefficients(data, rot, resid, u, rows, cfg.batch)
        a = (a - a.mean()) / (a.std() + 1e-12)
        acc = HartleyAccumulator(d)
        for s in range(0, len(rows), cfg.batch):
            r = rows[s:s + cfg.batch]
            acc.insert(resid[r], data.ctf[r] * a[s:s + len(r), None], data.coords @ rot[r])
        u_new, _ = acc.solve(sigma2, mask_radius=cfg.mask_radius_frac * d / 2)
        u_new = u_new / (u_new.norm() + 1e-12)
        turn = 1.0 - abs(float((u_new * u).sum()))
        u = u_new
        if turn <= cfg.als_tol:
            return u, it + 1
    return u, cfg.iters_als


def _deflate(data, rot, res, u, rows, batch) -> None:
    """Remove direction ``u`` from the residuals ``res`` of ``rows`` (in place)."""
    a = _coefficients(data, rot, res, u, rows, batch)
    for s, r, q in _slices(data, rot, u, rows, batch):
        res[r] -= a[s:s + len(r), None] * q


def _joint_coefficients(data, rot, resid, us: list[torch.Tensor], batch: int) -> np.ndarray:
    """``(n, q)`` joint least-squares coordinates of every particle on the directions ``us``."""
    n, q = data.n, len(us)
    hs = [slicing_volume(u) for u in us]
    out = np.zeros((n, q))
    for s in range(0, n, batch):
        r = torch.arange(s, min(s + batch, n))
        coords = data.coords @ rot[r]
        Q = torch.stack([data.ctf[r] * slice_ht_volume(h, coords) for h in hs], 1).double()   # (b, q, K)
        G = Q @ Q.transpose(1, 2) + 1e-9 * torch.eye(q, dtype=Q.dtype)
        b = (Q @ resid[r].double()[:, :, None])[:, :, 0]
        out[s:s + len(r)] = torch.linalg.solve(G, b).numpy()
    return out


def _merge(post: np.ndarray, max_overlap: float, min_fraction: float,
           groups: list[list[int]] | None = None) -> np.ndarray:
    """Merge mixture components that are not separated: while some pair's overlap (sum over particles of the smaller
    of the two posteriors, per particle of the smaller component) exceeds ``max_overlap``, or a component holds less
    than ``min_fraction`` of the particles, join the most overlapping pair. ``post (n, K)`` -> ``(n, K')``; ``groups``
    (one list of component indices per column, updated in place) follows the joins."""
    P = post.copy()
    while P.shape[1] > 1:
        size = P.sum(0)
        best, pair = -1.0, (0, 1)
        for a in range(P.shape[1]):
            for b in range(a + 1, P.shape[1]):
                ov = float(np.minimum(P[:, a], P[:, b]).sum() / max(min(size[a], size[b]), 1e-12))
                if ov > best:
                    best, pair = ov, (a, b)
        small = int(np.argmin(size))
        if best <= max_overlap and size[small] >= min_fraction * len(P):
            break
        if best <= max_overlap:   # a tiny component: join the one it overlaps most
            others = [k for k in range(P.shape[1]) if k != small]
            pair = (min(others, key=lambda k: -np.minimum(P[:, small], P[:, k]).sum()), small)
        a, b = pair
        P[:, a] += P[:, b]
        P = np.delete(P, b, axis=1)
        if groups is not None:   # as the columns: a takes b's members, then b goes
            groups[a] = groups[a] + groups[b]
            del groups[b]
    return P


def _states(x: np.ndarray, cfg: HeteroConfig
            ) -> tuple[np.ndarray, np.ndarray | None, dict, float | None, dict | None]:
    """Labels (0 = largest), K = 2 log odds, BIC per K, the mean posterior of the assigned state, and the mixture
    (``weights``, ``means``, ``covariances`` of its components and ``state`` (component -> state), for labelling
    other particles; None for one state): the Gaussian mixture of lowest BIC (K = 1..max_states, or K = n_states
    when forced), its unseparated components merged."""
    from sklearn.mixture import GaussianMixture

    n = len(x)
    ks = [cfg.n_states] if cfg.n_states >= 1 else list(range(1, cfg.max_states + 1))
    fits, bic = {}, {}
    for k in ks:
        if k > 1 and n < 10 * k:
            continue
        gm = GaussianMixture(k, covariance_type="full", n_init=2, random_state=cfg.seed, reg_covar=1e-4).fit(x)
        fits[k], bic[k] = gm, float(gm.bic(x))
    k = min(bic, key=bic.get)
    if k == 1:
        return np.zeros(n, np.int64), None, bic, None, None
    post = fits[k].predict_proba(x)
    groups = [[j] for j in range(k)]
    if cfg.n_states == 0:
        post = _merge(post, cfg.max_overlap, cfg.min_state_fraction, groups)
    if post.shape[1] == 1:
        return np.zeros(n, np.int64), None, bic, None, None
    order = np.argsort(-post.sum(0))
    post = post[:, order]     # state 0 = the largest
    state_of = np.zeros(k, np.int64)
    for s_new, col in enumerate(order):
        state_of[groups[col]] = s_new
    gm = fits[k]
    mixture = {"weights": gm.weights_, "means": gm.means_, "covariances": gm.covariances_, "state": state_of}
    labels = post.argmax(1).astype(np.int64)
    certainty = float(post.max(1).mean())
    odds = None
    if post.shape[1] == 2:
        p = post.clip(1e-300, 1.0)
        odds = np.log(p[:, 1]) - np.log(p[:, 0])
    return labels, odds, bic, certainty, mixture


def analyse(data: StageData, rot: torch.Tensor, trans: torch.Tensor, vol: torch.Tensor, cfg: HeteroConfig,
            progress: Callable[[str, dict], None] | None = None) -> HeteroResult:
    """Residual directions of the particles about ``vol`` (the consensus at box ``data.d``), the reproducible ones'
    coordinates and the states they support (module docstring). ``progress(message, metrics)`` is told each step."""
    g = iter_analyse(data, rot, trans, vol, cfg)
    while True:
        try:
            msg, metrics = next(g)
        except StopIteration as stop:
            return stop.value
        if progress is not None:
            progress(msg, metrics)


def iter_analyse(data: StageData, rot: torch.Tensor, trans: torch.Tensor, vol: torch.Tensor,
                 cfg: HeteroConfig) -> Generator[tuple[str, dict], None, HeteroResult]:
    """Generator form of :func:`analyse`: yields ``(message, metrics)`` per step, returns the :class:`HeteroResult`."""
    gen = torch.Generator().manual_seed(cfg.seed)
    n = data.n
    resid = residuals(data, rot, trans, vol, cfg.scale_fit, cfg.batch)
    sigma2 = float((resid ** 2).mean())
    perm = torch.randperm(n, generator=gen)
    halves = [perm[: n // 2].sort().values, perm[n // 2:].sort().values]
    rho_min = cfg.min_reproducibility if cfg.min_reproducibility is not None else max(0.1, 8.0 / np.sqrt(n))
    # both halves in step, one direction at a time; stop at the first that does not reproduce
    res = [resid.clone(), resid.clone()]
    dirs: list[list[torch.Tensor]] = [[], []]
    components: list[dict] = []
    ca = cb = np.zeros((n, 0))
    for j in range(cfg.max_components):
        for h, rows in enumerate(halves):
            u, used = _direction(data, rot, res[h], rows, sigma2, cfg, gen)
            dirs[h].append(u)
            yield (f"half {h + 1}: residual direction {j + 1} in {used} ALS rounds",
                   {"half": h, "direction": j, "als_rounds": used})
        if float((dirs[0][j] * dirs[1][j]).sum()) < 0:   # a direction's sign is arbitrary: align B's on A's
            dirs[1][j] = -dirs[1][j]
        a = _joint_coefficients(data, rot, resid, dirs[0], cfg.batch)
        b = _joint_coefficients(data, rot, resid, dirs[1], cfg.batch)
        rho = float(np.corrcoef(a[:, j], b[:, j])[0, 1]) if a[:, j].std() > 0 and b[:, j].std() > 0 else 0.0
        components.append({"reproducibility": rho, "volume_correlation": float((dirs[0][j] * dirs[1][j]).sum())})
        if rho < rho_min:
            break
        ca, cb = a, b
        for h, rows in enumerate(halves):
            _deflate(data, rot, res[h], dirs[h][j], rows, cfg.batch)
    q = ca.shape[1]
    yield (f"reproducible residual directions: {q} (across-half correlations "
           + ", ".join(f"{c['reproducibility']:.2f}" for c in components) + ")",
           {"n_components": q, **{f"reproducibility_{j}": c["reproducibility"] for j, c in enumerate(components)}})
    if q == 0 and cfg.n_states >= 2:   # states forced by the user: the strongest direction even if it is weak
        ca = _joint_coefficients(data, rot, resid, dirs[0][:1], cfg.batch)
        cb = _joint_coefficients(data, rot, resid, dirs[1][:1], cfg.batch)
        q = 1
    if q == 0:
        return HeteroResult(np.zeros((n, 0), np.float32), np.zeros(n, np.int64), None, "homogeneous", components)
    x = 0.5 * (ca + cb)
    basis = HeteroBasis(vol.detach().cpu().numpy().astype(np.float32),
                        np.stack([torch.stack(dirs[h][:q]).cpu().numpy() for h in (0, 1)]).astype(np.float32),
                        x.mean(0), x.std(0) + 1e-12, float(data.radius), bool(cfg.scale_fit))
    x = (x - basis.center) / basis.scale
    labels, odds, bic, certainty, mixture = _states(x, cfg)
    basis.mixture = mixture
    K = int(labels.max()) + 1
    kind = "discrete" if K >= 2 else "continuous"
    yield (f"{kind} heterogeneity: {K} state(s), sizes {np.bincount(labels, minlength=K).tolist()}"
           + (f", certainty {certainty:.3f}" if certainty is not None else ""),
           {"n_states": K, "certainty": certainty if certainty is not None else float("nan")})
    score = odds if odds is not None else x[:, 0]
    return HeteroResult(x.astype(np.float32), labels, score.astype(np.float32), kind, components, bic, certainty, basis)


def coordinates(data: StageData, rot: torch.Tensor, trans: torch.Tensor, basis: HeteroBasis,
                batch: int = 512) -> np.ndarray:
    """``(n, q)`` coordinates of ``data``'s particles at poses ``rot (n, 3, 3)``, ``trans (n, 2)`` (box-d px) on
    ``basis``, computed and standardised as the analysed particles' own (the mean of the two halves' joint
    least-squares coordinates of the residuals about the basis's consensus). ``data`` must be at the basis's box and
    radius, in the units of its ``data_scale``."""
    if data.d != basis.d:
        raise ValueError(f"the data are at box {data.d}, the basis at box {basis.d}")
    resid = residuals(data, rot, trans, torch.as_tensor(basis.volume), basis.scale_fit, batch)
    x = sum(_joint_coefficients(data, rot, resid, [torch.as_tensor(u) for u in basis.directions[h]], batch)
            for h in (0, 1))
    return ((0.5 * x - basis.center) / basis.scale).astype(np.float32)
