"""Where a benchmark's results go: ``results/<kind>-<date>-<host>.json`` and ``.md``, each written atomically."""
from __future__ import annotations

import datetime as dt
import json
import socket
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
RESULTS = HERE / "results"


def stamp() -> dict:
    """``date`` (UTC, minutes) and ``host`` for a result, plus the ``now`` its file name is made from."""
    now = dt.datetime.now(dt.timezone.utc)
    return {"now": now, "date": now.strftime("%Y-%m-%d %H:%M UTC"), "host": socket.gethostname()}


def write_report(kind: str, now: dt.datetime, out: dict, lines: list[str]) -> Path:
    """Write ``out`` as JSON and ``lines`` as markdown next to each other; prints the markdown, returns the stem."""
    from cryofire_app.training.checkpoint import atomic_write_text

    stem = RESULTS / f"{kind}-{now.strftime('%Y%m%d-%H%M')}-{socket.gethostname()}"
    atomic_write_text(Path(f"{stem}.json"), json.dumps(out, indent=1) + "\n")
    atomic_write_text(Path(f"{stem}.md"), "\n".join(lines) + "\n")
    print("\n".join(lines))
    return stem


def md_table(header: list[str], rows: list[list]) -> list[str]:
    """Markdown table lines: the header, its rule, one line per row (cells already formatted as strings)."""
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
        "| " + " | ".join(str(c) for c in row) + " |" for row in rows]
