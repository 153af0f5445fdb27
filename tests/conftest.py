"""Shared test fixtures.

Real data lives in ../shared/fixtures beside the checkout (never copied into the repo). Tests that need it use the
`fixtures_dir` fixture, which skips with a clear reason when the folder is absent.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_FIXTURES = Path(os.environ.get("CRYOFIRE_FIXTURES", ROOT.parent / "shared" / "fixtures"))


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    if not SHARED_FIXTURES.is_dir():
        pytest.skip(f"shared fixtures not found at {SHARED_FIXTURES} (set CRYOFIRE_FIXTURES)")
    return SHARED_FIXTURES


@pytest.fixture(autouse=True)
def _seed_and_threads():
    import torch

    torch.manual_seed(0)
    np.random.seed(0)
    yield


@pytest.fixture
def one_thread():
    """One torch intra-op thread for the test (small tensors: faster than two, and no oversubscription of a shared
    machine); the previous count is restored afterwards. Modules opt in with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
