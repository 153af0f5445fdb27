"""Conformation metrics against ground-truth states: confusion of a thresholded 1D score or of hard labels, and
the rank correlation of a score with ordered states."""
from __future__ import annotations

import itertools

import numpy as np


def _paired(a, b, a_name: str, b_name: str) -> tuple[np.ndarray, np.ndarray]:
    """Two flat arrays of the same, non-zero length (ValueError naming them otherwise)."""
    a, b = np.asarray(a).reshape(-1), np.asarray(b).reshape(-1)
    if len(a) != len(b):
        raise ValueError(f"{len(a)} {a_name} but {len(b)} {b_name}")
    if len(a) == 0:
        raise ValueError(f"no {a_name}")
    return a, b


def _best_ordered_segments(onehot: np.ndarray, allowed: np.ndarray) -> tuple[int, tuple[int, ...], list[int]]:
    """Exact best split of n sorted scores into K consecutive groups over every label order (dynamic programming).

    onehot: (K, n + 1) cumulative count of each label among the first m sorted scores; allowed: (n + 1,) cut
    positions (between distinct scores). Returns (correct count, label of each group, cut positions ending with n).
    """
    K, n = onehot.shape[0], onehot.shape[1] - 1
    neg = np.full(n + 1, -np.iinfo(np.int64).max // 4)
    best = (-1, None, None)
    for perm in itertools.permutations(range(K)):
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
    return best


def _segments_to_labels(s_sorted: np.ndarray, perm: tuple[int, ...], cuts: list[int]
                        ) -> tuple[np.ndarray, list[float]]:
    """Label index of every sorted score from its group, and the K - 1 thresholds (midpoints between the scores
    either side of each cut; one unit beyond the data at an end)."""
    n, K = len(s_sorted), len(perm)
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
    return pred_sorted, thresholds


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
    n_perm = int(np.prod(np.arange(1, K + 1)))
    if n_perm > max_permutations:
        raise ValueError(f"too many classes ({K}) for an exact threshold search")
    correct, perm, cuts = _best_ordered_segments(onehot, allowed)
    pred_sorted, thresholds = _segments_to_labels(s_sorted, perm, cuts)
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
