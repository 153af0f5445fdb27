"""The Latent-space dock's volumes: decode the picked point or a PC trajectory (worker threads), show them as an
isosurface in the viewer (one layer each, updated in place), re-threshold, flip the hand, save the shown map.

`LatentVolumes` is a mixin of `LatentWidget` (cryofire_app.gui.latent_widget): it uses the dock's viewer,
session, display (VolumeDisplay), latents, scatter, status label and its `LatestOnly` job queues
(`_decoder_jobs`, `_remesh_jobs`). Isosurface levels are in standard deviations above a volume's mean density,
trajectories run from -span to +span standard deviations of z along one principal axis, voxel sizes are in Å.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from qtpy.QtWidgets import QCheckBox, QComboBox, QDoubleSpinBox, QFileDialog, QHBoxLayout, QLabel, QPushButton, QSpinBox

from cryofire_app.gui import engine_api
from cryofire_app.gui.latent_jobs import decode_job, flip_job
from cryofire_app.gui.session import DecoderSource
from cryofire_app.gui.volume_display import is_software_gl, prepare
from cryofire_app.gui.workers import LatestOnly


class LatentVolumes:
    """Volume and trajectory controls and the decoding behind them (mixed into LatentWidget)."""

    def _build_volume_row(self) -> QHBoxLayout:
        """iso σ, render mode, flip hand, Save map."""
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
        vol_row = QHBoxLayout()
        vol_row.addWidget(QLabel("iso σ"))
        vol_row.addWidget(self.iso_spin)
        vol_row.addWidget(self.render_combo)
        vol_row.addWidget(self.flip_box)
        vol_row.addWidget(self.save_btn)
        return vol_row

    def _build_trajectory_row(self) -> QHBoxLayout:
        """PC, number of frames, span (standard deviations), "PC trajectory"."""
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
        traj_row = QHBoxLayout()
        traj_row.addWidget(QLabel("PC"))
        traj_row.addWidget(self.pc_spin)
        traj_row.addWidget(QLabel("n"))
        traj_row.addWidget(self.frames_spin)
        traj_row.addWidget(QLabel("±"))
        traj_row.addWidget(self.span_spin)
        traj_row.addWidget(self.traj_btn)
        return traj_row

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
        from cryofire_app.gui.engine_api import write_mrc
        from cryofire_app.gui.volume_display import VOLUME_LAYER

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
