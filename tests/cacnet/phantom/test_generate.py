"""cacnet.phantom: determinism, exact truth, geometry, tissues, CLI."""

import csv

import numpy as np
import pytest
import SimpleITK as sitk
from typer.testing import CliRunner

import agatston
from cacnet.cli import app
from cacnet.phantom import LOOKALIKES, ORIENTATIONS, generate_phantom, make_phantoms, oriented_image

SIZE = 320  # smaller matrix than the real 512, to keep the tests quick


@pytest.fixture(scope="module")
def case():
    return generate_phantom(11, category="D", lookalike_rate=1.0, hard_fraction=1.0, size=SIZE)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    out = tmp_path_factory.mktemp("phantoms")
    rows = make_phantoms(out, 5, seed=7, balanced=True, size=SIZE)
    return out, rows


def test_same_seed_same_case_bit_for_bit(case):
    again = generate_phantom(11, category="D", lookalike_rate=1.0, hard_fraction=1.0, size=SIZE)
    assert np.array_equal(case.hu, again.hu) and np.array_equal(case.labels, again.labels)
    assert case.points == again.points and case.meta == again.meta
    other = generate_phantom(12, category="D", size=SIZE)
    assert not np.array_equal(case.hu.shape, other.hu.shape) or not np.array_equal(case.hu, other.hu)


def test_truth_is_agatston_of_image_and_labels(case):
    r = agatston.score(case.hu, case.spacing, case.labels)
    assert r.agatston == case.truth.agatston and r.category == "D"
    assert case.hu.dtype == np.int16 and case.labels.dtype == np.uint8
    assert set(np.unique(case.labels)) <= {0, 1, 2, 3, 4}
    assert (case.hu[case.labels > 0] >= 130).all()  # truth voxels are >= 130 HU


def test_points_rebuild_the_label_volume(case):
    pts = np.array([p["index_zyx"] for p in case.points])
    labs = [p["label"] for p in case.points]
    rebuilt = agatston.mask_from_points(case.hu, pts, labels=labs)
    assert rebuilt.missed == () and rebuilt.conflicts == ()
    if case.meta["merged_with_lookalike"] == 0:
        assert np.array_equal(rebuilt.mask, case.labels)
    else:  # the merged look-alike voxels come along, nothing is lost
        assert (rebuilt.mask[case.labels > 0] == case.labels[case.labels > 0]).all()


def test_lookalikes_present_and_never_labelled(case):
    idx, kinds = case.lookalike_voxels
    assert set(case.meta["lookalikes"]) == set(LOOKALIKES)
    assert set(np.unique(kinds)) <= set(LOOKALIKES.values()) and len(np.unique(kinds)) >= 4
    assert (case.labels[tuple(idx.T)] == 0).all()
    assert (case.hu[tuple(idx.T)] >= 130).mean() > 0.5  # they do look like calcium


def test_tissue_hu_in_stated_ranges(case):
    anat = case.anatomy
    sp, org = np.array(case.spacing), np.array(case.origin)
    c = np.rint((anat.heart.center - org) / sp).astype(int)
    heart = case.hu[c[0] - 1 : c[0] + 2, c[1] - 15 : c[1] + 15, c[2] - 15 : c[2] + 15].astype(float)
    off = case.acquisition.hu_offset
    assert 30 - 8 <= heart.mean() - off <= 50 + 8  # blood/myocardium 30-50 HU
    assert 8 <= heart.std() <= 34  # noise 10-30 HU
    assert case.hu.min() >= -1024 and np.percentile(case.hu, 1) < -700  # lung and air present
    assert (case.hu > 500).mean() > 0.001  # cortical bone present


def test_balanced_mode_gives_requested_counts(written):
    _, rows = written
    assert sorted(r["category"] for r in rows) == list("ABCDE")
    assert all(r["category"] == r["target_category"] for r in rows)


def test_written_files_match_truth_and_points(written):
    out, rows = written
    with open(out / "points.csv") as fh:
        points = list(csv.DictReader(fh))
    with open(out / "truth.csv") as fh:
        truth = {r["id"]: r for r in csv.DictReader(fh)}
    assert set(truth) == {r["id"] for r in rows}
    for case_id, row in truth.items():
        img = sitk.ReadImage(str(out / "scans" / f"{case_id}.nii.gz"))
        lab = sitk.ReadImage(str(out / "labels" / f"{case_id}.nii.gz"))
        hu, labels = sitk.GetArrayFromImage(img), sitk.GetArrayFromImage(lab)
        assert hu.dtype == np.int16 and labels.dtype == np.uint8
        assert img.GetDirection() == lab.GetDirection() and img.GetOrigin() == lab.GetOrigin()
        sx, sy, sz = img.GetSpacing()
        r = agatston.score(hu, (sz, sy, sx), labels)
        assert r.agatston == pytest.approx(float(row["agatston"]), abs=1e-5)
        assert r.category == row["category"]
        for name, lab_id in (("LM", 1), ("LAD", 2), ("LCX", 3), ("RCA", 4)):
            got = r.by_label[lab_id].agatston if lab_id in r.by_label else 0.0
            assert got == pytest.approx(float(row[name]), abs=1e-5)
        mine = [p for p in points if p["id"] == case_id]
        for p in mine:
            k, j, i = int(p["k"]), int(p["j"]), int(p["i"])
            assert labels[k, j, i] == int(p["label"])
            phys = img.TransformIndexToPhysicalPoint((i, j, k))
            assert phys == pytest.approx((float(p["x_mm"]), float(p["y_mm"]), float(p["z_mm"])), abs=1e-3)


@pytest.mark.parametrize("orientation", list(ORIENTATIONS))
def test_orientation_round_trip(case, orientation, tmp_path):
    img = oriented_image(case.hu, case, orientation)
    path = tmp_path / "x.nii.gz"
    sitk.WriteImage(img, str(path))
    back = sitk.ReadImage(str(path))
    assert back.GetSpacing() == pytest.approx(img.GetSpacing())
    assert back.GetOrigin() == pytest.approx(img.GetOrigin(), abs=1e-4)
    assert back.GetDirection() == pytest.approx(img.GetDirection(), abs=1e-6)
    arr = sitk.GetArrayFromImage(back)
    d = np.array(back.GetDirection()).reshape(3, 3)
    assert abs(d[2, 2]) == 1.0  # slices stay axial
    # every voxel keeps its physical position: check a few
    rng = np.random.default_rng(0)
    for z, y, x in rng.integers(0, case.hu.shape, size=(5, 3)):
        phys = (case.origin[2] + x * case.spacing[2], case.origin[1] + y * case.spacing[1],
                case.origin[0] + z * case.spacing[0])
        i, j, k = back.TransformPhysicalPointToIndex(phys)
        assert arr[k, j, i] == case.hu[z, y, x]


def test_cli_phantom_writes_a_set(tmp_path):
    result = CliRunner().invoke(app, ["phantom", str(tmp_path / "set"), "--n", "1", "--seed", "2",
                                      "--category", "b", "--preview"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "set" / "previews" / "phantom_2_0000.png").is_file()
    with open(tmp_path / "set" / "truth.csv") as fh:
        (row,) = list(csv.DictReader(fh))
    assert row["category"] == "B"
    assert not list((tmp_path / "set").rglob(".*tmp*"))  # nothing half-written left


def test_cli_phantom_files_get_the_umask_permissions(tmp_path):
    import os
    import stat

    old = os.umask(0o027)
    try:
        result = CliRunner().invoke(app, ["phantom", str(tmp_path / "set"), "--n", "1", "--seed", "3",
                                          "--category", "C", "--preview"])
    finally:
        os.umask(old)
    assert result.exit_code == 0, result.output
    files = [p for p in (tmp_path / "set").rglob("*") if p.is_file()]
    assert {p.relative_to(tmp_path / "set").as_posix() for p in files} == {
        "truth.csv", "points.csv", "scans/phantom_3_0000.nii.gz", "labels/phantom_3_0000.nii.gz",
        "previews/phantom_3_0000.png"}
    assert {str(p): stat.S_IMODE(p.stat().st_mode) for p in files} == {str(p): 0o640 for p in files}
    with open(tmp_path / "set" / "truth.csv") as fh:
        (row,) = list(csv.DictReader(fh))
    arteries = {name: float(row[name]) for name in ("LM", "LAD", "LCX", "RCA")}
    assert row["cac_drs"] == str(agatston.cac_drs(arteries)) and row["cac_drs"].startswith("CAC-DRS A")


@pytest.mark.parametrize("args", [["--category", "F"], ["--category", "A", "--balanced"], ["--n", "0"]])
def test_cli_phantom_usage_errors(tmp_path, args):
    result = CliRunner().invoke(app, ["phantom", str(tmp_path), *args])
    assert result.exit_code == 2
