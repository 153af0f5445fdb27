"""The hand (chirality) of a reconstruction: mirror a run's maps and poses consistently, and decide the hand.

An ab initio reconstruction cannot know its hand: a map mirrored through a plane, with mirrored poses, explains
every image exactly as well (reconstruct/seed.py reports ``history["hand"] = "undetermined"``). Conventions
(docs/design.md): volumes are ``(z, y, x)`` arrays with the centre voxel at index ``D // 2``; rotations are cryoDRGN
row-convention matrices (``k_vol = k_img @ rot``, row 2 = viewing direction); translations are in-plane pixels.

Mirror used everywhere here, matching :data:`cryofire_app.analysis.metrics.FLIP` ``= F = diag(1, 1, -1)``:

- volume: ``V'(x, y, z) = V(x, y, -z)`` about the centre voxel (array axis 0 reversed about index ``D // 2``, so the
  Fourier/Hartley transform is mirrored exactly: ``V'(k) = V(k F)``);
- poses: ``R' = F R F`` (still a proper rotation); translations and CTF are unchanged, because the images of
  ``(V', R')`` are pixel for pixel the images of ``(V, R)``.

If :func:`~cryofire_app.analysis.metrics.align_rotations` says a run is "flipped" against the ground truth, the run's
maps through :func:`mirror_volume` and poses through :func:`mirror_rotations` are in the correct hand (the alignment
of the mirrored poses is "correct", with ``A' = F A``).

:func:`hand_against_reference` decides the hand without poses, from a reference map (e.g. a published map of the
same molecule): the best correlation over an SO(3) grid (plus local refinement) and shifts, in both hands, at a small
box.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

HAND_NOTE_FLIPPED = "mirrored by ab initio (undetermined by data); flipped to match the simulated reference"
HAND_NOTE_CORRECT = "came out in the reference's hand (undetermined by data; the ab initio choice happened to match)"


# ----------------------------------------------------------------------------------------------------------------
# mirroring


def mirror_volume(vol: np.ndarray) -> np.ndarray:
    """Mirror ``(..., D, D, D)`` volumes (z, y, x) through the plane ``z = 0`` of the centre voxel ``D // 2``.

    ``out[..., i, :, :] = vol[..., (2 * (D // 2) - i) mod D, :, :]``. For even ``D`` the first plane (``z = -D/2``)
    has no partner inside the box and maps to itself, as in the discrete Fourier mirror ``k -> -k``. Applying it
    twice gives the input back.
    """
    v = np.asarray(vol)
    if v.ndim < 3 or len(set(v.shape[-3:])) != 1:
        raise ValueError(f"mirror_volume needs cubic volumes (..., D, D, D), got shape {v.shape}")
    D = v.shape[-1]
    idx = (2 * (D // 2) - np.arange(D)) % D
    return np.ascontiguousarray(np.take(v, idx, axis=-3))


def mirror_rotations(rot: np.ndarray) -> np.ndarray:
    """Poses that go with :func:`mirror_volume`: ``F R F`` for rotations ``(N, 3, 3)`` (or one ``(3, 3)``).

    Negates the entries ``R[0, 2], R[1, 2], R[2, 0], R[2, 1]``; the result is still a rotation (det +1)."""
    r = np.asarray(rot)
    if r.shape[-2:] != (3, 3):
        raise ValueError(f"rotations must be (..., 3, 3), got shape {r.shape}")
    out = np.array(r, copy=True)
    out[..., 0:2, 2] *= -1
    out[..., 2, 0:2] *= -1
    return out


def mirror_poses(rot: np.ndarray, trans: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Poses ``(rot (N, 3, 3), trans (N, 2) | None)`` in the other hand: rotations ``F R F``
    (:func:`mirror_rotations`), translations unchanged (a copy; any unit: pixels or box fractions)."""
    return mirror_rotations(rot), None if trans is None else np.array(trans, copy=True)


def write_pose_pkl_in_hand(path, rot: np.ndarray, trans_frac: np.ndarray | None, mirror: bool) -> None:
    """Write a cryoDRGN pose.pkl of ``rot`` (N, 3, 3; stored float32) and ``trans_frac`` (N, 2, fractions of the box;
    stored as given), mirrored into the other hand (:func:`mirror_poses`) when ``mirror``, as given otherwise."""
    from cryofire_app.io import write_pose_pkl

    if mirror:
        rot, trans_frac = mirror_poses(rot, trans_frac)
    write_pose_pkl(path, np.asarray(rot, np.float32), None if trans_frac is None else np.asarray(trans_frac))


def mirror_pose_pkl(src, dst) -> None:
    """Write the cryoDRGN pose.pkl ``src`` to ``dst`` in the other hand (rotations mirrored, translations kept)."""
    from cryofire_app.io import read_pose_pkl

    rot, trans = read_pose_pkl(src)
    write_pose_pkl_in_hand(dst, rot, trans, mirror=True)


def hand_from_alignment(alignment: Any) -> str:
    """"flipped" or "correct" from a metrics.RotationAlignment, its ``to_dict()``, or an evaluate() result."""
    if isinstance(alignment, dict):
        d = alignment.get("alignment", alignment)
        if "hand" in d:
            return str(d["hand"])
        return "flipped" if d["flipped"] else "correct"
    return "flipped" if alignment.flipped else "correct"


# ----------------------------------------------------------------------------------------------------------------
# hand against a reference map (no poses needed)


@dataclass
class HandCheck:
    """Result of :func:`hand_against_reference`.

    hand: "correct" (the map already has the reference's hand), "flipped" (mirror it with :func:`mirror_volume`),
    or "undetermined" (the two hands' correlations differ by less than ``margin``). cc_correct / cc_flipped: best
    normalised correlation (masked, at ``box``) in each hand; rot: (3, 3) rotation of the best fit in the winning hand
    (``out(r) = vol(r @ rot^T)`` for row vectors ``r = (x, y, z)`` about the centre, as physics.rotate_volume);
    shift_px: its integer voxel shift (z, y, x) at ``box``.
    """

    hand: str
    cc_correct: float
    cc_flipped: float
    margin: float
    box: int
    rot: list
    shift_px: list
    n_rotations: int
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


def _prepare(vol: np.ndarray, box: int, lowpass_px: float | None):
    """Fourier-crop to ``box``, optional low-pass (Fourier px at ``box``), soft spherical mask, zero mean, unit norm."""
    import torch

    from cryofire_app.physics.fft import fourier_resize

    v = torch.as_tensor(np.asarray(vol, np.float64))
    if v.ndim != 3 or len(set(v.shape)) != 1:
        raise ValueError(f"hand check needs a cubic (D, D, D) volume, got shape {tuple(v.shape)}")
    if v.shape[0] != box:
        v = fourier_resize(v, box)
    c = torch.arange(box, dtype=torch.float64) - box // 2
    zz, yy, xx = torch.meshgrid(c, c, c, indexing="ij")
    r = torch.sqrt(xx ** 2 + yy ** 2 + zz ** 2)
    if lowpass_px is not None:
        f = torch.fft.fftshift(torch.fft.fftn(torch.fft.ifftshift(v)))
        f = f * torch.clamp((lowpass_px + 1 - r), 0.0, 1.0)  # soft edge one Fourier px wide
        v = torch.fft.fftshift(torch.fft.ifftn(torch.fft.ifftshift(f))).real
    mask = torch.clamp((0.45 * box - r) / (0.1 * box), 0.0, 1.0)  # 1 inside 0.35 box, 0 beyond 0.45 box
    v = v * mask
    v = (v - (v * mask).sum() / mask.sum()) * mask
    n = torch.linalg.norm(v)
    if not torch.isfinite(n) or n == 0:
        raise ValueError("hand check: the volume is constant inside the mask")
    return (v / n).float(), mask.float()


def _rotated(vol, rots):
    """Batched ``out_b(r) = vol(r @ rots_b^T)`` about ``D // 2`` (physics.rotate_volume with a batch of rotations)."""
    from cryofire_app.physics.projector import rotate_volume

    return rotate_volume(vol.float(), rots.float())


def _best_scores(vol, ref_f, rots, max_shift: int, chunk: int = 256):
    """Best normalised correlation over shifts (|shift| <= max_shift voxels per axis) for each rotation."""
    import torch

    d = vol.shape[-1]
    s = (torch.arange(d) + d // 2) % d - d // 2  # signed circular shift of each FFT index
    ok = (s.abs() <= max_shift)
    allowed = ok[:, None, None] & ok[None, :, None] & ok[None, None, :]
    scores = torch.empty(len(rots))
    shifts = torch.empty(len(rots), 3, dtype=torch.long)
    for i in range(0, len(rots), chunk):
        rv = _rotated(vol, rots[i:i + chunk])
        norm = torch.linalg.norm(rv.reshape(len(rv), -1), dim=1).clamp_min(1e-12)
        # c(s) = sum_x ref(x + s) rv(x): the shift s that moves the rotated map onto the reference
        cc = torch.fft.irfftn(ref_f[None] * torch.fft.rfftn(rv, dim=(-3, -2, -1)).conj(), s=(d, d, d),
                              dim=(-3, -2, -1))
        cc = torch.where(allowed[None], cc, torch.tensor(-float("inf")))
        flat = cc.reshape(len(rv), -1)
        best, arg = flat.max(dim=1)
        scores[i:i + chunk] = best / norm
        iz, iy, ix = arg // (d * d), (arg // d) % d, arg % d
        shifts[i:i + chunk] = torch.stack([s[iz], s[iy], s[ix]], 1)
    return scores, shifts


def _search(vol, ref_f, grid, max_shift: int, refine_steps_deg, top: int):
    import torch

    from cryofire_app.reconstruct.grids import local_perturbations

    scores, shifts = _best_scores(vol, ref_f, grid, max_shift)
    order = torch.argsort(scores, descending=True)[:top]
    cand, cand_s, cand_t = grid[order], scores[order], shifts[order]
    for step in refine_steps_deg:
        E = local_perturbations(math.radians(step))
        trial = (cand[:, None] @ E[None].to(cand.dtype)).reshape(-1, 3, 3)  # R E: small turns about each candidate
        ts, tt = _best_scores(vol, ref_f, trial, max_shift)
        ts, tt = ts.reshape(len(cand), -1), tt.reshape(len(cand), -1, 3)
        j = ts.argmax(dim=1)
        k = torch.arange(len(cand))
        better = ts[k, j] >= cand_s
        cand = torch.where(better[:, None, None], trial.reshape(len(cand), -1, 3, 3)[k, j], cand)
        cand_t = torch.where(better[:, None], tt[k, j], cand_t)
        cand_s = torch.where(better, ts[k, j], cand_s)
    b = int(torch.argmax(cand_s))
    return float(cand_s[b]), cand[b], cand_t[b], len(grid) + len(cand) * 27 * len(refine_steps_deg)


def hand_against_reference(vol: np.ndarray, ref: np.ndarray, box: int = 20, n_dir: int = 96, n_psi: int = 16,
                           refine_steps_deg=(10.0, 5.0, 2.5), top: int = 4, max_shift_frac: float = 0.125,
                           lowpass_px: float | None = None, margin: float = 0.03) -> HandCheck:
    """Is ``vol`` in the hand of ``ref``? Rotational + translational fit in both hands, at a small box.

    Both maps (cubic, same physical extent, any box) are Fourier-cropped to ``box``, optionally low-passed to
    ``lowpass_px`` Fourier pixels (at ``box``), masked by a soft sphere and normalised. For ``vol`` and its mirror
    (:func:`mirror_volume`) the best correlation with ``ref`` is searched over an SO(3) grid (``n_dir`` view directions
    x ``n_psi`` in-plane angles; 96 x 16 is ~22 degrees), refined locally around the ``top`` best grid points with
    steps ``refine_steps_deg``, and over integer shifts up to ``max_shift_frac * box`` voxels. The hand whose
    correlation is higher by at least ``margin`` wins; otherwise "undetermined". The density sign of both maps must be
    the same (positive protein density). Cost: ~2 x (n_dir * n_psi) rotations of a box^3 map, ~5 s with the defaults
    on 2 CPU cores. Measured on the bundled 70S map (box 64 -> 16..24, random rotation + shift, with or without noise):
    best correlation 0.67-0.91 in the right hand against 0.47-0.52 in the wrong one, every case decided correctly.
    """
    import time

    import torch

    from cryofire_app.reconstruct.grids import so3_grid

    t0 = time.time()
    v, _ = _prepare(vol, box, lowpass_px)
    r, _ = _prepare(ref, box, lowpass_px)
    ref_f = torch.fft.rfftn(r, dim=(-3, -2, -1))
    grid = so3_grid(n_dir, n_psi)
    max_shift = max(0, int(round(max_shift_frac * box)))
    with torch.no_grad():
        cc0, rot0, sh0, n0 = _search(v, ref_f, grid, max_shift, refine_steps_deg, top)
        vm = torch.as_tensor(mirror_volume(v.numpy()))
        cc1, rot1, sh1, n1 = _search(vm, ref_f, grid, max_shift, refine_steps_deg, top)
    if cc0 - cc1 >= margin:
        hand, rot, sh = "correct", rot0, sh0
    elif cc1 - cc0 >= margin:
        hand, rot, sh = "flipped", rot1, sh1
    else:
        hand, rot, sh = "undetermined", (rot0 if cc0 >= cc1 else rot1), (sh0 if cc0 >= cc1 else sh1)
    return HandCheck(hand=hand, cc_correct=cc0, cc_flipped=cc1, margin=float(margin), box=int(box),
                     rot=rot.double().tolist(), shift_px=[int(x) for x in sh], n_rotations=n0 + n1,
                     seconds=time.time() - t0)
