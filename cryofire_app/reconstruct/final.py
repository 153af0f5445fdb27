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
from .data import Particles, prepare_particles, stage_data
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


#: back-projection sums held at once by a pass of the final maps (each accumulator is 2 (2D+1)^3 floats: 130 MB at box
#: 128), so their memory is bounded whatever the number of states; the states beyond it take further passes
ACCUMULATOR_BUDGET_BYTES = 300 * 2 ** 20


def accumulators_per_pass(D: int) -> int:
    """How many box-``D`` accumulators a pass may hold (at least the two halves)."""
    return max(2, ACCUMULATOR_BUDGET_BYTES // (2 * 4 * (2 * D + 1) ** 3))


class _Chunks:
    """The particles as full-lattice stage data, ``chunk`` at a time, each read, prepared and brought to the first
    chunk's scale; iterate again for another pass (the same rows give the same data)."""

    def __init__(self, read, n: int, ctf_params, rot, trans, chunk: int):
        self.read, self.n, self.ctf, self.rot, self.trans, self.chunk = read, n, ctf_params, rot, trans, chunk
        self.scale0, self.D, self.first = None, None, None

    def __iter__(self):
        for s in range(0, self.n, self.chunk):
            rows = np.arange(s, min(s + self.chunk, self.n))
            parts = prepare_particles(self.read(rows), None if self.ctf is None else np.asarray(self.ctf)[rows])
            if self.scale0 is None:
                self.scale0, self.D = parts.scale, parts.D
            parts.ht *= parts.scale / self.scale0
            data = stage_data(parts, self.D, self.D // 2)
            if self.first is None:
                self.first = (data, self.rot[rows], self.trans[rows])
            yield rows, data, self.rot[rows], self.trans[rows]


class _PartsChunks:
    """Prepared particles in memory as full-lattice stage data, ``chunk`` at a time (re-iterable, like _Chunks)."""

    def __init__(self, parts: Particles, rot, trans, chunk: int):
        self.parts, self.rot, self.trans, self.chunk, self.D = parts, rot, trans, chunk, parts.D

    def __iter__(self):
        for s in range(0, self.parts.n, self.chunk):
            rows = np.arange(s, min(s + self.chunk, self.parts.n))
            idx = torch.as_tensor(rows)
            yield rows, stage_data(self.parts, self.D, self.D // 2, idx), self.rot[idx], self.trans[idx]


def _pass(chunks, members: list[np.ndarray], each=None) -> list[HartleyAccumulator]:
    """One pass over the particles: accumulator ``j`` sums the particles where ``members[j]`` (bool, n) is true;
    ``each(data, rot, trans)`` is called on every chunk as well."""
    accs = None
    for rows, data, r, t in chunks:
        accs = accs or [HartleyAccumulator(chunks.D) for _ in members]
        for acc, m in zip(accs, members):
            sel = torch.as_tensor(np.nonzero(m[rows])[0])
            if len(sel):
                backproject(acc, data, r[sel], t[sel], rows=sel)
        if each is not None:
            each(data, r, t)
    return accs or []


def _state_maps(chunks, st: np.ndarray, ks: range, sigma2: float, mask_radius: float) -> list[torch.Tensor]:
    """The maps of states ``ks`` (labels ``st``), :func:`accumulators_per_pass` of them per pass."""
    per, vols = accumulators_per_pass(chunks.D), []
    for k0 in range(ks.start, ks.stop, per):
        for a in _pass(chunks, [st == k for k in range(k0, min(k0 + per, ks.stop))]):
            vols.append(a.solve(sigma2, mask_radius=mask_radius)[0])
    return vols


def final_maps(read: Callable[[np.ndarray], np.ndarray], n: int, ctf_params, rot, trans_px, state=None,
               seed: int = 0, chunk: int | None = None) -> FinalMaps:
    """Reconstruct ``n`` particles: ``read(rows)`` returns their images ``(len(rows), D, D)`` (any units and offset;
    each chunk is normalised like the seed's data, :func:`.data.prepare_particles`, then brought to the first
    chunk's scale); ``ctf_params (n, 9)`` cryoDRGN rows or None; ``state (n,)`` ints for per-state maps;
    ``chunk``: particles per pass (default :func:`chunk_size` of the images' box, read off the first image; callers
    that know the box pass it and save that read). The halves take one pass over the images, the states as many
    more as :func:`accumulators_per_pass` needs."""
    if chunk is None:
        chunk = chunk_size(int(np.asarray(read(np.arange(min(1, n)))).shape[-1])) if n else 1
    rot = torch.as_tensor(np.asarray(rot, np.float32))
    trans = torch.as_tensor(np.asarray(trans_px, np.float32))
    half = np.random.default_rng([seed, 7]).permutation(n) % 2
    chunks = _Chunks(read, n, ctf_params, rot, trans, chunk)
    accs = _pass(chunks, [half == 0, half == 1])
    D = chunks.D
    mask = MASK_FRACTION * D / 2
    # noise variance per coefficient: the first chunk's residuals against the map (solved once with a rough value)
    data, r, t = chunks.first
    rough = float((data.Y ** 2).mean())
    vh = slicing_volume(HartleyAccumulator.solve_sum(accs, rough, mask_radius=mask)[0])
    sigma2 = residual_sigma2(scores_at(vh, data, r, t), data)
    del vh
    volume = HartleyAccumulator.solve_sum(accs, sigma2, mask_radius=mask)[0].numpy()
    h1, h2 = (a.solve(sigma2, mask_radius=mask)[0].numpy() for a in accs)
    del accs
    freq, curve = fsc(h1, h2)
    states = None
    if state is not None:
        st = np.asarray(state, np.int64)
        states = np.stack([v.numpy() for v in _state_maps(chunks, st, range(int(st.max()) + 1), sigma2, mask)])
    return FinalMaps(volume.astype(np.float32), h1.astype(np.float32), h2.astype(np.float32), freq, curve,
                     fsc_resolution_px(freq, curve, 0.143), fsc_resolution_px(freq, curve, 0.5), n, states)


def particle_maps(parts: Particles, rot: torch.Tensor, trans: torch.Tensor, vol_d: torch.Tensor, state,
                  mask_radius: float, chunk: int | None = None) -> tuple[torch.Tensor, np.ndarray | None]:
    """The consensus map and (K >= 2 states) one map per state of prepared particles ``parts`` at their box's full
    Nyquist, with the noise variance of the slicing volume ``vol_d`` (box ``parts.D``) at the poses (``trans`` px of
    that box); ``mask_radius`` voxels. The full-lattice data are made ``chunk`` particles at a time (default
    :func:`chunk_size`) and the states' sums held a few at a time (:func:`accumulators_per_pass`), so the memory grows
    with neither N, D nor K."""
    D = parts.D
    chunks = _PartsChunks(parts, rot, trans, chunk or chunk_size(D))
    st = None if state is None or int(np.max(state)) < 1 else np.asarray(state, np.int64)
    K = 0 if st is None else int(st.max()) + 1
    first = range(0, min(K, accumulators_per_pass(D) - 1))   # the first pass also holds the consensus sums
    resid = []

    def residual(data, r, t):
        resid.append(residual_sigma2(scores_at(vol_d, data, r, t), data) * data.n)

    acc, *saccs = _pass(chunks, [np.ones(parts.n, bool)] + [st == k for k in first], residual)
    sig_final = sum(resid) / parts.n
    volume, _ = acc.solve(sig_final, mask_radius=mask_radius)
    del acc
    if st is None:
        return volume, None
    svols = [a.solve(sig_final, mask_radius=mask_radius)[0] for a in saccs]
    del saccs
    svols += _state_maps(chunks, st, range(len(first), K), sig_final, mask_radius)   # the other states
    svols = [v if (st == k).any() else torch.zeros(D, D, D) for k, v in enumerate(svols)]
    return volume, torch.stack(svols).numpy()
