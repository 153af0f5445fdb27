"""napari reader: MRC maps and particle stacks (.mrc, .mrcs, .map, also .gz/.bz2 maps).

The voxel size from the header (Angstrom) becomes the layer scale: maps `(apix, apix, apix)` on (z, y, x), stacks
`(1, apix, apix)` on (image, y, x) so that the image axis is a plain index. A header voxel size of 0 (a common
placeholder) gives scale 1 and a warning notification. Reading is delegated to `cryofire_app.io`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

SUFFIXES = (".mrc", ".mrcs", ".map", ".rec", ".mrc.gz", ".map.gz", ".mrc.bz2", ".map.bz2")


def _supported(path: str) -> bool:
    return str(path).lower().endswith(SUFFIXES)


def get_reader(path: str | list[str]) -> Callable[[Any], list[tuple]] | None:
    """npe2 reader contribution: return a reader function for MRC paths, else None."""
    paths = [path] if isinstance(path, (str, Path)) else list(path)
    if not paths or not all(_supported(str(p)) for p in paths):
        return None
    return read_layers


def layer_data(path: str | Path) -> tuple:
    """One napari LayerData tuple `(data, kwargs, 'image')` for an MRC file."""
    from cryofire_app.gui.engine_api import read_mrc

    path = Path(path)
    data, info = read_mrc(path)
    apix = info.apix
    is_stack = data.ndim == 3 and (info.is_stack or path.suffix.lower() == ".mrcs")
    s = float(apix) if apix else 1.0
    if data.ndim == 2:
        scale = (s, s)
    elif is_stack:
        scale = (1.0, s, s)
    else:
        scale = (s, s, s)
    kind = "stack" if is_stack else ("image" if data.ndim == 2 else "map")
    meta = {"apix": apix, "source": str(path), "kind": kind, "origin": info.origin}
    kwargs = {"name": path.name.split(".")[0], "scale": scale, "metadata": meta}
    if kind == "map":
        kwargs["rendering"] = "mip"
    return data, kwargs, "image"


def read_layers(path: str | list[str]) -> list[tuple]:
    paths = [path] if isinstance(path, (str, Path)) else list(path)
    out = []
    for p in paths:
        tup = layer_data(p)
        if tup[1]["metadata"]["apix"] is None:
            from napari.utils.notifications import show_warning

            show_warning(f"{p}: the header voxel size is 0; showing it with scale 1 (set the layer scale yourself)")
        out.append(tup)
    return out
