"""The one exception type for bad user input."""
from __future__ import annotations

from pathlib import Path


class InputError(ValueError):
    """Bad input data or metadata. The message names the file and what is wrong with it."""

    def __init__(self, message: str, path: str | Path | None = None):
        self.path = Path(path) if path is not None else None
        # re-raising an InputError's text with the same file (InputError(str(exc), path)) names the file once
        named = path is None or str(message).startswith(f"{path}:")
        super().__init__(message if named else f"{path}: {message}")
