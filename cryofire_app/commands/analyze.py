"""Analyze a trained run: the landscape of z (PCA, k-means with k chosen from the data or given, volumes at the
cluster centres and along principal components), the ab initio seed's states or continuous coordinate, plots.

Writes into DIR (default OUTDIR/analyze):
  kmeans<K>/vol_<i>.mrc     volumes at the K cluster centres (cluster 0 is the largest), labels.npy, centers.txt;
                            only for K >= 2 (K = 1: no discrete clusters, no kmeans folder)
  pc<j>/vol_<i>.mrc         volumes at --n evenly spaced points along PC j (5th to 95th percentile of the particles),
                            z_values.txt: the motion along z's principal components (always written)
  loss.png, pc_scatter.png, views.png   training curve, PC1/PC2 of z coloured by cluster, viewing directions
  particles.star            RELION 3.1: the original images with the predicted poses, CTF and cluster (rlnClassNumber)
  seed_states/              seeded runs (the run has seed_states.npz: the ab initio seed's heterogeneity of the
                            particles it searched): labels.npy (per particle: the seed's state, for the others
                            the state at their final pose; -1 = not classified, runs without it); with
                            K >= 2 discrete states: vol_<i>.mrc at each state's mean z, centers.txt, per state the
                            selection state_<i>.star / .ind.pkl / _index.csv (or .cs), pc_scatter_seed_states.png;
                            with the seed's continuous coordinates (coords): coords.npy (per particle, NaN = held
                            out), seed_coords.csv (coordinates beside z's PCs), seed_coord_vs_pc1.png,
                            pc_scatter_seed_coord.png, and when the seed found no discrete states (K = 1)
                            coord1/vol_<i>.mrc at the mean z of --n equal-count bins of seed coordinate 1
  summary.json              what was written, PCA explained variance, k and why ("k_choice"), cluster sizes, seed
                            state sizes / kind / Spearman of the seed coordinate against z's PCs, and which split
                            ("state_source": seed_states, kmeans, or null for no discrete states) is the run's
                            state answer
Volumes are real-space MRC maps at the training box with its voxel size (Angstrom). A seeded run's seed states are
its state split when it found K >= 2 (they separate states better than z: decision 011); z (PCA, k-means,
PC walks) still carries the continuous heterogeneity.

-k auto (the default) chooses the number of clusters from z (analysis.latent.choose_k): Gaussian mixtures of 1..8
components on z's leading 4 principal components, the number by the lowest BIC, then components joined unless a
density valley below 35 % of the lower peak separates them (a continuum such as a hinge motion has none: k = 1);
states holding under 3 % of the particles are not counted. -k N uses N clusters.

examples:  cryofire analyze run1              (k chosen from the data)
           cryofire analyze run1 -k 5
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path

import numpy as np

from cryofire_app.io.errors import InputError
from cryofire_app.io.rundir import RunDir

log = logging.getLogger(__name__)


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("outdir", help="run folder written by `cryofire train`")
    p.add_argument("-k", "--k", default="auto",
                   help="number of k-means clusters of z, or 'auto' (default): chosen from the data (Gaussian-mixture "
                        "BIC on z's leading PCs, components joined unless a density valley separates them; 1 = no "
                        "discrete clusters, e.g. a continuous motion: no k-means volumes)")
    p.add_argument("-o", "--out", default=None, help="output folder (default OUTDIR/analyze)")
    p.add_argument("--pcs", default="1,2", help="principal components to walk along, 1-based, comma separated "
                                                 "(default 1,2; empty for none)")
    p.add_argument("--n", type=int, default=10, help="volumes per principal component (default 10)")
    p.add_argument("--on-data", action="store_true",
                   help="decode each cluster at the particle nearest its centre instead of at the mean z")
    p.add_argument("--no-volumes", action="store_true", help="skip volume decoding (plots and tables only)")
    p.add_argument("--no-star", action="store_true", help="do not write particles.star")
    p.add_argument("--seed", type=int, default=0, help="k-means and -k auto random seed (default 0)")
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
    from cryofire_app.io.atomic import atomic_write

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


def _k_choice(z: np.ndarray, k, seed: int) -> dict:
    """summary["k_choice"]: the number of k-means clusters, given (int) or chosen from z ("auto")."""
    from cryofire_app.analysis import latent

    n_distinct = len(np.unique(z, axis=0))
    if k == "auto":
        ch = latent.choose_k(z, seed=seed)
        return dict(ch.to_dict(), requested="auto")
    k = int(k)
    if n_distinct < k:
        log.warning("z holds only %d distinct point(s) (a run stopped in its pose-only phase?): k-means with k=%d",
                    n_distinct, max(1, n_distinct))
    used = max(1, min(k, len(z), n_distinct))
    reason = f"given with -k {k}" + ("" if used == k else f", reduced to {used}: z holds {n_distinct} distinct "
                                                             f"point(s) among {len(z)} particles")
    return {"k": used, "requested": k, "reason": reason}


def analyze(outdir: str | Path, k: int | str = "auto", out: str | Path | None = None,
            pcs: list[int] | None = (1, 2), n: int = 10, on_data: bool = False, volumes: bool = True,
            star: bool = True, seed: int = 0, run=None, flip_hand: bool = False) -> dict:
    """The work of `cryofire analyze`; returns the summary (also written to DIR/summary.json).

    ``k``: the number of k-means clusters of z, or "auto" (analysis.latent.choose_k); ``summary["k_choice"]`` says
    which k and why. k = 1 means no discrete clusters: no k-means folder and no ``summary["kmeans"]``; PCA and the PC
    walks are written for every k. A run with seed_states.npz (seeded schedule) also gets the seed's heterogeneity
    analysed (seed_states/: per-state outputs for K >= 2, the continuous coordinate for any K when the file has it).
    ``summary["state_source"]``: "seed_states" when the seed found K >= 2 states, else "kmeans" when k >= 2, else
    None (no discrete states). InputError when seed_states.npz is malformed."""
    from cryofire_app.analysis import plots
    from cryofire_app.analysis.evaluate import write_json
    from cryofire_app.analysis.hand import mirror_rotations
    from cryofire_app.analysis.run import Run

    if k != "auto" and (isinstance(k, bool) or int(k) < 1):
        raise InputError(f"k must be 'auto' or at least 1, got {k!r}")
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
        files["loss_plot"] = str(plots.plot_loss(RunDir(outdir).log, out / "loss.png"))
    except InputError as exc:
        log.warning("no loss plot: %s", exc)
    files["views_plot"] = str(plots.plot_view_distribution(run.rot, out / "views.png"))
    vol_opts = _VolumeOptions(on_data, volumes, flip_hand, apix)
    labels, lp = None, None
    if z.shape[1] == 0:
        if volumes:
            files["volume"] = _write_volumes(run, np.zeros((1, 0), np.float32), out, apix, flip_hand)
    else:
        labels, lp = _latent_outputs(run, z, k, seed, out, pcs, n, vol_opts, summary)
    particles = _reopen_particles(run) if star else None
    rot = mirror_rotations(run.rot) if flip_hand else np.asarray(run.rot)
    if seeds is not None:
        from cryofire_app.commands._analyze_seed import seed_state_outputs

        summary["seed_states"] = seed_state_outputs(run, z, seeds, out / "seed_states", lp, on_data, volumes,
                                                    flip_hand, apix, rot, particles, n)
        files.update(summary["seed_states"].pop("files"))
    summary["state_source"] = ("seed_states" if seeds is not None and seeds.n_states >= 2 else
                               "kmeans" if "kmeans" in summary else None)
    if particles is not None:
        _particles_star(run, out, len(z), rot, particles, labels, files)
    write_json(out / "summary.json", summary)
    return summary


def _particles_star(run, out: Path, n_rows: int, rot: np.ndarray, particles, labels: np.ndarray | None,
                    files: dict) -> None:
    """particles.star (and .cs or the index list): every run row with its poses `rot` and k-means cluster; a
    failure is a warning, not an error."""
    from cryofire_app.analysis.selection import export_selection, rows_to_index

    try:
        written = export_selection(out / "particles", rows_to_index(run, np.arange(n_rows)), rot=rot,
                                   trans=run.trans, particles=particles, run=run, labels=labels)
        files["particles_star"] = [str(p) for p in written]
    except InputError as exc:
        log.warning("particles.star not written: %s", exc)


@dataclasses.dataclass(frozen=True)
class _VolumeOptions:
    """How analyze decodes maps: at the particle nearest each centre (on_data) or the mean z, at all (volumes),
    mirrored (flip_hand), with voxel size apix (Angstrom)."""
    on_data: bool
    volumes: bool
    flip_hand: bool
    apix: float


def _latent_outputs(run, z: np.ndarray, k, seed: int, out: Path, pcs, n: int, vo: _VolumeOptions,
                    summary: dict) -> tuple[np.ndarray | None, object]:
    """z's landscape (zdim >= 1): PCA, the k choice, k-means (k >= 2: kmeans<K>/), pc_scatter.png and the PC walks.
    Returns (the k-means labels, None for k = 1; the fitted PCA)."""
    from cryofire_app.analysis import latent, plots

    files = summary["files"]
    lp = latent.fit_pca(z)
    summary["pca_explained_variance_ratio"] = lp.explained_variance_ratio.tolist()
    choice = summary["k_choice"] = _k_choice(z, k, seed)
    k = int(choice["k"])
    labels = centers_pc = None
    if k >= 2:
        km = latent.kmeans(z, k, seed=seed)
        labels = km.labels
        summary["kmeans"] = {"k": k, "sizes": km.sizes.tolist(), "center_index": km.center_index.tolist(),
                             "center_particle": np.asarray(run.index)[km.center_index].tolist()}
        centers, vols = _group_outputs(run, z, labels, out / f"kmeans{k}", km.centers, km.center_index,
                                       vo.on_data, vo.volumes, vo.flip_hand, vo.apix, "cluster")
        centers_pc = lp.pca.transform(centers)
        if vols is not None:
            files["kmeans_volumes"] = vols
    title = f"z: PCA, k-means k={k}" + (" (chosen)" if choice["requested"] == "auto" else "") if k >= 2 else \
        "z: PCA (k = 1: no discrete clusters)"
    files["pc_scatter"] = str(plots.plot_pc_scatter(
        lp.scores, out / "pc_scatter.png", labels=labels, centers=centers_pc,
        explained=lp.explained_variance_ratio, title=title))
    _pc_walks(run, lp, pcs, n, out, vo, files)
    return labels, lp


def _pc_walks(run, lp, pcs, n: int, out: Path, vo: _VolumeOptions, files: dict) -> None:
    """pc<j>/: z_values.txt and (with volumes) the maps at n points along each PC j (1-based) of `pcs`."""
    for pc in pcs or []:
        if pc > lp.n_components:
            log.warning("PC%d skipped: z has %d principal components", pc, lp.n_components)
            continue
        t, zs = lp.points_along(pc, n=n)
        pdir = out / f"pc{pc}"
        pdir.mkdir(parents=True, exist_ok=True)
        np.savetxt(pdir / "z_values.txt", zs, fmt="%.6f", header=f"PC{pc} coordinates: " +
                   " ".join(f"{v:.4f}" for v in t))
        if vo.volumes:
            files[f"pc{pc}_volumes"] = _write_volumes(run, zs, pdir, vo.apix, vo.flip_hand)


def _parse_k(value) -> int | str:
    text = str(value).strip().lower()
    if text == "auto":
        return "auto"
    try:
        k = int(text)
    except ValueError:
        raise InputError(f"-k must be 'auto' or a number of clusters, got {value!r}") from None
    return k


def main(args: argparse.Namespace) -> int:
    try:
        pcs = [int(v) for v in args.pcs.split(",") if v.strip()] if args.pcs else []
    except ValueError:
        raise InputError(f"--pcs must be comma-separated integers, got {args.pcs!r}") from None
    if any(p < 1 for p in pcs):
        raise InputError("--pcs are 1-based (PC1 is the first)")
    k = _parse_k(args.k)
    if (k != "auto" and k < 1) or args.n < 1:
        raise InputError(f"-k and --n must be at least 1, got -k {args.k} --n {args.n}")
    if args.out is not None and Path(args.out).exists() and not Path(args.out).is_dir():
        raise InputError("-o/--out: exists and is not a folder", args.out)
    s = analyze(args.outdir, k=k, out=args.out, pcs=pcs, n=args.n, on_data=args.on_data,
                volumes=not args.no_volumes, star=not args.no_star, seed=args.seed, flip_hand=args.flip_hand)
    out = Path(args.out) if args.out else Path(args.outdir) / "analyze"
    print(f"analyzed {s['n_particles']} particles (zdim {s['zdim']}, box {s['D']}, {s['apix']:.3f} A/px) -> {out}")
    if "seed_states" in s:
        ss = s["seed_states"]
        held = f", {ss['n_not_classified']} particles not classified" if ss["n_not_classified"] else ""
        if ss["n_states"] >= 2:
            print(f"  states: from the ab initio seed's labels ({Path(ss['file']).name}): sizes {ss['sizes']}" + held)
        else:
            print(f"  states: the ab initio seed found no discrete states ({ss['kind']}, "
                  f"{ss['n_coordinates']} continuous coordinate(s), {Path(ss['file']).name})" + held)
        rho = ss.get("coordinates", {}).get("spearman_coord1_pc1")
        if rho is not None:
            print(f"  seed coordinate 1 against PC1 of z: Spearman {rho:+.3f}")
    if "k_choice" in s:
        kc = s["k_choice"]
        print(f"  k = {kc['k']}" + (" chosen from z" if kc["requested"] == "auto" else "") + f": {kc['reason']}")
    if "kmeans" in s:
        print(f"  k-means cluster sizes of z: {s['kmeans']['sizes']}"
              + ("" if s["state_source"] == "seed_states" else
                 " (the state split: the run has no seed states)" if "seed_states" not in s else
                 " (the state split: the seed found no discrete states)"))
    elif "k_choice" in s:
        print("  no k-means clusters (k = 1): the landscape is the PCA and the PC walks")
    if "pca_explained_variance_ratio" in s:
        ev = s["pca_explained_variance_ratio"]
        print("  PCA explained variance: " + ", ".join(f"PC{i + 1} {100 * v:.1f}%" for i, v in enumerate(ev[:4])))
    for key, val in s["files"].items():
        print(f"  {key}: {val if isinstance(val, str) else (str(Path(val[0]).parent) + f'/ ({len(val)} files)')}")
    return 0
