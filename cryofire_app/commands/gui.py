"""Open napari with the cryoFIRE docks (Train, Loss, Latent space, Viewing directions, Open run).

  cryofire gui                    the docks, nothing loaded
  cryofire gui --demo             also load the sample (two-state 70S ribosome particles simulated from the
                                  bundled map) and start training on it (small box, CPU friendly)
  cryofire gui --run OUTDIR       open a finished or running output folder for exploring
  cryofire gui FILE ...           open maps / particle stacks (.mrc, .mrcs, .map) as layers

Needs a display (on a headless machine run it under `xvfb-run`, or use `cryofire demo` for the headless pipeline).
"""
from __future__ import annotations

import argparse
from typing import Any

PLUGIN = "cryofire-app"
DOCKS = ("Train", "Loss", "Latent space", "Viewing directions", "Open run")

# The --demo run: short enough to watch on a laptop CPU, long enough to see the pose-only phase end and z spread.
DEMO_SETTINGS = dict(num_images=60_000, pose_only_images=20_000, batch_size=32, checkpoint_every=10_000,
                     latents_every=4_000, freq_add_every=2_500)


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="*", help="MRC maps or particle stacks to open as layers")
    parser.add_argument("--demo", action="store_true",
                        help="load the simulated two-state sample and start training on it")
    parser.add_argument("--run", metavar="OUTDIR", help="open this training output folder")
    parser.add_argument("--demo-images", type=int, default=DEMO_SETTINGS["num_images"], metavar="N",
                        help="images to train in the demo (default %(default)s)")


def open_docks(viewer: Any) -> dict[str, Any]:
    """Add every cryoFIRE dock to `viewer` (through the plugin manifest, as the Plugins menu does)."""
    docks = {}
    for name in DOCKS:
        # Open run shares a tab with Train (one is used at a time); the others stack on the right
        _dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, name, tabify=name == "Open run")
        docks[name] = widget
    return docks


def launch(files: list[str] | None = None, demo: bool = False, run: str | None = None,
           demo_images: int = DEMO_SETTINGS["num_images"], viewer: Any = None, **train_overrides: Any):
    """Open the docks in `viewer` (a new napari Viewer by default) and load what was asked; returns (viewer, docks).

    Does not start the Qt event loop. `train_overrides` go into the demo's TrainConfig.
    """
    import napari

    if viewer is None:
        viewer = napari.Viewer(title="cryoFIRE")
    docks = open_docks(viewer)
    for f in files or []:
        viewer.open(f, plugin=PLUGIN)
    if run:
        docks["Open run"].open(run)
    if demo:
        viewer.open_sample(PLUGIN, "two_state_ribosome")
        settings = dict(DEMO_SETTINGS, num_images=int(demo_images), **train_overrides)
        docks["Train"].box.value = 0  # the sample is simulated at a CPU-friendly box already
        docks["Train"].num_images.value = settings.pop("num_images")
        docks["Train"].pose_only.value = settings.pop("pose_only_images")
        docks["Train"].batch.value = settings.pop("batch_size")
        docks["Train"].start(**settings)
    return viewer, docks


def main(args: argparse.Namespace) -> int:
    import napari

    launch(files=args.files, demo=args.demo, run=args.run, demo_images=args.demo_images)
    napari.run()
    return 0
