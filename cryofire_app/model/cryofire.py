"""Full cryoFIRE model: encoder + implicit Hartley decoder + the physics of the symmetric loss.

Conventions (docs/design.md): images `[row, col]`, symmetrized Hartley lattice `Dl = D + 1` points per axis, flat
index `row * Dl + col`, frequencies in cycles/pixel, `rot` with k_vol = k_img @ rot, `trans` in pixels (the shift that
re-centres the observed image; it is applied to the observed image, never to the prediction).

Symmetric loss (method_spec §5): branch 0 is the image, branch 1 its exact x-mirror. In real space the mirror is
`j -> (D - j) mod D` along columns (flip then roll by +1, §9.1), which equals the flip k_x -> -k_x of the symmetrized
Hartley lattice. A pose (R', t') predicted on branch 1 corresponds to (diag(-1, 1, -1) R', (-t'_x, t'_y)) on the image.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

from cryofire_app.model.decoder import FeatureGridDecoder, HartleyDecoder
from cryofire_app.model.encoder import Encoder
from cryofire_app.model.view import ViewEncoder
from cryofire_app.physics.ctf import ctf_from_params
from cryofire_app.physics.inplane import rotate_images, rotate_poses
from cryofire_app.physics.lattice import Lattice
from cryofire_app.physics.shift import translate_ht

MIRROR_ROT = (-1.0, 1.0, -1.0)   # row signs of diag(-1, 1, -1) @ R


def mirror_images(x: torch.Tensor) -> torch.Tensor:
    """Exact x-mirror about the centre pixel D/2: out[..., j] = x[..., (D - j) mod D]."""
    return torch.roll(torch.flip(x, dims=[-1]), shifts=1, dims=-1)


def compensate_mirror(rot: torch.Tensor, trans: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pose predicted on the mirrored image -> pose of the original image: R = diag(-1,1,-1) R', t = (-t'x, t'y)."""
    s = rot.new_tensor(MIRROR_ROT)
    return rot * s[:, None], trans * trans.new_tensor((-1.0, 1.0))


@dataclass
class MaskPoints:
    """The lattice points inside the current frequency mask, with the gathers both branches need.

    Point order: the M/2 points with flat index below DC first, then their negatives in the same order
    (point M/2 + j is -point j; the mask is symmetric under k -> -k and excludes DC), so a decoder with
    `forward_pairs` evaluates the first half only (half-lattice evaluation, see FeatureGridDecoder).
    idx2 (2, M): flat lattice index of Y^(b)(k) for b = 0, 1; neg2 (2, M): index of Y^(b)(-k);
    coords (M, 3) = (kx, ky, 0) and freqs (M, 2) cycles/px of the kept points; ctf_freqs (2M, 2): CTF sample points of
    both branches (branch 1 at (-kx, ky)).
    """

    radius: int
    idx: torch.Tensor
    idx2: torch.Tensor
    neg2: torch.Tensor
    coords: torch.Tensor
    freqs: torch.Tensor
    ctf_freqs: torch.Tensor

    @property
    def M(self) -> int:
        return int(self.idx.numel())


def mask_points(lattice: Lattice, radius: int, device: torch.device | str = "cpu") -> MaskPoints:
    keep = torch.as_tensor(lattice.circle_mask(radius)).cpu()
    neg = torch.as_tensor(lattice.neg_index).long().cpu()
    lo = torch.nonzero(keep[: lattice.dc_index]).squeeze(1)
    idx = torch.cat([lo, neg[lo]])
    flip = torch.as_tensor(lattice.flipx_index).long().cpu()
    idx2 = torch.stack([idx, flip[idx]])
    neg2 = torch.stack([neg[idx], flip[neg[idx]]])
    coords = torch.as_tensor(lattice.coords).cpu()[idx].float()
    freqs = torch.as_tensor(lattice.freqs2d).cpu()[idx].float()
    ctf_freqs = torch.cat([freqs, freqs * freqs.new_tensor((-1.0, 1.0))])
    return MaskPoints(radius, idx.to(device), idx2.to(device), neg2.to(device), coords.to(device), freqs.to(device),
                      ctf_freqs.to(device))


DECODER_ARCHS = ("mlp", "grid")
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast_context(device: torch.device | str, precision: str = "fp32"):
    """Mixed-precision context for the encoder CNN/MLP and the decoder MLP: `fp32` (none), `bf16` (CPU or CUDA) or
    `fp16` (CUDA only; pair it with a gradient scaler). Poses, slice coordinates, grid sampling, CTF, shifts and the
    loss stay fp32 inside it (branch_errors and the decoders switch autocast off there)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {tuple(PRECISIONS)}, got {precision!r}")
    dev = torch.device(device)
    if PRECISIONS[precision] is None:
        return contextlib.nullcontext()
    if precision == "fp16" and dev.type != "cuda":
        raise ValueError("precision fp16 needs a CUDA device (use bf16 or fp32 on the CPU)")
    return torch.autocast(dev.type, dtype=PRECISIONS[precision])


def make_decoder(D: int, zdim: int, arch: str = "mlp", generator: torch.Generator | None = None,
                 **kwargs) -> nn.Module:
    """`arch="mlp"`: HartleyDecoder (random Fourier features + residual MLP, the original); `"grid"`:
    FeatureGridDecoder (trilinear feature volume + small MLP). kwargs go to the chosen class."""
    if arch == "mlp":
        return HartleyDecoder(D, zdim, generator=generator, **kwargs)
    if arch == "grid":
        return FeatureGridDecoder(D, zdim, generator=generator, **kwargs)
    raise ValueError(f"decoder arch must be one of {DECODER_ARCHS}, got {arch!r}")


class CryoFIRE(nn.Module):
    """Encoder + decoder. `forward` returns per-branch squared errors; see `branch_errors`."""

    def __init__(self, D: int, zdim: int = 8, encoder_kwargs: dict | None = None, decoder_kwargs: dict | None = None,
                 seed: int = 0, view_kwargs: dict | None = None):
        """``view_kwargs``: a :class:`ViewEncoder` (model.view) beside the encoder, refining its view direction at
        inference (training.inference.encode_with_turns); None: none."""
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.D, self.zdim = D, zdim
        self.encoder = Encoder(D, zdim, **(encoder_kwargs or {}))
        self.decoder = make_decoder(D, zdim, generator=g, **(decoder_kwargs or {}))
        self.view = ViewEncoder(D, **view_kwargs) if view_kwargs is not None else None

    # ---- pieces -------------------------------------------------------------------------------------------------
    def encode_branches(self, y_real: torch.Tensor, sym: bool = True) -> dict[str, torch.Tensor]:
        """Encoder on [images; mirrored images] in one batch (2B rows, branch-major) or on the images only."""
        x = torch.cat([y_real, mirror_images(y_real)]) if sym else y_real
        return self.encoder(x)

    def encode_turned(self, y_real: torch.Tensor, angles: torch.Tensor, pose_as_given: bool = True,
                      pose_images: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Encoder outputs for B images with the pose read from each image turned in plane by ``angles`` radians,
        ``(B,)`` or ``(K, B)`` (K turns per image), and turned back (physics.inplane: ``rot = Q3^T rot_turned``,
        ``trans = Q^T trans_turned``): ``rot`` ``angles.shape + (3, 3)``, ``trans`` ``angles.shape + (2,)``; z (plus
        logvar) and ``rot0``/``trans0`` (grid head: and ``rot_logits0``) read from the image as it is, ``z_turned``
        (``angles.shape + (zdim,)``) from the turned copies (the distill phase's z target applies to both);
        ``pose_as_given=False`` (training) skips ``rot0``/``trans0`` and so the pose heads on those rows. One CNN
        call on (K + 1) B rows. Training (one turn per image) makes the pose come from the particle's appearance at
        any in-plane angle, so the encoder cannot memorise the training images' poses; z is left free to use the
        image as given, since a turned z loses the state split (docs/decisions/004-encoder-in-plane-augmentation.md).
        Inference combines K turns (training.inference.encode_with_turns). ``pose_images`` (P, D, D) with ``angles``
        (P,): turn these instead of ``y_real`` for the pose (and ``z_turned``) rows; the distill phase passes the B real
        images followed by synthetic ones."""
        B = y_real.shape[0]
        flat = angles.reshape(-1)
        nt = flat.shape[0]
        if pose_images is not None and (angles.dim() != 1 or len(pose_images) != nt):
            raise ValueError(f"pose_images ({len(pose_images)}) need one angle each, got angles {tuple(angles.shape)}")
        src = y_real.repeat(nt // B, 1, 1) if pose_images is None else pose_images.to(y_real.dtype)
        turned = rotate_images(src, flat).to(y_real.dtype)
        h = self.encoder.features(torch.cat([turned, y_real]))
        out = self.encoder.heads(h[:nt])                               # the turned copies
        given = self.encoder.heads(h[nt:], pose=pose_as_given)         # the images as given
        rot, trans = rotate_poses(out["rot"], out["trans"], flat, inverse=True)
        enc = {"rot": rot.view(*angles.shape, 3, 3), "trans": trans.view(*angles.shape, 2), "z_mu": given["z_mu"],
               "z_turned": out["z_mu"].view(*angles.shape, -1)}
        if pose_as_given:
            enc["rot0"], enc["trans0"] = given["rot"], given["trans"]
        if "rot_logits" in out:   # grid head: scores of the turned images (their own frame, not turned back)
            enc["rot_logits"] = out["rot_logits"].view(*angles.shape, -1)
            if pose_as_given:
                enc["rot_logits0"] = given["rot_logits"]
        if "z_logvar" in given:
            enc["z_logvar"] = given["z_logvar"]
        return enc

    def slice_points(self, rot: torch.Tensor, mp: MaskPoints) -> torch.Tensor:
        """(n, 3, 3) -> (n, M, 3) volume-frame frequencies k_img @ rot of the masked lattice points."""
        return torch.matmul(mp.coords, rot)

    def branch_errors(self, Y: torch.Tensor, ctf_params: torch.Tensor, enc: dict[str, torch.Tensor],
                      z: torch.Tensor, mp: MaskPoints, sym: bool = True) -> torch.Tensor:
        """Mean squared error over the mask for each branch and image: (S, B) with S = 2 (sym) or 1.

        Y: (B, Dl*Dl) normalized symmetrized Hartley images (full lattice); ctf_params: (B, 9) cryoDRGN rows with
        column 1 the pixel size of the training box; enc: encoder outputs for S*B rows (branch-major); z: (S*B, d).
        The prediction is C^(b) * V(k @ R, z); the target is the observed branch image translated by +t.
        """
        B = Y.shape[0]
        S = 2 if sym else 1
        M = mp.M
        fp32 = torch.autocast(Y.device.type, enabled=False)   # physics in fp32 even under mixed precision
        with fp32:
            idx2, neg2 = mp.idx2[:S], mp.neg2[:S]
            Yg = Y[:, idx2.reshape(-1)].view(B, S, M).transpose(0, 1).reshape(S * B, M)
            Yn = Y[:, neg2.reshape(-1)].view(B, S, M).transpose(0, 1).reshape(S * B, M)
            target = translate_ht(Yg, Yn, mp.freqs, enc["trans"].float())
            rot = enc["rot"].float()
            if getattr(self.decoder, "half_lattice", False):   # evaluate k only, get V(k) and V(-k)
                k = torch.matmul(mp.coords[: M // 2], rot)
            else:
                k = torch.matmul(mp.coords, rot)
        if getattr(self.decoder, "half_lattice", False):
            V = self.decoder(k, z, pairs=True)
        else:
            V = self.decoder(k, z)
        with fp32:
            V = V.float()
            if ctf_params is not None:
                C = ctf_from_params(mp.ctf_freqs[: S * M], ctf_params).view(B, S, M).transpose(0, 1)
                V = C.reshape(S * B, M) * V
            return ((V - target) ** 2).mean(-1).view(S, B)

    def latent(self, enc: dict[str, torch.Tensor], pose_only: bool, eps: torch.Tensor | None,
               std_z_init: float = 3.0) -> torch.Tensor:
        """The z fed to the decoder: std_z_init * eps in the pose-only phase; mu + eps * exp(logvar/2) for a
        variational encoder when eps is given (training); mu otherwise. eps: (rows, d) standard normal or None."""
        mu = enc["z_mu"]
        if pose_only:
            return std_z_init * eps if eps is not None else torch.zeros_like(mu)
        if "z_logvar" in enc and eps is not None:
            return mu + eps * torch.exp(0.5 * enc["z_logvar"])
        return mu

    def forward(self, y_real: torch.Tensor, Y: torch.Tensor, ctf_params: torch.Tensor | None, mp: MaskPoints,
                pose_only: bool = False, eps: torch.Tensor | None = None, std_z_init: float = 3.0,
                sym: bool = True, inplane: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One training/eval forward: per-branch errors (S, B) and the encoder outputs (S*B rows, plus "z").

        ``inplane (B,)`` radians (training augmentation, ``sym=False`` only): the encoder sees each image turned in
        plane by its angle, and its pose is turned back (physics.inplane.rotate_poses inverse) before the decoder
        renders the original image, so the loss is unchanged in meaning but the encoder must be equivariant."""
        if inplane is not None:
            if sym:
                raise ValueError("in-plane augmentation is not defined with the symmetric (mirror) loss")
            enc = self.encode_turned(y_real, inplane, pose_as_given=False)
        else:
            enc = self.encode_branches(y_real, sym)
        z = self.latent(enc, pose_only, eps, std_z_init)
        enc = dict(enc, z=z)
        return self.branch_errors(Y, ctf_params, enc, z, mp, sym), enc

    # ---- volumes ------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def decode_volume_ht(self, z: torch.Tensor | None, radius: float | None = None, chunk: int = 65536) -> torch.Tensor:
        """Hartley volume (D, D, D) (axes kz, ky, kx; DC at D//2) in normalized units for one z (d,) or None.

        Points with |k| > radius pixels (default D//2) and the 3D DC (never trained) are zero; nothing else is.
        """
        D = self.D
        ax = torch.arange(D, dtype=torch.float32) - D // 2
        kz, ky, kx = torch.meshgrid(ax, ax, ax, indexing="ij")
        k = torch.stack([kx, ky, kz], dim=-1).reshape(-1, 3)
        r = k.norm(dim=-1)
        rmax = float(D // 2 if radius is None else radius)
        keep = (r <= rmax) & (r > 0)
        dev = next(self.parameters()).device
        pts = (k[keep] / D).to(dev)
        zz = None if z is None or self.zdim == 0 else z.reshape(1, -1).to(dev)
        out = torch.zeros(D ** 3, device=dev)
        vals = [self.decoder(pts[i:i + chunk][None], zz)[0] for i in range(0, pts.shape[0], chunk)]
        out[keep.to(dev)] = torch.cat(vals) if vals else out[:0]
        return out.reshape(D, D, D)
