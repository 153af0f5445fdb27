"""A run's setup, in the order its random streams depend on: device and process group, the config (a resumed run's
saved one with the new request's device, loaders and length; then resolved for the device), the particles at the
training box, the training / validation split and normalisation, the seed's subset, the model, optimiser, random
streams and state (new, or the checkpoint's), and the bookkeeping of the run folder."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch

from cryofire_app.io.errors import InputError
from cryofire_app.physics.lattice import Lattice
from cryofire_app.training import seeding
from cryofire_app.training.build import build_model, resolve_device
from cryofire_app.training.checkpoint import load_checkpoint
from cryofire_app.training.config import TrainConfig, training_box
from cryofire_app.training.dataset import ParticleData, check_trainable
from cryofire_app.training.parallel import DataParallel
from cryofire_app.training.precision import Precision
from cryofire_app.training.state import TrainState
from cryofire_app.training.synthetic import HeteroRenderer, SeedRenderer

if TYPE_CHECKING:
    from cryofire_app.training.trainer import Trainer

__all__ = ["RESUME_OVERRIDES", "setup"]

# what a resumed run takes from the new request rather than from its checkpoint
RESUME_OVERRIDES = ("device", "num_threads", "particles", "datadir", "ctf", "outdir")


def setup(tr: "Trainer") -> None:
    """Everything a run needs before its first event, in this order (the random streams depend on it)."""
    tr.device = resolve_device(tr.config.device)
    if tr.config.num_threads:
        torch.set_num_threads(tr.config.num_threads)
    tr.par = DataParallel(tr.device)
    tr.device = tr.par.device
    ck = resumed_checkpoint(tr)
    tr.config.validate()   # every field's range and choice, the device (InputError naming the option)
    tr.config = cfg = tr.config.resolved(tr.device.type)   # the caller's config is left as it was
    tr.data = load_data(tr)
    check_trainable(tr.data.N, cfg, cfg.particles or None)   # too few particles: refused before any work
    tr.D = tr.data.D
    setup_split(tr, ck)
    tr.seed_pos = seeding.seed_subset(cfg, tr.train_pos)
    tr.batch = min(cfg.batch_size, len(tr.train_pos))
    if tr.batch % tr.world:
        raise InputError(f"batch size {tr.batch} is not divisible by the {tr.world} processes")
    epochs = cfg.epochs if cfg.epochs is not None else 20
    tr.images_total = (int(cfg.num_images) if cfg.num_images is not None
                       else int(math.ceil(epochs * len(tr.train_pos))))
    setup_model(tr, ck)
    setup_bookkeeping(tr)


def resumed_checkpoint(tr: "Trainer") -> dict | None:
    """On resume, the last checkpoint, and tr.config its saved config with this request's device, loader
    options and (if given) length; else None."""
    if not tr.resume_requested:
        return None
    last = tr.run_dir.last_checkpoint
    ck = load_checkpoint(last)
    saved = TrainConfig.from_dict(ck["config"])
    for k in RESUME_OVERRIDES:
        v = getattr(tr.config, k)
        if v is not None and v != "":
            setattr(saved, k, v)
    if tr.config.num_images is not None or tr.config.epochs is not None:   # a new length replaces the old
        saved.num_images, saved.epochs = tr.config.num_images, tr.config.epochs
    tr.config = saved
    return ck


def load_data(tr: "Trainer") -> ParticleData:
    cfg = tr.config
    ps = tr.particles_given
    if ps is None:
        from cryofire_app.io import load_particles

        if not cfg.particles:
            raise InputError("no particle file given")
        ps = load_particles(cfg.particles, datadir=cfg.datadir, ctf=cfg.ctf)
    try:
        return ParticleData(ps, training_box(ps.images.D, cfg.D), cfg.window_r_in, cfg.window_r_out)
    except ValueError as exc:
        raise InputError(str(exc), cfg.particles) from exc


def split(tr: "Trainer", N: int) -> tuple[np.ndarray, np.ndarray]:
    cfg = tr.config
    n_val = min(cfg.val_max, int(round(cfg.val_fraction * N)))
    n_val = max(0, min(n_val, N - 1))
    perm = np.random.default_rng([cfg.seed, 1]).permutation(N)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def setup_split(tr: "Trainer", ck: dict | None) -> None:
    """The training / validation split and the image normalisation: the checkpoint's, or new ones."""
    cfg = tr.config
    if ck is not None:
        if int(ck["D"]) != tr.D or int(ck["N"]) != tr.data.N:
            raise InputError(f"checkpoint was trained on {int(ck['N'])} particles at box {int(ck['D'])}, "
                             f"this data has {tr.data.N} at box {tr.D}", tr.run_dir.last_checkpoint)
        tr.train_pos, tr.val_pos = ck["train_pos"].numpy(), ck["val_pos"].numpy()
        tr.data.prep.sigma_real = float(ck["sigma_real"])
        tr.data.prep.sigma_ht = float(ck["sigma_ht"])
        return
    tr.train_pos, tr.val_pos = split(tr, tr.data.N)
    rng = np.random.default_rng([cfg.seed, 2])
    sample = rng.choice(tr.train_pos, size=min(cfg.norm_sample, len(tr.train_pos)), replace=False)
    try:
        tr.data.prep.fit_norm(tr.data.images, sample)
    except ValueError as exc:
        raise InputError(str(exc), cfg.particles) from exc


def setup_model(tr: "Trainer", ck: dict | None) -> None:
    """Model, optimiser, random streams, precision and the run's state: new, or the checkpoint's."""
    cfg = tr.config
    tr.model = build_model(cfg, tr.D).to(tr.device)
    # fused Adam (one kernel over all parameters, same update): several times faster per step on the CPU
    tr.optim = torch.optim.Adam(tr.model.parameters(), lr=cfg.lr,
                                  fused=True if tr.device.type in ("cpu", "cuda") else None)
    tr.gen = torch.Generator().manual_seed(cfg.seed + 12345)
    # synthetic distill images (training.synthetic): their own stream per rank, made once the seed exists
    tr.synth_gen = torch.Generator().manual_seed(cfg.seed * 7919 + 54321 + tr.rank)
    tr.synth: SeedRenderer | None = None
    tr.synth_z: HeteroRenderer | None = None   # synthetic images of the seed's states / coordinate bins
    tr.state = TrainState(sign=-1.0 if cfg.invert_data == "yes" else 1.0,
                            contrast_checked=cfg.invert_data != "auto", next_ckpt=cfg.checkpoint_every,
                            next_latents=cfg.latents_every)
    tr.amp = Precision(tr.device, cfg.precision)
    if ck is not None:
        tr.model.load_state_dict(ck["model"])
        tr.optim.load_state_dict(ck["optimizer"])
        tr.gen.set_state(ck["torch_rng"])
        if ck["synth_rng"] is not None and tr.world == 1:
            tr.synth_gen.set_state(ck["synth_rng"])
        tr.state = TrainState.from_checkpoint(ck)
        tr.amp.saved = ck["grad_scaler"]    # fp16's loss scale, restored when the scaler is made
        if tr.seed_done:
            tr.seed = seeding.load_seed(tr)
    tr.reset_run()   # the data-parallel wrapper and the masks belong to the model and box made here
    tr.par.broadcast_weights(tr.model)   # every rank starts from rank 0's weights


def setup_bookkeeping(tr: "Trainer") -> None:
    """Masks, the latest pose / z of every particle (for Latents snapshots), the log."""
    cfg = tr.config
    tr.lattice = Lattice(tr.D)
    N = tr.data.N
    tr.run_rot = np.tile(np.eye(3, dtype=np.float32), (N, 1, 1))
    tr.run_trans = np.zeros((N, 2), np.float32)
    tr.run_z = np.zeros((N, cfg.zdim), np.float32)
    tr.run_seen = np.zeros(N, bool)
    rng = np.random.default_rng([cfg.seed, 3])
    tr.latent_pos = np.sort(rng.permutation(tr.train_pos)[: cfg.latents_subset])
    tr.log_file = None
    if tr.rank == 0:
        tr.run_dir.checkpoints.mkdir(parents=True, exist_ok=True)
        cfg_out = TrainConfig.from_dict(cfg.to_dict())
        cfg_out.D = tr.D
        cfg_out.save(tr.run_dir.config)
        tr.log_file = open(tr.run_dir.log, "a", buffering=1)
