"""Particle data for the seeding stages: windowed, normalised, symmetrized Hartley transforms and per-stage views.

An image box ``D`` is transformed once (centered HT, symmetrized to the odd ``(D+1)^2`` lattice). A stage at box ``d``
(even, ``d <= D``) is the central ``(d+1)^2`` crop of that lattice (a Fourier crop: pixel size ``apix * D / d``),
restricted to the points within ``radius`` Fourier pixels of DC (DC excluded). Frequencies of a stage are cycles per
pixel **of box d**; shifts at a stage are pixels of box d (``t_d = t_D * d / D``), so ``k . t`` is unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..physics.ctf import ctf_from_params
from ..physics.fft import ht2_center, symmetrize_ht, window_mask
from ..physics.lattice import Lattice


@dataclass
class Particles:
    """All particles at the input box: ``ht (N, D+1, D+1)`` float32 symmetrized HTs of the windowed images, divided by
    ``scale`` (so white noise has about unit variance per coefficient); ``ctf (N, 9)`` cryoDRGN rows or None."""

    ht: torch.Tensor
    ctf: torch.Tensor | None
    D: int
    scale: float

    @property
    def n(self) -> int:
        return int(self.ht.shape[0])


BACKGROUND_R_IN = 0.85   # the background annulus: pixels at or beyond this fraction of the half box (the window's
                         # inner radius), where a centred particle has (almost) no density


def background_mask(D: int, r_in: float = BACKGROUND_R_IN) -> torch.Tensor:
    """``(D, D)`` bool: pixels at radius >= ``r_in`` half boxes from the centre pixel (corners included)."""
    u = -1 + 2 * torch.arange(D, dtype=torch.float64) / D
    yy, xx = torch.meshgrid(u, u, indexing="ij")
    return (xx ** 2 + yy ** 2).sqrt() >= r_in


class StackRows:
    """Rows ``rows`` of an image stack, then the images ``extra``, as a stack that reads a slice at a time (for
    :func:`prepare_particles`: a subset of a memory-mapped stack is never copied whole)."""

    def __init__(self, images, rows: np.ndarray, extra: np.ndarray):
        self.images, self.rows, self.extra = images, rows, extra

    def __len__(self) -> int:
        return len(self.rows) + len(self.extra)

    def __getitem__(self, sl: slice) -> np.ndarray:
        n, idx = len(self.rows), range(len(self))[sl]
        lo, hi = min(idx.start, n), min(idx.stop, n)   # slices run forward here (prepare_particles' batches)
        r = self.rows[lo:hi]
        if len(r) and r[-1] - r[0] == len(r) - 1 and np.all(np.diff(r) == 1):   # consecutive rows: one read
            head = [np.asarray(self.images[int(r[0]):int(r[-1]) + 1], np.float32)]
        else:
            head = [np.asarray(self.images[int(i)], np.float32).reshape(1, -1, self.extra.shape[-1]) for i in r]
        tail = [np.asarray(self.extra[max(idx.start, n) - n:max(idx.stop, n) - n], np.float32)]
        return np.concatenate(head + tail)


def prepare_particles(images, ctf_params=None, window: bool = True, batch: int = 512,
                      device: torch.device | str = "cpu", crop: int | None = None) -> Particles:
    """Remove each image's background level, window (soft circle r_in 0.85, r_out 0.99 of the half box), transform
    and normalise an image stack; the result does not depend on the data's units (scale) or a constant offset.

    ``images``: array-like ``(N, D, D)`` (numpy array, memmap, :class:`~cryofire_app.io.ImageStack`, tensor), D even,
    in any units. Per image, the median of the background annulus (radius >= 0.85 half boxes) is subtracted before
    windowing, so an offset does not turn into a windowed low-frequency bump. The stack is then divided by a robust
    per-stack statistic: ``scale = D * median over images of the RMS of the windowed, offset-free image``, so one
    image of outliers does not set it. Statistics are float64 and each batch is pre-divided by the first batch's
    statistic before the float32 transform, so values up to float32's range neither overflow nor lose precision.
    ``crop`` (even, <= D): keep only the central ``(crop+1)^2`` of each lattice, a Fourier crop to box ``crop`` as
    :func:`stage_data` makes it (the result's ``D`` is then ``crop``; ``scale`` stays the input box's), so a stack is
    never held at its full box. ValueError for NaN/Inf pixels or an all-constant stack.
    """
    n = len(images)
    first = np.asarray(images[0:1], dtype=np.float32)
    if first.ndim != 3 or first.shape[1] != first.shape[2] or first.shape[1] % 2:
        raise ValueError(f"images must be (N, D, D) with an even box, got first batch of shape {first.shape}")
    D = int(first.shape[1])
    d = D if crop is None else int(crop)
    if d % 2 or not 4 <= d <= D:
        raise ValueError(f"crop must be an even box in [4, {D}], got {crop}")
    keep = slice(D // 2 - d // 2, D // 2 + d // 2 + 1)
    win = (window_mask(D, 0.85, 0.99) if window else torch.ones(D, D)).double()
    bg = background_mask(D)
    out = torch.empty(n, d + 1, d + 1, dtype=torch.float32)
    rms = np.empty(n, np.float64)
    pre = None   # raw units per transformed unit (the first batch's median RMS)
    batch = max(1, min(int(batch), 2 ** 23 // (D * D)))   # float64 batches of at most 64 MB
    for s in range(0, n, batch):
        x = torch.as_tensor(np.asarray(images[s:s + batch], dtype=np.float64))
        if not torch.isfinite(x).all():
            bad = int((~torch.isfinite(x).reshape(len(x), -1).all(1)).nonzero()[0, 0])
            raise ValueError(f"image {s + bad} (0-based) contains NaN or Inf pixels")
        x = x - x[:, bg].median(dim=1).values[:, None, None]
        x = x * win
        r = (x ** 2).mean(dim=(1, 2)).sqrt()
        rms[s:s + len(x)] = r.numpy()
        if pre is None:
            pre = float(r.median())
            if not np.isfinite(pre) or pre <= 0:
                pre = float(r.max())
            if not np.isfinite(pre) or pre <= 0:
                pre = 1.0
        out[s:s + batch] = symmetrize_ht(ht2_center((x / pre).float()))[:, keep, keep]
    std = float(np.median(rms))
    if not np.isfinite(std) or std <= 0:
        std = float(rms.max())
        if not np.isfinite(std) or std <= 0:
            raise ValueError("the images are constant (no variation left once each image's background level is "
                             "removed): nothing to reconstruct")
    scale = std * D
    out *= pre / scale
    ctf = None
    if ctf_params is not None:
        ctf = torch.as_tensor(np.asarray(ctf_params, dtype=np.float32))
        if ctf.shape != (n, 9):
            raise ValueError(f"ctf_params must be (N, 9) cryoDRGN rows with N = {n}, got {tuple(ctf.shape)}")
    return Particles(out.to(device), None if ctf is None else ctf.to(device), d, scale)


@dataclass
class StageData:
    """One stage's view of (a subset of) the particles: box ``d``, ``K`` lattice points within ``radius``."""

    d: int
    radius: float
    index: torch.Tensor  # (n,) rows of the Particles
    Y: torch.Tensor  # (n, K) Hartley values at k
    Yneg: torch.Tensor  # (n, K) Hartley values at -k (for shifts)
    ctf: torch.Tensor  # (n, K)
    coords: torch.Tensor  # (K, 3) (kx, ky, 0) cycles/px of box d
    ynorm2: torch.Tensor  # (n,) sum of Y^2 over the K points (shift invariant)

    @property
    def n(self) -> int:
        return int(self.Y.shape[0])

    @property
    def freqs(self) -> torch.Tensor:
        return self.coords[:, :2]

    def shifted(self, rows: slice | torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Re-centred data ``T_t[Y]`` for ``rows`` (b images) and shifts ``t`` (box-d px): ``(b, T, K)`` when ``t`` is
        ``(T, 2)`` (shared) or ``(b, T, 2)`` (per image). The content moves by ``+t`` (physics.shift)."""
        Y, Yn = self.Y[rows], self.Yneg[rows]
        ph = 2 * np.pi * (t @ self.freqs.T)  # (T, K) or (b, T, K)
        if ph.dim() == 2:
            ph = ph[None]
        return torch.cos(ph) * Y[:, None] + torch.sin(ph) * Yn[:, None]


def stage_data(p: Particles, d: int, radius: float, index=None) -> StageData:
    """Crop the particles' lattice to box ``d`` and keep the points within ``radius`` Fourier px (box d) of DC."""
    if d % 2 or d > p.D or d < 4:
        raise ValueError(f"stage box must be even and in [4, {p.D}], got {d}")
    radius = float(min(radius, d // 2))
    idx = torch.arange(p.n) if index is None else torch.as_tensor(index, dtype=torch.long)
    c = p.D // 2
    sl = slice(c - d // 2, c + d // 2 + 1)
    lat = Lattice(d, device=p.ht.device)
    mask = lat.circle_mask(radius)
    full = p.ht[idx][:, sl, sl].reshape(len(idx), -1)
    Y = full[:, mask].contiguous()
    Yneg = full[:, lat.neg_index][:, mask].contiguous()
    coords = lat.coords[mask]
    if p.ctf is not None:   # 1,024 particles at a time: the CTF's float64 temporaries stay small
        f2 = lat.freqs2d[mask]
        ctf = torch.empty_like(Y)
        for s in range(0, len(idx), 1024):
            ctf[s:s + 1024] = ctf_from_params(f2, p.ctf[idx[s:s + 1024]], D_img=d)
    else:
        ctf = torch.ones_like(Y)
    return StageData(d, radius, idx, Y, Yneg, ctf, coords, (Y * Y).sum(1))
