"""Two-stage probe: a second encoder that reads images turned and shifted to a canonical in-plane frame.

On a finished ``accuracy.py --issue5`` workdir (with ``pred_test/``: the run's encoder-alone held-out poses, stage 1).
The probe behind model.view (ViewEncoder), with that module's canonical_angle and canonicalise; unlike the trainer's
view encoder it turns the images at the full box, before the Fourier crop. Stage 2 is a fresh encoder (grid head over
``--dirs`` view directions x 4 in-plane angles) trained from scratch on pose rows turned so that their in-plane angle
is 0 in the grid's own frame for their view (reconstruct.grids.frames_from_directions) and re-centred: per step 32
real training images (targets: the run's seed poses) and 16 synthetic images of the seed's map (exact poses), each
canonicalised at its target pose jittered like stage 1's errors (``--jitter-deg`` / ``--jitter-px`` per axis), as
stage 1's answer would canonicalise it. At inference the held-out images are canonicalised at stage 1's poses,
stage 2 reads the view, and its pose is turned back.
Results: results/canon_probe-<date>-<host>.json and .md.

usage:  python benchmarks/canon_probe.py --workdir DIR [--rows 300000] [--threads 2] [--dirs 1024]
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

from report import md_table, stamp, write_report
from workdir import Workdir, train_rows

REAL_ROWS, SYNTH_ROWS = 32, 16


def stage2_encoder(D: int, dirs: int):
    """A fresh encoder with the seeded schedule's settings and a grid head over `dirs` view directions x 4 in-plane
    angles, its neighbourhood 2 view spacings (chord length); returns (encoder, its settings, the TrainConfig)."""
    from cryofire_app.model.encoder import Encoder
    from cryofire_app.training.config import TrainConfig

    cfg = TrainConfig.of(particles="", outdir="", schedule="seeded")
    ekw = {k: v for k, v in vars(cfg.encoder).items() if v is not None}
    ekw.update(rot_head="grid", grid_dirs=dirs, grid_psi=4)
    ekw.pop("zdim", None)
    enc = Encoder(D, zdim=0, **{k: v for k, v in ekw.items() if k in Encoder.__init__.__code__.co_varnames})
    spacing = math.sqrt(4 * math.pi / dirs)
    enc.neighbourhood = 2 * math.sqrt(2) * math.sin(spacing)    # 2 view spacings; the in-plane grid is only a frame
    return enc, ekw, cfg


def stage1_poses(workdir: Path, D: int):
    """Stage 1's held-out poses from pred_test/pose.pkl: rotations (float tensor) and shifts in px."""
    import torch

    from cryofire_app.io import read_pose_pkl

    r1, t1 = read_pose_pkl(str(workdir / "pred_test" / "pose.pkl"))
    return torch.as_tensor(r1).float(), torch.as_tensor(t1).float() * D


def make_evaluate(enc, x1, a1, gt, n_test: int):
    """evaluate(seen, elapsed s) for train_rows: stage 2 on the canonicalised held-out images x1, its poses turned
    back by stage 1's in-plane angles a1, scored against gt (deg); prints and returns one table row."""
    import torch

    from cryofire_app.analysis import metrics
    from cryofire_app.physics.inplane import rotate_poses

    def evaluate(seen: int, elapsed: float) -> dict:
        enc.eval()
        out = []
        with torch.inference_mode():
            for i in range(0, n_test, 250):
                out.append(enc(x1[i:i + 250])["rot"])
        enc.train()
        r2 = rotate_poses(torch.cat(out), torch.zeros(n_test, 2), a1, inverse=True)[0]
        e = metrics.rotation_errors(r2.double().numpy(), gt)
        row = {"rows": seen, "train_s": round(elapsed, 1), "view_median": e["rot_view_median_deg"],
               "view_mean": e["rot_view_mean_deg"], "inplane_median": e["rot_inplane_median_deg"]}
        print(f"@{seen:,} rows ({elapsed:.0f} s): held-out view {row['view_median']:.2f} deg (mean "
              f"{row['view_mean']:.2f}), in-plane {row['inplane_median']:.2f}", flush=True)
        return row

    return evaluate


def make_loss(enc, renderer, pr: dict, gen, jdeg: float, jpx: float):
    """loss_at(width) for train_rows: the grid loss of one step of REAL_ROWS training images (targets: the seed's
    poses, pr) and SYNTH_ROWS rendered ones, each canonicalised at its pose jittered by jdeg (deg) / jpx (px) per
    axis, the target turned into that canonical frame."""
    import torch

    from cryofire_app.model.view import canonical_angle, canonicalise, jitter_pose
    from cryofire_app.physics.inplane import rotate_poses

    pos, rot_s, trans_s, y_train = (pr[k] for k in ("pos", "rot", "trans", "y_train"))

    def loss_at(width: float):
        with torch.no_grad():
            xs, rs, ts = renderer.render(SYNTH_ROWS, gen)
            k = torch.randint(0, len(pos), (REAL_ROWS,), generator=gen)
            x = torch.cat([y_train[k], xs])
            r = torch.cat([rot_s[k], rs])
            t = torch.cat([trans_s[k], ts.float()])
            rj, tj = jitter_pose(r, t, jdeg, jpx, gen)
            a = canonical_angle(rj)
            x = canonicalise(x, a, tj)
            target = rotate_poses(r, t, a)[0]
        return enc.grid_loss(enc(x)["rot_logits"], target, width).mean()

    return loss_at


def run_probe(workdir: Path, rows: int, dirs: int, jdeg: float, jpx: float) -> dict:
    """Train stage 2 for `rows` pose rows on `workdir`, scoring it on the held-out images as it goes; returns the
    settings, stage 1's held-out errors (deg) and the table of stage 2's."""
    import torch

    from cryofire_app.analysis import metrics
    from cryofire_app.model.view import canonical_angle, canonicalise

    torch.manual_seed(0)
    wd = Workdir(workdir)
    D = wd.D
    train, test = wd.data("train_data"), wd.data("test_data")
    enc, ekw, cfg = stage2_encoder(D, dirs)
    renderer = wd.renderer(train).limit_band(enc.box)
    pr = wd.pose_rows(train, test)
    r1, t1 = stage1_poses(workdir, D)
    stage1 = metrics.rotation_errors(r1.double().numpy(), pr["gt"])
    a1 = canonical_angle(r1)
    x1 = canonicalise(pr["y_test"], a1, t1)
    gen = torch.Generator().manual_seed(3)
    n_params = sum(p.numel() for p in enc.parameters())
    print(f"stage 2: {ekw}, {n_params:,} parameters; stage 1 held-out view median {stage1['rot_view_median_deg']:.2f}"
          f" deg (in-plane {stage1['rot_inplane_median_deg']:.2f})", flush=True)
    loss_at = make_loss(enc, renderer, pr, gen, jdeg, jpx)
    evaluate = make_evaluate(enc, x1, a1, pr["gt"], test.N)
    table = train_rows(enc.parameters(), cfg, rows, REAL_ROWS + SYNTH_ROWS, loss_at, evaluate, (0.25, 0.5, 0.75, 0.9))
    return {"dirs": dirs, "jitter_deg": jdeg, "jitter_px": jpx, "parameters": n_params,
            "stage1": {k: v for k, v in stage1.items() if k != "alignment"}, "rows": table}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", required=True, type=Path, help="a finished accuracy.py --issue5 work folder")
    p.add_argument("--rows", type=int, default=300_000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dirs", type=int, default=1024)
    p.add_argument("--jitter-deg", type=float, default=3.0)
    p.add_argument("--jitter-px", type=float, default=1.0)
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    res = run_probe(args.workdir, args.rows, args.dirs, args.jitter_deg, args.jitter_px)
    st = stamp()
    out = {"date": st["date"], "host": st["host"], "threads": args.threads, "workdir": str(args.workdir), **res}
    lines = [f"# Two-stage canonical-frame probe ({out['date']}, {out['host']}, {args.threads} threads)", "",
             f"Stage 1: `{args.workdir.name}`'s encoder alone, held-out view median "
             f"{res['stage1']['rot_view_median_deg']:.2f} deg. Stage 2: {args.dirs} directions x 4, jitter "
             f"{args.jitter_deg} deg / {args.jitter_px} px.", ""]
    lines += md_table(["rows", "training s", "view median", "view mean", "in-plane median"],
                      [[f"{r['rows']:,}", f"{r['train_s']:.0f}", f"{r['view_median']:.2f}", f"{r['view_mean']:.2f}",
                        f"{r['inplane_median']:.2f}"] for r in res["rows"]])
    write_report("canon_probe", st["now"], out, lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
