"""Ab initio seeding: exhaustive + local pose search on an explicit Hartley voxel volume, coarse to fine in box size,
then a heterogeneity step: continuous coordinates and states chosen from the data (see :mod:`.seed` and
docs/design.md, section "reconstruct")."""
from .seed import SeedConfig, SeedEvent, SeedResult, iter_seed_abinit, resize_volume, seed_abinit, seed_config_from

__all__ = ["SeedConfig", "SeedEvent", "SeedResult", "iter_seed_abinit", "seed_abinit", "resize_volume",
           "seed_config_from"]
