"""Heterogeneity coordinates of any particles (new ones, or training particles the seed did not analyse) on the
seed's residual directions (reconstruct.hetero.HeteroBasis), at given poses: the same linear estimate the seed made
for its own particles, so it generalises as well as the poses do.

Conventions: ``rot (n, 3, 3)`` cryoDRGN rows, ``trans_px (n, 2)`` pixels of the images' box ``D`` (the shift that
re-centres the particle); images in the raw units of the stack the seed analysed (its normalisation is reapplied).
"""
from __future__ import annotations

from typing import Callable, Iterator

import numpy as np
import torch

from .data import Particles, prepare_particles, stage_data
from .final import chunk_size
from .hetero import HeteroBasis, coordinates

__all__ = ["particle_coordinates", "prepared_chunks"]


def prepared_chunks(images: Callable[[np.ndarray], np.ndarray], n: int, ctf_params: np.ndarray | None,
                    data_scale: float, chunk: int | None = None) -> Iterator[tuple[np.ndarray, Particles]]:
    """``(rows, particles)`` for consecutive chunks of ``n`` particles, prepared as the seed prepared its own
    (reconstruct.data) and put into the units of the stack it analysed (``data_scale``: that stack's
    Particles.scale). ``chunk`` particles at a time (default reconstruct.final.chunk_size(D)), so memory does not
    grow with n."""
    if n == 0:
        return
    chunk = chunk or chunk_size(int(np.asarray(images(np.arange(1))).shape[-1]))
    for s in range(0, n, chunk):
        rows = np.arange(s, min(n, s + chunk))
        parts = prepare_particles(images(rows), None if ctf_params is None else ctf_params[rows])
        parts.ht *= parts.scale / data_scale   # into the analysed stack's units
        yield rows, parts


def particle_coordinates(images: Callable[[np.ndarray], np.ndarray], n: int, ctf_params: np.ndarray | None,
                         rot: np.ndarray, trans_px: np.ndarray, basis: HeteroBasis,
                         chunk: int | None = None) -> np.ndarray:
    """``(n, q)`` standardised coordinates on ``basis`` of ``n`` particles; ``images(rows)`` returns their
    ``(len(rows), D, D)`` images (D even, the box the seed saw), ``ctf_params (n, 9)`` cryoDRGN rows or None. Works
    ``chunk`` particles at a time (default reconstruct.final.chunk_size(D)), so memory does not grow with n."""
    out = np.zeros((n, basis.q), np.float32)
    for rows, parts in prepared_chunks(images, n, ctf_params, basis.data_scale, chunk):
        data = stage_data(parts, basis.d, basis.radius)
        t = torch.as_tensor(np.asarray(trans_px[rows], np.float32)) * (basis.d / parts.D)
        out[rows] = coordinates(data, torch.as_tensor(np.asarray(rot[rows], np.float32)), t, basis)
    return out
