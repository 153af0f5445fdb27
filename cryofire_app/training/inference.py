"""Batched eval-mode passes: encoder predictions for many particles, branch choice, validation loss.

Poses come out compensated (method_spec §5.2): when the mirrored branch wins, R = diag(-1,1,-1) R' and
t = (-t'x, t'y). `rot (n,3,3)` follows k_vol = k_img @ rot; `trans (n,2)` is in pixels of the training box.
Branch choice: `select="decoder"` compares both branches' errors on the masked lattice (radius `radius` px), which is
what the symmetric loss trained; `select="encoder"` keeps branch 0 (a pure encoder pass, no decoder call). With
`turns` > 1 the encoder itself chooses (encode_with_turns; grid head).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from cryofire_app.model.cryofire import (
    MIRROR_ROT,
    CryoFIRE,
    MaskPoints,
    autocast_context,
    compensate_mirror,
    mask_points,
    mirror_images,
)
from cryofire_app.model.encoder import Encoder, grid_pose
from cryofire_app.physics.fft import fourier_resize
from cryofire_app.physics.lattice import Lattice
from cryofire_app.physics.rotations import chordal_mean
from cryofire_app.training.dataset import Batch, ParticleData

INFER_TURNS = 8   # turns per image for encoders trained with in-plane augmentation (infer's default, final outputs)


def default_turns(config) -> int:
    """Turns per image for a run's encoder: INFER_TURNS if it was trained with in-plane augmentation, else 1."""
    return INFER_TURNS if config.augments_inplane() else 1


@dataclass
class Predictions:
    pos: np.ndarray        # (n,) positions in the ParticleSet
    rot: np.ndarray        # (n, 3, 3)
    trans: np.ndarray      # (n, 2) pixels
    z: np.ndarray          # (n, d)
    branch: np.ndarray     # (n,) 0 original, 1 mirrored
    loss: np.ndarray       # (n,) min-branch error (nan with select="encoder")
    state: np.ndarray | None = None   # (n,) states under the seed's mixture (cryofire infer), or None


def _prefetched(data: ParticleData, pos: np.ndarray, batch: int, with_Y: bool = True):
    from cryofire_app.training.dataset import Prefetcher

    chunks = iter([pos[i:i + batch] for i in range(0, len(pos), batch)])
    pf = Prefetcher(data, chunks, depth=2, with_Y=with_Y)
    try:
        yield from pf
    finally:
        pf.close()


def predict_batch(model: CryoFIRE, b: Batch, sign: float, mp: MaskPoints | None, device: torch.device,
                  use_z: bool = True, sym: bool = True, precision: str = "fp32",
                  turns: int = 1) -> dict[str, torch.Tensor]:
    """Eval-mode prediction for one batch. With mp None (encoder-only) branch 0 is kept."""
    with torch.inference_mode(), autocast_context(device, precision):
        return _predict_batch(model, b, sign, mp, device, use_z, sym, turns)


def encode_with_turns(model: CryoFIRE, y_real: torch.Tensor, turns: int) -> dict[str, torch.Tensor]:
    """Encoder outputs for ``y_real (n, D, D)``; with ``turns = K > 1`` the pose combines the encoder's answers for
    the image as given and turned in plane by 2 pi k / K (k = 1..K-1) (CryoFIRE.encode_turned), the translation is
    the mean of the turned-back translations and z is read from the image as given. For encoders trained with
    in-plane augmentation.

    Grid head (K dividing its in-plane angles): the mean of the K log-probability maps, each turned back onto the
    grid (Encoder.grid_turn_index), decoded once by grid_pose, so a turn that lands on a wrong mode is outvoted
    instead of averaged in; the same for the x-mirrored image (another projection of the particle, at pose
    diag(-1, 1, -1) R), and of the two poses the one the two maps together score higher (Encoder.grid_score) is the
    answer (``branch`` 1: the mirror's). The encoder alone, no decoder. Averaging the maps outvotes wrong modes
    that averaging decoded rotations keeps (decision 013). Other heads: the chordal mean of the turned-back
    rotations. A model with a view encoder (model.view; seeded runs by default) then reads the view direction from
    the image turned and re-centred at that pose (ViewEncoder.refine)."""
    if turns <= 1:
        return model.encoder(y_real)
    out = fuse_turns(model, y_real, turns)
    if "rot_logits" not in out:
        return out
    mir = fuse_turns(model, mirror_images(y_real), turns)
    rot_m, trans_m = compensate_mirror(mir["rot"], mir["trans"])
    pick = mirror_wins(model.encoder, out["rot_logits"], out["rot"], mir["rot_logits"], rot_m)
    out["rot"] = torch.where(pick[:, None, None], rot_m, out["rot"])
    out["trans"] = torch.where(pick[:, None], trans_m, out["trans"])
    out["branch"] = pick.long()
    if getattr(model, "view", None) is not None:   # the view encoder reads the image turned into its view's frame
        out["rot"] = model.view.refine(y_real, out["rot"], out["trans"])
    return out


def mirror_wins(enc: Encoder, logp: torch.Tensor, rot: torch.Tensor, logp_m: torch.Tensor,
                rot_m: torch.Tensor) -> torch.Tensor:
    """``(n,)`` bool: whether the mirror's pose ``rot_m`` (compensated, a pose of the image) scores higher than the
    image's own ``rot`` under the product of the image's map ``logp`` and the mirror's ``logp_m`` (read at
    diag(-1, 1, -1) R), both ``(n, G)`` log-probabilities over the encoder's grid (Encoder.grid_score)."""
    flip = rot.new_tensor(MIRROR_ROT)[:, None]      # diag(-1, 1, -1) @ R: the pose of the mirrored image

    def score(r: torch.Tensor) -> torch.Tensor:
        return enc.grid_score(logp, r) + enc.grid_score(logp_m, r * flip)

    return score(rot_m) > score(rot)


def fuse_turns(model: CryoFIRE, y_real: torch.Tensor, turns: int) -> dict[str, torch.Tensor]:
    """``rot``, ``trans``, ``z_*`` (grid head: and the mean log-probability map ``rot_logits``) from K turns of each
    image as given, without encode_with_turns' mirror (see there)."""
    n = y_real.shape[0]
    enc_net = model.encoder
    box = getattr(enc_net, "box", y_real.shape[-1])
    if box < y_real.shape[-1]:   # the encoder's own Fourier crop first: K turns of the small image are cheaper
        y_real = fourier_resize(y_real.float(), box, ndim=2)
    ang = torch.arange(1, turns, device=y_real.device, dtype=torch.float32) * (2 * math.pi / turns)
    enc = model.encode_turned(y_real, ang[:, None].expand(turns - 1, n))
    out = {k: v for k, v in enc.items() if k.startswith("z_")}
    out["trans"] = torch.cat([enc["trans0"][None], enc["trans"]]).mean(0)
    back = [enc_net.grid_turn_index(2 * math.pi * k / turns) for k in range(1, turns)] if "rot_logits0" in enc else []
    if back and all(j is not None for j in back):
        logp = torch.log_softmax(enc["rot_logits0"].float(), -1)
        for k, j in enumerate(back):   # score i of the image turned by angle k is the score j[i] of the image itself
            logp[:, j] += torch.log_softmax(enc["rot_logits"][k].float(), -1)
        out["rot_logits"] = logp / turns
        out["rot"] = grid_pose(out["rot_logits"], enc_net.rot_grid, enc_net.neighbourhood)
    else:
        out["rot"] = chordal_mean(torch.cat([enc["rot0"][None], enc["rot"]]).transpose(0, 1))
    return out


def _predict_batch(model, b, sign, mp, device, use_z, sym, turns=1) -> dict[str, torch.Tensor]:
    y_real = b.y_real.to(device) * sign
    n = y_real.shape[0]
    if mp is None or not sym or turns > 1:
        enc = encode_with_turns(model, y_real, turns)
        z = enc["z_mu"] if use_z else torch.zeros_like(enc["z_mu"])
        out = {"rot": enc["rot"], "trans": enc["trans"], "z": z,
               "branch": enc.get("branch", torch.zeros(n, dtype=torch.long, device=device)),
               "loss": torch.full((n,), float("nan"), device=device)}
        if mp is not None:
            Y = b.Y.to(device) * sign
            ctf = b.ctf.to(device) if b.ctf is not None else None
            out["loss"] = model.branch_errors(Y, ctf, dict(enc, z=z), z, mp, sym=False)[0]
        return out
    Y = b.Y.to(device) * sign
    ctf = b.ctf.to(device) if b.ctf is not None else None
    enc = model.encode_branches(y_real, sym=True)
    z = enc["z_mu"] if use_z else torch.zeros_like(enc["z_mu"])
    err = model.branch_errors(Y, ctf, dict(enc, z=z), z, mp, sym=True)          # (2, n)
    loss, branch = torch.min(err, dim=0)
    rot0, rot1 = enc["rot"][:n], enc["rot"][n:]
    t0, t1 = enc["trans"][:n], enc["trans"][n:]
    rot1c, t1c = compensate_mirror(rot1, t1)
    m = (branch == 1)
    rot = torch.where(m[:, None, None], rot1c, rot0)
    trans = torch.where(m[:, None], t1c, t0)
    zz = torch.where(m[:, None], z[n:], z[:n])
    return {"rot": rot, "trans": trans, "z": zz, "branch": branch, "loss": loss}


def predict(model: CryoFIRE, data: ParticleData, pos: np.ndarray, sign: float = 1.0, radius: int | None = None,
            select: str = "decoder", batch: int = 256, device: torch.device | str = "cpu", use_z: bool = True,
            sym: bool = True, precision: str = "fp32", turns: int = 1) -> Predictions:
    """Predictions for the particles at `pos` (eval mode, batched, data loaded in a background thread; encoder-only
    selection loads no Hartley transforms). `precision`: autocast of the networks (see model.autocast_context).
    `turns` > 1: the encoder's pose from that many in-plane turns of each image and (grid head) of its mirror, the
    branch chosen by the encoder's own scores, not the decoder (encode_with_turns)."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    mp = None
    if select == "decoder":
        r = min(int(radius if radius is not None else model.D // 2), model.D // 2)
        mp = mask_points(Lattice(model.D), r, device)
    elif select != "encoder":
        raise ValueError(f"select must be 'decoder' or 'encoder', got {select!r}")
    if turns > 1:   # K turns and the mirror make 2K encoder rows per image: ~1,024 rows a call (memory, speed)
        batch = max(16, min(batch, 1024 // (2 * turns)))
    parts: dict[str, list] = {k: [] for k in ("rot", "trans", "z", "branch", "loss")}
    for b in _prefetched(data, np.asarray(pos, dtype=np.int64), batch, with_Y=mp is not None):
        out = predict_batch(model, b, sign, mp, device, use_z, sym, precision, turns)
        for k in parts:
            parts[k].append(out[k].float().cpu() if k != "branch" else out[k].cpu())
    model.train(was_training)
    cat = {k: (torch.cat(v).numpy() if v else None) for k, v in parts.items()}
    n = len(pos)
    if n == 0:
        cat = {"rot": np.zeros((0, 3, 3), np.float32), "trans": np.zeros((0, 2), np.float32),
               "z": np.zeros((0, model.zdim), np.float32), "branch": np.zeros(0, np.int64),
               "loss": np.zeros(0, np.float32)}
    return Predictions(np.asarray(pos), cat["rot"], cat["trans"], cat["z"], cat["branch"], cat["loss"])


def refine_z(model: CryoFIRE, data: ParticleData, pred: Predictions, steps: int, sign: float = 1.0,
             radius: int | None = None, lr: float = 0.05, prior: float = 1.0, batch: int = 256,
             device: torch.device | str = "cpu") -> np.ndarray:
    """Semi-amortized z: from the encoder's ``pred.z``, ``steps`` Adam steps per particle on z alone (decoder and
    poses fixed at ``pred.rot``/``pred.trans``, branch 0 after the mirror compensation predict() applied) of the
    decoder's error on the lattice within ``radius`` px: the MAP z of a Gaussian likelihood (noise variance = the
    image's error at the encoder's z) and a Gaussian prior of precision ``prior`` about the encoder's z, so that z
    stays near the encoder's answer where the image says little. Returns ``(n, zdim)``."""
    device = torch.device(device)
    z_out = np.array(pred.z, dtype=np.float32, copy=True)
    if steps <= 0 or model.zdim == 0 or len(pred.pos) == 0:
        return z_out
    r = min(int(radius if radius is not None else model.D // 2), model.D // 2)
    mp = mask_points(Lattice(model.D), r, device)
    row = {int(p): i for i, p in enumerate(pred.pos)}
    was_training = model.training
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        for b in _prefetched(data, np.asarray(pred.pos, dtype=np.int64), batch, with_Y=True):
            ix = np.array([row[int(p)] for p in b.pos])
            Y = b.Y.to(device) * sign
            ctf = b.ctf.to(device) if b.ctf is not None else None
            enc = {"rot": torch.as_tensor(pred.rot[ix], device=device),
                   "trans": torch.as_tensor(pred.trans[ix], device=device)}
            z0 = torch.as_tensor(z_out[ix], device=device)
            z = z0.clone().requires_grad_(True)
            opt = torch.optim.Adam([z], lr=lr)
            with torch.no_grad():
                scale = model.branch_errors(Y, ctf, enc, z0, mp, sym=False)[0].clamp(min=1e-12)
            for _ in range(steps):
                err = model.branch_errors(Y, ctf, enc, z, mp, sym=False)[0]   # mean over the mp.M points
                loss = 0.5 * mp.M * (err / scale).sum() + 0.5 * prior * ((z - z0) ** 2).sum()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            z_out[ix] = z.detach().float().cpu().numpy()
    finally:
        for p in model.parameters():
            p.requires_grad_(True)
        model.train(was_training)
    return z_out
