"""Atomic checkpoint files (temp file in the same folder, fsync, os.replace) and safe loading.

A checkpoint is a dict of tensors, numbers, strings, lists and dicts only, so that it loads with
`torch.load(weights_only=True)`. A kill during a write leaves `<name>.tmp` behind and the previous file intact.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from cryofire_app.io.errors import InputError


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """torch.save to `path.tmp`, flush + fsync, then rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        torch.save(obj, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)
    return path


def atomic_write_text(path: Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def atomic_save_npz(path: Path, **arrays: Any) -> None:
    import numpy as np

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint with weights_only=True; a missing or damaged file raises InputError naming it."""
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
    return ck
