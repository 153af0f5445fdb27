"""Pose scoring: exhaustive search over a shared SO(3) x shift grid, and local refinement around current poses.

Score of a pose ``(R, t)`` for image ``i`` (lower is better; the squared residual minus the pose-independent
``||Y_i||^2``): ``s = ||C_i P_R||^2 - 2 <C_i T_t[Y_i], P_R>`` with ``P_R(k) = V(k @ R)`` the central slice. Both
terms are matrix products over the ``K`` lattice points, so a shared grid of ``R`` rotations costs one GEMM per batch.
"""
from __future__ import annotations

import torch

from ..physics.projector import slice_ht_volume
from .data import StageData


def slices(vol_ht: torch.Tensor, coords: torch.Tensor, rots: torch.Tensor, batch: int = 2048) -> torch.Tensor:
    """Central slices ``(R, K)`` of ``vol_ht`` at ``rots (R, 3, 3)`` on the points ``coords (K, 3)``."""
    out = []
    for s in range(0, len(rots), batch):
        out.append(slice_ht_volume(vol_ht, coords @ rots[s:s + batch]))
    return torch.cat(out)


def global_search(vol_ht: torch.Tensor, data: StageData, rots: torch.Tensor, shifts: torch.Tensor, topk: int = 8,
                  rows: torch.Tensor | None = None, batch: int = 32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Exhaustive search: for each image (``rows`` of ``data``, default all) the ``topk`` best rotations, each with its
    best shift.

    ``rots (R, 3, 3)`` and ``shifts (T, 2)`` (box-d px) are shared by all images. Returns ``score (n, topk)``
    (ascending), ``rot_idx (n, topk)`` into ``rots`` and ``shift_idx (n, topk)`` into ``shifts``.
    """
    rows = torch.arange(data.n) if rows is None else rows
    P = slices(vol_ht, data.coords, rots)  # (R, K)
    P2t = (P * P).T.contiguous()
    Pt = P.T.contiguous()
    R, T = len(rots), len(shifts)
    buf = torch.empty(min(batch, len(rows)) * T, R)
    sc, ri, ti = [], [], []
    for s in range(0, len(rows), batch):
        r = rows[s:s + batch]
        C = data.ctf[r]
        A = data.shifted(r, shifts) * C[:, None]  # (b, T, K)
        # score = |C P|^2 - 2 <A, P> in one reused (b, T, R) buffer (see em_search on why)
        score = torch.matmul(A.reshape(-1, A.shape[-1]), Pt, out=buf[: len(r) * T]).mul_(-2.0).view(len(r), T, R)
        score.add_(((C * C) @ P2t)[:, None, :])
        score, tbest = score.min(1)  # best shift per rotation: (b, R)
        v, i = torch.topk(score, topk, dim=1, largest=False)
        sc.append(v)
        ri.append(i)
        ti.append(torch.gather(tbest, 1, i))
    return torch.cat(sc), torch.cat(ri), torch.cat(ti)


def em_search(vol_ht: torch.Tensor, data: StageData, rots: torch.Tensor, shifts: torch.Tensor, sigma2: float | None,
              acc=None, rows: torch.Tensor | None = None, batch: int = 32
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Expectation step over the full shared grid: posterior ``w_i(R, t) ~ exp(-s_i(R, t) / (2 sigma2))`` (normalised
    per image over all rotations and shifts), and, when ``acc`` is given, the posterior-weighted back-projection.

    Because the grid is shared, the weighted sums are GEMMs per grid rotation (``sum_i,t w C T_t[Y]`` and
    ``sum_i,t w C^2``), so the back-projection cost does not grow with the number of images. ``sigma2=None`` estimates
    the noise variance per batch from the best poses' residuals (the current model's own fit). Returns the best
    ``score (n,)``, ``rot_idx (n,)``, ``shift_idx (n,)`` and leaves the sums in ``acc``.
    """
    rows = torch.arange(data.n) if rows is None else rows
    P = slices(vol_ht, data.coords, rots)
    Pt = P.T.contiguous()
    P2t = (P * P).T.contiguous()
    R, T, K = len(rots), len(shifts), P.shape[1]
    Snum = torch.zeros(R, K)
    Sden = torch.zeros(R, K)
    buf = torch.empty(min(batch, len(rows)) * T, R)   # the score/posterior buffer, reused by every batch
    sc, ri, ti = [], [], []
    for s in range(0, len(rows), batch):
        r = rows[s:s + batch]
        b = len(r)
        C = data.ctf[r]
        A = (data.shifted(r, shifts) * C[:, None]).reshape(b * T, K)
        # the (b, T, R) score is the one large array of a batch (~15 MB at b 32): computed with the posterior in
        # one reused buffer. Out-of-place temporaries of that size (6-8 per batch) left glibc holding 2-4 GB of
        # freed memory during a seed on 2,850 images (measured peak RSS 3.3-4.9 GB).
        flat = torch.matmul(A, Pt, out=buf[: b * T]).mul_(-2.0).view(b, T, R)
        flat = flat.add_(((C * C) @ P2t)[:, None, :]).view(b, T * R)
        v, i = flat.min(1)
        sc.append(v)
        ri.append(i % R)
        ti.append(i // R)
        if acc is not None:
            s2 = sigma2 if sigma2 is not None else float(((v + data.ynorm2[r]) / K).clamp(min=1e-12).mean())
            w = flat.sub_(v[:, None]).mul_(-1.0 / (2 * s2)).exp_()   # max 1 at the best pose: no overflow
            w.div_(w.sum(1, keepdim=True))                           # = softmax over all rotations and shifts
            w = w.view(b * T, R)
            Snum.addmm_(w.T, A)                                       # sum_{i,t} w_i(R, t) A_i,t per rotation R
            Sden.addmm_(w.view(b, T, R).sum(1).T, C * C)
    if acc is not None:
        acc.insert_sums(Snum, Sden, data.coords @ rots)
    return torch.cat(sc), torch.cat(ri), torch.cat(ti)


def local_search(vol_ht: torch.Tensor, data: StageData, rot: torch.Tensor, trans: torch.Tensor,
                 perturb: torch.Tensor, shift_offsets: torch.Tensor, batch: int = 64
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Best pose around each current pose: rotations ``E @ rot_i`` for ``E`` in ``perturb (P, 3, 3)`` times shifts
    ``trans_i + o`` for ``o`` in ``shift_offsets (T, 2)`` (box-d px).

    ``rot (n, H, 3, 3)`` / ``trans (n, H, 2)`` may hold ``H`` hypotheses per image; the best over all is returned:
    ``rot (n, 3, 3)``, ``trans (n, 2)``, ``score (n,)``.
    """
    n, H = rot.shape[:2]
    best_s = torch.full((n,), float("inf"))
    best_r = rot[:, 0].clone()
    best_t = trans[:, 0].clone()
    Pn = len(perturb)
    for s in range(0, n, batch):
        r = torch.arange(s, min(s + batch, n))
        C = data.ctf[r]
        for h in range(H):
            cand = perturb[None] @ rot[r, h][:, None]  # (b, P, 3, 3)
            coords = data.coords @ cand.reshape(-1, 3, 3)  # (b*P, K, 3)
            Pk = slice_ht_volume(vol_ht, coords).reshape(len(r), Pn, -1)  # (b, P, K)
            tt = trans[r, h][:, None] + shift_offsets[None]  # (b, T, 2)
            A = data.shifted(r, tt) * C[:, None]  # (b, T, K)
            cross = A @ Pk.transpose(1, 2)  # (b, T, P)
            norm = ((C * C)[:, None] * Pk * Pk).sum(-1)  # (b, P)
            score = (norm[:, None, :] - 2 * cross).reshape(len(r), -1)
            v, i = score.min(1)
            better = v < best_s[r]
            pi, ti = i % Pn, i // Pn
            ar = torch.arange(len(r))
            best_s[r] = torch.where(better, v, best_s[r])
            best_r[r] = torch.where(better[:, None, None], cand[ar, pi], best_r[r])
            best_t[r] = torch.where(better[:, None], tt[ar, ti], best_t[r])
    return best_r, best_t, best_s


def scores_at(vol_ht: torch.Tensor, data: StageData, rot: torch.Tensor, trans: torch.Tensor,
              rows: torch.Tensor | None = None, batch: int = 256) -> torch.Tensor:
    """Score (squared residual minus ``||Y||^2``) of each image (``rows`` of ``data``, default all) at its own pose:
    ``rot (n, 3, 3)``, ``trans (n, 2)`` (box-d px), aligned with ``rows``."""
    rows = torch.arange(data.n) if rows is None else rows
    out = []
    for s in range(0, len(rows), batch):
        r = rows[s:s + batch]
        j = slice(s, s + batch)
        y = data.shifted(r, trans[j][:, None])[:, 0]
        P = slice_ht_volume(vol_ht, data.coords @ rot[j])
        C = data.ctf[r]
        out.append(((C * P) ** 2).sum(1) - 2 * (C * y * P).sum(1))
    return torch.cat(out)


def residual_sigma2(score: torch.Tensor, data: StageData, rows: torch.Tensor | None = None) -> float:
    """Noise variance per Hartley coefficient implied by the best scores: ``mean((score + ||Y||^2) / K)``."""
    y2 = data.ynorm2 if rows is None else data.ynorm2[rows]
    K = data.Y.shape[1]
    return float(torch.clamp((score + y2) / K, min=1e-12).mean())


def backproject(acc, data: StageData, rot: torch.Tensor, trans: torch.Tensor, weight: torch.Tensor | None = None,
                rows: torch.Tensor | None = None, batch: int = 256) -> None:
    """Insert images (``rows`` of ``data``) at poses ``rot (n, 3, 3)``, ``trans (n, 2)`` (box-d px) into ``acc``, at
    most ``batch`` images and about 2^20 lattice points at a time (the splat's temporaries stay ~100 MB at any box)."""
    rows = torch.arange(data.n) if rows is None else rows
    batch = max(1, min(batch, 2 ** 20 // max(1, len(data.coords))))
    for s in range(0, len(rows), batch):
        r = rows[s:s + batch]
        j = slice(s, s + batch)
        y = data.shifted(r, trans[j][:, None])[:, 0]
        coords = data.coords @ rot[j]
        acc.insert(y, data.ctf[r], coords, None if weight is None else weight[j])
