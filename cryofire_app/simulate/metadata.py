"""Poses and CTFs of a real dataset (RELION .star or cryoSPARC .cs) as the parameters of a simulation."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from cryofire_app.io import InputError
from cryofire_app.simulate.config import SimulationConfig

log = logging.getLogger(__name__)


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



def _n_images(cfg: SimulationConfig, meta: dict | None) -> int:
    """The number of images: ``cfg.n``, or every particle the metadata lists; at most that many."""
    n_meta = len(meta["ctf"]) if meta is not None else None
    n = cfg.n if cfg.n is not None else n_meta
    if n is None or n < 1:
        raise InputError("give the number of images (-n)")
    if meta is not None and n > n_meta:
        raise InputError(f"-n {n} is more than the {n_meta} particles the metadata lists", cfg.from_metadata)
    return n


def _fit_metadata(meta: dict, n: int, D: int, apix_out: float) -> dict:
    """The first ``n`` particles of ``meta`` at the output box D and pixel size apix_out (A): CTF rows get the new
    D and apix, shifts in px are rescaled so that they stay the same physical shift."""
    meta = {k: (v[:n] if isinstance(v, np.ndarray) else v) for k, v in meta.items()}
    meta["ctf"] = meta["ctf"].copy()
    meta["ctf"][:, 0], meta["ctf"][:, 1] = D, apix_out
    if meta["trans_px"] is not None:
        meta["trans_px"] = meta["trans_px"] * (D / meta["D"])  # same physical shift at the new pixel size
    return meta
