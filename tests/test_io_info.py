"""`cryofire info`: readable summaries of particles and maps, exit status 2 on unusable input."""
from __future__ import annotations

import numpy as np

from cryofire_app.cli import main
from cryofire_app.io import MrcStackWriter, rotvec_to_rot, write_mrc, write_particles_star


def _run(capsys, *argv):
    rc = main(["info", *map(str, argv)])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def test_info_star_with_optics_groups_and_datadir(tmp_path, capsys):
    rng = np.random.default_rng(0)
    n, D = 6, 16
    data_dir = tmp_path / "stacks"
    data_dir.mkdir()
    with MrcStackWriter(data_dir / "p.mrcs", D=D, apix=1.0) as w:
        w.write(rng.normal(size=(n, D, D)))
    ctf = np.tile(np.array([D, 2.5, 12000, 11000, 10, 300, 2.7, 0.1, 0], np.float32), (n, 1))
    ctf[3:, 5] = 200
    write_particles_star(tmp_path / "p.star", ("Extract/job1/p.mrcs", n), ctf, rotvec_to_rot(rng.normal(size=(n, 3))),
                         rng.uniform(-2, 2, (n, 2)), 2.5, D)
    rc, out, _ = _run(capsys, tmp_path / "p.star")
    assert rc == 2 and "cannot be opened" in out and "--datadir" in out  # metadata still described
    assert "RELION 3.1+ (2 optics groups)" in out and "Rows            6" in out
    rc, out, _ = _run(capsys, tmp_path / "p.star", "--datadir", data_dir)
    assert rc == 0
    assert "6 image(s) from 1 file(s)" in out and "16 x 16 px" in out and "2.5 A (from the metadata)" in out
    assert "rlnAngleRot" in out and "rlnOriginXAngst" in out and "rotations for all particles" in out
    assert "200 .. 300 kV" in out and "all finite" in out
    assert "differs from the metadata" in out  # header 1.0 vs STAR 2.5 is reported


def test_info_cs_and_stack_and_map(fixtures_dir, tmp_path, capsys):
    rc, out, _ = _run(capsys, fixtures_dir / "cryodrgn/empiar_10076_7.cs")
    assert rc == 0 and "cryoSPARC .cs" in out and "320 x 320 px" in out and "1.31 A" in out
    assert "voxel size is 0" in out and "none (ab initio)" in out
    rc, out, _ = _run(capsys, fixtures_dir / "cryodrgn/cryosparc_J2_particles_exported.cs")
    assert rc == 2 and "2D classification only" in out
    rc, out, _ = _run(capsys, fixtures_dir / "cryosparc_tools/4k_dataset.cs")
    assert rc == 2 and "0 particles" in out
    rc, out, _ = _run(capsys, fixtures_dir / "drgnai/tilts/00256_Ribosomes_1.70A.mrcs")
    assert rc == 2 and "truncated" in out
    rc, out, _ = _run(capsys, fixtures_dir / "cryodrgn/empiar_10076_7.mrc", "--as", "particles")
    assert rc == 0 and "MRC particle stack" in out and "pass --apix" in out
    rc, out, _ = _run(capsys, fixtures_dir / "mrcfile/EMD-3001.map")
    assert rc == 0 and "43 x 25 x 73 voxels" in out and "NOT cubic" in out and "(3, 1, 2)" in out
    rc, out, _ = _run(capsys, fixtures_dir / "tomodrgn/warptools/warptools_test_4-tomos_10-ptcls_box-32_angpix-12"
                      / "Unt_050/Unt_050_12.00A_000001.mrcs")
    assert rc == 0 and "float16 (MRC mode 12)" in out and "12 A (from the MRC header)" in out
    write_mrc(tmp_path / "v.mrc", np.zeros((8, 8, 8)), apix=3.0, origin=(1, 2, 3))
    rc, out, _ = _run(capsys, tmp_path / "v.mrc")
    assert rc == 0 and "8 x 8 x 8 voxels (x, y, z); cubic" in out and "Voxel size      3 A" in out


def test_info_nan_and_missing(tmp_path, capsys):
    import warnings

    import mrcfile

    data = np.zeros((4, 8, 8), np.float32)
    data[1, 0, 0] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with mrcfile.new(tmp_path / "nan.mrcs") as m:
            m.set_data(data)
            m.set_image_stack()
    rc, out, _ = _run(capsys, tmp_path / "nan.mrcs")
    assert rc == 2 and "FAILED" in out and "NaN or Inf" in out
    rc, _, err = _run(capsys, tmp_path / "absent.star")
    assert rc == 2 and "absent.star: file not found" in err


def test_info_overrides_for_incomplete_metadata(fixtures_dir, capsys):
    star = fixtures_dir / "aspire/rln_proj_64.star"  # origins in Angstrom, no pixel size anywhere
    rc, out, _ = _run(capsys, star)
    assert rc == 2 and "no pixel size: give --apix" in out
    rc, out, _ = _run(capsys, star, "--apix", "2.0")
    assert rc == 0 and "2 A (from the command line)" in out and "using 2 A from the apix argument" in out
    rc, out, _ = _run(capsys, fixtures_dir / "aspire/sample_incomplete_ctf_params.star")
    assert rc == 2 and "rlnVoltage (must be supplied)" in out and "give kV explicitly" in out
    rc, out, _ = _run(capsys, fixtures_dir / "aspire/sample_incomplete_ctf_params.star", "--kv", "300")
    assert rc == 0 and "300 kV" in out
