"""Analysis of trained runs: `Run(outdir)` (run.py), latent PCA/k-means (latent.py), metrics against ground truth
(metrics.py, which gathers alignment.py, pose_errors.py, conformations.py and resolution.py; evaluate.py), plots
(plots.py), particle-subset export (selection.py).

`Run` is imported lazily so that the light modules (plots, latent) do not pull in torch.
"""
from __future__ import annotations


def __getattr__(name: str):
    if name == "Run":
        from cryofire_app.analysis.run import Run

        return Run
    raise AttributeError(f"module 'cryofire_app.analysis' has no attribute {name!r}")


__all__ = ["Run"]
