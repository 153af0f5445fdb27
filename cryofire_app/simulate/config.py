"""Settings and result of a simulation run, the bundled demo map, and the block sizes that make runs deterministic."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

#: Voxel size assumed for the bundled ASPIRE 70S ribosome map (resources/ribosome70S_65.mrc, header: 0):
#: its density spans ~50 voxels and a 70S ribosome is ~250 A across, so 5 A/voxel (65 box -> 325 A).
DEMO_MAP_APIX = 5.0
# package data through the link cryofire_app/resources -> ../resources (resources/README.md)
DEMO_MAP = Path(__file__).resolve().parent.parent / "resources" / "ribosome70S_65.mrc"

BLOCK = 64  # particles are rendered, and their noise drawn (seeded by (seed, block)), in aligned blocks of this size
NOISE_BLOCK = BLOCK
PILOT_IMAGES = 1000


@dataclass
class HingeConfig:
    """Conformational states from one map: a masked sub-region rotates rigidly about a hinge axis.

    steps: K >= 2 discrete states at angles ``linspace(0, angle_deg, K)``; with ``continuous`` each particle gets a
    uniform coordinate u in [0, 1] (angle = u * angle_deg) and K is the number of bins for labels / GT maps.
    mask: MRC of the moving region (values in [0, 1], same box and pixel size as the map), or None for the automatic
    region: the part of the map beyond a plane normal to ``arm`` that holds ``fraction`` of the positive density,
    with a 2-voxel linear ramp. axis: hinge axis direction (x, y, z); pivot: point on the axis in voxels from the
    box centre (x, y, z); default the point of the cut plane level with the density's centre of mass.
    """

    steps: int = 0
    continuous: bool = False
    angle_deg: float = 20.0
    mask: str | None = None
    axis: tuple[float, float, float] = (0.0, 0.0, 1.0)
    arm: tuple[float, float, float] = (1.0, 0.0, 0.0)
    fraction: float = 0.3
    pivot: tuple[float, float, float] | None = None

    @property
    def enabled(self) -> bool:
        return self.steps >= 2 or self.continuous


@dataclass
class SimulationConfig:
    """Settings of one simulation run (``cryofire simulate`` maps its options one to one onto these fields).

    maps: map files (one per state), or ``volumes`` arrays (z, y, x) given directly with ``apix``.
    box: output box D (even; default the map box, made even). apix: voxel size of the input maps in A (overrides
    the header; required when the header says 0). The output pixel size is ``apix * map_box / box`` (Fourier
    crop/pad), or, with ``from_metadata``, the metadata's pixel size at its box rescaled to ``box``.
    snr: signal variance / noise variance (``inf`` = no noise). fractions: per state (normalised; default equal).
    defocus_um: (min, max) in micrometres, drawn ``uniform`` or ``lognormal`` (median = geometric mean of the
    bounds, log-sd = ln(max/min)/4, clipped to the bounds). astigmatism_A: |dfU - dfV| drawn uniformly in
    [0, astigmatism_A]; angle uniform in [0, 180). max_shift_px: shifts t uniform in [-max, max] per axis (pixels).
    """

    outdir: str
    n: int | None = None
    maps: Sequence[str] = ()
    volumes: Sequence[np.ndarray] | None = None
    box: int | None = None
    apix: float | None = None
    snr: float = 0.1
    fractions: Sequence[float] | None = None
    defocus_um: tuple[float, float] = (1.0, 2.5)
    defocus_dist: str = "uniform"
    astigmatism_A: float = 200.0
    kv: float = 300.0
    cs_mm: float = 2.7
    amp_contrast: float = 0.1
    bfactor: float = 0.0
    max_shift_px: float = 0.0
    seed: int = 0
    hinge: HingeConfig = field(default_factory=HingeConfig)
    from_metadata: str | None = None
    chunk: int = 500
    pad: int = 2
    progress: bool = True
    overwrite: bool = False


@dataclass
class SimulationResult:
    outdir: Path
    n: int
    D: int
    apix: float
    n_states: int
    noise_std: float
    signal_var: float
    seconds: float
    files: dict[str, Path]


def demo_config(outdir: str | Path, n: int = 2000, box: int = 64, snr: float = 0.1, seed: int = 0,
                continuous: bool = False) -> SimulationConfig:
    """Two-state (or continuous) hinge dataset from the bundled 70S ribosome map at DEMO_MAP_APIX A/voxel."""
    return SimulationConfig(outdir=str(outdir), n=n, maps=[str(DEMO_MAP)], apix=DEMO_MAP_APIX, box=box, snr=snr,
                            seed=seed, max_shift_px=2.0, defocus_um=(1.0, 2.5),
                            hinge=HingeConfig(steps=2, continuous=continuous, angle_deg=20.0), progress=False)
