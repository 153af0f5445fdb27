"""Checkpoints: written atomically (temp file in the same folder, fsync, os.replace), loaded safely.

A checkpoint is a dict of tensors, numbers, strings, lists and dicts only, so that it loads with
`torch.load(weights_only=True)`. A kill during a write leaves
`.<name>.<random>.tmp` behind and the previous file intact.
"""
from __future__ import annotations

from pathlib import Path

import torch

from cryofire_app.io.atomic import atomic_save_npz, atomic_torch_save, atomic_write_text
from cryofire_app.io.errors import InputError
from cryofire_app.training.state import CHECKPOINT_FORMAT, migrate

# the run folder's atomic writers (temp file beside the target, fsync, rename) live in io/atomic.py
__all__ = ["CHECKPOINT_FORMAT", "atomic_save_npz", "atomic_torch_save", "atomic_write_text", "load_checkpoint",
           "write_checkpoint"]


def checkpoint_state(tr) -> dict:
    """The checkpoint dict of Trainer ``tr`` (layout: training/state.py)."""
    from cryofire_app.training.schedule import mask_radius_at

    cfg = tr.config
    return {
        "format": CHECKPOINT_FORMAT, **tr.state.to_checkpoint(), "config": cfg.to_dict(),
        "model": tr.model.state_dict(), "optimizer": tr.optim.state_dict(),
        "torch_rng": tr.gen.get_state(), "synth_rng": tr.synth_gen.get_state(),
        "grad_scaler": tr.amp.state_dict(),
        "D": tr.D, "D0": tr.data.D0, "N": tr.data.N, "apix": tr.data.apix, "zdim": cfg.zdim,
        "sigma_real": tr.data.prep.sigma_real, "sigma_ht": tr.data.prep.sigma_ht,
        "train_pos": torch.as_tensor(tr.train_pos), "val_pos": torch.as_tensor(tr.val_pos),
        "mask_radius": mask_radius_at(cfg, tr.D, tr.images_seen), "phase": tr.phase,
        "schedule": cfg.schedule,
    }


def write_checkpoint(tr, numbered: bool = True) -> Path | None:
    """Atomic write of Trainer ``tr``'s checkpoints/last.pt (+ a numbered hard link, ``keep_checkpoints`` of them kept);
    its path. None, and nothing written, with NaN/Inf weights (an update that was not finite though its loss was)."""
    if not all(bool(torch.isfinite(p).all()) for p in tr.model.parameters()):
        return None
    last = atomic_torch_save(checkpoint_state(tr), tr.run_dir.last_checkpoint)
    if numbered:
        _number_checkpoint(tr, last)
    return last


def _number_checkpoint(tr, last: Path) -> None:
    """A numbered copy of ``last`` (a hard link where the file system allows), and the oldest ones removed."""
    num = tr.run_dir.numbered_checkpoint(tr.images_seen)
    try:
        if num.exists():
            num.unlink()
        num.hardlink_to(last)
    except OSError:
        atomic_torch_save(checkpoint_state(tr), num)
    olds = tr.run_dir.numbered_checkpoints()
    for p in olds[: max(0, len(olds) - tr.config.keep_checkpoints)]:
        p.unlink(missing_ok=True)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint with weights_only=True, migrated to the current layout (training/state.py); a missing or
    damaged file, or one written by a newer version of the layout (``format`` > CHECKPOINT_FORMAT), raises InputError
    naming it."""
    path = Path(path)
    if not path.is_file():
        raise InputError("checkpoint not found", path)
    try:
        ck = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated / not a torch file / a pickle with forbidden globals
        first = str(exc).strip().split(". ")[0].splitlines()[0][:160] if str(exc).strip() else ""
        raise InputError(f"cannot read checkpoint: truncated, damaged or not a cryofire checkpoint "
                         f"({type(exc).__name__}: {first})", path) from None
    if not isinstance(ck, dict) or "model" not in ck or "config" not in ck:
        raise InputError("not a cryofire checkpoint (missing model/config)", path)
    fmt = ck.get("format", 1)
    if not isinstance(fmt, int) or fmt < 1:
        raise InputError(f"checkpoint format {fmt!r} is not a version number: the file is damaged", path)
    if fmt > CHECKPOINT_FORMAT:
        raise InputError(f"checkpoint format {fmt} was written by a newer cryofire-app (this one reads up to format "
                         f"{CHECKPOINT_FORMAT}): upgrade cryofire-app to open it", path)
    return migrate(ck)
