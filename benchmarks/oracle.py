"""Bayes-oracle state classification of a simulated set: the ceiling for any method's state confusion.

With the TRUE poses, shifts, CTFs and state maps of a ``cryofire_app.simulate`` output folder, every particle's clean
image is rendered once per state with the simulator's own renderer (``simulate._Renderer``: same projector, gridding,
CTF sign and shift convention), and scored against the observed image under the simulation's Gaussian white noise
(``settings.json`` noise_std per pixel):

    log p(y_i | k) = -||y_i - clean_k(i)||^2 / (2 sigma^2)   (+ a constant shared by the states)
    k_MAP(i)       = argmax_k  log p(y_i | k) + log prior_k   (prior = the simulation's true state fractions)

``confusion`` is the misclassified fraction of the MAP labels (no label matching: the oracle knows which map is which);
``expected_error`` = mean(1 - max posterior), a smoother estimate of the same Bayes error. For a continuous hinge the
"states" are the ground-truth maps at the K bin centres, so the oracle is only approximately Bayes-optimal there
(the true conformation varies inside each bin).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np


def state_priors(settings: dict) -> np.ndarray:
    """The true state fractions: ``fractions`` normalised, uniform for a continuous hinge or when not given."""
    k = int(settings["n_states"])
    fr = settings.get("fractions")
    hinge = settings.get("hinge") or {}
    if fr is None or hinge.get("continuous"):
        return np.full(k, 1.0 / k)
    fr = np.asarray(fr, np.float64)
    return fr / fr.sum()


def log_posteriors(resid2: np.ndarray, noise_std: float, priors: np.ndarray) -> np.ndarray:
    """(N, K) normalised log posteriors from squared residuals ``resid2`` (N, K); noise_std 0 (SNR inf) -> a hard
    argmin of the residual (ties shared)."""
    resid2 = np.asarray(resid2, np.float64)
    if noise_std > 0:
        ll = -resid2 / (2.0 * noise_std ** 2)
    else:
        ll = np.where(resid2 <= resid2.min(1, keepdims=True) * (1 + 1e-9) + 1e-30, 0.0, -np.inf)
    with np.errstate(divide="ignore"):
        lp = ll + np.log(np.asarray(priors, np.float64))[None]
    m = lp.max(1, keepdims=True)
    return lp - (m + np.log(np.exp(lp - m).sum(1, keepdims=True)))


def summarize(logpost: np.ndarray, labels: np.ndarray) -> dict:
    """MAP labels' confusion (overall and per true state), the expected Bayes error and the K x K count matrix."""
    labels = np.asarray(labels).reshape(-1)
    k = logpost.shape[1]
    pred = logpost.argmax(1)
    counts = np.zeros((k, k), np.int64)
    np.add.at(counts, (labels, pred), 1)
    per_state = [float(1 - counts[s, s] / counts[s].sum()) if counts[s].sum() else None for s in range(k)]
    return {"confusion": float(np.mean(pred != labels)), "expected_error": float(np.mean(1 - np.exp(logpost.max(1)))),
            "per_state_error": per_state, "counts_true_by_pred": counts.tolist(), "n_images": int(len(labels))}


def bayes_oracle(data_dir: str | Path, max_images: int | None = None, block: int = 64) -> dict:
    """The oracle's confusion on a ``simulate()`` folder (see the module docstring); ``max_images`` caps the cost
    (the first particles)."""
    import torch

    from cryofire_app.io import read_ctf_pkl, read_mrc, read_pose_pkl
    from cryofire_app.simulate import _Params, _Renderer

    data_dir = Path(data_dir)
    settings = json.loads((data_dir / "settings.json").read_text())
    D, apix, K = int(settings["D"]), float(settings["apix"]), int(settings["n_states"])
    images = read_mrc(data_dir / "particles.mrcs")[0]
    n = len(images) if max_images is None else min(len(images), int(max_images))
    rot, trans = read_pose_pkl(data_dir / "poses.pkl")
    ctf = read_ctf_pkl(data_dir / "ctf.pkl")
    labels = np.load(data_dir / "labels.npy")[:n]
    maps = [torch.as_tensor(np.array(read_mrc(data_dir / f"gt_state_{k}.mrc")[0], np.float32)) for k in range(K)]
    params = _Params(labels=np.zeros(n, np.int64), u=None, rot=np.asarray(rot[:n], np.float64),
                     trans_px=np.asarray(trans[:n], np.float64) * D, ctf=np.asarray(ctf[:n], np.float64))
    renderer = _Renderer(maps, None, params, D, apix, int(settings.get("pad", 2)), float(settings.get("bfactor", 0)))
    resid2 = np.zeros((n, K))
    with torch.no_grad():
        for a in range(0, n, block):
            b = min(n, a + block)
            y = torch.as_tensor(np.array(images[a:b], np.float32))
            for k in range(K):
                params.labels[a:b] = k
                resid2[a:b, k] = ((y - renderer.clean(a, b)).double() ** 2).sum((1, 2)).numpy()
    priors = state_priors(settings)
    out = summarize(log_posteriors(resid2, float(settings["noise_std"]), priors), labels)
    out.update(priors=priors.tolist(), noise_std=float(settings["noise_std"]),
               approximate=bool((settings.get("hinge") or {}).get("continuous")))
    out["chance"] = float(1 - priors.max())
    if not math.isfinite(out["expected_error"]):
        out["expected_error"] = None
    return out
