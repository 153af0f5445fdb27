"""napari writer: an Image layer to MRC, with the voxel size.

The voxel size is the layer's `metadata['apix']` when present (set by the reader and by decoded volumes), else the
layer scale along x (the last axis). 3-D layers are written as maps (z, y, x); a layer whose metadata says it is a
particle stack is written as a stack. Writing is atomic (`cryofire_app.io.write_mrc`: temp file, then rename).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def voxel_size(meta: dict) -> float:
    md = meta.get("metadata") or {}
    apix = md.get("apix")
    if apix:
        return float(apix)
    scale = meta.get("scale")
    return float(scale[-1]) if scale is not None and len(scale) else 1.0


def write_image(path: str, data: Any, meta: dict) -> list[str]:
    """npe2 single-layer writer. Returns the list of written paths."""
    from cryofire_app.gui.engine_api import write_mrc

    arr = np.asarray(data)
    if arr.ndim not in (2, 3):
        raise ValueError(f"{path}: MRC holds 2-D images or 3-D volumes/stacks; this layer is {arr.ndim}-D "
                         f"(for a trajectory, save one time point)")
    if not str(path).lower().endswith((".mrc", ".mrcs", ".map")):
        path = str(path) + ".mrc"
    md = meta.get("metadata") or {}
    stack = arr.ndim == 3 and (md.get("kind") == "stack" or str(path).lower().endswith(".mrcs"))
    write_mrc(Path(path), arr.astype(np.float32, copy=False), apix=voxel_size(meta), stack=stack)
    return [str(path)]
