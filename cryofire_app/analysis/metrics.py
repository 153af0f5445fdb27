"""Accuracy metrics against ground truth: rotation alignment and pose errors, state confusion, FSC.

Conventions (docs/design.md): rotations are cryoDRGN row-convention matrices, ``k_vol = k_img @ rot``; row 2 of ``rot``
is the viewing direction. Translations are in pixels of the image box ``D`` (not the odd Hartley lattice ``D + 1``).
Volumes are ``(z, y, x)`` arrays. Frequencies are in cycles/pixel; a resolution in Angstrom is ``px * apix``.

Global alignment of predicted rotations ``P_j`` onto ground truth ``G_j`` (method_spec §7): a reconstruction is only
defined up to a global rotation, and an ab initio one also up to its hand. For the hand ``H`` (identity, or
``F = diag(1, 1, -1)`` for a mirrored map) we look for an orthogonal ``A`` (det ``+1`` for ``H = I``, ``-1`` for
``H = F``) such that ``H P_j A ~= G_j``. ``F`` only negates the viewing direction, which never changes a central
slice (its ``k_z = 0``), so ``F P_j`` describes the same images as ``P_j``.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np

FLIP = np.diag([1.0, 1.0, -1.0])


# ----------------------------------------------------------------------------------------------------------------
# rotation alignment


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


# ----------------------------------------------------------------------------------------------------------------
# pose errors (inputs already in the same frame)


def view_direction_error_deg(rot_a, rot_b) -> np.ndarray:
    """Angle (degrees) between the viewing directions (row 2) of two rotation stacks."""
    a = np.asarray(rot_a, dtype=np.float64)[:, 2]
    b = np.asarray(rot_b, dtype=np.float64)[:, 2]
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return np.degrees(np.arccos(np.clip((a * b).sum(1), -1.0, 1.0)))


def rotation_angle_error_deg(rot_a, rot_b) -> np.ndarray:
    """Geodesic angle (degrees) of ``rot_a^T rot_b`` per particle (full 3D rotation error)."""
    a = np.asarray(rot_a, dtype=np.float64)
    b = np.asarray(rot_b, dtype=np.float64)
    tr = np.einsum("nij,nij->n", a, b)
    return np.degrees(np.arccos(np.clip((tr - 1.0) / 2.0, -1.0, 1.0)))


def inplane_error_deg(rot_pred, rot_gt) -> np.ndarray:
    """In-plane angle error (degrees, in [0, 180]).

    The predicted frame is first turned by the smallest rotation that puts its viewing direction on the ground-truth
    one; the error is then the angle between the two image x axes (row 0) about that direction. When the viewing
    directions agree this equals the difference of the first extrinsic ZXZ Euler angle of ``rot^T`` (the
    cryoFIRE definition) and, unlike the Euler form, it stays well defined near the poles.
    """
    p = np.asarray(rot_pred, dtype=np.float64)
    g = np.asarray(rot_gt, dtype=np.float64)
    vp = p[:, 2] / np.linalg.norm(p[:, 2], axis=1, keepdims=True)
    vg = g[:, 2] / np.linalg.norm(g[:, 2], axis=1, keepdims=True)
    xp, xg = p[:, 0], g[:, 0]
    axis = np.cross(vp, vg)
    s = np.linalg.norm(axis, axis=1)
    c = np.clip((vp * vg).sum(1), -1.0, 1.0)
    # Rodrigues rotation of xp about `axis` by the angle between vp and vg
    k = np.divide(axis, s[:, None], out=np.zeros_like(axis), where=s[:, None] > 1e-12)
    xr = xp * c[:, None] + np.cross(k, xp) * s[:, None] + k * (k * xp).sum(1, keepdims=True) * (1 - c[:, None])
    anti = (s <= 1e-12) & (c < 0)  # opposite view directions: any perpendicular axis; use the x axis of gt
    if np.any(anti):
        kk = xg[anti] / np.linalg.norm(xg[anti], axis=1, keepdims=True)
        x0 = xp[anti]
        xr[anti] = -x0 + 2 * kk * (kk * x0).sum(1, keepdims=True)
    xr = xr - vg * (xr * vg).sum(1, keepdims=True)
    xg2 = xg - vg * (xg * vg).sum(1, keepdims=True)
    sin = (np.cross(xr, xg2) * vg).sum(1)
    cos = (xr * xg2).sum(1)
    return np.abs(np.degrees(np.arctan2(sin, cos)))


def rotation_errors(pred_rot, gt_rot, alignment: RotationAlignment | None = None, **align_kw) -> dict:
    """Align (unless an alignment is given) and summarise the rotation errors in degrees."""
    if alignment is None:
        alignment = align_rotations(pred_rot, gt_rot, **align_kw)
    al = alignment.apply(pred_rot)
    gt = np.asarray(gt_rot, dtype=np.float64)
    view = view_direction_error_deg(al, gt)
    full = rotation_angle_error_deg(al, gt)
    inpl = inplane_error_deg(al, gt)
    return {
        "alignment": alignment.to_dict(),
        "rot_view_median_deg": float(np.median(view)),
        "rot_view_mean_deg": float(np.mean(view)),
        "rot_full_median_deg": float(np.median(full)),
        "rot_full_mean_deg": float(np.mean(full)),
        "rot_inplane_median_deg": float(np.median(inpl)),
        "rot_inplane_mean_deg": float(np.mean(inpl)),
        "n": int(len(gt)),
    }


def global_translation_offset(err_px: np.ndarray, gt_rot: np.ndarray) -> np.ndarray:
    """Least-squares 3D origin offset ``u`` (pixels, volume frame) explaining ``err_j ~= (G_j u)_{xy}``."""
    Gxy = np.asarray(gt_rot, dtype=np.float64)[:, :2, :]  # (N, 2, 3): image x/y axes in the volume frame
    u, *_ = np.linalg.lstsq(Gxy.reshape(-1, 3), np.asarray(err_px, dtype=np.float64).reshape(-1), rcond=None)
    return u


def translation_errors(pred_px, gt_px, gt_rot=None, correct_global: bool = False) -> dict:
    """Translation errors in pixels of the image box D (both inputs in pixels, (tx, ty) = (columns, rows)).

    ``correct_global`` removes the least-squares global 3D origin offset (needs ``gt_rot``): a map reconstructed a few
    voxels off-centre shifts every predicted translation by the projection of that offset.
    """
    pred = np.asarray(pred_px, dtype=np.float64)
    gt = np.asarray(gt_px, dtype=np.float64)
    if pred.shape != gt.shape or pred.ndim != 2 or pred.shape[1] != 2:
        raise ValueError(f"translations must both be (N, 2); got {pred.shape} and {gt.shape}")
    err = pred - gt
    out: dict = {}
    if correct_global:
        if gt_rot is None:
            raise ValueError("correct_global needs the ground-truth rotations")
        u = global_translation_offset(err, gt_rot)
        err = err - np.einsum("nij,j->ni", np.asarray(gt_rot, dtype=np.float64)[:, :2, :], u)
        out["global_offset_px"] = u.tolist()
    sq = (err ** 2).sum(1)
    out.update({
        "trans_median_px": float(np.median(np.sqrt(sq))),
        "trans_medse_px2": float(np.median(sq)),
        "trans_mse_px2": float(np.mean(sq)),
        "trans_mean_px": float(np.mean(np.sqrt(sq))),
    })
    return out


# ----------------------------------------------------------------------------------------------------------------
# conformations


def _paired(a, b, a_name: str, b_name: str) -> tuple[np.ndarray, np.ndarray]:
    """Two flat arrays of the same, non-zero length (ValueError naming them otherwise)."""
    a, b = np.asarray(a).reshape(-1), np.asarray(b).reshape(-1)
    if len(a) != len(b):
        raise ValueError(f"{len(a)} {a_name} but {len(b)} {b_name}")
    if len(a) == 0:
        raise ValueError(f"no {a_name}")
    return a, b


def confusion_by_thresholds(score, labels, max_permutations: int = 40320) -> dict:
    """Confusion error of thresholding a 1D score (e.g. PC1) into K ordered groups, K = number of distinct labels.

    The K - 1 thresholds and the assignment of labels to the ordered groups are both chosen to minimise the
    misclassified fraction (exact: dynamic programming over the sorted scores for every label order).
    Returns ``{"confusion": fraction, "thresholds": [...], "order": [label of group 0, ...], "pred_labels": array}``.
    """
    s, lab_raw = _paired(np.asarray(score, dtype=np.float64), labels, "scores", "labels")
    classes, lab = np.unique(lab_raw, return_inverse=True)
    K = len(classes)
    order = np.argsort(s, kind="stable")
    s_sorted, l_sorted = s[order], lab[order]
    n = len(s)
    # allowed cut positions: between distinct score values (a threshold cannot split ties)
    allowed = np.ones(n + 1, dtype=bool)
    allowed[1:n] = s_sorted[1:] != s_sorted[:-1]
    onehot = np.zeros((K, n + 1), dtype=np.int64)
    for k in range(K):
        onehot[k, 1:] = np.cumsum(l_sorted == k)
    if K == 1:
        return {"confusion": 0.0, "thresholds": [], "order": classes.tolist(), "pred_labels": lab_raw.copy()}
    perms = itertools.permutations(range(K))
    n_perm = int(np.prod(np.arange(1, K + 1)))
    if n_perm > max_permutations:
        raise ValueError(f"too many classes ({K}) for an exact threshold search")
    neg = np.full(n + 1, -np.iinfo(np.int64).max // 4)
    best = (-1, None, None)
    for perm in perms:
        # dp[m] = best correct count with segments 0..s ending at cut m; cuts only at allowed positions
        dp = np.where(np.arange(n + 1) == 0, 0, neg)
        back = []
        for k in perm:
            C = onehot[k]
            val = np.where(allowed, dp - C, neg)  # segment starts after cut m (cuts only between distinct scores)
            run_max = np.maximum.accumulate(val)
            back.append(np.maximum.accumulate(np.where(val == run_max, np.arange(n + 1), 0)))  # argmax so far
            dp = C + run_max
        if dp[n] > best[0]:
            # recover cuts
            cuts = [n]
            m = n
            for seg in range(K - 1, 0, -1):
                m = int(back[seg][m])
                cuts.append(m)
            best = (int(dp[n]), perm, cuts[::-1])
    correct, perm, cuts = best
    pred_sorted = np.empty(n, dtype=np.int64)
    start = 0
    thresholds = []
    for seg, end in enumerate(cuts[:-1] + [n]):
        pred_sorted[start:end] = perm[seg]
        if seg < K - 1:
            lo = s_sorted[end - 1] if end > 0 else s_sorted[0] - 1.0
            hi = s_sorted[end] if end < n else s_sorted[-1] + 1.0
            thresholds.append(float(0.5 * (lo + hi)))
        start = end
    pred = np.empty(n, dtype=np.int64)
    pred[order] = pred_sorted
    return {
        "confusion": float(1.0 - correct / n),
        "thresholds": thresholds,
        "order": [classes[p].item() if hasattr(classes[p], "item") else classes[p] for p in perm],
        "pred_labels": classes[pred],
    }


def label_confusion(pred_labels, labels) -> dict:
    """Confusion error of hard predicted labels (e.g. the seed's states) against ground-truth labels.

    Predicted classes are matched one to one to true classes by the assignment that maximises the agreement (label
    numbers are arbitrary); particles of an unmatched predicted class count as wrong. Unlike
    :func:`confusion_by_thresholds` nothing is fitted with the ground truth except that matching.
    Returns ``{"confusion": fraction, "mapping": {predicted label: true label}}``.
    """
    from scipy.optimize import linear_sum_assignment

    p_raw, t_raw = _paired(pred_labels, labels, "predicted labels", "true labels")
    pc, p = np.unique(p_raw, return_inverse=True)
    tc, t = np.unique(t_raw, return_inverse=True)
    table = np.zeros((len(pc), len(tc)), np.int64)
    np.add.at(table, (p, t), 1)
    r, c = linear_sum_assignment(table, maximize=True)
    correct = int(table[r, c].sum())
    mapping = {(pc[i].item() if hasattr(pc[i], "item") else pc[i]): (tc[j].item() if hasattr(tc[j], "item") else tc[j])
               for i, j in zip(r, c)}
    return {"confusion": float(1.0 - correct / len(p_raw)), "mapping": mapping}


def spearman(score, ordered_labels) -> float:
    """|Spearman rho| between a 1D score (PC1, whose sign is arbitrary) and ordered ground-truth states; NaN when
    either is constant (no ranking)."""
    from scipy.stats import spearmanr

    s = np.asarray(score).reshape(-1)
    lab = np.asarray(ordered_labels).reshape(-1)
    if np.ptp(s) == 0 or np.ptp(lab) == 0:
        return float("nan")
    return float(abs(spearmanr(s, lab).statistic))


# ----------------------------------------------------------------------------------------------------------------
# FSC


def _check_pair(v1, v2) -> tuple[np.ndarray, np.ndarray]:
    v1 = np.asarray(v1, dtype=np.float64)
    v2 = np.asarray(v2, dtype=np.float64)
    if v1.shape != v2.shape or v1.ndim != 3 or len(set(v1.shape)) != 1:
        raise ValueError(f"FSC needs two cubic volumes of the same shape, got {v1.shape} and {v2.shape}")
    return v1, v2


def fsc(v1, v2) -> tuple[np.ndarray, np.ndarray]:
    """Fourier shell correlation of two (D, D, D) volumes, shells as in cryoDRGN's ``fsc`` (method_spec §7).

    Shell ``i`` (1 <= i < D/2) holds the voxels whose integer distance from the centered-FFT origin lies in
    ``[i - 1, i)``; ``FSC_0 = 1``. Returns ``(freq, curve)``, ``freq[i] = i / D`` in cycles/pixel.
    """
    v1, v2 = _check_pair(v1, v2)
    D = v1.shape[0]
    f1 = np.fft.fftshift(np.fft.fftn(np.fft.ifftshift(v1)))
    f2 = np.fft.fftshift(np.fft.fftn(np.fft.ifftshift(v2)))
    c = np.arange(D) - D // 2
    r = np.sqrt(c[:, None, None] ** 2 + c[None, :, None] ** 2 + c[None, None, :] ** 2)
    nshell = D // 2
    shell = np.floor(r).astype(np.int64) + 1  # r in [i-1, i) -> i
    shell[shell >= nshell] = 0  # outside: dropped (bin 0 is unused)
    cross = np.bincount(shell.ravel(), weights=(f1 * np.conj(f2)).real.ravel(), minlength=nshell)
    p1 = np.bincount(shell.ravel(), weights=(np.abs(f1) ** 2).ravel(), minlength=nshell)
    p2 = np.bincount(shell.ravel(), weights=(np.abs(f2) ** 2).ravel(), minlength=nshell)
    denom = np.sqrt(p1 * p2)
    curve = np.divide(cross, denom, out=np.zeros(nshell), where=denom > 0)
    curve[0] = 1.0
    freq = np.arange(nshell) / D
    return freq, curve


def fsc_resolution_px(freq: np.ndarray, curve: np.ndarray, threshold: float) -> float:
    """Resolution (pixels) at an FSC threshold: ``1 / f`` for the highest frequency ``f`` reached before the curve
    first drops below ``threshold`` (first crossing; a late spurious rise from noise is ignored).

    The search starts at shell 2: shell 1 holds only the DC voxel (the map's mean), which carries no resolution
    information and is zeroed by the decoder (method_spec §9.6), so its sign is arbitrary. If the curve never drops
    below the threshold, the last shell's frequency is used; if shell 2 is already below, ``inf``.
    """
    below = np.nonzero(curve[2:] < threshold)[0]
    if len(below) == 0:
        return float(1.0 / freq[-1])
    i = int(below[0]) + 2 - 1
    if i < 2:
        return float("inf")
    return float(1.0 / freq[i])


def fsc_report(v1, v2, apix: float | None = None) -> dict:
    """FSC curve and the 0.5 / 0.143 resolutions in pixels (and Angstrom when ``apix`` is known)."""
    freq, curve = fsc(v1, v2)
    out = {"freq_cyc_per_px": freq.tolist(), "fsc": curve.tolist()}
    for name, thr in (("0.5", 0.5), ("0.143", 0.143)):
        px = fsc_resolution_px(freq, curve, thr)
        out[f"res_{name}_px"] = px
        out[f"res_{name}_A"] = px * apix if apix else None
    return out


# ----------------------------------------------------------------------------------------------------------------
# volume alignment into the ground-truth frame


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
