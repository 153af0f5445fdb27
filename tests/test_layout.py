"""The one direction of dependency: the engine never imports Qt or napari."""
from __future__ import annotations

import importlib.util
import pkgutil
import subprocess
import sys

import cryofire_app

ENGINE = ("io", "physics", "model", "training", "analysis", "reconstruct")


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


def test_gui_reaches_the_engine_only_through_its_facade():
    """Every GUI module imports engine code only through cryofire_app/gui/engine_api.py (static check of every
    import statement, the lazy ones inside functions included)."""
    import ast
    from pathlib import Path

    gui = Path(cryofire_app.__file__).parent / "gui"
    engine = tuple(f"cryofire_app.{p}" for p in ENGINE + ("simulate",))
    bad = []
    for path in sorted(gui.glob("*.py")):
        if path.name == "engine_api.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            bad += [f"{path.name}:{node.lineno} {n}" for n in names if n == "cryofire_app" or n.startswith(engine)]
    assert len(list(gui.glob("*.py"))) > 10
    assert not bad, f"GUI modules importing the engine directly: {bad}"


def test_cli_lists_commands():
    out = subprocess.run([sys.executable, "-m", "cryofire_app.cli", "--help"], capture_output=True, text=True,
                         check=True)
    assert "cryofire" in out.stdout


def test_gui_seed_stage_names_cover_the_engine_stages():
    """The GUI's words for the seed's stages are the engine's stages, in the engine's order."""
    from cryofire_app.gui.session import SEED_STAGE_NAMES
    from cryofire_app.training.events import SEED_STAGES

    assert tuple(SEED_STAGE_NAMES) == SEED_STAGES
