"""Compare a run's (or encoder-only predictions') poses and conformations with ground truth; write one JSON.

RUN is a `cryofire train` folder (its final-pass latents; the decoder renders volumes for the FSC) or a
`cryofire infer` folder (pose.pkl/z.pkl; pass --model for the FSC and --ind when it holds a subset of the ground
truth's particles). Reported (the paper's Table 1 columns and more): rotation error after global alignment with both
hands (viewing-direction median/mean, full rotation and in-plane angles, degrees); translation error in pixels of the
box D (median, MSE in px^2; raw, and with a global 3D origin offset removed); confusion error of PC1 thresholds for the
ground-truth states; |Spearman| of PC1 with the state index; FSC of volumes decoded at each state's centroid, aligned
into the ground-truth frame and hand, against --gt-maps (map i = i-th distinct label in sorted order): resolutions at
FSC 0.5 and 0.143 in pixels and Angstrom for the major and minor state.

example:  cryofire eval run1 --gt-poses sim/poses.pkl --gt-labels sim/labels.npy --gt-maps a.mrc b.mrc -o eval.json
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from cryofire_app.io.errors import InputError
from cryofire_app.io.rundir import RunDir


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="run folder (`cryofire train`) or predictions folder (`cryofire infer`)")
    p.add_argument("--gt-poses", required=True, help="ground-truth cryoDRGN pose.pkl (rot, trans as box fraction)")
    p.add_argument("--gt-labels", help="ground-truth state per particle: .npy, .pkl or .txt of integers")
    p.add_argument("--gt-maps", nargs="+", help="ground-truth maps, one per state in sorted label order")
    p.add_argument("-o", "--out", required=True, help="result JSON file")
    p.add_argument("--model", help="run folder whose decoder renders volumes when RUN is an infer folder")
    p.add_argument("--ind", help="cryoDRGN ind.pkl mapping the infer folder's particles to ground-truth rows (row i "
                                 "of the inferred particle file is ground-truth row ind[i]; default: the same row)")
    p.add_argument("--box", type=int, help="box size D in pixels, to convert an infer folder's translations")
    p.add_argument("--split", choices=("all", "train", "val"), default="all",
                   help="for a training run: evaluate all particles, or only the training or the held-out "
                        "validation split (default all)")


def read_labels(path: str | Path) -> np.ndarray:
    """State labels (N,) from .npy / .pkl / .txt."""
    path = Path(path)
    if not path.is_file():
        raise InputError("file not found", path)
    try:
        if path.suffix == ".npy":
            arr = np.load(path, allow_pickle=False)
        elif path.suffix == ".pkl":
            from cryofire_app.io import load_pickle_safe

            arr = np.asarray(load_pickle_safe(path))
        else:
            arr = np.loadtxt(path, ndmin=1)
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"cannot read labels ({type(exc).__name__}: {exc})", path) from None
    arr = np.asarray(arr).reshape(-1)
    if arr.dtype.kind == "f":
        if not np.all(arr == np.round(arr)):
            raise InputError("labels must be integers", path)
        arr = arr.astype(np.int64)
    return arr


def run_eval(args: argparse.Namespace) -> dict:
    from cryofire_app.analysis import evaluate as E
    from cryofire_app.io import read_ind_pkl, read_pose_pkl

    folder = Path(args.run)
    files = RunDir(folder)
    decode = None
    model_run = None
    if files.is_run():
        from cryofire_app.analysis.run import Run

        run = Run(folder)
        try:
            pred = E.predictions_from_run(run)
        except FileNotFoundError as exc:
            raise InputError(f"the run has no final latents yet ({exc})", folder) from None
        if args.split != "all":
            keep = run.val if args.split == "val" else ~run.val
            pred = E.Predictions(pred.rot[keep], None if pred.trans_px is None else pred.trans_px[keep],
                                 None if pred.z is None else pred.z[keep], pred.index[keep], pred.D, pred.apix,
                                 pred.source)
        model_run = run
    else:
        if args.split != "all":
            raise InputError("--split applies to training run folders only", folder)
        if args.model:
            from cryofire_app.analysis.run import Run

            model_run = Run(args.model)
        D = args.box or (model_run.D if model_run is not None else None)
        ind = read_ind_pkl(args.ind) if args.ind else None
        if files.latents.is_file():   # `cryofire infer` output: a damaged archive is named here
            from cryofire_app.analysis.run import read_latents

            read_latents(files.latents)
        pred = E.predictions_from_pkls(folder, D, ind)
        if model_run is not None and pred.apix is None:
            pred.apix = float(model_run.apix)
    if model_run is not None:
        decode = model_run.decode
    gt_rot, gt_trans = read_pose_pkl(args.gt_poses)
    labels = read_labels(args.gt_labels) if args.gt_labels else None
    maps = None
    if args.gt_maps:
        if pred.D is None:
            raise InputError("--gt-maps needs the box size: evaluate a run folder or pass --model")
        maps = E.load_gt_maps(args.gt_maps, pred.D)
    res = E.evaluate(pred, gt_rot, gt_trans, gt_labels=labels, gt_maps=maps, decode=decode)
    res["split"] = args.split
    res["gt"] = {"poses": str(args.gt_poses), "labels": args.gt_labels, "maps": args.gt_maps}
    if model_run is not None:
        ev = [e for e in model_run.events() if e.get("event") in ("Step", "Finished")]
        steps = [e for e in ev if e.get("event") == "Step"]
        if steps:
            res["train_images_seen"] = int(steps[-1].get("images_seen", 0))
            res["train_wall_s"] = float(steps[-1].get("elapsed_s", 0.0))
    return res


def main(args: argparse.Namespace) -> int:
    from cryofire_app.analysis.evaluate import table_row, write_json
    from cryofire_app.commands import _checks

    _checks.even_box("--box", args.box)
    if Path(args.out).is_dir():
        raise InputError("-o/--out: is a folder; give the result JSON file's name", args.out)
    res = run_eval(args)
    path = write_json(args.out, res)
    hand = res["alignment"]["hand"]
    print(f"evaluated {res['n_images']} particles ({hand} hand) -> {path}")
    for name, val in table_row(res).items():
        print(f"  {name:28s} {val}")
    if res.get("spearman_pc1") is not None:
        print(f"  {'|Spearman| PC1 vs state':28s} {res['spearman_pc1']:.3f}")
    return 0
