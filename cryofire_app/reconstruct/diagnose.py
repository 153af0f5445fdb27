"""Self-diagnosis of a reconstruction without ground truth: is the map, and are the poses and states, supported by
the data, or could noise have produced them?

The decisive check uses **held-out particles** (the run's validation split: never seen by the seed's search, the
map or the decoder). Each is scored against the map of all the other particles at every rotation of a ~15-degree
SO(3) grid, each rotation at its best shift of a small grid (the held-out images' own shifts are not trusted). Its
*pose signal* is how much better its best rotation fits than the grid's average, in standard deviations of its
scores over the grid (scores: squared residual minus ``||Y||^2``, lower is better, over the Fourier band where the
half maps agree, :mod:`.search`). The same is done for a *null* copy of each image: its Fourier coefficients
multiplied by random signs (power spectrum kept, structure destroyed). A real map matches real particles at some
pose far better than it matches noise of the same spectrum; a map fitted to noise (what an ab initio run that failed
leaves) matches both alike, because the held-out images' noise is not in it. ``signal_ratio`` = median pose signal
of the images over that of their null copies (~1 for noise, 1.5-2 for a real map), ``signal_z`` the paired z-score
of the difference.

Beside it:
- the held-out particles' *predicted* poses (the encoder's): ``gain = (s_random - s_pred) / (s_random - s_best)``,
  ~1 when the encoder's pose is as good as the grid's best, ~0 when it is no better than a random pose;
- the same gain for the fitted particles of one random half against the other half's map, and the half-map FSC:
  both are reported, but they are biased (the poses of both halves were found against one common map, which is how
  "Einstein from noise" happens), so they never make a run look converged on their own;
- states (labels given, K >= 2): half A's state maps classify half B's images at their final poses (and the other
  way round) by log-likelihood ratio; the area under the ROC curve for the run's own labels (0.5 = chance) says
  whether the split reproduces;
- ambiguous poses (:mod:`.symmetry`): each held-out image's best orientation against the fitted particles' map and
  its best orientation at least three grid spacings away, both refined; when the score difference is within two
  noise standard deviations the image cannot tell them apart. A map can pass every check above with many such
  particles (a pseudo-symmetric molecule: the map comes out nearly right whichever of the two poses a particle
  took); more than ``AMBIGUOUS_FRACTION`` of them makes the run "uncertain". The map's strongest self-similarity
  under a rotation (cross-half correlation, relative to the halves' own) is searched as well, to name the rotation
  when the particles' two orientations are related by it.

:func:`verdict` turns the checks into "converged", "uncertain" or "failed" with the reasons in words. Conventions as
in :mod:`.seed`: ``rot (N, 3, 3)`` cryoDRGN rows, ``trans_px (N, 2)`` pixels of the image box, the shift that
re-centres the particle.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch

from ..analysis.metrics import fsc, fsc_resolution_px
from .data import StackRows, prepare_particles, stage_data
from .grids import grid_spacing_deg, shift_grid, so3_grid
from .search import backproject, residual_sigma2, scores_at, slices
from .symmetry import AMBIGUOUS_Z, find_symmetry, pose_modes
from .volume import HartleyAccumulator, slicing_volume

#: Verdict thresholds, set on simulated sets at true and at random poses (docs/decisions/001-self-diagnosis.md)
SIGNAL_RATIO_FAILED = 1.15     # held-out pose signal over its null's: a fit to noise measures 0.95-1.05
SIGNAL_RATIO_CONVERGED = 1.3   # true poses measure 1.5-1.9 (box 32-64, SNR 0.1-0.3)
SIGNAL_Z_FAILED = 4.0          # paired z of the difference: below this it is not there at all ...
SIGNAL_Z_CONVERGED = 8.0       # ... and a converged run's is clearly significant
GAIN_CONVERGED = 0.6           # predicted (encoder) poses of held-out particles
STATE_AUC_SUPPORTED = 0.6
AMBIGUOUS_FRACTION = 0.25      # held-out particles that fit two separated orientations alike (.symmetry)


@dataclass
class DiagnoseConfig:
    """``max_particles``: fitted particles used at most (a random subset: bounded cost in N); ``n_score``: held-out
    particles used at most, and fitted images per half scored against the other half's map; ``max_box``: images are
    Fourier-cropped to at most this box; the SO(3) grid has ``grid_dirs x grid_psi`` rotations; ``symmetry``: run
    the map's symmetry search and the ambiguity check."""

    max_particles: int = 4000
    max_box: int = 64
    n_score: int = 400
    grid_dirs: int = 192
    grid_psi: int = 24
    seed: int = 0
    symmetry: bool = True


@dataclass
class Diagnosis:
    """The checks' numbers (see the module doc). ``signal_*``, ``heldout_gain_median`` and the ambiguity
    (``ambiguous_fraction``: held-out particles with two orientations alike; ``second_mode_*``: the median z of the
    two, their median separation, and the fraction of ambiguous particles whose two orientations the map's symmetry
    relates) are None without held-out particles; ``symmetry_*`` describe the map's strongest self-similarity
    (:class:`.symmetry.Symmetry`; angle None when there is none); ``fsc_curve`` per shell ``i / box`` cycles/px;
    ``apix`` of the diagnosis box."""

    n_particles: int
    n_heldout: int
    box: int
    apix: float | None
    band_radius_px: float
    signal_ratio: float | None
    signal_z: float | None
    heldout_gain_median: float | None
    heldout_agreement: float | None
    halves_gain_median: float
    halves_agreement: float
    agreement_chance: float
    fsc_half_0143_px: float
    fsc_half_05_px: float
    fsc_curve: list[float]
    state_auc: float | None = None
    state_sizes: list[int] | None = None
    symmetry_half_corr: float | None = None
    symmetry_angle_deg: float | None = None
    symmetry_axis: list[float] | None = None
    symmetry_cross_corr: float | None = None
    symmetry_fraction: float | None = None
    ambiguous_fraction: float | None = None
    second_mode_z_median: float | None = None
    second_mode_separation_deg: float | None = None
    second_mode_at_symmetry: float | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        for k in ("fsc_half_0143_px", "fsc_half_05_px"):
            d[k.replace("_px", "_A")] = None if self.apix is None or not math.isfinite(d[k]) else d[k] * self.apix
        return d


def null_images(images: np.ndarray, seed: int = 0) -> np.ndarray:
    """Copies of ``images (n, D, D)`` with every Fourier coefficient's sign flipped at random (one Hermitian-symmetric
    sign pattern per image, so the copies stay real): the same power spectrum, no particle."""
    rng = np.random.default_rng(seed)
    f = np.fft.fft2(images)
    signs = np.sign(np.fft.fft2(rng.standard_normal(images.shape)).real)
    signs[signs == 0] = 1.0
    return np.fft.ifft2(f * signs).real.astype(np.float32)


def _halves(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    perm = torch.randperm(n, generator=gen)
    return perm[: n // 2].sort().values, perm[n // 2:].sort().values


def _accumulate(data, rows, rot, trans) -> HartleyAccumulator:
    acc = HartleyAccumulator(data.d)
    backproject(acc, data, rot[rows], trans[rows], rows=rows)
    return acc


def _map(data, rows, rot, trans, sigma2: float, mask_radius: float) -> torch.Tensor:
    return _accumulate(data, rows, rot, trans).solve(sigma2, mask_radius=mask_radius)[0]


def _scores_grid(vh, data, rows, trans, grid, shifts=None, batch: int = 128) -> torch.Tensor:
    """``(len(rows), G)`` scores of every image at every grid rotation: at its own (final) shift ``trans``, or, with
    ``shifts (T, 2)`` (box-d px), at the best of those shifts for each rotation."""
    P = slices(vh, data.coords, grid)            # (G, K)
    P2 = P * P
    out = []
    for s in range(0, len(rows), batch):
        r = rows[s:s + batch]
        C = data.ctf[r]
        base = (C * C) @ P2.T
        if shifts is None:
            y = data.shifted(r, trans[r][:, None])[:, 0]
            out.append(base - 2 * (C * y) @ P.T)
            continue
        best = None
        for t in shifts:
            y = data.shifted(r, t[None])[:, 0]
            sc = base - 2 * (C * y) @ P.T
            best = sc if best is None else torch.minimum(best, sc)
        out.append(best)
    return torch.cat(out)


def _pose_check(vh, data, rows, rot, trans, grid, spacing_deg: float):
    """Per image of ``rows``: the gain of its pose over a random one, relative to the grid's best (see the module
    doc), and whether the grid's best rotation is within two grid spacings of its pose (all at its own shift)."""
    s_fin = scores_at(vh, data, rot[rows], trans[rows], rows)
    s_grid = _scores_grid(vh, data, rows, trans, grid)
    s_rand = s_grid.mean(1)
    s_best, i_best = s_grid.min(1)
    gain = (s_rand - s_fin) / (s_rand - s_best).clamp(min=1e-30)
    tr = (grid[i_best] * rot[rows]).sum((-1, -2))
    ang = torch.rad2deg(torch.arccos(((tr - 1) / 2).clamp(-1, 1)))
    return gain, (ang <= 2 * spacing_deg).float()


def _pose_signal(vh, data, rows, grid, shifts) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image: how far its best rotation (each at its best shift of ``shifts``) stands out of the grid, in
    standard deviations of its scores over the grid, and those scores ``(n, G)``. Needs no pose of the image."""
    s_grid = _scores_grid(vh, data, rows, None, grid, shifts=shifts)
    return (s_grid.mean(1) - s_grid.min(1).values) / s_grid.std(1).clamp(min=1e-30), s_grid


def _state_check(data, halves, rot, trans, state: np.ndarray, sigma2: float, mask_radius: float) -> float:
    """Area under the ROC curve with which the other half's state maps tell each particle's own state (one state
    against the rest by log-likelihood ratio at the final pose, averaged over states by size): 0.5 = chance."""
    from sklearn.metrics import roc_auc_score

    K = int(state.max()) + 1
    st = torch.as_tensor(state)
    loglik = torch.zeros(data.n, K)
    for a, b in (halves, halves[::-1]):
        for k in range(K):
            mem = a[st[a] == k]
            if len(mem) < 2:
                loglik[b, k] = -float("inf")
                continue
            vk = slicing_volume(_map(data, mem, rot, trans, sigma2, mask_radius))
            loglik[b, k] = -scores_at(vk, data, rot[b], trans[b], b) / (2 * sigma2)
    rows = torch.cat(halves)
    ll, lab = loglik[rows].double(), state[rows.numpy()]
    aucs, weights = [], []
    for k in range(K):
        pos = lab == k
        if pos.all() or not pos.any():
            continue
        others = torch.cat([ll[:, :k], ll[:, k + 1:]], 1)
        score = (ll[:, k] - torch.logsumexp(others, 1)).numpy()
        score = np.nan_to_num(score, nan=0.0, posinf=1e30, neginf=-1e30)
        aucs.append(roc_auc_score(pos, score))
        weights.append(pos.sum())
    return float(np.average(aucs, weights=weights))


def _subset(n_all: int, heldout, cfg: DiagnoseConfig, gen) -> tuple[np.ndarray, np.ndarray]:
    """Rows of the particles used (sorted): up to ``max_particles`` fitted ones and ``n_score`` held-out ones."""
    ho = np.zeros(n_all, bool) if heldout is None else np.asarray(heldout, bool)
    pick = []
    for rows, m in ((np.nonzero(~ho)[0], cfg.max_particles), (np.nonzero(ho)[0], cfg.n_score)):
        order = torch.randperm(len(rows), generator=gen).numpy()
        pick.append(rows[order[:m]])
    sub = np.sort(np.concatenate(pick))
    return sub, ho[sub]


def _signal(vh, sdata, rows_ho, rows_null, rot, trans, grid, spacing, shifts) -> dict:
    """Held-out checks against the fitted particles' map ``vh``: predicted-pose gain, and the pose signal of the
    images against that of their null copies (rows ``rows_null``, in the same order), searched over ``shifts``."""
    g, ok = _pose_check(vh, sdata, rows_ho, rot, trans, grid, spacing)
    sig, s_grid = _pose_signal(vh, sdata, rows_ho, grid, shifts)
    sig0, _ = _pose_signal(vh, sdata, rows_null, grid, shifts)
    diff = (sig - sig0).double()
    z = float(diff.mean() / (diff.std() / math.sqrt(len(diff)) + 1e-30)) if len(diff) > 1 else 0.0
    ratio = float(sig.median() / sig0.median().clamp(min=1e-30))
    return {"signal_ratio": ratio, "signal_z": z, "heldout_gain_median": float(g.median()),
            "heldout_agreement": float(ok.mean())}, s_grid


def _prepared(images, ctf_params, rot, trans_px, sub: np.ndarray, ho: np.ndarray, cfg: DiagnoseConfig):
    """The diagnosis subset ``sub`` prepared at the diagnosis box ``d`` (a Fourier crop; reconstruct.data), with a
    null copy of each held-out image last, its poses (``trans`` in px of box ``d``), ``d`` and the input box."""
    D = int(np.asarray(images[int(sub[0])]).shape[-1])
    held = np.zeros((int(ho.sum()), D, D), np.float32)
    for j, i in enumerate(sub[ho]):
        held[j] = images[int(i)]
    take = np.concatenate([sub, sub[ho]])
    ctf = None if ctf_params is None else np.asarray(ctf_params)[take]
    d = min(D, cfg.max_box)
    parts = prepare_particles(StackRows(images, sub, null_images(held, cfg.seed)), ctf, crop=d)   # nulls last
    rot_t = torch.as_tensor(np.asarray(rot, np.float32)[take])
    trans_t = torch.as_tensor(np.asarray(trans_px, np.float32)[take]) * (d / D)
    return parts, rot_t, trans_t, d, D


def _half_maps(data, rows_all, rot_t, trans_t, mask_r: float, gen):
    """Two random halves of the fitted particles, their merged sums (one back-projection pass), their maps, and
    the noise variance from the residuals of the fitted particles' map at their poses."""
    halves = tuple(rows_all[h] for h in _halves(len(rows_all), gen))
    accs = [_accumulate(data, h, rot_t, trans_t) for h in halves]
    full_acc = HartleyAccumulator.merged(accs)
    full = slicing_volume(full_acc.solve(1.0, mask_radius=mask_r)[0])
    sigma2 = residual_sigma2(scores_at(full, data, rot_t[rows_all], trans_t[rows_all], rows_all), data, rows_all)
    return halves, full_acc, [a.solve(sigma2, mask_radius=mask_r)[0] for a in accs], sigma2


def diagnose(images, ctf_params, rot, trans_px, state=None, apix: float | None = None, heldout=None,
             config: DiagnoseConfig | None = None) -> Diagnosis:
    """Run the checks on ``images (N, D, D)`` (raw data sign, any scale; D even) with ``ctf_params (N, 9)`` cryoDRGN
    rows or None, final poses ``rot (N, 3, 3)``, ``trans_px (N, 2)`` (px of box D) and optional ``state (N,)``.

    ``heldout (N,)`` bool marks the particles whose poses were predicted, not fitted (a validation split): they are
    left out of every map, and they carry the decisive check (module doc)."""
    cfg = config or DiagnoseConfig()
    gen = torch.Generator().manual_seed(cfg.seed)
    sub, ho = _subset(len(images), heldout, cfg, gen)
    n_ho = int(ho.sum())
    parts, rot_t, trans_t, d, D = _prepared(images, ctf_params, rot, trans_px, sub, ho, cfg)
    if state is not None:
        state = np.asarray(state)[sub][~ho]
    mask_r = 0.9 * d / 2
    data = stage_data(parts, d, d // 2)
    rows_all = torch.as_tensor(np.nonzero(~ho)[0])
    rows_ho = torch.as_tensor(np.nonzero(ho)[0])
    rows_null = torch.arange(len(sub), len(sub) + n_ho)
    halves, full_acc, maps, sigma2 = _half_maps(data, rows_all, rot_t, trans_t, mask_r, gen)
    _, curve = fsc(maps[0].numpy(), maps[1].numpy())
    freq = np.arange(len(curve)) / d
    r05, r0143 = fsc_resolution_px(freq, curve, 0.5), fsc_resolution_px(freq, curve, 0.143)
    # score in the band where the halves agree (at least 4 Fourier px: the particle's outline)
    band = float(np.clip(d / r0143 if math.isfinite(r0143) else 0.0, 4.0, 0.9 * d / 2))
    sdata = stage_data(parts, d, band)
    grid = so3_grid(cfg.grid_dirs, cfg.grid_psi)
    spacing = grid_spacing_deg(cfg.grid_dirs, cfg.grid_psi)
    gains, agree = [], []
    for vol, b in ((maps[0], halves[1]), (maps[1], halves[0])):
        rows = b[torch.randperm(len(b), generator=gen)[: cfg.n_score]]
        g, ok = _pose_check(slicing_volume(vol), sdata, rows, rot_t, trans_t, grid, spacing)
        gains.append(g)
        agree.append(ok)
    theta = math.radians(2 * spacing)
    chance = (theta - math.sin(theta)) / math.pi      # fraction of SO(3) within theta of a given rotation
    held = dict.fromkeys(("signal_ratio", "signal_z", "heldout_gain_median", "heldout_agreement"))
    vh = s_grid = shifts = None
    if n_ho >= 2:
        vh = slicing_volume(full_acc.solve(sigma2, mask_radius=mask_r)[0])
        # shifts of the held-out images are searched (their predicted shifts may be wrong), over the range the
        # fitted particles' shifts span, in 1-px steps of the diagnosis box
        ext = float(np.clip(np.quantile(trans_t[rows_all].abs().numpy(), 0.98), 1.0, d / 8))
        shifts = shift_grid(ext, max(1.0, ext / 3))
        held, s_grid = _signal(vh, sdata, rows_ho, rows_null, rot_t, trans_t, grid, spacing, shifts)
    sym = {}
    if cfg.symmetry:
        sym = _symmetry_check(maps, band, mask_r, vh, sdata, rows_ho, s_grid, grid, sigma2, shifts, spacing)
    auc = sizes = None
    if state is not None and len(np.unique(state)) >= 2:
        st = np.zeros(data.n, np.int64)
        st[rows_all.numpy()] = np.asarray(state, np.int64)
        sizes = np.bincount(st[rows_all.numpy()]).tolist()
        auc = _state_check(sdata, halves, rot_t, trans_t, st, sigma2, mask_r)
    return Diagnosis(int(len(rows_all)), n_ho, int(d), None if apix is None else float(apix * D / d), band,
                     halves_gain_median=float(torch.cat(gains).median()),
                     halves_agreement=float(torch.cat(agree).mean()), agreement_chance=float(chance),
                     fsc_half_0143_px=float(r0143), fsc_half_05_px=float(r05), fsc_curve=[float(c) for c in curve],
                     state_auc=auc, state_sizes=sizes, **held, **sym)


def _symmetry_check(maps, band, mask_r, vh, sdata, rows_ho, s_grid, grid, sigma2, shifts, spacing) -> dict:
    """The map's strongest pseudo-symmetry (from the half maps) and, with held-out particles, how many of them fit
    two separated orientations alike, and whether those are related by the symmetry (:mod:`.symmetry`)."""
    s = find_symmetry(maps[0].numpy(), maps[1].numpy(), band, mask_r)
    out = {"symmetry_half_corr": s.half_corr}
    if s.rot is not None:
        out.update(symmetry_angle_deg=s.angle_deg, symmetry_axis=s.axis, symmetry_cross_corr=s.cross_corr,
                   symmetry_fraction=s.fraction)
    if vh is not None:
        m = pose_modes(vh, sdata, rows_ho, s_grid, grid, spacing, sigma2, shifts, g=s.rot)
        out.update(ambiguous_fraction=m["ambiguous_fraction"], second_mode_z_median=m["z_median"],
                   second_mode_separation_deg=m["separation_deg"], second_mode_at_symmetry=m["at_symmetry_fraction"])
    return out


def _ambiguity_reason(diag: Diagnosis) -> str:
    amb = diag.ambiguous_fraction
    tail = ("score difference within {z:g} noise standard deviations; in a converged run nearly every particle "
            "prefers one").format(z=AMBIGUOUS_Z)
    at_sym = diag.second_mode_at_symmetry
    if diag.symmetry_angle_deg is not None and at_sym is not None and at_sym >= 0.5:
        ax = ", ".join(f"{a:.2f}" for a in diag.symmetry_axis)
        return (f"the map is nearly symmetric under a {diag.symmetry_angle_deg:.0f} deg rotation about the axis ({ax}) "
                f"(the rotated half map reproduces {100 * diag.symmetry_fraction:.0f} % of the other half's "
                f"agreement), and {100 * amb:.0f} % of the held-out particles fit an orientation and its mate under "
                f"that rotation equally well ({tail}): the map may be right, but per-particle poses, and a state "
                "split that follows them, are ambiguous; if the molecule is truly symmetric, impose the symmetry")
    sep = diag.second_mode_separation_deg
    return (f"{100 * amb:.0f} % of the held-out particles fit two orientations "
            f"{'' if sep is None else f'about {sep:.0f} deg '}apart equally well ({tail}): the map may look right, "
            "but many per-particle poses are ambiguous and may be wrong, and a state split may only follow them")


def verdict(diag: Diagnosis, encoder_agreement_deg: float | None = None,
            encoder_target_deg: float | None = None) -> tuple[str, list[str]]:
    """("converged" | "uncertain" | "failed", reasons). ``encoder_agreement_deg``: median angle between the encoder's
    and the seed's poses (seeded runs), checked against ``encoder_target_deg``. A diagnosis without the ambiguity
    check (``ambiguous_fraction`` None) is judged without it."""
    reasons: list[str] = []
    level = "converged"
    if diag.signal_ratio is None:
        level = "uncertain"
        reasons.append("no held-out particles to check the map against (validation split empty): the map and "
                       "poses could not be told from a fit to noise")
    else:
        r, z = diag.signal_ratio, diag.signal_z
        if r < SIGNAL_RATIO_FAILED or z < SIGNAL_Z_FAILED:
            reasons.append(f"held-out particles match the map no better than noise of the same spectrum does (pose "
                           f"signal ratio {r:.2f}, z {z:.1f}; a real map gives >= {SIGNAL_RATIO_CONVERGED:g}): the "
                           "map and poses are not supported by the data")
            return "failed", reasons
        if r < SIGNAL_RATIO_CONVERGED or z < SIGNAL_Z_CONVERGED:
            level = "uncertain"
            reasons.append(f"held-out particles match the map only weakly (pose signal ratio {r:.2f}, z {z:.1f}; a "
                           f"converged run gives >= {SIGNAL_RATIO_CONVERGED:g} and >= {SIGNAL_Z_CONVERGED:g})")
        g = diag.heldout_gain_median
        if g is not None and g < GAIN_CONVERGED:
            level = "uncertain"
            reasons.append(f"the encoder's poses for held-out particles explain them only partly (median pose gain "
                           f"{g:.2f}; >= {GAIN_CONVERGED} when reliable): poses of new particles (`cryofire infer`) "
                           "are not reliable")
    amb = diag.ambiguous_fraction
    if amb is not None and amb > AMBIGUOUS_FRACTION:
        level = "uncertain"
        reasons.append(_ambiguity_reason(diag))
    if diag.state_auc is not None and diag.state_auc < STATE_AUC_SUPPORTED:
        level = "uncertain"
        reasons.append(f"the state split does not reproduce across halves (the other half's state maps tell the "
                       f"states apart with AUC {diag.state_auc:.2f}; 0.5 is chance, >= {STATE_AUC_SUPPORTED} when "
                       "supported): treat the states as unconfirmed")
    if (encoder_agreement_deg is not None and encoder_target_deg is not None
            and encoder_agreement_deg > encoder_target_deg):
        level = "uncertain"
        reasons.append(f"the encoder stayed {encoder_agreement_deg:.1f} deg from the seed's poses (target "
                       f"{encoder_target_deg:g}): it has not learned the poses yet")
    return level, reasons
