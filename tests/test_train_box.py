"""The training box: a stack larger than AUTO_BOX_MAX trains Fourier-cropped to it unless -D is given."""
from __future__ import annotations

import json

import pytest

from cryofire_app.training import Message, Step, Trainer
from cryofire_app.training.config import AUTO_BOX_MAX, training_box
from test_train_data import make_dataset
from test_train_trainer import tiny_config


def test_large_stack_trains_fourier_cropped_unless_a_box_is_given(tmp_path):
    """Without -D a stack larger than AUTO_BOX_MAX trains at that box (pixel size and CTF rows scaled to it, a message
    says so); -D keeps the user's box; a stack at or below the limit trains at its own box."""
    big = AUTO_BOX_MAX + 16
    assert training_box(big) == AUTO_BOX_MAX and training_box(64) == 64 and training_box(big, 96) == 96
    data = make_dataset(tmp_path / "big", n=24, D=big, seed=0, apix=2.0)
    tr = Trainer(tiny_config(data, tmp_path / "run", D=None, num_images=16, pose_only_images=16, batch_size=8))
    ev = []
    for e in tr.run():
        ev.append(e)
        if isinstance(e, Step):
            tr.request_stop()
    assert tr.D == AUTO_BOX_MAX and tr.data.D0 == big
    assert tr.data.apix == pytest.approx(2.0 * big / AUTO_BOX_MAX)
    assert float(tr.data.ctf[0, 0]) == AUTO_BOX_MAX and float(tr.data.ctf[0, 1]) == pytest.approx(tr.data.apix)
    assert any(isinstance(e, Message) and e.topic == "training_box" for e in ev)   # the user is told
    assert json.loads((tmp_path / "run" / "config.json").read_text())["D"] == AUTO_BOX_MAX
    given = Trainer(tiny_config(data, tmp_path / "run2", D=96))
    given._setup()
    assert given.D == 96
