"""Explicit voxel consensus volume in Hartley space: CTF-weighted back-projection with a Wiener step, and slicing.

The volume of a box ``d`` is kept on the 2x oversampled odd Hartley lattice of the zero-padded ``2d`` box:
``(2d+1)^3`` points, axes ``(kz, ky, kx)``, index ``j`` <-> ``-1/2 + j/(2d)`` cycles/pixel (pixels of box ``d``).
This is the lattice :class:`cryofire_app.physics.FourierProjector` builds with ``pad=2``, so slicing goes through
:func:`cryofire_app.physics.slice_ht_volume` (trilinear) and the same coordinates ``k_img @ rot`` as everywhere else.

Model (exact for real volumes; the CTF is even in k): for an image with rotation ``R`` and shift ``t`` (px, the shift
that re-centres it), ``T_t[Y](k) = C(k) V(k @ R) + noise``. Back-projection splats ``w C T_t[Y]`` and ``w C^2`` with
trilinear weights; the Wiener solution per voxel is ``num / (den + sigma^2 / tau^2(|k|))`` with ``tau^2`` the signal
power per shell, estimated from the data in the same call.
"""
from __future__ import annotations

import math

import torch

from ..physics.fft import fourier_resize, iht3_center_crop
from ..physics.projector import FourierProjector


def soft_sphere(d: int, radius: float, width: float = 3.0, dtype=torch.float32, device=None) -> torch.Tensor:
    """Real-space soft spherical mask ``(d, d, d)``: 1 inside ``radius`` voxels of the centre voxel ``d//2``, cosine
    fall-off to 0 over ``width`` voxels."""
    ax = torch.arange(d, dtype=torch.float64, device=device) - d // 2
    r = torch.sqrt(ax[:, None, None] ** 2 + ax[None, :, None] ** 2 + ax[None, None, :] ** 2)
    m = torch.clamp((r - radius) / max(width, 1e-6), 0.0, 1.0)
    return (0.5 * (1 + torch.cos(math.pi * m))).to(dtype)


class HartleyAccumulator:
    """Back-projection sums for one volume of box ``d`` (on the ``(2d+1)^3`` lattice described in the module doc)."""

    def __init__(self, d: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
        self.d = int(d)
        self.n = 2 * self.d + 1
        self.device = torch.device(device)
        self.num = torch.zeros(self.n ** 3, dtype=dtype, device=self.device)
        self.den = torch.zeros(self.n ** 3, dtype=dtype, device=self.device)

    def insert(self, y: torch.Tensor, ctf: torch.Tensor, coords: torch.Tensor, weight: torch.Tensor | None = None):
        """Add images. ``y (B, M)``: re-centred Hartley values ``T_t[Y]``; ``ctf (B, M)``; ``coords (B, M, 3)`` volume
        frame ``(kx, ky, kz)`` cycles/px (``k_img @ rot``, all with ``|k| <= 1/2``); ``weight (B,)`` (default 1)."""
        b, m = y.shape
        w = torch.ones(b, dtype=y.dtype, device=y.device) if weight is None else weight.to(y.dtype)
        self.insert_sums(w[:, None] * ctf * y, w[:, None] * ctf * ctf, coords)

    def insert_sums(self, num: torch.Tensor, den: torch.Tensor, coords: torch.Tensor):
        """Splat precomputed sums ``num (B, M)`` (``sum w C T_t[Y]``) and ``den (B, M)`` (``sum w C^2``) at
        ``coords (B, M, 3)`` (cycles/px, volume frame) with trilinear weights."""
        g = (coords.reshape(-1, 3) + 0.5) * (2 * self.d)  # float lattice index per axis (x, y, z)
        g = torch.clamp(g, 0.0, self.n - 1.0)
        g0 = torch.clamp(torch.floor(g), max=self.n - 2)
        f = g - g0
        g0 = g0.long()
        n = self.n
        base = (g0[:, 2] * n + g0[:, 1]) * n + g0[:, 0]
        fx, fy, fz = f[:, 0], f[:, 1], f[:, 2]
        wx = (1 - fx, fx)
        wy = (1 - fy, fy)
        vals = num.reshape(-1)
        wts = den.reshape(-1)
        for dz, wz in ((0, 1 - fz), (1, fz)):
            for dy in (0, 1):
                wyz = wy[dy] * wz
                for dx in (0, 1):
                    tri = wx[dx] * wyz
                    idx = base + ((dz * n + dy) * n + dx)
                    self.num.index_add_(0, idx, tri * vals)
                    self.den.index_add_(0, idx, tri * wts)

    @classmethod
    def merged(cls, accs: list["HartleyAccumulator"]) -> "HartleyAccumulator":
        """One accumulator holding the sums of ``accs`` (same box): e.g. the full map of two half maps' images."""
        out = cls(accs[0].d, device=accs[0].device, dtype=accs[0].num.dtype)
        for a in accs:
            out.num += a.num
            out.den += a.den
        return out

    def _shells(self, z0: int, z1: int) -> torch.Tensor:
        """Shell of each lattice point in z-planes ``z0:z1`` (flattened), in units of 1/(2d) cycles/px."""
        ax = torch.arange(self.n, dtype=torch.float32, device=self.device) - self.d
        r = torch.sqrt(ax[z0:z1, None, None] ** 2 + (ax[None, :, None] ** 2 + ax[None, None, :] ** 2))
        return torch.round(r).long().reshape(-1)

    def _slabs(self, stop: int | None = None):
        """z-plane ranges of about 2^21 lattice points each: the solve's temporaries stay a few MB at any box."""
        stop = self.n if stop is None else stop
        step = max(1, 2 ** 21 // (self.n * self.n))
        return [(z0, min(z0 + step, stop)) for z0 in range(0, stop, step)]

    def solve(self, sigma2: float, mask_radius: float | None = None, max_freq: float = 0.5,
              tau2_floor: float = 1e-3) -> tuple[torch.Tensor, dict]:
        """Wiener solution -> real-space volume ``(d, d, d)`` (axes z, y, x; voxel units consistent with projections
        that are line integrals). ``sigma2``: noise variance per Hartley coefficient of the data. ``mask_radius``
        (voxels) applies :func:`soft_sphere`. Frequencies beyond ``max_freq`` cycles/px are zeroed. Returns the volume
        and a dict with the per-shell signal power ``tau2`` and spectral SNR ``ssnr``. Works through the lattice in
        slabs of z-planes, so its memory beyond the accumulator is about one (2d)^3 transform."""
        return HartleyAccumulator.solve_sum([self], sigma2, mask_radius, max_freq, tau2_floor)

    @staticmethod
    def solve_sum(accs: list["HartleyAccumulator"], sigma2: float, mask_radius: float | None = None,
                  max_freq: float = 0.5, tau2_floor: float = 1e-3) -> tuple[torch.Tensor, dict]:
        """:meth:`solve` for the sums of ``accs`` (same box), e.g. the full map of two half maps' images, without a
        merged copy of them in memory."""
        a0 = accs[0]
        n, plane = a0.n, a0.n * a0.n

        def part(z0: int, z1: int) -> tuple[torch.Tensor, torch.Tensor]:   # the summed num, den of planes z0:z1
            sl = slice(z0 * plane, z1 * plane)
            if len(accs) == 1:
                return a0.num[sl], a0.den[sl]
            return sum(a.num[sl] for a in accs), sum(a.den[sl] for a in accs)

        nsh = int(a0._shells(0, 1).max()) + 1   # the corner plane holds the largest shell
        lam1 = 1e-3 * sum(float(a.den.mean()) for a in accs) + 1e-12   # pass 1: mild regulariser
        sums = torch.zeros(4, nsh, dtype=torch.float64, device=a0.device)   # count, den, |v1|^2, noise variance
        for z0, z1 in a0._slabs():
            shell, (num, den) = a0._shells(z0, z1), part(z0, z1)
            v1 = num / (den + lam1)
            noise_var = sigma2 * den / (den + lam1) ** 2
            for row, w in enumerate((None, den, v1 * v1, noise_var)):
                sums[row] += torch.bincount(shell, weights=None if w is None else w.double(), minlength=nsh)
        cnt = sums[0].clamp(min=1)
        den_mean, p, nv = (sums[k] / cnt for k in (1, 2, 3))
        # signal power per shell = power of the estimate minus its noise variance
        tau2 = torch.maximum(torch.clamp(p - nv, min=0.0), tau2_floor * nv + 1e-30).to(a0.num.dtype)
        reg = sigma2 / tau2
        vol = torch.zeros(n - 1, n - 1, n - 1, dtype=a0.num.dtype, device=a0.device)
        for z0, z1 in a0._slabs(n - 1):
            shell, (num, den) = a0._shells(z0, z1), part(z0, z1)
            v = num / (den + reg[shell])
            v = torch.where(shell.to(v.dtype) / (2 * a0.d) <= max_freq, v, torch.zeros_like(v))
            vol[z0:z1] = v.reshape(z1 - z0, n, n)[:, :-1, :-1]
        real = iht3_center_crop(vol, a0.d)  # box 2d, object in the central d
        del vol
        if mask_radius is not None:
            real = real * soft_sphere(a0.d, mask_radius, dtype=real.dtype, device=real.device)
        ssnr = tau2.double() * den_mean / max(sigma2, 1e-30)
        return real, {"tau2": tau2.cpu(), "ssnr": ssnr.to(a0.num.dtype).cpu()}


def slicing_volume(real: torch.Tensor) -> torch.Tensor:
    """Hartley volume ``(2d+1)^3`` of a real volume ``(d, d, d)`` for :func:`~cryofire_app.physics.slice_ht_volume`
    (zero padding x2, radial gridding correction, Nyquist sphere; identical to ``FourierProjector(real, pad=2)``)."""
    return FourierProjector(real, pad=2).vol_ht


def resize_volume(vol: torch.Tensor, d_new: int) -> torch.Tensor:
    """Fourier crop/pad of a seeding volume to box ``d_new`` that keeps its Hartley coefficients (the seeding stages'
    data are crops of one lattice, so volumes at different boxes share coefficients, not mean values)."""
    d = vol.shape[-1]
    if d == d_new:
        return vol
    return fourier_resize(vol, d_new, ndim=3) * (d / d_new) ** 3
