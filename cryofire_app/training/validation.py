"""Validation of a TrainConfig, the one place. Every config dataclass checks its own fields in ``__post_init__``
(check_fields, check_encoder, check_decoder, check_seeded, check_amortized), so a config is valid when made;
TrainConfig.validate runs all of them again (fields may have been set since) and checks that the device exists. The
CLI, the GUI and the Python API all go through it. Each failure is an InputError of one line naming the option (its
`cryofire train` flag and its field), what is allowed and the value given."""
from __future__ import annotations

from typing import Any

from cryofire_app.io.errors import InputError
from cryofire_app.training.config import (
    GROUPS,
    LR_SCHEDULES,
    PRECISIONS,
    SCHEDULES,
    AmortizedConfig,
    DecoderConfig,
    EncoderConfig,
    SeededConfig,
    TrainConfig,
)

# field -> the `cryofire train` option that sets it, so one message serves the command line and the API alike
CLI_FLAGS: dict[str, str] = {
    "particles": "PARTICLES", "outdir": "-o/--outdir", "D": "-D/--box", "zdim": "--zdim",
    "num_images": "--num-images", "epochs": "--epochs", "batch_size": "--batch-size", "lr": "--lr",
    "lr_schedule": "--lr-schedule", "seed": "--seed", "device": "--device", "schedule": "--schedule",
    "seeded.distill_fraction": "--distill-fraction", "seeded.distill_grid_width": "--grid-width",
    "seeded.distill_synth_ratio": "--synth-ratio", "amortized.pose_only_images": "--pose-only-images",
    "beta": "--beta",
    "amortized.freq_start": "--freq-start", "amortized.freq_add_every": "--freq-add-every", "freq_max": "--freq-max",
    "invert_data": "--invert-data", "val_fraction": "--val-fraction", "checkpoint_every": "--checkpoint-every",
    "keep_checkpoints": "--keep-checkpoints", "num_threads": "--threads", "precision": "--precision",
    "seeded.seed_from": "--seed-from", "seeded.seed_max_particles": "--seed-particles",
    "seeded.refine_others": "--refine-others",
    "encoder.channels": "--enc-channels", "encoder.box": "--enc-box",
    "encoder.stem": "--enc-stem", "encoder.norm": "--enc-norm", "encoder.rot_head": "--rot-head",
    "encoder.view_dirs": "--view-dirs", "decoder.arch": "--dec-arch", "decoder.hidden": "--dec-hidden",
    "decoder.layers": "--dec-layers", "decoder.pe_dim": "--pe-dim",
}


def _name(key: str) -> str:
    flag = CLI_FLAGS.get(key)
    return f"{flag} ({key})" if flag else key


def _fail(key: str, what: str, value: Any) -> None:
    raise InputError(f"{_name(key)} must be {what}, got {value!r}")


def _is_int(v: Any) -> bool:
    import numbers

    return isinstance(v, numbers.Integral) and not isinstance(v, (bool, _np_bool()))


def _is_num(v: Any) -> bool:
    import math
    import numbers

    return isinstance(v, numbers.Real) and not isinstance(v, (bool, _np_bool())) and math.isfinite(v)


def _np_bool() -> type:
    import numpy as np

    return np.bool_


def _int_at_least(key: str, v: Any, lo: int, none_ok: bool = False, what: str = "") -> None:
    if v is None and none_ok:
        return
    if not _is_int(v) or v < lo:
        _fail(key, f"an integer >= {lo}{what}", v)


def _num_in(key: str, v: Any, lo: float | None, hi: float | None, lo_open: bool = False, hi_open: bool = False,
            none_ok: bool = False, what: str = "") -> None:
    if v is None and none_ok:
        return
    ok = _is_num(v) and (lo is None or (v > lo if lo_open else v >= lo)) and \
        (hi is None or (v < hi if hi_open else v <= hi))
    if not ok:
        lo_s = "" if lo is None else (f"> {lo:g}" if lo_open else f">= {lo:g}")
        hi_s = "" if hi is None else (f"< {hi:g}" if hi_open else f"<= {hi:g}")
        rng = " and ".join(s for s in (lo_s, hi_s) if s)
        _fail(key, f"a finite number {rng}{what}" if rng else f"a finite number{what}", v)


def _choice(key: str, v: Any, choices: tuple, none_ok: bool = False) -> None:
    if v is None and none_ok:
        return
    if v not in choices:
        _fail(key, "one of " + ", ".join(str(c) for c in choices), v)


def _even_box(key: str, v: Any, none_ok: bool = True) -> None:
    if v is None and none_ok:
        return
    if not _is_int(v) or v < 8 or v % 2:
        _fail(key, "an even number of pixels >= 8", v)


def _device_name(name: Any, key: str = "device") -> None:
    import re

    if not isinstance(name, str) or not re.fullmatch(r"auto|cpu|cuda(:\d+)?", name):
        _fail(key, "auto, cpu, cuda or cuda:N", name)


def check_device(name: Any, key: str = "device") -> None:
    """InputError unless `name` is auto, cpu, cuda or cuda:N naming a CUDA device torch can see."""
    _device_name(name, key)
    if name.startswith("cuda"):
        import torch

        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise InputError(f"{_name(key)}: {name!r} requested but torch sees no CUDA device (use cpu or auto)")
        if ":" in name and int(name.split(":")[1]) >= n:
            raise InputError(f"{_name(key)}: {name!r} requested but torch sees {n} CUDA device(s) "
                             f"(cuda:0..cuda:{n - 1})")


def validate_config(cfg: TrainConfig) -> TrainConfig:
    """Check every field's type and range and that the device exists; raise InputError (one line: the option, what
    is allowed, the value).

    Only the config itself is checked here; facts that need the data (box of the stack, number of particles) are
    checked when the data is opened (training.dataset.check_trainable).
    """
    check_fields(cfg)
    for group, check in (("encoder", check_encoder), ("decoder", check_decoder), ("seeded", check_seeded),
                         ("amortized", check_amortized)):
        sub = getattr(cfg, group)
        if not isinstance(sub, GROUPS[group]):
            _fail(group, f"a {GROUPS[group].__name__}", sub)
        check(sub)
    check_device(cfg.device)
    return cfg


def check_fields(cfg: TrainConfig) -> None:
    """TrainConfig's own fields (not its groups, which check themselves; not whether the device exists)."""
    _check_run(cfg)
    _check_bookkeeping(cfg)
    _check_compute(cfg)


def _check_run(cfg: TrainConfig) -> None:
    """Paths, box, latent size, length, batch, learning rate, seed, device name, schedule, KL weight, radius."""
    for key in ("particles", "outdir"):
        v = getattr(cfg, key)
        if not isinstance(v, str):
            _fail(key, "a path", v)
    _even_box("D", cfg.D)
    _int_at_least("zdim", cfg.zdim, 0, what=" (0: no conformational latent)")
    if cfg.num_images is not None and cfg.epochs is not None:
        raise InputError("give either --num-images (num_images) or --epochs (epochs), not both")
    _int_at_least("num_images", cfg.num_images, 1, none_ok=True, what=" (images to train on)")
    _num_in("epochs", cfg.epochs, 0, None, lo_open=True, none_ok=True)
    _int_at_least("batch_size", cfg.batch_size, 1, what=" (images per step)")
    _num_in("lr", cfg.lr, 0, 1, lo_open=True, none_ok=True, what=" (Adam learning rate)")
    _choice("lr_schedule", cfg.lr_schedule, LR_SCHEDULES)
    _int_at_least("seed", cfg.seed, 0)
    _device_name(cfg.device)
    _choice("schedule", cfg.schedule, SCHEDULES)
    _num_in("beta", cfg.beta, 0, None, what=" (KL weight)")
    _int_at_least("freq_max", cfg.freq_max, 1, none_ok=True, what=" (pixels)")


def check_seeded(seeded: SeededConfig) -> None:
    """The seeded schedule's fields: the seed, the distill phase, the joint phase's rate."""
    _int_at_least("seeded.distill_synth_z_bins", seeded.distill_synth_z_bins, 2)
    _int_at_least("seeded.seed_max_particles", seeded.seed_max_particles, 0, what=" (0: all)")
    if 0 < seeded.seed_max_particles < 16:
        _fail("seeded.seed_max_particles", "0 (all) or at least 16", seeded.seed_max_particles)
    _num_in("seeded.distill_fraction", seeded.distill_fraction, 0, 1)
    _num_in("seeded.seed_agreement_deg", seeded.seed_agreement_deg, 0, 180, lo_open=True)
    for key in ("distill_rot_weight", "distill_trans_weight", "distill_z_weight"):
        _num_in(f"seeded.{key}", getattr(seeded, key), 0, None)
    _int_at_least("seeded.distill_decoder_every", seeded.distill_decoder_every, 1)
    _choice("seeded.refine_others", seeded.refine_others, ("search", "local", "no"))
    _num_in("seeded.distill_grid_width", seeded.distill_grid_width, 0, 1, lo_open=True, what=" (view spacings)")
    _num_in("seeded.distill_narrow_from", seeded.distill_narrow_from, 0, 1)
    _num_in("seeded.distill_narrow_to", seeded.distill_narrow_to, seeded.distill_narrow_from, 1,
            what=" (and >= distill_narrow_from)")
    _num_in("seeded.distill_decay_from", seeded.distill_decay_from, 0, 1)
    _num_in("seeded.distill_synth_ratio", seeded.distill_synth_ratio, 0, 4,
            what=" (synthetic images per real image)")
    _num_in("seeded.distill_view_rows", seeded.distill_view_rows, 0, 1)
    _num_in("seeded.joint_lr_scale", seeded.joint_lr_scale, 0, None, lo_open=True)
    if not isinstance(seeded.seed_config, dict):
        _fail("seeded.seed_config", "a dict of reconstruct.SeedConfig fields", seeded.seed_config)
    if seeded.seed_config:
        from cryofire_app.reconstruct import seed_config_from

        try:
            seed_config_from(seeded.seed_config)
        except (TypeError, ValueError) as exc:
            raise InputError(f"seeded.seed_config {seeded.seed_config!r}: {exc}") from None
    if seeded.seed_from is not None and not isinstance(seeded.seed_from, str):
        _fail("seeded.seed_from", "a run folder or seed.npz path", seeded.seed_from)


def check_amortized(amortized: AmortizedConfig) -> None:
    """The amortized schedule's fields: pose-only phase, frequency marching."""
    _int_at_least("amortized.pose_only_images", amortized.pose_only_images, 0)
    _num_in("amortized.std_z_init", amortized.std_z_init, 0, None, lo_open=True)
    _int_at_least("amortized.freq_start", amortized.freq_start, 1, what=" (pixels)")
    _int_at_least("amortized.freq_add_every", amortized.freq_add_every, 1, what=" (images per +1 px)")


def _check_bookkeeping(cfg: TrainConfig) -> None:
    """Window, validation split, normalisation sample, checkpoints, snapshots, contrast."""
    _num_in("window_r_in", cfg.window_r_in, 0, 1, lo_open=True, hi_open=True)
    _num_in("window_r_out", cfg.window_r_out, cfg.window_r_in, 1, lo_open=True, what=" (and > window_r_in)")
    _num_in("val_fraction", cfg.val_fraction, 0, 1, hi_open=True, what=" (fraction held out)")
    _int_at_least("val_max", cfg.val_max, 0)
    _int_at_least("norm_sample", cfg.norm_sample, 1)
    _int_at_least("checkpoint_every", cfg.checkpoint_every, 1, what=" (images)")
    _int_at_least("keep_checkpoints", cfg.keep_checkpoints, 0)
    _int_at_least("latents_every", cfg.latents_every, 1)
    _int_at_least("latents_subset", cfg.latents_subset, 1)
    _choice("invert_data", cfg.invert_data, ("auto", "yes", "no"))
    _int_at_least("contrast_check_images", cfg.contrast_check_images, 0)


def _check_compute(cfg: TrainConfig) -> None:
    """Threads, precision, memory layout, augmentation, evaluation batches."""
    _int_at_least("num_threads", cfg.num_threads, 1, none_ok=True)
    _choice("precision", cfg.precision, PRECISIONS)
    if cfg.precision == "fp16" and cfg.device == "cpu":
        raise InputError("--precision fp16 (precision) needs a CUDA device; use bf16 or fp32 on the CPU")
    _choice("channels_last", cfg.channels_last, (True, False), none_ok=True)
    _choice("augment_inplane", cfg.augment_inplane, (True, False), none_ok=True)
    _int_at_least("eval_batch_size", cfg.eval_batch_size, 1)
    _int_at_least("select_radius", cfg.select_radius, 1, what=" (pixels)")


def check_encoder(enc: EncoderConfig) -> None:
    ch = enc.channels
    if not isinstance(ch, (tuple, list)) or not ch or not all(_is_int(c) and c >= 1 for c in ch):
        _fail("encoder.channels", "one or more positive integers (conv block widths)", ch)
    _int_at_least("encoder.final_size", enc.final_size, 1)
    _int_at_least("encoder.hidden", enc.hidden, 1)
    _choice("encoder.stem", enc.stem, ("unshuffle", "conv"))
    _choice("encoder.norm", enc.norm, ("group", "batch"))
    _even_box("encoder.box", enc.box)
    _choice("encoder.rot_head", enc.rot_head, ("grid", "r6"), none_ok=True)
    _int_at_least("encoder.grid_dirs", enc.grid_dirs, 1)
    _int_at_least("encoder.grid_psi", enc.grid_psi, 1)
    if not _is_int(enc.view_dirs) or (enc.view_dirs != 0 and enc.view_dirs < 12):
        _fail("encoder.view_dirs", "0 (no view encoder) or an integer >= 12", enc.view_dirs)


def check_decoder(dec: DecoderConfig) -> None:
    _choice("decoder.arch", dec.arch, ("grid", "mlp"))
    _int_at_least("decoder.pe_dim", dec.pe_dim, 1)
    _num_in("decoder.feat_sigma", dec.feat_sigma, 0, None, lo_open=True)
    _int_at_least("decoder.hidden", dec.hidden, 1)
    _int_at_least("decoder.layers", dec.layers, 0)
    _int_at_least("decoder.grid_channels", dec.grid_channels, 1)
    _int_at_least("decoder.grid_size", dec.grid_size, 2, none_ok=True)
    _int_at_least("decoder.grid_hidden", dec.grid_hidden, 1)
    _int_at_least("decoder.grid_layers", dec.grid_layers, 0)
    _num_in("decoder.grid_scale", dec.grid_scale, 0, None, lo_open=True)
