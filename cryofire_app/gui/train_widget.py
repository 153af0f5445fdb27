"""Train dock: choose particles and settings, Start / Pause / Stop the engine's trainer.

The trainer (`cryofire_app.training.Trainer(config).run()`, an event generator) runs in a napari `thread_worker`.
The worker only iterates the generator and yields its events; every widget/layer update happens in the
`yielded` slot on the GUI thread (`_on_event`), which hands events to the viewer's Session (Loss, Latent-space
and Viewing-direction docks listen there). Bad input (an `InputError` from the engine) or a failed run becomes a
`Failed` event and a napari error notification; the worker never raises into the GUI. Stop asks the trainer to
stop between steps: it writes a checkpoint and the final outputs first, so nothing finished is lost.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from magicgui.widgets import ComboBox, Container, FileEdit, Label, PushButton, SpinBox
from qtpy.QtWidgets import QVBoxLayout, QWidget

from cryofire_app.gui.session import SEED_STAGE_NAMES, get_session, stable_label

log = logging.getLogger(__name__)

PARTICLE_FILTER = "*.mrcs *.mrc *.txt *.star *.cs"
PROGRESS_MIN_INTERVAL_S = 1.0  # napari's progress bar repaints synchronously (processEvents) on each update


def train_events(config: Any):
    """Worker-thread generator: build the Trainer, then yield ("trainer", t) followed by its events.

    Any exception becomes a `Failed` event (InputError messages name the file and the problem).
    """
    from cryofire_app.io.errors import InputError
    from cryofire_app.training.events import Failed
    from cryofire_app.training.trainer import Trainer

    try:
        trainer = Trainer(config)
        yield ("trainer", trainer)
        yield from trainer.run()
    except InputError as exc:
        yield Failed(str(exc))
    except Exception as exc:  # a crash in the engine must not take the viewer down
        log.exception("training failed")
        yield Failed(f"{type(exc).__name__}: {exc}")


class TrainWidget(QWidget):
    def __init__(self, napari_viewer: Any = None, parent: QWidget | None = None):
        super().__init__(parent)
        # import the engine here (GUI thread, idle) rather than first in the worker, where a multi-second import
        # competes with the GUI thread for the GIL
        import cryofire_app.analysis.run  # noqa: F401
        import cryofire_app.training.trainer  # noqa: F401
        from cryofire_app.training.config import TrainConfig
        from cryofire_app.training.trainer import SCHEDULES

        self.viewer = napari_viewer
        self.session = get_session(napari_viewer) if napari_viewer is not None else None
        d = TrainConfig()
        self.worker = None
        self.trainer = None
        self.outdir: Path | None = None
        self.events_seen = 0
        self.last_event: Any = None
        self.failed_message: str | None = None
        self._pbar = None
        self._last_progress = 0.0
        self._rate_origin: tuple[int, float] | None = None
        self._seed_stage: str | None = None

        self.particles = FileEdit(label="particles", mode="r", filter=PARTICLE_FILTER,
                                  tooltip="Particle images: an .mrcs/.mrc stack, a .txt list of stacks, a RELION "
                                          ".star or a cryoSPARC .cs file")
        self.ctf = FileEdit(label="CTF (.pkl)", mode="r", filter="*.pkl", value="",
                            tooltip="CTF parameters: leave empty to take them from the .star/.cs; otherwise a "
                                    "cryoDRGN ctf.pkl (N x 9). Empty with a plain .mrcs means no CTF.")
        self.datadir = FileEdit(label="image folder", mode="d", value="",
                                tooltip="Folder the .star/.cs image paths are relative to (empty: next to it)")
        self.outdir_edit = FileEdit(label="output folder", mode="d", value="",
                                    tooltip="Where checkpoints, log.jsonl, pose.pkl, z.pkl and latents.npz go")
        self.schedule = ComboBox(label="schedule", choices=list(SCHEDULES), value=d.schedule,
                                 tooltip="seeded (default): an explicit ab initio pose search and a "
                                         "heterogeneity analysis (minutes on a CPU, before any training image), "
                                         "distilled into the encoder, then a joint fine-tune: converges on a laptop "
                                         "CPU.\n"
                                         "amortized: the paper's pure cryoFIRE schedule (pose-only phase, frequency "
                                         "marching); needs on the order of a million images (a GPU).")
        self.device = ComboBox(label="device", choices=["auto", "cpu", "cuda"], value=d.device,
                               tooltip="auto: a CUDA GPU when torch sees one, else the CPU")
        self.box = SpinBox(label="box (px)", value=0, min=0, max=1024, step=2,
                           tooltip="Training box after Fourier downsampling, even, in pixels. 0: the stack's box, "
                                   "or 128 for larger stacks. A laptop without a GPU: 64; a GPU workstation: 128 or "
                                   "the full box.")
        self.zdim = SpinBox(label="z dimension", value=d.zdim, min=1, max=128,
                            tooltip="Dimension of the conformational latent z (8 is the paper's default)")
        self.num_images = SpinBox(label="images to train", value=d.num_images or 500_000, min=1, max=10**9,
                                  step=1000, tooltip="Total particle images to see (about epochs x particles). "
                                                     "The paper needed ~1.5 million on a GPU.")
        self.pose_only = SpinBox(label="pose-only images", value=d.pose_only_images, min=0, max=10**9, step=1000,
                                 tooltip="amortized schedule only: images in the first, pose-only phase (z ignored): "
                                         "the encoder learns poses against a consensus volume before heterogeneity "
                                         "is switched on. The seeded schedule has no such phase.")
        self.batch = SpinBox(label="batch size", value=d.batch_size, min=1, max=4096,
                             tooltip="Images per optimisation step")
        self.seed = SpinBox(label="seed", value=d.seed, min=0, max=2**31 - 1, tooltip="Random seed (reproducible "
                                                                                       "runs on the CPU)")
        self.start_btn = PushButton(text="Start", tooltip="Start training in the background")
        self.pause_btn = PushButton(text="Pause", tooltip="Pause / resume between steps", enabled=False)
        self.stop_btn = PushButton(text="Stop", tooltip="Stop between steps: a checkpoint and the outputs are "
                                                        "written first", enabled=False)
        self.status = Label(value="idle")
        stable_label(self.status.native)
        buttons = Container(widgets=[self.start_btn, self.pause_btn, self.stop_btn], layout="horizontal",
                            labels=False)
        self.form = Container(widgets=[self.particles, self.ctf, self.datadir, self.outdir_edit, self.schedule,
                                       self.device,
                                       self.box, self.zdim, self.num_images, self.pose_only, self.batch, self.seed,
                                       buttons, self.status])
        self.schedule.changed.connect(self._on_schedule)
        self._on_schedule(self.schedule.value)
        self.start_btn.changed.connect(self.start)
        self.pause_btn.changed.connect(self.toggle_pause)
        self.stop_btn.changed.connect(self.stop)
        lay = QVBoxLayout(self)
        lay.addWidget(self.form.native)
        lay.addStretch(1)
        if napari_viewer is not None:
            napari_viewer.layers.events.inserted.connect(self._on_layer_inserted)
            for layer in napari_viewer.layers:
                self.adopt_layer(layer)

    def _on_layer_inserted(self, event) -> None:
        self.adopt_layer(event.value)

    def adopt_layer(self, layer) -> bool:
        """A layer made by the sample (or the reader) names its particle file: fill the form from it.

        Also loads ground-truth labels (state per particle) into the session for the Latent dock's colouring.
        """
        md = getattr(layer, "metadata", None) or {}
        particles = md.get("cryofire_particles")
        if not particles or self.running:
            return False
        self.particles.value = str(particles)
        if self._path_or_none(self.outdir_edit.value) is None:
            self.outdir_edit.value = str(Path(particles).parent / "cryofire_run")
        labels = md.get("cryofire_labels")
        if labels and self.session is not None:
            import numpy as np

            self.session.set_labels(np.load(labels), "simulated state")
        self.status.value = f"ready: {Path(particles).name}"
        return True

    def _on_schedule(self, value: str) -> None:
        """The pose-only length means something only to the amortized schedule."""
        self.pose_only.enabled = str(value) == "amortized"

    # ---- helpers -------------------------------------------------------------------------------------------------
    @staticmethod
    def _path_or_none(v) -> str | None:
        s = str(v) if v is not None else ""
        return None if s in ("", ".") else s

    def make_config(self, **overrides):
        """A TrainConfig from the form (plus `overrides`, e.g. schedule knobs used by tests and the demo)."""
        from cryofire_app.training.config import TrainConfig

        particles = self._path_or_none(self.particles.value)
        outdir = self._path_or_none(self.outdir_edit.value)
        if outdir is None and particles is not None:
            outdir = str(Path(particles).with_suffix("").parent / (Path(particles).stem + "_cryofire"))
        cfg = TrainConfig(particles=particles or "", outdir=outdir or "", ctf=self._path_or_none(self.ctf.value),
                          datadir=self._path_or_none(self.datadir.value), D=int(self.box.value) or None,
                          zdim=int(self.zdim.value), num_images=int(self.num_images.value),
                          batch_size=int(self.batch.value), pose_only_images=int(self.pose_only.value),
                          schedule=str(self.schedule.value), device=str(self.device.value),
                          seed=int(self.seed.value),
                          # training on the CPU leaves one core to the GUI thread (and the software GL renderer):
                          # with every core busy in torch's thread pool the event loop stalls for 100+ ms at a time
                          num_threads=max(1, (os.cpu_count() or 1) - 1))
        for k, v in overrides.items():
            if not any(f.name == k for f in dataclasses.fields(cfg)):
                raise ValueError(f"unknown training setting {k!r}")
            setattr(cfg, k, v)
        return cfg

    def set_particles(self, path: str | Path, ctf: str | Path | None = None, outdir: str | Path | None = None) -> None:
        self.particles.value = str(path)
        if ctf is not None:
            self.ctf.value = str(ctf)
        if outdir is not None:
            self.outdir_edit.value = str(outdir)

    @property
    def running(self) -> bool:
        return self.worker is not None

    # ---- controls ------------------------------------------------------------------------------------------------
    def start(self, *_, **overrides) -> None:
        """Start training with the form's settings (keyword overrides go into the TrainConfig)."""
        from napari.qt.threading import create_worker
        from napari.utils.notifications import show_error

        if self.running:
            return
        cfg = self.make_config(**overrides)
        if not cfg.particles:
            show_error("cryoFIRE: choose a particle file first")
            self.status.value = "choose a particle file first"
            return
        if not cfg.outdir:
            show_error("cryoFIRE: choose an output folder first")
            return
        from cryofire_app.io.errors import InputError

        try:
            cfg.validate()   # the engine's one check of every setting, before any thread starts
        except InputError as exc:
            show_error(f"cryoFIRE: {exc}")
            self.status.value = f"not started: {exc}"
            return
        self.outdir = Path(cfg.outdir)
        self.failed_message = None
        self.events_seen = 0
        self._rate_origin = None
        self._seed_stage = None
        # the training thread runs Python between torch calls; hand the GIL back to the GUI thread sooner than the
        # default 5 ms so that plot repaints (many short Python calls) are not stretched by GIL waits
        sys.setswitchinterval(0.0005)
        self.trainer = None
        if self.session is not None:
            self.session.begin()
            self.session.state.outdir = str(self.outdir)
        from cryofire_app.gui.workers import ensure_pool_headroom

        ensure_pool_headroom()
        self.worker = create_worker(train_events, cfg, _start_thread=False, _ignore_errors=True)
        self.worker.yielded.connect(self._on_event)
        self.worker.finished.connect(self._on_worker_finished)
        self.worker.errored.connect(self._on_worker_error)
        self._set_running(True)
        self.status.value = f"loading {Path(cfg.particles).name} …"
        self.worker.start()

    def toggle_pause(self, *_) -> None:
        if self.trainer is None:
            return
        if self.trainer.paused:
            self.trainer.resume()
            self.pause_btn.text = "Pause"
            self.status.value = "running"
        else:
            self.trainer.pause()
            self.pause_btn.text = "Resume"
            self.status.value = "paused (between steps)"

    def stop(self, *_) -> None:
        if self.trainer is not None:
            self.trainer.request_stop()
            self.status.value = "stopping: writing a checkpoint and the outputs …"
        elif self.worker is not None:
            self.worker.quit()

    def _set_running(self, running: bool) -> None:
        self.start_btn.enabled = not running
        self.pause_btn.enabled = running
        self.stop_btn.enabled = running
        self.pause_btn.text = "Pause"

    # ---- events (GUI thread) -------------------------------------------------------------------------------------
    def _on_event(self, ev: Any) -> None:
        from napari.utils.notifications import show_error, show_info, show_warning

        if isinstance(ev, tuple) and ev and ev[0] == "trainer":
            self.trainer = ev[1]
            return
        self.events_seen += 1
        self.last_event = ev
        kind = type(ev).__name__
        if self.session is not None:
            self.session.handle_event(ev)
        if kind == "Started":
            self.status.value = f"training on {ev.n_train:,} particles ({ev.n_val:,} held out)"
        elif kind == "Step":
            self._progress(ev)
        elif kind == "Checkpoint":
            self._on_checkpoint(ev)
        elif kind == "SeedProgress":   # seed stages go to the status line and the Loss dock's seed row
            self._seed_stage = ev.stage
            self.status.value = f"seeding: {SEED_STAGE_NAMES.get(ev.stage, ev.stage)} …"
        elif kind == "PhaseChange":
            if ev.phase == "seed":
                self._seed_stage = "prepare"
                self.status.value = f"seeding: {SEED_STAGE_NAMES['prepare']} …"
            elif self._seed_stage is not None:   # the seed is over
                self._seed_stage = None
                self.status.value = "seed done: distilling its poses into the encoder …"
        elif kind == "Message":
            {"error": show_error, "warning": show_warning}.get(ev.level, show_info)(f"cryoFIRE: {ev.text}")
        elif kind == "Verdict":
            note = {"converged": show_info, "uncertain": show_warning, "failed": show_error}[ev.verdict]
            note(f"cryoFIRE: reconstruction {ev.verdict}" + (": " + "; ".join(ev.reasons) if ev.reasons else ""))
        elif kind == "Failed":
            self.failed_message = ev.message
            self.status.value = f"failed: {ev.message}"
            show_error(f"cryoFIRE training failed: {ev.message}")
        elif kind == "Finished":
            self.status.value = (f"{'stopped' if ev.stopped else 'finished'} after {ev.images_seen:,} images; "
                                 f"outputs in {ev.outdir}")
            show_info(f"cryoFIRE: training {'stopped' if ev.stopped else 'finished'}; outputs in {ev.outdir}")
            self._load_final(ev.outdir)

    def _progress(self, ev: Any) -> None:
        from napari.utils import progress

        now = time.monotonic()
        if ev.phase == "seed":
            # the ab initio seed (seeded schedule) counts search steps, not images: say what runs, no image bar yet
            if now - self._last_progress >= PROGRESS_MIN_INTERVAL_S:
                self._last_progress = now
                name = SEED_STAGE_NAMES.get(self._seed_stage or "", "ab initio pose search")
                self.status.value = f"seeding: {name}, round {ev.step} · {_fmt_time(ev.elapsed_s)} elapsed"
            return
        if self._rate_origin is None or self._rate_origin[0] > ev.images_seen:
            self._rate_origin = (int(ev.images_seen), float(ev.elapsed_s))  # rate from the first image step on
        if self._pbar is None:
            self._pbar = progress(total=int(ev.images_total), desc="cryoFIRE training")
        elif now - self._last_progress < PROGRESS_MIN_INTERVAL_S:
            return
        self._last_progress = now
        done = min(int(ev.images_seen), int(ev.images_total))
        self._pbar.update(done - self._pbar.n)
        n0, t0 = self._rate_origin
        rate = (ev.images_seen - n0) / max(ev.elapsed_s - t0, 1e-9)
        left = max(ev.images_total - ev.images_seen, 0) / max(rate, 1e-9)
        self._pbar.set_description(f"cryoFIRE training ({_fmt_time(left)} left)")
        self.status.value = (f"{ev.images_seen:,}/{ev.images_total:,} images · {rate:.0f} img/s · "
                             f"{_fmt_time(left)} left · {ev.phase.replace('_', '-')}")

    def _on_checkpoint(self, ev: Any) -> None:
        """A checkpoint makes volumes decodable: point the session's decoder at this run folder."""
        from cryofire_app.gui.runs import RunDecoder

        if self.session is None or self.outdir is None:
            return
        dec = self.session.state.decoder
        if dec is None or not isinstance(dec.decode, RunDecoder) or Path(dec.outdir) != self.outdir:
            from cryofire_app.gui.session import DecoderSource

            apix = None
            if self.trainer is not None and getattr(self.trainer, "data", None) is not None:
                apix = getattr(self.trainer.data, "apix", None)
            D = int(getattr(self.trainer, "D", 0) or 0)
            self.session.set_decoder(DecoderSource(decode=RunDecoder(self.outdir), apix=float(apix or 1.0), D=D,
                                                   outdir=str(self.outdir), label=self.outdir.name))

    def _load_final(self, outdir: str) -> None:
        """After training: open the run folder (all particles' latents) on a worker, then show it."""
        from napari.qt.threading import create_worker

        from cryofire_app.gui.runs import open_run

        if self.session is None:
            return
        w = create_worker(open_run, outdir, _start_thread=False, _ignore_errors=True)
        w.returned.connect(self._on_final_loaded)
        self._final_worker = w
        w.start()

    def _on_final_loaded(self, opened) -> None:
        self.session.run = opened.run
        self.session.set_decoder(opened.decoder)
        if opened.latents is not None:
            self.session.set_latents(opened.latents)
        self.session.run_opened.emit(opened.run)

    def _on_worker_error(self, exc: BaseException) -> None:
        self.failed_message = str(exc)
        self.status.value = f"failed: {exc}"

    def _on_worker_finished(self) -> None:
        self.worker = None
        self.trainer = None
        self._set_running(False)
        if self._pbar is not None:
            self._pbar.close()
            self._pbar = None
        if self.session is not None:
            self.session.state.training = False


def _fmt_time(s: float) -> str:
    s = int(round(s))
    if s >= 3600:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    if s >= 60:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s} s"
