"""`Run(outdir)`: read access to a finished or running `cryofire train` output folder.

Attributes: `.config` (TrainConfig), `.z (N, d)`, `.index (N,)` (particle index in the user's stack), `.rot (N, 3, 3)`
(k_vol = k_img @ rot), `.trans (N, 2)` in **pixels of the training box** (tx, ty) = (columns, rows), `.apix`
(Angstrom/pixel at the training box), `.D` (training box), `.model` (CryoFIRE, eval mode, CPU), `.checkpoint` (dict).
Per-particle arrays come from latents.npz (the final eval pass); before it exists they raise FileNotFoundError.
`.seed_states`: the ab initio seed's heterogeneity of a seeded run (analysis.states.SeedStates: K >= 1 state labels
and, for newer runs, continuous coordinates, on rows of these arrays), None when the run has no seed_states.npz.

`decode(z (n, d)) -> (n, D, D, D)` float32 real-space volumes, axes (z, y, x), in the units of the (windowed)
particle images: the decoder is evaluated on the unrotated 3D lattice of the training box out to the frequency radius
reached in training, only the 3D DC is zeroed, then the inverse centered 3D Hartley transform. The positional encoding
is tied to the training box, so any other box size is refused with a ValueError.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from cryofire_app.io.errors import InputError
from cryofire_app.io.rundir import RunDir

# what `Run` reads from a checkpoint besides the weights
RUN_CHECKPOINT_KEYS = ("model", "config", "D", "apix", "sigma_ht", "mask_radius", "images_seen")
# per-particle arrays of latents.npz: name -> trailing shape (None: any), all with the same first dimension N
LATENT_ARRAYS = {"index": (), "z": None, "rot": (3, 3), "trans": (2,)}


def read_latents(path: str | Path) -> dict:
    """The arrays of a run's (or `cryofire infer`'s) latents.npz, checked: readable archive (no pickles), the arrays
    index (N,), z (N, d), rot (N, 3, 3), trans (N, 2) present with one N, z/rot/trans finite. InputError naming the
    file and the problem otherwise."""
    import zipfile
    import zlib

    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as f:
            if not hasattr(f, "files"):
                raise InputError("not an .npz archive (a plain .npy array)", path)
            lat = {k: f[k] for k in f.files}
    except InputError:
        raise
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, KeyError) as exc:
        raise InputError(f"unreadable archive, truncated or damaged ({type(exc).__name__}: {exc}); "
                         "re-run the step that wrote it", path) from None
    missing = [k for k in LATENT_ARRAYS if k not in lat]
    if missing:
        raise InputError(f"missing array(s) {', '.join(missing)} (holds {', '.join(lat) or 'none'})", path)
    n = len(lat["index"]) if lat["index"].ndim else -1
    for k, tail in LATENT_ARRAYS.items():
        a = lat[k]
        if a.ndim == 0 or len(a) != n or (tail is not None and a.shape[1:] != tail) or (k == "z" and a.ndim != 2):
            want = f"({n}, d)" if tail is None else str((n,) + tail)
            raise InputError(f"array {k} has shape {a.shape}, expected {want}", path)
        if k != "index" and not np.all(np.isfinite(a)):
            raise InputError(f"array {k} holds NaN/Inf values", path)
    if not np.issubdtype(lat["index"].dtype, np.integer):
        raise InputError(f"array index has dtype {lat['index'].dtype}, expected integers", path)
    if "val" in lat and lat["val"].shape != (n,):
        raise InputError(f"array val has shape {lat['val'].shape}, expected ({n},)", path)
    return lat


class Run:
    def __init__(self, outdir: str | Path, checkpoint: str | Path | None = None):
        from cryofire_app.training.config import TrainConfig

        self.outdir = Path(outdir)
        self.files = RunDir(self.outdir)
        cfg_path = self.files.config
        if not cfg_path.is_file():
            raise InputError("not a cryofire run folder (config.json missing)", self.outdir)
        try:
            self.config = TrainConfig.load(cfg_path)
        except (ValueError, TypeError) as exc:
            raise InputError(f"bad config.json: {exc}", cfg_path) from exc
        self.checkpoint_path = Path(checkpoint) if checkpoint else self.files.last_checkpoint
        self._ck: dict | None = None
        self._model = None
        self._lat: dict | None = None

    # ---- checkpoint / model -------------------------------------------------------------------------------------
    @property
    def checkpoint(self) -> dict:
        if self._ck is None:
            from cryofire_app.training.checkpoint import load_checkpoint

            ck = load_checkpoint(self.checkpoint_path)
            missing = [k for k in RUN_CHECKPOINT_KEYS if k not in ck]
            if missing:
                raise InputError(f"not a complete cryofire checkpoint (missing {', '.join(missing)})",
                                 self.checkpoint_path)
            self._ck = ck
        return self._ck

    @property
    def D(self) -> int:
        if self.config.D:
            return int(self.config.D)
        return int(self.checkpoint["D"])

    @property
    def apix(self) -> float:
        lat = self._latents(required=False)
        if lat is not None and "apix" in lat:
            return float(lat["apix"])
        return float(self.checkpoint["apix"])

    @property
    def images_seen(self) -> int:
        return int(self.checkpoint["images_seen"])

    @property
    def mask_radius(self) -> int:
        return int(self.checkpoint["mask_radius"])

    @property
    def model(self):
        if self._model is None:
            from cryofire_app.training.build import build_model

            ck = self.checkpoint
            try:
                m = build_model(self.config, int(ck["D"]))
                m.load_state_dict(ck["model"])
            except (RuntimeError, KeyError, TypeError, ValueError) as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise InputError(f"the checkpoint's weights do not fit the model config.json describes ({first})",
                                 self.checkpoint_path) from None
            m.eval()
            self._model = m
        return self._model

    # ---- per-particle results ---------------------------------------------------------------------------------------
    def _latents(self, required: bool = True) -> dict | None:
        if self._lat is None:
            p = self.files.latents
            if not p.is_file():
                if required:
                    raise FileNotFoundError(f"{p}: no latents yet (written by the final eval pass of cryofire train)")
                return None
            self._lat = read_latents(p)
        return self._lat

    @property
    def z(self) -> np.ndarray:
        return self._latents()["z"]

    @property
    def index(self) -> np.ndarray:
        return self._latents()["index"]

    @property
    def rot(self) -> np.ndarray:
        return self._latents()["rot"]

    @property
    def trans(self) -> np.ndarray:
        return self._latents()["trans"]

    @property
    def val(self) -> np.ndarray:
        """(N,) bool: particle was in the held-out validation split."""
        return self._latents()["val"].astype(bool)

    @property
    def seed_states(self):
        """The seed's state labels (``seed_states.npz``, analysis.states.SeedStates) or None when the run has none
        (amortized schedule, or a seeded run before its final pass), with latents.npz's per-particle ``state`` as
        its ``others`` when the run wrote it. InputError naming the file when malformed."""
        from cryofire_app.analysis.states import read_seed_states

        p = self.files.seed_states
        if not p.is_file():
            return None
        lat = self._latents(required=False)
        seeds = read_seed_states(p, n_particles=None if lat is None else len(lat["index"]))
        others = None if lat is None else lat.get("state")
        if (others is not None and others.shape == lat["index"].shape and np.issubdtype(others.dtype, np.integer)
                and len(others) and 0 <= others.min() and others.max() < seeds.n_states):
            seeds.others = others.astype(np.int64)   # every particle's state at its final pose
        return seeds

    def events(self) -> list[dict]:
        """All events of log.jsonl (one dict each, key "event" = class name)."""
        return self.files.events()

    # ---- volumes ------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def decode(self, z: np.ndarray | torch.Tensor | None, D: int | None = None,
               radius: float | None = None) -> np.ndarray:
        """Real-space volumes (n, D, D, D) float32 (z, y, x) at latent points z (n, d) (or (d,), or None for d = 0).

        D: must be None or the training box. radius: frequency cut-off in pixels (default: the radius reached
        in training, beyond which the decoder never saw data).
        """
        from cryofire_app.physics.fft import iht3_center

        if D is not None and int(D) != self.D:
            raise ValueError(f"this run was trained at box {self.D}; its decoder's positional encoding is tied to "
                             f"that lattice, so volumes can only be decoded at D={self.D} (asked for D={D}). "
                             "Resample the decoded map instead (e.g. physics.fft.fourier_resize).")
        m = self.model
        d = m.zdim
        if z is None:
            zz = torch.zeros(1, d)
        else:
            zz = torch.as_tensor(np.asarray(z, dtype=np.float32))
            if zz.ndim == 1:
                zz = zz[None]
            if zz.shape[1] != d:
                raise ValueError(f"z has {zz.shape[1]} dimensions, the run's latent space has {d}")
        r = self.mask_radius if radius is None else radius
        sigma = float(self.checkpoint["sigma_ht"])
        vols = np.empty((zz.shape[0], self.D, self.D, self.D), np.float32)
        for i in range(zz.shape[0]):
            ht = m.decode_volume_ht(zz[i] if d > 0 else None, radius=r)
            vols[i] = (iht3_center(ht.double()) * sigma).float().cpu().numpy()
        return vols
