"""Data-parallel training under torchrun (torch.distributed; WORLD_SIZE > 1), and its one-process stand-in.

Each rank takes rows rank::world of every global batch; gradients are averaged by DistributedDataParallel (joint and
pose-only steps) or by hand (distill steps, which run the model outside the wrapper). Rank 0 writes every file.
"""
from __future__ import annotations

import datetime
import os
from typing import Any

import torch

__all__ = ["SEED_WAIT_HOURS", "DataParallel"]

# torchrun: how long the other ranks may wait for rank 0's seed (and any collective) before the run is abandoned
SEED_WAIT_HOURS = 24


class DataParallel:
    """The process group of a run: ``world`` processes, this one ``rank``, on ``device`` (under torchrun on CUDA, the
    LOCAL_RANK'th GPU). One process: every collective is a no-op."""

    def __init__(self, device: torch.device):
        import torch.distributed as dist

        self.world, self.rank, self.device = 1, 0, device
        if not dist.is_available():
            return
        if not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            backend = "nccl" if device.type == "cuda" else "gloo"
            # the other ranks wait while rank 0 runs the seed (share_seed), which can outlast the default 30 min
            dist.init_process_group(backend, timeout=datetime.timedelta(hours=SEED_WAIT_HOURS))
        if dist.is_initialized():
            self.world, self.rank = dist.get_world_size(), dist.get_rank()
            if device.type == "cuda":
                self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", self.rank)))
                torch.cuda.set_device(self.device)

    def mean(self, x: torch.Tensor) -> torch.Tensor:
        """The mean of ``x`` over the ranks (``x`` itself for one process)."""
        if self.world > 1:
            import torch.distributed as dist

            x = x.clone()
            dist.all_reduce(x)
            x /= self.world
        return x

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def broadcast_weights(self, model: torch.nn.Module) -> None:
        """Every rank takes rank 0's weights."""
        if self.world > 1:
            import torch.distributed as dist

            for t in model.state_dict().values():
                dist.broadcast(t, src=0)

    def average_gradients(self, model: torch.nn.Module) -> None:
        """Average the gradients over the ranks by hand (steps that run the model outside the DDP wrapper)."""
        if self.world > 1:
            import torch.distributed as dist

            for p in model.parameters():
                if p.grad is not None:
                    dist.all_reduce(p.grad)
                    p.grad /= self.world

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` (any picklable object), on every rank."""
        if self.world == 1:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """``model`` in a DistributedDataParallel wrapper (unused parameters allowed: the phases use different
        heads)."""
        from torch.nn.parallel import DistributedDataParallel as DDP

        return DDP(model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                   find_unused_parameters=True)
