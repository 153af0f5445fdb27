"""Readers against real files and cryoDRGN's own outputs (fixtures/cryodrgn oracles), plus round trips."""
from __future__ import annotations

import pickle
from pathlib import Path

import mrcfile
import numpy as np
import pytest

from cryofire_app.io import (
    ImageStack,
    InputError,
    MrcStackWriter,
    load_particles,
    load_pickle_safe,
    parse_ctf_cs,
    parse_ctf_star,
    parse_pose_cs,
    parse_pose_star,
    read_star,
    rotvec_to_rot,
    write_ctf_pkl,
    write_particles_star,
    write_pose_pkl,
)

PFCRT = "cryodrgn/FinalRefinement-OriginalParticles-PfCRT.star"
P12 = "cryodrgn/cryosparc_P12_J24_001_particles.cs"


def _oracle(fixtures_dir: Path, name: str):
    return load_pickle_safe(fixtures_dir / "cryodrgn" / name)  # cryoDRGN's pickles load through the safe loader


# --- cryoDRGN oracles ------------------------------------------------------------------------------------------
def test_parse_ctf_star_matches_cryodrgn_ctf1(fixtures_dir):
    ctf = parse_ctf_star(fixtures_dir / PFCRT, D=300, apix=1.035, w=0.1)  # cryoDRGN: -w 0.1 -D 300 --Apix 1.035
    expect = _oracle(fixtures_dir, "ctf1.pkl")
    assert ctf.dtype == np.float32 and ctf.shape == expect.shape == (5, 9)
    assert np.allclose(ctf, expect, rtol=0, atol=1e-6)


def test_parse_pose_star_matches_cryodrgn(fixtures_dir):
    rot, trans = parse_pose_star(fixtures_dir / PFCRT, D=300)
    rot_x, trans_x = _oracle(fixtures_dir, "pose.star.pkl")
    assert np.allclose(rot, rot_x, atol=1e-12)
    assert np.allclose(trans, trans_x, atol=1e-12)


def test_parse_cs_matches_cryodrgn(fixtures_dir):
    ctf = parse_ctf_cs(fixtures_dir / P12)
    assert np.allclose(ctf, _oracle(fixtures_dir, "ctf2.pkl"), rtol=1e-6, atol=1e-4)
    rot, trans = parse_pose_cs(fixtures_dir / P12, D=180)
    rot_x, trans_x = _oracle(fixtures_dir, "pose.cs.pkl")
    assert rot.shape == (2019, 3, 3)
    assert np.allclose(rot, rot_x, atol=1e-6)  # cryoDRGN stored float32
    assert np.allclose(trans, trans_x, atol=1e-7)
    rot_default_d, trans_default_d = parse_pose_cs(fixtures_dir / P12)  # D from blob/shape = 180
    assert np.allclose(trans_default_d, trans_x, atol=1e-7)


def test_subtomo_star_matches_cryodrgn_sta(fixtures_dir):
    star = fixtures_dir / "cryodrgn/sta_testing_bin8.star"
    assert np.allclose(parse_ctf_star(star, D=512, apix=1.82), _oracle(fixtures_dir, "sta_ctf.pkl"), atol=1e-6)
    rot, trans = parse_pose_star(star, D=512)
    rot_x, _trans_x = _oracle(fixtures_dir, "sta_pose.pkl")
    assert np.allclose(rot, rot_x, atol=1e-12)
    # The STAR has no origin columns: cryoDRGN's trans is uninitialised memory (np.empty); ours is exactly 0.
    assert np.array_equal(trans, np.zeros((219, 2)))
    ps = load_particles(star)
    assert len(ps) == 219 and ps.D == 64 and np.isclose(ps.apix, 1.96)  # 1e4 * 1.96 um / 10000x
    assert np.array_equal(ps.trans_px, np.zeros((219, 2), np.float32))


def test_empiar_star_and_cs_give_same_images(fixtures_dir):
    a = load_particles(fixtures_dir / "cryodrgn/empiar_10076_7.star")
    b = load_particles(fixtures_dir / "cryodrgn/empiar_10076_7.cs")
    ia, ib = a.images[:], b.images[np.arange(7)]
    assert ia.shape == (7, 320, 320) and ia.dtype == np.float32
    assert np.array_equal(ia, ib)
    with mrcfile.open(fixtures_dir / "cryodrgn/empiar_10076_7.mrc", permissive=True) as m:
        assert np.array_equal(ia, m.data)
    # header voxel size is 0: the pixel size comes from the metadata (5 um / 38168x = 1.31 A; .cs psize 1.31)
    assert np.isclose(a.apix, 1.31, atol=1e-3) and np.isclose(b.apix, 1.31, atol=1e-3)
    assert any("voxel size is 0" in n for n in a.notes)
    assert np.allclose(a.ctf, b.ctf, atol=1e-3)
    assert b.uid is not None and a.uid is None and b.rots is None and a.rots is None


# --- STAR variants ---------------------------------------------------------------------------------------------
def test_relion31_block_order_does_not_matter(fixtures_dir):
    a = load_particles(fixtures_dir / "cryodrgn/relion31.star")
    b = load_particles(fixtures_dir / "cryodrgn/relion31.v2.star")
    assert len(a) == len(b) == 5 and a.D == 256
    assert a.apix == pytest.approx(2.806)  # from data_optics; header says 1.0
    for x, y in ((a.ctf, b.ctf), (a.rots, b.rots), (a.trans_px, b.trans_px)):
        assert np.array_equal(x, y)
    assert np.array_equal(a.images[:], b.images[:])
    table = read_star(fixtures_dir / "cryodrgn/relion31.star")
    expect_t = np.stack([table.column("rlnOriginXAngst"), table.column("rlnOriginYAngst")], 1) / 2.806
    assert np.allclose(a.trans_px, expect_t, atol=1e-6)
    assert np.allclose(a.ctf[:, 2], table.column("rlnDefocusU"))
    assert np.all(a.ctf[:, 7] == np.float32(0.1)) and np.all(a.ctf[:, 0] == 256)


def test_six_optics_groups_joined_by_number(fixtures_dir):
    table = read_star(fixtures_dir / "cryodrgn/relion31.6opticsgroups.star")
    assert len(table) == 139 and len(table.optics) == 6
    ctf = parse_ctf_star(table)
    g = table.column("rlnOpticsGroup")
    # group numbers are not in name order (group 1 is "opticsGroup5"); values must follow the number
    assert np.all(ctf[g == 4, 6] == np.float32(2.6)) and np.all(ctf[g != 4, 6] == np.float32(2.7))
    assert np.allclose(ctf[np.isin(g, [2, 5]), 1], 1.24) and np.allclose(ctf[~np.isin(g, [2, 5]), 1], 1.25)
    rot, trans = parse_pose_star(table)
    apix = np.where(np.isin(g, [2, 5]), 1.24, 1.25)
    t_angst = np.stack([table.column("rlnOriginXAngst"), table.column("rlnOriginYAngst")], 1)
    assert rot.shape == (139, 3, 3)
    assert np.allclose(trans * 196, t_angst / apix[:, None])  # each particle's own optics-group pixel size


def test_relion5_star_with_datadir_and_resampled_stacks(fixtures_dir, tmp_path):
    star = fixtures_dir / "cryodrgn/relion5.star"
    with pytest.raises(InputError, match="toy_images_a.mrcs.*not found.*--datadir"):
        load_particles(star)
    rng = np.random.default_rng(0)
    stacks = {"toy_images_a.mrcs": rng.normal(size=(10, 64, 64)), "toy_images_b.mrcs": rng.normal(size=(11, 64, 64))}
    for name, data in stacks.items():
        with MrcStackWriter(tmp_path / name, D=64, apix=0.89 * 448 / 64) as w:
            w.write(data)
    ps = load_particles(star, datadir=tmp_path)
    table = read_star(star)
    assert len(ps) == 17 and ps.D == 64
    # rlnImageSize 448 but the stacks are 64 px: the pixel size scales by 448/64, pixel translations by 64/448
    assert ps.apix == pytest.approx(0.89 * 448 / 64, rel=1e-6)
    assert np.allclose(ps.ctf[:, 1], 0.89 * 448 / 64) and np.all(ps.ctf[:, 0] == 64)
    assert np.allclose(ps.ctf[:, 5:8], [100.0, 1.6, 0.1])
    t448 = np.stack([table.column("rlnOriginXAngst"), table.column("rlnOriginYAngst")], 1) / 0.89
    assert np.allclose(ps.trans_px, t448 * 64 / 448, atol=1e-5)
    assert any("448" in n for n in ps.notes)
    # images follow rlnImageName k@file (1-based)
    frames = [int(s.split("@")[0]) - 1 for s in table.column("rlnImageName")]
    files = [s.split("@")[1] for s in table.column("rlnImageName")]
    expect = np.stack([stacks[f][k] for f, k in zip(files, frames)]).astype(np.float32)
    assert np.array_equal(ps.images[:], expect)


# --- cryoSPARC variants ----------------------------------------------------------------------------------------
def test_cs_2d_only_has_no_poses(fixtures_dir, tmp_path):
    cs = fixtures_dir / "cryodrgn/cryosparc_J2_particles_exported.cs"
    with pytest.raises(InputError, match="2D classification"):
        parse_pose_cs(cs)
    data = np.random.default_rng(1).normal(size=(22, 64, 64))
    with MrcStackWriter(tmp_path / "000090334788266266069_18jam15b_0345_ali_DW.mrcs", D=64, apix=1.0) as w:
        w.write(data)
    ps = load_particles(cs, datadir=tmp_path)  # blob path ">J1/imported/<name>": found as datadir/basename
    assert len(ps) == 22 and ps.rots is None and ps.trans_px is None
    assert any("2D" in n for n in ps.notes)
    assert ps.ctf is not None and np.allclose(ps.ctf[:, 1], 1.345 * 300 / 64, rtol=1e-6)
    assert np.array_equal(ps.images[:], data.astype(np.float32))
    assert ps.uid.dtype == np.uint64 and len(np.unique(ps.uid)) == 22


def test_cs_with_zero_rows_is_a_clear_error(fixtures_dir):
    with pytest.raises(InputError, match=r"4k_dataset\.cs.*0 particles"):
        load_particles(fixtures_dir / "cryosparc_tools/4k_dataset.cs")


# --- stacks, lists, float16 ------------------------------------------------------------------------------------
def _warptools_stacks(fixtures_dir: Path, n: int = 3) -> list[Path]:
    return sorted((fixtures_dir / "tomodrgn/warptools").glob("*/*/*.mrcs"))[:n]


def test_float16_stacks_and_txt_list(fixtures_dir, tmp_path):
    files = _warptools_stacks(fixtures_dir)
    raw = []
    for f in files:
        with mrcfile.open(f) as m:
            assert m.data.dtype == np.float16
            raw.append(np.asarray(m.data, dtype=np.float32))
    raw = np.concatenate(raw)
    lst = tmp_path / "stacks.txt"
    lst.write_text("\n".join(str(f) for f in files) + "\n")
    ps = load_particles(lst)
    assert len(ps) == len(raw) == 111 and ps.D == 32 and ps.apix == 12.0
    assert ps.images.dtypes == ["float16"]
    idx = np.array([110, 0, 37, 36, 74, 5])
    out = ps.images[idx]
    assert out.dtype == np.float32 and np.array_equal(out, raw[idx])
    # relative names in a list resolve against the list's folder, or against --datadir
    rel = tmp_path / "rel.txt"
    rel.write_text("\n".join(f.name for f in files))
    with pytest.raises(InputError, match="rel.txt.*not found"):
        load_particles(rel)
    assert len({f.parent for f in files}) == 1
    assert np.array_equal(load_particles(rel, datadir=files[0].parent).images[:], raw)


def test_image_stack_random_access(tmp_path):
    rng = np.random.default_rng(5)
    data = rng.normal(size=(40, 16, 16)).astype(np.float32)
    with MrcStackWriter(tmp_path / "a.mrcs", D=16, apix=2.0) as w:
        for i in range(0, 40, 7):
            w.write(data[i:i + 7])
    stack = ImageStack.from_files([tmp_path / "a.mrcs", tmp_path / "a.mrcs"])
    assert len(stack) == 80 and stack.shape == (80, 16, 16) and stack.apix == 2.0
    both = np.concatenate([data, data])
    assert np.array_equal(stack[3], both[3:4])
    assert np.array_equal(stack[-1], both[-1:])
    assert np.array_equal(stack[10:50:3], both[10:50:3])
    idx = rng.permutation(80)[:25]
    assert np.array_equal(stack[idx], both[idx])
    mask = np.zeros(80, bool)
    mask[[1, 41, 79]] = True
    assert np.array_equal(stack[mask], both[mask])
    assert len(stack._files) == 2    # one open file per listed file, reused across reads
    with pytest.raises(IndexError):
        stack[80]
    sub = stack.subset([79, 0])
    assert np.array_equal(sub[:], both[[79, 0]])
    clone = pickle.loads(pickle.dumps(stack))  # e.g. sent to a DataLoader worker: files are reopened lazily
    assert len(clone._files) == 0 and np.array_equal(clone[idx], both[idx])
    few = ImageStack.from_files([tmp_path / "a.mrcs"] * 5, max_open=2)
    assert np.array_equal(few[np.arange(0, 200, 9)], np.concatenate([data] * 5)[::9]) and len(few._files) == 2
    few.close()
    assert not few._files and np.array_equal(few[199], data[-1:])


def _rss_mb() -> float | None:
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS:"):
                return float(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def test_a_pass_over_a_large_stack_does_not_grow_resident_memory(tmp_path):
    """Reading every image of a 64 MB stack in batches leaves the process's resident set about where it was (the file
    is read, not mapped into memory), so a pass over 10^5 particles costs no RAM beyond a batch."""
    if _rss_mb() is None:
        pytest.skip("needs /proc/self/status (Linux) to measure the resident set")
    n, d = 1000, 128
    with MrcStackWriter(tmp_path / "big.mrcs", D=d, apix=1.0) as w:
        for i in range(0, n, 100):
            w.write(np.full((100, d, d), i, np.float32))
    stack = ImageStack.from_files([tmp_path / "big.mrcs"])
    stack[0:50]
    before = _rss_mb()
    for i in range(0, n, 50):
        assert float(stack[i:i + 50][0, 0, 0]) == (i // 100) * 100
    assert _rss_mb() - before < 24, (before, _rss_mb())   # the file is 64 MB


def test_mrc_mode_int16_reads_as_float32(tmp_path):
    data = np.arange(3 * 8 * 8, dtype=np.int16).reshape(3, 8, 8) - 50
    with mrcfile.new(tmp_path / "i16.mrcs") as m:
        m.set_data(data)
        m.set_image_stack()
    ps = load_particles(tmp_path / "i16.mrcs")
    assert ps.images[:].dtype == np.float32 and np.array_equal(ps.images[:], data.astype(np.float32))


# --- round trips and overrides ---------------------------------------------------------------------------------
def _write_dataset(folder: Path, n: int = 9, D: int = 16, apix: float = 2.0):
    rng = np.random.default_rng(7)
    imgs = rng.normal(size=(n, D, D)).astype(np.float32)
    with MrcStackWriter(folder / "particles.mrcs", D=D, apix=apix) as w:
        w.write(imgs)
    ctf = np.zeros((n, 9), np.float32)
    ctf[:] = [D, apix, 15000, 14500, 20, 300, 2.7, 0.1, 0]
    ctf[:, 2] += np.arange(n) * 100
    rot = rotvec_to_rot(rng.normal(size=(n, 3)))
    trans = rng.uniform(-3, 3, (n, 2))
    return imgs, ctf, rot, trans


def test_star_round_trip_through_load_particles(tmp_path):
    imgs, ctf, rot, trans = _write_dataset(tmp_path)
    write_particles_star(tmp_path / "particles.star", ("particles.mrcs", 9), ctf, rot, trans, 2.0, 16)
    ps = load_particles(tmp_path / "particles.star")
    assert np.array_equal(ps.images[:], imgs)
    assert np.allclose(ps.ctf, ctf, atol=1e-3)
    assert np.allclose(ps.rots, rot, atol=1e-5)
    assert np.allclose(ps.trans_px, trans, atol=1e-5)
    assert ps.apix == 2.0 and list(ps.index) == list(range(9))
    sub = ps.subset([8, 2, 5]).subset([2, 0])
    assert list(sub.index) == [5, 8]
    assert list(sub.image_names) == ["6@particles.mrcs", "9@particles.mrcs"]
    assert np.array_equal(sub.images[:], imgs[[5, 8]])
    assert np.allclose(sub.ctf, ctf[[5, 8]], atol=1e-3)


def test_pkl_overrides_for_a_plain_stack(tmp_path):
    imgs, ctf, rot, trans = _write_dataset(tmp_path)
    write_ctf_pkl(tmp_path / "ctf.pkl", ctf)
    write_pose_pkl(tmp_path / "pose.pkl", rot, trans / 16)
    ps = load_particles(tmp_path / "particles.mrcs", ctf=tmp_path / "ctf.pkl", poses=tmp_path / "pose.pkl")
    assert np.array_equal(ps.ctf, ctf) and np.allclose(ps.rots, rot) and np.allclose(ps.trans_px, trans, atol=1e-5)
    assert ps.apix == 2.0


def test_huge_sparse_stack_is_read_without_loading_it(tmp_path):
    """A 4.9 GB stack (sparse on disk) opens and serves random images with a few MB of memory."""
    import tracemalloc

    n, D = 300_000, 64
    path = tmp_path / "huge.mrcs"
    with mrcfile.new_mmap(path, shape=(n, D, D), mrc_mode=2) as m:
        m.set_image_stack()
        m.voxel_size = 1.5
        m.data[n - 1] = 7.0
        m.data[123_456, 5, 6] = -3.0
    assert path.stat().st_size > 4 * 2**30
    tracemalloc.start()
    try:
        ps = load_particles(path)
        imgs = ps.images[np.array([n - 1, 0, 123_456, 250_000])]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(ps) == n and ps.apix == 1.5
    assert np.all(imgs[0] == 7.0) and np.all(imgs[1] == 0.0) and imgs[2, 5, 6] == -3.0
    assert peak < 16 * 2**20  # the whole stack would be 4.9 GB


def test_ctf_pkl_for_the_full_size_stack_rescales_pixel_size(tmp_path):
    """A ctf.pkl written for the original 32 px box used with a 16 px (downsampled) stack, as in cryoDRGN."""
    imgs, ctf, rot, trans = _write_dataset(tmp_path, D=16, apix=2.0)
    full = ctf.copy()
    full[:, 0], full[:, 1] = 32, 1.0
    write_ctf_pkl(tmp_path / "ctf32.pkl", full)
    ps = load_particles(tmp_path / "particles.mrcs", ctf=tmp_path / "ctf32.pkl")
    assert np.all(ps.ctf[:, 0] == 16) and np.allclose(ps.ctf[:, 1], 2.0) and ps.apix == 2.0
    assert np.array_equal(ps.ctf[:, 2:], full[:, 2:]) and any("32" in n for n in ps.notes)


def test_cs_subset_keeps_uid_and_index(fixtures_dir):
    ps = load_particles(fixtures_dir / "cryodrgn/empiar_10076_7.cs")
    sub = ps.subset(np.array([False, True, False, False, True, True, False])).subset([2, 0])
    assert list(sub.index) == [5, 1]
    assert list(sub.uid) == [ps.uid[5], ps.uid[1]]
    assert np.array_equal(sub.images[:], ps.images[[5, 1]])
    assert list(sub.image_names) == ["6@empiar_10076_7.mrc", "2@empiar_10076_7.mrc"]


def test_relion_type_suffix_in_image_names(tmp_path):
    imgs, ctf, rot, trans = _write_dataset(tmp_path, n=3)
    (tmp_path / "particles.mrcs").rename(tmp_path / "stack.mrc")
    write_particles_star(tmp_path / "p.star", ["3@stack.mrc:mrcs", "1@stack.mrc:mrcs"], ctf[:2], None, None, 2.0, 16)
    ps = load_particles(tmp_path / "p.star")
    assert np.array_equal(ps.images[:], imgs[[2, 0]]) and ps.rots is None


def test_apix_override_is_the_pixel_size_of_the_loaded_images(fixtures_dir, tmp_path):
    rng = np.random.default_rng(0)
    for name, n in (("toy_images_a.mrcs", 10), ("toy_images_b.mrcs", 11)):
        with MrcStackWriter(tmp_path / name, D=64, apix=1.0) as w:
            w.write(rng.normal(size=(n, 64, 64)))
    star = fixtures_dir / "cryodrgn/relion5.star"
    ref = load_particles(star, datadir=tmp_path)  # 448 px at 0.89 A -> 64 px at 6.23 A
    ps = load_particles(star, datadir=tmp_path, apix=6.23)
    assert ps.apix == 6.23 and np.allclose(ps.ctf[:, 1], 6.23)
    assert np.allclose(ps.trans_px, ref.trans_px * (0.89 * 448 / 64) / 6.23, rtol=1e-5)
