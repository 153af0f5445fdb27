"""Where a seeded run's encoder error comes from: noise, or the encoder itself.

On a finished ``accuracy.py --issue5`` workdir (or several, ``--workdir`` repeated), for each run's final encoder:
  - synthetic images of the run's seed map (training.synthetic.SeedRenderer, fitted to the training split as the
    trainer fits it) at uniform random poses, with the noise spectrum scaled by each ``--noise`` factor
    (1 = the data's noise, 0 = noise-free), encoded as ``cryofire infer`` does for the image alone (8 turns,
    score maps combined) and in one pass; the median view-direction error against the exact poses (the seed's frame,
    no alignment needed). Error that stays at noise 0 belongs to the encoder (its map, not the data);
  - the decode floor: the grid head's own target maps for random rotations (a perfectly trained head), decoded by
    model.encoder.grid_pose, median view and full-rotation error.
Results: results/encoder_floor-<date>-<host>.json and .md.

usage:  python benchmarks/encoder_floor.py --workdir DIR [--workdir DIR2 ...] [--noise 1,0.5,0.25,0] [--images 1000]
        [--threads 2]
"""
from __future__ import annotations

import argparse
from pathlib import Path

from report import md_table, stamp, write_report
from workdir import Workdir

TURNS = 8


def view_error_deg(rot_pred, rot_true):
    """(n,) degrees between the view axes (row 2 of cryoDRGN's rotation) of two (n, 3, 3) stacks."""
    import torch

    return torch.rad2deg(torch.arccos((rot_pred[:, 2] * rot_true[:, 2]).sum(-1).clamp(-1, 1)))


def full_error_deg(rot_pred, rot_true):
    import torch

    c = (torch.einsum("bij,bij->b", rot_pred, rot_true) - 1) / 2
    return torch.rad2deg(torch.arccos(c.clamp(-1, 1)))


def run_floor(workdir: Path, noise: list[float], images: int) -> dict:
    import torch

    from cryofire_app.training.inference import fuse_turns

    wd = Workdir(workdir)
    renderer = wd.renderer(wd.data("train_data"))
    model = wd.run.model.eval()
    amp = renderer.noise_amp.clone()
    rows = []
    for s in noise:
        renderer.noise_amp = amp * s
        gen = torch.Generator().manual_seed(11)
        turned, one = [], []
        with torch.inference_mode():
            for i in range(0, images, 250):
                x, rot, _ = renderer.render(min(250, images - i), gen)
                turned.append(view_error_deg(fuse_turns(model, x, TURNS)["rot"], rot))
                one.append(view_error_deg(model.encoder(x)["rot"], rot))
        rows.append({"noise": s, "view_median_turns": float(torch.cat(turned).median()),
                     "view_median_one_pass": float(torch.cat(one).median()),
                     "view_mean_turns": float(torch.cat(turned).mean())})
        print(f"{workdir.name}: noise x{s:g}: {rows[-1]['view_median_turns']:.2f} deg ({TURNS} turns), "
              f"{rows[-1]['view_median_one_pass']:.2f} one pass", flush=True)
    renderer.noise_amp = amp
    return {"workdir": str(workdir), "images_seen": int(wd.ck["images_seen"]), "rows": rows}


def decode_floor(n: int = 4000) -> dict:
    import torch

    from cryofire_app.model.encoder import Encoder, grid_pose
    from cryofire_app.physics.rotations import random_rotations

    enc = Encoder(64, box=32, rot_head="grid")
    rot = random_rotations(n, generator=torch.Generator().manual_seed(0))
    out = {}
    for width in (0.5, 1.0):
        pred = grid_pose(enc.grid_target_logits(rot, width), enc.rot_grid, enc.neighbourhood)
        out[str(width)] = {"view_median": float(view_error_deg(pred, rot).median()),
                           "full_median": float(full_error_deg(pred, rot).median())}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", required=True, type=Path, action="append")
    p.add_argument("--noise", default="1,0.5,0.25,0")
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    noise = [float(s) for s in args.noise.split(",")]
    runs = [run_floor(w, noise, args.images) for w in args.workdir]
    dec = decode_floor()
    st = stamp()
    out = {"date": st["date"], "host": st["host"], "threads": args.threads, "images": args.images, "turns": TURNS,
           "runs": runs, "decode_floor": dec}
    lines = [f"# Encoder error floor ({out['date']}, {out['host']})", "",
             f"Synthetic images of each run's seed map at uniform random poses ({args.images} per row), the data's "
             f"noise spectrum scaled by the factor; median view-direction error (deg) of the run's final encoder "
             f"against the exact poses: {TURNS} turns combined (the image alone, no mirror) and one pass.", ""]
    lines += md_table(["run", "noise", "view median, turns", "view median, one pass", "view mean, turns"],
                      [[Path(r["workdir"]).name, f"{row['noise']:g}", f"{row['view_median_turns']:.2f}",
                        f"{row['view_median_one_pass']:.2f}", f"{row['view_mean_turns']:.2f}"]
                       for r in runs for row in r["rows"]])
    lines += ["", "Decode floor (the grid head's own target maps decoded by grid_pose): " + "; ".join(
        f"width {w}: view {v['view_median']:.2f}, full {v['full_median']:.2f} deg" for w, v in dec.items())]
    write_report("encoder_floor", st["now"], out, lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
