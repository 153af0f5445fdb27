"""Viewing-directions dock: the distribution of predicted viewing directions (cf. the cryoFIRE paper, figure 4).

The viewing direction of a particle is the third row of its cryoDRGN rotation `rot[2]` (a unit vector in the
volume frame, design.md). It is drawn as a 2-D histogram in an equal-area cylindrical projection: azimuth
atan2(y, x) in degrees on the horizontal axis, sin(elevation) = z on the vertical axis, so every bin covers the
same solid angle and a uniform distribution looks flat. Preferred orientation shows as hot spots; a collapse of
the pose encoder as a few bins holding everything (the "occupied" figure drops).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pyqtgraph as pg
from qtpy.QtWidgets import QHBoxLayout, QLabel, QSpinBox, QVBoxLayout, QWidget

from cryofire_app.gui import engine_api
from cryofire_app.gui.session import LatentSet, get_session, stable_label


def view_histogram(rot: np.ndarray, bins_az: int = 72, bins_z: int = 36) -> np.ndarray:
    """(bins_az, bins_z) counts of viewing directions rot[:, 2, :] over azimuth [-180, 180) x z in [-1, 1]."""
    az, el = engine_api.view_angles(rot)
    h, _, _ = np.histogram2d(az, np.sin(np.radians(el)), bins=(bins_az, bins_z), range=((-180, 180), (-1, 1)))
    return h


class ViewingDirectionsWidget(QWidget):
    def __init__(self, napari_viewer: Any = None, parent: QWidget | None = None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.hist: np.ndarray | None = None
        self.plot = pg.PlotWidget(background="w")
        self.plot.setLabel("bottom", "azimuth (°)")
        self.plot.setLabel("left", "z = sin(elevation)")
        self.plot.setAspectLocked(False)
        self.image = pg.ImageItem()
        self.image.setColorMap(pg.colormap.get("viridis"))
        self.plot.addItem(self.image)
        self.bins_spin = QSpinBox()
        self.bins_spin.setRange(8, 180)
        self.bins_spin.setValue(36)
        self.bins_spin.setToolTip("Number of bins along z (azimuth gets twice as many)")
        self.bins_spin.valueChanged.connect(lambda _: self._redraw())
        self.status = QLabel("no poses yet")
        stable_label(self.status)
        row = QHBoxLayout()
        row.addWidget(QLabel("bins"))
        row.addWidget(self.bins_spin)
        row.addStretch(1)
        lay = QVBoxLayout(self)
        lay.addLayout(row)
        lay.addWidget(self.plot, 1)
        lay.addWidget(self.status)
        self._rot: np.ndarray | None = None
        if napari_viewer is not None:
            sess = get_session(napari_viewer)
            sess.latents_changed.connect(self.set_latents)
            if sess.state.latents is not None:
                self.set_latents(sess.state.latents)

    def set_latents(self, latents: LatentSet) -> None:
        if latents.rot is None:
            return
        self.set_rotations(latents.rot)

    def set_rotations(self, rot: np.ndarray) -> None:
        self._rot = np.asarray(rot)
        self._redraw()

    def _redraw(self) -> None:
        if self._rot is None or len(self._rot) == 0:
            return
        nz = int(self.bins_spin.value())
        h = view_histogram(self._rot, bins_az=2 * nz, bins_z=nz)
        self.hist = h
        self.image.setImage(h, autoLevels=True)
        # map image pixels to (azimuth degrees, z): x from -180 to 180, y from -1 to 1
        self.image.setRect(pg.QtCore.QRectF(-180.0, -1.0, 360.0, 2.0))
        self.plot.setRange(xRange=(-180, 180), yRange=(-1, 1), padding=0.02)
        n = len(self._rot)
        occupied = float((h > 0).mean())
        # the fraction of bins a uniform distribution of n directions would fill (Poisson): 1 - exp(-n / nbins)
        expected = 1.0 - np.exp(-n / h.size)
        top = float(np.sort(h.ravel())[::-1][: max(1, h.size // 100)].sum() / max(n, 1))
        self.status.setText(f"{n:,} particles · {100 * occupied:.0f}% of bins occupied "
                            f"(uniform: {100 * expected:.0f}%) · busiest 1% of bins hold {100 * top:.0f}%")
