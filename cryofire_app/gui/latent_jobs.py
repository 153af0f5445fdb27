"""The Latent-space dock's worker-thread jobs (PCA + k-means of z, decoding and mirroring volumes for display) and
the GUI-thread import of the analysis stack they need. The jobs run on worker threads: they never touch a widget.
"""
from __future__ import annotations

import numpy as np

from cryofire_app.gui import engine_api
from cryofire_app.gui.session import DecoderSource
from cryofire_app.gui.volume_display import prepare

_THREADPOOLS = None  # threadpoolctl controller, created on the GUI thread by preimport_analysis()


def analyze_latents(z: np.ndarray, k: int, seed: int = 0) -> dict:
    """Worker-thread job: PCA coordinates (+ explained variance) and k-means labels of z.

    Runs single-threaded in BLAS/OpenMP: scikit-learn's OpenMP pool spinning next to a training thread (torch has its
    own OpenMP runtime) slowed both by orders of magnitude on 2 cores, and the GUI thread needs a core too.
    The thread-pool controller is made once on the GUI thread: building one scans the loaded libraries under the
    dynamic loader's lock, which deadlocked against the training thread when done here.
    """
    import contextlib

    limit = _THREADPOOLS.limit(limits=1) if _THREADPOOLS is not None else contextlib.nullcontext()
    with limit:
        coords, explained = engine_api.latent_pca(z)
        labels = (engine_api.latent_kmeans(z, k, seed=seed) if k > 1 and len(z) >= k
                  else np.zeros(len(z), np.int64))
    return {"coords": coords, "explained": explained, "clusters": labels, "k": k}


def preimport_analysis() -> None:
    """Import the analysis stack now, on the GUI thread, while nothing runs.

    Imported lazily inside the first analysis job instead, scikit-learn's import (3 s on a loaded 2-core machine)
    held the GIL/import lock long enough to freeze the GUI for 2-5 s in the middle of training. scikit-learn's own
    cached thread-pool controller is built here too (KMeans builds it on first use otherwise, in the worker).
    """
    global _THREADPOOLS
    import skimage.measure  # noqa: F401
    import sklearn.cluster  # noqa: F401
    import sklearn.decomposition  # noqa: F401

    from cryofire_app.gui.engine_api import preload_analysis

    preload_analysis()

    if _THREADPOOLS is None:
        try:
            from sklearn.utils.parallel import _get_threadpool_controller

            _THREADPOOLS = _get_threadpool_controller()
        except ImportError:  # older/newer scikit-learn: our own controller (same scan, still on this thread)
            from threadpoolctl import ThreadpoolController

            _THREADPOOLS = ThreadpoolController()


def decode_job(decoder: DecoderSource, z: np.ndarray, level_sigma: float, mode: str, flip_hand: bool = False):
    """Worker-thread job: decode volumes at z (n, d), mirror them when `flip_hand`, and prepare them for display."""
    vols = decoder.decode(np.asarray(z, np.float32))
    if flip_hand:
        vols = engine_api.mirror_volumes(vols)
    return prepare(vols, level_sigma, mode)


def flip_job(vols: np.ndarray, level_sigma: float, mode: str):
    """Worker-thread job: the shown volume(s) in the other hand, prepared for display."""
    return prepare(engine_api.mirror_volumes(np.asarray(vols, np.float32)), level_sigma, mode)
