"""The trainer: `Trainer(config).run()` is a generator of events (training/events.py, docs/design.md).

The run loop lives here; each phase in its module: seeding.py (the ab initio seed), distill.py (the encoder learns
the seed), joint.py (pose-only and joint amortized steps), outputs.py (the final pass, maps and verdict). What phase
runs when, with which learning rate and mask radius, is schedule.py; the progress a checkpoint restores is
state.TrainState; data-parallel helpers are parallel.py; mixed precision precision.py.

Checkpoints every `checkpoint_every` images and at the end (atomic; checkpoints/last.pt + numbered copies), each with
the held-out validation loss and the pose / z change on the validation set since the previous one. Resume continues
exactly: images seen, step, phase and mask radius (functions of images seen), optimizer, RNG, split, normalization,
data sign. The epoch order is a pure function of (seed, epoch).
Under torchrun (WORLD_SIZE > 1) each rank takes rows rank::world of every global batch and draws the same random
numbers for the whole global batch, so the result matches one process on the same global batch. Rank 0 writes all
files and runs the seed alone, then broadcasts it.
"""
from __future__ import annotations

import json
import math
import threading
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from cryofire_app.io.rundir import RunDir
from cryofire_app.model.cryofire import CryoFIRE, MaskPoints, mask_points
from cryofire_app.physics.rotations import geodesic_angle
from cryofire_app.training import contrast, distill, joint, outputs, seeding, setup
from cryofire_app.training.checkpoint import write_checkpoint
from cryofire_app.training.config import TrainConfig
from cryofire_app.training.dataset import Prefetcher, batch_schedule
from cryofire_app.training.events import (
    Checkpoint,
    Failed,
    Finished,
    Latents,
    Message,
    PhaseChange,
    Started,
    Step,
    event_to_json,
)
from cryofire_app.training.inference import predict
from cryofire_app.training.schedule import (
    PHASE_NAMES,
    distill_images,
    mask_radius_at,
    phase_at,
)
from cryofire_app.training.state import TrainState

__all__ = ["Trainer"]


class Trainer:
    """Run with `for ev in Trainer(cfg).run(): ...`. Thread-safe controls: request_stop(), pause(), resume()."""

    def __init__(self, config: TrainConfig, resume: bool = False, particles=None):
        """particles: an already loaded io.ParticleSet (else config.particles/ctf/datadir are loaded)."""
        self.config = config
        self.particles_given = particles
        self.resume_requested = resume
        self.outdir = Path(config.outdir)
        self._stop = threading.Event()
        self._go = threading.Event()
        self._go.set()
        self.state = TrainState()
        self.model: CryoFIRE | None = None
        self.last_checkpoint: Path | None = None
        self.seed: dict | None = None
        self.seed_pose_fraction, self.others_refined = 0.0, (0, "no", 0.0)   # set by the outputs
        self.images_total = 0
        self.log_file = None                 # log.jsonl, open while the run runs (rank 0)
        self.reset_run()

    def reset_run(self) -> None:
        """Forget what one run of the loop made: the data-parallel wrapper and the frequency masks (of the model and
        box set up for it), and the phase it last announced."""
        self._ddp: torch.nn.Module | None = None
        self._mask_cache: dict[int, MaskPoints] = {}
        self._announced: str | None = None

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

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    def wait_if_paused(self) -> None:
        """Block while paused (a stop request ends the pause)."""
        while not self._go.wait(0.1):
            pass

    # ---- the state, read-only views ---------------------------------------------------------------------------------
    @property
    def images_seen(self) -> int:
        return self.state.images_seen

    @property
    def step(self) -> int:
        return self.state.step

    @property
    def sign(self) -> float:
        """The data are multiplied by this (-1: inverted contrast)."""
        return self.state.sign

    @property
    def seed_done(self) -> bool:
        return self.state.seed_done

    @property
    def joint_ok(self) -> bool:
        return self.state.joint_ok

    @property
    def agreement_deg(self) -> float | None:
        return self.state.agreement_deg

    @property
    def world(self) -> int:
        return self.par.world

    @property
    def rank(self) -> int:
        return self.par.rank

    @property
    def run_dir(self) -> RunDir:
        """Every file of the run folder."""
        return RunDir(self.outdir)

    @property
    def phase(self) -> str:
        """amortized: "pose_only" then "joint"; seeded: "seed", "distill", then "joint"."""
        return phase_at(self.config, self.images_seen, self.images_total, self.seed_done, self.joint_ok)

    @property
    def distill_images(self) -> int:
        return distill_images(self.config, self.images_total)

    @property
    def sym(self) -> bool:
        """Symmetric loss in the current schedule."""
        return self.config.amortized.sym_loss if self.config.schedule == "amortized" else self.config.seeded.sym_loss

    @property
    def augment(self) -> bool:
        """In-plane augmentation of the encoder's input (TrainConfig.augment_inplane; None: seeded schedule only)."""
        return self.config.augments_inplane()

    def _setup(self) -> None:
        """Device, process group, config (resumed or resolved), data, split, model, state, log (training/setup.py)."""
        setup.setup(self)

    def emit(self, ev):
        """Log ``ev`` to log.jsonl (rank 0) and return it."""
        if self.log_file is not None:
            self.log_file.write(json.dumps(event_to_json(ev)) + "\n")
        return ev

    def announce(self, phase: str, text: str | None = None, particles: int | None = None) -> PhaseChange:
        """The PhaseChange event of entering ``phase`` now (``text``: the default names the phase and the count)."""
        self._announced = phase
        text = text or f"{PHASE_NAMES.get(phase, phase)} from {self.images_seen} images"
        return self.emit(PhaseChange(phase, self.images_seen, text, particles))

    def mask(self, radius: int) -> MaskPoints:
        if radius not in self._mask_cache:
            self._mask_cache[radius] = mask_points(self.lattice, radius, self.device)
        return self._mask_cache[radius]

    @property
    def ddp(self) -> torch.nn.Module:
        """The model for the joint / pose-only forward: itself, or (torchrun) its DistributedDataParallel wrapper, made
        on first use. Not before: the distill steps run the model outside DDP and average gradients by hand, and a
        wrapper that existed then would count the parameters they used (the view encoder) as used by the next
        synchronised step, which fails when that step leaves them without a gradient."""
        if self.world == 1:
            return self.model
        if self._ddp is None:
            self._ddp = self.par.wrap(self.model)
        return self._ddp

    def inplane_angles(self) -> torch.Tensor | None:
        """(local batch,) random in-plane angles in radians (drawn for the global batch, sliced per rank), or None."""
        if not self.augment:
            return None
        return (torch.rand(self.batch, generator=self.gen) * (2 * math.pi))[self.rank::self.world]

    @torch.no_grad()
    def record(self, pos: np.ndarray, rot: torch.Tensor, trans: torch.Tensor, z: torch.Tensor) -> None:
        """The encoder's latest poses and z of the particles ``pos``, for Latents snapshots."""
        self.run_rot[pos] = rot.detach().float().cpu().numpy()
        self.run_trans[pos] = trans.detach().float().cpu().numpy()
        self.run_z[pos] = z.detach().float().cpu().numpy()
        self.run_seen[pos] = True

    # ---- one optimizer step (the phases' modules) ---------------------------------------------------------------
    def train_step(self, b) -> float:
        """A pose-only or joint step (joint.joint_step)."""
        return joint.joint_step(self, b)

    def distill_step(self, b) -> float:
        """A distill step (distill.distill_step)."""
        return distill.distill_step(self, b)

    def _prefetcher(self) -> Prefetcher:
        """Batches from the current image count on: of the seeded particles while distilling (the others have no
        seed pose to learn from), of all training particles otherwise."""
        pos = self.seed_pos if self.phase in ("seed", "distill") else self.train_pos
        sched = (g[self.rank::self.world] for g in batch_schedule(pos, self.batch, self.config.seed,
                                                                    self.images_seen))
        return Prefetcher(self.data, sched)

    # ---- evaluation, agreement, checkpoints ---------------------------------------------------------------------
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
        prev = self.state.prev_val
        if prev is not None:
            dpose = float(geodesic_angle(rot, prev["rot"]).median())
            if z.shape[1] > 0:
                scale = float(z.norm(dim=1).median()) + 1e-8
                dz = float((z - prev["z"]).norm(dim=1).median()) / scale
        self.state.prev_val = {"rot": rot, "z": z}
        return val_loss, dpose, dz

    def consensus_sign(self) -> float:
        """Mean decoded Hartley value on the shells 1-2 px around DC (contrast.consensus_sign)."""
        return contrast.consensus_sign(self.model, self.D, self.device)

    def save_checkpoint(self, numbered: bool = True) -> Path:
        """Atomic write of checkpoints/last.pt (+ a numbered hard link, keep_checkpoints of them); rank 0 only."""
        path = write_checkpoint(self, numbered)
        if path is None:   # NaN/Inf weights: refused, the last good checkpoint stays
            return self.last_checkpoint or self.run_dir.last_checkpoint
        self.last_checkpoint = path
        return path

    def _checkpoint_event(self) -> Checkpoint:
        val_loss, dpose, dz = self.validate()
        path = self.save_checkpoint() if self.rank == 0 else self.run_dir.last_checkpoint
        self.par.barrier()
        return Checkpoint(str(path), self.images_seen, val_loss, dpose, dz)

    def _latents_event(self) -> Latents | None:
        pos = self.latent_pos[self.run_seen[self.latent_pos]]
        if len(pos) == 0:
            return None
        return Latents(self.images_seen, self.data.particles.index[pos].astype(np.int64), self.run_z[pos].copy(),
                       self.run_rot[pos].copy(), self.run_trans[pos].copy())

    # ---- the loop -----------------------------------------------------------------------------------------------
    def run(self) -> Iterator:
        self._setup()
        t0 = time.time()
        yield from self._start_events()
        stopped = False
        if self.phase == "seed":
            yield from seeding.run_seed(self, t0)
            stopped = self.stop_requested
            if not self.seed_done and not stopped:   # the seed failed (its Failed event is out): nothing to train
                return
        if not stopped and self.phase == "distill":
            for ev in distill.prepare_synth(self):
                yield self.emit(ev)
        if not stopped and self._announced != self.phase:   # an amortized run, or a resumed one
            yield self.announce(self.phase)
        try:
            stopped = yield from self._loop(t0, stopped)
        except KeyboardInterrupt:
            if self.rank == 0 and self.model is not None:
                self.save_checkpoint(numbered=False)
            self.emit(Message("warning", f"interrupted at {self.images_seen} images; checkpoint written", "stopped"))
            raise
        if stopped is None:   # a non-finite loss (its Failed event is out)
            return
        yield from self._finish(stopped)

    def _start_events(self) -> Iterator:
        """Started, and messages about the resume, the training box, the batch size and the processes."""
        cfg = self.config
        if self.resume_requested:
            yield self.emit(Message("info", f"resumed at {self.images_seen} images ({self.phase}, mask radius "
                                            f"{mask_radius_at(cfg, self.D, self.images_seen)} px)", "resumed"))
        yield self.emit(Started(cfg.to_dict(), len(self.train_pos), len(self.val_pos)))
        if cfg.D is None and self.D < self.data.D0:
            yield self.emit(Message("info", f"training box {self.D} px, {self.data.apix:.3f} A/px: the "
                                            f"{self.data.D0}-px stack Fourier-cropped (give -D to choose; maps at the "
                                            f"stack's box: cryofire volume --box {self.data.D0})", "training_box"))
        if self.batch < cfg.batch_size:
            yield self.emit(Message("warning", f"batch size reduced to {self.batch}: only {len(self.train_pos)} "
                                               "training particles", "batch_size"))
        if self.world > 1:
            yield self.emit(Message("info", f"data-parallel over {self.world} processes "
                                            f"({self.batch // self.world} images each per step)", "data_parallel"))

    def _loop(self, t0: float, stopped: bool):
        """The optimiser steps until images_total or a stop; returns whether a stop ended it (None: a non-finite
        loss ended the run)."""
        pf = self._prefetcher()
        try:
            while self.images_seen < self.images_total and not stopped:
                self.wait_if_paused()
                if self.stop_requested:
                    return True
                phase = self.phase
                radius = mask_radius_at(self.config, self.D, self.images_seen)
                b = next(pf)
                loss = self.distill_step(b) if phase == "distill" else self.train_step(b)
                if not math.isfinite(loss):
                    yield self.emit(self._failed_step(loss, radius, phase))
                    return None
                self.state.images_seen += self.batch
                self.state.step += 1
                yield self.emit(Step(self.step, self.images_seen, loss, radius, phase, time.time() - t0,
                                     self.images_total))
                yield from self._after_step()
                if phase == "distill" and self.phase != "distill" and len(self.seed_pos) < len(self.train_pos):
                    pf.close()   # joint training reads every training particle, not only the seeded ones
                    pf = self._prefetcher()
                if self.phase != self._announced and self.images_seen < self.images_total:
                    yield self.announce(self.phase)
            return stopped
        finally:
            pf.close()

    def _failed_step(self, loss: float, radius: int, phase: str) -> Failed:
        where = (f"last good checkpoint {self.last_checkpoint}" if self.last_checkpoint else
                 "no checkpoint was written yet")
        return Failed(f"loss became {loss} at step {self.step + 1} ({self.images_seen} images seen, mask radius "
                      f"{radius} px, {phase}); training stopped, {where}. Try a lower --lr or check the particles "
                      "for NaN/Inf pixels.")

    def _after_step(self) -> Iterator:
        """What falls due after a step: the encoder's agreement check, the contrast check, a Latents snapshot, a
        checkpoint."""
        cfg, st = self.config, self.state
        if (cfg.schedule == "seeded" and self.seed is not None and not st.joint_ok
                and st.images_seen >= max(self.distill_images, st.next_agreement)):
            yield self.emit(distill.check_agreement(self))
        if not st.contrast_checked and st.images_seen >= cfg.contrast_check_images:
            yield self.emit(contrast.check_contrast(self))
        if st.images_seen >= st.next_latents:
            st.next_latents += cfg.latents_every
            ev = self._latents_event()
            if ev is not None:
                yield self.emit(ev)
        if st.next_ckpt <= st.images_seen < self.images_total:
            st.next_ckpt += cfg.checkpoint_every
            yield self.emit(self._checkpoint_event())

    def _finish(self, stopped: bool) -> Iterator:
        """The last checkpoint, the outputs (rank 0), the verdict, Finished."""
        if stopped:
            yield self.emit(Message("info", f"stop requested at {self.images_seen} images", "stopped"))
        yield self.emit(self._checkpoint_event())
        self.model.zero_grad(set_to_none=True)   # free what only steps use (~200 MB at box 128) for the outputs
        self.optim.state.clear()
        for r in (self.synth, self.synth_z):
            if r is not None:
                r.release()
        pr = outputs.write_outputs(self) if self.rank == 0 else None
        if self.seed is not None:
            yield self.emit(outputs.outputs_message(self))
        if pr is not None:
            for ev in outputs.diagnose_events(self, *pr):
                yield self.emit(ev)
        self.par.barrier()
        yield self.emit(Finished(str(self.outdir), self.images_seen, stopped))
        if self.log_file is not None:
            self.log_file.close()
            self.log_file = None
