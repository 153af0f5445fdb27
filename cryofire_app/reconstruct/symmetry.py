"""Ambiguous poses: a map's pseudo-symmetry, and whether particles can tell two orientations apart.

A molecule that looks nearly the same after a rotation ``g`` (an arc, a near-symmetric assembly) lets an ab initio
search put a particle at its true pose ``R`` or at the mate ``R g^T``: both projections fit almost equally well. More
generally a particle's images may fit two separated orientations alike. The map then comes out nearly right (it is
an average the ambiguity barely changes) while a fraction of the per-particle poses, and any state split that
follows them, are wrong. Neither the held-out pose signal nor the half-map FSC sees it. Two checks, neither needing
ground truth:

- **particles** (decisive, :func:`pose_modes`): each held-out image (fitted into no map) is scored over an SO(3)
  grid against the fitted particles' map; its best rotation and its best rotation at least three grid spacings
  away are refined locally, each at its best shift. The score difference over its noise standard deviation,
  ``z = |s_2 - s_1| / (2 sigma ||C (P_2 - P_1)||)`` (white noise of variance ``sigma^2`` per coefficient: the
  standard deviation of the difference of two poses' scores), says whether the image's data prefer one: below
  ``AMBIGUOUS_Z`` = 2 they are not told apart at two standard deviations;
- **map** (:func:`find_symmetry`, to name the cause): the correlation of the map with itself rotated by ``g`` about
  its centre of mass, over an SO(3) grid and refined locally. Only local maxima away from the identity count (near
  the identity it rises smoothly to 1 and is no symmetry). The measure is cross-half, ``corr(h1, g h2)``, over the
  half maps' own ``corr(h1, h2)``: the fraction of the reproducible map that ``g`` preserves (1 for an exact
  symmetry at the data's resolution), free of the noise a map shares with itself. When the ambiguous particles'
  two orientations are related by ``g``, the symmetry is the reason.

Conventions as in :mod:`.search`: ``k_vol = k_img @ rot``; a map ``V`` with ``V(c + (x - c) g^T) ~ V(x)`` (rows
``x``, centre ``c``) projects at ``rot @ g^T`` as at ``rot``, up to an image shift.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .grids import grid_spacing_deg, local_perturbations, so3_grid
from .volume import soft_sphere

#: an image whose data prefer neither of two orientations by this many noise standard deviations is ambiguous
AMBIGUOUS_Z = 2.0


@dataclass
class Symmetry:
    """The map's strongest pseudo-symmetry ``g`` (``rot (3, 3)``: ``V(c + (x - c) g^T) ~ V(x)`` about the centre of
    mass ``centre`` (voxels, ``(x, y, z)`` from the box centre)): ``angle_deg``, ``axis`` (map frame ``(x, y, z)``),
    ``cross_corr`` = ``corr(h1, g h2)`` (mean of both ways), ``half_corr`` = ``corr(h1, h2)``, and ``fraction`` = their
    ratio. ``None`` fields of a map with no non-identity local maximum."""

    rot: np.ndarray | None
    angle_deg: float | None
    axis: list[float] | None
    centre: list[float]
    cross_corr: float | None
    half_corr: float
    fraction: float | None


def _low_pass_crop(vol: torch.Tensor, radius: float, box: int) -> torch.Tensor:
    """``vol (d, d, d)`` Fourier-cropped to ``box`` (<= d) with a soft low-pass at ``radius`` Fourier px of box d."""
    d = vol.shape[0]
    f = torch.fft.fftshift(torch.fft.fftn(vol.double()))
    ax = torch.arange(d, dtype=torch.float64) - d // 2
    r = torch.sqrt(ax[:, None, None] ** 2 + ax[None, :, None] ** 2 + ax[None, None, :] ** 2)
    f = f * torch.clamp(1.0 - (r - radius) / 2.0, 0.0, 1.0)
    if box < d:
        s = d // 2 - box // 2
        f = f[s:s + box, s:s + box, s:s + box]
    return torch.fft.ifftn(torch.fft.ifftshift(f)).real.float() * (box / d) ** 3


def rotate_about(vol: torch.Tensor, rots: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
    """``out_b(x) = vol(c + (x - c) @ rots_b^T)`` for ``rots (B, 3, 3)``, rows ``x = (x, y, z)`` voxel coordinates,
    ``c = d // 2 + centre`` (trilinear, zero outside): ``(B, d, d, d)``."""
    d = vol.shape[0]
    a = torch.arange(d, dtype=torch.float32)
    zz, yy, xx = torch.meshgrid(a, a, a, indexing="ij")
    c = centre.float() + d // 2
    X = torch.stack([xx, yy, zz], -1).reshape(-1, 3) - c
    Y = X @ rots.float().transpose(-1, -2) + c                      # (B, M, 3)
    g = ((2 * Y + 1) / d - 1).reshape(len(rots), d, d, d, 3)          # grid_sample's (x, y, z), align_corners=False
    out = F.grid_sample(vol[None, None].float().expand(len(rots), 1, d, d, d), g, mode="bilinear",
                        padding_mode="zeros", align_corners=False)
    return out[:, 0]


def _corr(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Masked Pearson correlation of ``a (d, d, d)`` with each of ``b (B, d, d, d)``."""
    w = mask.reshape(-1)
    a = a.reshape(-1)
    b = b.reshape(len(b), -1)
    am = a - (w * a).sum() / w.sum()
    bm = b - (w * b).sum(-1, keepdim=True) / w.sum()
    return (w * am * bm).sum(-1) / torch.sqrt((w * am * am).sum() * (w * bm * bm).sum(-1)).clamp(min=1e-30)


def rotation_angle_deg(R: torch.Tensor) -> torch.Tensor:
    tr = R[..., 0, 0] + R[..., 1, 1] + R[..., 2, 2]
    return torch.rad2deg(torch.arccos(((tr - 1) / 2).clamp(-1, 1)))


def rotation_axis(R: np.ndarray) -> np.ndarray:
    """Unit axis of a rotation (for ~180 degrees the eigenvector of eigenvalue 1), sign with its largest entry > 0."""
    R = np.asarray(R, np.float64)
    w = np.array([R[2, 1] - R[1, 2], R[0, 2] - R[2, 0], R[1, 0] - R[0, 1]])
    if np.linalg.norm(w) < 0.2:
        _, vec = np.linalg.eigh((R + R.T) / 2)
        w = vec[:, -1]
    w = w / np.linalg.norm(w)
    return w * np.sign(w[np.argmax(np.abs(w))])


def _refine(v: torch.Tensor, R: torch.Tensor, centre, mask, steps_deg=(4.0, 2.0, 1.0)) -> tuple[torch.Tensor, float]:
    """Hill-climb ``corr(v, g v)`` from ``R`` over 27-point local perturbations, halving the step."""
    best = float(_corr(v, rotate_about(v, R[None], centre), mask)[0])
    for st in steps_deg:
        pert = local_perturbations(math.radians(st))
        for _ in range(8):
            cand = pert @ R
            cs = _corr(v, rotate_about(v, cand, centre), mask)
            i = int(cs.argmax())
            if float(cs[i]) <= best + 1e-6:
                break
            best, R = float(cs[i]), cand[i]
    return R, best


def find_symmetry(half1, half2, band_radius: float, mask_radius: float, max_box: int = 24, grid_dirs: int = 96,
                  grid_psi: int = 16, n_refine: int = 3, batch: int = 192) -> Symmetry:
    """The strongest non-identity local maximum of the map's self-correlation under rotation (module doc), from the
    half maps ``half1``, ``half2 (d, d, d)`` (real space, box centre ``d // 2``) within ``band_radius`` Fourier px
    and ``mask_radius`` voxels (of box d)."""
    h1, h2 = (torch.as_tensor(np.asarray(h), dtype=torch.float32) for h in (half1, half2))
    d = h1.shape[0]
    box = int(min(d, max_box, 2 * math.ceil(band_radius) + 2))
    box += box % 2
    h1, h2 = (_low_pass_crop(h, band_radius, box) for h in (h1, h2))
    mask = soft_sphere(box, mask_radius * box / d, width=max(1.0, 3.0 * box / d))
    v = 0.5 * (h1 + h2) * mask
    half = float(_corr(h1, h2[None], mask)[0])
    w = v.clamp(min=0)
    a = torch.arange(box, dtype=torch.float32) - box // 2
    zz, yy, xx = torch.meshgrid(a, a, a, indexing="ij")
    centre = torch.stack([(w * xx).sum(), (w * yy).sum(), (w * zz).sum()]) / w.sum().clamp(min=1e-30)
    grid = so3_grid(grid_dirs, grid_psi)
    cs = torch.cat([_corr(v, rotate_about(v, grid[s:s + batch], centre), mask) for s in range(0, len(grid), batch)])
    # local maxima of the self-correlation over the grid that are not the identity's own peak: a grid rotation at
    # least as high as all its neighbours (within 1.5 spacings), whose climb does not end at the identity
    spacing = grid_spacing_deg(grid_dirs, grid_psi)
    ang = rotation_angle_deg(grid)
    order = torch.argsort(cs, descending=True)
    peaks: list[int] = []
    for i in order.tolist():
        if ang[i] < 1.5 * spacing:
            continue
        nb = rotation_angle_deg(grid.transpose(-1, -2) @ grid[i]) < 1.5 * spacing
        if float(cs[nb].max()) > float(cs[i]) + 1e-6:
            continue
        peaks.append(i)
        if len(peaks) >= n_refine:
            break
    out = Symmetry(None, None, None, [float(c) * d / box for c in centre], None, half, None)
    best = None
    for i in peaks:
        R, c = _refine(v, grid[i], centre, mask)
        if float(rotation_angle_deg(R)) < spacing:      # climbed back to the identity: no symmetry
            continue
        if best is None or c > best[1]:
            best = (R, c)
    if best is None:
        return out
    R = best[0]
    cross = 0.5 * float(_corr(h1, rotate_about(h2, R[None], centre), mask)[0]
                        + _corr(h2, rotate_about(h1, R[None], centre), mask)[0])
    out.rot = R.double().numpy()
    out.angle_deg = float(rotation_angle_deg(R))
    out.axis = [float(x) for x in rotation_axis(out.rot)]
    out.cross_corr = cross
    out.fraction = cross / half if half > 0 else None
    return out


def _best_shift_scores(vh, data, rows, rots, shifts, batch: int = 32):
    """Per image ``rows[i]`` and each of its rotations ``rots (n, M, 3, 3)``: the best score over its shifts
    (box-d px; ``shifts (T, 2)`` shared or ``(n, T, 2)`` per image), and that shift: ``(n, M)``, ``(n, M, 2)``."""
    from ..physics.projector import slice_ht_volume

    n, M = rots.shape[:2]
    best_s = torch.empty(n, M)
    best_t = torch.empty(n, M, 2)
    for s in range(0, n, batch):
        r = rows[s:s + batch]
        b = len(r)
        P = slice_ht_volume(vh, data.coords @ rots[s:s + batch].reshape(-1, 3, 3)).reshape(b, M, -1)   # (b, M, K)
        C = data.ctf[r]
        base = ((C * C)[:, None] * P * P).sum(-1)                    # (b, M)
        t = shifts if shifts.dim() == 2 else shifts[s:s + b]
        A = data.shifted(r, t) * C[:, None]                           # (b, T, K)
        sc = base[:, None] - 2 * A @ P.transpose(1, 2)               # (b, T, M)
        v, i = sc.min(1)
        best_s[s:s + b] = v
        ar = torch.arange(b)[:, None]
        best_t[s:s + b] = t[i] if t.dim() == 2 else t[ar, i]
    return best_s, best_t


def _refine_poses(vh, data, rows, rot, shifts, steps_deg, moves: int = 2):
    """Local refinement of ``rot (n, 3, 3)``: up to ``moves`` 27-point perturbation moves ``E @ rot`` per step of
    ``steps_deg``, each rotation at its best shift (first of the grid ``shifts (T, 2)``, then of a 3 x 3 grid around
    the current one, halving its step at every move). Returns rotations, shifts and scores."""
    ar = torch.arange(len(rows))
    sh = shifts
    xs = shifts[:, 0].unique()
    step = float(xs.diff().min()) if len(xs) > 1 else 1.0
    offsets = torch.tensor([[a, b] for a in (-1, 0, 1) for b in (-1, 0, 1)], dtype=torch.float32)
    t = s = None
    for st in steps_deg:
        pert = local_perturbations(math.radians(st))
        for _ in range(moves):
            cand = pert[None] @ rot[:, None]                                   # (n, 27, 3, 3)
            sc, tt = _best_shift_scores(vh, data, rows, cand, sh)
            i = sc.argmin(1)
            rot, t, s = cand[ar, i], tt[ar, i], sc[ar, i]
            step /= 2
            sh = t[:, None] + step * offsets
    return rot, t, s


def pose_modes(vh, data, rows, s_grid, grid, spacing_deg: float, sigma2: float, shifts, g: np.ndarray | None = None
               ) -> dict:
    """Each image ``rows[i]`` (scores ``s_grid (n, G)`` over ``grid (G, 3, 3)``, each at its best of ``shifts``): its
    best rotation and its best rotation at least three grid spacings away, both refined locally; ``z`` of their
    score difference (module doc). Returns the median z, the fraction of images with ``z < AMBIGUOUS_Z``, the
    median angle between the two modes of those images, and (given a map symmetry ``g``) the fraction of them whose
    second mode is the first's mate ``@ g^T`` or ``@ g`` (within two grid spacings)."""
    from ..physics.projector import slice_ht_volume

    i1 = s_grid.argmin(1)
    far = rotation_angle_deg(grid[i1].transpose(-1, -2)[:, None] @ grid[None]) > 3 * spacing_deg
    i2 = torch.where(far, s_grid, torch.full_like(s_grid, float("inf"))).argmin(1)
    steps = (spacing_deg / 3, spacing_deg / 6, spacing_deg / 12)
    r1, _, s1 = _refine_poses(vh, data, rows, grid[i1], shifts, steps)
    r2, _, s2 = _refine_poses(vh, data, rows, grid[i2], shifts, steps)
    C = data.ctf[rows]
    P1 = slice_ht_volume(vh, data.coords @ r1)
    P2 = slice_ht_volume(vh, data.coords @ r2)
    sd = 2 * math.sqrt(sigma2) * torch.sqrt(((C * (P2 - P1)) ** 2).sum(1)).clamp(min=1e-30)
    z = (s2 - s1).abs() / sd
    amb = z < AMBIGUOUS_Z
    rel = r1.transpose(-1, -2) @ r2                                     # volume frame: r2 = r1 @ rel
    sep = rotation_angle_deg(rel)
    out = {"z_median": float(z.median()), "ambiguous_fraction": float(amb.float().mean()),
           "separation_deg": float(sep[amb].median()) if amb.any() else None, "at_symmetry_fraction": None}
    if g is not None and amb.any():
        G = torch.as_tensor(g, dtype=torch.float32)
        near = torch.stack([rotation_angle_deg(rel[amb].transpose(-1, -2) @ M) for M in (G.T, G)]).min(0).values
        out["at_symmetry_fraction"] = float((near < 2 * spacing_deg).float().mean())
    return out
