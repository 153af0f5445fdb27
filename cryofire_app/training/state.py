"""A run's progress (`TrainState`) and the checkpoint layout it is saved in, with migration of older layouts.

A checkpoint is one flat dict (training/checkpoint.py loads it with ``weights_only=True``):
- ``format``: the layout version (CHECKPOINT_FORMAT; files without it are version 1);
- the TrainState fields (``data_sign`` for TrainState.sign);
- ``config``, ``model``, ``optimizer``, ``torch_rng``, ``synth_rng``, ``grad_scaler`` (fp16's loss scale or None);
- the data it was trained on: ``D``, ``D0``, ``N``, ``apix``, ``zdim``, ``sigma_real``, ``sigma_ht`` (normalisation),
  ``train_pos``, ``val_pos`` (the split, positions in the particle file);
- for readers: ``mask_radius``, ``phase``, ``schedule`` (functions of the state and config).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

__all__ = ["CHECKPOINT_FORMAT", "TrainState", "migrate"]

#: version of the checkpoint layout this code writes; older ones are migrated on load (see MIGRATIONS)
CHECKPOINT_FORMAT = 2


@dataclass
class TrainState:
    """What a run has done so far, beyond its weights: counts in images, flags of the seeded schedule."""

    images_seen: int = 0
    step: int = 0
    sign: float = 1.0                  # the data are multiplied by this (-1: inverted contrast)
    contrast_checked: bool = False     # the consensus map's sign was checked (or the seed or the user set `sign`)
    prev_val: dict | None = None       # the validation set's last poses and z ({"rot", "z"} tensors), for changes
    next_ckpt: int = 0                 # images at which the next checkpoint / latent snapshot is due
    next_latents: int = 0
    seed_done: bool = False            # seeded: the seed exists (checkpoints/seed.npz)
    joint_ok: bool = False             # seeded: the encoder has reproduced the seed's poses (the joint phase may run)
    agreement_deg: float | None = None  # seeded: the last measured median angle encoder vs seed
    next_agreement: int = 0            # seeded: images at which that agreement is measured again

    def to_checkpoint(self) -> dict[str, Any]:
        """The checkpoint keys of this state (``sign`` is saved as ``data_sign``)."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["data_sign"] = d.pop("sign")
        return d

    @classmethod
    def from_checkpoint(cls, ck: dict[str, Any]) -> "TrainState":
        """The state saved in a (migrated) checkpoint."""
        agree = ck["agreement_deg"]
        return cls(images_seen=int(ck["images_seen"]), step=int(ck["step"]), sign=float(ck["data_sign"]),
                   contrast_checked=bool(ck["contrast_checked"]), prev_val=ck["prev_val"],
                   next_ckpt=int(ck["next_ckpt"]), next_latents=int(ck["next_latents"]),
                   seed_done=bool(ck["seed_done"]), joint_ok=bool(ck["joint_ok"]),
                   agreement_deg=None if agree is None else float(agree), next_agreement=int(ck["next_agreement"]))


def _v1_to_v2(ck: dict[str, Any]) -> dict[str, Any]:
    """Version 1 files may lack the keys added while it was current: fill in what such a run did (no seed, the
    joint phase open, no second random stream, no fp16 loss scale, no previous validation)."""
    for key, value in (("seed_done", False), ("joint_ok", True), ("agreement_deg", None), ("next_agreement", 0),
                       ("synth_rng", None), ("grad_scaler", None), ("prev_val", None)):
        ck.setdefault(key, value)
    return ck


#: from-version -> function upgrading a checkpoint dict by one version
MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {1: _v1_to_v2}


def migrate(ck: dict[str, Any]) -> dict[str, Any]:
    """Upgrade a checkpoint dict of any earlier layout to CHECKPOINT_FORMAT (in place; returned)."""
    fmt = int(ck.get("format", 1))
    while fmt < CHECKPOINT_FORMAT:
        ck = MIGRATIONS[fmt](ck)
        fmt += 1
    ck["format"] = fmt
    return ck
