"""Synthetic test volumes shared by the analysis tests."""
from __future__ import annotations

import numpy as np


def blob_volume(D: int, seed: int, sigma: tuple[float, float] = (1.5, 3.0),
                amplitude: tuple[float, float] | None = None, n_blobs: int = 6) -> np.ndarray:
    """(D, D, D) sum of Gaussian blobs (centres within D/5 of the box centre, widths in px from `sigma`).

    With `amplitude` each blob gets a random weight from that range (drawn after its width)."""
    rng = np.random.default_rng(seed)
    c = np.arange(D) - D // 2
    z, y, x = np.meshgrid(c, c, c, indexing="ij")
    v = np.zeros((D, D, D))
    for _ in range(n_blobs):
        p = rng.uniform(-D / 5, D / 5, 3)
        s = rng.uniform(*sigma)
        a = rng.uniform(*amplitude) if amplitude is not None else 1.0
        v += a * np.exp(-((x - p[0]) ** 2 + (y - p[1]) ** 2 + (z - p[2]) ** 2) / (2 * s * s))
    return v


def simulate_70s(out, fixtures, n: int, snr: float, seed: int, hinge_deg: float = 30.0, max_shift: float = 1.5,
                 box: int = 32) -> dict:
    """A two-state hinge set of the 70S map from ../shared/fixtures (5 A/voxel), simulated with the project's own
    simulator into ``out``: images, ctf rows, true rot / trans (px), labels and the true maps (``gt``)."""
    from cryofire_app.io import read_ctf_pkl, read_mrc, read_pose_pkl
    from cryofire_app.simulate import HingeConfig, SimulationConfig, simulate

    simulate(SimulationConfig(outdir=str(out), n=n, maps=[str(fixtures / "aspire" / "clean70SRibosome_vol_65p.mrc")],
                              apix=5.0, box=box, snr=snr, max_shift_px=max_shift, seed=seed, progress=False,
                              hinge=HingeConfig(steps=2, angle_deg=hinge_deg)))
    rot, trans = read_pose_pkl(out / "poses.pkl")
    return dict(images=read_mrc(out / "particles.mrcs")[0], ctf=read_ctf_pkl(out / "ctf.pkl"), rot=rot,
                trans=trans * box, labels=np.load(out / "labels.npy"),
                gt=[read_mrc(out / f"gt_state_{k}.mrc")[0] for k in (0, 1)], dir=out)
