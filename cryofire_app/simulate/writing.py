"""The files of a simulation: the image stack, the metadata tables and labels, the ground-truth maps, settings.json."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from cryofire_app.io import MrcStackWriter, write_ctf_pkl, write_mrc, write_particles_star, write_pose_pkl
from cryofire_app.io.atomic import atomic_save_npy
from cryofire_app.simulate.config import SimulationConfig
from cryofire_app.simulate.maps import _States
from cryofire_app.simulate.params import _noise, _Params
from cryofire_app.simulate.render import _render_chunk, _Renderer

#: file key -> name of the outputs every run writes (labels_continuous.npy and gt_state_{k}.mrc are added later)
OUTPUT_NAMES = dict(particles="particles.mrcs", star="particles.star", ctf="ctf.pkl", poses="poses.pkl",
                    labels="labels.npy", settings="settings.json")

SNR_DEFINITION = "var(clean images over the whole box, first min(N,1000) images) / noise variance"

CONVENTIONS = {
    "images": "relion_project --ctf: image = iFT(C_RELION * slice), C_RELION = -compute_ctf (C(0) = +w); "
              "positive density is white",
    "ctf_pkl": "cryoDRGN rows [D, apix, dfU, dfV, dfang, kV, Cs, w, phase] at the output box",
    "poses_pkl": "cryoDRGN (rot, trans = t / D); rot maps image to volume frame (k_vol = k_img @ rot)",
    "translation": "t in px re-centres the particle (the particle sits at -t); STAR rlnOriginX/YAngst = "
                   "+t * apix",
}


def _write_stack(path: Path, renderer: _Renderer, cache: dict[int, torch.Tensor], n: int, chunk: int, D: int,
                 apix: float, noise_std: float, seed: int, show_bar: bool,
                 progress: Callable[[int, int], None] | None) -> None:
    """Write the n images (float32, D px of ``apix`` A) ``chunk`` particles at a time: clean image plus
    ``noise_std`` x unit noise of the seed's per-block streams; ``progress(done, n)`` after each chunk."""
    bar = None
    if show_bar:
        from tqdm import tqdm
        bar = tqdm(total=n, unit="img", desc="simulate")
    with MrcStackWriter(path, D, apix) as writer, torch.no_grad():
        for a in range(0, n, chunk):
            b = min(n, a + chunk)
            img = _render_chunk(renderer, cache, a, b).numpy()
            if noise_std > 0:
                img = img + noise_std * _noise(seed, a, b, D)
            writer.write(img.astype(np.float32))
            if bar is not None:
                bar.update(b - a)
            if progress is not None:
                progress(b, n)
    if bar is not None:
        bar.close()


def _write_tables(files: dict[str, Path], out: Path, params: _Params, gt: list[torch.Tensor], n: int, D: int,
                  apix: float) -> None:
    """ctf.pkl, poses.pkl (trans = t / D), particles.star (rlnClassNumber = state + 1), labels.npy, for hinge runs
    labels_continuous.npy, and gt_state_{k}.mrc; adds the optional files to ``files``."""
    write_ctf_pkl(files["ctf"], params.ctf.astype(np.float32))
    write_pose_pkl(files["poses"], params.rot.astype(np.float32), (params.trans_px / D).astype(np.float32))
    write_particles_star(files["star"], ("particles.mrcs", n), params.ctf, params.rot, params.trans_px, apix, D,
                         extra_columns={"rlnClassNumber": params.labels + 1})
    atomic_save_npy(files["labels"], params.labels)
    if params.u is not None:
        files["labels_continuous"] = out / "labels_continuous.npy"
        atomic_save_npy(files["labels_continuous"], params.u.astype(np.float32))
    for k, v in enumerate(gt):
        files[f"gt_state_{k}"] = out / f"gt_state_{k}.mrc"
        write_mrc(files[f"gt_state_{k}"], v.float().numpy(), apix=apix)


def _hinge_settings(states: _States, map0: torch.Tensor) -> dict:
    """The hinge's state coordinates, pivot (voxels from the centre, x, y, z), axis and the moving part's share of
    the positive density of ``map0``; None for runs without a hinge."""
    hinge = states.hinge
    return {
        "hinge_states_u": None if states.state_u is None else [float(u) for u in states.state_u],
        "hinge_pivot_voxels_xyz": None if hinge is None else hinge.pivot.tolist(),
        "hinge_axis_xyz": None if hinge is None else hinge.axis.tolist(),
        "hinge_moving_fraction": None if hinge is None else
            float(torch.clamp(hinge.moving, min=0).sum() / torch.clamp(map0, min=0).sum()),
    }


def _settings(cfg: SimulationConfig, *, names: list[str], apix_map: float, D: int, apix: float, n: int,
              states: _States, labels: np.ndarray, signal_var: float, noise_std: float, hinge: dict,
              seconds: float, files: dict[str, Path]) -> dict:
    """The contents of settings.json: the config (without arrays) and what the run derived from it."""
    settings = {k: v for k, v in asdict(cfg).items() if k != "volumes"}
    settings.update({
        "inputs": names, "input_apix": apix_map, "D": D, "apix": apix, "n": n, "n_states": states.n_states,
        "state_counts": np.bincount(labels, minlength=states.n_states).tolist(),
        "signal_var": signal_var, "noise_std": noise_std, "snr_definition": SNR_DEFINITION,
        "conventions": dict(CONVENTIONS),
        **hinge,
        "seconds": seconds, "files": {k: str(v.name) for k, v in files.items()},
    })
    return settings
