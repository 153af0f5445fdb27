"""The trainer: `Trainer(config).run()` is a generator of events (training/events.py, docs/design.md).

Schedule (all counts in images, so it does not depend on the batch size):
- pose-only phase while images_seen < pose_only_images: the decoder gets z = std_z_init * N(0, I) (the z head is
  bypassed), so it fits a consensus volume; then joint training with z from the encoder;
- frequency marching: mask radius = min(freq_start + images_seen // freq_add_every, freq_max or D//2) pixels;
- symmetric loss (minimum over the image and its exact mirror, both branches in one batched pass);
- a checkpoint every `checkpoint_every` images and at the end (atomic; checkpoints/last.pt + numbered copies),
  each with the held-out validation loss and the pose / z change on the validation set since the previous one;
- a final eval-mode pass over every particle writes pose.pkl, z.pkl (cryoDRGN formats) and latents.npz.

Resume continues exactly: images seen, step, phase and mask radius (functions of images seen), optimizer, RNG, split,
normalization, data sign. The epoch order is a pure function of (seed, epoch).
Data-parallel: under torchrun (WORLD_SIZE > 1) the model is wrapped in DistributedDataParallel; each rank takes
rows rank::world of every global batch and draws the same random numbers for the whole global batch, so the result
matches one process on the same global batch. Rank 0 writes all files and runs the seed's pose search alone (on at
most seed_max_particles particles), then broadcasts it; the other ranks wait instead of repeating it.
"""
from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
import zipfile
from pathlib import Path
from typing import Any, Generator, Iterator

import numpy as np
import torch

from cryofire_app.io.errors import InputError
from cryofire_app.io.rundir import RunDir
from cryofire_app.model.cryofire import (
    PRECISIONS,
    CryoFIRE,
    MaskPoints,
    autocast_context,
    compensate_mirror,
    mask_points,
)
from cryofire_app.physics.inplane import rotate_poses
from cryofire_app.physics.lattice import Lattice
from cryofire_app.physics.rotations import geodesic_angle
from cryofire_app.training.checkpoint import CHECKPOINT_FORMAT, atomic_save_npz, atomic_torch_save, load_checkpoint
from cryofire_app.training.config import TrainConfig, training_box
from cryofire_app.training.dataset import ParticleData, Prefetcher, batch_schedule, check_trainable
from cryofire_app.training.events import (
    Checkpoint,
    Failed,
    Finished,
    Latents,
    Message,
    PhaseChange,
    SeedProgress,
    Started,
    Step,
    event_to_json,
)
from cryofire_app.training.inference import default_turns, predict
from cryofire_app.training.losses import kl_normal, symmetric_min
from cryofire_app.training.synthetic import HeteroRenderer, SeedRenderer

log = logging.getLogger(__name__)

SCHEDULES = ("seeded", "amortized")
# torchrun: how long the other ranks may wait for rank 0's seed (and any collective) before the run is abandoned
SEED_WAIT_HOURS = 24
# the phases' names in PhaseChange texts
PHASE_NAMES = {"seed": "ab initio seed", "distill": "distilling the seed into the encoder",
               "pose_only": "pose-only training (one consensus map)", "joint": "joint training of poses and z"}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda requested but torch sees no CUDA device")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise InputError(f"unknown device {name!r} (use auto, cpu or cuda)")
    return torch.device(name)


def _channels_last(cfg: TrainConfig) -> bool:
    """TrainConfig.channels_last; None = on for CUDA, off on the CPU (there it is 1.3-1.6x faster for the encoder
    but made the napari dock's event loop miss its 100 ms heartbeat in 3 of 5 runs of tests/test_gui_train.py)."""
    if cfg.channels_last is not None:
        return bool(cfg.channels_last)
    return cfg.device != "cpu" and torch.cuda.is_available()


def build_model(cfg: TrainConfig, D: int) -> CryoFIRE:
    enc = dict(channels=tuple(cfg.encoder.channels), final_size=cfg.encoder.final_size, hidden=cfg.encoder.hidden,
               variational=cfg.encoder.variational, stem=cfg.encoder.stem, box=cfg.encoder.box,
               norm=cfg.encoder.norm, rot_head=cfg.rot_head(), grid_dirs=cfg.encoder.grid_dirs,
               grid_psi=cfg.encoder.grid_psi,
               channels_last=_channels_last(cfg))
    dc = cfg.decoder
    if dc.arch == "mlp":
        dec = dict(arch="mlp", pe_dim=dc.pe_dim, feat_sigma=dc.feat_sigma, hidden=dc.hidden, layers=dc.layers)
    elif dc.arch == "grid":
        dec = dict(arch="grid", channels=dc.grid_channels, grid_size=dc.grid_size, hidden=dc.grid_hidden,
                   layers=dc.grid_layers, grid_scale=dc.grid_scale, half_lattice=dc.grid_half_lattice)
    else:
        raise InputError(f"unknown decoder arch {dc.arch!r} (mlp or grid)")
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


def mask_radius_at(cfg: TrainConfig, D: int, images_seen: int) -> int:
    """Frequency-mask radius (px): marching for "amortized"; fixed at freq_max (or D//2) for "seeded"."""
    rmax = D // 2 if cfg.freq_max is None else min(cfg.freq_max, D // 2)
    if cfg.schedule == "seeded":
        return int(rmax)
    return int(min(cfg.freq_start + images_seen // max(cfg.freq_add_every, 1), rmax))


def lr_at(cfg: TrainConfig, images_seen: int, images_total: int) -> float:
    """Learning rate for the step that starts at `images_seen` (see TrainConfig.lr_schedule)."""
    if cfg.lr_schedule == "constant":
        return cfg.lr
    if cfg.lr_schedule != "cosine":
        raise InputError(f"unknown lr_schedule {cfg.lr_schedule!r} (constant or cosine)")
    frac = min(images_seen / max(images_total, 1), 1.0)
    warm = 0.05
    if frac < warm:
        return cfg.lr * (1 / 25 + (1 - 1 / 25) * frac / warm)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * (frac - warm) / (1 - warm)))


def distill_lr_factor(cfg: TrainConfig, images_seen: int, distill_images: int) -> float:
    """Factor on the distill phase's learning rate at `images_seen`: 1 until the fraction distill_decay_from of the
    distill images, then a cosine down to seeded_joint_lr_scale (the joint phase's factor) at their end, held after."""
    a = cfg.distill_decay_from * distill_images
    if images_seen <= a or distill_images <= a:
        return 1.0
    frac = min((images_seen - a) / (distill_images - a), 1.0)
    lo = cfg.seeded_joint_lr_scale
    return lo + (1.0 - lo) * 0.5 * (1.0 + math.cos(math.pi * frac))


def grid_width_at(cfg: TrainConfig, images_seen: int, distill_images: int) -> float:
    """Width of the grid head's distill target (view spacings) at `images_seen`: 1, narrowing linearly to
    cfg.distill_grid_width between the fractions distill_narrow_from and distill_narrow_to of the distill images."""
    a, b = cfg.distill_narrow_from * distill_images, cfg.distill_narrow_to * distill_images
    frac = 1.0 if images_seen >= b else (0.0 if images_seen <= a else (images_seen - a) / (b - a))
    return 1.0 + (cfg.distill_grid_width - 1.0) * frac


class Trainer:
    """Run with `for ev in Trainer(cfg).run(): ...`. Thread-safe controls: request_stop(), pause(), resume()."""

    def __init__(self, config: TrainConfig, resume: bool = False, particles=None):
        """particles: an already loaded io.ParticleSet (else config.particles/ctf/datadir are loaded)."""
        self.config = config
        self._particles = particles
        self.resume_requested = resume
        self.outdir = Path(config.outdir)
        self._stop = threading.Event()
        self._go = threading.Event()
        self._go.set()
        self.images_seen = 0
        self.step = 0
        self.model: CryoFIRE | None = None
        self.last_checkpoint: Path | None = None

    # ---- controls (callable from any thread) ----------------------------------------------------------------------
    def request_stop(self) -> None:
        self._stop.set()
        self._go.set()

    def pause(self) -> None:
        self._go.clear()

    def resume(self) -> None:
        self._go.set()

    @property
    def paused(self) -> bool:
        return not self._go.is_set()

    # ---- setup --------------------------------------------------------------------------------------------------
    def _setup_distributed(self) -> None:
        import torch.distributed as dist

        self.world, self.rank = 1, 0
        if not dist.is_available():
            return
        if not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            import datetime

            backend = "nccl" if self.device.type == "cuda" else "gloo"
            # the other ranks wait while rank 0 runs the seed (_share_seed), which can outlast the default 30 min
            dist.init_process_group(backend, timeout=datetime.timedelta(hours=SEED_WAIT_HOURS))
        if dist.is_initialized():
            self.world, self.rank = dist.get_world_size(), dist.get_rank()
            if self.device.type == "cuda":
                self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", self.rank)))
                torch.cuda.set_device(self.device)

    def _load_data(self):
        cfg = self.config
        ps = self._particles
        if ps is None:
            from cryofire_app.io import load_particles

            if not cfg.particles:
                raise InputError("no particle file given")
            ps = load_particles(cfg.particles, datadir=cfg.datadir, ctf=cfg.ctf)
        try:
            return ParticleData(ps, training_box(ps.images.D, cfg.D), cfg.window_r_in, cfg.window_r_out)
        except ValueError as exc:
            raise InputError(str(exc), cfg.particles) from exc

    def _split(self, N: int) -> tuple[np.ndarray, np.ndarray]:
        cfg = self.config
        n_val = min(cfg.val_max, int(round(cfg.val_fraction * N)))
        n_val = max(0, min(n_val, N - 1))
        perm = np.random.default_rng([cfg.seed, 1]).permutation(N)
        return np.sort(perm[n_val:]), np.sort(perm[:n_val])

    def _setup(self) -> None:
        cfg = self.config
        self.device = resolve_device(cfg.device)
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        self._setup_distributed()
        ck = None
        last = self.run_dir.last_checkpoint
        if self.resume_requested:
            ck = load_checkpoint(last)
            saved = TrainConfig.from_dict(ck["config"])
            # keep the saved model/schedule; take length, device and loader options from the new request
            for k in ("device", "num_threads", "particles", "datadir", "ctf", "outdir"):
                v = getattr(cfg, k)
                if v is not None and v != "":
                    setattr(saved, k, v)
            if cfg.num_images is not None or cfg.epochs is not None:   # a new length replaces the old one
                saved.num_images, saved.epochs = cfg.num_images, cfg.epochs
            self.config = cfg = saved
        cfg.validate()   # every field's range and choice, the device (InputError naming the option)
        if cfg.schedule not in SCHEDULES:
            raise InputError(f"unknown schedule {cfg.schedule!r} (use {' or '.join(SCHEDULES)})")
        if not 0 < cfg.distill_grid_width <= 1 or not 0 <= cfg.distill_narrow_from <= cfg.distill_narrow_to <= 1:
            raise InputError(f"distill_grid_width must lie in (0, 1] and 0 <= distill_narrow_from <= distill_narrow_to "
                             f"<= 1; got {cfg.distill_grid_width:g}, {cfg.distill_narrow_from:g}, "
                             f"{cfg.distill_narrow_to:g}")
        if not 0 <= cfg.distill_decay_from <= 1:
            raise InputError(f"distill_decay_from must lie in [0, 1]; got {cfg.distill_decay_from:g}")
        if not 0 <= cfg.distill_synth_ratio <= 4:
            raise InputError(f"distill_synth_ratio (synthetic images per real image) must lie in [0, 4]; got "
                             f"{cfg.distill_synth_ratio:g}")
        self.config = cfg = cfg.resolved(self.device.type)   # the caller's config is left as it was
        self.data = self._load_data()
        check_trainable(self.data.N, cfg, cfg.particles or None)   # too few particles: refused before any work
        D = self.data.D
        self.D, self.Dl = D, D + 1
        if ck is not None:
            if int(ck["D"]) != D or int(ck["N"]) != self.data.N:
                raise InputError(f"checkpoint was trained on {int(ck['N'])} particles at box {int(ck['D'])}, "
                                 f"this data has {self.data.N} at box {D}", last)
            self.train_pos = ck["train_pos"].numpy()
            self.val_pos = ck["val_pos"].numpy()
            self.data.prep.sigma_real = float(ck["sigma_real"])
            self.data.prep.sigma_ht = float(ck["sigma_ht"])
        else:
            self.train_pos, self.val_pos = self._split(self.data.N)
            rng = np.random.default_rng([cfg.seed, 2])
            sample = rng.choice(self.train_pos, size=min(cfg.norm_sample, len(self.train_pos)), replace=False)
            try:
                self.data.prep.fit_norm(self.data.images, sample)
            except ValueError as exc:
                raise InputError(str(exc), cfg.particles) from exc
        self.seed_pos = self._seed_subset()
        self.batch = min(cfg.batch_size, len(self.train_pos))
        if self.batch % self.world:
            raise InputError(f"batch size {self.batch} is not divisible by the {self.world} processes")
        if cfg.num_images is not None:
            self.images_total = int(cfg.num_images)
        else:
            self.images_total = int(math.ceil((cfg.epochs if cfg.epochs is not None else 20) * len(self.train_pos)))

        self.model = build_model(cfg, D).to(self.device)
        # fused Adam (one kernel over all parameters, same update): ~5x faster per step than the default per-tensor
        # loop on this CPU (11 vs 59 ms at one thread, 5.6 M parameters all with gradients); in a distill step, where
        # the decoder has gradients every 4th step only, the gain is within the machine's drift (distill_step.py)
        self.optim = torch.optim.Adam(self.model.parameters(), lr=cfg.lr,
                                      fused=True if self.device.type in ("cpu", "cuda") else None)
        self.gen = torch.Generator().manual_seed(cfg.seed + 12345)
        # synthetic distill images (training.synthetic): their own stream per rank, made once the seed exists
        self.synth_gen = torch.Generator().manual_seed(cfg.seed * 7919 + 54321 + self.rank)
        self.synth: SeedRenderer | None = None
        self.synth_z: HeteroRenderer | None = None   # synthetic images of the seed's states / coordinate bins
        self.sign = -1.0 if cfg.invert_data == "yes" else 1.0
        self.contrast_checked = cfg.invert_data != "auto"
        self.prev_val: dict | None = None
        self.next_ckpt = cfg.checkpoint_every
        self.next_latents = cfg.latents_every
        self.seed_done = False
        self._announced: str | None = None   # the phase the last PhaseChange event announced
        self.joint_ok = False          # seeded: the encoder has reproduced the seed's poses (see seed_agreement_deg)
        self.agreement_deg: float | None = None
        self.next_agreement = 0
        self.seed_pose_fraction = 0.0
        self.seed: dict | None = None
        self._scaler: torch.amp.GradScaler | None = None   # fp16 only, made on first use (_grad_scaler)
        self._scaler_state: dict | None = None
        if ck is not None:
            self.model.load_state_dict(ck["model"])
            self.optim.load_state_dict(ck["optimizer"])
            self.gen.set_state(ck["torch_rng"])
            if ck.get("synth_rng") is not None and self.world == 1:
                self.synth_gen.set_state(ck["synth_rng"])
            self.images_seen, self.step = int(ck["images_seen"]), int(ck["step"])
            self.sign = float(ck["data_sign"])
            self.contrast_checked = bool(ck["contrast_checked"])
            self.prev_val = ck.get("prev_val")
            self.next_ckpt = int(ck["next_ckpt"])
            self.next_latents = int(ck["next_latents"])
            self.seed_done = bool(ck.get("seed_done", False))
            self.joint_ok = bool(ck.get("joint_ok", True))
            self.agreement_deg = ck.get("agreement_deg")
            self.next_agreement = int(ck.get("next_agreement", 0))
            self._scaler_state = ck.get("grad_scaler")    # fp16's loss scale, restored when the scaler is made
            if self.seed_done:
                self.seed = self._load_seed()
        self._ddp: torch.nn.Module | None = None
        if self.world > 1:   # every rank starts from rank 0's weights (DDP, made later, would do this itself)
            import torch.distributed as dist

            for t in self.model.state_dict().values():
                dist.broadcast(t, src=0)
        self._mask_cache: dict[int, MaskPoints] = {}
        self.lattice = Lattice(D)
        N, d = self.data.N, cfg.zdim
        self.run_rot = np.tile(np.eye(3, dtype=np.float32), (N, 1, 1))
        self.run_trans = np.zeros((N, 2), np.float32)
        self.run_z = np.zeros((N, d), np.float32)
        self.run_seen = np.zeros(N, bool)
        rng = np.random.default_rng([cfg.seed, 3])
        self.latent_pos = np.sort(rng.permutation(self.train_pos)[: cfg.latents_subset])
        if self.rank == 0:
            self.run_dir.checkpoints.mkdir(parents=True, exist_ok=True)
            cfg_out = TrainConfig.from_dict(cfg.to_dict())
            cfg_out.D = D
            cfg_out.save(self.run_dir.config)
            self._log = open(self.run_dir.log, "a", buffering=1)
        else:
            self._log = None

    # ---- helpers ------------------------------------------------------------------------------------------------
    def _announce(self, phase: str, text: str | None = None) -> PhaseChange:
        """The PhaseChange event of entering ``phase`` now (``text``: the default names the phase and the count)."""
        self._announced = phase
        return self._emit(PhaseChange(phase, self.images_seen, text or f"{PHASE_NAMES.get(phase, phase)} from "
                                                                       f"{self.images_seen} images"))

    def _emit(self, ev):
        if self._log is not None:
            self._log.write(json.dumps(event_to_json(ev)) + "\n")
        return ev

    def mask(self, radius: int) -> MaskPoints:
        if radius not in self._mask_cache:
            self._mask_cache[radius] = mask_points(self.lattice, radius, self.device)
        return self._mask_cache[radius]

    @property
    def phase(self) -> str:
        """amortized: "pose_only" then "joint"; seeded: "seed", "distill", then "joint"."""
        cfg = self.config
        if cfg.schedule == "seeded":
            if not self.seed_done:
                return "seed"
            return "distill" if self.images_seen < self.distill_images or not self.joint_ok else "joint"
        return "pose_only" if self.images_seen < cfg.pose_only_images else "joint"

    @property
    def distill_images(self) -> int:
        return int(round(self.config.distill_fraction * self.images_total))

    @property
    def sym(self) -> bool:
        """Symmetric loss in the current schedule."""
        return self.config.sym_loss if self.config.schedule == "amortized" else self.config.seeded_sym_loss

    @property
    def ddp(self) -> torch.nn.Module:
        """The model for the joint / pose-only forward: itself, or (torchrun) its DistributedDataParallel wrapper, made
        on first use. Not before: the distill steps run the model outside DDP and average gradients by hand, and a
        wrapper that existed then would count the parameters they used (the view encoder) as used by the next
        synchronised step, which fails when that step leaves them without a gradient."""
        if self.world == 1:
            return self.model
        if self._ddp is None:
            from torch.nn.parallel import DistributedDataParallel as DDP

            self._ddp = DDP(self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                            find_unused_parameters=True)
        return self._ddp

    def _allreduce_mean(self, x: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            import torch.distributed as dist

            x = x.clone()
            dist.all_reduce(x)
            x /= self.world
        return x

    def _barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    # ---- one optimizer step ----------------------------------------------------------------------------------------
    def train_step(self, b) -> float:
        """One step on the local rows of a global batch; returns the global mean loss (nan/inf: nothing updated)."""
        cfg = self.config
        pose_only = self.phase == "pose_only"
        sym = self.sym
        mp = self.mask(mask_radius_at(cfg, self.D, self.images_seen))
        S = 2 if sym else 1
        y_real = b.y_real.to(self.device, non_blocking=True) * self.sign
        Y = b.Y.to(self.device, non_blocking=True) * self.sign
        ctf = b.ctf.to(self.device) if b.ctf is not None else None
        n = y_real.shape[0]
        eps = torch.randn(S, self.batch, max(cfg.zdim, 1), generator=self.gen)[:, self.rank::self.world, : cfg.zdim]
        eps = eps.reshape(S * n, cfg.zdim).to(self.device)
        lr = lr_at(cfg, self.images_seen, self.images_total)
        if cfg.schedule == "seeded":   # fine-tuning of the distilled model
            lr *= cfg.seeded_joint_lr_scale
        for grp in self.optim.param_groups:
            grp["lr"] = lr
        self.model.train()
        ang = None if sym else self._inplane_angles()
        if ang is not None:
            ang = ang.to(self.device)
        with self._autocast():
            err, enc = self.ddp(y_real, Y, ctf, mp, pose_only, eps, cfg.std_z_init, sym, inplane=ang)
        loss, branch = symmetric_min(err)
        rows = branch * n + torch.arange(n, device=branch.device)
        if cfg.encoder.variational and not pose_only and cfg.beta > 0 and cfg.zdim > 0:
            kl = kl_normal(enc["z_mu"][rows], enc["z_logvar"][rows])
            loss = loss + cfg.beta * kl.mean() / (self.Dl ** 2)
        gloss = float(self._allreduce_mean(loss.detach()))
        if not math.isfinite(gloss):
            self.optim.zero_grad(set_to_none=True)
            return gloss
        self.optim.zero_grad(set_to_none=True)
        self._backward(loss)
        self._optimizer_step()
        with torch.no_grad():  # activated-path bookkeeping (compensated), for Latents snapshots
            rot, trans = enc["rot"].detach(), enc["trans"].detach()
            if S == 2:
                r1, t1 = compensate_mirror(rot[n:], trans[n:])
                m = (branch == 1)
                rot = torch.where(m[:, None, None], r1, rot[:n])
                trans = torch.where(m[:, None], t1, trans[:n])
            z = enc["z_mu"].detach()[rows] if cfg.zdim > 0 else enc["z_mu"][:n]
            self.run_rot[b.pos] = rot.float().cpu().numpy()
            self.run_trans[b.pos] = trans.float().cpu().numpy()
            self.run_z[b.pos] = z.float().cpu().numpy()
            self.run_seen[b.pos] = True
        return gloss

    @property
    def augment(self) -> bool:
        """In-plane augmentation of the encoder's input (TrainConfig.augment_inplane; None: seeded schedule only)."""
        return self.config.augments_inplane()

    def _inplane_angles(self) -> torch.Tensor | None:
        """(local batch,) random in-plane angles in radians (drawn for the global batch, sliced per rank), or None."""
        if not self.augment:
            return None
        return (torch.rand(self.batch, generator=self.gen) * (2 * math.pi))[self.rank::self.world]

    def _autocast(self):
        """Mixed-precision context of TrainConfig.precision (fp32: none)."""
        try:
            return autocast_context(self.device, self.config.precision)
        except ValueError as exc:
            raise InputError(str(exc)) from exc

    def _backward(self, loss: torch.Tensor) -> None:
        """loss.backward(), scaled for fp16 (the GradScaler of TrainConfig.precision)."""
        scaler = self._grad_scaler()
        (scaler.scale(loss) if scaler is not None else loss).backward()

    def _optimizer_step(self) -> None:
        """Adam step; with fp16 through the scaler, which skips steps with inf/nan gradients."""
        scaler = self._grad_scaler()
        if scaler is not None:
            scaler.step(self.optim)
            scaler.update()
        else:
            self.optim.step()

    def _grad_scaler(self):
        """torch.amp.GradScaler for fp16 (created on first use), else None."""
        if self.config.precision != "fp16":
            return None
        if self._scaler is None:
            self._scaler = torch.amp.GradScaler(self.device.type)
            if self._scaler_state:    # resumed: the loss scale (and its growth count) as the run left them
                self._scaler.load_state_dict(self._scaler_state)
        return self._scaler

    def distill_step(self, b) -> float:
        """Seeded "distill" step: encoder supervised on the seeded poses (r6 head: chordal |R - R_seed|_F^2; grid head:
        cross-entropy against the seed's pose on the rotation grid; translation in px,
        z_0 on the standardized seed state score) and decoder fit with the seeded poses fixed (no mirror branch);
        the view encoder, if any, on the same pose rows (model.view, TrainConfig.distill_view_rows)."""
        cfg = self.config
        sd = self.seed
        mp = self.mask(mask_radius_at(cfg, self.D, self.images_seen))
        y_real = b.y_real.to(self.device, non_blocking=True) * self.sign
        Y = b.Y.to(self.device, non_blocking=True) * self.sign
        ctf = b.ctf.to(self.device) if b.ctf is not None else None
        pos = torch.as_tensor(b.pos)
        R_s = sd["rot_t"][pos].to(self.device)
        t_s = sd["trans_t"][pos].to(self.device)
        has = sd["has_t"][pos].to(self.device).float()
        ang = self._inplane_angles()
        if ang is not None:
            ang = ang[: len(pos)].to(self.device)
        lr = lr_at(cfg, self.images_seen, self.images_total) * distill_lr_factor(cfg, self.images_seen,
                                                                                 self.distill_images)
        for grp in self.optim.param_groups:
            grp["lr"] = lr
        self.model.train()
        self.optim.zero_grad(set_to_none=True)
        # the encoder/decoder are called outside the DDP wrapper (see `ddp`): gradients averaged by hand below
        with self._autocast():   # the same precision as train_step (the physics stays fp32 inside the model)
            loss = self._distill_loss(y_real, Y, ctf, pos, R_s, t_s, has, mp, ang)
        gloss = float(self._allreduce_mean(loss.detach()))
        if not math.isfinite(gloss):
            return gloss
        self._backward(loss)
        if self.world > 1:
            import torch.distributed as dist

            for p in self.model.parameters():
                if p.grad is not None:
                    dist.all_reduce(p.grad)
                    p.grad /= self.world
        self._optimizer_step()
        return gloss

    def _distill_loss(self, y_real, Y, ctf, pos, R_s, t_s, has, mp, ang=None) -> torch.Tensor:
        """``ang (n,)``: the encoder reads the poses from the images turned in plane by these radians, turned back
        (CryoFIRE.encode_turned; |Q3^T R - R_s| = |R - Q3 R_s|, so this is the loss against the turned targets)."""
        cfg, sd = self.config, self.seed
        n = len(pos)
        ns = self._synth_rows(n) if ang is not None else 0
        z_synth = None
        # pose rows: the n real images turned, then ns synthetic images (exact poses, not turned: uniform already)
        R_p, t_p, has_p, ang_p, y_pose = R_s, t_s, has, ang, None
        if ns:
            with torch.autocast(self.device.type, enabled=False):   # physics in fp32
                if self.synth_z is not None:
                    xs, Rs, ts, z_synth = self.synth_z.render(ns, self.synth_gen)
                else:
                    xs, Rs, ts = self.synth.render(ns, self.synth_gen)
            y_pose = torch.cat([y_real, xs.to(y_real.dtype)])
            R_p, t_p = torch.cat([R_s, Rs.to(R_s.dtype)]), torch.cat([t_s, ts.to(t_s.dtype)])
            has_p, ang_p = torch.cat([has, has.new_ones(ns)]), torch.cat([ang, ang.new_zeros(ns)])
        enc = (self.model.encode_turned(y_real, ang_p, pose_as_given=False, pose_images=y_pose) if ang is not None
               else self.model.encoder(y_real))
        z = enc["z_mu"]
        if "z_logvar" in enc:
            eps = torch.randn(self.batch, max(cfg.zdim, 1), generator=self.gen)[self.rank::self.world, : cfg.zdim]
            z = z + eps.to(self.device) * torch.exp(0.5 * enc["z_logvar"])
        nh = has.sum().clamp(min=1.0)
        recon = y_real.new_zeros(())
        if self.step % max(cfg.distill_decoder_every, 1) == 0:   # the decoder with the seeded poses fixed
            z_dec = z
            if cfg.distill_decoder_seed_z and cfg.zdim > 0 and sd.get("z_t") is not None:
                zt = sd["z_t"][pos].to(self.device)
                zt = torch.cat([zt, zt.new_zeros(len(zt), cfg.zdim - zt.shape[1])], 1).to(z.dtype)
                z_dec = torch.where(has[:, None] > 0, zt, z)
            err = self.model.branch_errors(Y, ctf, {"rot": R_s, "trans": t_s}, z_dec, mp, sym=False)[0]
            recon = (err * has).sum() / nh
        nh_p = has_p.sum().clamp(min=1.0)
        if "rot_logits" in enc:   # grid head: cross-entropy against the seed's pose of the image the encoder read
            R_read = R_p if ang is None else rotate_poses(R_p, t_p, ang_p)[0]
            width = grid_width_at(cfg, self.images_seen, self.distill_images)
            rot_l = (self.model.encoder.grid_loss(enc["rot_logits"], R_read, width) * has_p).sum() / nh_p
            if self.model.view is not None and cfg.distill_view_rows > 0:   # the view encoder (model.view) on the
                # same pose rows, as given: it turns them into their view's frame itself
                x_v = y_real if y_pose is None else y_pose
                v = self._view_rows(n, ns)
                v_l = self.model.view.loss(x_v[v], R_p[v], t_p[v], width, self.synth_gen) * has_p[v]
                rot_l = rot_l + v_l.sum() / has_p[v].sum().clamp(min=1.0)
        else:
            rot_l = (((enc["rot"] - R_p) ** 2).sum((1, 2)) * has_p).sum() / nh_p
        tr_l = (((enc["trans"] - t_p) ** 2).sum(1) * has_p).sum() / nh_p
        loss = recon + cfg.distill_rot_weight * rot_l + cfg.distill_trans_weight * tr_l
        if cfg.zdim > 0 and sd.get("z_t") is not None and cfg.distill_z_weight > 0:
            tgt = sd["z_t"][pos].to(self.device)
            # z_0..z_{q-1} learn the seed's heterogeneity coordinates; the others, which have no target, are held at
            # 0 so that they do not drift into a large nuisance direction before the joint phase can give them a use
            zt = torch.cat([tgt, enc["z_mu"].new_zeros(len(tgt), cfg.zdim - tgt.shape[1])], 1)
            zerr = ((enc["z_mu"] - zt) ** 2).sum(1)
            if "z_turned" in enc:   # the real rows' turned copies
                zerr = 0.5 * (zerr + ((enc["z_turned"][:n] - zt) ** 2).sum(1))
            loss = loss + cfg.distill_z_weight * (zerr * has).sum() / nh
            if z_synth is not None and "z_turned" in enc:   # synthetic images of a known state / coordinate bin
                zs = torch.cat([z_synth, z_synth.new_zeros(len(z_synth), cfg.zdim - z_synth.shape[1])], 1)
                loss = loss + cfg.distill_z_weight * ((enc["z_turned"][n:] - zs.to(enc["z_turned"].dtype)) ** 2
                                                      ).sum(1).mean()
        if cfg.encoder.variational and cfg.beta > 0 and cfg.zdim > 0:
            loss = loss + cfg.beta * kl_normal(enc["z_mu"], enc["z_logvar"]).mean() / (self.Dl ** 2)
        with torch.no_grad():   # bookkeeping for Latents snapshots (positions are numpy, as in train_step)
            p = pos.numpy()                # the real rows (the first n)
            self.run_rot[p] = enc["rot"][:n].detach().float().cpu().numpy()
            self.run_trans[p] = enc["trans"][:n].detach().float().cpu().numpy()
            self.run_z[p] = enc["z_mu"].detach().float().cpu().numpy()
            self.run_seen[p] = True
        return loss

    def _view_rows(self, n: int, ns: int) -> torch.Tensor:
        """Indices of the pose rows (``n`` real, then ``ns`` synthetic) the view encoder reads: the first
        ``distill_view_rows`` of each kind."""
        f = min(max(self.config.distill_view_rows, 0.0), 1.0)
        k, ks = math.ceil(f * n), math.ceil(f * ns)
        return torch.cat([torch.arange(k), n + torch.arange(ks)]).to(self.device)

    def _synth_rows(self, n: int) -> int:
        """Synthetic pose rows added to a distill step of ``n`` real images (0 without a renderer)."""
        if self.synth is None:
            return 0
        return int(round(self.config.distill_synth_ratio * n))

    def _prepare_synth(self) -> Iterator:
        """Fit the synthetic-image renderer to the seed's map and the data (distill phase, in-plane augmentation,
        distill_synth_ratio > 0); a map that does not explain the data leaves the distill on real images."""
        if self.synth is not None or self.seed is None or self.config.distill_synth_ratio <= 0 or not self.augment:
            return
        sd = self.seed
        try:
            self.synth = SeedRenderer.fit(sd["volume"], self.data, sd["pos"], sd["rot"], sd["trans"],
                                          sign=self.sign, device=self.device).limit_band(self.model.encoder.box)
        except ValueError as exc:
            yield self._emit(Message("warning", f"synthetic distill images off: {exc}"))
            return
        ratio = self.config.distill_synth_ratio
        yield self._emit(Message("info", f"synthetic distill images: {ratio:g} per real image, from the seed's map "
                                         f"(amplitude {self.synth.amplitude:.3g}, noise spectrum fitted on "
                                         f"{self.synth.fit_images} particles)"))
        if self.config.distill_synth_z and self.config.zdim > 0 and sd.get("z_t") is not None:
            try:
                self.synth_z = self._hetero_renderer()
            except ValueError as exc:
                yield self._emit(Message("info", f"synthetic images of the seed's heterogeneity off: {exc}"))
                return
            if self.synth_z is not None:
                yield self._emit(Message("info", f"synthetic distill images drawn from {len(self.synth_z.renderers)} "
                                                 "maps of the seed's states or coordinate bins, with their z"))

    def _hetero_renderer(self) -> HeteroRenderer | None:
        """Maps of the seed's states (K >= 2) or of ``distill_synth_z_bins`` k-means bins of its coordinates,
        reconstructed at the seed's poses (reconstruct.final), as synthetic-image renderers with each group's mean z
        target; None when the seed found no heterogeneity or too few particles for two groups."""
        from sklearn.cluster import KMeans

        from cryofire_app.reconstruct.final import chunk_size, final_maps

        sd, cfg = self.seed, self.config
        pos = np.asarray(sd["pos"], np.int64)
        zt = sd["z_t"][torch.as_tensor(pos)].numpy().astype(np.float64)
        state = np.asarray(sd["state"], np.int64)
        if state.size == len(pos) and state.max() >= 1:
            groups = state
        else:
            bins = min(cfg.distill_synth_z_bins, len(pos) // 100)
            if bins < 2:
                return None
            groups = KMeans(bins, n_init=4, random_state=cfg.seed).fit_predict(zt).astype(np.int64)
        K = int(groups.max()) + 1
        targets = np.stack([zt[groups == k].mean(0) if np.any(groups == k) else np.zeros(zt.shape[1])
                            for k in range(K)])
        ctf = self.data.ctf.numpy()[pos] if self.data.ctf is not None else None
        fm = final_maps(lambda rows: self.data.resized_images(pos[rows]), len(pos), ctf, sd["rot"], sd["trans"],
                        state=groups, seed=cfg.seed, chunk=chunk_size(self.D))
        vols = self.sign * np.asarray(fm.state_volumes, np.float32)
        return HeteroRenderer.fit(vols, groups, targets, self.data, pos, sd["rot"], sd["trans"], sign=self.sign,
                                  device=self.device).limit_band(self.model.encoder.box)

    # ---- seeding (schedule "seeded") ----------------------------------------------------------------------------
    @property
    def run_dir(self) -> RunDir:
        """Every file of the run folder."""
        return RunDir(self.outdir)

    def _seed_arrays(self, pos, rot, trans, score, coords=None) -> dict:
        """Full-size (N) torch lookups of the seed's per-particle results (identity/zero where not seeded). ``z_t``
        (N, q) are the z targets of the distill phase: the seed's continuous heterogeneity coordinates ``coords``
        (q <= zdim of them), or for a seed file without them its 1-D ``score``; each standardised; None when the seed
        found no heterogeneity."""
        N = self.data.N
        R = np.tile(np.eye(3, dtype=np.float32), (N, 1, 1))
        T = np.zeros((N, 2), np.float32)
        has = np.zeros(N, bool)
        R[pos], T[pos], has[pos] = rot, trans, True
        out = {"rot_t": torch.as_tensor(R), "trans_t": torch.as_tensor(T), "has_t": torch.as_tensor(has),
               "z_t": None}
        c = None
        if coords is not None and coords.ndim == 2 and coords.shape[1] and len(coords) == len(pos):
            c = np.asarray(coords, np.float64)[:, : self.config.zdim]
        elif score is not None and len(score) == len(pos):
            c = np.asarray(score, np.float64)[:, None]
        if c is not None and c.shape[1] and np.all(np.isfinite(c)):
            zt = np.zeros((N, c.shape[1]), np.float32)
            zt[pos] = ((c - np.median(c, 0)) / (c.std(0) + 1e-12)).astype(np.float32)
            out["z_t"] = torch.as_tensor(zt)
        return out

    def _load_seed(self) -> dict:
        path = self.run_dir.seed
        if not path.is_file():
            raise InputError("the checkpoint says the seeding stage is done but its results are missing", path)
        d = self._read_seed_file(path)
        score = d["state_score"] if d["state_score"].size else None
        return dict(d, **self._seed_arrays(d["pos"], d["rot"], d["trans"], score, d.get("coords")))

    def _prefetcher(self) -> Prefetcher:
        """Batches from the current image count on: of the seeded particles while distilling (the others have no
        seed pose to learn from), of all training particles otherwise."""
        cfg = self.config
        pos = self.seed_pos if self.phase in ("seed", "distill") else self.train_pos
        sched = (g[self.rank::self.world] for g in batch_schedule(pos, self.batch, cfg.seed, self.images_seen))
        return Prefetcher(self.data, sched)

    def _seed_subset(self) -> np.ndarray:
        """The training particles the seed searches: all of them, or a random ``seed_max_particles`` (sorted; a
        function of the split and --seed, so a resumed run finds the same): the seed's cost stays flat in N, and the
        distilled encoder gives the other particles their poses and z."""
        cap = int(self.config.seed_max_particles)
        if cap <= 0 or len(self.train_pos) <= cap:
            return self.train_pos
        rng = np.random.default_rng([self.config.seed, 5])
        return np.sort(rng.choice(self.train_pos, size=cap, replace=False))

    def _run_seed(self, t0: float) -> Iterator:
        """Run reconstruct.iter_seed_abinit on the seed's particles; progress as PhaseChange, SeedProgress and
        Step("seed") events.

        Data-parallel: rank 0 searches alone and broadcasts the result (or why there is none) to the other ranks,
        which wait; the seed is never repeated per rank."""
        cfg = self.config
        if cfg.seed_from:
            path = Path(cfg.seed_from)
            path = RunDir(path).seed if path.is_dir() else path
            if not path.is_file():
                raise InputError("no seed to reuse here (give a run folder or its checkpoints/seed.npz)", path)
            yield from self._adopt_seed(self._read_seed_file(path), source=path)
            return
        arrays = None
        if self.rank == 0:
            try:
                arrays = yield from self._search_seed(t0)
            finally:
                self._share_seed(arrays)
        else:
            arrays = self._share_seed(None)
        if arrays is not None:
            yield from self._adopt_seed(arrays)

    def _share_seed(self, arrays: dict | None) -> dict | None:
        """Under torchrun: rank 0 sends the seed's arrays (None: it failed, or a stop was requested) and every rank
        returns them; a stop on rank 0 becomes a stop on every rank, so all reach the same final barrier."""
        if self.world == 1:
            return arrays
        import torch.distributed as dist

        box = [(arrays, self._stop.is_set())]
        dist.broadcast_object_list(box, src=0)
        arrays, stopped = box[0]
        if stopped:
            self._stop.set()
        return arrays

    def _search_seed(self, t0: float) -> Generator[Any, None, dict | None]:
        """The pose search itself (rank 0); returns seed.npz's arrays, or None after a Failed event or a stop."""
        from cryofire_app.reconstruct import iter_seed_abinit, seed_config_from

        cfg = self.config
        try:
            scfg = seed_config_from(cfg.seed_config)
        except (TypeError, ValueError) as exc:
            raise InputError(f"bad seed_config {cfg.seed_config!r}: {exc}") from exc
        yield self._announce("seed", f"seeding: ab initio pose search and state classification on the "
                                     f"{len(self.seed_pos)} training particles at box {self.D}"
                                     + ("" if len(self.seed_pos) == len(self.train_pos) else
                                        f" (a random {len(self.seed_pos)} of the {len(self.train_pos)}: the "
                                        "encoder gives the others their poses)"))
        imgs = self.data.resized_view(self.seed_pos)
        ctf = self.data.ctf.numpy() if self.data.ctf is not None else None
        ctf = ctf[self.seed_pos] if ctf is not None else None
        gen = iter_seed_abinit(imgs, ctf, scfg, device=self.device)
        stage, k, loss, radius = None, 0, float("nan"), 0
        while True:
            while not self._go.wait(0.1):
                pass
            if self._stop.is_set():
                gen.close()
                return None
            try:
                e = next(gen)
            except StopIteration as stop:
                res = stop.value
                break
            except (ValueError, FloatingPointError, RuntimeError) as exc:   # e.g. NaN from degenerate data
                log.exception("the ab initio seed failed")
                yield self._emit(Failed(f"the ab initio seed failed in its '{stage or 'prepare'}' stage: {exc}. "
                                        "No training checkpoint was written; check the particles (NaN/Inf pixels, "
                                        "blank images, wrong CTF) or give more particles"))
                return None
            if e.stage != stage:
                stage = e.stage
                yield self._emit(SeedProgress(e.stage, e.message, e.elapsed_s))
            m = e.metrics
            if "sigma2" in m:
                loss = float(m["sigma2"])
            if "radius" in m:
                box = int(m.get("box", self.D))
                radius = int(round(float(m["radius"]) * self.D / max(box, 1)))
            k += 1
            if math.isfinite(loss):
                yield self._emit(Step(k, 0, loss, radius, "seed", time.time() - t0, self.images_total))
        if not (np.all(np.isfinite(res.rot)) and np.all(np.isfinite(res.trans_px)) and np.all(np.isfinite(res.volume))):
            yield self._emit(Failed("the ab initio seed returned non-finite poses or map (NaN/Inf): the particles "
                                    "or their CTF parameters hold values the search cannot use; nothing was saved"))
            return None
        sgn = int(res.history.get("density_sign", 1))
        n = len(self.seed_pos)
        score = res.state_score if res.state_score is not None else np.zeros(0, np.float32)
        state = res.state if res.state is not None else np.zeros(0, np.int64)
        coords = res.coords if res.coords is not None else np.zeros((n, 0), np.float32)
        arrays = dict(pos=self.seed_pos.astype(np.int64), rot=res.rot.astype(np.float32),
                      trans=res.trans_px.astype(np.float32), state=state.astype(np.int64),
                      state_score=score.astype(np.float32), volume=(sgn * res.volume).astype(np.float32),
                      density_sign=np.int64(sgn), wall_s=np.float64(res.history.get("wall_s", float("nan"))),
                      coords=coords.astype(np.float32), kind=np.str_(res.hetero_kind or ""))
        return arrays

    SEED_KEYS = ("pos", "rot", "trans", "state", "state_score", "volume", "density_sign", "wall_s")

    def _read_seed_file(self, path: Path) -> dict:
        """The arrays of a seed.npz (this run's on resume, or an earlier run's with seed_from), checked against this
        run's training split and box (InputError naming the file)."""
        try:
            with np.load(path) as f:
                d = {k: f[k] for k in f.files}
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
            raise InputError(f"not a readable seed file: {exc}", path) from exc
        missing = [k for k in self.SEED_KEYS if k not in d]
        if missing:
            raise InputError(f"not a cryofire seed file (missing {', '.join(missing)})", path)
        n = len(self.seed_pos)
        if not np.array_equal(np.asarray(d["pos"], np.int64), self.seed_pos.astype(np.int64)):
            raise InputError(f"the seed was made on another training split ({len(d['pos'])} particles; this run's "
                             f"split has {n}): reuse a seed only with the same particles, --seed and "
                             "--val-fraction", path)
        if d["rot"].shape != (n, 3, 3) or d["trans"].shape != (n, 2) or d["volume"].shape != (self.D,) * 3:
            raise InputError(f"seed arrays do not fit this run (rot {d['rot'].shape}, trans {d['trans'].shape}, "
                             f"volume {d['volume'].shape}; expected box {self.D})", path)
        if not (np.all(np.isfinite(d["rot"])) and np.all(np.isfinite(d["trans"]))):
            raise InputError("the seed's poses contain NaN/Inf", path)
        return d

    def _adopt_seed(self, arrays: dict, source: Path | None = None) -> Iterator:
        """Make ``arrays`` (seed.npz fields; ``source``: the earlier run's file they were reused from, None when
        searched now) this run's seed: save them, set the data sign, checkpoint."""
        cfg = self.config
        sgn = int(arrays["density_sign"])
        state, score = np.asarray(arrays["state"]), np.asarray(arrays["state_score"])
        reused = source is not None
        if reused:
            yield self._emit(Message("info", f"seed reused from {source} (no pose search)"))
        if self.rank == 0:
            atomic_save_npz(self.run_dir.seed, **arrays)
        self.seed = dict(arrays, **self._seed_arrays(arrays["pos"], arrays["rot"], arrays["trans"],
                                                     score if score.size else None, arrays.get("coords")))
        # the seed's map has the sign `sgn` on the raw data; the trainer models sign * data = C * V with V > 0
        if cfg.invert_data == "auto":
            self.sign = float(sgn)
            self.contrast_checked = True
            yield self._emit(Message("info", f"data sign from the seed's map: {'inverting' if sgn < 0 else 'keeping'} "
                                             "the data (particles " + ("white" if sgn < 0 else "black") + ")"))
        elif self.sign != sgn:
            yield self._emit(Message("warning", f"--invert-data {cfg.invert_data} disagrees with the seed's map "
                                                f"(density sign {sgn:+d} on the raw data): the map will come out "
                                                "negative"))
        self.seed_done = True
        kind = str(arrays.get("kind", ""))
        sizes = "" if not state.size else f"; state sizes {np.bincount(state).tolist()}"
        if kind:
            sizes += f" ({kind} heterogeneity, {np.asarray(arrays['coords']).shape[-1]} continuous coordinate(s))"
        made = f"seed {'(reused) made' if reused else 'done'} in {float(arrays['wall_s']):.0f} s{sizes}"
        yield self._announce("distill", f"{made}; distilling into the encoder for {self.distill_images} images at "
                                        f"radius {mask_radius_at(cfg, self.D, 0)} px")
        if self.rank == 0:
            self.save_checkpoint(numbered=False)
        self._barrier()

    # ---- evaluation, contrast, checkpoints ---------------------------------------------------------------------
    def predict(self, pos: np.ndarray, radius: int | None = None, turns: int = 1):
        return predict(self.model, self.data, pos, sign=self.sign, radius=radius, select="decoder",
                       batch=self.config.eval_batch_size, device=self.device,
                       use_z=self.phase not in ("pose_only", "seed"), sym=self.sym, turns=turns)

    def validate(self) -> tuple[float, float | None, float | None]:
        """Validation loss at the current mask radius and the pose / z change since the previous call."""
        if len(self.val_pos) == 0:
            return float("nan"), None, None
        pr = self.predict(self.val_pos, mask_radius_at(self.config, self.D, self.images_seen))
        val_loss = float(np.mean(pr.loss))
        dpose = dz = None
        rot, z = torch.as_tensor(pr.rot), torch.as_tensor(pr.z)
        if self.prev_val is not None:
            dpose = float(geodesic_angle(rot, self.prev_val["rot"]).median())
            if z.shape[1] > 0:
                scale = float(z.norm(dim=1).median()) + 1e-8
                dz = float((z - self.prev_val["z"]).norm(dim=1).median()) / scale
        self.prev_val = {"rot": rot, "z": z}
        return val_loss, dpose, dz

    @torch.no_grad()
    def consensus_sign(self) -> float:
        """Mean decoded Hartley value on the shells 1-2 px around DC (z = 0): > 0 for a positive density."""
        D = self.D
        ax = torch.arange(-2, 3, dtype=torch.float32)
        g = torch.stack(torch.meshgrid(ax, ax, ax, indexing="ij"), -1).reshape(-1, 3)
        r = g.norm(dim=1)
        pts = (g[(r >= 1) & (r <= 2)] / D).to(self.device)
        v = self.model.decoder(pts[None], None)[0]
        return float(v.mean())

    def _check_contrast(self):
        self.contrast_checked = True
        s = self.consensus_sign()
        if s >= 0:
            return Message("info", f"data contrast looks right (consensus low-frequency density {s:+.3g} > 0)")
        if self.config.invert_data == "auto":
            self.sign = -self.sign
            out = self.model.decoder.mlp.out
            with torch.no_grad():
                for p in (out.weight, out.bias):
                    p.neg_()
                    st = self.optim.state.get(p)
                    if st and "exp_avg" in st:
                        st["exp_avg"].neg_()
            return Message("warning", "negative consensus density: the particles have inverted contrast; inverting "
                                      f"the data from now on (images seen {self.images_seen}; "
                                      "use --invert-data no to keep it)")
        return Message("warning", "negative consensus density: the particles probably have inverted contrast "
                                  "(the map will come out hollow/negative); rerun with --invert-data yes or auto")

    def checkpoint_state(self) -> dict:
        cfg = self.config
        return {
            "format": CHECKPOINT_FORMAT, "config": cfg.to_dict(), "model": self.model.state_dict(),
            "optimizer": self.optim.state_dict(), "torch_rng": self.gen.get_state(),
            "synth_rng": self.synth_gen.get_state(),
            "images_seen": self.images_seen, "step": self.step,
            "mask_radius": mask_radius_at(cfg, self.D, self.images_seen), "phase": self.phase,
            "D": self.D, "D0": self.data.D0, "N": self.data.N, "apix": self.data.apix, "zdim": cfg.zdim,
            "sigma_real": self.data.prep.sigma_real, "sigma_ht": self.data.prep.sigma_ht, "data_sign": self.sign,
            "contrast_checked": self.contrast_checked, "train_pos": torch.as_tensor(self.train_pos),
            "val_pos": torch.as_tensor(self.val_pos), "prev_val": self.prev_val, "next_ckpt": self.next_ckpt,
            "next_latents": self.next_latents, "schedule": cfg.schedule, "seed_done": self.seed_done,
            "joint_ok": self.joint_ok, "agreement_deg": self.agreement_deg, "next_agreement": self.next_agreement,
            "grad_scaler": self._scaler.state_dict() if self._scaler is not None else self._scaler_state,
        }

    def save_checkpoint(self, numbered: bool = True) -> Path:
        """Atomic write of checkpoints/last.pt (+ a numbered hard link); rank 0 only."""
        if not all(bool(torch.isfinite(p).all()) for p in self.model.parameters()):
            # NaN/Inf weights (an update that was not finite though its loss was): keep the last good checkpoint
            return self.last_checkpoint or self.run_dir.last_checkpoint
        last = atomic_torch_save(self.checkpoint_state(), self.run_dir.last_checkpoint)
        if numbered:
            num = self.run_dir.numbered_checkpoint(self.images_seen)
            try:
                if num.exists():
                    num.unlink()
                os.link(last, num)
            except OSError:
                atomic_torch_save(self.checkpoint_state(), num)
            olds = self.run_dir.numbered_checkpoints()
            for p in olds[: max(0, len(olds) - self.config.keep_checkpoints)]:
                p.unlink(missing_ok=True)
        self.last_checkpoint = last
        return last

    def _checkpoint_event(self) -> Checkpoint:
        val_loss, dpose, dz = self.validate()
        path = self.save_checkpoint() if self.rank == 0 else self.run_dir.last_checkpoint
        self._barrier()
        return Checkpoint(str(path), self.images_seen, val_loss, dpose, dz)

    def _latents_event(self) -> Latents | None:
        pos = self.latent_pos[self.run_seen[self.latent_pos]]
        if len(pos) == 0:
            return None
        return Latents(self.images_seen, self.data.particles.index[pos].astype(np.int64), self.run_z[pos].copy(),
                       self.run_rot[pos].copy(), self.run_trans[pos].copy())

    def encoder_agreement_deg(self, n: int = 512) -> float:
        """Median angle (degrees) between the encoder's poses and the seed's on up to ``n`` seeded training particles
        (no ground truth needed; the encoder is distilled on exactly these poses, no mirror branch)."""
        pos = self.seed["pos"]
        sample = pos[np.unique(np.linspace(0, len(pos) - 1, min(n, len(pos))).astype(np.int64))]
        pr = predict(self.model, self.data, sample, sign=self.sign, select="encoder",
                     batch=self.config.eval_batch_size, device=self.device, use_z=True, sym=False)
        ang = geodesic_angle(torch.as_tensor(pr.rot, dtype=torch.float64),
                             self.seed["rot_t"][torch.as_tensor(sample)].double())
        return float(ang.median())

    def _check_agreement(self) -> Message:
        """Seeded: start the joint phase once the encoder reproduces the seed's poses; else keep distilling."""
        cfg = self.config
        self.agreement_deg = self.encoder_agreement_deg()
        self.next_agreement = self.images_seen + max(cfg.checkpoint_every // 4, 1000)
        if self.agreement_deg <= cfg.seed_agreement_deg:
            self.joint_ok = True
            return Message("info", f"encoder agrees with the seed's poses (median {self.agreement_deg:.1f} deg): "
                                   "joint amortized training starts")
        return Message("info", f"encoder still {self.agreement_deg:.1f} deg from the seed's poses (median; joint "
                               f"training starts below {cfg.seed_agreement_deg:g}): distilling goes on, the decoder "
                               "keeps training on the seed's poses")

    @torch.no_grad()
    def _seed_fits_better(self, pos: np.ndarray, pr, radius: int) -> np.ndarray:
        """(len(pos),) bool: the decoder's error (mask radius ``radius``, the z of ``pr``) is lower at the seed's pose
        than at the predicted one. ``pr`` holds predictions for every particle (row = position)."""
        from cryofire_app.model.cryofire import mask_points

        mp = mask_points(self.lattice, radius, self.device)
        out = np.zeros(len(pos), bool)
        self.model.eval()
        bs = self.config.eval_batch_size
        for i in range(0, len(pos), bs):
            b = self.data.load(pos[i:i + bs])
            Y = b.Y.to(self.device) * self.sign
            ctf = b.ctf.to(self.device) if b.ctf is not None else None
            z = torch.as_tensor(pr.z[b.pos], device=self.device)
            errs = []
            for R, t in ((self.seed["rot_t"][b.pos], self.seed["trans_t"][b.pos]),
                         (torch.as_tensor(pr.rot[b.pos]), torch.as_tensor(pr.trans[b.pos]))):
                errs.append(self.model.branch_errors(Y, ctf, {"rot": R.to(self.device), "trans": t.to(self.device)},
                                                     z, mp, sym=False)[0])
            out[i:i + len(b.pos)] = (errs[0] <= errs[1]).cpu().numpy()
        self.model.train()
        return out

    def write_outputs(self):
        """Final eval-mode pass over every particle: pose.pkl, z.pkl, latents.npz (rank 0). Returns the final
        predictions (``rot``, ``trans`` in training-box px, ``z``, ``branch`` for every particle)."""
        from cryofire_app.io import write_pose_pkl, write_z_pkl

        cfg = self.config
        allpos = np.arange(self.data.N)
        r = min(cfg.select_radius, mask_radius_at(cfg, self.D, self.images_seen))
        pr = self.predict(allpos, r, default_turns(cfg))   # as `cryofire infer` would
        if self.seed is not None:
            # particles the seed saw keep whichever pose the decoder fits better: the seed's (exhaustive search +
            # local refinement) or the encoder's (label-free; the encoder can drift from or never reach the seed)
            # compared at the decoder's whole training radius, not the branch check's low one (issue 5's set: at 8 px
            # 27 % of the training particles took the encoder's poses, median 1.42 deg; at 12 px 22 %, 1.31 deg; mean
            # 3.3 deg against the seed's own 4.3: the encoder's win on the seed's tail)
            p = self.seed["pos"]
            use = self._seed_fits_better(p, pr, mask_radius_at(cfg, self.D, self.images_seen))
            q = p[use]
            pr.rot[q] = self.seed["rot"][use]
            pr.trans[q] = self.seed["trans"][use]
            pr.branch[q] = 0
            self.seed_pose_fraction = float(use.mean()) if len(use) else 0.0
        write_pose_pkl(self.run_dir.pose, pr.rot.astype(np.float32), (pr.trans / self.D).astype(np.float32))
        write_z_pkl(self.run_dir.z, pr.z.astype(np.float32))
        split = np.zeros(self.data.N, np.int8)
        split[self.val_pos] = 1
        atomic_save_npz(self.run_dir.latents, index=np.asarray(self.data.particles.index, np.int64),
                        z=pr.z.astype(np.float32), rot=pr.rot.astype(np.float32),
                        trans=pr.trans.astype(np.float32), branch=pr.branch.astype(np.int8), val=split,
                        images_seen=np.int64(self.images_seen), D=np.int64(self.D), apix=np.float64(self.data.apix))
        if self.seed is not None:   # the seed's own per-particle poses (training split), for comparison
            from cryofire_app.io import write_ind_pkl

            write_pose_pkl(self.run_dir.seed_pose, self.seed["rot"].astype(np.float32),
                           (self.seed["trans"] / self.D).astype(np.float32))
            write_ind_pkl(self.run_dir.seed_ind, self.seed["pos"].astype(np.int64))
            if np.asarray(self.seed["state"]).size:   # the seed's heterogeneity (0 = largest state), rows of
                # seed_ind.pkl
                extra = {}
                coords = np.asarray(self.seed.get("coords", np.zeros((0, 0))), np.float32)
                if coords.ndim == 2 and coords.shape[1] and len(coords) == len(self.seed["pos"]):
                    extra["coords"] = coords
                if str(self.seed.get("kind", "")):
                    extra["kind"] = np.str_(str(self.seed["kind"]))
                score = np.asarray(self.seed["state_score"], np.float32)
                if score.size != len(self.seed["pos"]):   # no heterogeneity found: no score, one state
                    score = np.zeros(len(self.seed["pos"]), np.float32)
                atomic_save_npz(self.run_dir.seed_states, index=self.seed["pos"].astype(np.int64),
                                state=np.asarray(self.seed["state"], np.int64), state_score=score, **extra)
        return pr

    def _diagnose(self, pr) -> Iterator:
        """The final explicit reconstruction and the self-diagnosis of the final poses (training.report): maps in
        reconstruction/, a Verdict event and report.json; a fault in either is a warning and never fails the run."""
        from cryofire_app.training.report import diagnose_run, final_reconstruction

        rec = None
        try:
            rec = final_reconstruction(self, pr.rot, pr.trans)
            yield self._emit(Message("info", f"final reconstruction of {rec['n_particles']} particles at box "
                                             f"{self.D}: half-map FSC 0.143 at {rec['res_0.143_A']:.1f} A, 0.5 at "
                                             f"{rec['res_0.5_A']:.1f} A ({rec['folder']})"))
        except (RuntimeError, ValueError, OSError) as exc:
            log.exception("final reconstruction failed")
            yield self._emit(Message("warning", f"the final explicit reconstruction could not run ({exc})"))
        try:
            yield self._emit(diagnose_run(self, pr.rot, pr.trans, rec))
        except (RuntimeError, ValueError, np.linalg.LinAlgError) as exc:
            log.exception("self-diagnosis failed")
            yield self._emit(Message("warning", f"self-diagnosis could not run ({exc}); report.json not written"))

    # ---- the loop -----------------------------------------------------------------------------------------------
    def run(self) -> Iterator:
        self._setup()
        cfg = self.config
        t0 = time.time()
        if self.resume_requested:
            yield self._emit(Message("info", f"resumed at {self.images_seen} images ({self.phase}, mask radius "
                                             f"{mask_radius_at(cfg, self.D, self.images_seen)} px)"))
        yield self._emit(Started(cfg.to_dict(), len(self.train_pos), len(self.val_pos)))
        if cfg.D is None and self.D < self.data.D0:
            yield self._emit(Message("info", f"training box {self.D} px, {self.data.apix:.3f} A/px: the "
                                             f"{self.data.D0}-px stack Fourier-cropped (give -D to choose; maps at the "
                                             f"stack's box: cryofire volume --box {self.data.D0})"))
        if self.batch < cfg.batch_size:
            yield self._emit(Message("warning", f"batch size reduced to {self.batch}: only {len(self.train_pos)} "
                                                "training particles"))
        if self.world > 1:
            yield self._emit(Message("info", f"data-parallel over {self.world} processes "
                                             f"({self.batch // self.world} images each per step)"))
        stopped = False
        if self.phase == "seed":
            yield from self._run_seed(t0)
            stopped = self._stop.is_set()
            if not self.seed_done and not stopped:   # the seed failed (its Failed event is out): nothing to train
                return
        if not stopped and self.phase == "distill":
            yield from self._prepare_synth()
        if not stopped and self._announced != self.phase:   # an amortized run, or a resumed one
            yield self._announce(self.phase)
        pf = self._prefetcher()
        try:
            while self.images_seen < self.images_total and not stopped:
                while not self._go.wait(0.1):
                    pass
                if self._stop.is_set():
                    stopped = True
                    break
                b = next(pf)
                radius = mask_radius_at(cfg, self.D, self.images_seen)
                phase = self.phase
                loss = self.distill_step(b) if phase == "distill" else self.train_step(b)
                if not math.isfinite(loss):
                    where = (f"last good checkpoint {self.last_checkpoint}" if self.last_checkpoint else
                             "no checkpoint was written yet")
                    yield self._emit(Failed(f"loss became {loss} at step {self.step + 1} ({self.images_seen} images "
                                            f"seen, mask radius {radius} px, {phase}); training stopped, {where}. "
                                            "Try a lower --lr or check the particles for NaN/Inf pixels."))
                    return
                self.images_seen += self.batch
                self.step += 1
                yield self._emit(Step(self.step, self.images_seen, loss, radius, phase, time.time() - t0,
                                      self.images_total))
                if (cfg.schedule == "seeded" and self.seed is not None and not self.joint_ok
                        and self.images_seen >= max(self.distill_images, self.next_agreement)):
                    yield self._emit(self._check_agreement())
                if not self.contrast_checked and self.images_seen >= cfg.contrast_check_images:
                    yield self._emit(self._check_contrast())
                if self.images_seen >= self.next_latents:
                    self.next_latents += cfg.latents_every
                    ev = self._latents_event()
                    if ev is not None:
                        yield self._emit(ev)
                if self.images_seen >= self.next_ckpt and self.images_seen < self.images_total:
                    self.next_ckpt += cfg.checkpoint_every
                    yield self._emit(self._checkpoint_event())
                if phase == "distill" and self.phase != "distill" and len(self.seed_pos) < len(self.train_pos):
                    pf.close()   # joint training reads every training particle, not only the seeded ones
                    pf = self._prefetcher()
                if self.phase != self._announced and self.images_seen < self.images_total:
                    yield self._announce(self.phase)
        except KeyboardInterrupt:
            if self.rank == 0 and self.model is not None:
                self.save_checkpoint(numbered=False)
            self._emit(Message("warning", f"interrupted at {self.images_seen} images; checkpoint written"))
            raise
        finally:
            pf.close()
        if stopped:
            yield self._emit(Message("info", f"stop requested at {self.images_seen} images"))
        yield self._emit(self._checkpoint_event())
        pr = self.write_outputs() if self.rank == 0 else None
        if self.seed is not None:
            gap = f"{self.agreement_deg:.1f} deg" if self.agreement_deg is not None else "not checked"
            msg = (f"outputs: the seed's pose fits the decoder better for {100 * self.seed_pose_fraction:.0f} % of the "
                   f"{len(self.seed['pos'])} training particles (kept there; the encoder's elsewhere)")
            if not self.joint_ok:
                yield self._emit(Message("warning", msg + f"; the encoder stayed {gap} from the seed's poses, so its "
                                         "poses for other particles, and `cryofire infer`, are not reliable yet: "
                                         "train longer, or on a GPU"))
            else:
                yield self._emit(Message("info", msg))
        if pr is not None:
            yield from self._diagnose(pr)
        self._barrier()
        yield self._emit(Finished(str(self.outdir), self.images_seen, stopped))
        if self._log is not None:
            self._log.close()
            self._log = None
