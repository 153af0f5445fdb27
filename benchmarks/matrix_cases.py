"""The cases of the benchmark matrix (matrix.py): the fixture maps, the case list, suites and time estimates."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
FIXTURES = Path(os.environ.get("CRYOFIRE_FIXTURES", ROOT.parent / "shared" / "fixtures"))


@dataclass(frozen=True)
class MapSpec:
    """A fixture map: path under FIXTURES, its voxel size in A, and where that number comes from."""

    path: str
    apix: float
    apix_note: str
    box: int
    molecule: str


MAPS = {
    "70s": MapSpec("aspire/clean70SRibosome_vol_65p.mrc", 5.0, "assumed (header 0): ~250 A ribosome over ~50 voxels, "
                   "as simulate.DEMO_MAP_APIX", 65, "70S ribosome (ASPIRE)"),
    "emd0409": MapSpec("derived/emd_0409_64_from_aspire_mat.mrc", 7.5, "assumed (header 0, entry not checked): a "
                       "large near-isotropic assembly filling the 64 box -> 480 A, the matrix's coarse-pixel map",
                       64, "EMD-0409 (ASPIRE sparse-Kam)"),
    "emd25892": MapSpec("derived/emd_25892_64_from_aspire_mat.mrc", 2.0, "assumed (header 0, entry not checked): "
                        "arc-shaped density, 128 A field of view", 64, "EMD-25892 (ASPIRE sparse-Kam, arc)"),
    "tubulin": MapSpec("cylindra/beta-tubulin.mrc", 5.144, "header", 20, "beta-tubulin monomer (EMD-7974 cut)"),
    "template": MapSpec("cylindra/template.mrc", 5.395, "header", 37, "microtubule segment (EMD-7974 template)"),
    "spike": MapSpec("derived/spike-vol_zcrop16_cubic.mrc", 8.0, "header (derived cubic crop)", 16,
                     "spike glycoprotein (cryoDRGN test map)"),
    "emd3197": MapSpec("mrcfile/EMD-3197.map", 11.4, "header", 20, "EMD-3197 vesicle-forming membrane (sub-tomogram)"),
}
# Not used: mrcfile/EMD-3001.map (MicroED peptide crystal, 43x25x73 voxels, anisotropic 0.39-0.46 A: not a single
# particle and not cubic); cryodrgn/spike-vol.mrc (non-cubic; derived/spike-vol_zcrop16_cubic.mrc is its cube).
# Symmetry: none of the fixtures is clearly point-group symmetric at its sampling (self-correlation under rotations
# about the principal axes; the spike crop gives 0.55 at 120 deg about its long axis vs 0.80 at 30 deg, i.e. no C3).
# EMD-3197 is the near-symmetric one (0.94 under 180 deg, 0.89 under 120 deg about one axis): its pose errors are
# not reduced by any symmetry and mostly measure that ambiguity.


@dataclass(frozen=True)
class Case:
    """One matrix case: ``maps`` keys of MAPS (one map + hinge states, or one map per state on the same grid)."""

    name: str
    maps: tuple[str, ...]
    box: int
    n: int
    snr: float
    fractions: tuple[float, ...] | None = (0.5, 0.5)
    hinge_steps: int = 2               # >= 2: discrete hinge states of the one map; 0: the maps are the states
    hinge_continuous: bool = False     # a uniform hinge coordinate (labels: hinge_steps bins, default 5)
    hinge_angle: float = 20.0
    max_shift: float = 4.0
    apix: float | None = None          # override the map's voxel size (several maps on one grid)
    seed: int = 0                      # simulation seed; the training seed is seed + 1
    suites: tuple[str, ...] = ("full",)
    symmetric: bool = False
    note: str = ""

    @property
    def n_states(self) -> int:
        if self.hinge_steps == 0 and not self.hinge_continuous:
            return len(self.maps)
        return self.hinge_steps if self.hinge_steps >= 2 else 5

    def map_spec(self) -> MapSpec:
        return MAPS[self.maps[0]]

    @property
    def map_apix(self) -> float:
        return self.apix if self.apix is not None else self.map_spec().apix

    @property
    def pixel_A(self) -> float:
        return self.map_apix * self.map_spec().box / self.box

    @property
    def states_label(self) -> str:
        if self.hinge_continuous:
            return f"continuous hinge {self.hinge_angle:g} deg ({self.n_states} bins)"
        fr = "/".join(f"{100 * f:.0f}" for f in (self.fractions or [1 / self.n_states] * self.n_states))
        if self.hinge_steps >= 2:
            return f"{self.n_states} hinge states {fr} ({self.hinge_angle:g} deg)"
        return f"{self.n_states} maps {fr}"

    def view_target_deg(self) -> float:
        """The issue's target: median view error <= 3 deg at SNR >= 0.1, <= 5 deg below."""
        return 3.0 if self.snr >= 0.1 - 1e-9 else 5.0


SMOKE = ("smoke", "full")
CASES: list[Case] = [
    # --- smoke: one box-32 coarse-pixel case, one box-64 case, one small molecule at high SNR (~15-20 min in all)
    Case("emd0409-b32-snr01-h9010", ("emd0409",), 32, 2000, 0.1, (0.9, 0.1), hinge_angle=30.0, suites=SMOKE,
         note="coarse pixel (15 A) at box 32"),
    Case("70s-b64-snr01-h9010-n2k", ("70s",), 64, 2000, 0.1, (0.9, 0.1), suites=SMOKE,
         note="the issue-5 set, fewer images"),
    Case("spike-b32-snr1-h5050", ("spike",), 32, 2000, 1.0, (0.5, 0.5), hinge_angle=30.0, suites=SMOKE,
         note="small map padded 16 -> 32"),
    # --- full
    Case("70s-b32-snr01-h9010", ("70s",), 32, 5000, 0.1, (0.9, 0.1)),
    Case("70s-b64-snr01-h9010", ("70s",), 64, 5000, 0.1, (0.9, 0.1), note="the issue-5 reference set"),
    Case("70s-b64-snr005-h5050", ("70s",), 64, 5000, 0.05, (0.5, 0.5)),
    Case("70s-b128-snr01-h5050", ("70s",), 128, 5000, 0.1, (0.5, 0.5), note="box 128 (Fourier-padded 65 -> 128)"),
    Case("70s-b64-snr01-cont", ("70s",), 64, 5000, 0.1, None, hinge_steps=5, hinge_continuous=True,
         hinge_angle=30.0, note="continuous hinge; confusion over 5 bins, oracle approximate"),
    Case("70s-b64-snr01-k3", ("70s",), 64, 5000, 0.1, (0.34, 0.33, 0.33), hinge_steps=3, hinge_angle=30.0,
         note="K=3 hinge states 0/15/30 deg"),
    Case("emd0409-b32-snr005-h5050", ("emd0409",), 32, 5000, 0.05, (0.5, 0.5), hinge_angle=30.0,
         note="coarse pixel (15 A), lowest SNR"),
    Case("emd0409-b64-snr01-h9010", ("emd0409",), 64, 5000, 0.1, (0.9, 0.1), hinge_angle=30.0),
    Case("two-maps-b64-snr01-5050", ("emd0409", "emd25892"), 64, 5000, 0.1, (0.5, 0.5), hinge_steps=0, apix=3.0,
         note="two different real maps as the states, both at an assumed 3.0 A/voxel"),
    Case("emd25892-b64-snr1-h9010", ("emd25892",), 64, 3000, 1.0, (0.9, 0.1), hinge_angle=30.0),
    Case("emd25892-b128-snr01-h5050", ("emd25892",), 128, 5000, 0.1, (0.5, 0.5), hinge_angle=30.0,
         note="1.0 A pixels (map padded 64 -> 128)"),
    Case("tubulin-b64-snr01-h5050", ("tubulin",), 64, 5000, 0.1, (0.5, 0.5), hinge_angle=30.0,
         note="1.6 A pixels (map padded 20 -> 64: no information beyond 10.3 A)"),
    Case("tubulin-b32-snr1-h9010", ("tubulin",), 32, 3000, 1.0, (0.9, 0.1), hinge_angle=30.0),
    Case("template-b32-snr005-h9010", ("template",), 32, 5000, 0.05, (0.9, 0.1), hinge_angle=30.0),
    Case("template-b64-snr01-h5050", ("template",), 64, 5000, 0.1, (0.5, 0.5), hinge_angle=30.0),
    Case("spike-b32-snr01-h9010", ("spike",), 32, 5000, 0.1, (0.9, 0.1), hinge_angle=30.0),
    Case("emd3197-b32-snr1-h5050", ("emd3197",), 32, 3000, 1.0, (0.5, 0.5), hinge_angle=30.0, symmetric=True,
         note="near-symmetric (see MAPS); pose errors mostly measure the ambiguity"),
    # --- check: the harness's own end-to-end check (python benchmarks/matrix.py --suite check --num-images 2000
    # --out /tmp/matrix-check); not a benchmark
    Case("check-70s-b32-n300", ("70s",), 32, 300, 0.1, (0.5, 0.5), suites=("check",)),
]

# Estimated wall time on 2 shared cores: the seed search (a fixed part + per simulated image), training per image
# seen (the default budget is 20 passes over the ~95 % training split) and a fixed overhead (start-up, simulation,
# oracle, final pass, self-diagnosis, eval). From accuracy.py's box-64 runs (seed ~4.5 min on 5,000 images, training
# ~2.6 ms per image) and this harness's box-32 check (seed 65 s on 285 images); box 128 is extrapolated (~4x box 64),
# so treat it as a rough guess. Other developers' jobs on the same cores can double any of these.
SEED_FIXED_S = 45.0
SEED_S_PER_IMAGE = {32: 0.03, 64: 0.045, 128: 0.18}
TRAIN_S_PER_IMAGE = {32: 0.002, 64: 0.0026, 128: 0.010}
OVERHEAD_S = 60.0


def estimate_s(case: Case, num_images: int | None = None) -> float:
    budget = num_images if num_images is not None else 20 * 0.95 * case.n
    return SEED_FIXED_S + case.n * SEED_S_PER_IMAGE[case.box] + budget * TRAIN_S_PER_IMAGE[case.box] + OVERHEAD_S


def suite_cases(suite: str, names: list[str] | None = None) -> list[Case]:
    cases = [c for c in CASES if suite in c.suites]
    if names:
        by = {c.name: c for c in CASES}
        unknown = [n for n in names if n not in by]
        if unknown:
            raise SystemExit(f"unknown case(s) {', '.join(unknown)}; see --list")
        cases = [by[n] for n in names]
    return cases
