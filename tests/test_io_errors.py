"""Bad input: each case raises InputError naming the file and the problem (or a documented, logged fallback)."""
from __future__ import annotations

import gzip
import os
import pickle
from pathlib import Path

import mrcfile
import numpy as np
import pytest

from cryofire_app.io import (
    ImageStack,
    InputError,
    MrcStackWriter,
    check_finite,
    load_particles,
    load_pickle_safe,
    parse_ctf_star,
    read_ctf_pkl,
    read_map,
    read_mrc,
    read_star,
    write_ctf_pkl,
    write_mrc,
    write_particles_star,
    write_pose_pkl,
)


# --- restricted unpickler --------------------------------------------------------------------------------------
class _Evil:
    def __init__(self, cmd: str):
        self.cmd = cmd

    def __reduce__(self):
        return (os.system, (self.cmd,))


def test_malicious_pickle_is_rejected_and_not_executed(tmp_path):
    marker = tmp_path / "pwned"
    bad = tmp_path / "ctf.pkl"
    bad.write_bytes(pickle.dumps((np.zeros((2, 9)), _Evil(f"touch {marker}"))))
    with pytest.raises(InputError, match=r"ctf\.pkl.*forbidden global '(posix|os|nt)\.system'"):
        load_pickle_safe(bad)
    with pytest.raises(InputError, match="forbidden global"):
        read_ctf_pkl(bad)
    assert not marker.exists()
    # builtins other than plain containers/scalars are refused too (eval, getattr, ...)
    evil2 = tmp_path / "z.pkl"
    evil2.write_bytes(b"cbuiltins\neval\n(S'1+1'\ntR.")
    with pytest.raises(InputError, match=r"z\.pkl.*builtins\.eval"):
        load_pickle_safe(evil2)


def test_safe_pickle_accepts_numpy_and_containers(tmp_path):
    obj = {"a": [np.arange(3, dtype=np.int32), (1.5, "x", None, True)], "b": np.float64(2.0), "c": 3 + 4j,
           "d": np.zeros((2, 2), dtype=np.complex64)}
    for protocol in (2, 3, 4, 5):
        f = tmp_path / f"p{protocol}.pkl"
        f.write_bytes(pickle.dumps(obj, protocol=protocol))
        back = load_pickle_safe(f)
        assert np.array_equal(back["a"][0], obj["a"][0]) and back["a"][1] == obj["a"][1]
        assert back["b"] == 2.0 and back["c"] == 3 + 4j and back["d"].dtype == np.complex64
    # a pickle written by numpy 1.x names numpy.core.multiarray (the fixture oracles do); numpy 2 names numpy._core
    legacy = pickle.dumps(np.arange(4.0), protocol=2).replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    (tmp_path / "legacy.pkl").write_bytes(legacy)
    assert np.array_equal(load_pickle_safe(tmp_path / "legacy.pkl"), np.arange(4.0))


def test_truncated_or_garbage_pickle(tmp_path):
    f = tmp_path / "pose.pkl"
    f.write_bytes(pickle.dumps(np.zeros((5, 3, 3)))[:40])
    with pytest.raises(InputError, match=r"pose\.pkl.*not a readable pickle"):
        load_pickle_safe(f)
    with pytest.raises(InputError, match="file not found"):
        load_pickle_safe(tmp_path / "missing.pkl")


# --- stacks ----------------------------------------------------------------------------------------------------
def test_truncated_stack(fixtures_dir):
    f = sorted((fixtures_dir / "drgnai/tilts").glob("*.mrcs"))[0]
    with pytest.raises(InputError, match=rf"{f.name}.*truncated.*11029 images.*room for 1 image"):
        load_particles(f)
    with pytest.raises(InputError, match="truncated"):
        ImageStack.from_files([f])


def _stack(path: Path, data: np.ndarray, apix: float | None = 1.0) -> Path:
    with mrcfile.new(path, overwrite=True) as m:
        m.set_data(np.asarray(data, dtype=np.float32))
        m.set_image_stack()
        if apix is not None:
            m.voxel_size = apix
    return path


def test_non_square_and_odd_images(tmp_path):
    f = _stack(tmp_path / "rect.mrcs", np.zeros((3, 16, 20)))
    with pytest.raises(InputError, match=r"rect\.mrcs.*not square: 20 x 16"):
        load_particles(f)
    odd = _stack(tmp_path / "odd.mrcs", np.ones((3, 15, 15)))
    with pytest.raises(InputError, match=r"odd\.mrcs.*15 x 15.*even box size is required"):
        load_particles(odd)
    ps = load_particles(odd, require_even=False)  # reading (e.g. for `cryofire info`) is allowed
    assert ps.D == 15 and ps.images[:].shape == (3, 15, 15)
    _stack(tmp_path / "b.mrcs", np.zeros((2, 16, 16)))
    with pytest.raises(InputError, match=r"16 x 16 pixels but odd\.mrcs has 15 x 15"):
        ImageStack.from_files([odd, tmp_path / "b.mrcs"])


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # mrcfile warns when writing NaN/Inf test data
def test_nan_inf_pixels_detected_on_access(tmp_path):
    data = np.random.default_rng(0).normal(size=(6, 8, 8)).astype(np.float32)
    data[2, 3, 4] = np.nan
    data[5, 0, 0] = np.inf
    f = _stack(tmp_path / "nan.mrcs", data)
    ps = load_particles(f)  # opening is lazy: no full scan
    assert np.array_equal(ps.images[[0, 1, 3]], data[[0, 1, 3]])
    with pytest.raises(InputError, match=r"nan\.mrcs.*image 3 \(1-based; particle 2\).*NaN or Inf"):
        ps.images[1:4]
    with pytest.raises(InputError, match=r"2 of 6 checked images contain NaN or Inf.*image 3"):
        check_finite(ps.images, n_sample=None)
    assert check_finite(ps.images.subset([0, 1, 3, 4])) == 4
    raw = ps.images.read([2], check_finite=False)
    assert np.isnan(raw).sum() == 1


def test_voxel_size_zero_fallbacks(fixtures_dir, tmp_path, caplog):
    sample = fixtures_dir / "aspire/sample.mrcs"  # header voxel size 0, no metadata
    with caplog.at_level("WARNING"):
        ps = load_particles(sample)
    assert ps.apix is None and any("--apix" in n for n in ps.notes) and "--apix" in caplog.text
    assert load_particles(sample, apix=1.34).apix == 1.34
    # voxel size 0 + STAR that has a pixel size: taken from the STAR (see also the empiar test)
    _stack(tmp_path / "p.mrcs", np.zeros((2, 8, 8)), apix=None)
    ctf = np.tile(np.array([8, 3.0, 1e4, 1e4, 0, 300, 2.7, 0.1, 0], np.float32), (2, 1))
    write_particles_star(tmp_path / "p.star", ("p.mrcs", 2), ctf, None, None, 3.0, 8)
    ps = load_particles(tmp_path / "p.star")
    assert ps.apix == 3.0 and any("voxel size is 0" in n for n in ps.notes)


# --- metadata vs stack -----------------------------------------------------------------------------------------
def test_star_rows_pointing_at_missing_files_or_images(tmp_path):
    _stack(tmp_path / "p.mrcs", np.zeros((5, 8, 8)))
    write_particles_star(tmp_path / "gone.star", ["1@p.mrcs", "2@missing.mrcs"], None, None, None, 1.0, 8)
    with pytest.raises(InputError, match=r"gone\.star.*'missing\.mrcs' not found"):
        load_particles(tmp_path / "gone.star")
    write_particles_star(tmp_path / "range.star", ["1@p.mrcs", "9@p.mrcs", "6@p.mrcs"], None, None, None, 1.0, 8)
    with pytest.raises(InputError, match=r"p\.mrcs.*2 image reference\(s\) out of range.*image 9 .*holding 5 images"
                                         r".*range\.star"):
        load_particles(tmp_path / "range.star")
    write_particles_star(tmp_path / "zero.star", ["0@p.mrcs"], None, None, None, 1.0, 8)
    with pytest.raises(InputError, match=r"zero\.star.*must be >= 1"):
        load_particles(tmp_path / "zero.star")


def test_mismatched_counts_between_metadata_and_stack(tmp_path):
    f = _stack(tmp_path / "p.mrcs", np.zeros((4, 8, 8)))
    write_ctf_pkl(tmp_path / "ctf.pkl", np.tile(np.array([8, 1, 1e4, 1e4, 0, 300, 2.7, 0.1, 0]), (5, 1)))
    with pytest.raises(InputError, match=r"ctf\.pkl.*5 rows but p\.mrcs has 4 particles"):
        load_particles(f, ctf=tmp_path / "ctf.pkl")
    write_pose_pkl(tmp_path / "pose.pkl", np.tile(np.eye(3), (3, 1, 1)), np.zeros((3, 2)))
    with pytest.raises(InputError, match=r"pose\.pkl.*3 poses but p\.mrcs has 4"):
        load_particles(f, poses=tmp_path / "pose.pkl")


def test_star_problems(fixtures_dir, tmp_path):
    pfcrt = fixtures_dir / "cryodrgn/FinalRefinement-OriginalParticles-PfCRT.star"
    with pytest.raises(InputError, match=r"PfCRT\.star.*no rlnImageSize.*D must be given"):
        parse_ctf_star(pfcrt)
    with pytest.raises(InputError, match=r"PfCRT\.star.*CTF columns missing: rlnAmplitudeContrast.*w \(e\.g\. 0\.1\)"):
        parse_ctf_star(pfcrt, D=300)
    bad = tmp_path / "bad.star"
    bad.write_text("data_optics\nloop_\n_rlnOpticsGroup\n_rlnImagePixelSize\n1 1.0\n\n"
                   "data_particles\nloop_\n_rlnImageName\n_rlnOpticsGroup\n1@p.mrcs 2\n")
    with pytest.raises(InputError, match=r"bad\.star.*optics group\(s\) \[2\]"):
        read_star(bad)
    junk = tmp_path / "junk.star"
    junk.write_text("data_general\n_rlnSomething 3\n")
    with pytest.raises(InputError, match=r"junk\.star.*no particle table"):
        load_particles(junk)
    with pytest.raises(InputError, match=r"nope\.star.*file not found"):
        load_particles(tmp_path / "nope.star")
    with pytest.raises(InputError, match="unknown particle file type"):
        load_particles(bad.rename(tmp_path / "bad.xyz"))


# --- maps ------------------------------------------------------------------------------------------------------
def test_map_axis_order_permuted_to_zyx(fixtures_dir, tmp_path):
    rng = np.random.default_rng(0)
    vol = rng.normal(size=(4, 5, 6)).astype(np.float32)  # (z, y, x), all sizes distinct
    f = tmp_path / "perm.mrc"
    # store with columns = Z, rows = X, sections = Y (mapc, mapr, maps = 3, 1, 2), as EMD-3001 does
    with mrcfile.new(f) as m:
        m.set_data(np.ascontiguousarray(vol.transpose(1, 2, 0)))  # file dims (Y, X, Z)
        m.header.mapc, m.header.mapr, m.header.maps = 3, 1, 2
    back, info = read_mrc(f)
    assert info.axis_order == (3, 1, 2) and np.array_equal(back, vol)
    emd, info = read_mrc(fixtures_dir / "mrcfile/EMD-3001.map")
    assert info.axis_order == (3, 1, 2) and emd.shape == (73, 25, 43)  # Z=73 (columns), Y=25, X=43
    with mrcfile.open(fixtures_dir / "mrcfile/EMD-3001.map", permissive=True) as m:
        assert np.array_equal(emd, np.transpose(m.data, (2, 0, 1)))
    with pytest.raises(InputError, match=r"EMD-3001\.map.*not cubic: 43 x 25 x 73"):
        read_map(fixtures_dir / "mrcfile/EMD-3001.map")


def test_maps_compressed_noncubic_and_voxel_zero(fixtures_dir):
    plain, info = read_map(fixtures_dir / "mrcfile/EMD-3197.map")
    assert plain.shape == (20, 20, 20) and info.apix == pytest.approx(11.4)
    for name in ("mrcfile/emd_3197.map.gz", "mrcfile/EMD-3197.map.bz2"):
        vol, _ = read_map(fixtures_dir / name)
        assert np.array_equal(vol, plain)
    with pytest.raises(InputError, match=r"spike-vol\.mrc.*not cubic: 16 x 16 x 128"):
        read_map(fixtures_dir / "cryodrgn/spike-vol.mrc")
    cubic, info = read_map(fixtures_dir / "derived/spike-vol_zcrop16_cubic.mrc")
    assert cubic.shape == (16, 16, 16) and info.apix == 8.0
    _, info = read_map(fixtures_dir / "aspire/clean70SRibosome_vol_65p.mrc")
    assert info.apix is None  # header says 0: the caller must supply the pixel size


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # mrcfile warns when writing NaN/Inf test data
def test_map_with_nan_and_unreadable_files(tmp_path):
    vol = np.zeros((8, 8, 8), np.float32)
    vol[1, 2, 3] = np.inf
    write_mrc(tmp_path / "inf.mrc", vol)
    with pytest.raises(InputError, match=r"inf\.mrc.*1 NaN/Inf voxels"):
        read_map(tmp_path / "inf.mrc")
    (tmp_path / "text.mrc").write_text("this is not an MRC file at all" * 10)
    with pytest.raises(InputError, match=r"text\.mrc"):
        read_map(tmp_path / "text.mrc")
    with pytest.raises(InputError, match=r"text\.mrc"):
        load_particles(tmp_path / "text.mrc")
    with pytest.raises(InputError, match="file not found"):
        read_mrc(tmp_path / "none.mrc")
    raw = tmp_path / "raw.mrcs"
    with MrcStackWriter(raw, D=8, apix=1.0) as w:
        w.write(np.zeros((2, 8, 8)))
    (tmp_path / "c.mrcs").write_bytes(gzip.compress(raw.read_bytes()))
    with pytest.raises(InputError, match=r"c\.mrcs.*compressed.*decompress it first"):
        load_particles(tmp_path / "c.mrcs")


def test_nan_or_nonpositive_metadata_values(tmp_path):
    _stack(tmp_path / "p.mrcs", np.zeros((3, 8, 8)))
    ctf = np.tile(np.array([8, 1.0, 1e4, 1e4, 0, 300, 2.7, 0.1, 0], np.float32), (3, 1))
    ctf[1, 2] = np.nan
    write_particles_star(tmp_path / "nan.star", ("p.mrcs", 3), ctf, None, None, 1.0, 8)
    with pytest.raises(InputError, match=r"nan\.star.*1 particle\(s\) have NaN/Inf CTF values \(first: row 2\)"):
        load_particles(tmp_path / "nan.star")
    ctf[1, 2] = 1e4
    ctf[2, 5] = 0.0
    write_ctf_pkl(tmp_path / "ctf.pkl", ctf)
    with pytest.raises(InputError, match=r"ctf\.pkl.*voltage <= 0 \(first: row 3\)"):
        load_particles(tmp_path / "p.mrcs", ctf=tmp_path / "ctf.pkl")
    rot = np.tile(np.eye(3), (3, 1, 1))
    rot[0, 0, 0] = np.inf
    write_pose_pkl(tmp_path / "pose.pkl", rot, np.zeros((3, 2)))
    with pytest.raises(InputError, match=r"pose\.pkl.*NaN/Inf rotation"):
        load_particles(tmp_path / "p.mrcs", poses=tmp_path / "pose.pkl")


# --- issue 23: malformed content, argument ranges, too-small datasets --------------------------------------------
def _small_star(tmp_path: Path, n: int = 4) -> tuple[Path, str]:
    _stack(tmp_path / "p.mrcs", np.random.default_rng(0).normal(size=(n, 8, 8)))
    ctf = np.tile(np.array([8, 1.0, 1e4, 1e4, 0, 300, 2.7, 0.1, 0], np.float32), (n, 1))
    write_particles_star(tmp_path / "ok.star", ("p.mrcs", n), ctf, np.tile(np.eye(3), (n, 1, 1)), np.zeros((n, 2)),
                         1.0, 8)
    return tmp_path / "ok.star", (tmp_path / "ok.star").read_text()


def test_star_short_rows_words_and_missing_integers(tmp_path):
    path, text = _small_star(tmp_path)
    assert len(read_star(path)) == 4
    cut = tmp_path / "cut.star"
    cut.write_text(text.rstrip("\n")[:-12])
    with pytest.raises(InputError, match=r"cut\.star: data_particles: row 4 of 4 has \d+ of \d+ values.*truncated"):
        read_star(cut)
    lines = text.splitlines()
    k = next(i for i, ln in enumerate(lines) if ln.startswith("2@"))
    short = lines.copy()
    short[k] = "\t".join(short[k].split()[:5])    # a row with too few columns, not the last one
    (tmp_path / "short.star").write_text("\n".join(short) + "\n")
    with pytest.raises(InputError, match=r"short\.star: data_particles: row 2 of 4 has 5 of"):
        read_star(tmp_path / "short.star")
    word = lines.copy()
    f = word[k].split()
    f[1] = "12k"
    word[k] = "\t".join(f)
    (tmp_path / "word.star").write_text("\n".join(word) + "\n")
    with pytest.raises(InputError, match=r"word\.star: data_particles: row 2: rlnDefocusU is '12k', not a number"):
        load_particles(tmp_path / "word.star")
    grp = lines.copy()
    f = grp[k].split()
    f[-1] = "1.5"   # rlnOpticsGroup
    grp[k] = "\t".join(f)
    (tmp_path / "grp.star").write_text("\n".join(grp) + "\n")
    with pytest.raises(InputError, match=r"grp\.star: data_particles: row 2: rlnOpticsGroup is 1\.5, not an integer"):
        read_star(tmp_path / "grp.star")


def test_cs_that_is_not_numpy(tmp_path):
    from cryofire_app.io import read_cs

    (tmp_path / "a.cs").write_text("uid,blob/path\n1,x.mrc\n")
    with pytest.raises(InputError, match=r"a\.cs: not a cryoSPARC \.cs file \(no numpy array header"):
        read_cs(tmp_path / "a.cs")
    good = np.zeros(3, dtype=[("uid", "<u8"), ("blob/idx", "<u4")])
    with open(tmp_path / "b.cs", "wb") as fh:
        np.save(fh, good)
    raw = (tmp_path / "b.cs").read_bytes()
    (tmp_path / "b.cs").write_bytes(raw[: len(raw) - 10])
    with pytest.raises(InputError, match=r"b\.cs: not a readable cryoSPARC \.cs file"):
        read_cs(tmp_path / "b.cs")


def test_input_error_names_its_file_once(tmp_path):
    inner = InputError("image 3 is bad", tmp_path / "x.mrcs")
    outer = InputError(str(inner), tmp_path / "x.mrcs")
    assert str(outer) == str(inner) == f"{tmp_path / 'x.mrcs'}: image 3 is bad"
    assert str(InputError(str(inner), tmp_path / "list.txt")).startswith(f"{tmp_path / 'list.txt'}: {tmp_path}")


def test_latents_archive_checks(tmp_path):
    from cryofire_app.analysis.run import read_latents

    n = 5
    good = dict(index=np.arange(n), z=np.zeros((n, 2), np.float32), rot=np.tile(np.eye(3, dtype=np.float32), (n, 1, 1)),
                trans=np.zeros((n, 2), np.float32), val=np.zeros(n, np.int8))
    np.savez(tmp_path / "ok.npz", **good)
    assert read_latents(tmp_path / "ok.npz")["z"].shape == (n, 2)
    raw = (tmp_path / "ok.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(InputError, match=r"cut\.npz: unreadable archive, truncated or damaged"):
        read_latents(tmp_path / "cut.npz")
    np.savez(tmp_path / "noz.npz", **{k: v for k, v in good.items() if k != "z"})
    with pytest.raises(InputError, match=r"noz\.npz: missing array\(s\) z"):
        read_latents(tmp_path / "noz.npz")
    np.savez(tmp_path / "count.npz", **dict(good, rot=good["rot"][:4]))
    with pytest.raises(InputError, match=r"count\.npz: array rot has shape \(4, 3, 3\), expected \(5, 3, 3\)"):
        read_latents(tmp_path / "count.npz")
    bad = good["z"].copy()
    bad[2, 1] = np.nan
    np.savez(tmp_path / "nan.npz", **dict(good, z=bad))
    with pytest.raises(InputError, match=r"nan\.npz: array z holds NaN"):
        read_latents(tmp_path / "nan.npz")
    np.savez(tmp_path / "obj.npz", **dict(good, index=np.array(["a"] * n, dtype=object)))
    with pytest.raises(InputError, match=r"obj\.npz: unreadable archive"):   # object arrays need pickles: refused
        read_latents(tmp_path / "obj.npz")


def test_checkpoint_checks(tmp_path):
    import torch

    from cryofire_app.training.checkpoint import atomic_torch_save, load_checkpoint

    atomic_torch_save({"model": {}, "config": {}}, tmp_path / "a.pt")
    assert load_checkpoint(tmp_path / "a.pt")["model"] == {}
    raw = (tmp_path / "a.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(InputError, match=r"cut\.pt: cannot read checkpoint: truncated, damaged"):
        load_checkpoint(tmp_path / "cut.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(InputError, match=r"other\.pt: not a cryofire checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    # the layout's version: a file from a newer release is refused by name, not misread
    from cryofire_app.training.checkpoint import CHECKPOINT_FORMAT

    atomic_torch_save({"model": {}, "config": {}, "format": CHECKPOINT_FORMAT + 1}, tmp_path / "new.pt")
    with pytest.raises(InputError, match=r"new\.pt: checkpoint format \d+ was written by a newer cryofire-app"):
        load_checkpoint(tmp_path / "new.pt")
    atomic_torch_save({"model": {}, "config": {}, "format": "x"}, tmp_path / "bad.pt")
    with pytest.raises(InputError, match=r"bad\.pt: checkpoint format 'x' is not a version number"):
        load_checkpoint(tmp_path / "bad.pt")
    atomic_torch_save({"model": {}, "config": {}, "format": CHECKPOINT_FORMAT}, tmp_path / "cur.pt")
    assert load_checkpoint(tmp_path / "cur.pt")["format"] == CHECKPOINT_FORMAT


def test_too_small_datasets_are_refused_up_front(tmp_path):
    from cryofire_app.training.config import TrainConfig
    from cryofire_app.training.dataset import MIN_TRAIN_PARTICLES, check_trainable
    from cryofire_app.training.trainer import Trainer

    cfg = TrainConfig.of(schedule="amortized")
    check_trainable(17, cfg)   # 16 train + 1 held out
    with pytest.raises(InputError, match=f"x.mrcs: 15 particle.*at least {MIN_TRAIN_PARTICLES}"):
        check_trainable(15, cfg, "x.mrcs")
    with pytest.raises(InputError, match=r"100 particle\(s\) leave 10 for training \(90 held out"):
        check_trainable(100, TrainConfig.of(val_fraction=0.9))
    with pytest.raises(InputError, match="at least 32"):
        check_trainable(30, TrainConfig.of(schedule="seeded", seed_config={"n_states": 4}))
    # through the trainer: refused before anything is written
    _stack(tmp_path / "few.mrcs", np.random.default_rng(0).normal(size=(6, 16, 16)))
    out = tmp_path / "run"
    with pytest.raises(InputError, match=r"few\.mrcs: 6 particle\(s\) leave 6 for training"):
        list(Trainer(TrainConfig.of(particles=str(tmp_path / "few.mrcs"), outdir=str(out), device="cpu")).run())
    assert not out.exists()
    with pytest.raises(InputError, match="--batch-size"):
        list(Trainer(TrainConfig.of(particles=str(tmp_path / "few.mrcs"), outdir=str(out), batch_size=0)).run())
    assert not out.exists()
