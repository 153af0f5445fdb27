"""The seeded schedule's distill phase: the encoder learns the seed's poses (and heterogeneity coordinates) while
the decoder fits the data at those poses, fixed.

`distill_loss` is a pure function of the model, the config and one batch with its targets (benchmarks import it);
`distill_step` is the trainer's step around it (targets, learning rate, gradients, bookkeeping); `prepare_synth`
fits the renderers of synthetic pose rows (training/synthetic.py) once the seed exists.

Pose targets: r6 head chordal |R - R_seed|_F^2; grid head cross-entropy against the seed's pose on its rotation grid
(width in view spacings, schedule.grid_width_at); translations in px of the training box; z_0..z_{q-1} on the seed's
standardised coordinates, the other z held at 0.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator, NamedTuple

import numpy as np
import torch

from cryofire_app.model.cryofire import CryoFIRE, MaskPoints
from cryofire_app.physics.inplane import rotate_poses
from cryofire_app.physics.rotations import geodesic_angle
from cryofire_app.training.config import TrainConfig
from cryofire_app.training.events import Message
from cryofire_app.training.inference import predict
from cryofire_app.training.losses import kl_normal
from cryofire_app.training.schedule import distill_lr_factor, grid_width_at, lr_at, mask_radius_at
from cryofire_app.training.synthetic import HeteroRenderer, SeedRenderer

if TYPE_CHECKING:
    from cryofire_app.training.trainer import Trainer

__all__ = ["DistillBatch", "PoseRows", "check_agreement", "distill_loss", "distill_step", "encoder_agreement_deg",
           "hetero_renderer", "pose_rows", "prepare_synth", "view_rows"]


@dataclass
class DistillBatch:
    """One distill batch on the device: ``n`` real images and the seed's answers for them, then optionally ``ns``
    synthetic images with their exact poses (and z).

    y_real (n, D, D) real-space images; Y (n, D, D) their Hartley transforms; ctf (n, D, D) or None; rot (n, 3, 3)
    and trans (n, 2) the seed's poses (px of box D, the shift that re-centres); has (n,) 1 where the seed has a pose;
    z_seed (n, q) the seed's standardised coordinates or None; ang (n,) in-plane turns of the encoder's input
    (radians) or None; eps (n, zdim) the variational encoder's noise or None; synth: (images, rot, trans, z or None)
    of the synthetic rows, or None."""

    y_real: torch.Tensor
    Y: torch.Tensor
    ctf: torch.Tensor | None
    rot: torch.Tensor
    trans: torch.Tensor
    has: torch.Tensor
    z_seed: torch.Tensor | None = None
    ang: torch.Tensor | None = None
    eps: torch.Tensor | None = None
    synth: tuple | None = None


def view_rows(cfg: TrainConfig, n: int, ns: int, device: torch.device) -> torch.Tensor:
    """Indices of the pose rows (``n`` real, then ``ns`` synthetic) the view encoder reads: the first
    ``distill_view_rows`` of each kind."""
    f = min(max(cfg.seeded.distill_view_rows, 0.0), 1.0)
    k, ks = math.ceil(f * n), math.ceil(f * ns)
    return torch.cat([torch.arange(k), n + torch.arange(ks)]).to(device)


class PoseRows(NamedTuple):
    """The rows the encoder's pose heads learn from: the real images (turned by ``ang``), then the synthetic ones
    (not turned: uniform already). ``images``: None without synthetic rows (the pose rows are the real images)."""

    rot: torch.Tensor
    trans: torch.Tensor
    has: torch.Tensor
    ang: torch.Tensor | None
    images: torch.Tensor | None


def pose_rows(b: DistillBatch) -> PoseRows:
    """The pose rows of batch ``b``."""
    if b.synth is None:
        return PoseRows(b.rot, b.trans, b.has, b.ang, None)
    xs, Rs, ts, _ = b.synth
    ns = len(xs)
    return PoseRows(torch.cat([b.rot, Rs.to(b.rot.dtype)]), torch.cat([b.trans, ts.to(b.trans.dtype)]),
                    torch.cat([b.has, b.has.new_ones(ns)]), torch.cat([b.ang, b.ang.new_zeros(ns)]),
                    torch.cat([b.y_real, xs.to(b.y_real.dtype)]))


def _pad_z(z: torch.Tensor, zdim: int) -> torch.Tensor:
    """(n, q) coordinates as (n, zdim) targets, the dimensions without a target at 0."""
    return torch.cat([z, z.new_zeros(len(z), zdim - z.shape[1])], 1)


def _rotation_loss(model: CryoFIRE, cfg: TrainConfig, enc: dict, b: DistillBatch, p: PoseRows, width: float,
                   gen) -> torch.Tensor:
    """The encoder's rotation loss on the pose rows ``p`` (mean over the rows with a target); grid head:
    cross-entropy (plus the view encoder's on the first distill_view_rows of each kind), r6: chordal distance
    squared."""
    nh_p = p.has.sum().clamp(min=1.0)
    if "rot_logits" not in enc:
        return (((enc["rot"] - p.rot) ** 2).sum((1, 2)) * p.has).sum() / nh_p
    R_read = p.rot if b.ang is None else rotate_poses(p.rot, p.trans, p.ang)[0]   # the pose of the image read
    rot_l = (model.encoder.grid_loss(enc["rot_logits"], R_read, width) * p.has).sum() / nh_p
    if model.view is not None and cfg.seeded.distill_view_rows > 0:
        # the view encoder reads the pose rows as given: it turns them into their view's frame itself
        x_v = b.y_real if p.images is None else p.images
        v = view_rows(cfg, len(b.rot), len(p.rot) - len(b.rot), b.y_real.device)
        v_l = model.view.loss(x_v[v], p.rot[v], p.trans[v], width, gen) * p.has[v]
        rot_l = rot_l + v_l.sum() / p.has[v].sum().clamp(min=1.0)
    return rot_l


def _z_loss(cfg: TrainConfig, enc: dict, b: DistillBatch) -> torch.Tensor | float:
    """|z - the seed's coordinates|^2 on the real rows (and their turned copies), plus the synthetic rows' known z."""
    if cfg.zdim <= 0 or b.z_seed is None or cfg.seeded.distill_z_weight <= 0:
        return 0.0
    n = len(b.rot)
    zt = _pad_z(b.z_seed, cfg.zdim)
    zerr = ((enc["z_mu"] - zt) ** 2).sum(1)
    if "z_turned" in enc:   # the real rows' turned copies
        zerr = 0.5 * (zerr + ((enc["z_turned"][:n] - zt) ** 2).sum(1))
    loss = cfg.seeded.distill_z_weight * (zerr * b.has).sum() / b.has.sum().clamp(min=1.0)
    zs = b.synth[3] if b.synth is not None else None
    if zs is not None and "z_turned" in enc:   # synthetic images of a known state / coordinate bin
        zs = _pad_z(zs, cfg.zdim).to(enc["z_turned"].dtype)
        loss = loss + cfg.seeded.distill_z_weight * ((enc["z_turned"][n:] - zs) ** 2).sum(1).mean()
    return loss


def distill_loss(model: CryoFIRE, cfg: TrainConfig, b: DistillBatch, mp: MaskPoints, *, width: float,
                 fit_decoder: bool, gen: torch.Generator | None = None) -> tuple[torch.Tensor, dict]:
    """The distill loss of batch ``b`` and the encoder's outputs (real rows first).

    ``width``: the grid head's target width (view spacings); ``fit_decoder``: add the decoder's error at the seed's
    poses (mask ``mp``), z from the seed where it has one (distill_decoder_seed_z) else the encoder's; ``gen``: the
    view encoder's random stream. With ``b.ang`` the encoder reads the images turned in plane by these radians and
    turns its answers back (CryoFIRE.encode_turned; |Q3^T R - R_s| = |R - Q3 R_s|: the loss against turned targets)."""
    p = pose_rows(b)
    enc = (model.encode_turned(b.y_real, p.ang, pose_as_given=False, pose_images=p.images) if b.ang is not None
           else model.encoder(b.y_real))
    z = enc["z_mu"]
    if "z_logvar" in enc:
        z = z + b.eps * torch.exp(0.5 * enc["z_logvar"])
    recon = b.y_real.new_zeros(())
    if fit_decoder:   # the decoder with the seeded poses fixed (no mirror branch)
        z_dec = z
        if cfg.seeded.distill_decoder_seed_z and cfg.zdim > 0 and b.z_seed is not None:
            z_dec = torch.where(b.has[:, None] > 0, _pad_z(b.z_seed, cfg.zdim).to(z.dtype), z)
        err = model.branch_errors(b.Y, b.ctf, {"rot": b.rot, "trans": b.trans}, z_dec, mp, sym=False)[0]
        recon = (err * b.has).sum() / b.has.sum().clamp(min=1.0)
    rot_l = _rotation_loss(model, cfg, enc, b, p, width, gen)
    tr_l = (((enc["trans"] - p.trans) ** 2).sum(1) * p.has).sum() / p.has.sum().clamp(min=1.0)
    loss = recon + cfg.seeded.distill_rot_weight * rot_l + cfg.seeded.distill_trans_weight * tr_l + _z_loss(cfg, enc, b)
    if cfg.encoder.variational and cfg.beta > 0 and cfg.zdim > 0:
        loss = loss + cfg.beta * kl_normal(enc["z_mu"], enc["z_logvar"]).mean() / ((model.D + 1) ** 2)
    return loss, enc


def _batch(tr: "Trainer", b) -> DistillBatch:
    """The trainer's batch ``b`` with the seed's targets, in-plane turns, synthetic rows and noise (random draws in
    a fixed order: turns and noise from tr.gen, synthetic images from tr.synth_gen)."""
    cfg, sd, dev = tr.config, tr.seed, tr.device
    pos = torch.as_tensor(b.pos)
    out = DistillBatch(b.y_real.to(dev, non_blocking=True) * tr.sign, b.Y.to(dev, non_blocking=True) * tr.sign,
                       b.ctf.to(dev) if b.ctf is not None else None, sd["rot_t"][pos].to(dev),
                       sd["trans_t"][pos].to(dev), sd["has_t"][pos].to(dev).float(),
                       z_seed=sd["z_t"][pos].to(dev) if sd.get("z_t") is not None else None)
    ang = tr.inplane_angles()
    if ang is not None:
        out.ang = ang[: len(pos)].to(dev)
        ns = int(round(cfg.seeded.distill_synth_ratio * len(pos))) if tr.synth is not None else 0
        if ns:
            with torch.autocast(dev.type, enabled=False):   # physics in fp32
                out.synth = (tr.synth_z.render(ns, tr.synth_gen) if tr.synth_z is not None
                             else (*tr.synth.render(ns, tr.synth_gen), None))
    if cfg.encoder.variational:
        eps = torch.randn(tr.batch, max(cfg.zdim, 1), generator=tr.gen)[tr.rank::tr.world, : cfg.zdim]
        out.eps = eps.to(dev)
    return out


def distill_step(tr: "Trainer", b) -> float:
    """One distill step of trainer ``tr`` on its local rows of a global batch; returns the global mean loss
    (nan/inf: nothing updated). The model runs outside the DDP wrapper: gradients are averaged by hand."""
    cfg = tr.config
    mp = tr.mask(mask_radius_at(cfg, tr.D, tr.images_seen))
    db = _batch(tr, b)
    lr = lr_at(cfg, tr.images_seen, tr.images_total) * distill_lr_factor(cfg, tr.images_seen, tr.distill_images)
    for grp in tr.optim.param_groups:
        grp["lr"] = lr
    tr.model.train()
    tr.optim.zero_grad(set_to_none=True)
    with tr.amp.autocast():   # the same precision as the joint step (the physics stays fp32 inside the model)
        loss, enc = distill_loss(tr.model, cfg, db, mp, width=grid_width_at(cfg, tr.images_seen, tr.distill_images),
                                 fit_decoder=tr.step % max(cfg.seeded.distill_decoder_every, 1) == 0, gen=tr.synth_gen)
    n = len(b.pos)
    tr.record(np.asarray(b.pos), enc["rot"][:n], enc["trans"][:n], enc["z_mu"])
    gloss = float(tr.par.mean(loss.detach()))
    if not math.isfinite(gloss):
        return gloss
    tr.amp.backward(loss)
    tr.par.average_gradients(tr.model)
    tr.amp.step(tr.optim)
    return gloss


def prepare_synth(tr: "Trainer") -> Iterator:
    """Fit the synthetic-image renderer to the seed's map and the data (distill phase, in-plane augmentation,
    distill_synth_ratio > 0); a map that does not explain the data leaves the distill on real images. Yields
    Message events."""
    cfg, sd = tr.config, tr.seed
    if tr.synth is not None or sd is None or cfg.seeded.distill_synth_ratio <= 0 or not tr.augment:
        return
    try:
        tr.synth = SeedRenderer.fit(sd["volume"], tr.data, sd["pos"], sd["rot"], sd["trans"], sign=tr.sign,
                                    device=tr.device).limit_band(tr.model.encoder.box)
    except ValueError as exc:
        yield Message("warning", f"synthetic distill images off: {exc}", "synthetic_images")
        return
    yield Message("info", f"synthetic distill images: {cfg.seeded.distill_synth_ratio:g} per real image, from the "
                          f"seed's map (amplitude {tr.synth.amplitude:.3g}, noise spectrum fitted on "
                          f"{tr.synth.fit_images} particles)", "synthetic_images")
    if cfg.seeded.distill_synth_z and cfg.zdim > 0 and sd.get("z_t") is not None:
        try:
            tr.synth_z = hetero_renderer(tr)
        except ValueError as exc:
            yield Message("info", f"synthetic images of the seed's heterogeneity off: {exc}", "synthetic_images")
            return
        if tr.synth_z is not None:
            yield Message("info", f"synthetic distill images drawn from {len(tr.synth_z.renderers)} maps of the "
                                  "seed's states or coordinate bins, with their z", "synthetic_images")


def hetero_renderer(tr: "Trainer") -> HeteroRenderer | None:
    """Maps of the seed's states (K >= 2) or of ``distill_synth_z_bins`` k-means bins of its coordinates,
    reconstructed at the seed's poses (reconstruct.final), as synthetic-image renderers with each group's mean z
    target; None when the seed found no heterogeneity or too few particles for two groups."""
    from sklearn.cluster import KMeans

    from cryofire_app.reconstruct.final import chunk_size, final_maps

    sd, cfg = tr.seed, tr.config
    pos = np.asarray(sd["pos"], np.int64)
    zt = sd["z_t"][torch.as_tensor(pos)].numpy().astype(np.float64)
    state = np.asarray(sd["state"], np.int64)
    if state.size == len(pos) and state.max() >= 1:
        groups = state
    else:
        bins = min(cfg.seeded.distill_synth_z_bins, len(pos) // 100)
        if bins < 2:
            return None
        groups = KMeans(bins, n_init=4, random_state=cfg.seed).fit_predict(zt).astype(np.int64)
    K = int(groups.max()) + 1
    targets = np.stack([zt[groups == k].mean(0) if np.any(groups == k) else np.zeros(zt.shape[1])
                        for k in range(K)])
    ctf = tr.data.ctf.numpy()[pos] if tr.data.ctf is not None else None
    fm = final_maps(lambda rows: tr.data.resized_images(pos[rows]), len(pos), ctf, sd["rot"], sd["trans"],
                    state=groups, seed=cfg.seed, chunk=chunk_size(tr.D))
    vols = tr.sign * np.asarray(fm.state_volumes, np.float32)
    return HeteroRenderer.fit(vols, groups, targets, tr.data, pos, sd["rot"], sd["trans"], sign=tr.sign,
                              device=tr.device).limit_band(tr.model.encoder.box)


def encoder_agreement_deg(tr: "Trainer", n: int = 512) -> float:
    """Median angle (degrees) between the encoder's poses and the seed's on up to ``n`` seeded training particles
    (no ground truth needed; the encoder is distilled on exactly these poses, no mirror branch)."""
    pos = tr.seed["pos"]
    sample = pos[np.unique(np.linspace(0, len(pos) - 1, min(n, len(pos))).astype(np.int64))]
    pr = predict(tr.model, tr.data, sample, sign=tr.sign, select="encoder",
                 batch=tr.config.eval_batch_size, device=tr.device, use_z=True, sym=False)
    ang = geodesic_angle(torch.as_tensor(pr.rot, dtype=torch.float64),
                         tr.seed["rot_t"][torch.as_tensor(sample)].double())
    return float(ang.median())


def check_agreement(tr: "Trainer") -> Message:
    """Seeded: start the joint phase once the encoder reproduces the seed's poses; else keep distilling."""
    cfg, st = tr.config, tr.state
    st.agreement_deg = encoder_agreement_deg(tr)
    st.next_agreement = tr.images_seen + max(cfg.checkpoint_every // 4, 1000)
    if st.agreement_deg <= cfg.seeded.seed_agreement_deg:
        st.joint_ok = True
        return Message("info", f"encoder agrees with the seed's poses (median {st.agreement_deg:.1f} deg): "
                               "joint amortized training starts", "encoder_agreement")
    return Message("info", f"encoder still {st.agreement_deg:.1f} deg from the seed's poses (median; joint "
                           f"training starts below {cfg.seeded.seed_agreement_deg:g}): distilling goes on, the decoder "
                           "keeps training on the seed's poses", "encoder_agreement")
