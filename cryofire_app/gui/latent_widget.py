"""Latent-space dock: z on a pair of principal axes, coloured by k-means cluster, the ab initio seed's state (a seeded
run's seed_states.npz: the run's state split, any number K >= 2 of states, chosen automatically when a run has it),
the seed's continuous coordinate (chosen automatically when the seed found a continuum, K = 1 with
coordinates, instead of discrete states), density or a ground-truth label.

- Click a point: its z is decoded (worker thread) and shown as an isosurface in the viewer, one layer updated in
  place; a newer click supersedes an older one (`LatestOnly`).
- "PC trajectory": volumes at `n` points along one principal axis (from -span to +span standard deviations of
  z along that axis, through the mean) become one 4-D layer (axis 0 = frame) to scrub or animate.
- Box / lasso: select particles; "Export selection" writes a RELION .star, a cryoSPARC-style index list and a
  cryoDRGN ind.pkl (original particle indices) via the engine's selection writers.
PCA, k-means, trajectories, decoding and the writers are the engine's (`cryofire_app.analysis`, `cryofire_app.io`);
this module only wires them to widgets. The colourings are in latent_colors.py, the worker-thread jobs in
latent_jobs.py, the volume and trajectory controls in latent_volumes.py.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import (
    QButtonGroup,
    QComboBox,
    QFileDialog,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QRadioButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from cryofire_app.gui import engine_api
from cryofire_app.gui.latent_colors import (
    AUTO_MODES,
    CATEGORICAL,
    COLOR_MODES,
    SEED_COORD,
    SEED_STATE,
    UNLABELLED_RGBA,
    categorical_colors,
    coordinate_colors,
    density_colors,
    state_colors,
)
from cryofire_app.gui.latent_jobs import analyze_latents, decode_job, flip_job, preimport_analysis
from cryofire_app.gui.latent_volumes import LatentVolumes
from cryofire_app.gui.scatter import ScatterCanvas
from cryofire_app.gui.session import LatentSet, get_session, stable_label
from cryofire_app.gui.volume_display import VolumeDisplay
from cryofire_app.gui.workers import LatestOnly

__all__ = ["AUTO_MODES", "CATEGORICAL", "COLOR_MODES", "SEED_COORD", "SEED_STATE", "UNLABELLED_RGBA", "LatentWidget",
           "analyze_latents", "categorical_colors", "coordinate_colors", "decode_job", "density_colors", "flip_job",
           "state_colors"]


class LatentWidget(LatentVolumes, QWidget):
    """The Latent-space dock: the scatter of z and its colourings, selection and export here; picking, trajectories
    and the shown volumes in `LatentVolumes`."""

    exported = Signal(object)  # list[Path] written by export_selection

    def __init__(self, napari_viewer: Any = None, parent: QWidget | None = None):
        super().__init__(parent)
        preimport_analysis()
        self.viewer = napari_viewer
        self.session = get_session(napari_viewer) if napari_viewer is not None else None
        self.display = VolumeDisplay(napari_viewer) if napari_viewer is not None else None
        self.latents: LatentSet | None = None
        self.analysis: dict | None = None
        self.picked_row: int | None = None
        self.seed_coords: np.ndarray | None = None   # (n, q) the seed's coordinates per scatter row, NaN = held out
        self.seed_kind: str | None = None            # "discrete" / "continuous" / "homogeneous", None: no seed states
        self._analyzer = LatestOnly(self)
        self._decoder_jobs = LatestOnly(self)
        self._decoder_jobs.busy_changed.connect(self._on_busy)
        self._remesh_jobs: dict[str, LatestOnly] = {}
        self._export_jobs = LatestOnly(self)

        grid = self._build_axis_grid()
        mode_row = self._build_mode_row()
        self._build_scatter()
        vol_row = self._build_volume_row()
        traj_row = self._build_trajectory_row()
        self.export_btn = QPushButton("Export selection…")
        self.export_btn.setToolTip("Write the selected particles as RELION .star, a cryoSPARC index list and a "
                                   "cryoDRGN ind.pkl")
        self.export_btn.clicked.connect(self._export_dialog)
        self.status = QLabel("no latents yet: train, or open a run")
        stable_label(self.status)
        self._assemble(grid, mode_row, vol_row, traj_row)
        if self.session is not None:
            self._follow_session()

    # ---- construction ----------------------------------------------------------------------------------------
    def _build_axis_grid(self) -> QGridLayout:
        """The principal axes shown (x, y), the colouring and k-means' k."""
        self.x_combo, self.y_combo = QComboBox(), QComboBox()
        self.x_combo.setToolTip("Principal axis of z on the horizontal axis")
        self.y_combo.setToolTip("Principal axis of z on the vertical axis")
        self.color_combo = QComboBox()
        self.color_combo.addItems(COLOR_MODES)
        self.color_combo.setToolTip("Colour points by k-means cluster of z; by the ab initio seed's state (seeded "
                                    "runs: their state split, from seed_states.npz; grey = held-out particles the "
                                    "seed did not classify); by the seed's continuous coordinate 1 (viridis; chosen "
                                    "when the seed found a continuous motion rather than discrete states); by local "
                                    "point density; or by a ground-truth label when one is loaded (e.g. the "
                                    "simulated state)")
        self._set_seed_modes(None)
        self.k_spin = QSpinBox()
        self.k_spin.setRange(1, 50)
        self.k_spin.setValue(4)
        self.k_spin.setToolTip("Number of k-means clusters (computed on the full z, not only the two axes shown)")
        for w in (self.x_combo, self.y_combo, self.color_combo):
            w.currentIndexChanged.connect(self._redraw)
        self.k_spin.valueChanged.connect(self._reanalyze)
        grid = QGridLayout()
        grid.addWidget(QLabel("x"), 0, 0)
        grid.addWidget(self.x_combo, 0, 1)
        grid.addWidget(QLabel("y"), 0, 2)
        grid.addWidget(self.y_combo, 0, 3)
        grid.addWidget(QLabel("colour"), 1, 0)
        grid.addWidget(self.color_combo, 1, 1)
        grid.addWidget(QLabel("k"), 1, 2)
        grid.addWidget(self.k_spin, 1, 3)
        return grid

    def _build_mode_row(self) -> QHBoxLayout:
        """pick / box / lasso and "clear"."""
        self.mode_group = QButtonGroup(self)
        mode_row = QHBoxLayout()
        for i, (label, tip) in enumerate([("pick", "Click a point to decode its volume (drag pans, wheel zooms)"),
                                          ("box", "Drag a rectangle to select particles"),
                                          ("lasso", "Draw a free-hand outline to select particles")]):
            b = QRadioButton(label)
            b.setToolTip(tip)
            self.mode_group.addButton(b, i)
            mode_row.addWidget(b)
            if i == 0:
                b.setChecked(True)
        self.mode_group.idClicked.connect(lambda i: self.scatter.set_mode(("pick", "box", "lasso")[i]))
        self.clear_btn = QPushButton("clear")
        self.clear_btn.setToolTip("Clear the selection")
        mode_row.addWidget(self.clear_btn)
        mode_row.addStretch(1)
        return mode_row

    def _build_scatter(self) -> None:
        """The scatter canvas: a click decodes (on_pick), a box/lasso selects."""
        self.scatter = ScatterCanvas(self)
        self.scatter.setMinimumHeight(280)  # stacked docks must not squeeze the plot away
        self.scatter.picked.connect(self.on_pick)
        self.scatter.selection_changed.connect(self._on_selection)
        self.clear_btn.clicked.connect(self.scatter.clear_selection)

    def _assemble(self, grid: QGridLayout, mode_row: QHBoxLayout, vol_row: QHBoxLayout, traj_row: QHBoxLayout) -> None:
        """The dock's layout, top to bottom."""
        lay = QVBoxLayout(self)
        lay.addLayout(grid)
        lay.addLayout(mode_row)
        lay.addWidget(self.scatter, 1)
        lay.addLayout(vol_row)
        lay.addLayout(traj_row)
        lay.addWidget(self.export_btn)
        lay.addWidget(self.status)

    def _follow_session(self) -> None:
        """Latents, labels and resets from the viewer's session; the session's current latents, if any, now."""
        self.session.latents_changed.connect(self.set_latents)
        self.session.labels_changed.connect(self._on_labels)
        self.session.reset.connect(self._clear)
        if self.session.state.latents is not None:
            self.set_latents(self.session.state.latents)

    # ---- latents in ------------------------------------------------------------------------------------------
    def set_latents(self, latents: LatentSet) -> None:
        """New z for the plot (training snapshot or a run's final pass): analysed on a worker, then drawn.

        Latents that carry the seed's states (a seeded run's final pass) make "seed state" available and, when the
        run's seed file has coordinates, "seed coordinate". When the seed's answer changes (another run, or the final
        pass after training snapshots) the colouring follows it, unless the user chose density / ground truth /
        none: "seed state" for K >= 2 discrete states, "seed coordinate" for a continuum (kind "continuous", or
        K = 1 with coordinates), k-means otherwise. Latents without seed states make both unavailable."""
        self.latents = latents
        self.seed_coords, kind = self._seed_info(latents)
        self._set_seed_modes(kind)
        self._reanalyze()

    def _seed_info(self, latents: LatentSet) -> tuple[np.ndarray | None, str | None]:
        """(the seed's coordinates per latents row (n, q) or None, the seed's kind or None without seed states).

        The coordinates come from the LatentSet when it carries them (``seed_coords``/``seed_kind``), else from
        the opened run's seed_states.npz (``session.run``: the run these final latents were read from, checked by
        its labels matching ``latents.seed_state``); a file that cannot be read leaves the states alone."""
        st = latents.seed_state
        if st is None:
            return None, None
        coords = getattr(latents, "seed_coords", None)
        kind = getattr(latents, "seed_kind", None)
        run = self.session.run if self.session is not None else None
        if coords is None and latents.final and run is not None:
            from cryofire_app.gui.engine_api import InputError

            try:
                seeds = run.seed_states
                if seeds is not None and np.array_equal(seeds.labels_for_rows(len(st)), st):
                    coords, kind = seeds.coords_for_rows(len(st)), seeds.kind
            except (InputError, OSError, ValueError):
                pass
        if coords is not None:
            coords = np.asarray(coords, np.float32).reshape(len(st), -1)
            if coords.shape[1] == 0:
                coords = None
        K = int(st.max()) + 1 if len(st) and st.max() >= 0 else 0
        if kind is None:
            kind = "discrete" if K >= 2 else ("continuous" if coords is not None else "homogeneous")
        return coords, kind

    def preferred_mode(self) -> str:
        """The colouring that shows the run's heterogeneity: the seed's states for K >= 2, its coordinate for a
        continuum, else k-means of z."""
        st = self.latents.seed_state if self.latents is not None else None
        if st is None:
            return "k-means cluster"
        if self.seed_coords is not None and (self.seed_kind == "continuous" or int(st.max()) < 1):
            return SEED_COORD
        return SEED_STATE if int(st.max()) >= 1 else "k-means cluster"

    def _set_seed_modes(self, kind: str | None) -> None:
        model = self.color_combo.model()
        has_states = self.latents is not None and self.latents.seed_state is not None
        model.item(COLOR_MODES.index(SEED_STATE)).setEnabled(has_states)
        model.item(COLOR_MODES.index(SEED_COORD)).setEnabled(has_states and self.seed_coords is not None)
        changed = kind != self.seed_kind
        self.seed_kind = kind
        current = self.color_combo.currentText()
        self.color_combo.blockSignals(True)  # the analysis that follows redraws
        if (changed and current in AUTO_MODES) or not model.item(self.color_combo.currentIndex()).isEnabled():
            self.color_combo.setCurrentText(self.preferred_mode())
        self.color_combo.blockSignals(False)

    def _reanalyze(self) -> None:
        if self.latents is None:
            return
        lat = self.latents
        self._analyzer.submit(analyze_latents, lat.z, int(self.k_spin.value()),
                              on_result=lambda res, lat=lat: self._on_analysis(lat, res))

    def _on_analysis(self, lat: LatentSet, res: dict) -> None:
        if lat is not self.latents:
            return
        first = self.analysis is None or self.analysis["coords"].shape[1] != res["coords"].shape[1]
        self.analysis = res
        ncomp = res["coords"].shape[1]
        if first:
            for combo, default in ((self.x_combo, 0), (self.y_combo, min(1, ncomp - 1))):
                combo.blockSignals(True)
                combo.clear()
                combo.addItems([f"PC{i + 1} ({100 * e:.0f}%)" for i, e in enumerate(res["explained"])])
                combo.setCurrentIndex(default)
                combo.blockSignals(False)
            self.pc_spin.setRange(1, ncomp)
        else:
            for combo in (self.x_combo, self.y_combo):
                for i, e in enumerate(res["explained"]):
                    combo.setItemText(i, f"PC{i + 1} ({100 * e:.0f}%)")
        self._redraw(reset_view=True)
        where = "final, all particles" if lat.final else (
            f"{lat.images_seen:,} images seen" if lat.images_seen >= 0 else "")
        states = ""
        if lat.seed_state is not None:
            st = lat.seed_state
            K = int(st.max()) + 1
            held = f" ({int((st < 0).sum()):,} not classified)" if (st < 0).any() else ""
            q = 0 if self.seed_coords is None else self.seed_coords.shape[1]
            if K >= 2:
                states = "; seed states " + "/".join(f"{int((st == j).sum()):,}" for j in range(K)) + held
            else:
                states = (f"; seed: {self.seed_kind or 'one state'}, no discrete states"
                          + (f", {q} coordinate{'s' if q > 1 else ''}" if q else "") + held)
        self.status.setText(f"{len(lat.z):,} particles, z dim {lat.z.shape[1]}" + (f" ({where})" if where else "")
                            + states)

    # ---- drawing ---------------------------------------------------------------------------------------------
    def current_xy(self) -> np.ndarray:
        c = self.analysis["coords"]
        return np.stack([c[:, max(self.x_combo.currentIndex(), 0)], c[:, max(self.y_combo.currentIndex(), 0)]], 1)

    def current_colors(self, xy: np.ndarray) -> np.ndarray:
        mode = self.color_combo.currentText()
        n = len(xy)
        if mode == "k-means cluster":
            return categorical_colors(self.analysis["clusters"])
        if mode == SEED_STATE and self.latents is not None and self.latents.seed_state is not None:
            return state_colors(self.latents.seed_state)
        if mode == SEED_COORD and self.seed_coords is not None and len(self.seed_coords) == n:
            return coordinate_colors(self.seed_coords[:, 0])
        if mode == "density":
            return density_colors(xy)
        if mode == "ground truth":
            lab = self.session.labels_for(self.latents.index) if self.session is not None else None
            if lab is not None:
                return categorical_colors(lab)
        return np.tile(np.array([[0.2, 0.3, 0.6, 0.7]], np.float32), (n, 1))

    def _redraw(self, *_, reset_view: bool = False) -> None:
        if self.analysis is None:
            return
        xy = self.current_xy()
        self.scatter.set_data(xy, self.current_colors(xy), reset_view=True)
        self.scatter.xaxis.axis.axis_label = self.x_combo.currentText().split(" ")[0]
        self.scatter.yaxis.axis.axis_label = self.y_combo.currentText().split(" ")[0]
        self.picked_row = None

    def _on_labels(self, _labels) -> None:
        self._redraw()

    def _clear(self) -> None:
        self.latents = None
        self.analysis = None
        self.seed_coords = None
        self.scatter.set_data(np.zeros((0, 2), np.float32), np.zeros((0, 4), np.float32))
        self.status.setText("waiting for latents")

    # ---- selection -------------------------------------------------------------------------------------------
    def _on_selection(self, rows: np.ndarray) -> None:
        if self.latents is not None:
            self.status.setText(f"{len(rows):,} of {len(self.latents.z):,} particles selected")

    def selected_indices(self) -> np.ndarray:
        """Original particle indices of the selected points."""
        if self.latents is None:
            return np.zeros(0, np.int64)
        return self.latents.index[self.scatter.selected]

    def export_selection(self, prefix: str | Path) -> int:
        """Write the selection via the engine on a worker thread; `exported` is emitted with the written paths.

        Files: <prefix>.ind.pkl, <prefix>.star (original images and CTF, the run's predicted poses, k-means cluster as
        rlnClassNumber), and <prefix>.cs (if the particles came from a .cs) or <prefix>_index.csv. With "flip hand"
        checked the poses are mirrored (F R F), so they match the mirrored maps saved from this dock.
        """
        idx = self.selected_indices()
        if len(idx) == 0:
            raise ValueError("nothing selected: choose 'box' or 'lasso' and drag over the plot")
        rows = self.scatter.selected
        lat = self.latents
        run = self.session.run if self.session is not None else None
        outdir = self.session.state.outdir if self.session is not None else None
        clusters = self.analysis["clusters"][rows] if self.analysis is not None else None
        flip = self.flip_hand

        def job():
            r = run if run is not None else engine_api.open_run_for(outdir)
            rot = None if lat.rot is None else lat.rot[rows]
            if rot is not None and flip:
                rot = engine_api.mirror_rotations(rot)
            return engine_api.export_selection(Path(prefix), idx, rot=rot,
                                               trans=None if lat.trans is None else lat.trans[rows], run=r,
                                               labels=clusters)

        self.status.setText(f"exporting {len(idx):,} particles …")
        return self._export_jobs.submit(job, on_result=self._on_exported, on_error=self._job_failed)

    def _on_exported(self, files: list[Path]) -> None:
        self.status.setText(f"exported {len(self.scatter.selected):,} particles: " +
                            ", ".join(Path(p).name for p in files))
        self.exported.emit([Path(p) for p in files])

    def _export_dialog(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Export selection (file name prefix)", "selection",
                                              "all files (*)")
        if path:
            try:
                self.export_selection(path)
            except (OSError, ValueError) as exc:
                from napari.utils.notifications import show_error

                show_error(f"cryoFIRE: {exc}")

    def keyPressEvent(self, event) -> None:  # noqa: N802 (Qt name)
        if event.key() == Qt.Key_Escape:
            self.scatter.clear_selection()
        super().keyPressEvent(event)
