"""The final explicit reconstruction of a run: with its final poses (and states), a CTF-corrected, Wiener-filtered
Hartley voxel map of the particles at the image box's full Nyquist, two half maps from random halves, and their
gold-standard Fourier shell correlation.

Cheap on a CPU: one back-projection pass over the particles, streamed in chunks (no stack in memory), no training.
It is not limited by the decoder's frequency band, so it is usually the sharper map. The halves are split at random
here, but the poses were found jointly: the FSC is gold-standard in form only, and it can be optimistic.

Conventions as in :mod:`.seed`: ``rot (N, 3, 3)`` cryoDRGN rows, ``trans_px (N, 2)`` px of the image box (the shift
that re-centres the particle); volumes ``(z, y, x)`` in the data's sign (multiply by the run's data sign for
positive density); frequencies of the FSC in cycles/px of the image box.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ..analysis.metrics import fsc, fsc_resolution_px
from .data import prepare_particles, stage_data
from .search import backproject, residual_sigma2, scores_at
from .volume import HartleyAccumulator, slicing_volume

#: soft real-space mask of the maps, as a fraction of the half box (the seed's own default)
MASK_FRACTION = 0.9


@dataclass
class FinalMaps:
    """``volume``, ``half1``, ``half2`` ``(D, D, D)``; ``state_volumes (K, D, D, D)`` or None; the half maps' FSC per
    shell ``freq`` (cycles/px) and its 0.143 / 0.5 resolutions in px (``inf`` when below from the first shells)."""

    volume: np.ndarray
    half1: np.ndarray
    half2: np.ndarray
    freq: np.ndarray
    fsc: np.ndarray
    res_0143_px: float
    res_05_px: float
    n_particles: int
    state_volumes: np.ndarray | None = None


def chunk_size(D: int) -> int:
    """Particles per chunk of a full-lattice pass at box ``D``: about 2^22 Hartley coefficients per chunk (~16 MB
    per array; 1,024 particles at box 64, 256 at box 128), so the memory of a pass depends on neither N nor D."""
    return max(64, 2 ** 22 // (D * D))


def final_maps(read: Callable[[np.ndarray], np.ndarray], n: int, ctf_params, rot, trans_px, state=None,
               seed: int = 0, chunk: int | None = None) -> FinalMaps:
    """Reconstruct ``n`` particles: ``read(rows)`` returns their images ``(len(rows), D, D)`` (any units and offset;
    each chunk is normalised like the seed's data, :func:`.data.prepare_particles`, then brought to the first
    chunk's scale); ``ctf_params (n, 9)`` cryoDRGN rows or None; ``state (n,)`` ints for per-state maps;
    ``chunk``: particles per pass (default :func:`chunk_size` of the images' box, read off the first image; callers
    that know the box pass it and save that read)."""
    if chunk is None:
        chunk = chunk_size(int(np.asarray(read(np.arange(min(1, n)))).shape[-1])) if n else 1
    rot = torch.as_tensor(np.asarray(rot, np.float32))
    trans = torch.as_tensor(np.asarray(trans_px, np.float32))
    half = np.random.default_rng([seed, 7]).permutation(n) % 2
    K = 0 if state is None else int(np.max(state)) + 1
    st = None if state is None else np.asarray(state, np.int64)
    accs, s_accs, first, scale0, D = None, None, None, None, None
    for s in range(0, n, chunk):
        rows = np.arange(s, min(s + chunk, n))
        ctf = None if ctf_params is None else np.asarray(ctf_params)[rows]
        parts = prepare_particles(read(rows), ctf)
        if scale0 is None:
            scale0, D = parts.scale, parts.D
            accs = [HartleyAccumulator(D), HartleyAccumulator(D)]
            s_accs = [HartleyAccumulator(D) for _ in range(K)]
        parts.ht *= parts.scale / scale0
        data = stage_data(parts, D, D // 2)
        r, t = rot[rows], trans[rows]
        for h in (0, 1):
            sel = torch.as_tensor(np.nonzero(half[rows] == h)[0])
            if len(sel):
                backproject(accs[h], data, r[sel], t[sel], rows=sel)
        for k in range(K):
            sel = torch.as_tensor(np.nonzero(st[rows] == k)[0])
            if len(sel):
                backproject(s_accs[k], data, r[sel], t[sel], rows=sel)
        if first is None:
            first = (data, r, t)
    mask = MASK_FRACTION * D / 2
    full = HartleyAccumulator.merged(accs)
    # noise variance per coefficient: the first chunk's residuals against the map (solved once with a rough value)
    data, r, t = first
    rough = float((data.Y ** 2).mean())
    vh = slicing_volume(full.solve(rough, mask_radius=mask)[0])
    sigma2 = residual_sigma2(scores_at(vh, data, r, t), data)
    volume = full.solve(sigma2, mask_radius=mask)[0].numpy()
    h1, h2 = (a.solve(sigma2, mask_radius=mask)[0].numpy() for a in accs)
    freq, curve = fsc(h1, h2)
    states = np.stack([a.solve(sigma2, mask_radius=mask)[0].numpy() for a in s_accs]) if K else None
    return FinalMaps(volume.astype(np.float32), h1.astype(np.float32), h2.astype(np.float32), freq, curve,
                     fsc_resolution_px(freq, curve, 0.143), fsc_resolution_px(freq, curve, 0.5), n, states)
