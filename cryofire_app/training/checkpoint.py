"""Atomic checkpoint files (temp file in the same folder, fsync, os.replace) and safe loading.

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
__all__ = ["CHECKPOINT_FORMAT", "atomic_save_npz", "atomic_torch_save", "atomic_write_text", "load_checkpoint"]


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
