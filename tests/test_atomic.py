"""io/atomic.py: a write that fails midway leaves the earlier file intact, a good write replaces it, no temp stays."""
import json
import os
import pickle
import signal
import subprocess
import sys
import textwrap

import mrcfile
import numpy as np
import pytest
import torch

from cryofire_app.io import atomic
from cryofire_app.io.pickles import load_pickle_safe


class Boom(RuntimeError):
    pass


def _half_then_fail(fh):
    fh.write(b"half of a new file")
    fh.flush()
    raise Boom("disk full")


def _only(folder):
    return sorted(p.name for p in folder.iterdir())


def test_failed_write_keeps_the_earlier_file_and_no_temp(tmp_path):
    target = tmp_path / "a.bin"
    atomic.atomic_write_bytes(target, b"old")
    with pytest.raises(Boom):
        atomic.atomic_write(target, _half_then_fail)
    assert target.read_bytes() == b"old"
    assert _only(tmp_path) == ["a.bin"]


def test_failed_first_write_leaves_nothing(tmp_path):
    with pytest.raises(Boom):
        atomic.atomic_write(tmp_path / "new.bin", _half_then_fail)
    assert _only(tmp_path) == []


def test_success_replaces_and_leaves_no_temp(tmp_path):
    target = tmp_path / "a.txt"
    target.write_text("old")
    assert atomic.atomic_write_text(target, "new\n") == target
    assert target.read_text() == "new\n"
    assert _only(tmp_path) == ["a.txt"]


def test_missing_folder_is_created(tmp_path):
    target = tmp_path / "x" / "y" / "a.json"
    atomic.atomic_write_json(target, {"a": 1})
    assert json.loads(target.read_text()) == {"a": 1}


def test_each_format_round_trips_exactly_at_the_given_name(tmp_path):
    arr = np.arange(12, dtype=np.float32).reshape(3, 4)
    atomic.atomic_save_npy(tmp_path / "labels.npy", arr)
    assert np.array_equal(np.load(tmp_path / "labels.npy"), arr)
    atomic.atomic_save_npz(tmp_path / "latents.npz", z=arr, D=np.int64(64))
    with np.load(tmp_path / "latents.npz") as f:
        assert np.array_equal(f["z"], arr) and int(f["D"]) == 64
    atomic.atomic_torch_save({"w": torch.ones(3)}, tmp_path / "last.pt")
    assert torch.equal(torch.load(tmp_path / "last.pt", weights_only=True)["w"], torch.ones(3))
    atomic.atomic_pickle_dump(tmp_path / "z.pkl", arr)
    assert np.array_equal(load_pickle_safe(tmp_path / "z.pkl"), arr)
    with atomic.atomic_mrc(tmp_path / "map.mrc") as mrc:
        mrc.set_data(np.zeros((4, 4, 4), np.float32))
        mrc.voxel_size = 2.0
    with mrcfile.open(tmp_path / "map.mrc") as m:
        assert m.data.shape == (4, 4, 4) and float(m.voxel_size.x) == 2.0
    assert _only(tmp_path) == ["labels.npy", "last.pt", "latents.npz", "map.mrc", "z.pkl"]


def test_failing_torch_and_mrc_writes_keep_the_earlier_file(tmp_path):
    pt = tmp_path / "last.pt"
    atomic.atomic_torch_save({"step": 1}, pt)
    before = pt.read_bytes()
    with pytest.raises((pickle.PicklingError, AttributeError)):
        atomic.atomic_torch_save({"f": lambda: 0}, pt)  # a lambda cannot be pickled: fails midway
    assert pt.read_bytes() == before

    mrc_path = tmp_path / "map.mrc"
    with atomic.atomic_mrc(mrc_path) as mrc:
        mrc.set_data(np.ones((4, 4, 4), np.float32))
    before = mrc_path.read_bytes()
    with pytest.raises(Boom):
        with atomic.atomic_mrc(mrc_path) as mrc:
            mrc.set_data(np.zeros((8, 8, 8), np.float32))
            raise Boom("interrupted")
    assert mrc_path.read_bytes() == before
    assert _only(tmp_path) == ["last.pt", "map.mrc"]


def test_atomic_open_rejects_read_modes(tmp_path):
    with pytest.raises(ValueError):
        with atomic.atomic_open(tmp_path / "a", "a"):
            pass


def test_kill_midway_keeps_the_earlier_file(tmp_path):
    """A hard kill (no Python cleanup) during the write: the target keeps its old bytes; only a hidden temp stays."""
    target = tmp_path / "state.npz"
    atomic.atomic_save_npz(target, a=np.zeros(3))
    before = target.read_bytes()
    script = textwrap.dedent(f"""
        import os, signal
        from cryofire_app.io import atomic
        def dying(fh):
            fh.write(b"PK" + b"x" * 100000); fh.flush(); os.fsync(fh.fileno())
            os.kill(os.getpid(), signal.SIGKILL)
        atomic.atomic_write({str(target)!r}, dying)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert proc.returncode == -signal.SIGKILL
    assert target.read_bytes() == before
    left = [p for p in _only(tmp_path) if p != "state.npz"]
    assert len(left) == 1 and left[0].startswith(".state.npz.") and left[0].endswith(".tmp")
    os.unlink(tmp_path / left[0])
