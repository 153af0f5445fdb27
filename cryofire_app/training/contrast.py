"""The data's contrast: the amortized schedule checks the sign of its consensus map once, after
contrast_check_images, and (invert_data "auto") inverts the data and the decoder's output when it is negative."""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from cryofire_app.model.cryofire import CryoFIRE
from cryofire_app.training.events import Message

if TYPE_CHECKING:
    from cryofire_app.training.trainer import Trainer

__all__ = ["check_contrast", "consensus_sign"]


@torch.no_grad()
def consensus_sign(model: CryoFIRE, D: int, device: torch.device) -> float:
    """Mean decoded Hartley value on the shells 1-2 px around DC (z = 0): > 0 for a positive density."""
    ax = torch.arange(-2, 3, dtype=torch.float32)
    g = torch.stack(torch.meshgrid(ax, ax, ax, indexing="ij"), -1).reshape(-1, 3)
    r = g.norm(dim=1)
    pts = (g[(r >= 1) & (r <= 2)] / D).to(device)
    v = model.decoder(pts[None], None)[0]
    return float(v.mean())


def _negate_output(tr: "Trainer") -> None:
    """The decoder's last layer (and Adam's first moment of it) negated: the same map for the inverted data."""
    out = tr.model.decoder.mlp.out
    with torch.no_grad():
        for p in (out.weight, out.bias):
            p.neg_()
            st = tr.optim.state.get(p)
            if st and "exp_avg" in st:
                st["exp_avg"].neg_()


def check_contrast(tr: "Trainer") -> Message:
    """Check the consensus map's sign once; with invert_data "auto" invert the data from now on if it is negative."""
    tr.state.contrast_checked = True
    s = consensus_sign(tr.model, tr.D, tr.device)
    if s >= 0:
        return Message("info", f"data contrast looks right (consensus low-frequency density {s:+.3g} > 0)", "contrast")
    if tr.config.invert_data == "auto":
        tr.state.sign = -tr.state.sign
        _negate_output(tr)
        return Message("warning", "negative consensus density: the particles have inverted contrast; inverting "
                                  f"the data from now on (images seen {tr.images_seen}; use --invert-data no to "
                                  "keep it)", "contrast")
    return Message("warning", "negative consensus density: the particles probably have inverted contrast (the map "
                              "will come out hollow/negative); rerun with --invert-data yes or auto", "contrast")
