"""Global alignment of predicted onto ground-truth rotations (both hands), and of model volumes into that frame.

Rotations are cryoDRGN row-convention matrices, ``k_vol = k_img @ rot``; volumes are ``(z, y, x)`` arrays. We look
for an orthogonal ``A`` and a hand ``H`` (identity, or ``FLIP = F = diag(1, 1, -1)`` for a mirrored map; det ``A`` is
``+1`` for ``H = I``, ``-1`` for ``H = F``) such that ``H P_j A ~= G_j`` (method_spec §7; see metrics.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

FLIP = np.diag([1.0, 1.0, -1.0])


@dataclass
class RotationAlignment:
    """``aligned_j = H @ P_j @ A`` with ``H = FLIP`` when ``flipped`` else the identity."""

    A: np.ndarray  # (3, 3) orthogonal; det -1 when flipped
    flipped: bool
    score: float  # robust score: the (trim / 2)-quantile over j of ||G_j - H P_j A||_F^2 (lower is better)
    n_inliers: int = 0
    scores: dict = field(default_factory=dict)  # that score per hand: {"correct": .., "flipped": ..}

    @property
    def H(self) -> np.ndarray:
        return FLIP if self.flipped else np.eye(3)

    def apply(self, rot: np.ndarray) -> np.ndarray:
        """Predicted rotations (N, 3, 3) expressed in the ground-truth frame."""
        rot = np.asarray(rot, dtype=np.float64)
        return np.einsum("ij,njk,kl->nil", self.H, rot, self.A)

    def to_dict(self) -> dict:
        return {"A": self.A.tolist(), "flipped": bool(self.flipped), "hand": "flipped" if self.flipped else "correct",
                "score": float(self.score), "n_inliers": int(self.n_inliers),
                "scores": {k: float(v) for k, v in self.scores.items()}}


def _as_rot_stack(rot, name: str) -> np.ndarray:
    rot = np.asarray(rot, dtype=np.float64)
    if rot.ndim != 3 or rot.shape[1:] != (3, 3):
        raise ValueError(f"{name} must have shape (N, 3, 3), got {rot.shape}")
    if not np.all(np.isfinite(rot)):
        raise ValueError(f"{name} contains NaN or Inf")
    return rot


def _sq_residuals(Q: np.ndarray, G: np.ndarray, A: np.ndarray) -> np.ndarray:
    """||G_j - Q_j A||_F^2 for every j. Q, G (N, 3, 3); A (3, 3)."""
    return ((G - Q @ A) ** 2).sum(axis=(1, 2))


def _residual_angle(Q: np.ndarray, G: np.ndarray, A: np.ndarray) -> np.ndarray:
    """Geodesic angle (radians) between G_j and Q_j A."""
    tr = np.einsum("nij,nij->n", G, Q @ A)
    return np.arccos(np.clip((tr - 1.0) / 2.0, -1.0, 1.0))


def _procrustes(Q: np.ndarray, G: np.ndarray, det_sign: float, weights: np.ndarray | None = None) -> np.ndarray:
    """Orthogonal A with det(A) = det_sign minimising sum_j w_j ||G_j - Q_j A||_F^2 (Kabsch/Umeyama via SVD)."""
    w = np.ones(len(Q)) if weights is None else weights
    M = np.einsum("n,nji,njk->ik", w, G, Q)  # sum_j w_j G_j^T Q_j ; maximise tr(A M)
    U, _, Vt = np.linalg.svd(M)
    V = Vt.T
    d = np.ones(3)
    if np.linalg.det(V @ U.T) * det_sign < 0:
        d[2] = -1.0
    return V @ np.diag(d) @ U.T


def _align_one_hand(Q: np.ndarray, G: np.ndarray, det_sign: float, n_anchors: int, trim: float, rng,
                    max_score_points: int) -> tuple[np.ndarray, float, int]:
    n = len(Q)
    score_idx = np.arange(n) if n <= max_score_points else rng.choice(n, max_score_points, replace=False)
    Qs, Gs = Q[score_idx], G[score_idx]
    anchors = np.arange(n) if n <= n_anchors else rng.choice(n, n_anchors, replace=False)
    # anchor i: Q_i A = G_i exactly  ->  A = Q_i^T G_i (det(A) = det(Q_i) = det_sign)
    cand = np.einsum("nji,njk->nik", Q[anchors], G[anchors])
    res = ((Gs[None] - np.einsum("sij,ajk->asik", Qs, cand)) ** 2).sum(axis=(2, 3))  # (anchors, scored)
    q = 0.5 * trim  # robust score: this quantile of the residuals stays among the inliers with up to 1 - q outliers
    med = np.quantile(res, q, axis=1)
    best_A = cand[int(np.argmin(med))]
    best_med = float(np.quantile(_sq_residuals(Q, G, best_A), q))
    # refinement: robust least squares. Inliers are the particles whose residual angle is below 3x a robust scale
    # (the median residual angle of the best `trim` fraction), re-fit by SVD, iterated until the inlier set is stable.
    A = best_A
    prev = None
    n_in = 1
    for _ in range(30):
        ang = _residual_angle(Q, G, A)
        scale = float(np.quantile(ang, 0.5 * trim))
        keep = np.nonzero(ang <= max(3.0 * scale, 1e-6))[0]
        if len(keep) == 0 or (prev is not None and np.array_equal(prev, keep)):
            break
        prev = keep
        n_in = len(keep)
        A = _procrustes(Q[keep], G[keep], det_sign)
    med_ref = float(np.quantile(_sq_residuals(Q, G, A), q))
    if med_ref <= best_med:
        return A, med_ref, n_in
    return best_A, best_med, 1


def align_rotations(pred_rot, gt_rot, n_anchors: int = 100, trim: float = 0.5, seed: int = 0,
                    max_score_points: int = 5000) -> RotationAlignment:
    """Best global alignment of predicted onto ground-truth rotations, testing both hands.

    Anchor search as in cryoFIRE (each of up to ``n_anchors`` particles proposes ``A = (H P_i)^T G_i``; the one with the
    smallest score wins, where the score is the ``trim / 2`` quantile of the squared Frobenius residuals -- cryoFIRE
    uses the median, which fails beyond 50 % bad poses), then a robust refinement: orthogonal Procrustes (SVD) on the
    inliers, i.e. the particles whose residual angle is below three times the median residual of the best ``trim``
    fraction, iterated until that set is stable. Works for any N >= 1. The refined fit replaces the anchor only when
    its score is not worse. The hand with the lower score wins.
    """
    P = _as_rot_stack(pred_rot, "predicted rotations")
    G = _as_rot_stack(gt_rot, "ground-truth rotations")
    if len(P) != len(G):
        raise ValueError(f"{len(P)} predicted rotations but {len(G)} ground-truth rotations")
    if len(P) == 0:
        raise ValueError("no rotations to align")
    if not 0 < trim <= 1:
        raise ValueError("trim must be in (0, 1]")
    rng = np.random.default_rng(seed)
    A0, s0, n0 = _align_one_hand(P, G, +1.0, n_anchors, trim, rng, max_score_points)
    A1, s1, n1 = _align_one_hand(FLIP @ P, G, -1.0, n_anchors, trim, rng, max_score_points)
    scores = {"correct": s0, "flipped": s1}
    if s1 < s0:
        return RotationAlignment(A1, True, s1, n1, scores)
    return RotationAlignment(A0, False, s0, n0, scores)


def rotate_volume(vol, A: np.ndarray, order: int = 3) -> np.ndarray:
    """Resample ``out(x) = vol(x @ A^T)`` for row-vector voxel coordinates ``x = (x, y, z)`` about the centre
    ``D // 2``.

    With a pose alignment ``H P_j A = G_j`` (see :func:`align_rotations`), this brings a model volume into the
    ground-truth frame and hand: ``V_gt(x) = V_model(x A^T)`` (``A`` improper for a mirrored reconstruction).
    """
    from scipy.ndimage import map_coordinates

    vol = np.asarray(vol, dtype=np.float64)
    D = vol.shape[0]
    c = np.arange(D, dtype=np.float64) - D // 2
    zz, yy, xx = np.meshgrid(c, c, c, indexing="ij")
    X = np.stack([xx.ravel(), yy.ravel(), zz.ravel()], axis=1)  # (M, 3) rows (x, y, z)
    Y = X @ np.asarray(A, dtype=np.float64).T
    coords = np.stack([Y[:, 2], Y[:, 1], Y[:, 0]], axis=0) + D // 2  # array index order (z, y, x)
    out = map_coordinates(vol, coords, order=order, mode="grid-constant", cval=0.0)
    return out.reshape(vol.shape)


def _best_shift(ref: np.ndarray, vol: np.ndarray, max_shift: int) -> np.ndarray:
    """Integer voxel shift (dz, dy, dx) maximising the cross-correlation of ``roll(vol, shift)`` with ``ref``."""
    F = np.fft.fftn(ref) * np.conj(np.fft.fftn(vol))
    cc = np.fft.ifftn(F).real
    D = ref.shape[0]
    idx = np.array(np.unravel_index(int(np.argmax(cc)), cc.shape))
    idx = np.where(idx > D // 2, idx - D, idx)
    if np.any(np.abs(idx) > max_shift):
        return np.zeros(3, dtype=int)
    return idx


def align_volume_to_gt(vol_model, alignment: RotationAlignment, gt=None, refine_shift: bool = True,
                       max_shift: int | None = None) -> np.ndarray:
    """Model volume (D, D, D) rendered in the ground-truth frame and hand, optionally shift-matched to ``gt``
    (integer voxels found by cross-correlation, at most ``max_shift``, default D // 8)."""
    out = rotate_volume(vol_model, alignment.A)
    if gt is not None and refine_shift:
        gt = np.asarray(gt, dtype=np.float64)
        if gt.shape != out.shape:
            raise ValueError(f"ground-truth map shape {gt.shape} differs from the model volume {out.shape}")
        sh = _best_shift(gt, out, max_shift if max_shift is not None else max(1, out.shape[0] // 8))
        out = np.roll(out, tuple(int(v) for v in sh), axis=(0, 1, 2))
    return out.astype(np.float32)
