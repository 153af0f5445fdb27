"""The Train dock's form: the particle file and the training settings, filled from a sample or reader layer, and
the TrainConfig it makes.

`TrainForm` is a mixin of `TrainWidget` (cryofire_app.gui.train_widget), which supplies `session`, `status` and
`running`.
"""
from __future__ import annotations

import os
from pathlib import Path

from magicgui.widgets import ComboBox, FileEdit, SpinBox

PARTICLE_FILTER = "*.mrcs *.mrc *.txt *.star *.cs"


class TrainForm:
    """The settings fields (magicgui widgets) and what they make (mixed into TrainWidget)."""

    def _build_settings(self, d, schedules) -> list:
        """The settings fields, top to bottom, with the defaults of TrainConfig `d`; `schedules`: the engine's."""
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
        self.schedule = ComboBox(label="schedule", choices=list(schedules), value=d.schedule,
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
        self.pose_only = SpinBox(label="pose-only images", value=d.amortized.pose_only_images, min=0, max=10**9,
                                 step=1000,
                                 tooltip="amortized schedule only: images in the first, pose-only phase (z ignored): "
                                         "the encoder learns poses against a consensus volume before heterogeneity "
                                         "is switched on. The seeded schedule has no such phase.")
        self.batch = SpinBox(label="batch size", value=d.batch_size, min=1, max=4096,
                             tooltip="Images per optimisation step")
        self.seed = SpinBox(label="seed", value=d.seed, min=0, max=2**31 - 1, tooltip="Random seed (reproducible "
                                                                                       "runs on the CPU)")
        return [self.particles, self.ctf, self.datadir, self.outdir_edit, self.schedule, self.device, self.box,
                self.zdim, self.num_images, self.pose_only, self.batch, self.seed]

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

    @staticmethod
    def _path_or_none(v) -> str | None:
        s = str(v) if v is not None else ""
        return None if s in ("", ".") else s

    def make_config(self, **overrides):
        """A TrainConfig from the form (plus `overrides`, e.g. schedule knobs used by tests and the demo)."""
        from cryofire_app.gui.engine_api import TrainConfig

        particles = self._path_or_none(self.particles.value)
        outdir = self._path_or_none(self.outdir_edit.value)
        if outdir is None and particles is not None:
            outdir = str(Path(particles).with_suffix("").parent / (Path(particles).stem + "_cryofire"))
        cfg = TrainConfig.of(particles=particles or "", outdir=outdir or "", ctf=self._path_or_none(self.ctf.value),
                             datadir=self._path_or_none(self.datadir.value), D=int(self.box.value) or None,
                             zdim=int(self.zdim.value), num_images=int(self.num_images.value),
                             batch_size=int(self.batch.value), pose_only_images=int(self.pose_only.value),
                             schedule=str(self.schedule.value), device=str(self.device.value),
                             seed=int(self.seed.value),
                             # training on the CPU leaves one core to the GUI thread (and the software GL renderer):
                             # with every core busy in torch's thread pool the event loop stalls for 100+ ms at a time
                             num_threads=max(1, (os.cpu_count() or 1) - 1))
        for k, v in overrides.items():
            cfg.set(k, v)
        return cfg

    def set_particles(self, path: str | Path, ctf: str | Path | None = None, outdir: str | Path | None = None) -> None:
        self.particles.value = str(path)
        if ctf is not None:
            self.ctf.value = str(ctf)
        if outdir is not None:
            self.outdir_edit.value = str(outdir)
