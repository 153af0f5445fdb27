"""Data-parallel training under torchrun (gloo, 2 CPU processes) matches one process on the same global batch."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import torch

from cryofire_app.training import Step, Trainer
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
