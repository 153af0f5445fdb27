"""Clean particle images: projections of the state maps (or of a rigidly moving hinge part), CTF and shift."""
from __future__ import annotations

import numpy as np
import torch

from cryofire_app.physics import FourierProjector, Lattice, compute_ctf, lattice_to_image, translate_ht
from cryofire_app.simulate.config import BLOCK, PILOT_IMAGES
from cryofire_app.simulate.hinge import _Hinge
from cryofire_app.simulate.params import _Params


class _Renderer:
    """Clean images for particle index ranges (RELION sign/shift conventions; see cryofire_app.simulate)."""

    def __init__(self, states: list[torch.Tensor] | None, hinge: _Hinge | None, params: _Params, D: int, apix: float,
                 pad: int, bfactor: float):
        self.D, self.apix, self.p, self.bfactor = D, apix, params, bfactor
        self.lattice = Lattice(D)
        self.hinge = hinge
        if hinge is not None:
            self.fixed = FourierProjector(hinge.fixed.float(), pad=pad)
            self.moving = FourierProjector(hinge.moving.float(), pad=pad)
        else:
            self.projectors = [FourierProjector(v.float(), pad=pad) for v in states]

    def slices(self, idx: slice) -> torch.Tensor:
        """Central slices (B, Dl * Dl) of the particles ``idx`` in the Hartley lattice, before CTF and shift."""
        rot = torch.from_numpy(self.p.rot[idx]).float()
        b = rot.shape[0]
        lat = self.lattice
        if self.hinge is not None:
            u = torch.from_numpy(np.asarray(self.p.u[idx], dtype=np.float64))
            a = self.hinge.motion(u)                       # (B, 3, 3) float64
            rot2 = rot.double() @ a.transpose(-1, -2)      # projection of moving part at rot A^T ...
            p = self.hinge.pivot
            c = p[None] - (p[None, None, :] @ a.transpose(-1, -2))[:, 0]  # ... shifted by c = p - p A^T (B, 3)
            c_img = (c[:, None, :] @ rot2.transpose(-1, -2))[:, 0, :2]
            ym = self.moving.slice(rot2.float())
            ym = translate_ht(ym, ym[:, lat.neg_index], lat.freqs2d, (-c_img).float())
            return self.fixed.slice(rot) + ym
        y = torch.zeros(b, lat.Dl * lat.Dl)
        labels = torch.from_numpy(self.p.labels[idx])
        for s, proj in enumerate(self.projectors):
            sel = torch.nonzero(labels == s).reshape(-1)
            if len(sel):
                y[sel] = proj.slice(rot[sel])
        return y

    def clean(self, start: int, stop: int) -> torch.Tensor:
        """Noise-free images (stop-start, D, D) of particles [start, stop): slice x C_RELION, moved by -t px."""
        idx = slice(start, stop)
        y = self.slices(idx)
        ctf = torch.from_numpy(self.p.ctf[idx]).float()
        lat = self.lattice
        c = -compute_ctf(lat.freqs2d, ctf[:, 1], ctf[:, 2], ctf[:, 3], ctf[:, 4], ctf[:, 5], ctf[:, 6], ctf[:, 7],
                         ctf[:, 8], self.bfactor)  # RELION sign
        y = y * c
        t = torch.from_numpy(self.p.trans_px[idx]).float()
        y = translate_ht(y, y[:, lat.neg_index], lat.freqs2d, -t)  # observed particle is off-centre by -t
        return lattice_to_image(y, self.D)



def _pilot(renderer: _Renderer, n: int, D: int) -> tuple[float, dict[int, torch.Tensor]]:
    """Pixel variance of the first ``min(n, PILOT_IMAGES)`` clean images over the whole box (float64 sums), and
    their rendered blocks of BLOCK particles keyed by first particle index, for the main pass to reuse."""
    n_pilot = min(n, PILOT_IMAGES)
    cache: dict[int, torch.Tensor] = {}
    s1 = s2 = 0.0
    with torch.no_grad():
        for a in range(0, n_pilot, BLOCK):
            blk = renderer.clean(a, min(n, a + BLOCK))
            cache[a] = blk
            x = blk[: n_pilot - a].double()
            s1 += float(x.sum())
            s2 += float((x * x).sum())
    cnt = n_pilot * D * D
    return s2 / cnt - (s1 / cnt) ** 2, cache


def _render_chunk(renderer: _Renderer, cache: dict[int, torch.Tensor], start: int, stop: int) -> torch.Tensor:
    """Clean images of particles [start, stop) (start a multiple of BLOCK), rendered in aligned blocks of BLOCK
    particles, so the floating-point result is the same for any chunking; pilot blocks are taken (popped) from
    ``cache``."""
    return torch.cat([cache.pop(s) if s in cache else renderer.clean(s, min(stop, s + BLOCK))
                      for s in range(start, stop, BLOCK)])
