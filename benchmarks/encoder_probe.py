"""Encoder-alone probe: how far an encoder architecture gets on the seeded distill's pose supervision, without the rest.

On a finished ``accuracy.py --issue5`` workdir: a fresh encoder (the defaults of ``cryofire train``'s seeded schedule,
changed by ``--variant NAME='{"key": value}'``, keys of model.encoder.Encoder) is trained from scratch on pose rows
only, as the trainer's distill phase makes them: per step 32 real training images turned by random in-plane angles
(targets: the run's seed poses, turned) and 16 synthetic images of the seed's map (training.synthetic.SeedRenderer
fitted and band-limited as the trainer does; exact poses); grid cross-entropy with the trainer's target narrowing
(``grid_width_at``) and learning-rate decay (``distill_lr_factor``) over ``--rows`` rows, lr 1e-3. No decoder, no z.
At 50 / 75 / 90 / 100 % of the rows: the held-out split's median view-direction error, one pass and as ``cryofire
infer`` reads it (8 turns + mirror). Variants given together run one after another; to compare two at once, start two
processes with ``--threads 1`` each (the 2-core machine's way).
Results: results/encoder_probe-<date>-<host>.json and .md.

usage:  python benchmarks/encoder_probe.py --workdir DIR [--rows 300000] [--threads 2]
        [--variant base='{}'] [--variant wide='{"hidden": 512}'] ...
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from report import md_table, stamp, write_report
from workdir import Workdir, train_rows

REAL_ROWS, SYNTH_ROWS = 32, 16     # the trainer's batch of 32 plus its default 0.5 synthetic rows per real image
TURNS = 8


def probe(workdir: Path, name: str, overrides: dict, rows: int) -> dict:
    import torch

    from cryofire_app.analysis import metrics
    from cryofire_app.model.cryofire import CryoFIRE
    from cryofire_app.physics.inplane import rotate_images, rotate_poses
    from cryofire_app.training.config import TrainConfig
    from cryofire_app.training.inference import encode_with_turns

    torch.manual_seed(0)
    wd = Workdir(workdir)
    D = wd.D
    train, test = wd.data("train_data"), wd.data("test_data")
    cfg = TrainConfig.of(particles="", outdir="", schedule="seeded")
    ekw = {k: v for k, v in vars(cfg.encoder).items() if v is not None and k != "view_dirs"}   # the encoder alone
    ekw.update(rot_head="grid", **overrides)
    model = CryoFIRE(D, 8, encoder_kwargs=ekw, decoder_kwargs={"arch": "mlp", "hidden": 16, "layers": 1})
    enc = model.encoder
    renderer = wd.renderer(train).limit_band(enc.box)
    pr = wd.pose_rows(train, test)
    pos, rot_s, trans_s, y_train, y_test, gt = (pr[k] for k in ("pos", "rot", "trans", "y_train", "y_test", "gt"))
    gen = torch.Generator().manual_seed(3)
    n_params = sum(p.numel() for p in enc.parameters())
    print(f"{name}: {ekw}, {n_params:,} parameters", flush=True)

    def evaluate(seen: int, elapsed: float) -> dict:
        enc.eval()
        one, turned = [], []
        with torch.inference_mode():
            for i in range(0, test.N, 250):
                x = y_test[i:i + 250]
                one.append(enc(x)["rot"])
                turned.append(encode_with_turns(model, x, TURNS)["rot"])
        enc.train()
        row = {"rows": seen, "train_s": round(elapsed, 1),
               "view_median_one_pass": metrics.rotation_errors(torch.cat(one).double().numpy(), gt)[
                   "rot_view_median_deg"],
               "view_median_turns": metrics.rotation_errors(torch.cat(turned).double().numpy(), gt)[
                   "rot_view_median_deg"]}
        print(f"{name} @{seen:,} rows ({elapsed:.0f} s of training): held-out {row['view_median_one_pass']:.2f} deg "
              f"one pass, {row['view_median_turns']:.2f} with {TURNS} turns + mirror", flush=True)
        return row

    def loss_at(width: float):
        with torch.no_grad():
            xs, rs, _ = renderer.render(SYNTH_ROWS, gen)
            k = torch.randint(0, len(pos), (REAL_ROWS,), generator=gen)
            ang = torch.rand(REAL_ROWS, generator=gen) * 2 * math.pi
            x = torch.cat([rotate_images(y_train[k], ang), xs])
            target = torch.cat([rotate_poses(rot_s[k], trans_s[k], ang)[0], rs])
        return enc.grid_loss(enc(x)["rot_logits"], target, width).mean()

    table = train_rows(enc.parameters(), cfg, rows, REAL_ROWS + SYNTH_ROWS, loss_at, evaluate, (0.5, 0.75, 0.9))
    return {"name": name, "encoder": {k: (list(v) if isinstance(v, tuple) else v) for k, v in ekw.items()},
            "parameters": n_params, "rows": table}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", required=True, type=Path, help="a finished accuracy.py --issue5 work folder")
    p.add_argument("--rows", type=int, default=300_000, help="pose rows to train on (default 300000)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--variant", action="append", default=[], metavar="NAME=JSON",
                   help="encoder keyword overrides, e.g. wide='{\"hidden\": 512}' (default: base='{}')")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    variants = []
    for v in args.variant or ["base={}"]:
        name, _, js = v.partition("=")
        try:
            variants.append((name, json.loads(js or "{}")))
        except json.JSONDecodeError as exc:
            p.error(f"--variant {v!r}: not JSON after '=': {exc}")
    runs = [probe(args.workdir, name, kw, args.rows) for name, kw in variants]
    st = stamp()
    out = {"date": st["date"], "host": st["host"], "threads": args.threads, "workdir": str(args.workdir),
           "rows": args.rows, "runs": runs}
    lines = [f"# Encoder-alone probe ({out['date']}, {out['host']}, {args.threads} threads)", "",
             f"Pose rows only ({REAL_ROWS} turned real + {SYNTH_ROWS} synthetic per step), from scratch, on "
             f"`{args.workdir.name}`'s seed; held-out median view error (deg).", ""]
    lines += md_table(["variant", "parameters", "rows", "training s", "one pass", "8 turns + mirror"],
                      [[r["name"], f"{r['parameters']:,}", f"{row['rows']:,}", f"{row['train_s']:.0f}",
                        f"{row['view_median_one_pass']:.2f}", f"{row['view_median_turns']:.2f}"]
                       for r in runs for row in r["rows"]])
    write_report("encoder_probe", st["now"], out, lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
