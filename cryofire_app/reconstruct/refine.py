"""Local refinement of given poses against the seed's map, for particles the seed did not see (new particles, whose
poses the encoder gives): the same local search the seed ends its own refinement with, around each given pose, the
step halving from ``steps_deg[0]``. The given pose is always a candidate, so no particle fits the map worse.

Conventions: ``rot (n, 3, 3)`` cryoDRGN rows, ``trans_px (n, 2)`` pixels of the images' box ``D`` (the shift that
re-centres the particle); ``volume (D, D, D)`` in the raw data's sign; images in the raw units of the stack the seed
analysed (``data_scale``: its reconstruct.data.Particles.scale).
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

from .data import prepare_particles, stage_data
from .final import chunk_size
from .grids import local_perturbations, shift_grid
from .search import local_search
from .seed_stages import resize_volume
from .volume import slicing_volume

__all__ = ["STEPS_DEG", "refine_poses"]

#: rotation steps of the rounds (degrees): from about the encoder's error on new particles down to the seed's last
STEPS_DEG = (8.0, 4.0, 2.0, 1.0)


def refine_poses(images: Callable[[np.ndarray], np.ndarray], n: int, ctf_params: np.ndarray | None, rot: np.ndarray,
                 trans_px: np.ndarray, volume: np.ndarray, data_scale: float, box: int, radius: float,
                 steps_deg: tuple[float, ...] = STEPS_DEG, shift_step_px: float = 1.0, chunk: int | None = None,
                 batch: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Refined ``(rot, trans_px)`` of ``n`` particles (``images(rows)``: their ``(len(rows), D, D)`` raw images;
    ``ctf_params (n, 9)`` or None) against ``volume`` at box ``min(box, D)`` within ``radius`` Fourier px of that
    box; the shift step starts at ``shift_step_px`` (input-box px) and halves to 0.25 px."""
    rot_out = np.array(rot, np.float32, copy=True)
    trans_out = np.array(trans_px, np.float32, copy=True)
    if n == 0:
        return rot_out, trans_out
    D = int(np.asarray(images(np.arange(1))).shape[-1])
    d = min(int(box), D)
    vh = slicing_volume(resize_volume(torch.as_tensor(np.asarray(volume, np.float32)), d))
    chunk = chunk or chunk_size(D)
    for s in range(0, n, chunk):
        rows = np.arange(s, min(n, s + chunk))
        parts = prepare_particles(images(rows), None if ctf_params is None else ctf_params[rows])
        parts.ht *= parts.scale / data_scale   # into the seed's units
        data = stage_data(parts, d, radius)
        r = torch.as_tensor(rot_out[rows])
        t = torch.as_tensor(trans_out[rows]) * (d / D)   # box-d px
        tstep = shift_step_px * d / D
        for step in steps_deg:
            r, t, _ = local_search(vh, data, r[:, None], t[:, None], local_perturbations(math.radians(step)),
                                   shift_grid(tstep, tstep), batch=batch)
            tstep = max(tstep / 2, 0.25 * d / D)
        rot_out[rows] = r.numpy()
        trans_out[rows] = (t * (D / d)).numpy()
    return rot_out, trans_out
