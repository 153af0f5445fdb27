"""TrainConfig's schedule groups: a config.json of the flat layout (runs saved before the groups) loads into them with
what such runs did; flat names route to their group in `of` and `set`; a saved config round-trips; bad values are
refused with one line naming the option, when a config is made and by validate()."""
from __future__ import annotations

import pytest

from cryofire_app.io.errors import InputError
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


@pytest.mark.parametrize("field, value, needle", [
    ("batch_size", 0, "--batch-size"), ("batch_size", -4, "--batch-size"), ("lr", -1.0, "--lr"),
    ("lr", float("inf"), "--lr"), ("zdim", -1, "--zdim"), ("zdim", 2.5, "--zdim"), ("D", 31, "--box"),
    ("device", "gpu", "--device"), ("device", "cuda:9", "--device"), ("num_images", 0, "--num-images"),
    ("epochs", float("nan"), "--epochs"), ("schedule", "fast", "--schedule"), ("val_fraction", 1.0, "--val-fraction"),
    ("seed", -1, "--seed"), ("num_threads", 0, "--threads"), ("precision", "fp8", "--precision"),
    ("freq_start", 0, "--freq-start"), ("checkpoint_every", 0, "--checkpoint-every"), ("window_r_out", 0.5,
                                                                                          "window_r_out"),
    ("seed_config", {"box_global": 15}, "seed_config"), ("seed_config", {"no_such": 1}, "seed_config"),
    ("invert_data", "maybe", "--invert-data"), ("batch_size", True, "--batch-size"),
    ("refine_others", "exhaustive", "--refine-others"),
])
def test_train_config_validate(field, value, needle):
    from cryofire_app.training.config import TrainConfig

    TrainConfig().validate()
    if field != "device":   # a config checks its fields when made (whether a device exists: validate() only)
        with pytest.raises(InputError, match=needle) as made:
            TrainConfig.of(**{field: value})
    cfg = TrainConfig()
    cfg.set(field, value)   # validate() checks every field again after a change
    with pytest.raises(InputError, match=needle) as info:
        cfg.validate()
    assert "\n" not in str(info.value)
    assert field == "device" or str(made.value) == str(info.value)


def test_train_config_validate_nested_and_exclusive():
    from cryofire_app.training.config import DecoderConfig, EncoderConfig, TrainConfig

    with pytest.raises(InputError, match="--enc-channels"):
        TrainConfig.of(encoder=EncoderConfig(channels=())).validate()
    with pytest.raises(InputError, match="--enc-box"):
        TrainConfig.of(encoder=EncoderConfig(box=20 + 1)).validate()
    with pytest.raises(InputError, match="--view-dirs"):
        TrainConfig.of(encoder=EncoderConfig(view_dirs=4)).validate()
    with pytest.raises(InputError, match="--dec-arch"):
        TrainConfig.of(decoder=DecoderConfig(arch="transformer")).validate()
    with pytest.raises(InputError, match="not both"):
        TrainConfig.of(num_images=100, epochs=2.0).validate()
    with pytest.raises(InputError, match="fp16"):
        TrainConfig.of(precision="fp16", device="cpu").validate()


def test_configs_saved_before_the_fast_defaults_load_with_the_original_architecture():
    """config.json / checkpoints written before decoder.arch and encoder.stem existed describe the original model
    (MLP decoder, conv stem); new configs default to the grid decoder and the unshuffle stem."""
    from cryofire_app.training.config import TrainConfig

    d = TrainConfig().to_dict()
    assert d["decoder"]["arch"] == "grid" and d["encoder"]["stem"] == "unshuffle"
    del d["decoder"]["arch"], d["encoder"]["stem"]
    old = TrainConfig.from_dict(d)
    assert old.decoder.arch == "mlp" and old.encoder.stem == "conv"
