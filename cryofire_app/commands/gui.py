"""Open napari with the cryoFIRE docks (Train, Loss, Latent space, Viewing directions, Open run).

  cryofire gui                    the docks, nothing loaded
  cryofire gui --demo             also load the sample (3,000 two-state 70S ribosome particles simulated from the
                                  bundled map, box 64, SNR 1: the data of `cryofire demo`) and start training on it
                                  with the demo's seeded settings (ab initio seed, then distill and fine-tune;
                                  minutes on a CPU)
  cryofire gui --run OUTDIR       open a finished or running output folder for exploring
  cryofire gui FILE ...           open maps / particle stacks (.mrc, .mrcs, .map) as layers

Needs a display (on a headless machine run it under `xvfb-run`, or use `cryofire demo` for the headless pipeline).
"""
from __future__ import annotations

import argparse
from typing import Any

PLUGIN = "cryofire-app"
DOCKS = ("Train", "Loss", "Latent space", "Viewing directions", "Open run")

def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="*", help="MRC maps or particle stacks to open as layers")
    parser.add_argument("--demo", action="store_true",
                        help="load the simulated two-state sample and start training on it")
    parser.add_argument("--run", metavar="OUTDIR", help="open this training output folder")
    parser.add_argument("--demo-images", type=int, default=None, metavar="N",
                        help="images to train in the demo (default: 40 passes over the sample, 120000)")


def open_docks(viewer: Any) -> dict[str, Any]:
    """Add every cryoFIRE dock to `viewer` (through the plugin manifest, as the Plugins menu does)."""
    docks = {}
    for name in DOCKS:
        # Open run shares a tab with Train (one is used at a time); the others stack on the right
        _dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, name, tabify=name == "Open run")
        docks[name] = widget
    return docks


def launch(files: list[str] | None = None, demo: bool = False, run: str | None = None,
           demo_images: int | None = None, viewer: Any = None, **train_overrides: Any):
    """Open the docks in `viewer` (a new napari Viewer by default) and load what was asked; returns (viewer, docks).

    Does not start the Qt event loop. `train_overrides` go into the demo's TrainConfig (after the demo settings).
    """
    import napari

    from cryofire_app.gui import sample

    if viewer is None:
        viewer = napari.Viewer(title="cryoFIRE")
    docks = open_docks(viewer)
    for f in files or []:
        viewer.open(f, plugin=PLUGIN)
    if run:
        docks["Open run"].open(run)
    if demo:
        viewer.open_sample(PLUGIN, "two_state_ribosome")
        from cryofire_app.training.presets import gui_demo_settings

        settings = gui_demo_settings(sample.SAMPLE_N, sample.SAMPLE_BOX, demo_images)
        settings.update(train_overrides)
        train = docks["Train"]
        train.box.value = 0  # the sample is simulated at a CPU-friendly box already
        # the form shows what runs; the rest of the settings go to the TrainConfig directly
        train.schedule.value = settings.pop("schedule")
        train.num_images.value = settings.pop("num_images")
        train.batch.value = settings.pop("batch_size")
        train.zdim.value = settings.pop("zdim")
        if "pose_only_images" in settings:
            train.pose_only.value = settings.pop("pose_only_images")
        train.start(**settings)
    return viewer, docks


def main(args: argparse.Namespace) -> int:
    import napari

    launch(files=args.files, demo=args.demo, run=args.run, demo_images=args.demo_images)
    napari.run()
    return 0
