"""The one direction of dependency: the engine never imports Qt or napari."""
from __future__ import annotations

import importlib.util
import pkgutil
import subprocess
import sys

import cryofire_app

ENGINE = ("io", "physics", "model", "training", "analysis")


def _engine_modules() -> list[str]:
    names = ["cryofire_app.simulate"] if (importlib.util.find_spec("cryofire_app.simulate") is not None) else []
    for pkg in ENGINE:
        names.append(f"cryofire_app.{pkg}")
        path = [str(p) for p in cryofire_app.__path__]
        for info in pkgutil.iter_modules([f"{path[0]}/{pkg}"]):
            names.append(f"cryofire_app.{pkg}.{info.name}")
    return names


def test_engine_does_not_import_qt_or_napari():
    mods = _engine_modules()
    assert len(mods) >= len(ENGINE)
    code = (
        "import importlib, sys\n"
        f"for m in {mods!r}: importlib.import_module(m)\n"
        "gui = ('qtpy', 'PyQt5', 'PyQt6', 'PySide2', 'PySide6', 'napari', 'magicgui', 'vispy')\n"
        "bad = sorted(k for k in sys.modules if k.split('.')[0] in gui)\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"engine modules pulled in GUI packages: {out.stdout.strip()}"


def test_cli_lists_commands():
    out = subprocess.run([sys.executable, "-m", "cryofire_app.cli", "--help"], capture_output=True, text=True,
                         check=True)
    assert "cryofire" in out.stdout


def test_gui_seed_stage_names_cover_the_engine_stages():
    """The GUI's words for the seed's stages are the engine's stages, in the engine's order."""
    from cryofire_app.gui.session import SEED_STAGE_NAMES
    from cryofire_app.training.events import SEED_STAGES

    assert tuple(SEED_STAGE_NAMES) == SEED_STAGES
