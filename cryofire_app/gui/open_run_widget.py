"""Open-run dock: load a finished (or running) output folder and explore it without training.

The folder is opened on a worker thread (`runs.open_run`: the engine's `Run`); the latents, decoder and loss log
then go to the viewer's Session, so the Latent-space, Viewing-direction and Loss docks show the run.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from magicgui.widgets import Container, FileEdit, Label, PushButton
from qtpy.QtWidgets import QVBoxLayout, QWidget

from cryofire_app.gui.runs import OpenedRun, open_run
from cryofire_app.gui.session import get_session, stable_label
from cryofire_app.gui.workers import LatestOnly


class OpenRunWidget(QWidget):
    def __init__(self, napari_viewer: Any = None, parent: QWidget | None = None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.session = get_session(napari_viewer) if napari_viewer is not None else None
        self.opened: OpenedRun | None = None
        self.folder = FileEdit(label="run folder", mode="d", value="",
                               tooltip="Output folder of `cryofire train` (config.json, checkpoints/, latents.npz)")
        self.open_btn = PushButton(text="Open", tooltip="Load the run's latents and newest checkpoint")
        self.status = Label(value="")
        stable_label(self.status.native)
        self.form = Container(widgets=[self.folder, self.open_btn, self.status])
        self.open_btn.changed.connect(lambda *_: self.open(self.folder.value))
        self._jobs = LatestOnly(self)
        lay = QVBoxLayout(self)
        lay.addWidget(self.form.native)
        lay.addStretch(1)

    def open(self, folder: str | Path) -> None:
        """Open `folder` in the background; errors become napari notifications."""
        folder = Path(str(folder))
        self.folder.value = str(folder)
        self.status.value = f"opening {folder.name} …"
        self._jobs.submit(open_run, folder, on_result=self._on_opened, on_error=self._on_error)

    def _on_error(self, exc: BaseException) -> None:
        self.status.value = f"could not open: {exc}"

    def _on_opened(self, opened: OpenedRun) -> None:
        self.opened = opened
        self.status.value = opened.message
        if self.session is None:
            return
        self.session.begin()
        self.session.state.training = False
        self.session.state.outdir = str(opened.run.outdir)
        self.session.run = opened.run
        self.session.set_decoder(opened.decoder)
        if opened.latents is not None:
            self.session.set_latents(opened.latents)
        self.session.run_opened.emit(opened.run)
