"""The latent scatter canvas: click-to-pick with a real (synthesized) Qt mouse event, box and lasso selection."""
from __future__ import annotations

import numpy as np
import pytest
from qtpy.QtCore import QPoint, Qt

from cryofire_app.gui.scatter import ScatterCanvas

pytestmark = pytest.mark.gui


def _canvas(qtbot, n=100_000, seed=0):
    w = ScatterCanvas()
    qtbot.addWidget(w)
    w.resize(500, 450)
    w.show()
    qtbot.waitExposed(w)
    rng = np.random.default_rng(seed)
    xy = rng.normal(size=(n, 2)).astype(np.float32) * [3.0, 0.5]
    cols = np.tile([0.2, 0.4, 0.8, 1.0], (n, 1)).astype(np.float32)
    w.set_data(xy, cols)
    qtbot.wait(50)
    return w, xy


def test_click_picks_nearest_point(qtbot):
    w, xy = _canvas(qtbot)
    target = int(np.argmax(xy[:, 0]))  # an isolated outlier: the nearest point to its own pixel
    pos = w.data_to_canvas(xy[target])
    got = []
    w.picked.connect(got.append)
    qtbot.mouseClick(w.canvas.native, Qt.LeftButton, pos=QPoint(int(round(pos[0])), int(round(pos[1]))))
    qtbot.waitUntil(lambda: len(got) == 1, timeout=2000)
    # the picked point is the nearest one on screen to the clicked pixel (within rounding of the pixel)
    picked_px = w.data_to_canvas(xy[got[0]])
    assert np.hypot(*(picked_px - pos)) <= 1.0
    # a click far from every point picks nothing
    got.clear()
    w.pick_at((2, 2))
    assert w.pick_at((2, 2)) is None


def test_box_and_lasso_selection(qtbot):
    w, xy = _canvas(qtbot, n=5000)
    sel = []
    w.selection_changed.connect(sel.append)
    box = np.array([[0.0, 0.0], [2.0, 0.0], [2.0, 1.0], [0.0, 1.0]])
    rows = w.select_polygon(box)
    inside = (xy[:, 0] > 0) & (xy[:, 0] < 2) & (xy[:, 1] > 0) & (xy[:, 1] < 1)
    assert set(rows.tolist()) == set(np.flatnonzero(inside).tolist())
    assert len(sel) == 1 and len(sel[0]) == inside.sum() > 100

    # a drag in box mode with real mouse events selects the points under the dragged rectangle
    w.set_mode("box")
    a = w.data_to_canvas([-1.0, 0.4])
    b = w.data_to_canvas([1.0, -0.4])
    qtbot.mousePress(w.canvas.native, Qt.LeftButton, pos=QPoint(int(a[0]), int(a[1])))
    for t in np.linspace(0, 1, 6)[1:]:
        p = a + t * (b - a)
        qtbot.mouseMove(w.canvas.native, QPoint(int(p[0]), int(p[1])))
    qtbot.mouseRelease(w.canvas.native, Qt.LeftButton, pos=QPoint(int(b[0]), int(b[1])))
    qtbot.waitUntil(lambda: len(sel) == 2, timeout=2000)
    lo, hi = w.canvas_to_data((int(a[0]), int(b[1]))), w.canvas_to_data((int(b[0]), int(a[1])))
    x0, x1 = sorted([lo[0], hi[0]])
    y0, y1 = sorted([lo[1], hi[1]])
    expect = (xy[:, 0] > x0) & (xy[:, 0] < x1) & (xy[:, 1] > y0) & (xy[:, 1] < y1)
    # the rectangle edges are in pixels: points within a pixel of an edge may go either way
    assert abs(len(sel[1]) - expect.sum()) <= 0.02 * expect.sum() + 5
    assert expect.sum() > 500
