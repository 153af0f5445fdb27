"""Input maps and the state maps made from them: reading, resampling to the output grid, hinge states."""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from cryofire_app.io import InputError, read_map
from cryofire_app.physics import center_crop_pad, fourier_resize
from cryofire_app.simulate.config import HingeConfig, SimulationConfig
from cryofire_app.simulate.hinge import _Hinge, hinge_states

log = logging.getLogger(__name__)


def resample_map(vol: torch.Tensor, apix_in: float, box_out: int, apix_out: float) -> tuple[torch.Tensor, float]:
    """Resample a cubic map to ``box_out`` voxels of ~``apix_out`` A: Fourier crop/pad to the box with that voxel
    size, then a real-space centred crop/pad. Returns the map and its exact voxel size (rounding of the box)."""
    dm = vol.shape[-1]
    dn = max(2, int(round(dm * apix_in / apix_out)))
    v = fourier_resize(vol, dn, ndim=3) if dn != dm else vol
    exact = apix_in * dm / dn
    return center_crop_pad(v, box_out, 3), exact


def _load_inputs(cfg: SimulationConfig) -> tuple[list[torch.Tensor], float, list[str]]:
    """The input maps (float64, z, y, x), their voxel size in A and their names (file paths or ``<array i>``)."""
    vols, names = [], []
    if cfg.volumes is not None:
        if cfg.apix is None:
            raise InputError("volumes given as arrays need apix")
        for i, v in enumerate(cfg.volumes):
            v = np.asarray(v, dtype=np.float32)
            if v.ndim != 3 or len(set(v.shape)) != 1:
                raise InputError(f"volume {i} is not a cubic 3D array: shape {v.shape}")
            vols.append(torch.from_numpy(v).double())
            names.append(f"<array {i}>")
        return vols, float(cfg.apix), names
    if not cfg.maps:
        raise InputError("no input map given")
    apix = None
    for p in cfg.maps:
        vol, info = read_map(p)
        a = cfg.apix if cfg.apix is not None else info.apix
        if a is None or a <= 0:
            raise InputError("voxel size is 0 in the header: give the map's pixel size with --apix", p)
        if apix is None:
            apix, box0 = float(a), vol.shape[-1]
        elif abs(a - apix) > 1e-4 * apix or vol.shape[-1] != box0:
            raise InputError(f"map has box {vol.shape[-1]} and voxel size {a:.4f} A; the first map has {box0} and "
                             f"{apix:.4f} A: give maps on the same grid", p)
        vols.append(torch.tensor(np.asarray(vol, dtype=np.float64)))
        names.append(str(p))
    return vols, apix, names


def _resample_all(vols: list[torch.Tensor], apix_map: float, D: int, apix_out: float) -> list[torch.Tensor]:
    """Every input map on the output grid (box D, ~apix_out A); warns when the integer Fourier box makes the voxel
    size differ from apix_out by more than 0.1 %."""
    resampled, apix_exact = [], apix_out
    for v in vols:
        r, apix_exact = resample_map(v, apix_map, D, apix_out)
        resampled.append(r)
    if abs(apix_exact - apix_out) > 1e-3 * apix_out:
        log.warning("map resampled to %.4f A/px instead of %.4f A/px (integer Fourier box)", apix_exact, apix_out)
    return resampled


def _read_hinge_mask(path: str, map_box: int, apix_map: float, D: int, apix_out: float) -> torch.Tensor:
    """The moving-region mask file on the output grid, clamped to [0, 1]; it must have the input map's box."""
    m, _ = read_map(path)
    if m.shape[-1] != map_box:
        raise InputError(f"mask box {m.shape[-1]} differs from the map box {map_box}", path)
    mask, _ = resample_map(torch.tensor(np.asarray(m, np.float64)), apix_map, D, apix_out)
    return torch.clamp(mask, 0.0, 1.0)


@dataclass
class _States:
    """The simulated states: ``gt`` maps (one per state, output grid); for hinge runs also the hinge and each
    state's hinge coordinate ``state_u`` in [0, 1] (discrete steps, or the centres of K equal bins)."""

    n_states: int
    gt: list[torch.Tensor]
    hinge: _Hinge | None = None
    state_u: np.ndarray | None = None


def _state_maps(hinge_cfg: HingeConfig, resampled: list[torch.Tensor], map_box: int, apix_map: float, D: int,
                apix_out: float) -> _States:
    """One state per input map, or the hinge states of the single map (a continuous hinge without K: 5 bins)."""
    if not hinge_cfg.enabled:
        return _States(n_states=len(resampled), gt=resampled)
    mask = None
    if hinge_cfg.mask:
        mask = _read_hinge_mask(hinge_cfg.mask, map_box, apix_map, D, apix_out)
    hinge = hinge_states(resampled[0], hinge_cfg, mask)
    n_states = hinge_cfg.steps if hinge_cfg.steps >= 2 else 5  # continuous without K: 5 label bins
    if hinge_cfg.continuous:
        state_u = (np.arange(n_states) + 0.5) / n_states
    else:
        state_u = np.linspace(0.0, 1.0, n_states)
    gt = [hinge.volume(float(u)) for u in state_u]
    return _States(n_states=n_states, gt=gt, hinge=hinge, state_u=state_u)
