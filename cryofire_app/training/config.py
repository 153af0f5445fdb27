"""Training configuration (dataclasses that check their fields when made; saved as OUTDIR/config.json).

Units: box sizes and frequency radii in pixels of the *training* box `D`; learning rate per Adam step;
counts in images (not steps or epochs) so that a schedule does not depend on the batch size.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class EncoderConfig:
    """CNN over the windowed, normalized real-space image, then a shared MLP and heads.

    `channels[i]` is the width of conv block i (two 3x3 convs, ReLU, 2x2 average pool, GroupNorm); blocks are added
    until the feature map is `final_size` pixels wide (or the channel list runs out).
    """

    channels: tuple[int, ...] = (16, 32, 64, 128, 128)
    final_size: int = 4
    hidden: int = 256
    variational: bool = False
    stem: str = "unshuffle"   # unshuffle (2x2 pixel_unshuffle first, default: ~5x fewer FLOPs at box 64, same
                              # accuracy in the staged tests) | conv (the original: first block at full resolution)
    norm: str = "group"       # group | batch: normalisation after each conv block (batch: running statistics at eval;
                              # not synchronised across data-parallel processes)
    box: int | None = 32      # input Fourier-cropped to this box (None: the training box; saved configs without the
                              # field load as None): as accurate per image as box 64, ~3x cheaper (decision 013)
    rot_head: str | None = None   # r6 (the original: 6D regression) | grid (scores over a grid_dirs x grid_psi
                              # rotation grid, cross-entropy on the seed's poses, model/encoder.py); None: grid for the
                              # seeded schedule, r6 for the paper's (saved configs without the field load as r6).
                              # Why: fewer images to the same accuracy (docs/decisions/005-grid-rotation-head.md)
    grid_dirs: int = 512      # grid head: view directions (~9 deg apart)
    grid_psi: int = 24        # grid head: in-plane angles (15 deg apart)
    view_dirs: int = 1024     # seeded schedule, grid head: a view encoder (model/view.py) of this many directions
                              # (~6 deg apart) trained in the distill phase beside the encoder, refining its view
                              # direction at inference; 0: none (saved configs without the field load as 0). New
                              # particles' poses are more accurate with it (decision 007)

    def __post_init__(self) -> None:
        from cryofire_app.training import validation

        validation.check_encoder(self)


@dataclass
class DecoderConfig:
    """Hartley decoder V(k, z) (k in cycles/px of the training box).

    `arch="grid"` is the default: it trains ~55x faster per image than the MLP at box 64, which lets the encoder
    learn the seed's poses on a CPU (decisions 008, 013). `arch="mlp"` (the original): random Fourier features of
    k, z concatenated, residual MLP (pe_dim, feat_sigma, hidden, layers). `arch="grid"`: a learnable
    (grid_channels, G, G, G) feature volume sampled trilinearly at k (G = grid_size, default D + 1: nodes on the
    Hartley lattice), z concatenated, a small residual MLP (grid_hidden wide, grid_layers blocks); ~30x fewer FLOPs
    per point than the 3x256 MLP (model/decoder.py).
    """

    arch: str = "grid"        # grid | mlp
    pe_dim: int = 64          # number of random 3D frequency vectors (features = 2 * pe_dim)
    feat_sigma: float = 0.5   # std of the random frequencies, before the scale D//2
    hidden: int = 256
    layers: int = 3           # residual blocks
    grid_channels: int = 8    # grid: features per node
    grid_size: int | None = None   # grid: nodes per axis (None: D + 1)
    grid_hidden: int = 32     # grid: MLP width
    grid_layers: int = 1      # grid: residual blocks
    grid_scale: float = 30.0  # grid: feature = parameter * grid_scale (a larger optimizer step for the grid)
    grid_half_lattice: bool = True  # grid: evaluate each (k, -k) pair once (F(-k) = conj F(k), H = Re F - Im F)

    def __post_init__(self) -> None:
        from cryofire_app.training import validation

        validation.check_decoder(self)


# seeded schedule on CPU without an explicit freq_max: the distill/joint phases train up to this radius (Fourier px
# of the training box), about the seed's resolution; the explicit final maps go to Nyquist (decision 013)
SEEDED_CPU_FREQ_MAX = 12

SCHEDULES = ("seeded", "amortized")
LR_SCHEDULES = ("constant", "cosine")
PRECISIONS = ("fp32", "bf16", "fp16")

#: the largest training box chosen without -D: larger stacks are Fourier-cropped to it (see training_box)
AUTO_BOX_MAX = 128


def training_box(stack_box: int, requested: int | None = None) -> int:
    """The training box in pixels: ``requested`` (-D) when given, else the stack's box up to AUTO_BOX_MAX, else
    AUTO_BOX_MAX. A step's cost grows with the box squared (box 256 costs ~4x box 128 per image) while the seed and the
    encoder work at small boxes anyway; the explicit final maps and ``cryofire volume --box`` give maps at the stack's
    box and pixel size. The pixel size at the training box is ``apix * stack_box / box``."""
    if requested:
        return int(requested)
    return int(stack_box) if stack_box <= AUTO_BOX_MAX else AUTO_BOX_MAX


@dataclass
class SeededConfig:
    """The seeded schedule (decision 003): the ab initio seed on at most seed_max_particles training particles, then
    "distill" (the encoder learns the seed's poses and coordinates while the decoder fits the data at those poses) for
    at least distill_fraction of the images, then "joint" amortized training at lr * joint_lr_scale."""

    seed_max_particles: int = 20000      # the seed searches at most this many training particles (0: all); the
                                         # distilled encoder gives the others their poses, so its cost is flat in N
    seed_config: dict = field(default_factory=dict)   # overrides of reconstruct.SeedConfig fields
    refine_others: str = "search"        # the final poses of the training particles the seed did not search (the
                                         # held-out split, and past seed_max_particles the rest): the encoder's,
                                         # refined against the seed's map as `cryofire infer --refine-poses` does:
                                         # search | local | no (decision 016)
    seed_from: str | None = None         # reuse the seed of an earlier run on the same particles and split (its run
                                         # folder or checkpoints/seed.npz) instead of searching again
    distill_fraction: float = 0.85       # share of images_total spent in the distill phase (decision 013)
    seed_agreement_deg: float = 10.0     # the joint phase starts only once the encoder's poses agree with the seed's
                                         # to this median angle (training split sample); until then distilling goes
                                         # on, and if it never does the outputs keep the seed's poses (joint training
                                         # from an encoder at chance blurs the map: decision 013)
    distill_rot_weight: float = 1.0      # weight of |R_enc - R_seed|_F^2 (chordal, 0..8; r6 head) or of the grid
                                         # head's cross-entropy
    distill_trans_weight: float = 0.05   # weight of |t_enc - t_seed|^2 (pixels^2 of box D)
    distill_decoder_every: int = 4       # fit the decoder on every k-th step only (encoder steps are ~5-10x cheaper
                                         # on a CPU: more accurate per second, decision 013)
    distill_grid_width: float = 0.5      # grid head: the cross-entropy target's angular width at the end of the
                                         # narrowing, in view spacings (~9 deg); it starts at 1 and narrows linearly
                                         # from distill_narrow_from to distill_narrow_to of the distill phase (late:
                                         # narrow from the start learns ~2x slower; decision 013)
    distill_narrow_from: float = 0.5
    distill_narrow_to: float = 0.75
    distill_decay_from: float = 0.75     # the learning rate stays at lr until this fraction of the distill images,
                                         # then falls (cosine) to lr * joint_lr_scale at their end, where the joint
                                         # phase takes over at that rate (1 = no decay; runs saved before it load 1)
    distill_z_weight: float = 1.0        # weight of |z_0..q-1 - the seed's coordinates|^2
    # the decoder reads the seed's coordinates as z (not the encoder's guess of them), so that it learns how the map
    # changes along them, which the outputs' z, --refine-z and the joint phase rely on
    distill_decoder_seed_z: bool = True
    # the synthetic images are drawn from maps of the seed's states (or of distill_synth_z_bins bins of its
    # coordinates) and teach the encoder's z head too. Off: on a continuous hinge it made z worse (decision 011)
    distill_synth_z: bool = False
    distill_synth_z_bins: int = 8
    distill_synth_ratio: float = 0.5     # with in-plane augmentation: synthetic pose rows added per real image in each
                                         # step (the seed's map at uniform random poses with the data's CTFs, shifts
                                         # and fitted noise spectrum: training.synthetic); exact and unlimited poses
                                         # the encoder cannot memorise; runs saved before it load 0 (decision 006)
    distill_view_rows: float = 0.67      # with a view encoder (encoder.view_dirs): the fraction of each step's pose
                                         # rows it also reads: as accurate as all rows, 17 % faster (decision 013)
    sym_loss: bool = False               # symmetric (mirror) loss in the joint phase (decision 013)
    joint_lr_scale: float = 0.1          # joint phase: lr * this (the full rate undoes the distilled poses)

    def __post_init__(self) -> None:
        from cryofire_app.training import validation

        validation.check_seeded(self)


@dataclass
class AmortizedConfig:
    """The paper's pure cryoFIRE schedule: a pose-only phase (the decoder fits one consensus map, z bypassed), then
    joint training; frequency marching radius(n) = min(freq_start + n // freq_add_every, freq_max or D//2) px."""

    pose_only_images: int = 100_000      # pose-only phase length in images (z ignored, sampled)
    std_z_init: float = 3.0              # std of the random z fed to the decoder in the pose-only phase
    sym_loss: bool = True                # symmetric loss: the minimum over the image and its exact mirror
    freq_start: int = 4
    freq_add_every: int = 10_000

    def __post_init__(self) -> None:
        from cryofire_app.training import validation

        validation.check_amortized(self)


#: flat field names (config.json and checkpoints before the schedule groups; TrainConfig.of) -> (group, field)
GROUPED = {**{f.name: ("seeded", f.name) for f in dataclasses.fields(SeededConfig)
              if f.name not in ("sym_loss", "joint_lr_scale")},
           "seeded_sym_loss": ("seeded", "sym_loss"), "seeded_joint_lr_scale": ("seeded", "joint_lr_scale"),
           **{f.name: ("amortized", f.name) for f in dataclasses.fields(AmortizedConfig)}}
#: what runs saved before a field existed did (applied to such saved configs only)
LEGACY_DEFAULTS = {"seeded": {"distill_grid_width": 1.0, "distill_synth_ratio": 0.0, "distill_decoder_seed_z": False,
                              "distill_synth_z": False, "distill_decay_from": 1.0},
                   "encoder": {"stem": "conv", "box": None, "norm": "group", "rot_head": "r6", "view_dirs": 0},
                   "decoder": {"arch": "mlp"}}
GROUPS = {"encoder": EncoderConfig, "decoder": DecoderConfig, "seeded": SeededConfig, "amortized": AmortizedConfig}


@dataclass
class TrainConfig:
    particles: str = ""
    outdir: str = ""
    ctf: str | None = None
    datadir: str | None = None
    D: int | None = None                 # training box (even); None = training_box(the stack's box)
    zdim: int = 8
    num_images: int | None = None        # total images to see (exclusive with epochs)
    epochs: float | None = None
    batch_size: int = 32
    lr: float | None = None              # None: 1e-4 for "amortized" (cryoFIRE), 1e-3 for "seeded" (the distill
                                         # phase is 10x slower at 1e-4: decision 013)
    lr_schedule: str = "constant"        # constant | cosine (5 % linear warm-up from lr/25, cosine decay to ~0 at
                                         # images_total; a pure function of images seen, so resume is exact)
    seed: int = 0
    device: str = "auto"                 # auto | cpu | cuda
    # "seeded" (default): the ab initio seed, then "distill", then "joint" (SeededConfig); "amortized": the paper's
    # pure cryoFIRE schedule (AmortizedConfig). "seeded" trains at a fixed radius freq_max (on a CPU capped by default
    # to SEEDED_CPU_FREQ_MAX px, chosen at setup and saved in config.json).
    schedule: str = "seeded"
    augment_inplane: bool | None = None  # the encoder reads each pose from its image turned by a random in-plane
                                         # angle, turned back (CryoFIRE.encode_turned; z from the image as given).
                                         # None: on for "seeded", off for "amortized" (the paper's schedule); never
                                         # with the symmetric loss. Without it the encoder memorises its training
                                         # images (decisions 004, 013)
    beta: float = 0.0                    # KL weight (variational encoder only); KL / Dl^2 as in the original
    freq_max: int | None = None          # the largest frequency-mask radius (px; None: D // 2)
    window_r_in: float = 0.85
    window_r_out: float = 0.99
    val_fraction: float = 0.05           # held-out validation split (at most val_max images)
    val_max: int = 256
    norm_sample: int = 1000              # images sampled for normalization statistics
    checkpoint_every: int = 20_000       # images between checkpoints
    keep_checkpoints: int = 3            # numbered checkpoints kept besides last.pt
    latents_every: int = 5_000           # images between Latents events
    latents_subset: int = 1000           # particles in each Latents snapshot
    invert_data: str = "auto"            # auto | yes | no   (auto: invert when the consensus density is negative)
    contrast_check_images: int = 5_000   # images seen before the automatic contrast check
    num_threads: int | None = None       # torch intra-op threads (None: leave torch's default)
    # speed: precision of the training/inference forward passes under torch.autocast: fp32 | bf16 | fp16
    # (fp16 only on CUDA, with a gradient scaler; bf16 runs on CPU too but is only fast with AVX512-BF16/AMX);
    # channels_last: NHWC encoder convolutions (None: on with CUDA, off on the CPU); compile: torch.compile the
    # encoder and decoder (off; the first steps pay the compile time, worth it on a GPU)
    precision: str = "fp32"
    channels_last: bool | None = None
    compile: bool = False
    eval_batch_size: int = 256
    select_radius: int = 8               # frequency radius (px) of the decoder check that picks the branch at eval
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    seeded: SeededConfig = field(default_factory=SeededConfig)
    amortized: AmortizedConfig = field(default_factory=AmortizedConfig)

    def __post_init__(self) -> None:
        """A config is valid when made (each group checks itself when made): InputError naming the option."""
        from cryofire_app.training import validation

        validation.check_fields(self)

    def validate(self) -> "TrainConfig":
        """Check every field again (types, ranges, choices: fields may have been set since the config was made) and
        that the device exists; InputError naming the option and what is allowed. Returns self. Called by `cryofire
        train`, the GUI's Train dock and Trainer."""
        from cryofire_app.training.validation import validate_config

        return validate_config(self)

    def resolved(self, device_type: str) -> "TrainConfig":
        """A copy with the defaults that depend on the schedule and the device filled in (this config unchanged):
        ``lr`` 1e-3 (seeded) or 1e-4 (amortized); ``freq_max`` SEEDED_CPU_FREQ_MAX for the seeded schedule on a CPU
        (``device_type`` "cpu" or "cuda")."""
        out = TrainConfig.from_dict(self.to_dict())
        if out.schedule == "seeded" and out.freq_max is None and device_type == "cpu":
            out.freq_max = SEEDED_CPU_FREQ_MAX
        if out.lr is None:
            out.lr = 1e-3 if out.schedule == "seeded" else 1e-4
        return out

    def augments_inplane(self) -> bool:
        """Whether training turns the encoder's input in plane (augment_inplane; None: the seeded schedule only)."""
        return (self.schedule == "seeded") if self.augment_inplane is None else bool(self.augment_inplane)

    def rot_head(self) -> str:
        """The encoder's rotation head (encoder.rot_head; None: "grid" for the seeded schedule, "r6" otherwise)."""
        rh = self.encoder.rot_head
        return ("grid" if self.schedule == "seeded" else "r6") if rh is None else rh

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["encoder"]["channels"] = list(self.encoder.channels)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        """A saved config (config.json, a checkpoint's): this layout, or the flat one of runs saved before the
        schedule groups, whose fields are moved into them; fields a saved run predates get what such a run did
        (LEGACY_DEFAULTS)."""
        d = dict(d)
        for group, defaults in LEGACY_DEFAULTS.items():
            sub = dict(_as_dict(d.get(group)) or {})
            for k, v in defaults.items():
                if k not in sub and not (group == "seeded" and k in d):
                    sub[k] = v
            d[group] = sub
        return cls.of(**d)

    @classmethod
    def of(cls, **fields: Any) -> "TrainConfig":
        """A config from field names; the schedule groups' fields may also be given by their flat names
        (``distill_fraction=...``, ``pose_only_images=...``, ``seeded_sym_loss``/``sym_loss`` for the seeded and the
        amortized symmetric loss), and groups as dataclasses or dicts. Unknown names raise ValueError."""
        d = {k: v for k, v in fields.items() if k not in GROUPED and k not in GROUPS}
        sub = {g: dict(_as_dict(fields.get(g)) or {}) for g in GROUPS}
        for k, (g, name) in GROUPED.items():
            if k in fields:
                sub[g][name] = fields[k]
        if "channels" in sub["encoder"]:
            sub["encoder"]["channels"] = tuple(sub["encoder"]["channels"])
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        for g, kind in GROUPS.items():
            unknown |= {f"{g}.{k}" for k in set(sub[g]) - {f.name for f in dataclasses.fields(kind)}}
        if unknown:
            raise ValueError(f"unknown config keys: {sorted(unknown)}")
        return cls(**d, **{g: GROUPS[g](**sub[g]) for g in GROUPS})

    def set(self, name: str, value: Any) -> None:
        """Set one field by name; the schedule groups' fields also by their flat names (as in :meth:`of`).
        ValueError for an unknown name."""
        if name in GROUPED:
            group, field_name = GROUPED[name]
            setattr(getattr(self, group), field_name, value)
        elif name in {f.name for f in dataclasses.fields(self)}:
            setattr(self, name, value)
        else:
            raise ValueError(f"unknown training setting {name!r}")

    def save(self, path: str | Path) -> None:
        from cryofire_app.training.checkpoint import atomic_write_text

        atomic_write_text(Path(path), json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "TrainConfig":
        return cls.from_dict(json.loads(Path(path).read_text()))


def check_device(name: Any, key: str = "device") -> None:
    """InputError unless ``name`` is a device this machine has (training.validation.check_device)."""
    from cryofire_app.training.validation import check_device as check

    check(name, key)


def _as_dict(group: Any) -> dict | None:
    """A group given as a dataclass or a dict, as a dict (None stays None)."""
    if group is not None and dataclasses.is_dataclass(group):
        return dataclasses.asdict(group)
    return group
