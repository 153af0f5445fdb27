"""The amortized steps: "pose_only" (the decoder gets z = std_z_init * N(0, I), the z head bypassed, so it fits one
consensus map) and "joint" (poses and z from the encoder), both through the DDP wrapper, with the symmetric loss
(the minimum over the image and its exact mirror) where the schedule asks for it."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from cryofire_app.model.cryofire import compensate_mirror
from cryofire_app.training.losses import kl_normal, symmetric_min
from cryofire_app.training.schedule import lr_at, mask_radius_at

if TYPE_CHECKING:
    from cryofire_app.training.trainer import Trainer

__all__ = ["joint_step"]


def joint_step(tr: "Trainer", b) -> float:
    """One pose-only or joint step of trainer ``tr`` on its local rows of a global batch; returns the global mean
    loss (nan/inf: nothing updated). Noise and in-plane turns are drawn for the whole global batch and sliced per
    rank, so the result matches one process on the same global batch."""
    cfg = tr.config
    pose_only = tr.phase == "pose_only"
    sym = tr.sym
    mp = tr.mask(mask_radius_at(cfg, tr.D, tr.images_seen))
    S = 2 if sym else 1
    y_real = b.y_real.to(tr.device, non_blocking=True) * tr.sign
    Y = b.Y.to(tr.device, non_blocking=True) * tr.sign
    ctf = b.ctf.to(tr.device) if b.ctf is not None else None
    n = y_real.shape[0]
    eps = torch.randn(S, tr.batch, max(cfg.zdim, 1), generator=tr.gen)[:, tr.rank::tr.world, : cfg.zdim]
    eps = eps.reshape(S * n, cfg.zdim).to(tr.device)
    lr = lr_at(cfg, tr.images_seen, tr.images_total)
    if cfg.schedule == "seeded":   # fine-tuning of the distilled model
        lr *= cfg.seeded.joint_lr_scale
    for grp in tr.optim.param_groups:
        grp["lr"] = lr
    tr.model.train()
    ang = None if sym else tr.inplane_angles()
    if ang is not None:
        ang = ang.to(tr.device)
    with tr.amp.autocast():
        err, enc = tr.ddp(y_real, Y, ctf, mp, pose_only, eps, cfg.amortized.std_z_init, sym, inplane=ang)
    loss, branch = symmetric_min(err)
    rows = branch * n + torch.arange(n, device=branch.device)
    if cfg.encoder.variational and not pose_only and cfg.beta > 0 and cfg.zdim > 0:
        kl = kl_normal(enc["z_mu"][rows], enc["z_logvar"][rows])
        loss = loss + cfg.beta * kl.mean() / ((tr.D + 1) ** 2)
    gloss = float(tr.par.mean(loss.detach()))
    tr.optim.zero_grad(set_to_none=True)
    if not math.isfinite(gloss):
        return gloss
    tr.amp.backward(loss)
    tr.amp.step(tr.optim)
    _record_active(tr, b.pos, enc, branch, rows, n, S)
    return gloss


@torch.no_grad()
def _record_active(tr: "Trainer", pos, enc: dict, branch: torch.Tensor, rows: torch.Tensor, n: int, S: int) -> None:
    """The poses and z of the branch each image took (the mirror branch's compensated), for Latents snapshots."""
    cfg = tr.config
    rot, trans = enc["rot"].detach(), enc["trans"].detach()
    if S == 2:
        r1, t1 = compensate_mirror(rot[n:], trans[n:])
        m = (branch == 1)
        rot = torch.where(m[:, None, None], r1, rot[:n])
        trans = torch.where(m[:, None], t1, trans[:n])
    z = enc["z_mu"].detach()[rows] if cfg.zdim > 0 else enc["z_mu"][:n]
    tr.record(pos, rot, trans, z)
