"""Evaluation of a run (or of encoder-only predictions) against ground truth: the paper's Table 1 columns.

Ground truth comes as a cryoDRGN pose.pkl (rot (N, 3, 3), trans as a fraction of the box), optional state labels
(N,) and optional maps (one per state label, in sorted label order). Rows of the ground truth are the user's original
particles; a prediction's `index` says which ground-truth row each predicted particle is.
"""
from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from cryofire_app.analysis import metrics
from cryofire_app.io.errors import InputError
from cryofire_app.io.rundir import RunDir


@dataclass
class Predictions:
    """Per-particle estimates to evaluate. ``trans_px`` in pixels of the box ``D``; ``index`` = ground-truth rows."""

    rot: np.ndarray
    trans_px: np.ndarray | None
    z: np.ndarray | None
    index: np.ndarray
    D: int | None
    apix: float | None = None
    source: str = ""
    state: np.ndarray | None = None   # (n,) hard state labels (the seed's, seed_states.npz); -1 = not classified
    seed_coord: np.ndarray | None = None   # (n,) the seed's continuous coordinate 1 (seed_states.npz coords); NaN =
                                           # not classified


def predictions_from_run(run) -> Predictions:
    """From an opened ``cryofire_app.analysis.Run`` (final eval pass of a training run); ``state`` holds the seed's
    state labels when the run has seed_states.npz, ``seed_coord`` its first continuous coordinate when the file has
    coordinates (InputError when that file is malformed)."""
    z = None if run.z is None or np.asarray(run.z).size == 0 else np.asarray(run.z, np.float32)
    index = np.asarray(run.index, np.int64)
    seeds = getattr(run, "seed_states", None)
    return Predictions(rot=np.asarray(run.rot, np.float64), trans_px=None if run.trans is None else
                       np.asarray(run.trans, np.float64), z=z, index=index,
                       D=int(run.D), apix=run.apix, source=str(run.outdir) if hasattr(run, "outdir") else "",
                       state=None if seeds is None else seeds.labels_for_rows(len(index)),
                       seed_coord=None if seeds is None else seeds.coordinate_for_rows(len(index), 1))


def predictions_from_pkls(folder: str | Path, D: int | None, ind: np.ndarray | None = None) -> Predictions:
    """From a ``cryofire infer`` folder (``latents.npz``: index, rot, trans in px, z, D, apix) or any folder with
    cryoDRGN ``pose.pkl`` (and ``z.pkl``). Predicted particle ``i`` (row ``index[i]`` of the particle file given to
    infer; ``i`` for bare pickles) is ground-truth row ``ind[index[i]]``, or ``index[i]`` when ``ind`` is None.
    ``D`` converts pickled translations (box fractions) to pixels when there is no latents.npz."""
    from cryofire_app.io import read_pose_pkl, read_z_pkl

    folder = Path(folder)
    files = RunDir(folder)
    lat = files.latents
    if lat.is_file():
        from cryofire_app.analysis.run import read_latents

        d = read_latents(lat)   # a damaged archive is an InputError naming the file
        rot, trans_px, z, index = d["rot"], d["trans"], d.get("z"), d["index"].astype(np.int64)
        D = int(d["D"]) if "D" in d else D
        apix = float(d["apix"]) if "apix" in d else None
    else:
        pose = files.pose
        if not pose.is_file():
            raise InputError("no latents.npz or pose.pkl here (expected a training run folder or `cryofire infer` "
                             "output)", folder)
        rot, trans = read_pose_pkl(pose)
        z = read_z_pkl(files.z) if files.z.is_file() else None
        if z is not None and len(z) != len(rot):
            raise InputError(f"z.pkl has {len(z)} rows but pose.pkl has {len(rot)}", files.z)
        if trans is not None and D is None:
            raise InputError("translations are stored as box fractions: give the box size (--box) or a model run",
                             pose)
        trans_px = None if trans is None else np.asarray(trans, np.float64) * D
        index = np.arange(len(rot), dtype=np.int64)
        apix = None
    if ind is not None:
        ind = np.asarray(ind, np.int64)
        if index.max() >= len(ind):
            raise InputError(f"the predictions reach particle {int(index.max())} but the index lists {len(ind)}",
                             folder)
        index = ind[index]
    if z is not None and np.asarray(z).size == 0:
        z = None
    return Predictions(rot=np.asarray(rot, np.float64), trans_px=None if trans_px is None else
                       np.asarray(trans_px, np.float64), z=None if z is None else np.asarray(z, np.float32),
                       index=index, D=D, apix=apix, source=str(folder))


def load_gt_maps(paths: Sequence[str | Path], D: int) -> list[np.ndarray]:
    """Ground-truth maps as (D, D, D) float64, Fourier-cropped/padded to the run's box when their size differs."""
    from cryofire_app.io import read_map

    out = []
    for p in paths:
        vol, _ = read_map(p)
        if vol.ndim != 3 or len(set(vol.shape)) != 1:
            raise InputError(f"ground-truth map must be a cube, got shape {vol.shape}", p)
        if vol.shape[0] != D:
            import torch

            from cryofire_app.physics import fourier_resize

            vol = fourier_resize(torch.as_tensor(np.asarray(vol, np.float64)), D).numpy()
        out.append(np.asarray(vol, np.float64))
    return out


def _volume_fsc(vol_model: np.ndarray, gt: np.ndarray, alignment: metrics.RotationAlignment,
                apix: float | None) -> dict:
    al = metrics.align_volume_to_gt(vol_model, alignment, gt=gt).astype(np.float64)
    # the density sign depends on the particles' contrast convention (method_spec §9.11): compare like with like
    flipped_sign = float(np.sum((al - al.mean()) * (gt - gt.mean()))) < 0
    if flipped_sign:
        al = -al
    rep = metrics.fsc_report(al, gt, apix=apix)
    rep["density_sign_inverted"] = flipped_sign
    return rep


def evaluate(pred: Predictions, gt_rot: np.ndarray, gt_trans_frac: np.ndarray | None = None,
             gt_labels: np.ndarray | None = None, gt_maps: Sequence[np.ndarray] | None = None,
             decode: Callable[[np.ndarray], np.ndarray] | None = None, n_anchors: int = 100) -> dict:
    """Table 1 metrics. ``decode(z (n, d)) -> (n, D, D, D)`` renders volumes for the FSC against ``gt_maps``
    (map ``i`` belongs to the ``i``-th distinct label in sorted order; major = the most frequent ground-truth state,
    or the first map when no labels are given).

    With ``gt_labels``: ``confusion`` is that of PC1 of z (best thresholds, metrics.confusion_by_thresholds); when
    ``pred.state`` holds hard labels (a seeded run's seed_states.npz) also ``confusion_seed_states`` over the
    ``seed_states_n_images`` classified particles (metrics.label_confusion); with more than one state, also
    ``spearman_pc1`` (|Spearman| of PC1 of z against the labels, taken as ordered: a continuum's steps),
    ``spearman_best_pc`` (the PC of z with the largest |Spearman|: an oracle choice, for a ceiling) and, when
    ``pred.seed_coord`` holds the seed's coordinate, ``spearman_seed_coord1`` over the ``seed_coord_n_images``
    classified particles."""
    gt_rot = np.asarray(gt_rot, np.float64)
    idx = pred.index
    if len(idx) and (idx.min() < 0 or idx.max() >= len(gt_rot)):
        raise InputError(f"prediction indices run up to {idx.max()} but the ground truth has {len(gt_rot)} particles")
    res: dict = {"n_images": int(len(idx)), "source": pred.source}
    alignment = _pose_metrics(pred, gt_rot[idx], gt_trans_frac, n_anchors, res)
    groups: list[np.ndarray] | None = None
    classes = None
    if gt_labels is not None:
        classes, groups = _state_metrics(pred, gt_labels, len(gt_rot), res)
    if gt_maps:
        if decode is None:
            raise InputError("ground-truth maps given but no decoder: evaluate a training run folder or pass --model")
        res["fsc"] = _fsc_section(pred, gt_maps, decode, alignment, classes, groups)
        _resolution_by_role(res, classes)
    return res


def _pose_metrics(pred: Predictions, G: np.ndarray, gt_trans_frac: np.ndarray | None, n_anchors: int,
                  res: dict) -> metrics.RotationAlignment:
    """Add the rotation errors (degrees, after the global alignment) and, with ground-truth translations (fractions
    of the box), the translation errors in px of box D (raw and globally corrected) to ``res``; returns the
    alignment. ``G``: ground-truth rotations of the predicted particles."""
    rot = metrics.rotation_errors(pred.rot, G, n_anchors=n_anchors)
    alignment = metrics.RotationAlignment(np.asarray(rot["alignment"]["A"]), rot["alignment"]["flipped"],
                                          rot["alignment"]["score"])
    res.update(rot)
    if gt_trans_frac is not None and pred.trans_px is not None:
        if pred.D is None:
            raise InputError("the box size is needed to compare translations")
        gt_px = np.asarray(gt_trans_frac, np.float64)[pred.index] * pred.D  # box D, not the Hartley lattice D + 1
        res.update(metrics.translation_errors(pred.trans_px, gt_px))
        corr = metrics.translation_errors(pred.trans_px, gt_px, gt_rot=G, correct_global=True)
        res["trans_globally_corrected"] = {k: corr[k] for k in ("global_offset_px", "trans_median_px", "trans_mse_px2")}
    return alignment


def _state_metrics(pred: Predictions, gt_labels: np.ndarray, n_gt: int, res: dict
                   ) -> tuple[np.ndarray, list[np.ndarray] | None]:
    """Add the state counts and the conformation metrics of z, the seed's states and the seed's coordinate to
    ``res`` (see :func:`evaluate`); returns the distinct labels and, with z, the particles (rows of the predictions)
    PC1's thresholds put in each label's group."""
    idx = pred.index
    lab = np.asarray(gt_labels).reshape(-1)
    if len(lab) < n_gt:
        raise InputError(f"{len(lab)} ground-truth labels for {n_gt} particles")
    lab = lab[idx]
    classes, counts = np.unique(lab, return_counts=True)
    res["state_counts"] = {str(c): int(n) for c, n in zip(classes, counts)}
    groups = None
    if pred.z is not None and pred.z.shape[1] > 0:
        groups = _latent_state_metrics(pred.z, lab, classes, res)
    if pred.state is not None:
        st = np.asarray(pred.state).reshape(-1)
        if len(st) != len(idx):
            raise InputError(f"{len(st)} predicted state labels for {len(idx)} predicted particles")
        has = st >= 0
        if has.any():
            # the seed's own hard labels: no threshold is chosen with the ground truth (only the label matching)
            res["confusion_seed_states"] = metrics.label_confusion(st[has], lab[has])["confusion"]
            res["seed_states_n_images"] = int(has.sum())
    if pred.seed_coord is not None and len(classes) > 1:
        sc = np.asarray(pred.seed_coord, np.float64).reshape(-1)
        if len(sc) != len(idx):
            raise InputError(f"{len(sc)} seed coordinates for {len(idx)} predicted particles")
        has = np.isfinite(sc)
        if has.sum() > 2:
            r = metrics.spearman(sc[has], lab[has])
            res["spearman_seed_coord1"] = r if np.isfinite(r) else None
            res["seed_coord_n_images"] = int(has.sum())
    return classes, groups


def _latent_state_metrics(z: np.ndarray, lab: np.ndarray, classes: np.ndarray, res: dict) -> list[np.ndarray]:
    """Add PC1's threshold confusion and |Spearman| and the best-ranking PC of z (n, d) to ``res``; returns the rows
    PC1's best thresholds assign to each of ``classes``."""
    from cryofire_app.analysis.latent import fit_pca

    pc1 = fit_pca(z, n_components=1).scores[:, 0]
    conf = metrics.confusion_by_thresholds(pc1, lab)
    res["confusion"] = conf["confusion"]
    res["confusion_thresholds_pc1"] = conf["thresholds"]
    rho = metrics.spearman(pc1, lab) if len(classes) > 1 else float("nan")
    res["spearman_pc1"] = rho if np.isfinite(rho) else None
    if len(classes) > 1:
        scores = fit_pca(z).scores
        rhos = [metrics.spearman(scores[:, j], lab) for j in range(scores.shape[1])]
        rhos = [r if np.isfinite(r) else -1.0 for r in rhos]
        j = int(np.argmax(rhos))
        if rhos[j] >= 0:
            res["spearman_best_pc"] = {"pc": j + 1, "spearman": rhos[j],
                                       "note": "the PC of z that ranks the labels best (chosen with the "
                                               "truth: a ceiling for a 1-D coordinate of z)"}
    return [np.nonzero(conf["pred_labels"] == c)[0] for c in classes]


def _resolution_by_role(res: dict, classes: np.ndarray | None) -> None:
    """Copy the FSC resolutions (px and A, 0.5 and 0.143) of the major and minor maps to top-level keys of ``res``:
    major = the most frequent ground-truth state (without labels: the first map given)."""
    maps = res["fsc"]["maps"]
    gt_counts = [res["state_counts"][str(c)] for c in classes] if classes is not None else None
    order = np.argsort([-c for c in gt_counts], kind="stable") if gt_counts else range(len(maps))
    for role, i in zip(("major", "minor"), order):
        for thr in ("0.5", "0.143"):
            res[f"res_{role}_{thr}_px"] = maps[i][f"res_{thr}_px"]
            res[f"res_{role}_{thr}_A"] = maps[i][f"res_{thr}_A"]


def _fsc_section(pred: Predictions, gt_maps, decode, alignment, classes, groups) -> dict:
    K = len(gt_maps)
    zdim = 0 if pred.z is None else pred.z.shape[1]
    apix = pred.apix
    if zdim == 0:
        zs = np.zeros((1, 0), np.float32)
        how = "homogeneous model"
        sizes = [len(pred.index)]
    elif groups is not None:
        if len(groups) != K:
            raise InputError(f"{K} ground-truth maps for {len(groups)} distinct state labels")
        zs = np.stack([pred.z[g].mean(0) if len(g) else pred.z.mean(0) for g in groups]).astype(np.float32)
        how = "centroid of z over the particles PC1 thresholds assign to each state"
        sizes = [len(g) for g in groups]
    else:
        from cryofire_app.analysis.latent import kmeans

        try:
            km = kmeans(pred.z, K)
        except ValueError as exc:
            raise InputError(f"cannot split z into {K} states for the {K} maps: {exc}") from None
        zs = km.centers
        how = "k-means centroids, matched to the maps by the best total FSC"
        sizes = km.sizes.tolist()
    vols = np.asarray(decode(zs))
    if zdim == 0:
        vols = np.repeat(vols, K, axis=0)
        sizes = sizes * K
    reps = [[_volume_fsc(vols[i], gt_maps[j], alignment, apix) for j in range(K)] for i in range(len(vols))] \
        if (zdim > 0 and groups is None) else None
    if reps is not None:
        best = max(itertools.permutations(range(K)),
                   key=lambda p: sum(np.mean(reps[p[j]][j]["fsc"]) for j in range(K)))
        maps = [dict(reps[best[j]][j], n_images=int(sizes[best[j]])) for j in range(K)]
    else:
        maps = [dict(_volume_fsc(vols[j], gt_maps[j], alignment, apix), n_images=int(sizes[j])) for j in range(K)]
    for j, m in enumerate(maps):
        m["state"] = None if classes is None else str(classes[j])
    return {"volumes_from": how, "maps": maps}


TABLE_COLUMNS = [
    ("n_images", "images", "{:d}"),
    ("confusion", "confusion", "{:.4f}"),
    ("confusion_seed_states", "confusion (seed labels)", "{:.4f}"),
    ("res_major_0.5_px", "res. major (px, FSC 0.5)", "{:.2f}"),
    ("res_minor_0.5_px", "res. minor (px, FSC 0.5)", "{:.2f}"),
    ("rot_view_median_deg", "rot. median (deg)", "{:.2f}"),
    ("rot_view_mean_deg", "rot. mean (deg)", "{:.2f}"),
    ("trans_median_px", "trans. median (px)", "{:.3f}"),
    ("trans_mse_px2", "trans. MSE (px^2)", "{:.3f}"),
]


def table_row(res: dict) -> dict[str, str]:
    """The Table 1 columns of an evaluation result as formatted strings ('-' when absent)."""
    out = {}
    for key, name, fmt in TABLE_COLUMNS:
        v = res.get(key)
        out[name] = "-" if v is None else (fmt.format(v) if np.isfinite(v) else str(v))
    return out


def _finite(o):
    """Strict JSON: non-finite floats (e.g. an infinite resolution: FSC below the threshold from the first shell)
    become null."""
    if isinstance(o, dict):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_finite(v) for v in o]
    if isinstance(o, np.ndarray):
        return _finite(o.tolist())
    if isinstance(o, np.generic):
        o = o.item()
    if isinstance(o, float) and not np.isfinite(o):
        return None
    if isinstance(o, Path):
        return str(o)
    return o


def write_json(path: str | Path, obj: dict) -> Path:
    """Write strict JSON atomically (numpy values converted, NaN/Inf written as null)."""
    from cryofire_app.io.atomic import atomic_write_text

    return atomic_write_text(path, json.dumps(_finite(obj), indent=1, allow_nan=False))
