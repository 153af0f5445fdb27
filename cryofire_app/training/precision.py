"""Mixed precision of a run (TrainConfig.precision): the autocast context of its forward passes and, for fp16, the
GradScaler of its backward passes and steps (its loss scale is saved in checkpoints)."""
from __future__ import annotations

import torch

from cryofire_app.io.errors import InputError
from cryofire_app.model.cryofire import autocast_context

__all__ = ["Precision"]


class Precision:
    """``precision`` ("fp32", "bf16", "fp16") on ``device``; ``saved``: a checkpoint's grad_scaler state, restored when
    the fp16 scaler is made. ``grad_scaler``: the scaler once made (None before, and always for fp32/bf16)."""

    def __init__(self, device: torch.device, precision: str, saved: dict | None = None):
        self.device, self.precision, self.saved = device, precision, saved
        self.grad_scaler: torch.amp.GradScaler | None = None

    def autocast(self):
        """The forward pass's context (fp32: none)."""
        try:
            return autocast_context(self.device, self.precision)
        except ValueError as exc:
            raise InputError(str(exc)) from exc

    def scaler(self) -> torch.amp.GradScaler | None:
        """The fp16 GradScaler (made on first use, from the saved state if any), else None."""
        if self.precision != "fp16":
            return None
        if self.grad_scaler is None:
            self.grad_scaler = torch.amp.GradScaler(self.device.type)
            if self.saved:    # resumed: the loss scale (and its growth count) as the run left them
                self.grad_scaler.load_state_dict(self.saved)
        return self.grad_scaler

    def backward(self, loss: torch.Tensor) -> None:
        """loss.backward(), scaled for fp16."""
        scaler = self.scaler()
        (scaler.scale(loss) if scaler is not None else loss).backward()

    def step(self, optim: torch.optim.Optimizer) -> None:
        """The optimiser's step; with fp16 through the scaler, which skips steps with inf/nan gradients."""
        scaler = self.scaler()
        if scaler is not None:
            scaler.step(optim)
            scaler.update()
        else:
            optim.step()

    def state_dict(self) -> dict | None:
        """What a checkpoint keeps: the scaler's state, or the saved one while none was made."""
        return self.grad_scaler.state_dict() if self.grad_scaler is not None else self.saved
