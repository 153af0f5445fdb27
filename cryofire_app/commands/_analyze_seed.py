"""`cryofire analyze`'s outputs for the ab initio seed's heterogeneity (a seeded run's seed_states.npz): the states
as groups and the continuous coordinates, in DIR/seed_states/."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from cryofire_app.commands.analyze import _group_outputs, _write_volumes


def seed_state_outputs(run, z: np.ndarray, seeds, folder: Path, lp, on_data: bool, volumes: bool, flip_hand: bool,
                       apix: float, rot: np.ndarray, particles, n: int = 10) -> dict:
    """seed_states/: the seed's states as groups (labels.npy over every run row, -1 = not classified; for K >= 2
    centres and volumes at each state's mean z and one particle selection per state, poses in the chosen hand) and,
    when the file has them, the seed's continuous coordinates (:func:`_seed_coordinate_outputs`)."""
    from cryofire_app.analysis import latent, plots
    from cryofire_app.analysis.selection import export_selection, rows_to_index
    from cryofire_app.io.atomic import atomic_write

    K = seeds.n_states
    per_row = seeds.labels_for_rows(len(z))
    files: dict = {}
    info = {"file": str(seeds.path), "kind": seeds.kind, "n_states": K, "sizes": seeds.counts().tolist(),
            "n_coordinates": seeds.q, "n_classified": seeds.n_labelled, "n_classified_by_seed": int(len(seeds.rows)),
            "n_not_classified": int(len(z) - seeds.n_labelled),
            "note": (f"the ab initio seed's {K}-state labels (seed_states.npz) of the particles it searched"
                     if K >= 2 else "the ab initio seed found no discrete states among the particles it searched "
                                    f"(kind {seeds.kind}, seed_states.npz)")
                    + ("; every other particle in the state of the seed's mixture at its final pose (latents.npz)"
                       if seeds.others is not None else "; the other particles are not classified (label -1)")}
    folder.mkdir(parents=True, exist_ok=True)
    if z.shape[1] and K >= 2:
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
            centers=lp.pca.transform(c), explained=lp.explained_variance_ratio,
            title=f"z: PCA, {K} seed states"))
    else:
        atomic_write(folder / "labels.npy", lambda fh: np.save(fh, per_row))
    if K >= 2:
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
    if seeds.coords is not None:
        info["coordinates"] = _seed_coordinate_outputs(run, z, seeds, per_row, folder, lp, volumes, flip_hand,
                                                       apix, n, files)
    info["files"] = files
    return info


def _seed_coordinate_outputs(run, z: np.ndarray, seeds, per_row: np.ndarray, folder: Path, lp, volumes: bool,
                             flip_hand: bool, apix: float, n: int, files: dict) -> dict:
    """The seed's continuous coordinates: coords.npy (N, q) per run row (NaN = held out), seed_coords.csv (each
    classified particle's coordinates beside z's leading PCs), the Spearman correlation of every coordinate with
    z's leading PCs, the plots seed_coord_vs_pc1.png / pc_scatter_seed_coord.png and, when the seed found no
    discrete states (K = 1), volumes at the mean z of ``n`` equal-count bins of coordinate 1 (coord1/)."""
    from cryofire_app.io.atomic import atomic_write

    q = seeds.q
    coords = seeds.coords_for_rows(len(z))
    atomic_write(folder / "coords.npy", lambda fh: np.save(fh, coords))
    files["seed_coords"] = str(folder / "coords.npy")
    rows = np.sort(seeds.rows)
    c = coords[rows]
    info: dict = {"q": q, "note": "the seed's continuous heterogeneity coordinates (standardised, 1 = the strongest); "
                                  "Spearman against z's PCs over the classified particles (a PC's sign is "
                                  "arbitrary, so is the correlation's)"}
    npc = 0 if lp is None else min(4, lp.n_components)
    scores = None if lp is None else lp.scores[rows, :npc]
    cols = ["row", "particle_index", "seed_state"] + [f"seed_coord_{j + 1}" for j in range(q)] + \
        [f"pc{i + 1}" for i in range(npc)]
    table = np.column_stack([rows, np.asarray(run.index)[rows], per_row[rows], c] +
                            ([] if scores is None else [scores]))
    fmt = ["%d", "%d", "%d"] + ["%.6g"] * (q + npc)
    atomic_write(folder / "seed_coords.csv", lambda fh: np.savetxt(fh, table, fmt=fmt, delimiter=",",
                                                                      header=",".join(cols), comments=""))
    files["seed_coords_csv"] = str(folder / "seed_coords.csv")
    if scores is None or len(rows) < 3:
        return info
    _coordinate_correlations(seeds, coords, rows, c, scores, lp, per_row, folder, info, files)
    if seeds.n_states == 1:
        info["coord1_bins"] = _coordinate_bins(run, z, coords, rows, c, folder, volumes, flip_hand, apix, n, files)
    return info


def _coordinate_correlations(seeds, coords: np.ndarray, rows: np.ndarray, c: np.ndarray, scores: np.ndarray, lp,
                             per_row: np.ndarray, folder: Path, info: dict, files: dict) -> None:
    """The Spearman correlation of each of the seed's first 4 coordinates (c: the classified rows') with z's leading
    PCs (scores) into info, and the plots seed_coord_vs_pc1.png and pc_scatter_seed_coord.png into files."""
    from scipy.stats import spearmanr

    from cryofire_app.analysis import plots

    def rho(a, b) -> float | None:
        if np.ptp(a) == 0 or np.ptp(b) == 0:
            return None
        r = float(spearmanr(a, b).statistic)
        return r if np.isfinite(r) else None

    npc, q = scores.shape[1], seeds.q
    table_rho = [[rho(c[:, j], scores[:, i]) for i in range(npc)] for j in range(min(q, 4))]
    info["spearman_pc"] = table_rho   # [coordinate j][PC i]
    info["spearman_coord1_pc1"] = table_rho[0][0]
    absr = [abs(v) if v is not None else -1.0 for v in table_rho[0]]
    info["best_pc_for_coord1"] = int(np.argmax(absr)) + 1 if max(absr) >= 0 else None
    files["seed_coord_vs_pc1"] = str(plots.plot_coordinate_vs_pc(
        scores[:, 0], c[:, 0], folder.parent / "seed_coord_vs_pc1.png",
        labels=per_row[rows] if seeds.n_states >= 2 else None, rho=table_rho[0][0]))
    files["pc_scatter_seed_coord"] = str(plots.plot_pc_scatter(
        lp.scores, folder.parent / "pc_scatter_seed_coord.png", values=coords[:, 0],
        explained=lp.explained_variance_ratio, value_label="seed coordinate 1 (grey: held out)",
        title="z: PCA, coloured by the seed's coordinate 1"))


def _coordinate_bins(run, z: np.ndarray, coords: np.ndarray, rows: np.ndarray, c: np.ndarray, folder: Path,
                     volumes: bool, flip_hand: bool, apix: float, n: int, files: dict) -> dict:
    """coord1/: the mean z of n equal-count bins of the seed's coordinate 1 over the classified rows (z_values.txt)
    and, with volumes, the maps there. Returns summary's "coord1_bins" (bin count, medians, sizes)."""
    nb = max(1, min(int(n), len(rows)))
    order = rows[np.argsort(c[:, 0], kind="stable")]
    bins = np.array_split(order, nb)
    zs = np.stack([z[b].mean(0) for b in bins]).astype(np.float32)
    med = [float(np.median(coords[b, 0])) for b in bins]
    cdir = folder / "coord1"
    cdir.mkdir(parents=True, exist_ok=True)
    np.savetxt(cdir / "z_values.txt", zs, fmt="%.6f", header="mean z of equal-count bins of seed coordinate 1; "
               "bin medians: " + " ".join(f"{v:.4f}" for v in med))
    if volumes:
        files["seed_coord1_volumes"] = _write_volumes(run, zs, cdir, apix, flip_hand)
    return {"n": nb, "median": med, "sizes": [int(len(b)) for b in bins]}
