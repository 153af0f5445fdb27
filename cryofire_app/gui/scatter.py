"""A 2-D scatter for up to ~1e6 points on a vispy canvas, with click-to-pick and box / lasso selection.

Why vispy `Markers` in a dock rather than a napari Points layer: the main viewer shows 3-D volumes (and 4-D
trajectories), so the latent scatter needs its own 2-D canvas, and `Markers` updates far faster than pyqtgraph or
matplotlib (docs/decisions/010-gui-painting.md).

Coordinates: `xy` is (n, 2) data coordinates (x to the right, y up). Canvas positions are pixels from the top-left
of the canvas. Picking uses a scipy cKDTree built on axis-normalised coordinates (fast at 1e5 points) and
accepts the nearest point only within `PICK_RADIUS_PX` screen pixels of the click.
"""
from __future__ import annotations

import numpy as np
from matplotlib.path import Path as MplPath
from qtpy.QtCore import Signal
from qtpy.QtWidgets import QVBoxLayout, QWidget
from scipy.spatial import cKDTree
from vispy import scene

PICK_RADIUS_PX = 12.0
CLICK_SLOP_PX = 4.0


class ScatterCanvas(QWidget):
    picked = Signal(int)  # row of the picked point in the current arrays
    selection_changed = Signal(object)  # np.ndarray of selected rows (sorted, int64)

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.canvas = scene.SceneCanvas(keys=None, size=(420, 380), bgcolor="white", parent=self)
        grid = self.canvas.central_widget.add_grid(margin=4)
        self.yaxis = scene.AxisWidget(orientation="left", axis_color="k", text_color="k", tick_color="k",
                                      axis_label="PC2", axis_font_size=8, tick_label_margin=4)
        self.yaxis.width_max = 48
        self.xaxis = scene.AxisWidget(orientation="bottom", axis_color="k", text_color="k", tick_color="k",
                                      axis_label="PC1", axis_font_size=8)
        self.xaxis.height_max = 36
        grid.add_widget(self.yaxis, row=0, col=0)
        grid.add_widget(self.xaxis, row=1, col=1)
        self.view = grid.add_view(row=0, col=1, border_color="grey")
        self.view.camera = scene.PanZoomCamera(aspect=None)
        self.xaxis.link_view(self.view)
        self.yaxis.link_view(self.view)

        self.markers = scene.Markers(parent=self.view.scene)
        self.markers.set_gl_state("translucent", depth_test=False)
        self.highlight = scene.Markers(parent=self.view.scene)
        self.highlight.set_gl_state("translucent", depth_test=False)
        self.highlight.order = -1
        self.outline = scene.Line(parent=self.view.scene, color=(0.85, 0.1, 0.1, 1.0), width=2, method="gl")
        self.outline.order = -2
        self.outline.visible = False
        # vispy computes bounds of every visual: give the markers a (transparent) point before real data arrives
        for m in (self.markers, self.highlight):
            m.set_data(np.zeros((1, 2), np.float32), face_color=(0, 0, 0, 0), size=0)
        self.highlight.visible = False

        # Load every glyph the axes will need on the first paint (when the dock appears), not on the first data
        # update: each new glyph costs a signed-distance-field render, seconds in total on software OpenGL.
        self._glyphs = scene.Text("0123456789.-+eE PC%()x", color=(0, 0, 0, 0), font_size=8, pos=(0, 0),
                                  parent=self.view.scene)

        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.canvas.native)

        self.xy = np.zeros((0, 2), np.float32)
        self.colors = np.zeros((0, 4), np.float32)
        self.selected = np.zeros(0, np.int64)
        self.point_size = 5.0
        self._tree: cKDTree | None = None
        self._norm = np.ones(2)
        self._mode = "pick"  # 'pick' | 'box' | 'lasso'
        self._press: np.ndarray | None = None
        self._path: list[np.ndarray] = []
        self.gl_renderer: str | None = None

        self.canvas.events.mouse_press.connect(self._on_press)
        self.canvas.events.mouse_move.connect(self._on_move)
        self.canvas.events.mouse_release.connect(self._on_release)
        self.canvas.events.draw.connect(self._on_first_draw)

    # ---- GL probe --------------------------------------------------------------------------------------------
    def _on_first_draw(self, event) -> None:
        """Record the OpenGL renderer string (context is current during draw); used to choose mesh vs iso."""
        self.canvas.events.draw.disconnect(self._on_first_draw)
        try:
            from vispy.gloo import gl

            self.gl_renderer = str(gl.glGetParameter(gl.GL_RENDERER))
        except Exception:  # a missing GL function must never break the plot
            self.gl_renderer = ""

    # ---- data ------------------------------------------------------------------------------------------------
    def set_data(self, xy: np.ndarray, colors: np.ndarray, reset_view: bool = True) -> None:
        """Replace all points. xy (n, 2) float, colors (n, 4) RGBA in [0, 1]."""
        self.xy = np.ascontiguousarray(xy, dtype=np.float32)
        self.colors = np.ascontiguousarray(colors, dtype=np.float32)
        n = len(self.xy)
        size = float(np.clip(9.0 - 1.2 * np.log10(max(n, 1)), 2.0, 7.0))
        self.point_size = size
        if n:
            self.markers.set_data(self.xy, face_color=self.colors, edge_width=0, size=size)
        else:
            self.markers.set_data(np.zeros((1, 2), np.float32), face_color=(0, 0, 0, 0), size=0)
        span = np.ptp(self.xy, axis=0) if n else np.ones(2)
        self._norm = np.where(span > 0, span, 1.0)
        self._tree = cKDTree(self.xy / self._norm) if n else None
        self.selected = np.zeros(0, np.int64)
        self._update_highlight(None)
        self.outline.visible = False
        if reset_view and n:
            lo, hi = self.xy.min(0), self.xy.max(0)
            pad = 0.05 * np.where(hi > lo, hi - lo, 1.0)
            self.view.camera.set_range(x=(lo[0] - pad[0], hi[0] + pad[0]), y=(lo[1] - pad[1], hi[1] + pad[1]))
        self.canvas.update()

    def set_colors(self, colors: np.ndarray) -> None:
        self.colors = np.ascontiguousarray(colors, dtype=np.float32)
        if len(self.xy):
            self.markers.set_data(self.xy, face_color=self.colors, edge_width=0, size=self.point_size)
        self.canvas.update()

    # ---- coordinates -----------------------------------------------------------------------------------------
    def canvas_to_data(self, pos) -> np.ndarray:
        tr = self.canvas.scene.node_transform(self.markers)
        return np.asarray(tr.map(np.asarray(pos, dtype=float)[:2]))[:2]

    def data_to_canvas(self, xy) -> np.ndarray:
        tr = self.markers.node_transform(self.canvas.scene)
        return np.asarray(tr.map(np.asarray(xy, dtype=float)[:2]))[:2]

    def pick_at(self, pos) -> int | None:
        """Row of the point nearest to canvas pixel `pos`, or None if none lies within PICK_RADIUS_PX."""
        if self._tree is None:
            return None
        d = self.canvas_to_data(pos)
        _, row = self._tree.query(d / self._norm)
        row = int(row)
        if np.hypot(*(self.data_to_canvas(self.xy[row]) - np.asarray(pos[:2], float))) > PICK_RADIUS_PX:
            return None
        return row

    # ---- selection -------------------------------------------------------------------------------------------
    def set_mode(self, mode: str) -> None:
        if mode not in ("pick", "box", "lasso"):
            raise ValueError(f"unknown scatter mode {mode!r}")
        self._mode = mode
        self.view.camera.interactive = mode == "pick"

    @property
    def mode(self) -> str:
        return self._mode

    def select_polygon(self, vertices: np.ndarray) -> np.ndarray:
        """Select the points inside a polygon given in data coordinates (k, 2); returns the selected rows."""
        vertices = np.asarray(vertices, dtype=float)
        if len(vertices) < 3 or len(self.xy) == 0:
            rows = np.zeros(0, np.int64)
        else:
            rows = np.flatnonzero(MplPath(vertices).contains_points(self.xy)).astype(np.int64)
        closed = np.vstack([vertices, vertices[:1]]) if len(vertices) else np.zeros((0, 2))
        if len(closed) >= 2:
            self.outline.set_data(pos=closed.astype(np.float32))
            self.outline.visible = True
        self.set_selection(rows)
        return rows

    def set_selection(self, rows: np.ndarray) -> None:
        self.selected = np.unique(np.asarray(rows, dtype=np.int64))
        self._update_selection_colors()
        self.selection_changed.emit(self.selected)

    def clear_selection(self) -> None:
        self.outline.visible = False
        self.set_selection(np.zeros(0, np.int64))

    def _update_selection_colors(self) -> None:
        if not len(self.xy):
            return
        if len(self.selected):
            col = self.colors.copy()
            dim = np.ones(len(col), bool)
            dim[self.selected] = False
            col[dim, 3] *= 0.15
            self.markers.set_data(self.xy, face_color=col, edge_width=0, size=self.point_size)
        else:
            self.markers.set_data(self.xy, face_color=self.colors, edge_width=0, size=self.point_size)
        self.canvas.update()

    def _update_highlight(self, row: int | None) -> None:
        if row is None:
            self.highlight.visible = False
        else:
            self.highlight.set_data(self.xy[row:row + 1], face_color=(1, 1, 1, 0), edge_color=(0.9, 0.1, 0.1, 1),
                                    edge_width=2.5, size=16)
            self.highlight.visible = True
        self.canvas.update()

    def mark(self, row: int | None) -> None:
        """Draw a ring around one point (the one whose volume is shown)."""
        self._update_highlight(row)

    # ---- mouse -----------------------------------------------------------------------------------------------
    def _on_press(self, event) -> None:
        if event.button != 1:
            return
        self._press = np.asarray(event.pos[:2], float)
        if self._mode in ("box", "lasso"):
            self._path = [self.canvas_to_data(self._press)]

    def _on_move(self, event) -> None:
        if self._press is None or self._mode == "pick" or not event.is_dragging:
            return
        d = self.canvas_to_data(event.pos)
        if self._mode == "box":
            a = self._path[0]
            poly = np.array([a, [d[0], a[1]], d, [a[0], d[1]], a])
        else:
            self._path.append(d)
            poly = np.array(self._path + [self._path[0]])
        self.outline.set_data(pos=poly.astype(np.float32))
        self.outline.visible = True
        self.canvas.update()

    def _on_release(self, event) -> None:
        if self._press is None or event.button != 1:
            return
        start, self._press = self._press, None
        moved = float(np.hypot(*(np.asarray(event.pos[:2], float) - start)))
        if self._mode == "pick":
            if moved <= CLICK_SLOP_PX:
                row = self.pick_at(start)
                if row is not None:
                    self.mark(row)
                    self.picked.emit(row)
            return
        if moved <= CLICK_SLOP_PX:
            self.clear_selection()
            return
        end = self.canvas_to_data(event.pos)
        if self._mode == "box":
            a = self._path[0]
            poly = np.array([a, [end[0], a[1]], end, [a[0], end[1]]])
        else:
            poly = np.array(self._path + [end])
        self._path = []
        self.select_polygon(poly)
