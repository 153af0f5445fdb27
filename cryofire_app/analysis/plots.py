"""PNG plots for a run (matplotlib Agg rendering via bare Figures, no pyplot, no display needed): loss curve, PC
scatter, seed coordinate against z, viewing directions, FSC.

Every function writes its PNG atomically (temp file in the same folder, then rename) and returns the path.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from cryofire_app.io.errors import InputError
from cryofire_app.io.rundir import read_events


def _plt():
    # A bare Figure renders through Agg when saved and never touches pyplot's global backend (which would clash
    # with napari's Qt event loop when called from the plugin).
    from matplotlib.figure import Figure

    return Figure


def _save(fig, path: str | Path) -> Path:
    from cryofire_app.io.atomic import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    return path


def read_loss_log(log_path: str | Path) -> dict[str, np.ndarray]:
    """Training curve from ``log.jsonl``: records carrying ``loss`` with ``images_seen`` (step events), and
    ``val_loss`` (checkpoint events). Returns arrays ``images``, ``loss``, ``val_images``, ``val_loss``.
    Lines that are not JSON (e.g. a half-written last line after a kill) are skipped, and so are the ab initio
    seed's steps (their "loss" is a noise variance over search rounds, not a training loss over images)."""
    path = Path(log_path)
    if not path.is_file():
        raise InputError("training log not found", path)
    img, loss, vimg, vloss = [], [], [], []
    for rec in read_events(path):
        seen = rec.get("images_seen")
        if seen is None or rec.get("phase") == "seed":
            continue
        if rec.get("loss") is not None and np.isfinite(rec["loss"]):
            img.append(seen)
            loss.append(rec["loss"])
        if rec.get("val_loss") is not None and np.isfinite(rec["val_loss"]):
            vimg.append(seen)
            vloss.append(rec["val_loss"])
    return {"images": np.asarray(img, float), "loss": np.asarray(loss, float),
            "val_images": np.asarray(vimg, float), "val_loss": np.asarray(vloss, float)}


def plot_loss(log_path: str | Path, out_png: str | Path) -> Path:
    """Training loss (and validation loss at checkpoints) against images seen."""
    Figure = _plt()
    c = read_loss_log(log_path)
    if len(c["loss"]) == 0 and len(c["val_loss"]) == 0:
        raise InputError("no loss values in the training log", log_path)
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot(111)
    if len(c["loss"]):
        ax.plot(c["images"], c["loss"], lw=0.6, alpha=0.4, color="C0", label="train (per step)")
        w = max(1, len(c["loss"]) // 50)
        if w > 1:
            sm = np.convolve(c["loss"], np.ones(w) / w, mode="valid")
            ax.plot(c["images"][w - 1:], sm, color="C0", lw=1.5, label=f"train (mean of {w})")
    if len(c["val_loss"]):
        ax.plot(c["val_images"], c["val_loss"], "o-", color="C3", label="validation")
    ax.set_xlabel("images seen")
    ax.set_ylabel("loss")
    ax.set_title("Training loss")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, out_png)


def plot_pc_scatter(scores, out_png: str | Path, labels=None, centers=None, explained=None,
                    title: str = "Latent space", values=None, value_label: str = "") -> Path:
    """PC1 vs PC2 of z (a histogram of PC1 when z has one component); colours = cluster labels, or with ``values``
    (N,) a continuous quantity (viridis, colour bar ``value_label``; NaN points grey), crosses = centres (given in PC
    coordinates)."""
    Figure = _plt()
    s = np.asarray(scores, dtype=float)
    fig = Figure(figsize=(5.5, 5))
    ax = fig.add_subplot(111)
    ev = list(explained) if explained is not None else None
    l1 = "PC1" + (f" ({100 * ev[0]:.1f} %)" if ev else "")
    if s.shape[1] == 1:
        if labels is None:
            ax.hist(s[:, 0], bins=60, color="C0")
        else:
            for k in np.unique(labels):
                ax.hist(s[labels == k, 0], bins=60, alpha=0.6, label=f"cluster {k}")
            ax.legend(fontsize=8)
        ax.set_xlabel(l1)
        ax.set_ylabel("particles")
    else:
        kw = dict(s=3, alpha=0.5, linewidths=0)
        if values is not None:
            v = np.asarray(values, dtype=float).reshape(-1)
            nan = ~np.isfinite(v)
            if nan.any():
                ax.scatter(s[nan, 0], s[nan, 1], color="0.7", **kw)
            sc = ax.scatter(s[~nan, 0], s[~nan, 1], c=v[~nan], cmap="viridis", **kw)
            fig.colorbar(sc, ax=ax, shrink=0.8, label=value_label)
        elif labels is None:
            ax.hexbin(s[:, 0], s[:, 1], gridsize=50, mincnt=1, cmap="viridis") if len(s) > 2000 else \
                ax.scatter(s[:, 0], s[:, 1], **kw)
        else:
            ax.scatter(s[:, 0], s[:, 1], c=labels, cmap="tab10", vmin=0, vmax=9, **kw)
        if centers is not None:
            c = np.asarray(centers, dtype=float)
            ax.scatter(c[:, 0], c[:, 1], marker="x", s=60, c="k")
            for i, (x, y) in enumerate(c[:, :2]):
                ax.annotate(str(i), (x, y), xytext=(4, 4), textcoords="offset points", fontsize=9)
        ax.set_xlabel(l1)
        ax.set_ylabel("PC2" + (f" ({100 * ev[1]:.1f} %)" if ev and len(ev) > 1 else ""))
    ax.set_title(title)
    fig.tight_layout()
    return _save(fig, out_png)


def plot_coordinate_vs_pc(pc, coord, out_png: str | Path, labels=None, rho: float | None = None,
                          xlabel: str = "PC1 of z", ylabel: str = "seed coordinate 1",
                          title: str = "Seed coordinate against z") -> Path:
    """Scatter of a per-particle coordinate (y) against a PC of z (x), coloured by ``labels`` when given; the
    Spearman ``rho`` in the title."""
    Figure = _plt()
    x = np.asarray(pc, dtype=float).reshape(-1)
    y = np.asarray(coord, dtype=float).reshape(-1)
    fig = Figure(figsize=(5.5, 4.5))
    ax = fig.add_subplot(111)
    kw = dict(s=3, alpha=0.5, linewidths=0)
    if labels is None or len(np.unique(labels)) < 2:
        ax.scatter(x, y, color="C0", **kw)
    else:
        ax.scatter(x, y, c=labels, cmap="tab10", vmin=0, vmax=9, **kw)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title + (f" (Spearman {rho:+.2f})" if rho is not None and np.isfinite(rho) else ""))
    fig.tight_layout()
    return _save(fig, out_png)


def viewing_directions(rot) -> tuple[np.ndarray, np.ndarray]:
    """Azimuth (-180..180) and elevation (-90..90) in degrees of each viewing direction (row 2 of the rotation)."""
    v = np.asarray(rot, dtype=float)[:, 2]
    v = v / np.linalg.norm(v, axis=1, keepdims=True)
    return np.degrees(np.arctan2(v[:, 1], v[:, 0])), np.degrees(np.arcsin(np.clip(v[:, 2], -1, 1)))


def plot_view_distribution(rot, out_png: str | Path, title: str = "Viewing directions") -> Path:
    """Density of viewing directions on an equal-area (Mollweide) map of the sphere."""
    Figure = _plt()
    az, el = viewing_directions(rot)
    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot(111, projection="mollweide")
    hb = ax.hexbin(np.radians(az), np.radians(el), gridsize=(36, 18), mincnt=1, cmap="viridis",
                   extent=(-np.pi, np.pi, -np.pi / 2, np.pi / 2))
    fig.colorbar(hb, ax=ax, shrink=0.7, label="particles")
    ax.grid(True, alpha=0.3)
    ax.set_title(f"{title} (N = {len(az)})")
    fig.tight_layout()
    return _save(fig, out_png)


def plot_fsc(curves: dict, out_png: str | Path, apix: float | None = None) -> Path:
    """FSC curves ``{name: (freq cyc/px, fsc)}`` with the 0.5 and 0.143 lines."""
    Figure = _plt()
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot(111)
    for name, (f, c) in curves.items():
        f = np.asarray(f)
        ax.plot(f / apix if apix else f, c, label=name)
    for thr in (0.5, 0.143):
        ax.axhline(thr, color="gray", lw=0.8, ls="--")
    ax.set_xlabel("spatial frequency (1/A)" if apix else "spatial frequency (cycles/pixel)")
    ax.set_ylabel("FSC")
    ax.set_ylim(-0.1, 1.05)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, out_png)
