"""Particle data for training: stack (read image by image) -> training-box images, normalized, in a prefetching thread.

Per image (method_spec §1): raw (D0, D0) -> Fourier crop/pad to the training box D (physics.fft.fourier_resize) ->
soft real-space window -> encoder input y_real = x_w / sigma_real and Hartley target
Y = symmetrize(HT(x_w)) / sigma_ht, flattened to (Dl*Dl,) with Dl = D + 1. The sigmas are the medians over a seeded
sample of images of each image's root-mean-square (mean taken as 0; fit_norm), so they scale with the data's units.
The contrast sign is applied by the trainer, not here.
CTF rows are cryoDRGN rows with columns 0/1 rewritten to the training box and its pixel size (D0*apix0/D).
"""
from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from cryofire_app.physics.fft import fourier_resize, ht2_center, symmetrize_ht, window_mask

MIN_TRAIN_PARTICLES = 16   # fewest particles in the training split: below this no reconstruction is meaningful (and the
                           # seed's state split, a two-component mixture over per-particle scores, degenerates)


def split_sizes(N: int, val_fraction: float, val_max: int) -> tuple[int, int]:
    """(training, validation) split sizes for N particles, as Trainer._split makes them."""
    n_val = min(int(val_max), int(round(float(val_fraction) * N)))
    n_val = max(0, min(n_val, N - 1))
    return N - n_val, n_val


def min_train_particles(config) -> int:
    """The fewest training-split particles `config` (a TrainConfig) can train on: MIN_TRAIN_PARTICLES, and for the
    seeded schedule at least 8 per state of the seed's classification (two when it chooses)."""
    if config.schedule != "seeded":
        return MIN_TRAIN_PARTICLES
    n_states = int((config.seeded.seed_config or {}).get("n_states", 0))
    return max(MIN_TRAIN_PARTICLES, 8 * max(n_states, 2))   # 0: chosen from the data, at least 2 tried


def check_trainable(N: int, config, source=None) -> None:
    """InputError (naming `source`, the particle file) when N particles leave too few for the training split."""
    from cryofire_app.io.errors import InputError

    n_train, n_val = split_sizes(N, config.val_fraction, config.val_max)
    need = min_train_particles(config)
    if n_train < need:
        held = f" ({n_val} held out for validation by --val-fraction {config.val_fraction:g})" if n_val else ""
        raise InputError(f"{N} particle(s) leave {n_train} for training{held}; training needs at least {need} "
                         f"(--schedule {config.schedule}): give more particles", source)


class Preprocessor:
    """Raw images -> (y_real (n, D, D), Y (n, Dl*Dl)) float32 torch tensors (unnormalized until set_norm)."""

    def __init__(self, D0: int, D: int, r_in: float = 0.85, r_out: float = 0.99):
        if D % 2 or D0 % 2:
            raise ValueError(f"box sizes must be even (stack {D0}, training {D})")
        self.D0, self.D = D0, D
        self.window = window_mask(D, r_in, r_out).float()
        self.sigma_real = 1.0
        self.sigma_ht = 1.0

    def resized(self, raw: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Raw images (n, D0, D0) or (D0, D0) -> (n, D, D) float32 at the training box, not windowed."""
        x = torch.as_tensor(np.asarray(raw, dtype=np.float32))
        if x.ndim == 2:
            x = x[None]
        if self.D != self.D0:
            x = fourier_resize(x, self.D).float()
        return x

    def windowed(self, raw: np.ndarray | torch.Tensor) -> torch.Tensor:
        return self.resized(raw) * self.window

    def __call__(self, raw: np.ndarray | torch.Tensor, with_Y: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """with_Y=False skips the Hartley transform (encoder-only inference needs y_real only); Y is then None."""
        xw = self.windowed(raw)
        if not with_Y:
            return (xw / self.sigma_real).float(), None
        Y = symmetrize_ht(ht2_center(xw)).reshape(xw.shape[0], -1)
        return (xw / self.sigma_real).float(), (Y / self.sigma_ht).float()

    def fit_norm(self, images, sample: np.ndarray, chunk: int = 256) -> tuple[float, float]:
        """Set sigma_real and sigma_ht: the median over the sampled images of each image's root-mean-square (mean
        taken as 0) of the windowed image and of its Hartley transform. Float64, so any finite float32 data works;
        the median makes a few outlier images (hot pixels, a stray scale) irrelevant. Returns them."""
        r_rms, h_rms, spread = [], [], []
        for i in range(0, len(sample), chunk):
            x = self.resized(images[np.sort(sample[i:i + chunk])]).double()
            spread.append(x.reshape(len(x), -1).std(dim=1).numpy())
            xw = x * self.window.double()
            Y = symmetrize_ht(ht2_center(xw))
            r_rms.append((xw ** 2).mean(dim=(1, 2)).sqrt().numpy())
            h_rms.append((Y ** 2).mean(dim=(1, 2)).sqrt().numpy())
        r_rms, h_rms = np.concatenate(r_rms), np.concatenate(h_rms)
        if not np.all(np.isfinite(np.concatenate(spread))) or float(np.max(np.concatenate(spread))) <= 0:
            raise ValueError(f"all {len(sample)} sampled images are constant (every pixel of an image has the same "
                             "value): nothing to reconstruct")
        self.sigma_real = float(np.median(r_rms))
        self.sigma_ht = float(np.median(h_rms))
        ok = np.isfinite(self.sigma_real) and self.sigma_real > 0 and np.isfinite(self.sigma_ht) and self.sigma_ht > 0
        if not ok:
            raise ValueError(f"normalization failed (sigma_real={self.sigma_real}, sigma_ht={self.sigma_ht}): "
                             "the sampled images are constant (zero) or contain NaN/Inf")
        return self.sigma_real, self.sigma_ht


def ctf_for_box(ctf: np.ndarray | None, D: int) -> torch.Tensor | None:
    """cryoDRGN CTF rows (N, 9) -> copy with column 0 = D and column 1 = the pixel size at box D (Angstrom)."""
    if ctf is None:
        return None
    c = np.array(ctf, dtype=np.float64, copy=True)
    c[:, 1] = c[:, 0] * c[:, 1] / D
    c[:, 0] = D
    return torch.as_tensor(c, dtype=torch.float32)


@dataclass
class Batch:
    pos: np.ndarray               # (n,) positions in the ParticleSet (0..N-1)
    y_real: torch.Tensor          # (n, D, D)
    Y: torch.Tensor | None        # (n, Dl*Dl); None when loaded with with_Y=False
    ctf: torch.Tensor | None      # (n, 9)


class ParticleData:
    """A ParticleSet prepared for one training box: preprocessing, CTF table, batch loading by position."""

    def __init__(self, particles, D: int | None = None, r_in: float = 0.85, r_out: float = 0.99):
        self.particles = particles
        self.images = particles.images
        self.N = len(self.images)
        self.D0 = int(self.images.D)
        self.D = int(D or self.D0)
        if self.D > self.D0:
            raise ValueError(f"training box {self.D} is larger than the stack box {self.D0}")
        self.prep = Preprocessor(self.D0, self.D, r_in, r_out)
        self.ctf = ctf_for_box(particles.ctf, self.D)
        apix0 = particles.apix
        if apix0 is None and particles.ctf is not None:
            apix0 = float(particles.ctf[0, 0] * particles.ctf[0, 1] / self.D0)
        self.apix = float(apix0) * self.D0 / self.D if apix0 else 1.0

    def read(self, pos: np.ndarray) -> np.ndarray:
        """Raw stack images (n, D0, D0) float32 at positions ``pos``, in that order (read in sorted order)."""
        pos = np.asarray(pos, dtype=np.int64)
        order = np.argsort(pos, kind="stable")
        raw = np.empty((len(pos), self.D0, self.D0), dtype=np.float32)
        raw[order] = self.images[pos[order]]           # sorted reads are friendlier to the memory map
        return raw

    def resized_images(self, pos: np.ndarray, chunk: int = 512) -> np.ndarray:
        """Images (n, D, D) float32 at the training box for positions ``pos``: the Fourier crop of the raw stack, no
        window, no normalisation, the raw data sign (what the seed and the final reconstruction read)."""
        pos = np.asarray(pos, dtype=np.int64)
        out = np.empty((len(pos), self.D, self.D), np.float32)
        for i in range(0, len(pos), chunk):
            out[i:i + chunk] = self.prep.resized(self.read(pos[i:i + chunk])).numpy()
        return out

    def resized_view(self, pos: np.ndarray) -> "ResizedView":
        """``resized_images(pos)`` read on demand: ``len()`` and ``view[i:j]`` only, so a consumer that reads in
        batches (the seed's preparation) never holds the whole subset at the training box in memory."""
        return ResizedView(self, np.asarray(pos, dtype=np.int64))

    def load(self, pos: np.ndarray, with_Y: bool = True) -> Batch:
        pos = np.asarray(pos, dtype=np.int64)
        y_real, Y = self.prep(self.read(pos), with_Y)
        ctf = self.ctf[torch.as_tensor(pos)] if self.ctf is not None else None
        return Batch(pos, y_real, Y, ctf)


class ResizedView:
    """Particles ``pos`` of a ParticleData at the training box (ParticleData.resized_images), read per slice."""

    def __init__(self, data: ParticleData, pos: np.ndarray):
        self.data, self.pos = data, pos

    def __len__(self) -> int:
        return len(self.pos)

    def __getitem__(self, key) -> np.ndarray:
        if isinstance(key, (int, np.integer)):
            return self.data.resized_images(self.pos[[int(key)]])[0]
        if not isinstance(key, slice):
            raise TypeError(f"ResizedView takes an index or a slice, not {type(key).__name__}")
        return self.data.resized_images(self.pos[key])


def epoch_order(train_pos: np.ndarray, seed: int, epoch: int) -> np.ndarray:
    """The shuffled training order of one epoch, a pure function of (seed, epoch) so a resume replays it exactly."""
    return np.random.default_rng([seed, epoch, 7]).permutation(train_pos)


def batch_schedule(train_pos: np.ndarray, batch: int, seed: int, start_images: int) -> Iterator[np.ndarray]:
    """Global batches (drop_last within each epoch) starting at `start_images` images seen."""
    per_epoch = len(train_pos) // batch
    step = start_images // batch
    while True:
        epoch, k = divmod(step, per_epoch)
        order = epoch_order(train_pos, seed, epoch)
        yield order[k * batch:(k + 1) * batch]
        step += 1


class Prefetcher:
    """Loads batches in a background thread (bounded queue). Iterate to get `Batch`es; call close() when done."""

    _END = object()

    def __init__(self, data: ParticleData, schedule: Iterator[np.ndarray], depth: int = 3, with_Y: bool = True):
        self.data, self.schedule, self.with_Y = data, schedule, with_Y
        self.q: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, name="cryofire-prefetch", daemon=True)
        self._thread.start()

    def _put(self, item) -> None:
        """Put `item`, waiting for room, unless close() is called meanwhile."""
        while not self._stop.is_set():
            try:
                self.q.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def _work(self) -> None:
        try:
            for pos in self.schedule:
                if self._stop.is_set():
                    break
                self._put(self.data.load(pos, self.with_Y))
        except BaseException as exc:  # surfaced to the consumer
            self._put(exc)
        finally:
            # the end marker must reach the consumer even when the queue is full right now (else it waits forever)
            self._put(self._END)

    def __iter__(self) -> "Prefetcher":
        return self

    def __next__(self) -> Batch:
        item = self.q.get()
        if item is self._END:
            raise StopIteration
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        self._stop.set()
        try:
            while True:
                self.q.get_nowait()
        except queue.Empty:
            pass
        self._thread.join(timeout=5)
