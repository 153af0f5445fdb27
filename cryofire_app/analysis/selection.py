"""Export a particle subset for other programs: RELION 3.1 .star, cryoSPARC (.cs subset or index list), cryoDRGN
ind.pkl.

Particles are named by ``index``: the row in the user's original metadata/stack (0-based), which every run carries
(``Run.index`` maps a run's rows to it). The STAR points at the original images (absolute paths), with the original
CTF and either the run's predicted poses (given as ``rot``/``trans``, translations in pixels of the run's training box,
converted here to the original box) or the original metadata's poses.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from cryofire_app.io.atomic import atomic_write
from cryofire_app.io.errors import InputError
from cryofire_app.io.rundir import RunDir


def rows_to_index(run, rows) -> np.ndarray:
    """Original particle indices of rows (int array or bool mask) of a run's per-particle arrays."""
    rows = np.asarray(rows)
    idx = np.asarray(run.index, np.int64)
    if rows.dtype == bool:
        if len(rows) != len(idx):
            raise ValueError(f"selection mask has {len(rows)} entries, the run has {len(idx)} particles")
        return idx[rows]
    return idx[rows.astype(np.int64)]


def particles_for_run(run):
    """Re-open the particles a run was trained on (its config's particles / datadir / ctf), all rows of the file."""
    from cryofire_app.io.particles import load_particles

    cfg = run.config
    if not cfg.particles:
        raise InputError("the run's config.json names no particle file", RunDir(run.outdir).config)

    def find(p):  # a relative path was relative to where `cryofire train` ran: try there, then beside the run
        if p is None or Path(p).is_absolute() or Path(p).exists():
            return p
        alt = Path(run.outdir).resolve().parent / p
        return str(alt) if alt.exists() else p

    return load_particles(find(cfg.particles), datadir=find(cfg.datadir), ctf=find(cfg.ctf), require_even=False,
                          check_finite=False)


def _positions(particles, index: np.ndarray) -> np.ndarray:
    """Positions in ``particles`` of the original indices ``index`` (InputError if some are not there)."""
    pidx = np.asarray(particles.index, np.int64)
    order = np.argsort(pidx, kind="stable")
    loc = np.searchsorted(pidx[order], index)
    loc = np.clip(loc, 0, len(pidx) - 1)
    found = pidx[order][loc] == index
    if not np.all(found):
        missing = index[~found]
        raise InputError(f"{len(missing)} selected particle index(es) (e.g. {int(missing[0])}) are not in the particle "
                         f"file ({len(pidx)} particles)", particles.source)
    return order[loc]


def export_selection(prefix: str | Path, index, rot: np.ndarray | None = None, trans: np.ndarray | None = None,
                     run=None, particles=None, labels: np.ndarray | None = None) -> list[Path]:
    """Write the particles with original indices ``index`` (M,) as:

    - ``<prefix>.ind.pkl``: cryoDRGN index pickle (original 0-based indices, in the given order);
    - ``<prefix>.star``: RELION 3.1 particles (original images, CTF; ``rot``/``trans`` (M, ...) predicted poses when
      given, else the metadata's poses; ``labels`` (M,) as rlnClassNumber = label + 1);
    - ``<prefix>.cs`` when the particles came from a cryoSPARC .cs (the same rows, every field kept), else
      ``<prefix>_index.csv`` (``index[,uid]``, one particle per line).

    The STAR/.cs need the particle metadata: ``particles`` (a ParticleSet) or ``run`` (re-opened from its config).
    Without either only the index files are written. ``trans`` are pixels of the run's training box (``run.D``).
    Returns the written paths.
    """
    prefix = Path(prefix)
    if prefix.suffix in (".star", ".pkl", ".cs", ".csv"):
        prefix = prefix.with_suffix("")
    prefix.parent.mkdir(parents=True, exist_ok=True)
    index = np.asarray(index, np.int64).reshape(-1)
    if len(index) == 0:
        raise ValueError("empty selection")
    m = len(index)
    for name, arr, shape in (("rot", rot, (m, 3, 3)), ("trans", trans, (m, 2)), ("labels", labels, (m,))):
        if arr is not None and np.shape(arr) != shape:
            raise ValueError(f"{name} must have shape {shape}, got {np.shape(arr)}")
    from cryofire_app.io import write_ind_pkl

    out: list[Path] = []
    ind_path = Path(f"{prefix}.ind.pkl")
    write_ind_pkl(ind_path, index)
    out.append(ind_path)
    if particles is None and run is not None:
        particles = particles_for_run(run)
    uid = None
    if particles is not None:
        pos = _positions(particles, index)
        out.append(_write_star(Path(f"{prefix}.star"), particles, pos, rot, trans, run, labels))
        uid = None if particles.uid is None else np.asarray(particles.uid)[pos]
        src = Path(particles.source)
        if src.suffix.lower() == ".cs":
            out.append(_write_cs_subset(Path(f"{prefix}.cs"), src, index))
            return out
    csv_path = Path(f"{prefix}_index.csv")
    lines = ["index,uid"] + [f"{i},{u}" for i, u in zip(index, uid)] if uid is not None else \
        ["index"] + [str(i) for i in index]
    out.append(atomic_write(csv_path, lambda fh: fh.write(("\n".join(lines) + "\n").encode())))
    return out


def _write_star(star_path: Path, ps, pos: np.ndarray, rot: np.ndarray | None, trans: np.ndarray | None, run,
                labels: np.ndarray | None) -> Path:
    """RELION STAR of the particles at positions ``pos`` of ``ps``: original images (absolute paths), box and CTF;
    the given poses (``trans`` in px of the run's box, rescaled to the original pixel size) or the metadata's.
    The original pixel size is the particles', else the run's at the original box, else 1 A."""
    from cryofire_app.io import write_particles_star

    D0 = int(ps.D)
    apix0 = ps.apix
    if apix0 is None and run is not None:
        apix0 = float(run.apix) * int(run.D) / D0
    apix0 = float(apix0) if apix0 else 1.0
    files = [str(Path(f).resolve()) for f in ps.images.files]
    names = [f"{int(ps.images.frames[p]) + 1}@{files[int(ps.images.file_index[p])]}" for p in pos]
    ctf = None if ps.ctf is None else np.asarray(ps.ctf)[pos]
    if rot is not None:
        r = np.asarray(rot, np.float64)
        t = None
        if trans is not None:
            apix_run = float(run.apix) if run is not None else apix0
            t = np.asarray(trans, np.float64) * apix_run / apix0  # same shift in Angstrom, original pixels
    else:
        r = None if ps.rots is None else np.asarray(ps.rots)[pos]
        t = None if ps.trans_px is None else np.asarray(ps.trans_px)[pos]
    extra = {} if labels is None else {"rlnClassNumber": np.asarray(labels, np.int64) + 1}
    write_particles_star(star_path, names, ctf, r, t, apix0, D0, extra_columns=extra)
    return star_path


def _write_cs_subset(cs_path: Path, src: Path, index: np.ndarray) -> Path:
    """The rows ``index`` of the cryoSPARC .cs ``src``, every field kept."""
    from cryofire_app.io.cs import read_cs

    arr = read_cs(src)
    if index.max() >= len(arr):
        raise InputError(f"selected index {int(index.max())} is beyond the {len(arr)} rows", src)
    sub = arr[index]
    return atomic_write(cs_path, lambda fh: np.save(fh, sub, allow_pickle=False))
