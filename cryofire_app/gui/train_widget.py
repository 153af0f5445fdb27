"""Train dock: choose particles and settings, Start / Pause / Stop the engine's trainer.

The trainer (`cryofire_app.training.Trainer(config).run()`, an event generator) runs in a napari `thread_worker`.
The worker only iterates the generator and yields its events; every widget/layer update happens in the
`yielded` slot on the GUI thread (`_on_event`), which hands events to the viewer's Session (Loss, Latent-space
and Viewing-direction docks listen there). Bad input (an `InputError` from the engine) or a failed run becomes a
`Failed` event and a napari error notification; the worker never raises into the GUI. Stop asks the trainer to
stop between steps: it writes a checkpoint and the final outputs first, so nothing finished is lost.
"""
from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

from magicgui.widgets import Container, Label, PushButton
from qtpy.QtWidgets import QVBoxLayout, QWidget

from cryofire_app.gui.session import SEED_STAGE_NAMES, get_session, stable_label
from cryofire_app.gui.train_form import TrainForm

log = logging.getLogger(__name__)

PROGRESS_MIN_INTERVAL_S = 1.0  # napari's progress bar repaints synchronously (processEvents) on each update


def train_events(config: Any):
    """Worker-thread generator: build the Trainer, then yield ("trainer", t) followed by its events.

    Any exception becomes a `Failed` event (InputError messages name the file and the problem).
    """
    from cryofire_app.gui.engine_api import Failed, InputError, Trainer

    try:
        trainer = Trainer(config)
        yield ("trainer", trainer)
        yield from trainer.run()
    except InputError as exc:
        yield Failed(str(exc))
    except Exception as exc:  # a crash in the engine must not take the viewer down
        log.exception("training failed")
        yield Failed(f"{type(exc).__name__}: {exc}")


class TrainWidget(TrainForm, QWidget):
    """The Train dock: the form (TrainForm), Start / Pause / Stop, and the trainer's events on the GUI thread."""

    def __init__(self, napari_viewer: Any = None, parent: QWidget | None = None):
        super().__init__(parent)
        # import the engine here (GUI thread, idle) rather than first in the worker, where a multi-second import
        # competes with the GUI thread for the GIL
        from cryofire_app.gui.engine_api import SCHEDULES, TrainConfig, preload_training

        preload_training()

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

        fields = self._build_settings(d, SCHEDULES)
        buttons = self._build_buttons()
        self.form = Container(widgets=[*fields, buttons, self.status])
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

    def _build_buttons(self) -> Container:
        """Start / Pause / Stop in one row, and the status line below them."""
        self.start_btn = PushButton(text="Start", tooltip="Start training in the background")
        self.pause_btn = PushButton(text="Pause", tooltip="Pause / resume between steps", enabled=False)
        self.stop_btn = PushButton(text="Stop", tooltip="Stop between steps: a checkpoint and the outputs are "
                                                        "written first", enabled=False)
        self.status = Label(value="idle")
        stable_label(self.status.native)
        buttons = Container(widgets=[self.start_btn, self.pause_btn, self.stop_btn], layout="horizontal",
                            labels=False)
        return buttons

    @property
    def running(self) -> bool:
        return self.worker is not None

    # ---- controls ------------------------------------------------------------------------------------------------
    def _not_started(self, exc: Exception) -> None:
        from napari.utils.notifications import show_error

        show_error(f"cryoFIRE: {exc}")
        self.status.value = f"not started: {exc}"

    def start(self, *_, **overrides) -> None:
        """Start training with the form's settings (keyword overrides go into the TrainConfig)."""
        from napari.qt.threading import create_worker
        from napari.utils.notifications import show_error

        from cryofire_app.gui.engine_api import InputError

        if self.running:
            return
        try:
            cfg = self.make_config(**overrides)   # a config checks its settings when made
        except InputError as exc:
            self._not_started(exc)
            return
        if not cfg.particles:
            show_error("cryoFIRE: choose a particle file first")
            self.status.value = "choose a particle file first"
            return
        if not cfg.outdir:
            show_error("cryoFIRE: choose an output folder first")
            return
        try:
            cfg.validate()   # every setting again, and the device, before any thread starts
        except InputError as exc:
            self._not_started(exc)
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
        from cryofire_app.gui import engine_api as api

        if self.session is not None:
            self.session.handle_event(ev)
        if isinstance(ev, api.Started):
            self.status.value = f"training on {ev.n_train:,} particles ({ev.n_val:,} held out)"
        elif isinstance(ev, api.Step):
            self._progress(ev)
        elif isinstance(ev, api.Checkpoint):
            self._on_checkpoint(ev)
        elif isinstance(ev, api.SeedProgress):   # seed stages go to the status line and the Loss dock's seed row
            self._seed_stage = ev.stage
            self.status.value = f"seeding: {SEED_STAGE_NAMES.get(ev.stage, ev.stage)} …"
        elif isinstance(ev, api.PhaseChange):
            if ev.phase == "seed":
                self._seed_stage = "prepare"
                self.status.value = f"seeding: {SEED_STAGE_NAMES['prepare']} …"
            elif self._seed_stage is not None:   # the seed is over
                self._seed_stage = None
                self.status.value = "seed done: distilling its poses into the encoder …"
        elif isinstance(ev, api.Message):
            {"error": show_error, "warning": show_warning}.get(ev.level, show_info)(f"cryoFIRE: {ev.text}")
        elif isinstance(ev, api.Verdict):
            note = {"converged": show_info, "uncertain": show_warning, "failed": show_error}[ev.verdict]
            note(f"cryoFIRE: reconstruction {ev.verdict}" + (": " + "; ".join(ev.reasons) if ev.reasons else ""))
        elif isinstance(ev, api.Failed):
            self.failed_message = ev.message
            self.status.value = f"failed: {ev.message}"
            show_error(f"cryoFIRE training failed: {ev.message}")
        elif isinstance(ev, api.Finished):
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
