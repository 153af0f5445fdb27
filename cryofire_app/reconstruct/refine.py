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

from .coordinates import prepared_chunks
from .data import stage_data
from .grids import local_perturbations, shift_grid, so3_grid
from .search import global_search, local_search
from .seed_stages import resize_volume
from .volume import slicing_volume

__all__ = ["STEPS_DEG", "refine_poses"]

#: rotation steps of the rounds (degrees): from about the encoder's error on new particles down to the seed's last
STEPS_DEG = (8.0, 4.0, 2.0, 1.0)


def refine_poses(images: Callable[[np.ndarray], np.ndarray], n: int, ctf_params: np.ndarray | None, rot: np.ndarray,
                 trans_px: np.ndarray, volume: np.ndarray, data_scale: float, box: int, radius: float,
                 steps_deg: tuple[float, ...] = STEPS_DEG, shift_step_px: float = 1.0, chunk: int | None = None,
                 batch: int = 64, search: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Refined ``(rot, trans_px)`` of ``n`` particles (``images(rows)``: their ``(len(rows), D, D)`` raw images;
    ``ctf_params (n, 9)`` or None) against ``volume`` at box ``min(box, D)`` within ``radius`` Fourier px of that
    box; the shift step starts at ``shift_step_px`` (input-box px) and halves to 0.25 px.

    ``search``: first an exhaustive search as the seed's (``box``, ``grid_dirs``, ``grid_psi``, ``max_shift_px``
    input-box px, ``topk``), whose best poses join the given one as starts of the first round: for particles whose
    given pose is in a wrong basin, at the cost of a search over every rotation."""
    rot_out = np.array(rot, np.float32, copy=True)
    trans_out = np.array(trans_px, np.float32, copy=True)
    if n == 0:
        return rot_out, trans_out
    D = int(np.asarray(images(np.arange(1))).shape[-1])
    d = min(int(box), D)
    vol = torch.as_tensor(np.asarray(volume, np.float32))
    vh = slicing_volume(resize_volume(vol, d))
    starts = _SearchStarts(vol, D, search) if search else None
    for rows, parts in prepared_chunks(images, n, ctf_params, data_scale, chunk):
        data = stage_data(parts, d, radius)
        r = torch.as_tensor(rot_out[rows])[:, None]
        t = torch.as_tensor(trans_out[rows])[:, None] * (d / D)   # box-d px, (n, H, 2)
        if starts is not None:
            r, t = starts.add(parts, r, t, d, radius, batch)
        tstep = shift_step_px * d / D
        for step in steps_deg:
            r, t, _ = local_search(vh, data, r, t, local_perturbations(math.radians(step)), shift_grid(tstep, tstep),
                                   batch=batch)
            r, t = r[:, None], t[:, None]
            tstep = max(tstep / 2, 0.25 * d / D)
        r, t = r[:, 0], t[:, 0]
        rot_out[rows] = r.numpy()
        trans_out[rows] = (t * (D / d)).numpy()
    return rot_out, trans_out


class _SearchStarts:
    """An exhaustive search as the seed's at box ``search["box"]`` (its map, rotation grid and shifts made once)."""

    def __init__(self, vol: torch.Tensor, D: int, search: dict):
        self.ds = min(int(search["box"]), D)
        self.vh = slicing_volume(resize_volume(vol, self.ds))
        self.grid = so3_grid(int(search["grid_dirs"]), int(search["grid_psi"]))
        ext = float(search["max_shift_px"]) * self.ds / D
        self.shifts = shift_grid(ext, max(0.5, ext / 4))
        self.topk = int(search.get("topk", 2))

    def add(self, parts, r: torch.Tensor, t: torch.Tensor, d: int, radius: float, batch: int):
        """The starts ``r (n, 1, 3, 3)``, ``t (n, 1, 2)`` (box-d px) and the search's best ``topk`` poses (the
        radius scaled from ``radius`` at box d)."""
        data_s = stage_data(parts, self.ds, radius * self.ds / d)
        _, ri, ti = global_search(self.vh, data_s, self.grid, self.shifts, topk=self.topk, batch=batch)
        return torch.cat([r, self.grid[ri]], 1), torch.cat([t, self.shifts[ti] * (d / self.ds)], 1)
