"""Loss dock: the training loss streaming live (a light QPainter plot, gui/lineplot.py).

x axis: images seen. Top: loss per step (grey) and an exponential moving average (blue), validation loss at
checkpoints (orange dots), the pose-only phase shaded. Bottom: the frequency-marching mask radius (lattice pixels).
Events are appended to numpy buffers in O(1); the curves are redrawn by a timer at most `REDRAW_MS` apart, so the
GUI-thread cost per event is microseconds and per redraw a small data update plus one QPainter pass over curves
peak-decimated to the widget's pixel columns (lineplot.py says why this is not pyqtgraph).

The seeded schedule starts with an ab initio seed that sees no training image for minutes (its Step events count
search rounds, its loss is a noise variance in its own units): a seed row shows its stage (from the trainer's
SeedProgress events) as a bar over the stages, the search round, the noise variance and a running clock,
so the dock visibly moves while the loss curve is still empty.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QCheckBox, QHBoxLayout, QLabel, QProgressBar, QSpinBox, QVBoxLayout, QWidget

from cryofire_app.gui.lineplot import LinePlot
from cryofire_app.gui.session import SEED_STAGE_NAMES, get_session, stable_label

REDRAW_MS = 500


class _Buffer:
    """Growable float64 columns (amortized O(1) append)."""

    def __init__(self, ncols: int, cap: int = 1024):
        self.data = np.empty((cap, ncols))
        self.n = 0

    def append(self, row) -> None:
        if self.n == len(self.data):
            self.data = np.concatenate([self.data, np.empty_like(self.data)])
        self.data[self.n] = row
        self.n += 1

    def view(self) -> np.ndarray:
        return self.data[: self.n]

    def clear(self) -> None:
        self.n = 0


def ema(values: np.ndarray, halflife: float) -> np.ndarray:
    """Exponential moving average with the given half-life in samples (display smoothing)."""
    out = np.empty_like(values)
    if len(values) == 0:
        return out
    a = 1.0 - 0.5 ** (1.0 / max(halflife, 1e-6))
    acc = values[0]
    for i, v in enumerate(values):
        acc = acc + a * (v - acc)
        out[i] = acc
    return out


VERDICT_STYLE = {"converged": ("Reconstruction converged", "#b7e4b0"),
                 "uncertain": ("Reconstruction uncertain", "#ffd98a"),
                 "failed": ("Reconstruction FAILED: the map and poses are not supported by the data", "#f4a3a3")}


class LossWidget(QWidget):
    """Dock widget; `add_step(ev)` / `add_checkpoint(ev)` can also be called directly with engine events."""

    def __init__(self, napari_viewer: Any = None, parent: QWidget | None = None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self._steps = _Buffer(4)  # images_seen, loss, mask_radius, pose_only(0/1)
        self._val = _Buffer(2)  # images_seen, val_loss
        self._smooth_cache = (0, np.empty(0))
        self._dirty = False
        self.redraw_count = 0
        self.seed_steps = 0
        self.seed_stage: str | None = None   # current seed stage while seeding, else None
        self.seed_done = False
        self._seed_t0: float | None = None   # time.monotonic() when the seed began
        self._seed_last = ""                 # round / noise-variance part of the seed text

        self._build_plots()
        row = self._build_controls()
        self._build_seed_row()
        self._build_verdict_banner()
        self._assemble(row)

        self._timer = QTimer(self)
        self._timer.setInterval(REDRAW_MS)
        self._timer.timeout.connect(self.redraw)
        self._timer.start()

        if napari_viewer is not None:
            self._follow_session(get_session(napari_viewer))

    # ---- construction ----------------------------------------------------------------------------------------
    def _build_plots(self) -> None:
        """The loss panel (per step, smoothed, validation; the pose-only region) and the mask-radius panel."""
        self.plot = LinePlot(y_label="loss")
        self.pose_region = self.plot.add_region((255, 200, 0, 60), label="pose-only")
        self.raw_curve = self.plot.add_series((160, 160, 160), 1.0, name="per step")
        self.smooth_curve = self.plot.add_series((31, 119, 180), 2.0, name="smoothed")
        self.val_curve = self.plot.add_series((255, 127, 14), marker=True, name="validation")
        self.plot.setMinimumHeight(160)
        self.mask_plot = LinePlot(y_label="mask r (px)", x_label="images seen")
        self.mask_plot.setMaximumHeight(130)
        self.mask_curve = self.mask_plot.add_series((44, 160, 44), 2.0)

    def _build_controls(self) -> QHBoxLayout:
        """Log scale and smoothing (the EMA's half-life in steps) in one row; the status line."""
        self.log_box = QCheckBox("log scale")
        self.log_box.setToolTip("Show the loss on a logarithmic axis")
        self.log_box.toggled.connect(self.set_log)
        self.smooth_spin = QSpinBox()
        self.smooth_spin.setRange(1, 1000)
        self.smooth_spin.setValue(20)
        self.smooth_spin.setToolTip("Half-life of the moving average, in steps")
        self.smooth_spin.valueChanged.connect(self._invalidate_smooth)
        self.status = QLabel("no training yet")
        stable_label(self.status)
        row = QHBoxLayout()
        row.addWidget(self.log_box)
        row.addWidget(QLabel("smoothing"))
        row.addWidget(self.smooth_spin)
        row.addStretch(1)
        return row

    def _build_seed_row(self) -> None:
        """The ab initio seed's stage bar and text, hidden until a seed runs."""
        self.seed_bar = QProgressBar()
        self.seed_bar.setRange(0, len(SEED_STAGE_NAMES) - 1)
        self.seed_bar.setFormat("ab initio seed: stage %v of %m")
        self.seed_bar.setToolTip("Seeded schedule: explicit ab initio pose search and heterogeneity analysis "
                                 "before the first training image (minutes on a CPU)")
        self.seed_label = QLabel("")
        stable_label(self.seed_label)
        self.seed_bar.setVisible(False)
        self.seed_label.setVisible(False)

    def _build_verdict_banner(self) -> None:
        """The run's self-diagnosis banner, hidden until a Verdict arrives."""
        self.verdict_banner = QLabel("")
        self.verdict_banner.setWordWrap(True)
        self.verdict_banner.setVisible(False)
        self.verdict = None   # "converged" | "uncertain" | "failed" once the run has diagnosed itself

    def _assemble(self, row: QHBoxLayout) -> None:
        """The dock's layout, top to bottom."""
        lay = QVBoxLayout(self)
        lay.addWidget(self.verdict_banner)
        lay.addLayout(row)
        lay.addWidget(self.plot, 3)
        lay.addWidget(self.mask_plot, 1)
        lay.addWidget(self.seed_bar)
        lay.addWidget(self.seed_label)
        lay.addWidget(self.status)

    def _follow_session(self, sess) -> None:
        """Steps, checkpoints, seed progress, verdicts, resets and opened runs from the viewer's session."""
        sess.step.connect(self.add_step)
        sess.checkpoint.connect(self.add_checkpoint)
        sess.progress.connect(self.add_progress)
        sess.verdict.connect(self.show_verdict)
        sess.reset.connect(self.clear)
        sess.run_opened.connect(self.load_run_log)

    # ---- data in ---------------------------------------------------------------------------------------------
    def add_step(self, ev: Any) -> None:
        """Append one Step event (images_seen, loss, mask_radius, phase).

        Steps of the ab initio seed (phase "seed") report a noise variance against search steps, not a loss against
        images seen: they are shown in the status line, not on the loss curve."""
        if str(getattr(ev, "phase", "")) == "seed":
            self.seed_steps += 1
            if self.seed_stage is None and not self.seed_done:  # no stage message seen: still say what runs
                self._seed_begin("abinit")
            self._seed_last = f"round {ev.step} · noise variance {ev.loss:.4g}"
            self._seed_text()
            return
        if self.seed_stage is not None:  # the first training step: the seed is over
            self._seed_end()
        pose_only = 1.0 if str(getattr(ev, "phase", "")).lower().startswith("pose") else 0.0
        self._steps.append((float(ev.images_seen), float(ev.loss), float(ev.mask_radius), pose_only))
        self._dirty = True

    def add_progress(self, ev: Any) -> None:
        """A PhaseChange or SeedProgress event: seed stages drive the seed row; the phase after the seed ends it."""
        from cryofire_app.gui.engine_api import SeedProgress

        if isinstance(ev, SeedProgress):
            self._seed_begin(ev.stage)
        elif ev.phase == "seed":
            self._seed_begin("prepare")
        elif self.seed_stage is not None:
            self._seed_end()

    def _seed_begin(self, stage: str) -> None:
        import time

        if self._seed_t0 is None:
            self._seed_t0 = time.monotonic()
        self.seed_stage = stage
        self.seed_done = False
        stages = list(SEED_STAGE_NAMES)   # in the seed's order (training.events.SEED_STAGES)
        self.seed_bar.setValue(stages.index(stage) if stage in stages else 0)
        self.seed_bar.setVisible(True)
        self.seed_label.setVisible(True)
        self._seed_text()

    def _seed_end(self) -> None:
        import time

        el = 0.0 if self._seed_t0 is None else time.monotonic() - self._seed_t0
        self.seed_stage = None
        self.seed_done = True
        self.seed_bar.setValue(self.seed_bar.maximum())
        self.seed_bar.setVisible(False)
        self.seed_label.setText(f"ab initio seed done in {_fmt_s(el)}; distilling its poses into the encoder")
        self.seed_label.setVisible(True)

    def _seed_text(self) -> None:
        """Seed row text: stage, last round, elapsed time (refreshed by the redraw timer too)."""
        import time

        if self.seed_stage is None:
            return
        el = 0.0 if self._seed_t0 is None else time.monotonic() - self._seed_t0
        name = SEED_STAGE_NAMES.get(self.seed_stage, self.seed_stage)
        txt = f"seeding: {name}" + (f" · {self._seed_last}" if self._seed_last else "") + f" · {_fmt_s(el)}"
        if txt != self.seed_label.text():
            self.seed_label.setText(txt)
            self.status.setText("ab initio seed running: no training images yet (the loss curve starts after it)")

    def show_verdict(self, ev: Any) -> None:
        """Banner with the run's self-diagnosis (a Verdict event or a report.json's fields): green when converged,
        amber when uncertain, red when failed, with the reasons."""
        level = getattr(ev, "verdict", None)
        if level not in VERDICT_STYLE:
            return
        self.verdict = level
        title, colour = VERDICT_STYLE[level]
        reasons = list(getattr(ev, "reasons", None) or [])
        text = f"<b>{title}</b>" + "".join(f"<br>&bull; {r}" for r in reasons)
        rec = (getattr(ev, "checks", None) or {}).get("reconstruction") or getattr(ev, "reconstruction", None)
        if isinstance(rec, dict) and rec.get("res_0.143_A") is not None:
            text += (f"<br>Explicit map: half-map FSC 0.143 at {rec['res_0.143_A']:.1f} A, 0.5 at "
                     f"{rec.get('res_0.5_A') or float('nan'):.1f} A ({rec.get('folder', 'reconstruction/')})")
        self.verdict_banner.setText(text)
        self.verdict_banner.setStyleSheet(f"background-color: {colour}; color: black; padding: 4px; "
                                          "border-radius: 3px;")
        self.verdict_banner.setToolTip("The run's self-diagnosis without ground truth (report.json in the run "
                                       "folder): held-out images scored against the other half's map at their poses "
                                       "versus random poses, and the state split reproduced across halves")
        self.verdict_banner.setVisible(True)

    def add_checkpoint(self, ev: Any) -> None:
        val = getattr(ev, "val_loss", None)
        if val is not None and np.isfinite(val):
            self._val.append((float(ev.images_seen), float(val)))
            self._dirty = True

    def load_run_log(self, run: Any) -> None:
        """Fill the plot from a run folder's log.jsonl (one JSON object per event) and its report.json."""
        import json
        from types import SimpleNamespace

        from cryofire_app.gui.engine_api import RunDir

        self.clear()
        files = RunDir(getattr(run, "outdir", ""))
        if files.report.is_file():
            try:
                self.show_verdict(SimpleNamespace(**json.loads(files.report.read_text())))
            except (json.JSONDecodeError, TypeError, OSError):
                pass   # a damaged report: no banner, the run still opens
        seed_rounds, seed_s = 0, 0.0
        for rec in files.events():
            kind = rec.get("event") or rec.get("type") or rec.get("kind")
            if kind == "Step" and "loss" in rec:
                if rec.get("phase") == "seed":  # a finished seed: summarised below, no live clock
                    seed_rounds, seed_s = seed_rounds + 1, float(rec.get("elapsed_s", 0.0))
                    continue
                self.add_step(SimpleNamespace(**rec))
            elif kind == "Checkpoint":
                self.add_checkpoint(SimpleNamespace(**rec))
        if seed_rounds:
            self.seed_steps = seed_rounds
            self.seed_label.setText(f"ab initio seed: {seed_rounds} search rounds, {_fmt_s(seed_s)}")
            self.seed_label.setVisible(True)
        self.redraw()

    def clear(self) -> None:
        self.verdict = None
        self.verdict_banner.setVisible(False)
        self.seed_stage, self.seed_done, self._seed_t0, self._seed_last = None, False, None, ""
        self.seed_bar.setVisible(False)
        self.seed_label.setVisible(False)
        self._steps.clear()
        self._val.clear()
        self._smooth_cache = (0, np.empty(0))
        self._dirty = True
        self.redraw()

    # ---- drawing ---------------------------------------------------------------------------------------------
    def set_log(self, on: bool) -> None:
        self.plot.setLogMode(y=bool(on))

    def _invalidate_smooth(self) -> None:
        self._smooth_cache = (0, np.empty(0))
        self._dirty = True

    def _smoothed(self, loss: np.ndarray) -> np.ndarray:
        """Incremental EMA: only new samples are processed on each redraw."""
        n0, prev = self._smooth_cache
        if n0 == 0 or n0 > len(loss):
            out = ema(loss, self.smooth_spin.value())
        else:
            a = 1.0 - 0.5 ** (1.0 / self.smooth_spin.value())
            tail = np.empty(len(loss) - n0)
            acc = prev[-1]
            for i, v in enumerate(loss[n0:]):
                acc = acc + a * (v - acc)
                tail[i] = acc
            out = np.concatenate([prev, tail])
        self._smooth_cache = (len(loss), out)
        return out

    def redraw(self) -> None:
        if self.seed_stage is not None:
            self._seed_text()  # the clock runs between the seed's (sometimes minutes-apart) events
        if not self._dirty:
            return
        self._dirty = False
        self.redraw_count += 1
        s = self._steps.view()
        x, loss, radius, pose = s[:, 0], s[:, 1], s[:, 2], s[:, 3]
        # log mode cannot show non-positive values
        ok = np.isfinite(loss) & ((loss > 0) | (not self.log_box.isChecked()))
        self.raw_curve.setData(x[ok], loss[ok])
        self.smooth_curve.setData(x[ok], self._smoothed(loss)[ok] if len(loss) else loss)
        v = self._val.view()
        self.val_curve.setData(v[:, 0], v[:, 1])
        self.mask_curve.setData(x, radius)
        if len(x) and pose.any():
            end = float(x[np.flatnonzero(pose)[-1]])
            self.pose_region.setRegion((0.0, end))
            self.pose_region.setVisible(True)
        else:
            self.pose_region.setVisible(False)
        # both panels share the x axis (images seen)
        self.mask_plot.x_range = self.plot.data_x_range()
        if len(x):
            self.status.setText(f"{int(x[-1]):,} images · loss {loss[-1]:.4g} · mask r {radius[-1]:.1f} px"
                                + (" · pose-only phase" if pose[-1] else ""))

    @property
    def n_points(self) -> int:
        return self._steps.n


def _fmt_s(s: float) -> str:
    s = int(round(s))
    return f"{s // 60} min {s % 60:02d} s" if s >= 60 else f"{s} s"
