"""A small line plot drawn with one QPainter pass (no scene graph).

Why not pyqtgraph here: while training runs in a worker thread, every Python call made by the GUI thread has to win
the GIL back from that thread, and pyqtgraph paints through hundreds of them per repaint
(docs/decisions/010-gui-painting.md). This widget paints in a handful of Python calls: curves are decimated with
numpy to at most two points per pixel column before they are handed to Qt.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from qtpy.QtCore import QPointF, QRectF, Qt
from qtpy.QtGui import QColor, QFont, QPainter, QPen, QPolygonF
from qtpy.QtWidgets import QWidget


class Series:
    """One curve (pen) or scatter (marker) of a LinePlot; `setData(x, y)` / `getData()` like pyqtgraph's items."""

    def __init__(self, plot: "LinePlot", color, width: float = 1.0, marker: bool = False, name: str = ""):
        self.plot, self.color, self.width, self.marker, self.name = plot, QColor(*color), width, marker, name
        self.x = np.empty(0)
        self.y = np.empty(0)

    def setData(self, x, y) -> None:
        self.x = np.asarray(x, dtype=float)
        self.y = np.asarray(y, dtype=float)
        self.plot.update()

    def getData(self) -> tuple[np.ndarray, np.ndarray]:
        return self.x, self.y


class Region:
    """A shaded x interval (e.g. the pose-only phase) with a label."""

    def __init__(self, plot: "LinePlot", color, label: str = ""):
        self.plot, self.color, self.label = plot, QColor(*color), label
        self.lo, self.hi = 0.0, 0.0
        self.visible = False

    def setRegion(self, bounds) -> None:
        self.lo, self.hi = float(bounds[0]), float(bounds[1])
        self.plot.update()

    def getRegion(self) -> tuple[float, float]:
        return self.lo, self.hi

    def setVisible(self, on: bool) -> None:
        self.visible = bool(on)
        self.plot.update()

    def isVisible(self) -> bool:
        return self.visible


def nice_ticks(lo: float, hi: float, n: int = 5) -> np.ndarray:
    """About n round tick values covering [lo, hi]."""
    span = hi - lo
    if not np.isfinite(span) or span <= 0:
        return np.array([lo])
    raw = span / max(n, 1)
    mag = 10.0 ** math.floor(math.log10(raw))
    step = mag * min((s for s in (1, 2, 5, 10) if s * mag >= raw), default=10)
    return np.arange(math.ceil(lo / step) * step, hi + 0.5 * step, step)


def _fmt(v: float) -> str:
    a = abs(v)
    if a >= 1e4:
        return f"{v / 1000:.0f}k" if a < 1e6 else f"{v / 1e6:.3g}M"
    return f"{v:.3g}"


def decimate(x: np.ndarray, y: np.ndarray, n_cols: int) -> tuple[np.ndarray, np.ndarray]:
    """Peak decimation: min and max of y in each of n_cols bins of x (keeps spikes visible)."""
    if len(x) <= 2 * n_cols:
        return x, y
    edges = np.linspace(0, len(x), n_cols + 1).astype(int)
    lo = np.minimum.reduceat(y, edges[:-1])
    hi = np.maximum.reduceat(y, edges[:-1])
    xs = x[edges[:-1]]
    return np.repeat(xs, 2), np.stack([lo, hi], 1).ravel()


class LinePlot(QWidget):
    """x/y plot with optional log y, shaded regions and a legend. Units are whatever the caller's data are."""

    MARGIN = (58, 10, 12, 24)  # left, top, right, bottom (px)

    def __init__(self, y_label: str = "", x_label: str = "", parent: QWidget | None = None):
        super().__init__(parent)
        self.y_label, self.x_label = y_label, x_label
        self.series: list[Series] = []
        self.regions: list[Region] = []
        self.log_y = False
        self.x_range: tuple[float, float] | None = None  # shared x range (set by a linked plot), else from data
        self.paint_count = 0
        self.setMinimumHeight(90)
        self.setAttribute(Qt.WA_OpaquePaintEvent, True)

    def add_series(self, color, width: float = 1.0, marker: bool = False, name: str = "") -> Series:
        s = Series(self, color, width, marker, name)
        self.series.append(s)
        return s

    def add_region(self, color, label: str = "") -> Region:
        r = Region(self, color, label)
        self.regions.append(r)
        return r

    def setLogMode(self, y: bool) -> None:
        self.log_y = bool(y)
        self.update()

    def data_x_range(self) -> tuple[float, float] | None:
        xs = [s.x for s in self.series if len(s.x)]
        if not xs:
            return None
        allx = np.concatenate(xs)
        return float(np.nanmin(allx)), float(np.nanmax(allx))

    def _ys(self, y: np.ndarray) -> np.ndarray:
        if not self.log_y:
            return y
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(y > 0, np.log10(y), np.nan)

    def paintEvent(self, _event) -> None:  # noqa: N802 (Qt API)
        self.paint_count += 1
        p = QPainter(self)
        p.fillRect(self.rect(), QColor(255, 255, 255))
        L, T, R, B = self.MARGIN
        w, h = self.width() - L - R, self.height() - T - B
        if w < 10 or h < 10:
            p.end()
            return
        small = QFont(p.font())
        small.setPointSizeF(max(7.0, small.pointSizeF() * 0.85))
        p.setFont(small)
        xr = self.x_range or self.data_x_range()
        ys = [self._ys(s.y) for s in self.series if len(s.y)]
        ys = [y[np.isfinite(y)] for y in ys]
        ys = [y for y in ys if len(y)]
        if xr is None or not ys:
            p.setPen(QColor(120, 120, 120))
            p.drawText(QRectF(L, T, w, h), Qt.AlignCenter, "no data yet")
            p.end()
            return
        f = _Frame.fit(L, T, w, h, xr, ys)
        self._draw_regions(p, f)
        self._draw_axes(p, f, B)
        self._draw_series(p, f)
        self._draw_labels(p, f, B)
        p.end()

    def _draw_regions(self, p: QPainter, f: "_Frame") -> None:
        """The visible shaded x intervals (clipped to the x range) with their labels."""
        for r in self.regions:
            if r.visible and r.hi > r.lo:
                a, b = float(f.px(max(r.lo, f.x0))), float(f.px(min(r.hi, f.x1)))
                p.fillRect(QRectF(a, f.T, max(b - a, 1.0), f.h), r.color)
                if r.label:
                    p.setPen(r.color.darker(250))
                    p.drawText(QPointF(a + 3, f.T + 12), r.label)

    def _draw_axes(self, p: QPainter, f: "_Frame", B: int) -> None:
        """Grid lines and tick labels (y in the left margin, x in the bottom margin of height B), then the frame."""
        grid = QPen(QColor(225, 225, 225))
        text = QColor(60, 60, 60)
        L, T, w, h = f.L, f.T, f.w, f.h
        for v in nice_ticks(f.y0, f.y1):
            yy = float(f.py(v))
            p.setPen(grid)
            p.drawLine(QPointF(L, yy), QPointF(L + w, yy))
            p.setPen(text)
            p.drawText(QRectF(0, yy - 8, L - 4, 16), Qt.AlignRight | Qt.AlignVCenter,
                       _fmt(10 ** v) if self.log_y else _fmt(v))
        for v in nice_ticks(f.x0, f.x1, 4):
            xx = float(f.px(v))
            p.setPen(grid)
            p.drawLine(QPointF(xx, T), QPointF(xx, T + h))
            p.setPen(text)
            p.drawText(QRectF(xx - 40, T + h + 2, 80, B - 4), Qt.AlignHCenter | Qt.AlignTop, _fmt(v))
        p.setPen(QPen(QColor(90, 90, 90)))
        p.drawRect(QRectF(L, T, w, h))

    def _draw_series(self, p: QPainter, f: "_Frame") -> None:
        """Each series' finite points: markers (3.5 px circles), or a polyline peak-decimated to the pixel columns."""
        for s in self.series:
            if not len(s.x):
                continue
            y = self._ys(s.y)
            ok = np.isfinite(y) & np.isfinite(s.x)
            x, y = s.x[ok], y[ok]
            if s.marker:
                p.setPen(QPen(s.color.darker(130)))
                p.setBrush(s.color)
                for a, b in zip(f.px(x), f.py(y)):
                    p.drawEllipse(QPointF(float(a), float(b)), 3.5, 3.5)
                p.setBrush(Qt.NoBrush)
                continue
            x, y = decimate(x, y, max(int(f.w), 1))
            pen = QPen(s.color)
            pen.setWidthF(s.width)
            p.setPen(pen)
            p.drawPolyline(QPolygonF([QPointF(a, b) for a, b in zip(f.px(x).tolist(), f.py(y).tolist())]))

    def _draw_labels(self, p: QPainter, f: "_Frame", B: int) -> None:
        """The legend of the named series (top right) and the axis labels."""
        text = QColor(60, 60, 60)
        L, T, w, h = f.L, f.T, f.w, f.h
        names = [s for s in self.series if s.name]
        for i, s in enumerate(names):
            yy = T + 12 + 14 * i
            p.setPen(QPen(s.color, 2))
            p.drawLine(QPointF(L + w - 110, yy - 4), QPointF(L + w - 94, yy - 4))
            p.setPen(text)
            p.drawText(QPointF(L + w - 90, yy), s.name)
        p.setPen(text)
        if self.y_label:
            p.drawText(QPointF(4, T + 10), self.y_label + (" (log)" if self.log_y else ""))
        if self.x_label:
            p.drawText(QRectF(L, T + h + 2, w, B - 2), Qt.AlignRight | Qt.AlignBottom, self.x_label)


@dataclass(frozen=True)
class _Frame:
    """The plot area (left L, top T, width w, height h, in widget pixels) and the data ranges it shows (y in log10
    units when the plot is logarithmic)."""
    L: float
    T: float
    w: float
    h: float
    x0: float
    x1: float
    y0: float
    y1: float

    @classmethod
    def fit(cls, L, T, w, h, xr: tuple[float, float], ys: list[np.ndarray]) -> "_Frame":
        """The frame for x range `xr` (an empty one widened to 1) and y padded by 5 % around the finite ys."""
        x0, x1 = xr
        if x1 <= x0:
            x1 = x0 + 1.0
        y0 = float(min(y.min() for y in ys))
        y1 = float(max(y.max() for y in ys))
        pad = 0.05 * (y1 - y0) if y1 > y0 else max(abs(y0) * 0.1, 1e-3)
        return cls(L, T, w, h, x0, x1, y0 - pad, y1 + pad)

    def px(self, x):
        """Data x -> widget pixel column."""
        return self.L + (np.asarray(x, float) - self.x0) / (self.x1 - self.x0) * self.w

    def py(self, y):
        """Data y -> widget pixel row (y up)."""
        return self.T + self.h - (np.asarray(y, float) - self.y0) / (self.y1 - self.y0) * self.h
