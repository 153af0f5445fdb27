"""Atomic file writes: a reader sees the old file or the new one, never half of one.

Every helper writes to a temporary file in the target's own folder (so the rename never crosses a file system),
flushes and fsyncs it, then `os.replace`s it over the target and fsyncs the folder. The temporary file is named
`.<name>.<random>.tmp` (created exclusively, so two writers of one target never share it). If the write raises,
the temporary file is removed and the earlier target is left as it was; only a hard kill (SIGKILL, power loss) can
leave a `.<name>.*.tmp` behind. The target's folder is created if it is missing.

Heavy libraries (torch, mrcfile) are imported only by the helpers that need them: `cryofire_app.io` needs no torch.
"""
from __future__ import annotations

import contextlib
import json
import os
import pickle
import tempfile
from pathlib import Path
from typing import IO, Any, Callable, Iterator

__all__ = [
    "temp_path", "commit", "atomic_path", "atomic_open", "atomic_write", "atomic_write_bytes", "atomic_write_text",
    "atomic_write_json", "atomic_save_npy", "atomic_save_npz", "atomic_torch_save", "atomic_pickle_dump", "atomic_mrc",
]


def temp_path(path: str | Path) -> Path:
    """A new, empty temporary file beside `path` (`.<name>.<random>.tmp`); the caller owns it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    return Path(tmp)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable; best effort (some file systems refuse fsync on a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def commit(tmp: str | Path, path: str | Path) -> Path:
    """fsync the finished temporary file `tmp`, rename it over `path`, fsync the folder. Returns `path`."""
    tmp, path = Path(tmp), Path(path)
    _fsync_file(tmp)
    os.replace(tmp, path)
    _fsync_dir(path.parent)
    return path


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path` for a writer that wants a file name (mrcfile, savefig, starfile).

    On a clean exit it replaces `path`; on an exception it is removed and `path` is untouched.
    """
    path = Path(path)
    tmp = temp_path(path)
    try:
        yield tmp
        commit(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "wb", **open_kwargs: Any) -> Iterator[IO]:
    """`open(path, mode)` for writing, atomically: the handle writes a temporary file that replaces `path` on a clean
    exit. `mode` is "wb" or "w" (text mode: pass `encoding` etc. as keywords)."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open: mode must be 'w' or 'wb', got {mode!r}")
    with atomic_path(path) as tmp:
        with open(tmp, mode, **open_kwargs) as fh:
            yield fh


def atomic_write(path: str | Path, writer: Callable[[IO[bytes]], Any]) -> Path:
    """`writer(binary file handle)` fills the new `path`, atomically. Returns `path`."""
    with atomic_open(path, "wb") as fh:
        writer(fh)
    return Path(path)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda fh: fh.write(data))


def atomic_write_text(path: str | Path, text: str, encoding: str = "utf-8") -> Path:
    return atomic_write(path, lambda fh: fh.write(text.encode(encoding)))


def atomic_write_json(path: str | Path, obj: Any, **dumps_kwargs: Any) -> Path:
    """`json.dumps(obj, **dumps_kwargs)` plus a final newline, atomically."""
    return atomic_write_text(path, json.dumps(obj, **dumps_kwargs) + "\n")


def atomic_save_npy(path: str | Path, arr: Any, allow_pickle: bool = False) -> Path:
    """`np.save` to exactly `path` (no ".npy" is appended), atomically."""
    import numpy as np

    return atomic_write(path, lambda fh: np.save(fh, arr, allow_pickle=allow_pickle))


def atomic_save_npz(path: str | Path, **arrays: Any) -> Path:
    """`np.savez` (uncompressed) to exactly `path` (no ".npz" is appended), atomically."""
    import numpy as np

    return atomic_write(path, lambda fh: np.savez(fh, **arrays))


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """`torch.save(obj)` to `path`, atomically (argument order as `torch.save`)."""
    import torch

    return atomic_write(path, lambda fh: torch.save(obj, fh))


def atomic_pickle_dump(path: str | Path, obj: Any) -> Path:
    """`pickle.dump(obj)` to `path` (default protocol), atomically."""
    return atomic_write(path, lambda fh: pickle.dump(obj, fh))


@contextlib.contextmanager
def atomic_mrc(path: str | Path) -> Iterator[Any]:
    """An `mrcfile.new` handle whose file replaces `path` when the block exits cleanly (header written first)."""
    import mrcfile

    with atomic_path(path) as tmp:
        with mrcfile.new(str(tmp), overwrite=True) as mrc:
            yield mrc
