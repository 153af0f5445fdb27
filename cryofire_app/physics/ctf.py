"""Contrast transfer function (method_spec 4.1; same formula as cryoDRGN/cryoFIRE ``compute_ctf``).

Units: spatial frequency ``freqs`` in cycles/pixel (``kx`` along columns, ``ky`` along rows, as in
:class:`~cryofire_app.physics.lattice.Lattice`), pixel size ``apix`` in Angstrom, defocus U/V in Angstrom (positive =
underfocus), astigmatism angle ``dfang`` in degrees (the dfU axis, measured from the +kx axis towards +ky), voltage in
kV, spherical aberration in mm, amplitude contrast ``w`` as a fraction, phase shift in degrees, B-factor in A^2.

    s = freqs / apix,  alpha = atan2(s_y, s_x)
    df(alpha) = (dfU + dfV)/2 + (dfU - dfV)/2 cos(2 (alpha - dfang))
    gamma = 2 pi (-1/2 df lambda s^2 + 1/4 Cs lambda^3 s^4) - phase
    C = sqrt(1 - w^2) sin(gamma) - w cos(gamma)            (so C(0) = -w)
    C *= exp(-B s^2 / 4)   when bfactor != 0

C is even in k, so it multiplies Hartley coefficients exactly.

Sign: this is the cryoDRGN/cryoFIRE sign. RELION's CTF (``ctf.h``; what ``relion_project --ctf`` multiplies
projections with) is the **negative**, ``C_RELION = -C`` (``C_RELION(0) = +w``), so positive density comes out white,
as in RELION-extracted (contrast-inverted) particles. Pinned against relion_project output in
tests/test_physics_oracles.py. Data in the RELION convention must be multiplied by -1 before it is compared with
``C * projection`` (cryoDRGN's ``--invert-data``).
"""
from __future__ import annotations

import math

import torch

TensorLike = torch.Tensor | float


def electron_wavelength(kv: torch.Tensor) -> torch.Tensor:
    """Relativistic electron wavelength in Angstrom for an acceleration voltage in kV."""
    v = kv * 1e3
    return 12.2639 / torch.sqrt(v + 0.97845e-6 * v * v)


def _as_batch(x: TensorLike, ref: torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(x, dtype=ref.dtype, device=ref.device)
    return t.reshape(-1, 1)  # (B, 1) or (1, 1): broadcasts over the M frequencies


def compute_ctf(freqs: torch.Tensor, apix: TensorLike, dfu: TensorLike, dfv: TensorLike, dfang_deg: TensorLike,
                kv: TensorLike, cs_mm: TensorLike, w: TensorLike, phase_deg: TensorLike = 0.0,
                bfactor: TensorLike = 0.0) -> torch.Tensor:
    """CTF values ``(B, M)`` at ``freqs (M, 2)`` (cycles/px) for B parameter sets (each a ``(B,)`` tensor or scalar).

    See the module docstring for units and the formula. Output dtype/device follow ``freqs``.
    """
    apix_, dfu_, dfv_, ang_, kv_, cs_, w_, ph_, b_ = (
        _as_batch(v, freqs) for v in (apix, dfu, dfv, dfang_deg, kv, cs_mm, w, phase_deg, bfactor))
    sx = freqs[:, 0].unsqueeze(0) / apix_
    sy = freqs[:, 1].unsqueeze(0) / apix_
    s2 = sx * sx + sy * sy
    alpha = torch.atan2(sy, sx)
    lam = electron_wavelength(kv_)
    cs = cs_ * 1e7
    df = 0.5 * (dfu_ + dfv_ + (dfu_ - dfv_) * torch.cos(2 * (alpha - ang_ * (math.pi / 180))))
    gamma = 2 * math.pi * (-0.5 * df * lam * s2 + 0.25 * cs * lam ** 3 * s2 * s2) - ph_ * (math.pi / 180)
    ctf = torch.sqrt(1 - w_ * w_) * torch.sin(gamma) - w_ * torch.cos(gamma)
    if torch.any(b_ != 0):
        ctf = ctf * torch.exp(-b_ * s2 / 4)
    return ctf


def ctf_from_params(freqs: torch.Tensor, params: torch.Tensor, D_img: int | None = None,
                    bfactor: TensorLike = 0.0) -> torch.Tensor:
    """CTF ``(B, M)`` from cryoDRGN ctf.pkl rows ``params (B, 9)`` = ``[D, apix, dfU, dfV, dfang, kV, Cs, w, phase]``.

    The row's pixel size belongs to its box ``D``; when the images were resized to ``D_img`` pass it, and the
    effective pixel size ``D * apix / D_img`` is used (method_spec 1.9).
    """
    p = torch.as_tensor(params, dtype=freqs.dtype, device=freqs.device)
    if p.dim() == 1:
        p = p.unsqueeze(0)
    if p.shape[-1] != 9:
        raise ValueError(f"ctf params must have 9 columns (cryoDRGN ctf.pkl rows), got {tuple(p.shape)}")
    apix = p[:, 1] if D_img is None else p[:, 0] * p[:, 1] / D_img
    return compute_ctf(freqs, apix, p[:, 2], p[:, 3], p[:, 4], p[:, 5], p[:, 6], p[:, 7], p[:, 8], bfactor)
