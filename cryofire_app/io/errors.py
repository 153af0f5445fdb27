"""The one exception type for bad user input."""
from __future__ import annotations

from pathlib import Path


class InputError(ValueError):
    """Bad input data or metadata. The message names the file and what is wrong with it."""

    def __init__(self, message: str, path: str | Path | None = None):
        self.path = Path(path) if path is not None else None
        super().__init__(f"{path}: {message}" if path is not None else message)
