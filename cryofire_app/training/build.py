"""The device and the model a TrainConfig asks for."""
from __future__ import annotations

import torch

from cryofire_app.io.errors import InputError
from cryofire_app.model.cryofire import PRECISIONS, CryoFIRE
from cryofire_app.training.config import TrainConfig

__all__ = ["build_model", "resolve_device"]


def resolve_device(name: str) -> torch.device:
    """"auto" (CUDA when torch sees it, else the CPU), "cpu", "cuda" or "cuda:N"; InputError for anything else or for
    CUDA without a device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda requested but torch sees no CUDA device")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise InputError(f"unknown device {name!r} (use auto, cpu or cuda)")
    return torch.device(name)


def _channels_last(cfg: TrainConfig) -> bool:
    """TrainConfig.channels_last; None = on for CUDA, off on the CPU (there it is 1.3-1.6x faster for the encoder but
    made the napari dock's event loop miss its 100 ms heartbeat in tests/test_gui_train.py)."""
    if cfg.channels_last is not None:
        return bool(cfg.channels_last)
    return cfg.device != "cpu" and torch.cuda.is_available()


def _encoder_kwargs(cfg: TrainConfig) -> dict:
    e = cfg.encoder
    return dict(channels=tuple(e.channels), final_size=e.final_size, hidden=e.hidden, variational=e.variational,
                stem=e.stem, box=e.box, norm=e.norm, rot_head=cfg.rot_head(), grid_dirs=e.grid_dirs,
                grid_psi=e.grid_psi, channels_last=_channels_last(cfg))


def _decoder_kwargs(cfg: TrainConfig) -> dict:
    dc = cfg.decoder
    if dc.arch == "mlp":
        return dict(arch="mlp", pe_dim=dc.pe_dim, feat_sigma=dc.feat_sigma, hidden=dc.hidden, layers=dc.layers)
    if dc.arch == "grid":
        return dict(arch="grid", channels=dc.grid_channels, grid_size=dc.grid_size, hidden=dc.grid_hidden,
                    layers=dc.grid_layers, grid_scale=dc.grid_scale, half_lattice=dc.grid_half_lattice)
    raise InputError(f"unknown decoder arch {dc.arch!r} (mlp or grid)")


def build_model(cfg: TrainConfig, D: int) -> CryoFIRE:
    """The CryoFIRE model of ``cfg`` at training box ``D`` (weights from cfg.seed): encoder, decoder and, for the
    seeded schedule's grid head with encoder.view_dirs > 0, the view encoder."""
    enc = _encoder_kwargs(cfg)
    dec = _decoder_kwargs(cfg)
    if cfg.precision not in PRECISIONS:
        raise InputError(f"unknown precision {cfg.precision!r} (use {', '.join(PRECISIONS)})")
    view = None
    if cfg.encoder.view_dirs > 0 and cfg.schedule == "seeded" and cfg.rot_head() == "grid":
        view = {k: enc[k] for k in ("channels", "final_size", "hidden", "stem", "box", "norm", "channels_last")}
        view["dirs"] = cfg.encoder.view_dirs
    torch.manual_seed(cfg.seed)
    model = CryoFIRE(D, cfg.zdim, enc, dec, seed=cfg.seed, view_kwargs=view)
    if cfg.compile:   # in place: parameter names (checkpoints) stay the same
        model.encoder.compile()
        model.decoder.compile(dynamic=True)   # the point count changes with the mask radius
    return model
