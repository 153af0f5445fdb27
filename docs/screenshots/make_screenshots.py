"""Re-make the README screenshots headless: `xvfb-run -a -s "-screen 0 1400x1000x24" python docs/screenshots/make_screenshots.py`.

Simulates the plugin's two-state sample, trains briefly with the engine (CPU), then drives a real napari viewer:
Open run, click a particle in the latent scatter (decoded isosurface), PC1 trajectory, a box selection, and saves
the window and each dock as PNG next to this file.

`... make_screenshots.py --run DEMO_OUT/run` uses a finished run instead (e.g. the one `cryofire demo` writes); when
DEMO_OUT/demo_summary.json says the run came out mirrored, "flip hand" is ticked so the pictures show the true hand;
a seeded run's latent scatter is coloured by its seed states (seed_states.npz), k-means clusters otherwise.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def main(work: str = "/tmp/cryofire_screenshots", images: int = 4000, n: int = 2000, box: int = 64,
         run_dir: str | None = None) -> None:
    import napari
    from qtpy.QtWidgets import QApplication

    from cryofire_app.commands.gui import open_docks
    from cryofire_app.gui.sample import simulate_sample
    from cryofire_app.training.config import TrainConfig
    from cryofire_app.training.trainer import Trainer

    work = Path(work)
    flip = False
    if run_dir is not None:
        import json

        run = Path(run_dir)
        particles = Path(TrainConfig.load(run / "config.json").particles)
        summary = run.parent / "demo_summary.json"
        flip = summary.is_file() and bool(json.loads(summary.read_text()).get("maps_mirrored"))
    else:
        data = simulate_sample(work / f"sample{box}", n=n, box=box)
        particles = data / "particles.star"
        run = work / f"run{box}"
    if not (run / "latents.npz").is_file():
        cfg = TrainConfig.of(particles=str(particles), outdir=str(run), num_images=images,
                             pose_only_images=images // 3, batch_size=32, checkpoint_every=images // 2,
                             latents_every=images // 4, num_threads=1, freq_add_every=images // 30)
        if hasattr(cfg, "schedule"):
            cfg.schedule = "amortized"  # the cryoFIRE schedule; quick enough for a picture
        resume = (run / "checkpoints" / "last.pt").is_file()
        for ev in Trainer(cfg, resume=resume).run():
            if type(ev).__name__ != "Step":
                print(type(ev).__name__, flush=True)

    app = QApplication.instance() or QApplication(sys.argv)
    viewer = napari.Viewer(title="cryoFIRE")
    viewer.window.resize(1400, 950)
    docks = open_docks(viewer)

    def pump(seconds: float, until=None) -> None:
        t = time.time()
        while time.time() - t < seconds:
            app.processEvents()
            time.sleep(0.01)
            if until is not None and until():
                return

    docks["Train"].set_particles(particles, outdir=run)
    docks["Open run"].open(run)
    latent = docks["Latent space"]
    pump(60, lambda: latent.analysis is not None)
    # a seeded run (e.g. the demo's) is shown coloured by its seed's states, as the dock opens it; otherwise k-means
    seeded = latent.latents is not None and latent.latents.seed_state is not None
    latent.color_combo.setCurrentText("seed state" if seeded else "k-means cluster")
    latent.render_combo.setCurrentText("mesh (CPU)")
    latent.flip_box.setChecked(flip)
    row = int(np.argsort(latent.scatter.xy[:, 0])[len(latent.scatter.xy) // 2])
    latent.scatter.mark(row)
    latent.on_pick(row)
    pump(60, lambda: "cryofire volume" in viewer.layers)
    viewer.reset_view()
    viewer.camera.angles = (10, -30, 60)
    pump(2)
    xy = latent.scatter.xy
    lo, hi = np.percentile(xy, [5, 95], axis=0)
    latent.scatter.select_polygon(np.array([[lo[0], lo[1]], [(lo[0] + hi[0]) / 2, lo[1]],
                                            [(lo[0] + hi[0]) / 2, hi[1]], [lo[0], hi[1]]]))
    pump(2)
    viewer.window.screenshot(str(HERE / "viewer.png"), canvas_only=False)
    for name, widget in docks.items():
        widget.grab().save(str(HERE / f"dock_{name.lower().replace(' ', '_')}.png"))
    latent.frames_spin.setValue(6)
    latent.run_trajectory()
    pump(120, lambda: "cryofire trajectory" in viewer.layers)
    viewer.layers["cryofire volume"].visible = False
    viewer.dims.set_current_step(0, 3)
    pump(2)
    viewer.screenshot(str(HERE / "pc1_trajectory.png"), canvas_only=True)
    print("written:", sorted(p.name for p in HERE.glob("*.png")))
    viewer.close()


if __name__ == "__main__":
    # optional: images particles box (defaults 4000 2000 64; a loaded 2-core CPU needs ~8 min for the default),
    # or --run RUN_FOLDER
    if len(sys.argv) > 2 and sys.argv[1] == "--run":
        main(run_dir=sys.argv[2])
    else:
        main(images=int(sys.argv[1]) if len(sys.argv) > 1 else 4000,
             n=int(sys.argv[2]) if len(sys.argv) > 2 else 2000, box=int(sys.argv[3]) if len(sys.argv) > 3 else 64)
