"""Trainer behaviour on a tiny synthetic set: events, outputs, exact resume, kill during a checkpoint write,
NaN stop, pause/stop, CLI train + infer (seeded, a few seconds each)."""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from cryofire_app.analysis.run import Run
from cryofire_app.io import read_pose_pkl, read_z_pkl
from cryofire_app.training import (
    Checkpoint,
    DecoderConfig,
    EncoderConfig,
    Failed,
    Finished,
    Latents,
    Message,
    Step,
    TrainConfig,
    Trainer,
)
from cryofire_app.training.checkpoint import load_checkpoint
from test_train_data import make_dataset

D = 16


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("synth"), n=96, D=D, seed=0, max_shift=1.0, noise_std=0.3)


def tiny_config(data, outdir, **kw) -> TrainConfig:
    base = dict(particles=str(data.mrcs), ctf=str(data.ctf_pkl), outdir=str(outdir), D=D, zdim=2, batch_size=16,
                schedule="amortized",
                num_images=320, pose_only_images=160, checkpoint_every=96, latents_every=64, freq_start=3,
                freq_add_every=64, val_fraction=0.1, lr=1e-3, seed=0, device="cpu",
                encoder=EncoderConfig(channels=(8, 16), hidden=32), decoder=DecoderConfig(pe_dim=16, hidden=32,
                                                                                          layers=1))
    base.update(kw)
    return TrainConfig.of(**base)


def params(model) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def test_run_emits_events_and_writes_cryodrgn_outputs(data, tmp_path):
    tr = Trainer(tiny_config(data, tmp_path / "run"))
    evs = list(tr.run())
    kinds = [type(e).__name__ for e in evs]
    assert kinds[0] == "Started" and kinds[-1] == "Finished" and "Failed" not in kinds
    steps = [e for e in evs if isinstance(e, Step)]
    assert [s.images_seen for s in steps] == list(range(16, 321, 16))
    assert steps[0].phase == "pose_only" and steps[-1].phase == "joint"
    assert steps[0].mask_radius == 3 and steps[-1].mask_radius == 3 + 304 // 64
    cks = [e for e in evs if isinstance(e, Checkpoint)]
    assert [c.images_seen for c in cks] == [96, 192, 288, 320]
    assert all(np.isfinite(c.val_loss) for c in cks) and cks[0].pose_change_deg is None
    assert cks[1].pose_change_deg is not None and cks[1].z_change is not None
    lat = [e for e in evs if isinstance(e, Latents)]
    assert lat and lat[-1].rot.shape[1:] == (3, 3) and lat[-1].z.shape[1] == 2
    out = tmp_path / "run"
    rot, trans = read_pose_pkl(out / "pose.pkl")
    z = read_z_pkl(out / "z.pkl")
    assert rot.shape == (96, 3, 3) and trans.shape == (96, 2) and z.shape == (96, 2)
    assert np.allclose(rot @ rot.transpose(0, 2, 1), np.eye(3), atol=1e-5)
    run = Run(out)
    assert np.allclose(run.trans / D, trans) and np.array_equal(run.index, np.arange(96))
    assert run.D == D and abs(run.apix - 4.0) < 1e-6 and run.val.sum() == round(0.1 * 96)
    vols = run.decode(run.z[:2])
    assert vols.shape == (2, D, D, D) and vols.dtype == np.float32 and np.isfinite(vols).all()
    with pytest.raises(ValueError, match="trained at box 16"):
        run.decode(run.z[:1], D=32)
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert log[0]["event"] == "Started" and log[-1]["event"] == "Finished"
    ck = load_checkpoint(out / "checkpoints" / "last.pt")     # weights_only=True
    assert ck["images_seen"] == 320 and ck["phase"] == "joint"
    assert len(list((out / "checkpoints").glob("ckpt_*.pt"))) == 3
    # the run folder's layout is RunDir's, and its event log reads back through RunDir (a cut last line skipped)
    from cryofire_app.io.rundir import RunDir

    files = RunDir(out)
    assert files.is_run() and files.numbered_checkpoint(320).is_file() and files.report.is_file()
    assert {p.name for p in (files.config, files.log, files.pose, files.z, files.latents)} <= {
        p.name for p in out.iterdir()}
    assert files.events() == log == run.events()
    with open(files.log, "a") as fh:
        fh.write('{"event": "Step", "lo')
    assert files.events() == log


def test_stop_then_resume_continues_exactly(data, tmp_path):
    full = Trainer(tiny_config(data, tmp_path / "a", lr_schedule="cosine"))
    for _ in full.run():
        pass
    part = Trainer(tiny_config(data, tmp_path / "b", lr_schedule="cosine"))
    for ev in part.run():
        if isinstance(ev, Step) and ev.images_seen == 128:
            part.request_stop()
        if isinstance(ev, Finished):
            assert ev.stopped and ev.images_seen == 128
    ck = load_checkpoint(tmp_path / "b" / "checkpoints" / "last.pt")
    assert ck["images_seen"] == 128 and ck["phase"] == "pose_only" and ck["mask_radius"] == 3 + 128 // 64
    assert ck["optimizer"]["state"] and not part.optim.state   # moments saved, then freed for the outputs
    res = Trainer(tiny_config(data, tmp_path / "b", lr_schedule="cosine"), resume=True)
    evs = list(res.run())
    steps = [e for e in evs if isinstance(e, Step)]
    assert steps[0].images_seen == 144 and steps[0].phase == "pose_only" and steps[-1].images_seen == 320
    assert any(isinstance(e, Step) and e.phase == "joint" for e in evs)
    assert torch.equal(params(res.model), params(full.model))          # bit-identical continuation


def test_format_1_checkpoint_migrates_and_resumes_exactly(data, tmp_path):
    """A checkpoint of the first layout (no ``format`` key, without the keys added while it was current) loads as
    the current layout with those keys at what such a run did, and resumes to the same weights as an unbroken run."""
    from cryofire_app.training.checkpoint import atomic_torch_save
    from cryofire_app.training.state import CHECKPOINT_FORMAT, TrainState

    full = Trainer(tiny_config(data, tmp_path / "a"))
    for _ in full.run():
        pass
    part = Trainer(tiny_config(data, tmp_path / "b"))
    for ev in part.run():
        if isinstance(ev, Step) and ev.images_seen == 128:
            part.request_stop()
    last = tmp_path / "b" / "checkpoints" / "last.pt"
    ck = load_checkpoint(last)
    saved = TrainState.from_checkpoint(ck)
    assert ck["format"] == CHECKPOINT_FORMAT and saved.images_seen == part.images_seen == 128
    assert all(torch.equal(saved.prev_val[k], part.state.prev_val[k]) for k in ("rot", "z"))
    assert dataclasses.replace(saved, prev_val=None) == dataclasses.replace(part.state, prev_val=None)
    old = {k: v for k, v in ck.items() if k not in ("format", "seed_done", "joint_ok", "agreement_deg",
                                                    "next_agreement", "synth_rng", "grad_scaler")}
    atomic_torch_save(old, last)
    back = load_checkpoint(last)
    assert back["format"] == CHECKPOINT_FORMAT and back["joint_ok"] and not back["seed_done"]
    assert back["synth_rng"] is None and back["grad_scaler"] is None and back["next_agreement"] == 0
    res = Trainer(tiny_config(data, tmp_path / "b"), resume=True)
    list(res.run())
    assert res.images_seen == 320 and torch.equal(params(res.model), params(full.model))


def test_checkpoint_keeps_the_fp16_loss_scale(data, tmp_path):
    """fp16 runs (CUDA) train through a GradScaler whose loss scale adapts over thousands of steps; a resumed run
    starts from the saved scale instead of 65536 again. Exercised on the CPU with the CPU scaler."""
    out = tmp_path / "run"
    tr = Trainer(tiny_config(data, out, num_images=32))
    for _ in tr.run():
        pass
    tr.amp.grad_scaler = torch.amp.GradScaler("cpu", init_scale=512.0, growth_interval=7)
    tr.save_checkpoint()
    assert load_checkpoint(out / "checkpoints" / "last.pt")["grad_scaler"]["scale"] == 512.0
    res = Trainer(tiny_config(data, out, num_images=32), resume=True)
    list(res.run())
    assert res.amp.grad_scaler is None              # an fp32 run makes none ...
    res.amp.precision = "fp16"                      # ... an fp16 one (CUDA only) restores the saved one on first use
    scaler = res.amp.scaler()
    assert scaler.get_scale() == 512.0 and scaler.get_growth_interval() == 7
    res.save_checkpoint()                           # and saves it again
    assert load_checkpoint(out / "checkpoints" / "last.pt")["grad_scaler"]["scale"] == 512.0


def test_kill_during_checkpoint_write_keeps_last_good(data, tmp_path):
    out = tmp_path / "run"
    for _ in Trainer(tiny_config(data, out, num_images=96)).run():
        pass
    last = out / "checkpoints" / "last.pt"
    before = last.read_bytes()
    script = textwrap.dedent(f"""
        import os, signal, torch
        from cryofire_app.training import checkpoint
        def dying_save(obj, fh):
            fh.write(b"PK" + b"x" * 100000); fh.flush(); os.fsync(fh.fileno())
            os.kill(os.getpid(), signal.SIGKILL)
        torch.save = dying_save
        ck = checkpoint.load_checkpoint({str(last)!r})
        checkpoint.atomic_torch_save(ck, {str(last)!r})
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert proc.returncode == -signal.SIGKILL
    assert len(list((out / "checkpoints").glob(".last.pt.*.tmp"))) == 1   # the killed write's temp file
    assert last.read_bytes() == before
    res = Trainer(tiny_config(data, out, num_images=128), resume=True)
    evs = list(res.run())
    assert isinstance(evs[-1], Finished) and evs[-1].images_seen == 128


def test_nan_loss_stops_with_failed_and_keeps_checkpoint(data, tmp_path):
    out = tmp_path / "run"
    tr = Trainer(tiny_config(data, out))
    evs = []
    for ev in tr.run():
        evs.append(ev)
        if isinstance(ev, Checkpoint):
            with torch.no_grad():
                tr.model.decoder.mlp.out.weight.fill_(float("nan"))
    assert isinstance(evs[-1], Failed) and "nan" in evs[-1].message.lower()
    assert "last good checkpoint" in evs[-1].message
    ck = load_checkpoint(out / "checkpoints" / "last.pt")
    assert ck["images_seen"] == 96
    assert all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())
    assert not (out / "pose.pkl").exists()


def test_cli_train_and_infer(data, tmp_path):
    from cryofire_app.cli import main

    out = tmp_path / "cli"
    args = ["train", str(data.mrcs), "--ctf", str(data.ctf_pkl), "-o", str(out), "-D", "16", "--zdim", "2",
            "--num-images", "64", "--batch-size", "16", "--pose-only-images", "32", "--device", "cpu",
            "--schedule", "amortized",
            "--enc-channels", "8,16", "--dec-hidden", "32", "--dec-layers", "1", "--pe-dim", "16", "--quiet"]
    assert main(args) == 0
    assert (out / "pose.pkl").exists() and (out / "config.json").exists()
    assert main(args) == 2                     # refuses to overwrite a run without --resume
    assert main(args[:-1] + ["--num-images", "96", "--resume", "--quiet"]) == 0
    assert load_checkpoint(out / "checkpoints" / "last.pt")["images_seen"] == 96
    pred = tmp_path / "pred"
    assert main(["infer", str(out), str(data.mrcs), "--ctf", str(data.ctf_pkl), "-o", str(pred)]) == 0
    rot, trans = read_pose_pkl(pred / "pose.pkl")
    assert rot.shape == (96, 3, 3) and read_z_pkl(pred / "z.pkl").shape == (96, 2)
    assert main(["train", str(tmp_path / "missing.mrcs"), "-o", str(tmp_path / "x")]) == 2


def test_cli_fast_preset_and_precision_options(data, tmp_path):
    """--fast selects the grid decoder and the unshuffle stem (saved in config.json, the run trains and infers);
    --precision bf16 runs on the CPU; fp16 on the CPU, a zero grid target width and
    a negative synthetic image ratio are refused with exit status 2."""
    import json

    from cryofire_app.cli import main

    out = tmp_path / "fast"
    base = [str(data.mrcs), "--ctf", str(data.ctf_pkl), "-D", "16", "--zdim", "2", "--num-images", "64",
            "--batch-size", "16", "--pose-only-images", "32", "--device", "cpu", "--schedule", "amortized", "--quiet"]
    assert main(["train", *base, "-o", str(out), "--fast", "--precision", "bf16"]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["decoder"]["arch"] == "grid" and cfg["encoder"]["stem"] == "unshuffle" and cfg["precision"] == "bf16"
    pred = tmp_path / "pred_fast"
    assert main(["infer", str(out), str(data.mrcs), "--ctf", str(data.ctf_pkl), "-o", str(pred)]) == 0
    assert read_pose_pkl(pred / "pose.pkl")[0].shape == (96, 3, 3)
    assert main(["train", *base, "-o", str(tmp_path / "fp16"), "--precision", "fp16"]) == 2
    assert main(["train", *base, "-o", str(tmp_path / "w0"), "--grid-width", "0"]) == 2
    assert main(["train", *base, "-o", str(tmp_path / "s1"), "--synth-ratio", "-1"]) == 2


@pytest.mark.parametrize("invert", [False, True])
def test_inverted_contrast_is_detected_and_fixed(data, tmp_path, invert):
    from cryofire_app.io import MrcStackWriter

    mrcs = data.mrcs
    if invert:
        mrcs = tmp_path / "inverted.mrcs"
        with MrcStackWriter(mrcs, D, 4.0) as w:
            w.write(-data.images)
    cfg = tiny_config(data, tmp_path / "run", particles=str(mrcs), num_images=256, contrast_check_images=192)
    evs = list(Trainer(cfg).run())
    told = [e.level for e in evs if isinstance(e, Message) and e.topic == "contrast"]
    ck = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    if invert:   # the user is warned, and the data are inverted from then on
        assert told == ["warning"] and ck["data_sign"] == -1.0
    else:
        assert told == ["info"] and ck["data_sign"] == 1.0


def test_pause_and_resume_between_steps(data, tmp_path):
    import threading
    import time

    tr = Trainer(tiny_config(data, tmp_path / "run", num_images=64))
    gen = tr.run()
    seen = []
    for ev in gen:
        if isinstance(ev, Step):
            seen.append(ev.images_seen)
            if len(seen) == 1:
                tr.pause()
                assert tr.paused
                threading.Timer(0.3, tr.resume).start()
                t0 = time.time()
            elif len(seen) == 2:
                assert time.time() - t0 >= 0.25      # the next step waited for resume()
    assert seen == [16, 32, 48, 64]


def test_ctrl_c_leaves_a_checkpoint(data, tmp_path):
    import time

    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "cryofire_app.cli", "train", str(data.mrcs), "--ctf", str(data.ctf_pkl), "-o",
           str(out), "-D", "16", "--zdim", "2", "--num-images", "100000000", "--batch-size", "16",
           "--checkpoint-every", "100000000", "--device", "cpu", "--schedule", "amortized", "--enc-channels", "8,16",
           "--dec-hidden", "32",
           "--dec-layers", "1", "--pe-dim", "16", "--quiet"]
    # SIGINT back to its default in the child: a shell starting the suite in the background without job control
    # (`nohup ... &`) leaves SIGINT ignored, which children inherit, and Python then installs no KeyboardInterrupt
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=dict(os.environ, OMP_NUM_THREADS="1"),
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    log = out / "log.jsonl"
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            if log.exists() and log.read_text().count('"Step"') >= 3:
                break
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:   # a child that missed the signal must not outlive the test (it trains for 1e8 images)
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err.decode()[-2000:]
    ck = load_checkpoint(out / "checkpoints" / "last.pt")
    assert ck["images_seen"] >= 48 and ck["images_seen"] % 16 == 0


def test_variational_encoder_trains(data, tmp_path):
    cfg = tiny_config(data, tmp_path / "run", num_images=256, pose_only_images=64, beta=1.0,
                      encoder=EncoderConfig(channels=(8, 16), hidden=32, variational=True))
    evs = list(Trainer(cfg).run())
    assert isinstance(evs[-1], Finished)
    assert all(np.isfinite(e.loss) for e in evs if isinstance(e, Step))
    assert Run(tmp_path / "run").z.shape == (96, 2)


def test_no_ctf_no_z_no_symmetric_loss(tmp_path):
    sd = make_dataset(tmp_path / "synth", n=48, D=D, seed=2, ctf=False)
    cfg = tiny_config(sd, tmp_path / "run", ctf=None, zdim=0, sym_loss=False, num_images=96, batch_size=64)
    evs = list(Trainer(cfg).run())
    assert isinstance(evs[-1], Finished)
    steps = [e for e in evs if isinstance(e, Step)]
    assert steps[0].images_seen == 43 and np.isfinite(steps[-1].loss)   # batch clamped to the 43 training images
    run = Run(tmp_path / "run")
    assert run.z.shape == (48, 0) and run.decode(None).shape == (1, D, D, D)


def test_infer_refine_z_lowers_the_decoder_error_and_stays_near_the_encoder(data, tmp_path):
    """--refine-z: a few steps on z per particle (decoder and poses fixed) fit the images better than the encoder's
    z, move z by a bounded amount, and leave the poses as the encoder gave them."""
    from cryofire_app.analysis.run import Run
    from cryofire_app.cli import main
    from cryofire_app.model.cryofire import mask_points
    from cryofire_app.physics.lattice import Lattice
    from cryofire_app.training.inference import _prefetched, predict, refine_z

    out = tmp_path / "run"
    tr = Trainer(tiny_config(data, out))
    for _ in tr.run():
        pass
    run = Run(out)
    ck = run.checkpoint
    pd = tr.data   # the training set, preprocessed as in training
    model, sign, r = run.model, float(ck["data_sign"]), int(ck["mask_radius"])
    pr = predict(model, pd, np.arange(pd.N), sign=sign, radius=r, select="encoder")
    z1 = refine_z(model, pd, pr, 20, sign=sign, radius=r)
    mp = mask_points(Lattice(model.D), r, "cpu")

    def err(z):
        total = 0.0
        for b in _prefetched(pd, np.arange(pd.N), 256):
            enc = {"rot": torch.as_tensor(pr.rot[b.pos]), "trans": torch.as_tensor(pr.trans[b.pos])}
            with torch.no_grad():
                total += float(model.branch_errors(b.Y * sign, b.ctf, enc, torch.as_tensor(z[b.pos]), mp,
                                                   sym=False)[0].sum())
        return total

    assert err(z1) < err(pr.z)
    assert 0 < np.abs(z1 - pr.z).max() < 3.0
    pred = tmp_path / "pred"
    assert main(["infer", str(out), str(data.mrcs), "--ctf", str(data.ctf_pkl), "-o", str(pred), "--select",
                 "encoder", "--refine-z", "5"]) == 0
    rot, _ = read_pose_pkl(pred / "pose.pkl")
    np.testing.assert_allclose(rot, pr.rot, atol=1e-5)
    assert not np.allclose(read_z_pkl(pred / "z.pkl"), pr.z)
    assert main(["infer", str(out), str(data.mrcs), "-o", str(tmp_path / "p2"), "--refine-z", "-1"]) == 2


def test_resolved_config_fills_device_defaults_without_touching_the_callers(data, tmp_path):
    from cryofire_app.training.config import SEEDED_CPU_FREQ_MAX

    cfg = tiny_config(data, tmp_path / "r", schedule="seeded", lr=None, freq_max=None)
    cpu, gpu = cfg.resolved("cpu"), cfg.resolved("cuda")
    assert cfg.lr is None and cfg.freq_max is None   # the caller's config is not mutated
    assert cpu.lr == 1e-3 and cpu.freq_max == SEEDED_CPU_FREQ_MAX and gpu.freq_max is None
    am = tiny_config(data, tmp_path / "r", lr=None).resolved("cpu")
    assert am.lr == 1e-4 and am.freq_max is None and am.to_dict() == am.resolved("cpu").to_dict()
    tr = Trainer(tiny_config(data, tmp_path / "t", lr=None))
    tr._setup()
    assert tr.config.lr == 1e-4 and tr.config is not cfg
