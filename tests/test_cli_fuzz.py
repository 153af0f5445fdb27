"""Bad inputs and arguments (issue 23): each ends with exit status 2 and one clear line naming the file or the
argument, never a traceback, and leaves every earlier result in the output folder exactly as it was.

The CLI runs in-process (`cryofire_app.cli.main`). Fixtures are tiny and shared: a 40-image box-16 simulation, a
2-second amortized run on it, and broken copies of its files. Every case must be refused before any training or
decoding starts, so the whole table runs in seconds.
"""
from __future__ import annotations

import hashlib
import pickle
import shutil
from pathlib import Path

import mrcfile
import numpy as np
import pytest

from cryofire_app.cli import main as cli

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore:Data array contains NaN")]   # the NaN stack is made on purpose

TINY_TRAIN = ["--schedule", "amortized", "--num-images", "32", "--pose-only-images", "16", "--zdim", "2",
              "--enc-channels", "8", "--dec-hidden", "16", "--dec-layers", "1", "--pe-dim", "8", "--threads", "1",
              "--checkpoint-every", "32", "--quiet", "-b", "8"]


def _stack(path: Path, data: np.ndarray, apix: float = 4.0) -> Path:
    with mrcfile.new(str(path), overwrite=True) as m:
        m.set_data(np.asarray(data, np.float32))
        m.set_image_stack()
        m.voxel_size = apix
    return path


def _truncate(src: Path, dst: Path, keep: float) -> Path:
    raw = src.read_bytes()
    dst.write_bytes(raw[: int(len(raw) * keep)])
    return dst


def _broken_stacks(w: Path, b: Path) -> None:
    """Image stacks that must be refused: one image, odd or rectangular boxes, NaN pixels, a constant stack, a header
    promising more images than the file holds, an empty stack and a zero-byte file."""
    imgs = mrcfile.read(str(w / "sim" / "particles.mrcs"))
    _stack(b / "one.mrcs", imgs[:1])
    _stack(b / "odd.mrcs", np.zeros((20, 15, 15)))
    _stack(b / "rect.mrcs", np.zeros((20, 16, 18)))
    nan = imgs.copy()
    nan[:, 3, 3] = np.nan
    _stack(b / "nan.mrcs", nan)
    _stack(b / "const.mrcs", np.full((40, 16, 16), 3.0))
    # header says 40 images, the file holds 10
    _truncate(w / "sim" / "particles.mrcs", b / "lying.mrcs", 0.27)
    _stack(b / "empty.mrcs", np.zeros((0, 16, 16)))
    (b / "zero_bytes.mrcs").write_bytes(b"")


def _broken_metadata(w: Path, b: Path) -> None:
    """Broken STAR/.cs/.txt files, CTF and pose pickles, and a non-cubic map."""
    star = (w / "sim" / "particles.star").read_text()
    (b / "no_rows.star").write_text("data_particles\n\nloop_\n_rlnImageName #1\n_rlnDefocusU #2\n")
    (b / "garbage.mrcs").write_bytes(np.random.default_rng(0).bytes(3000))
    (b / "garbage.cs").write_bytes(b"not numpy at all" * 10)
    (b / "particles.xyz").write_text("1 2 3\n")
    (b / "empty.txt").write_text("# no stacks\n")
    # a STAR cut in the middle of its last row, one with a word where a number goes, one naming a missing stack
    (b / "trunc.star").write_text(star[: len(star) - 30])
    shutil.copy(w / "sim" / "particles.mrcs", b / "particles.mrcs")
    lines = star.splitlines()
    first = next(i for i, ln in enumerate(lines) if ln.startswith("1@"))
    lines[first + 4] = "\t".join([lines[first + 4].split()[0], "defocus?"] + lines[first + 4].split()[2:])
    (b / "word.star").write_text("\n".join(lines) + "\n")
    (b / "elsewhere.star").write_text(star.replace("@particles.mrcs", "@nowhere.mrcs"))
    # CTF pickles: the wrong count, the wrong shape, a forbidden global
    ctf = pickle.loads((w / "sim" / "ctf.pkl").read_bytes())
    (b / "ctf_short.pkl").write_bytes(pickle.dumps(ctf[:7]))
    (b / "ctf_8col.pkl").write_bytes(pickle.dumps(ctf[:, :8]))
    (b / "evil.pkl").write_bytes(b"cos\nsystem\n(S'echo pwned'\ntR.")
    (b / "pose_trunc.pkl").write_bytes((w / "sim" / "poses.pkl").read_bytes()[:100])
    # a non-cubic map, a 2D image as a map
    with mrcfile.new(str(b / "noncubic.mrc"), overwrite=True) as m:
        m.set_data(np.zeros((8, 16, 16), np.float32))
        m.voxel_size = 2.0


def _damaged_runs(w: Path, b: Path) -> None:
    """Copies of the run with a truncated latents.npz (badrun/) or checkpoint (badckpt/), a cut-short `cryofire
    infer` folder (badpred/), a seed archive cut short, a --z file with a word, and a folder that is not a run."""
    for name in ("badrun", "badckpt"):
        shutil.copytree(w / "run", w / name)
    (w / "badpred").mkdir()   # a `cryofire infer` folder whose latents.npz was cut short
    _truncate(w / "run" / "latents.npz", w / "badpred" / "latents.npz", 0.6)
    (b / "z_words.txt").write_text("0.5 zero\n")
    _truncate(w / "run" / "latents.npz", w / "badrun" / "latents.npz", 0.5)
    _truncate(w / "run" / "checkpoints" / "last.pt", w / "badckpt" / "checkpoints" / "last.pt", 0.5)
    (b / "seed.npz").write_bytes(b"PK\x03\x04" + b"\0" * 40)
    (w / "notarun").mkdir()


@pytest.fixture(scope="module")
def W(tmp_path_factory) -> Path:
    """The work folder: sim/ (40 images, box 16), run/ (a finished tiny run), broken/ (damaged files), prev/ (an
    output folder holding earlier results), badrun/ (the run with a truncated latents.npz)."""
    from cryofire_app.simulate import DEMO_MAP, DEMO_MAP_APIX, SimulationConfig, simulate

    w = tmp_path_factory.mktemp("fuzz")
    simulate(SimulationConfig(outdir=str(w / "sim"), n=40, maps=[str(DEMO_MAP)], apix=DEMO_MAP_APIX, box=16,
                              snr=1.0, seed=0, progress=False))
    assert cli(["train", str(w / "sim" / "particles.star"), "-o", str(w / "run"), *TINY_TRAIN]) == 0
    b = w / "broken"
    b.mkdir()
    _broken_stacks(w, b)
    _broken_metadata(w, b)
    _damaged_runs(w, b)
    prev = w / "prev"
    prev.mkdir()
    (prev / "earlier_result.txt").write_text("an earlier result\n")
    shutil.copy(w / "run" / "z.pkl", prev / "z.pkl")
    return w


def _digest(folder: Path) -> dict[str, str]:
    if not folder.exists():
        return {}
    if folder.is_file():
        return {folder.name: hashlib.sha256(folder.read_bytes()).hexdigest()}
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


S, R, B, P = "{sim}", "{run}", "{broken}", "{prev}"
# (id, argv, text the error must contain, folder whose files must not change)
CASES = [
    # --- train: arguments (TrainConfig.validate, before any file is opened) ---
    ("train-batch-0", ["train", f"{S}/particles.star", "-o", P, "--batch-size", "0"], "--batch-size", P),
    ("train-batch-neg", ["train", f"{S}/particles.star", "-o", P, "-b", "-4"], "--batch-size", P),
    ("train-lr-neg", ["train", f"{S}/particles.star", "-o", P, "--lr", "-1"], "--lr", P),
    ("train-lr-nan", ["train", f"{S}/particles.star", "-o", P, "--lr", "nan"], "--lr", P),
    ("train-zdim-neg", ["train", f"{S}/particles.star", "-o", P, "--zdim", "-1"], "--zdim", P),
    ("train-device-gpu", ["train", f"{S}/particles.star", "-o", P, "--device", "gpu"], "--device", P),
    ("train-device-absent", ["train", f"{S}/particles.star", "-o", P, "--device", "cuda:7"], "--device", P),
    ("train-box-odd", ["train", f"{S}/particles.star", "-o", P, "-D", "15"], "--box", P),
    ("train-num-images-0", ["train", f"{S}/particles.star", "-o", P, "--num-images", "0"], "--num-images", P),
    ("train-epochs-neg", ["train", f"{S}/particles.star", "-o", P, "--epochs", "-2"], "--epochs", P),
    ("train-val-fraction", ["train", f"{S}/particles.star", "-o", P, "--val-fraction", "1.5"], "--val-fraction", P),
    ("train-seed-neg", ["train", f"{S}/particles.star", "-o", P, "--seed", "-3"], "--seed", P),
    ("train-threads-0", ["train", f"{S}/particles.star", "-o", P, "--threads", "0"], "--threads", P),
    ("train-enc-channels", ["train", f"{S}/particles.star", "-o", P, "--enc-channels", "8,x"], "--enc-channels", P),
    ("train-enc-box", ["train", f"{S}/particles.star", "-o", P, "--enc-box", "7"], "--enc-box", P),
    ("train-view-dirs", ["train", f"{S}/particles.star", "-o", P, "--view-dirs", "5"], "--view-dirs", P),
    ("train-grid-width", ["train", f"{S}/particles.star", "-o", P, "--grid-width", "0"], "--grid-width", P),
    ("train-fp16-cpu", ["train", f"{S}/particles.star", "-o", P, "--precision", "fp16", "--device", "cpu"],
     "--precision", P),
    ("train-int-word", ["train", f"{S}/particles.star", "-o", P, "--zdim", "two"], "--zdim", P),
    # --- train: files ---
    ("train-missing-file", ["train", f"{B}/nothing.mrcs", "-o", P], "nothing.mrcs", P),
    ("train-wrong-ext", ["train", f"{B}/particles.xyz", "-o", P], "particles.xyz", P),
    ("train-empty-list", ["train", f"{B}/empty.txt", "-o", P], "empty.txt", P),
    ("train-missing-ctf", ["train", f"{S}/particles.mrcs", "--ctf", f"{B}/no_ctf.pkl", "-o", P], "no_ctf.pkl", P),
    ("train-ctf-count", ["train", f"{S}/particles.mrcs", "--ctf", f"{B}/ctf_short.pkl", "-o", P], "ctf_short.pkl", P),
    ("train-ctf-shape", ["train", f"{S}/particles.mrcs", "--ctf", f"{B}/ctf_8col.pkl", "-o", P], "ctf_8col.pkl", P),
    ("train-ctf-evil", ["train", f"{S}/particles.mrcs", "--ctf", f"{B}/evil.pkl", "-o", P], "evil.pkl", P),
    ("train-one-image", ["train", f"{B}/one.mrcs", "-o", P], "at least 16", P),
    ("train-empty-stack", ["train", f"{B}/empty.mrcs", "-o", P], "empty.mrcs", P),
    ("train-zero-byte-file", ["train", f"{B}/zero_bytes.mrcs", "-o", P], "zero_bytes.mrcs", P),
    ("train-star-no-rows", ["train", f"{B}/no_rows.star", "-o", P], "no_rows.star", P),
    ("train-datadir-missing", ["train", f"{S}/particles.star", "--datadir", f"{B}/nodir", "-o", P], "--datadir", P),
    ("train-odd-stack", ["train", f"{B}/odd.mrcs", "-o", P], "odd.mrcs", P),
    ("train-rect-stack", ["train", f"{B}/rect.mrcs", "-o", P], "rect.mrcs", P),
    ("train-nan-pixels", ["train", f"{B}/nan.mrcs", "-o", P], "nan.mrcs", P),
    ("train-constant-stack", ["train", f"{B}/const.mrcs", "-o", P], "const.mrcs", P),
    ("train-lying-header", ["train", f"{B}/lying.mrcs", "-o", P], "lying.mrcs", P),
    ("train-garbage-mrcs", ["train", f"{B}/garbage.mrcs", "-o", P], "garbage.mrcs", P),
    ("train-garbage-cs", ["train", f"{B}/garbage.cs", "-o", P], "garbage.cs", P),
    ("train-truncated-star", ["train", f"{B}/trunc.star", "-o", P], "trunc.star", P),
    ("train-word-in-star", ["train", f"{B}/word.star", "-o", P], "word.star", P),
    ("train-star-missing-stack", ["train", f"{B}/elsewhere.star", "-o", P], "nowhere.mrcs", P),
    ("train-seed-from-damaged", ["train", f"{S}/particles.star", "-o", P, "--seed-from", f"{B}/seed.npz"],
     "seed.npz", P),
    ("train-over-a-run", ["train", f"{S}/particles.star", "-o", R], "--resume", R),
    ("train-outdir-is-file", ["train", f"{S}/particles.star", "-o", f"{P}/earlier_result.txt"], "earlier_result",
     P),
    # --- info ---
    ("info-truncated-star", ["info", f"{B}/trunc.star"], "trunc.star", B),
    ("info-check-neg", ["info", f"{S}/particles.mrcs", "--check", "-1"], "--check", S),
    ("info-garbage", ["info", f"{B}/garbage.mrcs"], "garbage.mrcs", B),
    # --- infer ---
    ("infer-batch-0", ["infer", R, f"{S}/particles.star", "-o", P, "--batch-size", "0"], "--batch-size", P),
    ("infer-device", ["infer", R, f"{S}/particles.star", "-o", P, "--device", "tpu"], "--device", P),
    ("infer-turns-0", ["infer", R, f"{S}/particles.star", "-o", P, "--turns", "0"], "--turns", P),
    ("infer-not-a-run", ["infer", "{notarun}", f"{S}/particles.star", "-o", P], "config.json", P),
    ("infer-damaged-ckpt", ["infer", "{badckpt}", f"{S}/particles.star", "-o", P], "last.pt", P),
    ("infer-odd-stack", ["infer", R, f"{B}/odd.mrcs", "-o", P], "odd.mrcs", P),
    # --- analyze / volume / eval on damaged runs ---
    ("analyze-trunc-latents", ["analyze", "{badrun}", "--no-star"], "latents.npz", "{badrun}"),
    ("volume-trunc-latents", ["volume", "{badrun}", "--pc", "1", "-o", f"{P}/pc1"], "latents.npz", P),
    ("eval-trunc-latents", ["eval", "{badrun}", "--gt-poses", f"{S}/poses.pkl", "-o", f"{P}/e.json"],
     "latents.npz", P),
    ("volume-damaged-ckpt", ["volume", "{badckpt}", "--z", "0,0", "-o", f"{P}/v.mrc"], "last.pt", P),
    ("volume-z-dims", ["volume", R, "--z", "1,2,3", "-o", f"{P}/v.mrc"], "--z", P),
    ("volume-n-0", ["volume", R, "--pc", "1", "--n", "0", "-o", f"{P}/pc1"], "--n", P),
    ("info-apix-neg", ["info", f"{S}/particles.mrcs", "--apix", "-1"], "--apix", S),
    ("analyze-not-a-run", ["analyze", "{notarun}"], "config.json", "{notarun}"),
    ("analyze-k-0", ["analyze", R, "-k", "0"], "-k", R),
    ("eval-trunc-infer-latents", ["eval", "{badpred}", "--gt-poses", f"{S}/poses.pkl", "--model", R, "-o",
                                  f"{P}/e.json"], "latents.npz", P),
    ("eval-box-odd", ["eval", R, "--gt-poses", f"{S}/poses.pkl", "--box", "15", "-o", f"{P}/e.json"], "--box", P),
    ("volume-z-file-words", ["volume", R, "--z", f"{B}/z_words.txt", "-o", f"{P}/v.mrc"], "z_words.txt", P),
    ("eval-bad-gt-poses", ["eval", R, "--gt-poses", f"{B}/pose_trunc.pkl", "-o", f"{P}/e.json"],
     "pose_trunc.pkl", P),
    # --- simulate ---
    ("simulate-noncubic", ["simulate", f"{B}/noncubic.mrc", "-o", f"{P}/sim", "-n", "5", "--no-progress"],
     "noncubic.mrc", P),
    ("simulate-box-0", ["simulate", f"{S}/gt_state_0.mrc", "-o", f"{P}/sim", "-n", "5", "-D", "0"], "-D/--box", P),
    ("simulate-n-0", ["simulate", f"{S}/gt_state_0.mrc", "-o", f"{P}/sim", "-n", "0"], "-n", P),
    ("simulate-chunk-0", ["simulate", f"{S}/gt_state_0.mrc", "-o", f"{P}/sim", "-n", "5", "--chunk", "0"],
     "--chunk", P),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_exits_2_with_one_clear_line(W, case, capsys):
    name, argv, needle, guard = case
    where = {"sim": W / "sim", "run": W / "run", "broken": W / "broken", "prev": W / "prev",
             "badrun": W / "badrun", "badckpt": W / "badckpt", "notarun": W / "notarun", "badpred": W / "badpred"}
    argv = [a.format(**where) for a in argv]
    guard = Path(guard.format(**where))
    before = _digest(guard)
    capsys.readouterr()
    try:
        rc = cli(argv)
    except SystemExit as exc:   # argparse's own errors (a word where an integer goes): status 2 as well
        rc = exc.code
    out, err = capsys.readouterr()
    assert rc == 2, (rc, out, err)
    assert "Traceback" not in err and "Traceback" not in out
    errors = [ln for ln in err.strip().splitlines() if "error:" in ln]
    assert len(errors) <= 1, err
    # one line says it all: the error line, or (`cryofire info`, a report) the report line on the unusable file
    said = errors or [ln for ln in out.splitlines() if "cannot" in ln]
    assert len(said) == 1 and needle in said[0], (needle, out, err)
    assert _digest(guard) == before, f"{name} changed files in {guard}"
    assert not (W / "prev" / "checkpoints").exists() and not (W / "prev" / "config.json").exists()
