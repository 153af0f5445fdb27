"""Analyze a trained run: PCA and k-means of z, volumes at the cluster centres and along principal components, plots.

Writes into DIR (default OUTDIR/analyze):
  kmeans<K>/vol_<i>.mrc     volumes at the K cluster centres (cluster 0 is the largest), labels.npy, centers.txt
  pc<j>/vol_<i>.mrc         volumes at --n evenly spaced points along PC j (5th to 95th percentile of the particles)
  loss.png, pc_scatter.png, views.png   training curve, PC1/PC2 of z coloured by cluster, viewing directions
  particles.star            RELION 3.1: the original images with the predicted poses, CTF and cluster (rlnClassNumber)
  seed_states/              seeded runs (the run has seed_states.npz: the ab initio seed's state labels of the training
                            particles): vol_<i>.mrc at each state's mean z, labels.npy (per particle, -1 = held out,
                            not classified), centers.txt, and per state the selection state_<i>.star / .ind.pkl /
                            _index.csv (or .cs), as for any exported selection; pc_scatter_seed_states.png
  summary.json              what was written, PCA explained variance, cluster sizes, seed state sizes and which split
                            ("state_source": seed_states or kmeans) is the run's two-state answer
Volumes are real-space MRC maps at the training box with its voxel size (Angstrom). A seeded run's seed states are
its state split (on issue 5's benchmark they separate states better than z); z (PCA, k-means, PC walks) still carries
the continuous heterogeneity.

example:  cryofire analyze run1 -k 5
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

from cryofire_app.io.errors import InputError

log = logging.getLogger(__name__)


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("outdir", help="run folder written by `cryofire train`")
    p.add_argument("-k", "--k", type=int, default=5, help="number of k-means clusters of z (default 5)")
    p.add_argument("-o", "--out", default=None, help="output folder (default OUTDIR/analyze)")
    p.add_argument("--pcs", default="1,2", help="principal components to walk along, 1-based, comma separated "
                                                 "(default 1,2; empty for none)")
    p.add_argument("--n", type=int, default=10, help="volumes per principal component (default 10)")
    p.add_argument("--on-data", action="store_true",
                   help="decode each cluster at the particle nearest its centre instead of at the mean z")
    p.add_argument("--no-volumes", action="store_true", help="skip volume decoding (plots and tables only)")
    p.add_argument("--no-star", action="store_true", help="do not write particles.star")
    p.add_argument("--seed", type=int, default=0, help="k-means random seed (default 0)")
    p.add_argument("--flip-hand", action="store_true",
                   help="write the mirror images of the maps and the matching poses in particles.star (the hand of "
                        "an ab initio run is not determined by the data; see `cryofire volume --flip-hand`)")


def _write_volumes(run, zs: np.ndarray, folder: Path, apix: float, flip_hand: bool = False) -> list[str]:
    from cryofire_app.analysis.hand import mirror_volume
    from cryofire_app.io import write_mrc

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, z in enumerate(zs):
        vol = run.decode(z[None] if z.size else None)[0]
        p = folder / f"vol_{i:03d}.mrc"
        write_mrc(p, mirror_volume(vol) if flip_hand else vol, apix=apix)
        paths.append(str(p))
    return paths


def _group_outputs(run, z: np.ndarray, labels: np.ndarray, folder: Path, centers: np.ndarray,
                   center_index: np.ndarray, on_data: bool, volumes: bool, flip_hand: bool, apix: float,
                   what: str) -> tuple[np.ndarray, list[str] | None]:
    """labels.npy, centers.txt and (with `volumes`) vol_<i>.mrc of groups of particles (k-means clusters or seed
    states) in `folder`; the centres are the groups' mean z, or with `on_data` the particles nearest them.
    Returns the centres used and the volume paths (None without volumes)."""
    from cryofire_app.analysis.selection import atomic_write

    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(folder / "labels.npy", lambda fh: np.save(fh, labels))
    c = z[center_index] if on_data else centers
    head = f"z at the {what} " + ("particles nearest the centres" if on_data else "centres (means)")
    atomic_write(folder / "centers.txt", lambda fh: np.savetxt(fh, c, fmt="%.6f", header=head))
    return c, (_write_volumes(run, c, folder, apix, flip_hand) if volumes else None)


def _reopen_particles(run):
    """The run's particle metadata (for STAR/.cs selections), or None with a warning when it cannot be reopened."""
    from cryofire_app.analysis.selection import particles_for_run

    try:
        return particles_for_run(run)
    except InputError as exc:
        log.warning("no STAR files (the particle metadata could not be reopened; index lists only): %s", exc)
        return None


def analyze(outdir: str | Path, k: int = 5, out: str | Path | None = None, pcs: list[int] | None = (1, 2),
            n: int = 10, on_data: bool = False, volumes: bool = True, star: bool = True, seed: int = 0,
            run=None, flip_hand: bool = False) -> dict:
    """The work of `cryofire analyze`; returns the summary (also written to DIR/summary.json).

    A run with seed_states.npz (seeded schedule) also gets its seed states analysed (seed_states/) and
    ``summary["state_source"] = "seed_states"``; otherwise the state split is k-means of z (``"kmeans"``; None for
    zdim 0). InputError when seed_states.npz is malformed."""
    from cryofire_app.analysis import latent, plots
    from cryofire_app.analysis.evaluate import write_json
    from cryofire_app.analysis.hand import mirror_rotations
    from cryofire_app.analysis.run import Run
    from cryofire_app.analysis.selection import export_selection, rows_to_index

    run = run if run is not None else Run(outdir)
    try:
        z = np.asarray(run.z, np.float32)
    except FileNotFoundError as exc:
        raise InputError(f"no latents yet: the run has not finished its final eval pass ({exc})", outdir) from None
    seeds = run.seed_states   # before any output: a malformed file stops here
    out = Path(out) if out else Path(outdir) / "analyze"
    out.mkdir(parents=True, exist_ok=True)
    apix = float(run.apix)
    summary: dict = {"run": str(outdir), "n_particles": int(len(z)), "zdim": int(z.shape[1]), "D": int(run.D),
                     "apix": apix, "files": {}}
    files = summary["files"]
    try:
        files["loss_plot"] = str(plots.plot_loss(Path(outdir) / "log.jsonl", out / "loss.png"))
    except InputError as exc:
        log.warning("no loss plot: %s", exc)
    files["views_plot"] = str(plots.plot_view_distribution(run.rot, out / "views.png"))
    labels = None
    lp = None
    if z.shape[1] == 0:
        if volumes:
            files["volume"] = _write_volumes(run, np.zeros((1, 0), np.float32), out, apix, flip_hand)
    else:
        n_distinct = len(np.unique(z, axis=0))
        if n_distinct < k:
            log.warning("z holds only %d distinct point(s) (a run stopped in its pose-only phase?): k-means with k=%d",
                        n_distinct, max(1, n_distinct))
        k = max(1, min(int(k), len(z), n_distinct))
        lp = latent.fit_pca(z)
        km = latent.kmeans(z, k, seed=seed)
        labels = km.labels
        summary["pca_explained_variance_ratio"] = lp.explained_variance_ratio.tolist()
        summary["kmeans"] = {"k": k, "sizes": km.sizes.tolist(), "center_index": km.center_index.tolist(),
                             "center_particle": np.asarray(run.index)[km.center_index].tolist()}
        centers, vols = _group_outputs(run, z, labels, out / f"kmeans{k}", km.centers, km.center_index, on_data,
                                       volumes, flip_hand, apix, "cluster")
        files["pc_scatter"] = str(plots.plot_pc_scatter(
            lp.scores, out / "pc_scatter.png", labels=labels, centers=lp.pca.transform(centers),
            explained=lp.explained_variance_ratio, title=f"z: PCA, k-means k={k}"))
        if vols is not None:
            files["kmeans_volumes"] = vols
        for pc in pcs or []:
            if pc > lp.n_components:
                log.warning("PC%d skipped: z has %d principal components", pc, lp.n_components)
                continue
            t, zs = lp.points_along(pc, n=n)
            pdir = out / f"pc{pc}"
            pdir.mkdir(parents=True, exist_ok=True)
            np.savetxt(pdir / "z_values.txt", zs, fmt="%.6f", header=f"PC{pc} coordinates: " +
                       " ".join(f"{v:.4f}" for v in t))
            if volumes:
                files[f"pc{pc}_volumes"] = _write_volumes(run, zs, pdir, apix, flip_hand)
    particles = _reopen_particles(run) if star else None
    rot = mirror_rotations(run.rot) if flip_hand else np.asarray(run.rot)
    if seeds is not None:
        summary["seed_states"] = _seed_state_outputs(run, z, seeds, out / "seed_states", lp, on_data, volumes,
                                                     flip_hand, apix, rot, particles)
        files.update(summary["seed_states"].pop("files"))
    summary["state_source"] = "seed_states" if seeds is not None else ("kmeans" if "kmeans" in summary else None)
    if particles is not None:
        try:
            written = export_selection(out / "particles", rows_to_index(run, np.arange(len(z))), rot=rot,
                                       trans=run.trans, particles=particles, run=run, labels=labels)
            files["particles_star"] = [str(p) for p in written]
        except InputError as exc:
            log.warning("particles.star not written: %s", exc)
    write_json(out / "summary.json", summary)
    return summary


def _seed_state_outputs(run, z: np.ndarray, seeds, folder: Path, lp, on_data: bool, volumes: bool, flip_hand: bool,
                        apix: float, rot: np.ndarray, particles) -> dict:
    """seed_states/: the seed's states as groups (labels.npy over every run row, -1 = not classified; centres and
    volumes at each state's mean z) and one particle selection per state (poses in the chosen hand)."""
    from cryofire_app.analysis import latent, plots
    from cryofire_app.analysis.selection import export_selection, rows_to_index

    K = seeds.n_states
    per_row = seeds.labels_for_rows(len(z))
    files: dict = {}
    info = {"file": str(seeds.path), "n_states": K, "sizes": seeds.counts().tolist(),
            "n_classified": int(len(seeds.rows)), "n_not_classified": int(len(z) - len(seeds.rows)),
            "note": "the ab initio seed's two-state labels (seed_states.npz) of the training particles; held-out "
                    "particles are not classified (label -1)"}
    if z.shape[1]:
        centers, center_index = latent.group_centers(z, per_row, K)
        c, vols = _group_outputs(run, z, per_row, folder, centers, center_index, on_data, volumes, flip_hand,
                                 apix, "seed state")
        info["center_index"] = center_index.tolist()
        info["center_particle"] = np.asarray(run.index)[center_index].tolist()
        if vols is not None:
            files["seed_state_volumes"] = vols
        has = per_row >= 0
        files["pc_scatter_seed_states"] = str(plots.plot_pc_scatter(
            lp.scores[has], folder.parent / "pc_scatter_seed_states.png", labels=per_row[has],
            centers=lp.pca.transform(c), explained=lp.explained_variance_ratio, title="z: PCA, seed states"))
    else:
        from cryofire_app.analysis.selection import atomic_write

        folder.mkdir(parents=True, exist_ok=True)
        atomic_write(folder / "labels.npy", lambda fh: np.save(fh, per_row))
    trans = np.asarray(run.trans)
    sel = []
    for j in range(K):
        r = seeds.rows_of(j)
        # without the particle metadata (--no-star, or it could not be reopened): the index lists only
        sel += [str(p) for p in export_selection(folder / f"state_{j}", rows_to_index(run, r), rot=rot[r],
                                                 trans=trans[r], particles=particles,
                                                 run=run if particles is not None else None,
                                                 labels=np.full(len(r), j, np.int64))]
    files["seed_state_selections"] = sel
    info["files"] = files
    return info


def main(args: argparse.Namespace) -> int:
    try:
        pcs = [int(v) for v in args.pcs.split(",") if v.strip()] if args.pcs else []
    except ValueError:
        raise InputError(f"--pcs must be comma-separated integers, got {args.pcs!r}") from None
    if any(p < 1 for p in pcs):
        raise InputError("--pcs are 1-based (PC1 is the first)")
    if args.k < 1 or args.n < 1:
        raise InputError(f"-k and --n must be at least 1, got -k {args.k} --n {args.n}")
    if args.out is not None and Path(args.out).exists() and not Path(args.out).is_dir():
        raise InputError("-o/--out: exists and is not a folder", args.out)
    s = analyze(args.outdir, k=args.k, out=args.out, pcs=pcs, n=args.n, on_data=args.on_data,
                volumes=not args.no_volumes, star=not args.no_star, seed=args.seed, flip_hand=args.flip_hand)
    out = Path(args.out) if args.out else Path(args.outdir) / "analyze"
    print(f"analyzed {s['n_particles']} particles (zdim {s['zdim']}, box {s['D']}, {s['apix']:.3f} A/px) -> {out}")
    if "seed_states" in s:
        ss = s["seed_states"]
        print(f"  states: from the ab initio seed's labels ({Path(ss['file']).name}): sizes {ss['sizes']}"
              + (f", {ss['n_not_classified']} held-out particles not classified" if ss["n_not_classified"] else ""))
    if "kmeans" in s:
        print(f"  k-means cluster sizes of z: {s['kmeans']['sizes']}"
              + ("" if "seed_states" in s else " (the state split: the run has no seed states)"))
        ev = s["pca_explained_variance_ratio"]
        print("  PCA explained variance: " + ", ".join(f"PC{i + 1} {100 * v:.1f}%" for i, v in enumerate(ev[:4])))
    for key, val in s["files"].items():
        print(f"  {key}: {val if isinstance(val, str) else (str(Path(val[0]).parent) + f'/ ({len(val)} files)')}")
    return 0
