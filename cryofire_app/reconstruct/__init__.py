"""Ab initio seeding: exhaustive + local pose search on an explicit Hartley voxel volume, coarse to fine in box size,
then a discrete heterogeneity step (see :mod:`.seed` and docs/design.md, section "reconstruct")."""
from .seed import SeedConfig, SeedEvent, SeedResult, iter_seed_abinit, resize_volume, seed_abinit

__all__ = ["SeedConfig", "SeedEvent", "SeedResult", "iter_seed_abinit", "seed_abinit", "resize_volume"]
