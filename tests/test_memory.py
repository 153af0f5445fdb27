"""Freed heap memory goes back to the system between phases (training.memory)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cryofire_app.training.memory import release_freed_memory


def _anon_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return float(line.split()[1]) / 1024
    raise AssertionError("no RssAnon")


def test_freed_heap_pages_are_returned():
    if not Path("/proc/self/status").is_file():
        pytest.skip("needs Linux /proc")
    # 2,000 blocks of 100 kB sit on the heap (below glibc's mmap threshold); freeing all but the last leaves ~200 MB
    # of free pages that the heap cannot shrink past, as a phase's temporaries do
    blocks = [np.ones(12_500) for _ in range(2000)]
    last = blocks[-1]
    del blocks
    before = _anon_mb()
    if not release_freed_memory():
        pytest.skip("not glibc: nothing to release")
    assert before - _anon_mb() > 100
    assert last.sum() == 12_500
