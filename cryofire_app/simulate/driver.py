"""The simulation run: inputs and checks, parameters, noise level, then the output files (see cryofire_app.simulate)."""
from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Callable

from cryofire_app.io import InputError
from cryofire_app.io.atomic import atomic_write_json
from cryofire_app.simulate.config import BLOCK, HingeConfig, SimulationConfig, SimulationResult
from cryofire_app.simulate.maps import _load_inputs, _resample_all, _state_maps, _States
from cryofire_app.simulate.metadata import _fit_metadata, _n_images, _read_metadata
from cryofire_app.simulate.params import _draw_params, _Params
from cryofire_app.simulate.render import _pilot, _Renderer
from cryofire_app.simulate.writing import (
    OUTPUT_NAMES,
    _hinge_settings,
    _settings,
    _write_stack,
    _write_tables,
)

log = logging.getLogger(__name__)


def _check_hinge(hinge_cfg: HingeConfig, n_maps: int) -> None:
    """A hinge motion needs one map and either >= 2 steps or a continuous coordinate."""
    if hinge_cfg.enabled and n_maps != 1:
        raise InputError("a hinge motion needs exactly one input map")
    if hinge_cfg.enabled and hinge_cfg.steps < 2 and not hinge_cfg.continuous:
        raise InputError("hinge: give at least 2 steps, or continuous")


def _output_grid(cfg: SimulationConfig, map_box: int, apix_map: float, meta: dict | None) -> tuple[int, float]:
    """Output box D (px, even, >= 8) and pixel size (A): ``cfg.box`` or the metadata's box (else the map box made
    even), at the metadata's pixel size rescaled to D (else the map's voxel size rescaled to D)."""
    if meta is not None:
        D = int(cfg.box or meta["D"])
        apix_out = meta["apix"] * meta["D"] / D
    else:
        D = int(cfg.box or (map_box - map_box % 2))
        apix_out = apix_map * map_box / D
    if D % 2 or D < 8:
        raise InputError(f"box size must be even and >= 8, got {D}")
    return D, apix_out


def _check_fractions(cfg: SimulationConfig, n_states: int) -> None:
    """``cfg.fractions`` needs one non-negative value per state (ignored, with a warning, by a continuous hinge)."""
    if cfg.fractions is not None and cfg.hinge.enabled and cfg.hinge.continuous:
        log.warning("--fractions is ignored with a continuous hinge (the coordinate is uniform in [0, 1])")
    elif cfg.fractions is not None:
        if len(cfg.fractions) != n_states or min(cfg.fractions) < 0 or sum(cfg.fractions) <= 0:
            raise InputError(f"--fractions needs {n_states} non-negative values (one per state), got "
                             f"{list(cfg.fractions)}")


def _renderer(cfg: SimulationConfig, states: _States, params: _Params, D: int, apix: float) -> _Renderer:
    """Discrete states (maps or hinge steps) are projected from their GT maps; a continuous hinge moves the masked
    part rigidly per particle (fixed part + rotated, shifted slice of the moving part; exact rigid motion)."""
    continuous = states.hinge is not None and cfg.hinge.continuous
    return _Renderer(None if continuous else states.gt, states.hinge if continuous else None, params, D, apix,
                     cfg.pad, cfg.bfactor)


def simulate(cfg: SimulationConfig, progress: Callable[[int, int], None] | None = None) -> SimulationResult:
    """Run a simulation (see the module docstring for conventions and outputs). ``progress(done, total)`` is called
    after each chunk (besides the tqdm bar when ``cfg.progress``)."""
    t0 = time.time()
    out = Path(cfg.outdir)
    out.mkdir(parents=True, exist_ok=True)
    if (out / "particles.mrcs").exists() and not cfg.overwrite:
        raise InputError("output folder already holds particles.mrcs (use --overwrite)", out)
    vols, apix_map, names = _load_inputs(cfg)
    _check_hinge(cfg.hinge, len(vols))
    meta = _read_metadata(Path(cfg.from_metadata), cfg) if cfg.from_metadata else None
    map_box = vols[0].shape[-1]
    D, apix_out = _output_grid(cfg, map_box, apix_map, meta)
    resampled = _resample_all(vols, apix_map, D, apix_out)
    n = _n_images(cfg, meta)
    if meta is not None:
        meta = _fit_metadata(meta, n, D, apix_out)
    states = _state_maps(cfg.hinge, resampled, map_box, apix_map, D, apix_out)
    _check_fractions(cfg, states.n_states)

    params = _draw_params(cfg, n, states.n_states, D, apix_out, meta)
    renderer = _renderer(cfg, states, params, D, apix_out)
    # Images are always rendered in the same aligned blocks of BLOCK particles (floating-point results of batched
    # FFTs/matmuls depend on the batch), and chunks are whole blocks: the output is bit-identical for any chunk size.
    chunk = max(1, math.ceil(int(cfg.chunk) / BLOCK)) * BLOCK
    signal_var, cache = _pilot(renderer, n, D)  # noise level from the clean pilot images
    noise_std = 0.0 if math.isinf(cfg.snr) else math.sqrt(signal_var / cfg.snr)

    files = {k: out / v for k, v in OUTPUT_NAMES.items()}
    _write_stack(files["particles"], renderer, cache, n, chunk, D, apix_out, noise_std, cfg.seed, cfg.progress,
                 progress)
    _write_tables(files, out, params, states.gt, n, D, apix_out)
    seconds = time.time() - t0
    settings = _settings(cfg, names=names, apix_map=apix_map, D=D, apix=apix_out, n=n, states=states,
                         labels=params.labels, signal_var=signal_var, noise_std=noise_std,
                         hinge=_hinge_settings(states, resampled[0]), seconds=seconds, files=files)
    atomic_write_json(files["settings"], settings, indent=2, default=str)
    return SimulationResult(outdir=out, n=n, D=D, apix=apix_out, n_states=states.n_states, noise_std=noise_std,
                            signal_var=signal_var, seconds=seconds, files=files)
