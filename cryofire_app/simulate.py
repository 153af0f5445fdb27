"""Particle-image simulator: several states (maps, or a rigid-body hinge motion of one map), uniform SO(3) poses,
CTF, shifts and white noise at a given SNR, streamed to disk.

Image formation (per particle i, all in the symmetrized Hartley domain of box D, see cryofire_app.physics):

    Y_i = C_RELION,i * Slice(V_state(i), rot_i)         C_RELION = -compute_ctf(...)   (C_RELION(0) = +w)
    observed_i = iHT(T_{-t_i}[Y_i]) + noise             (content moved by -t_i; applying +t_i re-centres it)

This reproduces ``relion_project --ctf`` (tests/test_physics_oracles.py): positive density appears white, like
RELION-extracted (contrast-inverted) particles, rlnOriginX/Y = +t (px). cryoDRGN/cryoFIRE-style training with
``C = compute_ctf`` (C(0) = -w) must therefore multiply these images by -1 (cryoDRGN's ``--invert-data``).
Projections use FourierProjector(pad=2, RELION gridding, Nyquist sphere). Pixel values are line integrals in voxel
units of the map (resampled to the output box); the noise level only depends on the requested SNR.

SNR = var(clean images) / var(noise), the clean images' pixel variance over the whole box, measured on the first
``min(N, 1000)`` clean images (including CTF and shifts) before any image is written.

Determinism: every random draw depends only on the seed and on the particle index (never on the chunk size).

Outputs in ``outdir``: particles.mrcs, particles.star (RELION 3.1, optics + particles with poses, CTF and
rlnClassNumber = state + 1), ctf.pkl and poses.pkl (cryoDRGN conventions: trans = t / D), labels.npy (int64 state
per image), labels_continuous.npy (float32 hinge coordinate in [0, 1] = angle / max angle; hinge runs only),
gt_state_{k}.mrc (ground-truth map of each state at the output box and pixel size; for a continuous hinge, maps at
the centres of K equal bins of the coordinate, which are also the labels) and settings.json.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from cryofire_app.io import (
    InputError,
    MrcStackWriter,
    read_map,
    write_ctf_pkl,
    write_mrc,
    write_particles_star,
    write_pose_pkl,
)
from cryofire_app.io.atomic import atomic_save_npy, atomic_write_json
from cryofire_app.physics import (
    FourierProjector,
    Lattice,
    center_crop_pad,
    compute_ctf,
    fourier_resize,
    lattice_to_image,
    quaternion_to_matrix,
    rotate_volume,
    rotvec_to_matrix,
    translate_ht,
)

log = logging.getLogger(__name__)

#: Voxel size assumed for the bundled ASPIRE 70S ribosome map (resources/ribosome70S_65.mrc, header says 0):
#: its density spans ~50 voxels and a 70S ribosome is ~250 A across, so 5 A/voxel (65 box -> 325 A).
DEMO_MAP_APIX = 5.0
# cryofire_app/resources is a relative symlink to the top-level resources/ (copied into wheels as package data).
DEMO_MAP = Path(__file__).resolve().parent / "resources" / "ribosome70S_65.mrc"

BLOCK = 64  # particles are rendered, and their noise drawn (seeded by (seed, block)), in aligned blocks of this size
NOISE_BLOCK = BLOCK
PILOT_IMAGES = 1000


@dataclass
class HingeConfig:
    """Conformational states from one map: a masked sub-region rotates rigidly about a hinge axis.

    steps: K >= 2 discrete states at angles ``linspace(0, angle_deg, K)``; with ``continuous`` each particle gets a
    uniform coordinate u in [0, 1] (angle = u * angle_deg) and K is the number of bins for labels / GT maps.
    mask: MRC of the moving region (values in [0, 1], same box and pixel size as the map), or None for the automatic
    region: the part of the map beyond a plane normal to ``arm`` that holds ``fraction`` of the positive density,
    with a 2-voxel linear ramp. axis: hinge axis direction (x, y, z); pivot: point on the axis in voxels from the
    box centre (x, y, z); default the point of the cut plane level with the density's centre of mass.
    """

    steps: int = 0
    continuous: bool = False
    angle_deg: float = 20.0
    mask: str | None = None
    axis: tuple[float, float, float] = (0.0, 0.0, 1.0)
    arm: tuple[float, float, float] = (1.0, 0.0, 0.0)
    fraction: float = 0.3
    pivot: tuple[float, float, float] | None = None

    @property
    def enabled(self) -> bool:
        return self.steps >= 2 or self.continuous


@dataclass
class SimulationConfig:
    """Settings of one simulation run (``cryofire simulate`` maps its options one to one onto these fields).

    maps: map files (one per state), or ``volumes`` arrays (z, y, x) given directly with ``apix``.
    box: output box D (even; default the map box, made even). apix: voxel size of the input maps in A (overrides
    the header; required when the header says 0). The output pixel size is ``apix * map_box / box`` (Fourier
    crop/pad), or, with ``from_metadata``, the metadata's pixel size at its box rescaled to ``box``.
    snr: signal variance / noise variance (``inf`` = no noise). fractions: per state (normalised; default equal).
    defocus_um: (min, max) in micrometres, drawn ``uniform`` or ``lognormal`` (median = geometric mean of the
    bounds, log-sd = ln(max/min)/4, clipped to the bounds). astigmatism_A: |dfU - dfV| drawn uniformly in
    [0, astigmatism_A]; angle uniform in [0, 180). max_shift_px: shifts t uniform in [-max, max] per axis (pixels).
    """

    outdir: str
    n: int | None = None
    maps: Sequence[str] = ()
    volumes: Sequence[np.ndarray] | None = None
    box: int | None = None
    apix: float | None = None
    snr: float = 0.1
    fractions: Sequence[float] | None = None
    defocus_um: tuple[float, float] = (1.0, 2.5)
    defocus_dist: str = "uniform"
    astigmatism_A: float = 200.0
    kv: float = 300.0
    cs_mm: float = 2.7
    amp_contrast: float = 0.1
    bfactor: float = 0.0
    max_shift_px: float = 0.0
    seed: int = 0
    hinge: HingeConfig = field(default_factory=HingeConfig)
    from_metadata: str | None = None
    chunk: int = 500
    pad: int = 2
    progress: bool = True
    overwrite: bool = False


@dataclass
class SimulationResult:
    outdir: Path
    n: int
    D: int
    apix: float
    n_states: int
    noise_std: float
    signal_var: float
    seconds: float
    files: dict[str, Path]


# ------------------------------------------------------------------------------------------------ map handling
def resample_map(vol: torch.Tensor, apix_in: float, box_out: int, apix_out: float) -> tuple[torch.Tensor, float]:
    """Resample a cubic map to ``box_out`` voxels of ~``apix_out`` A: Fourier crop/pad to the box with that voxel
    size, then a real-space centred crop/pad. Returns the map and its exact voxel size (rounding of the box)."""
    dm = vol.shape[-1]
    dn = max(2, int(round(dm * apix_in / apix_out)))
    v = fourier_resize(vol, dn, ndim=3) if dn != dm else vol
    exact = apix_in * dm / dn
    return center_crop_pad(v, box_out, 3), exact


def auto_hinge_mask(vol: torch.Tensor, arm: Sequence[float], fraction: float, ramp: float = 2.0
                    ) -> tuple[torch.Tensor, float]:
    """Mask (z, y, x) of the part of ``vol`` beyond a plane normal to ``arm`` holding ``fraction`` of the positive
    density, with a linear ramp of ``ramp`` voxels; returns (mask, plane offset in voxels from the box centre)."""
    d = vol.shape[-1]
    a = torch.as_tensor(arm, dtype=torch.float64)
    a = a / a.norm()
    ax = torch.arange(d, dtype=torch.float64) - d // 2
    z, y, x = torch.meshgrid(ax, ax, ax, indexing="ij")
    s = x * a[0] + y * a[1] + z * a[2]
    w = torch.clamp(vol.to(torch.float64), min=0)
    order = torch.argsort(s.reshape(-1), descending=True)
    cum = torch.cumsum(w.reshape(-1)[order], 0) / w.sum()
    cut = float(s.reshape(-1)[order][int(torch.searchsorted(cum, torch.tensor(fraction, dtype=torch.float64)))])
    mask = torch.clamp((s - cut) / ramp + 0.5, 0.0, 1.0)
    return mask.to(vol.dtype), cut


@dataclass
class _Hinge:
    fixed: torch.Tensor
    moving: torch.Tensor
    pivot: torch.Tensor  # (3,) voxels from the centre, (x, y, z)
    axis: torch.Tensor   # (3,) unit
    angle_deg: float

    def motion(self, u: torch.Tensor) -> torch.Tensor:
        """Row-convention rotations A (B, 3, 3): moving content at r0 goes to (r0 - p) @ A + p."""
        rv = self.axis[None] * (u[:, None] * math.radians(self.angle_deg))
        return rotvec_to_matrix(rv).transpose(-1, -2)

    def volume(self, u: float, oversample: int = 2) -> torch.Tensor:
        """Ground-truth map at hinge coordinate u: the moving part is rotated by trilinear resampling on a grid
        ``oversample`` times finer (Fourier padded, then cropped back), which keeps interpolation blur small."""
        a = self.motion(torch.tensor([u], dtype=torch.float64))[0].to(self.moving.dtype)
        d = self.moving.shape[-1]
        if u == 0:
            return self.fixed + self.moving
        fine = fourier_resize(self.moving, d * oversample, ndim=3)
        centre = self.pivot.to(self.moving.dtype) * oversample + (d * oversample) // 2
        moved = fourier_resize(rotate_volume(fine, a, center=centre), d, ndim=3)
        # keep the change local: cut the resampling's ringing outside the moved support (+1 voxel)
        support = rotate_volume((self.moving != 0).to(self.moving.dtype), a,
                                center=self.pivot.to(self.moving.dtype) + d // 2) > 0
        region = torch.nn.functional.max_pool3d(support[None, None].to(self.moving.dtype), 3, stride=1,
                                                padding=1)[0, 0]
        return self.fixed + moved * region


def hinge_states(vol: torch.Tensor, cfg: HingeConfig, mask: torch.Tensor | None = None) -> _Hinge:
    """Split ``vol`` into fixed and moving parts for :class:`HingeConfig` (see there for the defaults)."""
    d = vol.shape[-1]
    ax = torch.arange(d, dtype=torch.float64) - d // 2
    z, y, x = torch.meshgrid(ax, ax, ax, indexing="ij")
    if mask is None:
        mask, cut = auto_hinge_mask(vol, cfg.arm, cfg.fraction)
    else:
        cut = None
    mask = mask.to(vol.dtype)
    if cfg.pivot is not None:
        pivot = torch.tensor(cfg.pivot, dtype=torch.float64)
    else:
        w = torch.clamp(vol.to(torch.float64), min=0)
        com = torch.stack([(w * x).sum(), (w * y).sum(), (w * z).sum()]) / w.sum()
        if cut is not None:
            a = torch.tensor(cfg.arm, dtype=torch.float64)
            a = a / a.norm()
            pivot = com + (cut - (com @ a)) * a  # point of the cut plane level with the centre of mass
        else:
            wm = w * mask.to(torch.float64)
            mcom = torch.stack([(wm * x).sum(), (wm * y).sum(), (wm * z).sum()]) / wm.sum()
            pivot = (com + mcom) / 2
    axis = torch.tensor(cfg.axis, dtype=torch.float64)
    axis = axis / axis.norm()
    return _Hinge(fixed=vol * (1 - mask), moving=vol * mask, pivot=pivot, axis=axis, angle_deg=cfg.angle_deg)


# ------------------------------------------------------------------------------------------------ parameters
@dataclass
class _Params:
    labels: np.ndarray       # (N,) int64
    u: np.ndarray | None     # (N,) hinge coordinate in [0, 1]
    rot: np.ndarray          # (N, 3, 3)
    trans_px: np.ndarray     # (N, 2)
    ctf: np.ndarray          # (N, 9)


def _draw_params(cfg: SimulationConfig, n: int, n_states: int, D: int, apix: float, meta: dict | None) -> _Params:
    """All per-particle random parameters, from streams keyed by (seed, purpose): independent of chunking."""
    def rng(tag: int) -> np.random.Generator:
        return np.random.default_rng([cfg.seed, tag])

    hinge = cfg.hinge
    u = None
    if hinge.enabled and hinge.continuous:
        u = rng(1).uniform(0.0, 1.0, n)
        labels = np.minimum((u * n_states).astype(np.int64), n_states - 1)
    else:
        frac = np.ones(n_states) if cfg.fractions is None else np.asarray(cfg.fractions, dtype=np.float64)
        labels = rng(1).choice(n_states, size=n, p=frac / frac.sum()).astype(np.int64)
        if hinge.enabled:
            u = labels / (n_states - 1)
    if meta is not None and meta.get("rot") is not None:
        rot = meta["rot"]
    else:
        q = torch.from_numpy(rng(2).standard_normal((n, 4)))
        rot = quaternion_to_matrix(q).numpy()
    if meta is not None and meta.get("trans_px") is not None:
        trans = meta["trans_px"]
    else:
        trans = rng(3).uniform(-cfg.max_shift_px, cfg.max_shift_px, (n, 2)) if cfg.max_shift_px > 0 \
            else np.zeros((n, 2))
    if meta is not None and meta.get("ctf") is not None:
        ctf = meta["ctf"].astype(np.float64)
    else:
        lo, hi = (v * 1e4 for v in cfg.defocus_um)
        g = rng(4)
        if cfg.defocus_dist == "uniform":
            df = g.uniform(lo, hi, n)
        elif cfg.defocus_dist == "lognormal":
            df = np.clip(np.exp(g.normal(0.5 * (math.log(lo) + math.log(hi)), math.log(hi / lo) / 4, n)), lo, hi)
        else:
            raise InputError(f"unknown defocus distribution {cfg.defocus_dist!r} (uniform or lognormal)")
        astig = g.uniform(0.0, cfg.astigmatism_A, n)
        ang = g.uniform(0.0, 180.0, n)
        ctf = np.stack([np.full(n, D, dtype=np.float64), np.full(n, apix), df + astig / 2, df - astig / 2, ang,
                        np.full(n, cfg.kv), np.full(n, cfg.cs_mm), np.full(n, cfg.amp_contrast), np.zeros(n)], 1)
    return _Params(labels=labels, u=u, rot=np.asarray(rot, dtype=np.float64), trans_px=np.asarray(trans, np.float64),
                   ctf=ctf)


def _noise(seed: int, start: int, stop: int, D: int) -> np.ndarray:
    """Unit white noise (stop-start, D, D) float32 for particles [start, stop), from per-block streams."""
    out = []
    for b in range(start // NOISE_BLOCK, (stop - 1) // NOISE_BLOCK + 1):
        block = np.random.default_rng([seed, 99, b]).standard_normal((NOISE_BLOCK, D, D), dtype=np.float32)
        lo = max(start, b * NOISE_BLOCK) - b * NOISE_BLOCK
        hi = min(stop, (b + 1) * NOISE_BLOCK) - b * NOISE_BLOCK
        out.append(block[lo:hi])
    return np.concatenate(out, 0)


# ------------------------------------------------------------------------------------------------ image formation
class _Renderer:
    """Clean images for particle index ranges (RELION sign/shift conventions; see module docstring)."""

    def __init__(self, states: list[torch.Tensor] | None, hinge: _Hinge | None, params: _Params, D: int, apix: float,
                 pad: int, bfactor: float):
        self.D, self.apix, self.p, self.bfactor = D, apix, params, bfactor
        self.lattice = Lattice(D)
        self.hinge = hinge
        if hinge is not None:
            self.fixed = FourierProjector(hinge.fixed.float(), pad=pad)
            self.moving = FourierProjector(hinge.moving.float(), pad=pad)
        else:
            self.projectors = [FourierProjector(v.float(), pad=pad) for v in states]

    def slices(self, idx: slice) -> torch.Tensor:
        rot = torch.from_numpy(self.p.rot[idx]).float()
        b = rot.shape[0]
        lat = self.lattice
        if self.hinge is not None:
            u = torch.from_numpy(np.asarray(self.p.u[idx], dtype=np.float64))
            a = self.hinge.motion(u)                       # (B, 3, 3) float64
            rot2 = rot.double() @ a.transpose(-1, -2)      # projection of moving part at rot A^T ...
            p = self.hinge.pivot
            c = p[None] - (p[None, None, :] @ a.transpose(-1, -2))[:, 0]  # ... shifted by c = p - p A^T (B, 3)
            c_img = (c[:, None, :] @ rot2.transpose(-1, -2))[:, 0, :2]
            ym = self.moving.slice(rot2.float())
            ym = translate_ht(ym, ym[:, lat.neg_index], lat.freqs2d, (-c_img).float())
            return self.fixed.slice(rot) + ym
        y = torch.zeros(b, lat.Dl * lat.Dl)
        labels = torch.from_numpy(self.p.labels[idx])
        for s, proj in enumerate(self.projectors):
            sel = torch.nonzero(labels == s).reshape(-1)
            if len(sel):
                y[sel] = proj.slice(rot[sel])
        return y

    def clean(self, start: int, stop: int) -> torch.Tensor:
        idx = slice(start, stop)
        y = self.slices(idx)
        ctf = torch.from_numpy(self.p.ctf[idx]).float()
        lat = self.lattice
        c = -compute_ctf(lat.freqs2d, ctf[:, 1], ctf[:, 2], ctf[:, 3], ctf[:, 4], ctf[:, 5], ctf[:, 6], ctf[:, 7],
                         ctf[:, 8], self.bfactor)  # RELION sign
        y = y * c
        t = torch.from_numpy(self.p.trans_px[idx]).float()
        y = translate_ht(y, y[:, lat.neg_index], lat.freqs2d, -t)  # observed particle is off-centre by -t
        return lattice_to_image(y, self.D)


# ------------------------------------------------------------------------------------------------ metadata input
def _read_metadata(path: Path, cfg: SimulationConfig) -> dict:
    """rot, trans (px at the metadata box), ctf rows, D and apix from a STAR or cryoSPARC .cs file.

    CTF columns the STAR lacks (voltage, Cs, amplitude contrast) are taken from ``cfg`` (logged)."""
    from cryofire_app.io import parse_ctf_cs, parse_ctf_star, parse_pose_cs, parse_pose_star, read_cs, read_star

    suffix = path.suffix.lower()
    if suffix == ".star":
        table = read_star(path)
        fill = {}
        for col, key, val in (("rlnVoltage", "kv", cfg.kv), ("rlnSphericalAberration", "cs", cfg.cs_mm),
                              ("rlnAmplitudeContrast", "w", cfg.amp_contrast)):
            if not table.has(col):
                log.info("%s: no %s column; using %g", path, col, val)
                fill[key] = val
        ctf = parse_ctf_star(table, **fill)
        try:
            rot, trans = parse_pose_star(table, D=int(ctf[0, 0]) if ctf is not None else None)
        except InputError as exc:
            log.warning("%s; random poses will be used", exc)
            rot, trans = None, None
    elif suffix == ".cs":
        arr = read_cs(path)
        ctf = parse_ctf_cs(arr)
        try:
            rot, trans = parse_pose_cs(arr)
        except InputError as exc:
            log.warning("%s; random poses will be used", exc)
            rot, trans = None, None
    else:
        raise InputError("--from-metadata needs a RELION .star or cryoSPARC .cs file", path)
    if ctf is None:
        raise InputError("no CTF parameters in the metadata", path)
    if len(ctf) == 0:
        raise InputError("the metadata lists no particles", path)
    d_meta, apix_meta = ctf[:, 0].astype(np.float64), ctf[:, 1].astype(np.float64)
    if np.ptp(d_meta) > 0 or np.ptp(apix_meta) > 1e-6:
        raise InputError("particles have different box or pixel sizes (several optics groups); simulate each "
                         "group separately", path)
    out = {"ctf": ctf.astype(np.float64), "rot": rot, "D": int(d_meta[0]), "apix": float(apix_meta[0])}
    out["trans_px"] = None if trans is None else trans * d_meta[:, None]
    return out


# ------------------------------------------------------------------------------------------------ driver
def _load_inputs(cfg: SimulationConfig) -> tuple[list[torch.Tensor], float, list[str]]:
    vols, names = [], []
    if cfg.volumes is not None:
        if cfg.apix is None:
            raise InputError("volumes given as arrays need apix")
        for i, v in enumerate(cfg.volumes):
            v = np.asarray(v, dtype=np.float32)
            if v.ndim != 3 or len(set(v.shape)) != 1:
                raise InputError(f"volume {i} is not a cubic 3D array: shape {v.shape}")
            vols.append(torch.from_numpy(v).double())
            names.append(f"<array {i}>")
        return vols, float(cfg.apix), names
    if not cfg.maps:
        raise InputError("no input map given")
    apix = None
    for p in cfg.maps:
        vol, info = read_map(p)
        a = cfg.apix if cfg.apix is not None else info.apix
        if a is None or a <= 0:
            raise InputError("voxel size is 0 in the header: give the map's pixel size with --apix", p)
        if apix is None:
            apix, box0 = float(a), vol.shape[-1]
        elif abs(a - apix) > 1e-4 * apix or vol.shape[-1] != box0:
            raise InputError(f"map has box {vol.shape[-1]} and voxel size {a:.4f} A; the first map has {box0} and "
                             f"{apix:.4f} A: give maps on the same grid", p)
        vols.append(torch.tensor(np.asarray(vol, dtype=np.float64)))
        names.append(str(p))
    return vols, apix, names


def simulate(cfg: SimulationConfig, progress: Callable[[int, int], None] | None = None) -> SimulationResult:
    """Run a simulation (see the module docstring for conventions and outputs). ``progress(done, total)`` is called
    after each chunk (besides the tqdm bar when ``cfg.progress``)."""
    t0 = time.time()
    out = Path(cfg.outdir)
    out.mkdir(parents=True, exist_ok=True)
    if (out / "particles.mrcs").exists() and not cfg.overwrite:
        raise InputError("output folder already holds particles.mrcs (use --overwrite)", out)
    vols, apix_map, names = _load_inputs(cfg)
    hinge_cfg = cfg.hinge
    if hinge_cfg.enabled and len(vols) != 1:
        raise InputError("a hinge motion needs exactly one input map")
    if hinge_cfg.enabled and hinge_cfg.steps < 2 and not hinge_cfg.continuous:
        raise InputError("hinge: give at least 2 steps, or continuous")

    meta = _read_metadata(Path(cfg.from_metadata), cfg) if cfg.from_metadata else None
    map_box = vols[0].shape[-1]
    if meta is not None:
        D = int(cfg.box or meta["D"])
        apix_out = meta["apix"] * meta["D"] / D
    else:
        D = int(cfg.box or (map_box - map_box % 2))
        apix_out = apix_map * map_box / D
    if D % 2 or D < 8:
        raise InputError(f"box size must be even and >= 8, got {D}")
    resampled, apix_exact = [], apix_out
    for v in vols:
        r, apix_exact = resample_map(v, apix_map, D, apix_out)
        resampled.append(r)
    if abs(apix_exact - apix_out) > 1e-3 * apix_out:
        log.warning("map resampled to %.4f A/px instead of %.4f A/px (integer Fourier box)", apix_exact, apix_out)

    n_meta = len(meta["ctf"]) if meta is not None else None
    n = cfg.n if cfg.n is not None else n_meta
    if n is None or n < 1:
        raise InputError("give the number of images (-n)")
    if meta is not None:
        if n > n_meta:
            raise InputError(f"-n {n} is more than the {n_meta} particles the metadata lists", cfg.from_metadata)
        meta = {k: (v[:n] if isinstance(v, np.ndarray) else v) for k, v in meta.items()}
        meta["ctf"] = meta["ctf"].copy()
        meta["ctf"][:, 0], meta["ctf"][:, 1] = D, apix_out
        if meta["trans_px"] is not None:
            meta["trans_px"] = meta["trans_px"] * (D / meta["D"])  # same physical shift at the new pixel size

    hinge = None
    if hinge_cfg.enabled:
        mask = None
        if hinge_cfg.mask:
            m, m_info = read_map(hinge_cfg.mask)
            if m.shape[-1] != map_box:
                raise InputError(f"mask box {m.shape[-1]} differs from the map box {map_box}", hinge_cfg.mask)
            mask, _ = resample_map(torch.tensor(np.asarray(m, np.float64)), apix_map, D, apix_out)
            mask = torch.clamp(mask, 0.0, 1.0)
        hinge = hinge_states(resampled[0], hinge_cfg, mask)
        n_states = hinge_cfg.steps if hinge_cfg.steps >= 2 else 5  # continuous without K: 5 label bins
        if hinge_cfg.continuous:
            state_u = (np.arange(n_states) + 0.5) / n_states
        else:
            state_u = np.linspace(0.0, 1.0, n_states)
        gt = [hinge.volume(float(u)) for u in state_u]
    else:
        n_states = len(resampled)
        state_u = None
        gt = resampled
    if cfg.fractions is not None and hinge_cfg.enabled and hinge_cfg.continuous:
        log.warning("--fractions is ignored with a continuous hinge (the coordinate is uniform in [0, 1])")
    elif cfg.fractions is not None:
        if len(cfg.fractions) != n_states or min(cfg.fractions) < 0 or sum(cfg.fractions) <= 0:
            raise InputError(f"--fractions needs {n_states} non-negative values (one per state), got "
                             f"{list(cfg.fractions)}")

    params = _draw_params(cfg, n, n_states, D, apix_out, meta)
    # discrete states (maps or hinge steps) are projected from their GT maps; a continuous hinge moves the masked
    # part rigidly per particle (fixed part + rotated, shifted slice of the moving part; exact rigid motion)
    continuous = hinge is not None and hinge_cfg.continuous
    renderer = _Renderer(None if continuous else gt, hinge if continuous else None, params, D, apix_out, cfg.pad,
                         cfg.bfactor)
    # Images are always rendered in the same aligned blocks of BLOCK particles (floating-point results of batched
    # FFTs/matmuls depend on the batch), and chunks are whole blocks: the output is bit-identical for any chunk size.
    chunk = max(1, math.ceil(int(cfg.chunk) / BLOCK)) * BLOCK

    cache: dict[int, torch.Tensor] = {}  # pilot blocks, reused (popped) by the main pass

    def render(a: int, b: int) -> torch.Tensor:
        return torch.cat([cache.pop(s) if s in cache else renderer.clean(s, min(b, s + BLOCK))
                          for s in range(a, b, BLOCK)])

    # noise level from the clean pilot images
    n_pilot = min(n, PILOT_IMAGES)
    s1 = s2 = 0.0
    with torch.no_grad():
        for a in range(0, n_pilot, BLOCK):
            blk = renderer.clean(a, min(n, a + BLOCK))
            cache[a] = blk
            x = blk[: n_pilot - a].double()
            s1 += float(x.sum())
            s2 += float((x * x).sum())
    cnt = n_pilot * D * D
    signal_var = s2 / cnt - (s1 / cnt) ** 2
    noise_std = 0.0 if math.isinf(cfg.snr) else math.sqrt(signal_var / cfg.snr)

    files = {k: out / v for k, v in dict(particles="particles.mrcs", star="particles.star", ctf="ctf.pkl",
                                         poses="poses.pkl", labels="labels.npy", settings="settings.json").items()}
    bar = None
    if cfg.progress:
        from tqdm import tqdm
        bar = tqdm(total=n, unit="img", desc="simulate")
    with MrcStackWriter(files["particles"], D, apix_out) as writer, torch.no_grad():
        for a in range(0, n, chunk):
            b = min(n, a + chunk)
            img = render(a, b).numpy()
            if noise_std > 0:
                img = img + noise_std * _noise(cfg.seed, a, b, D)
            writer.write(img.astype(np.float32))
            if bar is not None:
                bar.update(b - a)
            if progress is not None:
                progress(b, n)
    if bar is not None:
        bar.close()

    write_ctf_pkl(files["ctf"], params.ctf.astype(np.float32))
    write_pose_pkl(files["poses"], params.rot.astype(np.float32), (params.trans_px / D).astype(np.float32))
    write_particles_star(files["star"], ("particles.mrcs", n), params.ctf, params.rot, params.trans_px, apix_out, D,
                         extra_columns={"rlnClassNumber": params.labels + 1})
    atomic_save_npy(files["labels"], params.labels)
    if params.u is not None:
        files["labels_continuous"] = out / "labels_continuous.npy"
        atomic_save_npy(files["labels_continuous"], params.u.astype(np.float32))
    for k, v in enumerate(gt):
        files[f"gt_state_{k}"] = out / f"gt_state_{k}.mrc"
        write_mrc(files[f"gt_state_{k}"], v.float().numpy(), apix=apix_out)
    seconds = time.time() - t0
    settings = {k: v for k, v in asdict(cfg).items() if k != "volumes"}
    settings.update({
        "inputs": names, "input_apix": apix_map, "D": D, "apix": apix_out, "n": n, "n_states": n_states,
        "state_counts": np.bincount(params.labels, minlength=n_states).tolist(),
        "signal_var": signal_var, "noise_std": noise_std, "snr_definition":
            "var(clean images over the whole box, first min(N,1000) images) / noise variance",
        "conventions": {
            "images": "relion_project --ctf: image = iFT(C_RELION * slice), C_RELION = -compute_ctf (C(0) = +w); "
                      "positive density is white",
            "ctf_pkl": "cryoDRGN rows [D, apix, dfU, dfV, dfang, kV, Cs, w, phase] at the output box",
            "poses_pkl": "cryoDRGN (rot, trans = t / D); rot maps image to volume frame (k_vol = k_img @ rot)",
            "translation": "t in px re-centres the particle (the particle sits at -t); STAR rlnOriginX/YAngst = "
                           "+t * apix",
        },
        "hinge_states_u": None if state_u is None else [float(u) for u in state_u],
        "hinge_pivot_voxels_xyz": None if hinge is None else hinge.pivot.tolist(),
        "hinge_axis_xyz": None if hinge is None else hinge.axis.tolist(),
        "hinge_moving_fraction": None if hinge is None else
            float(torch.clamp(hinge.moving, min=0).sum() / torch.clamp(resampled[0], min=0).sum()),
        "seconds": seconds, "files": {k: str(v.name) for k, v in files.items()},
    })
    atomic_write_json(files["settings"], settings, indent=2, default=str)
    return SimulationResult(outdir=out, n=n, D=D, apix=apix_out, n_states=n_states, noise_std=noise_std,
                            signal_var=signal_var, seconds=seconds, files=files)


def demo_config(outdir: str | Path, n: int = 2000, box: int = 64, snr: float = 0.1, seed: int = 0,
                continuous: bool = False) -> SimulationConfig:
    """Two-state (or continuous) hinge dataset from the bundled 70S ribosome map at DEMO_MAP_APIX A/voxel."""
    return SimulationConfig(outdir=str(outdir), n=n, maps=[str(DEMO_MAP)], apix=DEMO_MAP_APIX, box=box, snr=snr,
                            seed=seed, max_shift_px=2.0, defocus_um=(1.0, 2.5),
                            hinge=HingeConfig(steps=2, continuous=continuous, angle_deg=20.0), progress=False)
