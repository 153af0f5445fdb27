"""Particle-image simulator: several states (maps, or a rigid-body hinge motion of one map), uniform SO(3) poses,
CTF, shifts and white noise at a given SNR, streamed to disk.

Image formation (per particle i, all in the symmetrized Hartley domain of box D, see cryofire_app.physics):

    Y_i = C_RELION,i * Slice(V_state(i), rot_i)         C_RELION = -compute_ctf(...)   (C_RELION(0) = +w)
    observed_i = iHT(T_{-t_i}[Y_i]) + noise             (content moved by -t_i; applying +t_i re-centres it)

This reproduces ``relion_project --ctf`` (tests/test_physics_oracles.py): positive density appears white, like
RELION-extracted (contrast-inverted) particles, rlnOriginX/Y = +t (px). cryoDRGN/cryoFIRE-style training with
``C = compute_ctf`` (C(0) = -w) must therefore multiply these images by -1 (cryoDRGN's ``--invert-data``).
Projections use FourierProjector(pad=2, RELION gridding, Nyquist sphere). Pixel values are line integrals in voxel
units of the map (resampled to the output box); the noise level only depends on the requested SNR.

SNR = var(clean images) / var(noise), the clean images' pixel variance over the whole box, measured on the first
``min(N, 1000)`` clean images (including CTF and shifts) before any image is written.

Determinism: every random draw depends only on the seed and on the particle index (never on the chunk size).

Outputs in ``outdir``: particles.mrcs, particles.star (RELION 3.1, optics + particles with poses, CTF and
rlnClassNumber = state + 1), ctf.pkl and poses.pkl (cryoDRGN conventions: trans = t / D), labels.npy (int64 state
per image), labels_continuous.npy (float32 hinge coordinate in [0, 1] = angle / max angle; hinge runs only),
gt_state_{k}.mrc (ground-truth map of each state at the output box and pixel size; for a continuous hinge, maps at
the centres of K equal bins of the coordinate, which are also the labels) and settings.json.

Modules: config (settings, result, demo map), maps (input and state maps), hinge (hinge motion), params (random
parameters, noise), metadata (poses/CTFs of a real dataset), render (clean images), writing (output files),
driver (``simulate``).
"""
from __future__ import annotations

from cryofire_app.simulate.config import (
    BLOCK,
    DEMO_MAP,
    DEMO_MAP_APIX,
    NOISE_BLOCK,
    PILOT_IMAGES,
    HingeConfig,
    SimulationConfig,
    SimulationResult,
    demo_config,
)
from cryofire_app.simulate.driver import simulate
from cryofire_app.simulate.hinge import _Hinge as _Hinge
from cryofire_app.simulate.hinge import auto_hinge_mask, hinge_states
from cryofire_app.simulate.maps import _load_inputs as _load_inputs
from cryofire_app.simulate.maps import resample_map
from cryofire_app.simulate.metadata import _read_metadata as _read_metadata
from cryofire_app.simulate.params import _draw_params as _draw_params
from cryofire_app.simulate.params import _noise as _noise
from cryofire_app.simulate.params import _Params as _Params
from cryofire_app.simulate.render import _Renderer as _Renderer

__all__ = [
    "BLOCK", "NOISE_BLOCK", "PILOT_IMAGES", "DEMO_MAP", "DEMO_MAP_APIX",
    "HingeConfig", "SimulationConfig", "SimulationResult", "demo_config", "simulate",
    "auto_hinge_mask", "hinge_states", "resample_map",
]
