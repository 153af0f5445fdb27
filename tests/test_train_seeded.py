"""The default "seeded" schedule end to end from scratch (Trainer: seed -> distill -> joint), CPU, seeded.

600 images of box 32 simulated with `cryofire_app.simulate` from the bundled 70S map (state 0) and the same map
with a ball of radius d/5 removed around its densest off-centre point (state 1), 60/40, SNR 10, random CTF,
shifts <= 1.5 px, RELION sign (particles white). The explicit seed alone reaches ~1.4 deg median view error and
< 1 % state confusion on this set (measured). The asserted quantities are the **encoder's** final amortized
predictions (pose.pkl / z.pkl via analysis.Run), after global alignment: a wrong basin or a hand/sign/convention slip
between the seed and the trainer leaves the view error at 40-90 deg and the confusion near 0.4, while an encoder
that learned the seeded poses is within a few degrees (the encoder regresses poses from a 32-px image, so it is
looser than the seed: threshold 10 deg, well under the ~15 deg spacing of the seed's own search grid), and z must
separate the states (confusion of PC1 of z < 5 %). Measured with this config: 0.9 deg median view error and 0.0 %
confusion (the seed's own poses 1.0 deg, the encoder within 1.5 deg of them), ~35 s for the run on one thread.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cryofire_app.analysis import metrics
from cryofire_app.analysis.evaluate import evaluate, predictions_from_run
from cryofire_app.analysis.run import Run
from cryofire_app.io import load_particles, read_ind_pkl, read_map, read_pose_pkl, read_z_pkl
from cryofire_app.io.errors import InputError
from cryofire_app.simulate import DEMO_MAP, DEMO_MAP_APIX, SimulationConfig, simulate
from cryofire_app.training import (
    Checkpoint,
    DecoderConfig,
    EncoderConfig,
    Finished,
    Message,
    PhaseChange,
    SeedProgress,
    Step,
    TrainConfig,
    Trainer,
)
from cryofire_app.training.checkpoint import load_checkpoint
from cryofire_app.training.dataset import ParticleData
from cryofire_app.training.events import Verdict
from cryofire_app.training.inference import predict

N, BOX = 600, 32


def two_state_maps() -> list[np.ndarray]:
    v0 = read_map(DEMO_MAP)[0].astype(np.float32)
    d = v0.shape[0]
    ax = np.arange(d) - d // 2
    zz, yy, xx = np.meshgrid(ax, ax, ax, indexing="ij")
    r = np.sqrt(xx ** 2 + yy ** 2 + zz ** 2)
    c = np.array(np.unravel_index(np.argmax(np.where(r > d / 5, v0, -1e9)), v0.shape)) - d // 2
    ball = ((zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2) <= (d / 5) ** 2
    return [v0, v0 * ~ball]


def seeded_config(particles: str, outdir, **kw) -> TrainConfig:
    base = dict(particles=particles, outdir=str(outdir), zdim=2, batch_size=32, num_images=25600, lr=1e-3,
                seed=0, device="cpu", num_threads=1, checkpoint_every=10 ** 9, latents_every=10 ** 9,
                val_fraction=0.0, freq_max=8, schedule="seeded", distill_fraction=0.85,
                encoder=EncoderConfig(channels=(8, 16, 32), hidden=256),
                decoder=DecoderConfig(pe_dim=32, hidden=64, layers=2),
                seed_config=dict(box_global=16, radius_global=[4.0, 5.0], n_restarts=1, iters_global=8,
                                 max_shift_px=2.0, box_search=16, iters_search=2, boxes_local=[16, 24, 32],
                                 iters_local=1, box_hetero=32, iters_als=8, seed=0))
    base.update(kw)
    return TrainConfig.of(**base)


def small_seeded(**kw) -> dict:
    """TrainConfig overrides of a seconds-long seeded run on a box-16 set: a minimal seed, the joint phase open at
    half the budget whatever the encoder's agreement (for tests of plumbing, not accuracy)."""
    base = dict(batch_size=16, seed_agreement_deg=180.0, distill_fraction=0.5,
                seed_config=dict(box_global=16, radius_global=[4.0, 5.0], n_restarts=1, iters_global=2,
                                 max_shift_px=1.0, box_search=16, iters_search=1, boxes_local=[16], iters_local=1,
                                 box_hetero=16, iters_als=1, seed=0))
    base.update(kw)
    return base


@pytest.fixture(scope="module")
def seeded_data(tmp_path_factory):
    """The 600-image training set and a 300-image held-out set of the same two states (simulation seed 1)."""
    root = tmp_path_factory.mktemp("seeded")
    for name, n, seed in (("sim", N, 0), ("held", 300, 1)):
        simulate(SimulationConfig(outdir=str(root / name), n=n, volumes=two_state_maps(), apix=DEMO_MAP_APIX, box=BOX,
                                  snr=10.0, fractions=[0.6, 0.4], max_shift_px=1.5, seed=seed, progress=False))
    return root


@pytest.fixture(scope="module")
def seeded_run(seeded_data):
    """The from-scratch run without in-plane augmentation (so that the encoder can reach the seed's poses on its
    600 training images in 25,600 images and the joint phase opens), trained once for the tests below."""
    torch.set_num_threads(1)
    cfg = seeded_config(str(seeded_data / "sim" / "particles.star"), seeded_data / "run", augment_inplane=False)
    tr = Trainer(cfg)
    events = list(tr.run())
    return tr, cfg, events


def encoder_answers(tr: Trainer, data_dir):
    """Encoder-only predictions for the run's training particles and for the held-out set (normalised with the run's
    statistics)."""
    hd = ParticleData(load_particles(str(data_dir / "held" / "particles.star")), tr.D)
    hd.prep.sigma_real, hd.prep.sigma_ht = tr.data.prep.sigma_real, tr.data.prep.sigma_ht
    ph = predict(tr.model, hd, np.arange(hd.N), sign=tr.sign, select="encoder")
    pt = predict(tr.model, tr.data, tr.train_pos, sign=tr.sign, select="encoder")
    return pt, ph


def encoder_errors(tr: Trainer, data_dir, answers=None) -> tuple[float, float]:
    """Median view errors (deg, each after its own global alignment) of the encoder alone on the run's training
    particles and on the held-out set (``answers``: encoder_answers' result, if already computed)."""
    pt, ph = answers or encoder_answers(tr, data_dir)
    gt_train = read_pose_pkl(data_dir / "sim" / "poses.pkl")[0][tr.train_pos]
    gt_held = read_pose_pkl(data_dir / "held" / "poses.pkl")[0]
    return (metrics.rotation_errors(pt.rot, gt_train)["rot_view_median_deg"],
            metrics.rotation_errors(ph.rot, gt_held)["rot_view_median_deg"])


def infer_held_out_error(tr: Trainer, data_dir, view: bool = True) -> float:
    """Median view error (deg) of `cryofire infer`'s default on the held-out set: 8 turns + mirror, then (``view``) the
    view encoder on each image turned into its view's frame (model.view); ``view=False``: without that step."""
    hd = ParticleData(load_particles(str(data_dir / "held" / "particles.star")), tr.D)
    hd.prep.sigma_real, hd.prep.sigma_ht = tr.data.prep.sigma_real, tr.data.prep.sigma_ht
    kept = tr.model.view
    if not view:
        tr.model.view = None
    try:
        ph = predict(tr.model, hd, np.arange(hd.N), sign=tr.sign, select="encoder", turns=8)
    finally:
        tr.model.view = kept
    return metrics.rotation_errors(ph.rot, read_pose_pkl(data_dir / "held" / "poses.pkl")[0])["rot_view_median_deg"]


def test_seeded_schedule_from_scratch(seeded_data, seeded_run):
    tr, cfg, events = seeded_run
    sim, run_dir = seeded_data / "sim", seeded_data / "run"
    steps = [e for e in events if isinstance(e, Step)]
    phases = [s.phase for s in steps]
    assert phases[0] == "seed" and "distill" in phases and phases[-1] == "joint"
    assert phases.index("joint") > phases.index("distill") > phases.index("seed")
    assert all(s.images_seen == 0 and np.isfinite(s.loss) for s in steps if s.phase == "seed")
    stages = [e.stage for e in events if isinstance(e, SeedProgress)]
    assert stages[0] == "prepare" and stages[-1] == "done" and len(set(stages)) == len(stages)
    announced = [e.phase for e in events if isinstance(e, PhaseChange)]
    assert announced == ["seed", "distill", "joint"]
    assert isinstance(events[-1], Finished) and events[-1].images_seen == 25600

    # data sign: RELION-convention particles -> the seed's map is negative on the raw data -> the trainer inverts
    seed = np.load(run_dir / "checkpoints" / "seed.npz")
    assert int(seed["density_sign"]) == -1 and tr.sign == -1.0
    assert tr.consensus_sign() > 0       # the decoder's consensus density is positive in the trainer's sign

    gt_rot, gt_trans = read_pose_pkl(sim / "poses.pkl")
    labels = np.load(sim / "labels.npy")
    run = Run(run_dir)
    res = evaluate(predictions_from_run(run), gt_rot, gt_trans, gt_labels=labels)
    assert res["rot_view_median_deg"] < 10.0, res["rot_view_median_deg"]
    assert res["confusion"] < 0.05, res["confusion"]
    # the seed's own poses are written beside the encoder's, for the training split
    srot, _ = read_pose_pkl(run_dir / "seed_pose.pkl")
    sind = read_ind_pkl(run_dir / "seed_ind.pkl")
    states = np.load(run_dir / "seed_states.npz")
    assert np.array_equal(states["index"], sind) and states["state"].shape == sind.shape
    e = float(np.mean(states["state"] != labels[sind]))
    assert min(e, 1 - e) < 0.05          # the seed's own two-state labels, exported beside its poses
    seed_err = metrics.rotation_errors(srot, gt_rot[sind])["rot_view_median_deg"]
    assert seed_err < 5.0
    # the encoder reproduced the seed's poses (label-free check), which is what opened the joint phase
    assert tr.joint_ok and tr.agreement_deg < cfg.seeded.seed_agreement_deg
    print(f"\nseeded from scratch ({N} images, box {BOX}): seed {seed_err:.2f} deg, encoder-seed agreement "
          f"{tr.agreement_deg:.2f} deg, final {res['rot_view_median_deg']:.2f} deg, confusion {res['confusion']:.4f}")
    ck = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert ck["seed_done"] and ck["schedule"] == "seeded" and ck["phase"] == "joint"
    # the run's own verdict, without the truth: converged, in the event stream and in report.json
    verdicts = [e for e in events if isinstance(e, Verdict)]
    assert len(verdicts) == 1 and verdicts[0].path == str(run_dir / "report.json"), verdicts
    report = json.loads((run_dir / "report.json").read_text())
    assert report["verdict"] == verdicts[0].verdict == "uncertain"   # val_fraction 0: nothing held out to check
    assert report["reasons"][0].startswith("no held-out particles")
    assert report["checks"]["halves_gain_median"] > 0.8 and report["checks"]["state_auc"] > 0.9, report["checks"]
    # the final explicit reconstruction at the run's poses: maps in reconstruction/, sharper than the decoder's band
    rec = report["reconstruction"]
    assert {"map.mrc", "half_1.mrc", "half_2.mrc", "state_0.mrc", "state_1.mrc", "fsc.png"} <= set(rec["files"])
    vol, info = read_map(run_dir / "reconstruction" / "map.mrc")
    assert vol.shape == (BOX,) * 3 and info.apix == pytest.approx(tr.data.apix, rel=1e-4)
    gt = read_map(sim / "gt_state_0.mrc")[0]
    al = metrics.align_rotations(read_pose_pkl(run_dir / "pose.pkl")[0], gt_rot)
    fsc_gt = metrics.fsc_report(metrics.align_volume_to_gt(vol, al, gt=gt), gt)
    assert fsc_gt["res_0.5_px"] < BOX / cfg.freq_max, fsc_gt["res_0.5_px"]   # beyond the decoder's band


@pytest.fixture(scope="module")
def aug_run(seeded_data, seeded_run):
    """The run with in-plane augmentation (the seeded default), the seed reused from the run above."""
    torch.set_num_threads(1)
    cfg = seeded_config(str(seeded_data / "sim" / "particles.star"), seeded_data / "run_aug",
                        seed_from=str(seeded_data / "run"), distill_synth_z=True)
    tr = Trainer(cfg)
    return tr, cfg, list(tr.run())


def test_in_plane_augmentation_makes_the_encoder_answer_for_new_images(seeded_data, seeded_run, aug_run):
    """Without augmentation the encoder above memorised its 600 training images: close to the seed on them, near
    chance on 300 new images of the same particle (measured: 0.9 vs 80.3 deg). With augmentation (the seeded default;
    the seed reused from the run above via seed_from) the encoder reads each pose from its image turned by a random
    in-plane angle, so only the particle's appearance helps: the error on new images is close to the error on the
    training images (measured after 25,600 images: 5.2 vs 9.0 deg with the grid rotation head, synthetic distill
    images and the view encoder's draws from the same stream; 5.6 vs 8.3 before the view encoder, 6.2 vs 9.5 without
    synthetic images, 39.9 vs 43.4 with the 6D head; issue 5's set,
    benchmarks/results/accuracy-20261125-0019-vm-seeded.md: 4.4 deg held out after 400k)."""
    tr0 = seeded_run[0]
    tr_err0, held_err0 = encoder_errors(tr0, seeded_data)
    assert held_err0 - tr_err0 > 30.0, (tr_err0, held_err0)
    tr, cfg, events = aug_run
    assert cfg.augment_inplane is None        # the default: on for the seeded schedule
    assert tr.augment and not any(isinstance(e, Step) and e.phase == "seed" for e in events)
    assert any(isinstance(e, Message) and e.topic == "seed_reused" for e in events)
    # synthetic images of the seed's map (training.synthetic, fitted to these data) join the distill pose rows
    assert cfg.seeded.distill_synth_ratio == 0.5
    assert any(isinstance(e, Message) and e.topic == "synthetic_images" and e.level == "info" for e in events)
    assert tr.synth is not None and tr.synth.amplitude > 0
    # ... with distill_synth_z drawn from maps of the seed's states, teaching the z head too (one map per state)
    n_states = int(np.asarray(tr.seed["state"]).max()) + 1
    assert n_states >= 2 and tr.synth_z is not None and len(tr.synth_z.renderers) == n_states
    pt, ph = encoder_answers(tr, seeded_data)
    tr_err, held_err = encoder_errors(tr, seeded_data, (pt, ph))
    print(f"\nencoder alone, training vs new images: no augmentation {tr_err0:.1f} / {held_err0:.1f} deg, "
          f"augmentation {tr_err:.1f} / {held_err:.1f} deg")
    assert abs(held_err - tr_err) < 8.0, (tr_err, held_err)
    assert held_err < held_err0 - 10.0
    # the view encoder (on by default with the grid head) trained beside the encoder; `cryofire infer` uses it
    assert tr.model.view is not None and tr0.model.view is not None
    with_view, without = infer_held_out_error(tr, seeded_data), infer_held_out_error(tr, seeded_data, view=False)
    print(f"held out, 8 turns + mirror: {without:.2f} deg, then the view encoder {with_view:.2f} deg")
    # measured: 5.11 deg without, 3.90 with (issue 5's set: 4.2 -> 3.0, benchmarks/results/accuracy-20261125-1208)
    assert with_view < without - 0.4, (with_view, without)
    # z_0 (distilled from the seed's state score on the image as given and on its turned copy) separates the states of
    # new images too, not only of the training images it saw (measured with 51,200 images: 0.0 % / 6.7 %; with the
    # target on the image as given only, 0.0 % / 19.3 %, i.e. memorised; here, 25,600 images: 0.0 % / 8.3 %, 11.0 %
    # without synthetic images; chance 40 %. On issue 5's set, SNR 0.1, new images' z stays at chance either way: the
    # seed's labels are the answer there)
    c_train = metrics.confusion_by_thresholds(pt.z[:, 0], np.load(seeded_data / "sim" / "labels.npy")[tr.train_pos])
    c_held = metrics.confusion_by_thresholds(ph.z[:, 0], np.load(seeded_data / "held" / "labels.npy"))
    print(f"z_0 confusion, training vs new images: {c_train['confusion']:.3f} / {c_held['confusion']:.3f}")
    assert c_train["confusion"] < 0.05 and c_held["confusion"] < 0.15, (c_train, c_held)
    # the outputs still hold the seed's poses where the decoder prefers them (the encoder has not converged)
    sind = read_ind_pkl(seeded_data / "run_aug" / "seed_ind.pkl")
    gt = read_pose_pkl(seeded_data / "sim" / "poses.pkl")[0]
    rot, _ = read_pose_pkl(seeded_data / "run_aug" / "pose.pkl")
    assert metrics.rotation_errors(rot[sind], gt[sind])["rot_view_median_deg"] < 5.0


def test_infer_refines_new_poses_on_the_seed_map(seeded_data, aug_run, tmp_path):
    """`cryofire infer` by default refines the encoder's poses of new particles against the seed's map (the seed's
    own last step, saved in seed.npz) and computes z on the seed's basis at them; both are closer to the truth."""
    from cryofire_app.cli import main

    run = seeded_data / "run_aug"
    with np.load(run / "checkpoints" / "seed.npz") as f:
        assert {"refine_box", "refine_radius", "data_scale"} <= set(f.files)
    held = seeded_data / "held"
    gt = read_pose_pkl(held / "poses.pkl")[0]
    err = {}
    for name, extra in (("default", []), ("encoder", ["--refine-poses", "no", "--z-from", "encoder"])):
        assert main(["infer", str(run), str(held / "particles.star"), "-o", str(tmp_path / name), *extra]) == 0
        err[name] = metrics.rotation_errors(read_pose_pkl(tmp_path / name / "pose.pkl")[0], gt)["rot_view_median_deg"]
    print(f"\nnew particles' median view error: encoder {err['encoder']:.2f} deg, refined {err['default']:.2f} deg")
    assert err["default"] <= min(err["encoder"], 3.0), err
    from sklearn.metrics import roc_auc_score

    z = read_z_pkl(tmp_path / "default" / "z.pkl")
    auc = roc_auc_score(np.load(held / "labels.npy"), z[:, 0])
    print(f"z_0 on the seed basis, new particles: AUC of the states {max(auc, 1 - auc):.3f}")
    assert max(auc, 1 - auc) > 0.9, auc   # z_0 separates the two states of the new particles


def test_seed_from_checks_the_split(seeded_data, seeded_run, tmp_path):
    """A seed made on another training split is refused with the file named, before any training."""
    cfg = seeded_config(str(seeded_data / "sim" / "particles.star"), tmp_path / "run", val_fraction=0.1,
                        seed_from=str(seeded_data / "run"))
    with pytest.raises(InputError, match="another training split") as exc:
        list(Trainer(cfg).run())
    assert "seed.npz" in str(exc.value)
    cfg = seeded_config(str(seeded_data / "sim" / "particles.star"), tmp_path / "run2", seed_from=str(tmp_path))
    with pytest.raises(InputError, match="no seed to reuse"):
        list(Trainer(cfg).run())


def test_seeded_resume_skips_the_seed(tmp_path):
    """Stop right after the seed; --resume continues in the distill phase without redoing the seed."""
    torch.set_num_threads(1)
    sim = tmp_path / "sim"
    simulate(SimulationConfig(outdir=str(sim), n=200, volumes=two_state_maps(), apix=DEMO_MAP_APIX, box=16,
                              snr=10.0, fractions=[0.6, 0.4], max_shift_px=1.0, seed=1, progress=False))
    # seed_agreement_deg 180: this tiny encoder cannot reproduce the seed's poses in 128 images; the joint phase
    # is opened unconditionally so that the resume path through distill -> joint is what is tested here
    small = dict(num_images=128, batch_size=16, seed_agreement_deg=180.0,
                 seed_config=dict(box_global=16, radius_global=[4.0, 5.0], n_restarts=1, iters_global=2,
                                  max_shift_px=1.0, box_search=16, iters_search=1, boxes_local=[16], iters_local=1,
                                  box_hetero=16, iters_als=1, seed=0))
    cfg = seeded_config(str(sim / "particles.star"), tmp_path / "run", **small)
    tr = Trainer(cfg)
    for ev in tr.run():
        if isinstance(ev, Step) and ev.phase == "distill":
            tr.request_stop()
    ck = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert ck["seed_done"] and 0 < ck["images_seen"] < 128
    mtime = (tmp_path / "run" / "checkpoints" / "seed.npz").stat().st_mtime_ns
    tr2 = Trainer(seeded_config(str(sim / "particles.star"), tmp_path / "run", **small), resume=True)
    evs = list(tr2.run())
    phases = [e.phase for e in evs if isinstance(e, Step)]
    assert "seed" not in phases and phases[0] == "distill" and phases[-1] == "joint"
    assert (tmp_path / "run" / "checkpoints" / "seed.npz").stat().st_mtime_ns == mtime
    assert isinstance(evs[-1], Finished) and evs[-1].images_seen == 128 and tr2.sign == -1.0
    assert any(isinstance(e, Checkpoint) for e in evs)


def test_seeded_outputs_keep_the_seed_poses_when_the_encoder_has_not_learned_them(tmp_path):
    """Default gate (seed_agreement_deg 10): 128 images cannot teach the encoder the seed's poses, so the run stays in
    the distill phase (no joint training on the encoder's poses), says so, and pose.pkl holds the seed's poses."""
    torch.set_num_threads(1)
    sim = tmp_path / "sim"
    simulate(SimulationConfig(outdir=str(sim), n=200, volumes=two_state_maps(), apix=DEMO_MAP_APIX, box=16,
                              snr=10.0, fractions=[0.6, 0.4], max_shift_px=1.0, seed=1, progress=False))
    cfg = seeded_config(str(sim / "particles.star"), tmp_path / "run", num_images=128, batch_size=16,
                        seed_config=dict(box_global=16, radius_global=[4.0, 5.0], n_restarts=1, iters_global=2,
                                         max_shift_px=1.0, box_search=16, iters_search=1, boxes_local=[16],
                                         iters_local=1, box_hetero=16, iters_als=1, seed=0))
    tr = Trainer(cfg)
    evs = list(tr.run())
    phases = {e.phase for e in evs if isinstance(e, Step)}
    assert "joint" not in phases and "distill" in phases
    assert any(isinstance(e, Message) and e.topic == "encoder_agreement" for e in evs)   # the user is told
    warn = [e for e in evs if isinstance(e, Message) and e.topic == "pose_source"]
    assert len(warn) == 1 and warn[0].level == "warning"   # ... and warned that the encoder is not reliable yet
    assert tr.agreement_deg is not None and tr.agreement_deg > cfg.seeded.seed_agreement_deg
    # per particle, pose.pkl keeps the pose the decoder fits better; the decoder was trained on the seed's poses
    # (briefly: 128 images), so those win for most training particles
    rot, _ = read_pose_pkl(tmp_path / "run" / "pose.pkl")
    seed_rot, _ = read_pose_pkl(tmp_path / "run" / "seed_pose.pkl")
    ind = read_ind_pkl(tmp_path / "run" / "seed_ind.pkl")
    same = np.all(np.abs(rot[ind] - seed_rot) < 1e-6, axis=(1, 2))
    assert same.mean() > 0.5 and tr.seed_pose_fraction == same.mean()


def test_seeded_distill_runs_under_bf16_autocast(tmp_path):
    """--precision applies to the distill phase too (it used to bypass autocast and the grad scaler)."""
    torch.set_num_threads(1)
    sim = tmp_path / "sim"
    simulate(SimulationConfig(outdir=str(sim), n=120, volumes=two_state_maps(), apix=DEMO_MAP_APIX, box=16,
                              snr=10.0, fractions=[0.6, 0.4], max_shift_px=1.0, seed=1, progress=False))
    cfg = seeded_config(str(sim / "particles.star"), tmp_path / "run", num_images=64, batch_size=16, precision="bf16",
                        seed_config=dict(box_global=16, radius_global=[4.0, 5.0], n_restarts=1, iters_global=2,
                                         max_shift_px=1.0, box_search=16, iters_search=1, boxes_local=[16],
                                         iters_local=1, box_hetero=16, iters_als=1, seed=0, box_research=0))
    tr = Trainer(cfg)
    steps = [e for e in tr.run() if isinstance(e, Step) and e.phase == "distill"]
    assert steps and all(np.isfinite(s.loss) for s in steps)
    assert all(p.dtype == torch.float32 for p in tr.model.parameters())   # autocast: fp32 weights, bf16 compute


def test_bounded_seed_searches_a_subset_and_training_reads_everyone(tmp_path):
    """seed_max_particles: the seed searches a fixed random subset of the training particles (the same on resume);
    distill batches come from that subset only, joint batches from all training particles, and every particle gets
    its pose and z in the outputs."""
    torch.set_num_threads(1)
    sim = tmp_path / "sim"
    simulate(SimulationConfig(outdir=str(sim), n=200, volumes=two_state_maps(), apix=DEMO_MAP_APIX, box=16,
                              snr=10.0, fractions=[0.6, 0.4], max_shift_px=1.0, seed=1, progress=False))
    small = small_seeded(num_images=320, seed_max_particles=64)
    cfg = seeded_config(str(sim / "particles.star"), tmp_path / "run", **small)
    tr = Trainer(cfg)
    read: dict[str, set] = {"distill": set(), "joint": set()}
    steps, real_train = tr.distill_step, tr.train_step

    def spy(kind, fn):
        def call(b):
            read[kind].update(int(p) for p in b.pos)
            return fn(b)
        return call

    tr.distill_step, tr.train_step = spy("distill", steps), spy("joint", real_train)
    evs = list(tr.run())
    assert isinstance(evs[-1], Finished)
    seed_phase = next(e for e in evs if isinstance(e, PhaseChange) and e.phase == "seed")
    assert seed_phase.particles == 64 and len(tr.train_pos) == 200   # the user is told the seed reads a subset
    with np.load(tmp_path / "run" / "checkpoints" / "seed.npz") as f:
        pos = f["pos"]
    assert len(pos) == 64 and set(pos.tolist()) <= set(tr.train_pos.tolist())
    assert read["distill"] and read["distill"] <= set(pos.tolist())
    assert read["joint"] - set(pos.tolist())   # the joint phase trains on particles the seed never saw
    rot, _ = read_pose_pkl(tmp_path / "run" / "pose.pkl")
    assert rot.shape == (200, 3, 3)
    # the particles the seed never searched get the encoder's guess refined against the seed's map (an encoder of
    # 320 images is near chance)
    others = np.setdiff1d(np.arange(200), pos)
    gt_rot = read_pose_pkl(sim / "poses.pkl")[0]
    al = metrics.align_rotations(rot[pos], gt_rot[pos])
    err = {k: metrics.rotation_errors(rot[r], gt_rot[r], alignment=al)["rot_view_median_deg"]
           for k, r in (("seed", pos), ("others", others))}
    assert tr.others_refined[:2] == (len(others), "search"), tr.others_refined
    assert err["others"] < 2 * err["seed"] + 3.0, err
    again = Trainer(seeded_config(str(sim / "particles.star"), tmp_path / "run2", **small))
    again._setup()
    assert np.array_equal(again.seed_pos, tr.seed_pos)   # a function of the split and --seed


def test_particles_the_seed_did_not_search_get_refined_poses(seeded_data, tmp_path):
    """The particles the seed never searched (here the held-out split; past seed_max_particles also the rest, which
    test_bounded_seed_... covers) get the encoder's guess refined against the seed's map (seeded.refine_others,
    default "search"): after a budget too short to teach the encoder, their poses in pose.pkl are as close to the
    truth as the seed's own, the encoder's alone are not; z on the seed's basis at those poses separates their
    states."""
    from sklearn.metrics import roc_auc_score

    torch.set_num_threads(1)
    sim = seeded_data / "sim"
    cfg = seeded_config(str(sim / "particles.star"), tmp_path / "run", num_images=640, val_fraction=0.1)
    tr = Trainer(cfg)
    assert isinstance(list(tr.run())[-1], Finished)
    with np.load(tmp_path / "run" / "checkpoints" / "seed.npz") as f:
        pos = f["pos"]
    others = np.setdiff1d(np.arange(N), pos)
    assert tr.others_refined[:2] == (len(others), "search") and set(tr.val_pos) <= set(others)
    gt_rot = read_pose_pkl(sim / "poses.pkl")[0]
    rot = read_pose_pkl(tmp_path / "run" / "pose.pkl")[0]
    al = metrics.align_rotations(rot[pos], gt_rot[pos])
    enc = predict(tr.model, tr.data, others, sign=tr.sign, select="encoder")
    err = {k: metrics.rotation_errors(r, gt_rot[rows], alignment=al)["rot_view_median_deg"]
           for k, r, rows in (("seed", rot[pos], pos), ("others", rot[others], others),
                              ("encoder", enc.rot, others))}
    print(f"\nmedian view error: seed's particles {err['seed']:.2f} deg, the others refined {err['others']:.2f} "
          f"deg, the encoder's own for them {err['encoder']:.2f} deg")
    assert err["others"] < max(2 * err["seed"], 3.0) and err["encoder"] > 2 * err["others"], err
    z = read_z_pkl(tmp_path / "run" / "z.pkl")
    auc = roc_auc_score(np.load(sim / "labels.npy")[others], z[others, 0])
    assert max(auc, 1 - auc) > 0.9, auc
