"""Synthetic distill images: the seed's map projected at known poses, with the data's CTFs, shifts and noise.

The seeded schedule's encoder learns poses from these beside the real images (TrainConfig.seeded.distill_synth_ratio):
their poses are exact and unlimited, where the real images carry the seed's pose errors and are few enough to be
memorised. Everything is in the trainer's frame: sign-corrected data (positive density), the training box D, the
encoder input normalisation ``window * x / sigma_real``. The model's conventions hold: the clean image is
``C * P_R(V)`` with its content moved by ``-t`` (the model translates the observed image by ``+t``), ``t`` in px of the
training box, CTF rows as ParticleData holds them (column 1 = the training box's pixel size, Angstrom).

The amplitude (the data's scale relative to the seed's map) and the noise power spectrum (2D, per frequency: the
mean |FFT|^2 of the residual images) are fitted on real images at the seed's poses, so coloured noise is reproduced
as well as white noise; the residual also holds what the seed's map misses, which errs on the noisy side.
"""
from __future__ import annotations

import numpy as np
import torch

from cryofire_app.physics.ctf import ctf_from_params
from cryofire_app.physics.projector import FourierProjector, lattice_to_image
from cryofire_app.physics.rotations import random_rotations
from cryofire_app.physics.shift import translate_ht

FIT_IMAGES = 512    # real images (evenly spaced over the seeded ones) behind the amplitude and noise spectrum


class SeedRenderer:
    """Noisy synthetic images of one map (the seed's), normalised like the trainer's encoder input.

    volume: (D, D, D) real-space map, positive density; window: (D, D) the data's soft real-space window;
    sigma_real: the data's encoder-input RMS; amplitude: data scale per unit of the map's projection;
    noise_psd: (D, D) mean |FFT2|^2 of the noise in the unwindowed training-box images (numpy FFT layout);
    ctf: (n, 9) CTF rows to draw from (None: no CTF); trans: (n, 2) px shifts to draw from.
    The map is projected up to Nyquist (``rmax`` 0.5 cycles/px) until :meth:`limit_band` narrows it.
    """

    def __init__(self, volume: torch.Tensor, window: torch.Tensor, sigma_real: float, amplitude: float,
                 noise_psd: torch.Tensor, ctf: torch.Tensor | None, trans: torch.Tensor,
                 device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.D = int(volume.shape[-1])
        self.volume = volume.to(self.device, torch.float32)
        self.rmax = 0.5          # highest projected frequency, cycles/px of the training box (noise: full band)
        self._proj: FourierProjector | None = None   # the padded projection volume, built on first use
        self.lattice = self.projector.lattice
        self.window = window.to(self.device, torch.float32)
        self.sigma_real = float(sigma_real)
        self.amplitude = float(amplitude)
        self.noise_amp = (noise_psd.to(self.device, torch.float32).clamp(min=0) ** 0.5) / self.D
        self.ctf = None if ctf is None else ctf.to(self.device, torch.float32)
        self.trans = trans.to(self.device, torch.float32)
        self.fit_images = 0      # real images behind amplitude and noise spectrum (set by fit)

    def limit_band(self, box: int) -> "SeedRenderer":
        """Project only the frequencies that an encoder reading the images Fourier-cropped to ``box`` (< D) sees: the
        disc around that crop's square, radius ``sqrt(2) box / (2 D)`` cycles/px (the noise stays full band). The
        encoder's input is unchanged but for the window's slight spread across that disc's edge (tests:
        test_train_synthetic), and the slices, the costly part of a synthetic image, get ~4x cheaper at box 32 of 64
        (half the samples, all in a smaller part of the padded volume: 5-7 against 20-27 ms per 32 at one thread).
        ``box >= D``: the whole disc up to Nyquist, as made."""
        rmax = min(0.5, 0.5 * 2 ** 0.5 * box / self.D)
        if rmax != self.rmax:
            self.rmax = rmax
            self.release()
        return self

    @property
    def projector(self) -> FourierProjector:
        """The map's projector up to ``rmax`` (rebuilt after :meth:`release` or a new band)."""
        if self._proj is None:
            self._proj = FourierProjector(self.volume, pad=2, rmax=self.rmax)
        return self._proj

    @property
    def noise_variance(self) -> float:
        """Per-pixel variance of the synthetic noise (unwindowed, raw data units)."""
        return float((self.noise_amp.double() ** 2).mean())

    def release(self) -> None:
        """Free the padded projection volume (a (2D+1)^3 lattice: 64 MB at box 128); the next image rebuilds it."""
        self._proj = None

    def clean(self, rot: torch.Tensor, ctf: torch.Tensor | None, trans: torch.Tensor) -> torch.Tensor:
        """Noise-free images (n, D, D) of the map at ``rot (n, 3, 3)``, CTF rows ``(n, 9)``, shifts ``(n, 2)`` px."""
        y = self.projector.slice(rot.to(self.device, torch.float32))
        if ctf is not None:
            y = y * ctf_from_params(self.lattice.freqs2d, ctf.to(self.device), D_img=self.D).to(y.dtype)
        y = translate_ht(y, y[:, self.lattice.neg_index], self.lattice.freqs2d, -trans.to(self.device, y.dtype))
        return lattice_to_image(y, self.D)

    def noise(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """(n, D, D) stationary Gaussian noise with the fitted power spectrum (white noise filtered in Fourier)."""
        w = torch.randn(n, self.D, self.D, generator=generator).to(self.device)
        return torch.fft.ifft2(torch.fft.fft2(w) * self.noise_amp).real

    def render(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``n`` encoder inputs ``(n, D, D)`` with their poses: rotations uniform on SO(3) ``(n, 3, 3)``, shifts
        ``(n, 2)`` px and CTFs drawn from the real particles' (``generator`` on the CPU; draws are reproducible)."""
        rot = random_rotations(n, generator=generator)
        t = self.trans[torch.randint(0, len(self.trans), (n,), generator=generator).to(self.device)]
        ctf = None
        if self.ctf is not None:
            ctf = self.ctf[torch.randint(0, len(self.ctf), (n,), generator=generator).to(self.device)]
        x = self.amplitude * self.clean(rot, ctf, t) + self.noise(n, generator)
        return x * self.window / self.sigma_real, rot.to(self.device), t

    @classmethod
    def fit(cls, volume: np.ndarray | torch.Tensor, data, pos: np.ndarray, rot: np.ndarray, trans: np.ndarray,
            sign: float = 1.0, device: torch.device | str = "cpu") -> "SeedRenderer":
        """Fit amplitude and noise spectrum on ``data`` (training.dataset.ParticleData) at the poses ``rot (n, 3, 3)``,
        ``trans (n, 2)`` px of the particles at positions ``pos (n,)``; ``sign`` turns the raw data into positive
        density. Draws later take CTFs and shifts from these particles. ValueError when the map does not explain the
        images (amplitude not positive, or non-finite fits)."""
        vol = torch.as_tensor(np.asarray(volume, np.float32))
        if vol.shape != (data.D,) * 3:
            raise ValueError(f"the map's box {tuple(vol.shape)} is not the training box {data.D}")
        pos = np.asarray(pos, np.int64)
        rot_t, trans_t = torch.as_tensor(np.asarray(rot, np.float32)), torch.as_tensor(np.asarray(trans, np.float32))
        ctf_all = data.ctf[torch.as_tensor(pos)] if data.ctf is not None else None
        renderer = cls(vol, data.prep.window, data.prep.sigma_real, 1.0, torch.zeros(data.D, data.D),
                       ctf_all, trans_t, device)
        pick = np.unique(np.linspace(0, len(pos) - 1, min(FIT_IMAGES, len(pos))).round().astype(np.int64))
        dot = norm = 0.0
        resid_sq = torch.zeros(data.D, data.D, dtype=torch.float64)
        chunks = [pick[i:i + 128] for i in range(0, len(pick), 128)]
        win = renderer.window.cpu().double()
        fits = []
        for c in chunks:
            raw = data.prep.resized(data.read(pos[c])).double() * sign
            cl = renderer.clean(rot_t[c], None if ctf_all is None else ctf_all[c], trans_t[c]).cpu().double()
            dot += float((raw * cl * win).sum())
            norm += float((cl * cl * win).sum())
            fits.append((raw, cl))
        amp = dot / norm if norm > 0 else float("nan")
        if not np.isfinite(amp) or amp <= 0:
            raise ValueError(f"the seed's map does not explain the images (fitted amplitude {amp:.3g})")
        for raw, cl in fits:
            resid_sq += (torch.fft.fft2(raw - amp * cl).abs() ** 2).sum(0)
        psd = resid_sq / len(pick)
        if not torch.all(torch.isfinite(psd)):
            raise ValueError("the noise spectrum of the images is not finite")
        renderer.amplitude = amp
        renderer.fit_images = len(pick)
        renderer.noise_amp = (psd.float().to(renderer.device) ** 0.5) / renderer.D
        return renderer


class HeteroRenderer:
    """Synthetic images of the seed's heterogeneity: one :class:`SeedRenderer` per group of particles (the seed's
    states, or bins of its continuous coordinates), each with the group's mean z target. :meth:`render` draws the
    groups by their sizes, so the encoder's z head sees unlimited images of every conformation with known z."""

    def __init__(self, renderers: list[SeedRenderer], z_targets: torch.Tensor, sizes: np.ndarray):
        if not renderers or len(renderers) != len(z_targets) or len(sizes) != len(renderers):
            raise ValueError("one renderer, z target and size per group")
        self.renderers = renderers
        self.z = z_targets.to(renderers[0].device, torch.float32)
        self.p = torch.as_tensor(np.asarray(sizes, np.float64) / float(np.sum(sizes)))

    @property
    def amplitude(self) -> float:
        return float(np.mean([r.amplitude for r in self.renderers]))

    @property
    def fit_images(self) -> int:
        return int(sum(r.fit_images for r in self.renderers))

    def release(self) -> None:
        for r in self.renderers:
            r.release()

    def limit_band(self, box: int) -> "HeteroRenderer":
        for r in self.renderers:
            r.limit_band(box)
        return self

    def render(self, n: int, generator: torch.Generator):
        """``n`` images ``(n, D, D)``, rotations, shifts (as :meth:`SeedRenderer.render`) and z targets ``(n, q)``."""
        g = torch.multinomial(self.p, n, replacement=True, generator=generator)
        xs, rs, ts, zs = [], [], [], []
        for k in torch.unique(g).tolist():
            m = int((g == k).sum())
            x, r, t = self.renderers[k].render(m, generator)
            xs.append(x)
            rs.append(r)
            ts.append(t)
            zs.append(self.z[k].expand(m, -1))
        return torch.cat(xs), torch.cat(rs), torch.cat(ts), torch.cat(zs)

    @classmethod
    def fit(cls, volumes: np.ndarray, groups: np.ndarray, z_targets: np.ndarray, data, pos: np.ndarray,
            rot: np.ndarray, trans: np.ndarray, sign: float = 1.0, device: torch.device | str = "cpu",
            min_size: int = 50) -> "HeteroRenderer":
        """``volumes (K, D, D, D)`` positive density, one per group; ``groups (n,)`` the group of each seeded particle
        at ``pos``/``rot``/``trans`` (SeedRenderer.fit's meaning); ``z_targets (K, q)``. Groups of fewer than
        ``min_size`` particles are left out; ValueError when fewer than two remain or a map does not fit."""
        keep = [k for k in range(len(volumes)) if int((groups == k).sum()) >= min_size]
        if len(keep) < 2:
            raise ValueError(f"fewer than two groups of >= {min_size} particles")
        rs = []
        for k in keep:
            sel = groups == k
            rs.append(SeedRenderer.fit(volumes[k], data, pos[sel], rot[sel], trans[sel], sign=sign, device=device))
        sizes = np.array([int((groups == k).sum()) for k in keep])
        return cls(rs, torch.as_tensor(np.asarray(z_targets, np.float32)[keep]), sizes)
