"""A finished ``accuracy.py --issue5`` work folder as the encoder benchmarks read it: the run, its seed, its splits.

Imported after ``report`` (which puts the project root on sys.path).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class Workdir:
    """``path/run`` (a finished seeded run), ``path/train_data`` and ``path/test_data`` (particles.star, poses.pkl)."""

    path: Path

    def __post_init__(self):
        import numpy as np

        from cryofire_app.analysis.run import Run

        self.path = Path(self.path)
        self.run = Run(self.path / "run")
        self.ck = self.run.checkpoint
        self.D, self.sign = int(self.ck["D"]), float(self.ck["data_sign"])
        with np.load(self.path / "run" / "checkpoints" / "seed.npz") as f:
            self.seed = {k: f[k] for k in ("volume", "pos", "rot", "trans")}

    def data(self, split: str = "train_data"):
        """The split's particles at the run's box, window and normalisation (training.dataset.ParticleData)."""
        from cryofire_app.io import load_particles
        from cryofire_app.training.dataset import ParticleData

        cfg = self.run.config
        d = ParticleData(load_particles(str(self.path / split / "particles.star")), self.D, cfg.window_r_in,
                         cfg.window_r_out)
        d.prep.sigma_real, d.prep.sigma_ht = float(self.ck["sigma_real"]), float(self.ck["sigma_ht"])
        return d

    def renderer(self, train):
        """The seed map's synthetic-image renderer fitted on ``train`` (this run's training split), as the trainer
        does."""
        from cryofire_app.training.synthetic import SeedRenderer

        sd = self.seed
        return SeedRenderer.fit(sd["volume"], train, sd["pos"], sd["rot"], sd["trans"], sign=self.sign)

    def pose_rows(self, train, test) -> dict:
        """What the probes train and test on: the seed's particle positions ``pos``, poses ``rot`` / ``trans`` (torch,
        px), the training images ``y_train`` at ``pos`` and all held-out images ``y_test`` (real space, positive
        density), and the held-out true rotations ``gt`` (numpy)."""
        import numpy as np
        import torch

        from cryofire_app.io import read_pose_pkl

        pos = np.asarray(self.seed["pos"])
        return {"pos": pos, "rot": torch.as_tensor(self.seed["rot"]).float(),
                "trans": torch.as_tensor(self.seed["trans"]).float(),
                "y_train": train.load(pos, with_Y=False).y_real * self.sign,
                "y_test": test.load(np.arange(test.N), with_Y=False).y_real * self.sign,
                "gt": read_pose_pkl(str(self.path / "test_data" / "poses.pkl"))[0]}


def train_rows(params, cfg, rows: int, per_step: int, loss_at, evaluate, fractions) -> list[dict]:
    """The probes' training loop: Adam (lr 1e-3 times the trainer's distill decay over ``rows``) on ``params``;
    ``loss_at(width)`` draws one step's rows (``per_step`` of them) and returns their mean loss at the trainer's grid
    target width; ``evaluate(rows_seen, training_s)`` -> a table row, at each of ``fractions`` of the rows and at the
    end. Returns the table."""
    import time

    import torch

    from cryofire_app.training.schedule import distill_lr_factor, grid_width_at

    opt = torch.optim.Adam(params, lr=1e-3)
    marks = [int(rows * f) for f in fractions]
    table, seen, train_s = [], 0, 0.0
    while seen < rows:
        t0 = time.perf_counter()
        for g in opt.param_groups:
            g["lr"] = 1e-3 * distill_lr_factor(cfg, seen, rows)
        loss = loss_at(grid_width_at(cfg, seen, rows))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        seen += per_step
        train_s += time.perf_counter() - t0
        if (marks and seen >= marks[0]) or seen >= rows:
            marks = [m for m in marks if m > seen]
            table.append(evaluate(seen, train_s))
    return table
