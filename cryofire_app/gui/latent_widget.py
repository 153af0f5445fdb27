"""Latent-space dock: z on a pair of principal axes, coloured by k-means cluster, the ab initio seed's state (a seeded
run's seed_states.npz: the run's state split, any number K >= 2 of states, chosen automatically when a run has it),
the seed's continuous coordinate (issue 20: chosen automatically when the seed found a continuum, K = 1 with
coordinates, instead of discrete states), density or a ground-truth label.

- Click a point: its z is decoded (worker thread) and shown as an isosurface in the viewer, one layer updated in
  place; a newer click supersedes an older one (`LatestOnly`).
- "PC trajectory": volumes at `n` points along one principal axis (from -span to +span standard deviations of
  z along that axis, through the mean) become one 4-D layer (axis 0 = frame) to scrub or animate.
- Box / lasso: select particles; "Export selection" writes a RELION .star, a cryoSPARC-style index list and a
  cryoDRGN ind.pkl (original particle indices) via the engine's selection writers.
PCA, k-means, trajectories, decoding and the writers are the engine's (`cryofire_app.analysis`, `cryofire_app.io`);
this module only wires them to widgets.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import (
    QButtonGroup,
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
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
from cryofire_app.gui.scatter import ScatterCanvas
from cryofire_app.gui.session import DecoderSource, LatentSet, get_session, stable_label
from cryofire_app.gui.volume_display import VolumeDisplay, is_software_gl, prepare
from cryofire_app.gui.workers import LatestOnly

CATEGORICAL = np.array([
    [0.122, 0.467, 0.706], [1.000, 0.498, 0.055], [0.173, 0.627, 0.173], [0.839, 0.153, 0.157],
    [0.580, 0.404, 0.741], [0.549, 0.337, 0.294], [0.890, 0.467, 0.761], [0.498, 0.498, 0.498],
    [0.737, 0.741, 0.133], [0.090, 0.745, 0.812]], np.float32)


def categorical_colors(labels: np.ndarray, alpha: float = 0.8) -> np.ndarray:
    _, inv = np.unique(labels, return_inverse=True)
    rgb = CATEGORICAL[inv % len(CATEGORICAL)]
    return np.concatenate([rgb, np.full((len(rgb), 1), alpha, np.float32)], axis=1)


UNLABELLED_RGBA = np.array([0.62, 0.62, 0.62, 0.5], np.float32)


def state_colors(labels: np.ndarray, alpha: float = 0.8) -> np.ndarray:
    """Colour label ``j >= 0`` as k-means cluster ``j`` is coloured (CATEGORICAL[j]); -1 (not classified) grey."""
    lab = np.asarray(labels, np.int64)
    rgb = CATEGORICAL[np.maximum(lab, 0) % len(CATEGORICAL)]
    rgba = np.concatenate([rgb, np.full((len(rgb), 1), alpha, np.float32)], axis=1)
    rgba[lab < 0] = UNLABELLED_RGBA
    return rgba


def coordinate_colors(values: np.ndarray, alpha: float = 0.8) -> np.ndarray:
    """Colour a continuous per-particle value (the seed's coordinate) with viridis between its 2nd and 98th
    percentiles (outliers clipped, so a few extreme particles do not wash out the rest); NaN (held-out particles the
    seed did not see) grey, as unclassified particles are for the seed's states."""
    from vispy.color import get_colormap

    v = np.asarray(values, np.float64).reshape(-1)
    ok = np.isfinite(v)
    rgba = np.tile(UNLABELLED_RGBA, (len(v), 1))
    if ok.any():
        lo, hi = np.percentile(v[ok], [2, 98])
        t = np.clip((v[ok] - lo) / (hi - lo), 0, 1) if hi > lo else np.full(int(ok.sum()), 0.5)
        rgba[ok] = np.asarray(get_colormap("viridis").map(t), np.float32)
        rgba[ok, 3] = alpha
    return rgba


def density_colors(xy: np.ndarray, bins: int = 96, alpha: float = 0.8) -> np.ndarray:
    """Colour each point by the log count of its 2-D histogram bin (a fast stand-in for a KDE), viridis."""
    from vispy.color import get_colormap

    if len(xy) == 0:
        return np.zeros((0, 4), np.float32)
    h, ex, ey = np.histogram2d(xy[:, 0], xy[:, 1], bins=bins)
    ix = np.clip(np.searchsorted(ex, xy[:, 0], side="right") - 1, 0, bins - 1)
    iy = np.clip(np.searchsorted(ey, xy[:, 1], side="right") - 1, 0, bins - 1)
    d = np.log1p(h[ix, iy])
    d = (d - d.min()) / max(float(np.ptp(d)), 1e-12)
    rgba = np.asarray(get_colormap("viridis").map(d), np.float32)
    rgba[:, 3] = alpha
    return rgba


SEED_STATE = "seed state"
SEED_COORD = "seed coordinate"
COLOR_MODES = ["k-means cluster", SEED_STATE, SEED_COORD, "density", "ground truth", "none"]
AUTO_MODES = ("k-means cluster", SEED_STATE, SEED_COORD)   # the colourings the dock may choose itself for a new run

_THREADPOOLS = None  # threadpoolctl controller, created on the GUI thread by _preimport()


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


def _preimport() -> None:
    """Import the analysis stack now, on the GUI thread, while nothing runs.

    Imported lazily inside the first analysis job instead, scikit-learn's import (3 s on a loaded 2-core machine)
    held the GIL/import lock long enough to freeze the GUI for 2-5 s in the middle of training. scikit-learn's own
    cached thread-pool controller is built here too (KMeans builds it on first use otherwise, in the worker).
    """
    global _THREADPOOLS
    import skimage.measure  # noqa: F401
    import sklearn.cluster  # noqa: F401
    import sklearn.decomposition  # noqa: F401

    import cryofire_app.analysis.latent  # noqa: F401
    import cryofire_app.analysis.plots  # noqa: F401

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


class LatentWidget(QWidget):
    exported = Signal(object)  # list[Path] written by export_selection
    def __init__(self, napari_viewer: Any = None, parent: QWidget | None = None):
        super().__init__(parent)
        _preimport()
        self.viewer = napari_viewer
        self.session = get_session(napari_viewer) if napari_viewer is not None else None
        self.display = VolumeDisplay(napari_viewer) if napari_viewer is not None else None
        self.latents: LatentSet | None = None
        self.analysis: dict | None = None
        self.picked_row: int | None = None
        self._analyzer = LatestOnly(self)
        self._decoder_jobs = LatestOnly(self)
        self._decoder_jobs.busy_changed.connect(self._on_busy)
        self._remesh_jobs: dict[str, LatestOnly] = {}
        self._export_jobs = LatestOnly(self)

        # --- plot controls
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
        self.seed_coords: np.ndarray | None = None   # (n, q) the seed's coordinates per scatter row, NaN = held out
        self.seed_kind: str | None = None            # "discrete" / "continuous" / "homogeneous", None: no seed states
        self._set_seed_modes(None)
        self.k_spin = QSpinBox()
        self.k_spin.setRange(1, 50)
        self.k_spin.setValue(4)
        self.k_spin.setToolTip("Number of k-means clusters (computed on the full z, not only the two axes shown)")
        for w in (self.x_combo, self.y_combo, self.color_combo):
            w.currentIndexChanged.connect(self._redraw)
        self.k_spin.valueChanged.connect(self._reanalyze)

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

        self.scatter = ScatterCanvas(self)
        self.scatter.setMinimumHeight(280)  # stacked docks must not squeeze the plot away
        self.scatter.picked.connect(self.on_pick)
        self.scatter.selection_changed.connect(self._on_selection)
        self.clear_btn.clicked.connect(self.scatter.clear_selection)

        # --- volume controls
        self.iso_spin = QDoubleSpinBox()
        self.iso_spin.setRange(-5.0, 20.0)
        self.iso_spin.setSingleStep(0.25)
        self.iso_spin.setValue(2.0)
        self.iso_spin.setToolTip("Isosurface level in standard deviations above the volume's mean density")
        self.iso_spin.valueChanged.connect(self._on_iso_changed)
        self.render_combo = QComboBox()
        self.render_combo.addItems(["auto", "mesh (CPU)", "iso (GPU)"])
        self.render_combo.setToolTip("mesh: marching-cubes surface, fast without a GPU; iso: volume ray casting "
                                     "(Image layer, rendering='iso'), for a GPU. auto picks by the OpenGL renderer.")
        self.flip_box = QCheckBox("flip hand")
        self.flip_box.setToolTip("Show (and save) the mirror image of the decoded volumes. Ab initio cannot tell a "
                                 "map from its mirror image: flip when the map has the wrong hand compared with a "
                                 "known structure. Exported particle poses are mirrored to match (F R F).")
        self.flip_box.toggled.connect(self._on_flip_hand)
        self.save_btn = QPushButton("Save map…")
        self.save_btn.setToolTip("Write the shown volume as an MRC file with its voxel size")
        self.save_btn.clicked.connect(self._save_dialog)

        self.pc_spin = QSpinBox()
        self.pc_spin.setRange(1, 1)
        self.pc_spin.setToolTip("Principal component to walk along")
        self.frames_spin = QSpinBox()
        self.frames_spin.setRange(2, 50)
        self.frames_spin.setValue(10)
        self.frames_spin.setToolTip("Number of volumes along the trajectory")
        self.span_spin = QDoubleSpinBox()
        self.span_spin.setRange(0.1, 5.0)
        self.span_spin.setValue(2.0)
        self.span_spin.setToolTip("Trajectory from -span to +span standard deviations along the PC")
        self.traj_btn = QPushButton("PC trajectory")
        self.traj_btn.setToolTip("Decode volumes along the chosen principal component into one 4-D layer")
        self.traj_btn.clicked.connect(self.run_trajectory)
        self.export_btn = QPushButton("Export selection…")
        self.export_btn.setToolTip("Write the selected particles as RELION .star, a cryoSPARC index list and a "
                                   "cryoDRGN ind.pkl")
        self.export_btn.clicked.connect(self._export_dialog)
        self.status = QLabel("no latents yet: train, or open a run")
        stable_label(self.status)

        grid = QGridLayout()
        grid.addWidget(QLabel("x"), 0, 0)
        grid.addWidget(self.x_combo, 0, 1)
        grid.addWidget(QLabel("y"), 0, 2)
        grid.addWidget(self.y_combo, 0, 3)
        grid.addWidget(QLabel("colour"), 1, 0)
        grid.addWidget(self.color_combo, 1, 1)
        grid.addWidget(QLabel("k"), 1, 2)
        grid.addWidget(self.k_spin, 1, 3)
        vol_row = QHBoxLayout()
        vol_row.addWidget(QLabel("iso σ"))
        vol_row.addWidget(self.iso_spin)
        vol_row.addWidget(self.render_combo)
        vol_row.addWidget(self.flip_box)
        vol_row.addWidget(self.save_btn)
        traj_row = QHBoxLayout()
        traj_row.addWidget(QLabel("PC"))
        traj_row.addWidget(self.pc_spin)
        traj_row.addWidget(QLabel("n"))
        traj_row.addWidget(self.frames_spin)
        traj_row.addWidget(QLabel("±"))
        traj_row.addWidget(self.span_spin)
        traj_row.addWidget(self.traj_btn)
        lay = QVBoxLayout(self)
        lay.addLayout(grid)
        lay.addLayout(mode_row)
        lay.addWidget(self.scatter, 1)
        lay.addLayout(vol_row)
        lay.addLayout(traj_row)
        lay.addWidget(self.export_btn)
        lay.addWidget(self.status)

        if self.session is not None:
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
            from cryofire_app.io.errors import InputError

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

    # ---- volumes ---------------------------------------------------------------------------------------------
    def render_mode(self) -> str:
        choice = self.render_combo.currentText()
        if choice.startswith("mesh"):
            return "mesh"
        if choice.startswith("iso"):
            return "iso"
        return "mesh" if is_software_gl(self.scatter.gl_renderer) else "iso"

    def _decoder(self) -> DecoderSource | None:
        dec = self.session.state.decoder if self.session is not None else None
        if dec is None:
            from napari.utils.notifications import show_warning

            show_warning("cryoFIRE: no decoder yet. Wait for the first checkpoint, or open a finished run.")
        return dec

    def on_pick(self, row: int) -> None:
        """Decode the z of scatter row `row` (a worker), then show it in the volume layer."""
        if self.latents is None:
            return
        dec = self._decoder()
        if dec is None:
            return
        self.picked_row = row
        z = self.latents.z[row:row + 1]
        pidx = int(self.latents.index[row])
        flip = self.flip_hand
        meta = {"z": z[0].tolist(), "particle_index": pidx, "source": str(dec.outdir or dec.label),
                "hand_flipped": flip}
        self.status.setText(f"decoding particle {pidx} …")
        self._decoder_jobs.submit(decode_job, dec, z, float(self.iso_spin.value()), self.render_mode(), flip,
                                  on_result=lambda prep, meta=meta, dec=dec: self._show(prep, dec, meta, False),
                                  on_error=self._job_failed)

    def trajectory_z(self) -> np.ndarray:
        return engine_api.pc_trajectory(self.latents.z, pc=int(self.pc_spin.value()),
                                        n=int(self.frames_spin.value()), span=float(self.span_spin.value()))

    def run_trajectory(self) -> None:
        if self.latents is None:
            return
        dec = self._decoder()
        if dec is None:
            return
        zs = self.trajectory_z()
        flip = self.flip_hand
        meta = {"z": zs.tolist(), "pc": int(self.pc_spin.value()), "source": str(dec.outdir or dec.label),
                "hand_flipped": flip}
        self.status.setText(f"decoding {len(zs)} volumes along PC{self.pc_spin.value()} …")
        self._decoder_jobs.submit(decode_job, dec, zs, float(self.iso_spin.value()), self.render_mode(), flip,
                                  on_result=lambda prep, meta=meta, dec=dec: self._show(prep, dec, meta, True),
                                  on_error=self._job_failed)

    def _show(self, prep, dec: DecoderSource, meta: dict, trajectory: bool) -> None:
        if bool(meta.get("hand_flipped")) != self.flip_hand:  # the box was toggled while decoding: follow it
            prep = prepare(engine_api.mirror_volumes(prep.vols), float(self.iso_spin.value()), prep.mode)
            meta = dict(meta, hand_flipped=self.flip_hand)
        self.display.show(prep, dec.apix, trajectory=trajectory, metadata=meta)
        hand = " (hand flipped)" if meta.get("hand_flipped") else ""
        if trajectory:
            self.status.setText(f"PC{meta['pc']} trajectory: {len(prep.vols)} volumes (slider: frame){hand}")
        else:
            self.status.setText(f"particle {meta['particle_index']}: volume {prep.vols.shape[1]}^3 at "
                                f"{dec.apix:.3g} Å/px{hand}")

    @property
    def flip_hand(self) -> bool:
        return bool(self.flip_box.isChecked())

    def _on_flip_hand(self, on: bool) -> None:
        """Mirror the volume(s) already shown (a worker meshes them), so the layers always match the box."""
        from cryofire_app.gui.volume_display import TRAJECTORY_LAYER, VOLUME_LAYER

        for name, traj in ((VOLUME_LAYER, False), (TRAJECTORY_LAYER, True)):
            layer = next((ly for ly in self.viewer.layers if ly.name == name), None) if self.viewer else None
            if layer is None or bool(layer.metadata.get("hand_flipped")) == bool(on):
                continue
            vols = np.asarray(layer.metadata["volume"])
            apix = float(layer.metadata["apix"])
            meta = {k: v for k, v in layer.metadata.items() if k not in ("volume", "iso_level")}
            meta["hand_flipped"] = bool(on)
            mode = "iso" if hasattr(layer, "iso_threshold") else "mesh"
            jobs = self._remesh_jobs.setdefault(name, LatestOnly(self))
            jobs.submit(flip_job, vols, float(self.iso_spin.value()), mode,
                        on_result=lambda prep, a=apix, m=meta, t=traj: self.display.show(
                            prep, a, trajectory=t, metadata=m),
                        on_error=self._job_failed)
        self.status.setText("hand flipped: volumes are shown mirrored" if on else "hand as reconstructed")

    def _job_failed(self, exc: BaseException) -> None:
        self.status.setText(f"failed: {exc}")

    def _on_busy(self, busy: bool) -> None:
        self.traj_btn.setEnabled(not busy)

    def _on_iso_changed(self, value: float) -> None:
        """Re-threshold the shown volume(s): iso mode sets the layer threshold, mesh mode re-meshes on a worker."""
        from cryofire_app.gui.volume_display import TRAJECTORY_LAYER, VOLUME_LAYER, iso_value

        for name, traj in ((VOLUME_LAYER, False), (TRAJECTORY_LAYER, True)):
            layer = next((ly for ly in self.viewer.layers if ly.name == name), None) if self.viewer else None
            if layer is None:
                continue
            vols = np.asarray(layer.metadata["volume"])
            if hasattr(layer, "iso_threshold"):
                layer.iso_threshold = iso_value(vols if not traj else vols[0], value)
                continue
            apix = float(layer.metadata["apix"])
            meta = {k: v for k, v in layer.metadata.items() if k not in ("volume", "iso_level")}
            jobs = self._remesh_jobs.setdefault(name, LatestOnly(self))
            jobs.submit(prepare, vols, float(value), "mesh",
                                      on_result=lambda prep, a=apix, m=meta, t=traj: self.display.show(
                                          prep, a, trajectory=t, metadata=m))

    def save_map(self, path: str | Path) -> Path:
        from cryofire_app.gui.volume_display import VOLUME_LAYER
        from cryofire_app.io import write_mrc

        layer = next((ly for ly in self.viewer.layers if ly.name == VOLUME_LAYER), None)
        if layer is None:
            raise ValueError("no decoded volume to save: click a point first")
        path = Path(path)
        write_mrc(path, np.asarray(layer.metadata["volume"], np.float32), apix=float(layer.metadata["apix"]))
        return path

    def _save_dialog(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save map", "cryofire_volume.mrc", "MRC (*.mrc *.map)")
        if path:
            try:
                self.save_map(path)
                self.status.setText(f"saved {path}")
            except (OSError, ValueError) as exc:
                from napari.utils.notifications import show_error

                show_error(f"cryoFIRE: {exc}")

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
