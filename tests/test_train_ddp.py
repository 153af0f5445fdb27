"""Data-parallel training under torchrun (gloo, 2 CPU processes): it matches one process on the same global batch,
and the seed runs once (rank 0) and is shared."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import torch

from cryofire_app.training import Finished, Step, Trainer
from cryofire_app.training.checkpoint import load_checkpoint
from test_train_data import make_dataset
from test_train_trainer import tiny_config


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_processes_match_one(tmp_path):
    data = make_dataset(tmp_path / "synth", n=96, D=16, seed=1, max_shift=1.0, noise_std=0.3)
    kw = dict(num_images=192, pose_only_images=96, checkpoint_every=10_000, num_threads=1)
    single = Trainer(tiny_config(data, tmp_path / "one", **kw))
    losses1 = [e.loss for e in single.run() if isinstance(e, Step)]

    cfg = tiny_config(data, tmp_path / "two", **kw)
    (tmp_path / "cfg.json").write_text(json.dumps(cfg.to_dict()))
    script = tmp_path / "ddp_run.py"
    script.write_text(textwrap.dedent(f"""
        import json
        from cryofire_app.training import Trainer, TrainConfig
        cfg = TrainConfig.from_dict(json.load(open({str(tmp_path / 'cfg.json')!r})))
        for ev in Trainer(cfg).run():
            pass
    """))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
                           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), str(script)],
                          capture_output=True, text=True, env=env, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = [json.loads(line) for line in (tmp_path / "two" / "log.jsonl").read_text().splitlines()]
    assert any(e["event"] == "Message" and "data-parallel over 2 processes" in e["text"] for e in log)
    losses2 = [e["loss"] for e in log if e["event"] == "Step"]
    assert len(losses2) == len(losses1) == 12
    assert max(abs(a - b) / abs(a) for a, b in zip(losses1, losses2)) < 1e-4
    ck = load_checkpoint(tmp_path / "two" / "checkpoints" / "last.pt")
    p1 = torch.cat([v.reshape(-1) for v in single.model.state_dict().values() if v.is_floating_point()])
    p2 = torch.cat([v.reshape(-1) for v in ck["model"].values() if v.is_floating_point()])
    assert torch.allclose(p1, p2, atol=2e-4, rtol=0)
    assert (tmp_path / "two" / "pose.pkl").exists()


def test_ddp_seed_runs_once_on_rank_zero_and_is_shared(tmp_path):
    """Seeded schedule under torchrun: rank 0 alone runs the seed's pose search (no seed progress on rank 1), every
    rank trains from the same seed, and that seed is the one a single process computes from the same data."""
    from cryofire_app.simulate import DEMO_MAP_APIX, SimulationConfig, simulate
    from test_train_seeded import seeded_config, small_seeded, two_state_maps

    sim = tmp_path / "sim"
    simulate(SimulationConfig(outdir=str(sim), n=160, volumes=two_state_maps(), apix=DEMO_MAP_APIX, box=16,
                              snr=10.0, fractions=[0.6, 0.4], max_shift_px=1.0, seed=1, progress=False))
    small = small_seeded(num_images=256, seed_max_particles=96)
    torch.set_num_threads(1)
    single = Trainer(seeded_config(str(sim / "particles.star"), tmp_path / "one", **small))
    assert isinstance(list(single.run())[-1], Finished)

    cfg = seeded_config(str(sim / "particles.star"), tmp_path / "two", **small)
    (tmp_path / "cfg.json").write_text(json.dumps(cfg.to_dict()))
    script = tmp_path / "ddp_seed.py"
    script.write_text(textwrap.dedent(f"""
        import json, os
        import numpy as np
        from cryofire_app.training import Step, Trainer, TrainConfig
        cfg = TrainConfig.from_dict(json.load(open({str(tmp_path / 'cfg.json')!r})))
        tr = Trainer(cfg)
        evs = list(tr.run())
        rank = int(os.environ["RANK"])
        seed_steps = sum(isinstance(e, Step) and e.phase == "seed" for e in evs)
        json.dump(dict(seed_steps=seed_steps, last=type(evs[-1]).__name__),
                  open({str(tmp_path)!r} + f"/rank{{rank}}.json", "w"))
        np.save({str(tmp_path)!r} + f"/rank{{rank}}_rot.npy", tr.seed["rot"])
    """))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
                           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), str(script)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["last"] == r1["last"] == "Finished"
    assert r0["seed_steps"] > 0 and r1["seed_steps"] == 0   # the search ran on rank 0 only
    with np.load(tmp_path / "two" / "checkpoints" / "seed.npz") as f:
        rot2, pos2 = f["rot"], f["pos"]
    with np.load(tmp_path / "one" / "checkpoints" / "seed.npz") as f:
        rot1, pos1 = f["rot"], f["pos"]
    assert np.array_equal(pos1, pos2) and len(pos2) == 96
    assert np.allclose(rot1, rot2, atol=1e-5)
    assert np.array_equal(np.load(tmp_path / "rank0_rot.npy"), np.load(tmp_path / "rank1_rot.npy"))
