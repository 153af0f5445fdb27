"""One shared state object per napari viewer, through which the cryoFIRE docks talk to each other.

The Train and Open-run docks put data in (training events, a finished run); the Loss, Latent-space and
Viewing-direction docks listen to its Qt signals. Everything here runs on the GUI thread: worker threads never
call into a Session, they yield events that a GUI-thread slot hands to `Session.handle_event`.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
from qtpy.QtCore import QObject, Signal


@dataclass
class LatentSet:
    """Per-particle results shown by the plots.

    index: (n,) row of each particle in the user's original metadata (0-based); z: (n, d) latent coordinates;
    rot: (n, 3, 3) cryoDRGN rotations (row 3 = viewing direction in the volume frame) or None;
    trans: (n, 2) pixels or None; images_seen: training progress when these were computed (-1: final pass);
    seed_state: (n,) the ab initio seed's state label of each particle (a seeded run's seed_states.npz; -1 for
    particles the seed did not classify) or None.
    """

    index: np.ndarray
    z: np.ndarray
    rot: np.ndarray | None = None
    trans: np.ndarray | None = None
    images_seen: int = -1
    final: bool = False
    seed_state: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.index = np.asarray(self.index, dtype=np.int64)
        self.z = np.asarray(self.z, dtype=np.float32)
        if self.z.ndim == 1:
            self.z = self.z[:, None]
        if len(self.index) != len(self.z):
            raise ValueError(f"latents: {len(self.index)} indices but {len(self.z)} z rows")
        if self.seed_state is not None:
            self.seed_state = np.asarray(self.seed_state, dtype=np.int64).reshape(-1)
            if len(self.seed_state) != len(self.z):
                raise ValueError(f"latents: {len(self.seed_state)} seed states but {len(self.z)} z rows")


@dataclass
class DecoderSource:
    """Something that turns z (n, d) into real-space volumes (n, D, D, D) float32, with voxel size apix (A/px).

    `decode` is called on a worker thread; it must not touch Qt. `outdir` is the run folder when there is one.
    """

    decode: Callable[[np.ndarray], np.ndarray]
    apix: float
    D: int
    outdir: Any = None
    label: str = ""


@dataclass
class SessionState:
    latents: LatentSet | None = None
    decoder: DecoderSource | None = None
    labels: np.ndarray | None = None  # ground-truth label per original particle index, when known
    label_name: str = ""
    outdir: Any = None
    training: bool = False
    history: list = field(default_factory=list)


class Session(QObject):
    """Signals carry plain Python objects; slots run on the GUI thread."""

    started = Signal(object)  # training Started event
    step = Signal(object)  # training Step event
    checkpoint = Signal(object)  # training Checkpoint event
    finished = Signal(object)  # training Finished event, or None after a failure
    message = Signal(object)  # training Message event (for people: notifications)
    progress = Signal(object)  # training PhaseChange or SeedProgress event
    verdict = Signal(object)  # training Verdict event: the run's self-diagnosis
    latents_changed = Signal(object)  # LatentSet
    decoder_changed = Signal(object)  # DecoderSource | None
    labels_changed = Signal(object)  # (labels array, name) or None
    run_opened = Signal(object)  # the engine's Run object
    reset = Signal()  # a new run or training session begins: plots clear

    def __init__(self) -> None:
        super().__init__()
        self.state = SessionState()
        self.run = None  # last opened cryofire_app.analysis.Run

    # ---- inputs -------------------------------------------------------------------------------------------
    def begin(self) -> None:
        """A new training run starts: forget the previous plots and decoder."""
        self.state.latents = None
        self.state.decoder = None
        self.state.training = True
        self.reset.emit()

    def set_latents(self, latents: LatentSet) -> None:
        self.state.latents = latents
        self.latents_changed.emit(latents)

    def set_decoder(self, decoder: DecoderSource | None) -> None:
        self.state.decoder = decoder
        self.decoder_changed.emit(decoder)

    def set_labels(self, labels: np.ndarray | None, name: str = "label") -> None:
        """Ground-truth labels indexed by the particle's original index (e.g. the simulated state)."""
        self.state.labels = None if labels is None else np.asarray(labels)
        self.state.label_name = name
        self.labels_changed.emit(None if labels is None else (self.state.labels, name))

    def labels_for(self, index: np.ndarray) -> np.ndarray | None:
        lab = self.state.labels
        if lab is None or len(index) == 0 or int(np.max(index)) >= len(lab):
            return None
        return lab[index]

    def handle_event(self, ev: Any) -> None:
        """Route one training event (cryofire_app.training.events) to the matching signal."""
        from cryofire_app.gui import engine_api as api

        if isinstance(ev, api.Latents):
            self.set_latents(LatentSet(index=ev.index, z=ev.z, rot=ev.rot, trans=ev.trans,
                                       images_seen=int(ev.images_seen)))
            return
        if isinstance(ev, (api.Finished, api.Failed)):
            self.state.training = False
        signals = {api.Started: self.started, api.Step: self.step, api.Checkpoint: self.checkpoint,
                   api.Message: self.message, api.PhaseChange: self.progress, api.SeedProgress: self.progress,
                   api.Verdict: self.verdict, api.Finished: self.finished, api.Failed: self.finished}
        signal = signals.get(type(ev))
        if signal is not None:
            signal.emit(ev)


SEED_STAGE_NAMES = {"prepare": "preparing the images", "abinit": "ab initio EM at a small box",
                    "global": "exhaustive pose search", "local": "local pose refinement, growing box",
                    "hetero": "heterogeneity (states or a continuum)", "done": "finishing"}


def stable_label(label) -> None:
    """Keep a status QLabel from resizing its dock when its text changes.

    A label that grows with its text re-lays out the main window, which resizes (and re-renders) the napari canvas on
    every status update (docs/decisions/010-gui-painting.md). Ignored horizontal size policy + elision-free single
    line keeps layout fixed.
    """
    from qtpy.QtWidgets import QSizePolicy

    label.setWordWrap(False)
    label.setSizePolicy(QSizePolicy.Ignored, QSizePolicy.Fixed)
    label.setMinimumWidth(10)


_SESSIONS: "weakref.WeakKeyDictionary[Any, Session]" = weakref.WeakKeyDictionary()


def _unwrap(viewer: Any) -> Any:
    """Widgets opened from the manifest receive napari's PublicOnlyProxy; key sessions on the real viewer."""
    return getattr(viewer, "__wrapped__", viewer)


def get_session(viewer: Any) -> Session:
    """The Session of this viewer (created on first use)."""
    key = _unwrap(viewer)
    sess = _SESSIONS.get(key)
    if sess is None:
        sess = Session()
        _SESSIONS[key] = sess
    return sess
