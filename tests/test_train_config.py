"""TrainConfig's schedule groups: a config.json of the flat layout (runs saved before the groups) loads into them with
what such runs did; flat names route to their group in `of` and `set`; a saved config round-trips."""
from __future__ import annotations

import pytest

from cryofire_app.training.config import AmortizedConfig, SeededConfig, TrainConfig


def test_flat_layout_of_older_runs_loads_into_the_groups():
    new = TrainConfig.of(schedule="seeded", distill_fraction=0.6, pose_only_images=7, seeded_sym_loss=True,
                         sym_loss=False, seed_config={"n_states": 2})
    flat = {k: v for k, v in new.to_dict().items() if k not in ("seeded", "amortized")}
    for group, renames in (("seeded", {"sym_loss": "seeded_sym_loss", "joint_lr_scale": "seeded_joint_lr_scale"}),
                           ("amortized", {})):
        for k, v in new.to_dict()[group].items():
            flat[renames.get(k, k)] = v
    for k in ("distill_grid_width", "distill_synth_ratio", "distill_decay_from"):   # fields the old run predates
        del flat[k]
    old = TrainConfig.from_dict(flat)
    assert old.seeded.distill_fraction == 0.6 and old.seeded.sym_loss and old.seeded.seed_config == {"n_states": 2}
    assert old.amortized.pose_only_images == 7 and not old.amortized.sym_loss
    assert (old.seeded.distill_grid_width, old.seeded.distill_synth_ratio, old.seeded.distill_decay_from) == (
        1.0, 0.0, 1.0)
    assert TrainConfig.from_dict(new.to_dict()) == new   # the grouped layout round-trips, no legacy defaults


def test_of_and_set_route_flat_names_and_refuse_unknown_ones():
    cfg = TrainConfig.of(seeded=SeededConfig(distill_fraction=0.5), freq_start=6, seed_max_particles=100)
    assert cfg.seeded.distill_fraction == 0.5 and cfg.seeded.seed_max_particles == 100
    assert cfg.amortized == AmortizedConfig(freq_start=6)
    assert TrainConfig.of().seeded.distill_synth_ratio == 0.5   # `of` applies no legacy defaults
    cfg.set("distill_synth_ratio", 1.0)
    cfg.set("zdim", 3)
    assert cfg.seeded.distill_synth_ratio == 1.0 and cfg.zdim == 3
    with pytest.raises(ValueError, match="no_such"):
        cfg.set("no_such", 1)
    with pytest.raises(ValueError, match="no_such"):
        TrainConfig.of(no_such=1)
    with pytest.raises(ValueError, match="seeded.nope"):
        TrainConfig.from_dict({"seeded": {"nope": 1}})
