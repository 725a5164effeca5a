"""`cac dataset coca|orcascore` and cacnet.datasets: tiny COCA and orCaScore cases built here."""

from __future__ import annotations

import csv
import json
import plistlib
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from typer.testing import CliRunner

import agatston
from cacnet.cli import app
from cacnet.datasets import DatasetLayoutError, convert_coca, convert_orcascore, fill_polygon, polygon_area

from ..dicom_helpers import write_series

runner = CliRunner()
SP = (3.0, 0.5, 0.5)
X0 = Y0 = -50.0


# ---------------------------------------------------------------------------------------------------------------
# polygon fill against a brute-force reference


def _meets_pixel(p, q, c, r) -> bool:
    """Whether segment p-q has a point in pixel [c-0.5, c+0.5) x [r-0.5, r+0.5) (Liang-Barsky, brute force)."""
    (x0, y0), (x1, y1) = p, q
    if (x0, y0) == (x1, y1):
        return c - 0.5 <= x0 < c + 0.5 and r - 0.5 <= y0 < r + 0.5
    t0, t1 = 0.0, 1.0
    for d, lo, hi, s in ((x1 - x0, c - 0.5, c + 0.5, x0), (y1 - y0, r - 0.5, r + 0.5, y0)):
        if d == 0:
            if not lo <= s < hi:
                return False
            continue
        a, b = (lo - s) / d, (hi - s) / d
        t0, t1 = max(t0, min(a, b)), min(t1, max(a, b))
    return t0 < t1  # a piece of positive length (random vertices never graze a corner exactly)


def _inside_vertical_ray(pts, c, r) -> bool:
    """Even-odd rule with a ray from the pixel centre towards -y (the fill casts along +x)."""
    inside = False
    n = len(pts)
    for i in range(n):
        (x1, y1), (x2, y2) = pts[i], pts[(i + 1) % n]
        if (x1 > c) != (x2 > c):
            y_at = y1 + (c - x1) * (y2 - y1) / (x2 - x1)
            if y_at < r:
                inside = not inside
    return inside


def _reference_fill(pts, shape, outline=True):
    n = len(pts)
    edges = [(pts[i], pts[(i + 1) % n]) for i in range(n)] if n >= 3 else [(pts[0], pts[-1])]
    out = np.zeros(shape, bool)
    for r in range(shape[0]):
        for c in range(shape[1]):
            inside = n >= 3 and _inside_vertical_ray(pts, c, r)
            touched = outline and any(_meets_pixel(p, q, c, r) for p, q in edges)
            out[r, c] = inside or touched
    return out


def test_fill_polygon_matches_brute_force():
    rng = np.random.default_rng(7)
    shape = (12, 13)
    for trial in range(150):
        n = int(rng.integers(1, 8))
        pts = [tuple(v) for v in rng.uniform(-1.5, 13.5, size=(n, 2))]
        for outline in (True, False):
            got = fill_polygon(pts, shape, outline=outline)
            want = _reference_fill(pts, shape, outline=outline)
            assert np.array_equal(got, want), (trial, pts, outline)
        # every densely sampled outline point lies in a filled pixel
        edges = [(pts[i], pts[(i + 1) % n]) for i in range(n)] if n >= 3 else [(pts[0], pts[-1])]
        fill = fill_polygon(pts, shape)
        for p, q in edges:
            t = np.linspace(0, 1, 401)[:, None]
            xy = np.floor(np.array(p) + t * (np.array(q) - np.array(p)) + 0.5).astype(int)
            ok = (xy[:, 0] >= 0) & (xy[:, 0] < shape[1]) & (xy[:, 1] >= 0) & (xy[:, 1] < shape[0])
            assert fill[xy[ok, 1], xy[ok, 0]].all()


def test_fill_polygon_small_cases_by_hand():
    # triangle: outline pixels plus the one centre inside (worked out on paper)
    want = np.zeros((5, 5), bool)
    for r, c in [(1, 1), (1, 2), (1, 3), (2, 1), (2, 2), (2, 3), (3, 2)]:
        want[r, c] = True
    assert np.array_equal(fill_polygon([(0.6, 0.6), (3.4, 0.6), (2.0, 3.4)], (5, 5)), want)
    inner = np.zeros((5, 5), bool)
    inner[1, 1:4] = inner[2, 2] = inner[3, 2] = True
    assert np.array_equal(fill_polygon([(0.6, 0.6), (3.4, 0.6), (2.0, 3.4)], (5, 5), outline=False), inner)
    # pixels are half-open: an outline on a border at c + 0.5 belongs to pixel c + 1
    sq = fill_polygon([(0.5, 0.5), (2.5, 0.5), (2.5, 2.5), (0.5, 2.5)], (5, 5))
    assert np.array_equal(np.argwhere(sq), [[r, c] for r in (1, 2, 3) for c in (1, 2, 3)])
    assert np.argwhere(fill_polygon([(1.2, 1.7)], (4, 4))).tolist() == [[2, 1]]
    assert np.argwhere(fill_polygon([(0, 0), (3, 2)], (4, 5))).tolist() == [[0, 0], [0, 1], [1, 1], [1, 2],
                                                                          [2, 2], [2, 3]]
    assert polygon_area([(0, 0), (2, 0), (2, 2), (0, 2)]) == 4.0 and polygon_area([(0, 0), (1, 1)]) == 0.0


# ---------------------------------------------------------------------------------------------------------------
# COCA


def _roi(name, pts, z, *, area, max_hu, mm=True, center=True, mm_shift=0.0):
    """An OsiriX ROI: ``pts`` are index coordinates; Point_px adds OsiriX's half pixel."""
    d = {"Name": name, "Point_px": [f"({x + 0.5:.6f}, {y + 0.5:.6f})" for x, y in pts], "Area": area,
         "Max": max_hu, "Mean": 0.0, "Min": 0.0, "NumberOfPoints": len(pts), "Type": 11}
    if mm:
        d["Point_mm"] = [f"({X0 + x * SP[2] + mm_shift:.6f}, {Y0 + y * SP[1]:.6f}, {z:.6f})" for x, y in pts]
    if center:
        cx, cy = np.mean(pts, axis=0)
        d["Center"] = f"({X0 + cx * SP[2]:.6f}, {Y0 + cy * SP[1]:.6f}, {z:.6f})"
    return d


def _write_xml(path: Path, images: dict[int, list[dict]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        plistlib.dump({"Images": [{"ImageIndex": i, "NumberOfROIs": len(r), "ROIs": r} for i, r in images.items()]},
                      fh)


TRIANGLE = [(8.6, 8.6), (11.4, 8.6), (10.0, 11.4)]
TRIANGLE_PIXELS = [(9, 9), (9, 10), (9, 11), (10, 9), (10, 10), (10, 11), (11, 10)]


def _patient_1(root: Path):
    """Head-first series (z 0, 3, 6, 9): polygons, a 1- and a 2-point ROI, a mismatch and two bad ROIs."""
    hu = np.full((4, 16, 16), -100.0)
    lab = np.zeros(hu.shape, np.uint8)
    hu[1, 4:8, 4:8] = 300
    hu[1, 5, 5] = 450
    lab[1, 4:8, 4:8] = 2
    hu[1, 2, 12] = 500
    lab[1, 2, 12] = 1
    hu[2, 8:13, 8:13] = 200
    hu[2, 10, 11] = 100  # inside the triangle but below 130 HU
    for r, c in TRIANGLE_PIXELS:
        lab[2, r, c] = 4 if hu[2, r, c] >= 130 else 0
    hu[2, 12, 2:5] = 250
    lab[2, 12, 2:5] = 3
    hu[3, 10:14, 2:6] = 350
    lab[3, 10:14, 2:6] = 2
    hu[0, 12:15, 12:15] = 400  # annotated only by the two ROIs that are left out
    write_series(root / "patient" / "1" / "CS_3.0", hu, spacing=SP, origin=(0.0, Y0, X0))
    _write_xml(root / "calcium_xml" / "1.xml", {
        0: [_roi("Right Coronary Artery", [(12, 12), (14, 12), (14, 14), (12, 14)], 100.0, area=0.0225, max_hu=400),
            _roi("Aorta", [(12, 12), (14, 12), (14, 14), (12, 14)], 0.0, area=0.0225, max_hu=400)],
        1: [_roi("Left Anterior Descending Artery", [(4, 4), (7, 4), (7, 7), (4, 7)], 3.0, area=0.04, max_hu=450),
            _roi("Left Coronary Artery", [(12, 2)], 3.0, area=0.0, max_hu=500)],
        2: [_roi("Right Coronary Artery", TRIANGLE, 6.0, area=0.0098, max_hu=200),
            _roi("Left Circumflex Artery", [(2, 12), (4, 12)], 6.0, area=0.0, max_hu=250)],
        3: [_roi("Left Anterior Descending Artery", [(2, 10), (5, 10), (5, 13), (2, 13)], 9.0, area=1.0,
                 max_hu=999, mm_shift=1.0)],
    })
    return hu, lab


def _patient_2(root: Path):
    """Instance numbers run opposite to position (instance 1 is the top slice); ImageIndex counts in position order.

    As in COCA's exports: OsiriX's ImageIndex is the image's place in the viewer, which showed the series in
    position order. One ROI's ImageIndex names another slice than its z in every order: a real mismatch.
    """
    hu = np.full((3, 12, 12), -100.0)
    lab = np.zeros(hu.shape, np.uint8)
    hu[0, 3:6, 3:6] = 300
    lab[0, 3:6, 3:6] = 3
    hu[2, 7:9, 7:9] = 260
    lab[2, 7:9, 7:9] = 4
    hu[1, 1:3, 8:10] = 220
    lab[1, 1:3, 8:10] = 2
    hu[1, 8:10, 2:4] = 240
    lab[1, 8:10, 2:4] = 3
    paths = write_series(root / "patient" / "2" / "CS_3.0", hu, spacing=SP, origin=(10.0, Y0, X0),
                         series_uid="1.2.826.0.1.3680043.8.498.77")
    for k, p in enumerate(paths):
        ds = pydicom.dcmread(p)
        ds.InstanceNumber = len(paths) - k
        ds.save_as(p)
    _write_xml(root / "calcium_xml" / "2.xml", {
        # ImageIndex 0 is the bottom slice (z 10 mm) in position order, the top one (instance 1) in instance order
        0: [_roi("Left Circumflex Artery", [(3, 3), (5, 3), (5, 5), (3, 5)], 10.0, area=0.0225, max_hu=300),
            # drawn on the middle slice (z 13 mm) but listed under ImageIndex 0: wrong in any order
            _roi("Left Circumflex Artery", [(2, 8), (3, 8), (3, 9), (2, 9)], 13.0, area=0.01, max_hu=240)],
        1: [_roi("Left Anterior Descending Artery", [(8, 1), (9, 1), (9, 2), (8, 2)], 0.0, area=0.01, max_hu=220,
                 mm=False, center=False)],
        # an OsiriX brush ROI's Area counts its mask's pixels, not the outline's area: recorded, not checked
        2: [_roi("Right Coronary Artery", [(7, 7), (8, 7), (8, 8), (7, 8)], 16.0, area=0.0025, max_hu=260)],
    })
    return hu, lab


def _patient_3(root: Path):
    """No calcium_xml: no calcium."""
    hu = np.full((3, 12, 12), -100.0)
    hu[1, 2:5, 2:5] = 600  # bone, say: not coronary calcium
    write_series(root / "patient" / "3" / "CS_3.0", hu, spacing=SP, origin=(0.0, Y0, X0),
                 series_uid="1.2.826.0.1.3680043.8.498.78")
    return hu, np.zeros(hu.shape, np.uint8)


@pytest.fixture(scope="module")
def coca(tmp_path_factory):
    root = tmp_path_factory.mktemp("coca") / "Gated_release_final"
    cases = {"coca_1": _patient_1(root), "coca_2": _patient_2(root), "coca_3": _patient_3(root)}
    out = root.parent / "out"
    results = convert_coca(root.parent, out)  # the folder holding Gated_release_final/ is accepted too
    return root, out, cases, results


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _array(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def test_coca_masks_and_scores_exact(coca):
    _, out, cases, results = coca
    assert [(r["id"], r["status"]) for r in results] == [("coca_1", "converted"), ("coca_2", "converted"),
                                                         ("coca_3", "converted")]
    truth = {r["id"]: r for r in _read_csv(out / "truth.csv")}
    for case_id, (hu, lab) in cases.items():
        img, labels = _array(out / "images" / f"{case_id}.nii.gz"), _array(out / "labels" / f"{case_id}.nii.gz")
        assert img.dtype == np.int16 and labels.dtype == np.uint8
        assert np.array_equal(img, hu.astype(np.int16))
        assert np.array_equal(labels, lab), case_id
        want = agatston.score(hu, SP, lab)
        row = truth[case_id]
        assert float(row["agatston"]) == pytest.approx(want.agatston, abs=1e-5) and row["category"] == want.category
        for k, name in agatston.ARTERY_NAMES.items():
            got = float(row[name])
            assert got == pytest.approx(want.by_label[k].agatston if k in want.by_label else 0.0, abs=1e-5)
    assert float(truth["coca_1"]["LAD"]) > 0 and float(truth["coca_1"]["RCA"]) > 0
    assert truth["coca_3"]["category"] == "A" and "no coronary calcium assumed" in truth["coca_3"]["labels_note"]
    assert truth["coca_1"]["labels_note"] == "2 of 7 ROI(s) left out (see report.csv)"
    assert truth["coca_2"]["labels_note"] == ""


def test_coca_report_rows(coca):
    _, out, _, _ = coca
    rows = _read_csv(out / "report.csv")
    p1 = {r["roi"]: r for r in rows if r["id"] == "coca_1"}
    assert p1[""]["status"] == "ok" and "2 left out" in p1[""]["message"]
    assert p1["0.0"]["status"] == "error" and "matches no slice" in p1["0.0"]["message"]  # z = 100 mm
    assert p1["0.1"]["status"] == "error" and "unknown vessel name 'Aorta'" in p1["0.1"]["message"]
    lad = p1["1.0"]
    assert (lad["status"], lad["vessel"], lad["slice"], lad["n_voxels"]) == ("ok", "LAD", "1", "16")
    assert float(lad["area_cm2"]) == pytest.approx(0.04) and float(lad["max_hu"]) == 450
    assert (p1["1.1"]["status"], p1["1.1"]["vessel"], p1["1.1"]["n_points"], p1["1.1"]["n_voxels"]) == (
        "ok", "LM", "1", "1")
    tri = p1["2.0"]
    assert (tri["status"], tri["n_voxels"]) == ("ok", "6")
    assert float(tri["area_cm2"]) == pytest.approx(7 * 0.0025) and float(tri["polygon_area_cm2"]) == pytest.approx(
        0.0098)
    assert (p1["2.1"]["status"], p1["2.1"]["n_points"], p1["2.1"]["n_voxels"]) == ("ok", "2", "3")
    bad = p1["3.0"]
    assert bad["status"] == "mismatch" and bad["n_voxels"] == "16"  # kept in the mask
    for part in ("differs from Max", "Point_px and Point_mm differ by 2.00 pixel"):
        assert part in bad["message"]
    # Area (1.0 cm2 for 16 pixels of 0.0025) is recorded, not checked: OsiriX's Area of a brush ROI counts
    # its mask's pixels, which the exported outline does not give back
    assert "Area" not in bad["message"] and float(bad["area_cm2_annotation"]) == 1.0
    assert float(bad["area_cm2"]) == pytest.approx(0.04)
    assert "ImageIndex counted in position order (6 of 6 ROI(s) with a z agree)" in p1[""]["message"]
    assert all(r["slice_from"] == "z (Point_mm)" for k, r in p1.items() if k and r["status"] != "error")


def test_coca_image_index_in_position_order_is_no_mismatch(coca):
    _, out, _, results = coca
    p2 = {r["roi"]: r for r in _read_csv(out / "report.csv") if r["id"] == "coca_2"}
    lcx, wrong, lad, rca = p2["0.0"], p2["0.1"], p2["1.0"], p2["2.0"]
    # ImageIndex counted in position order while the instance order runs the other way: no mismatch
    assert (lcx["status"], lcx["slice"], lcx["instance_number"], lcx["message"]) == ("ok", "0", "3", "")
    assert (rca["status"], rca["slice"], rca["instance_number"], rca["message"]) == ("ok", "2", "1", "")
    assert float(rca["area_cm2_annotation"]) == 0.0025 and float(rca["polygon_area_cm2"]) == 0.0025
    # an ImageIndex that names another slice than the z, in the order the export counts in, is still flagged
    assert (wrong["status"], wrong["slice"], wrong["n_voxels"]) == ("mismatch", "1", "4")  # the z is used
    assert wrong["message"] == ("ImageIndex 0 is slice 0 in position order (the order this export counts "
                                "ImageIndex in) but the z gives slice 1; z used")
    # without a z, ImageIndex gives the slice, in that order
    assert (lad["status"], lad["slice"], lad["slice_from"]) == ("ok", "1", "ImageIndex")
    assert "slice from ImageIndex (position order)" in lad["message"]
    assert "ImageIndex counted in position order (2 of 3 ROI(s) with a z agree)" in p2[""]["message"]
    (res,) = [r for r in results if r["id"] == "coca_2"]
    assert (res["n_ok"], res["n_mismatch"], res["n_error"]) == (3, 1, 0)


def test_coca_image_index_order_follows_the_export():
    from cacnet.datasets.coca import _index_order, _SeriesGeometry

    # five slices; instance numbers run opposite to position (file slice k has instance 5 - k)
    geo = _SeriesGeometry(z=np.arange(5) * 3.0, step=3.0, canonical=list(range(5)), instance=[5, 4, 3, 2, 1],
                          by_index=[4, 3, 2, 1, 0], position_order=[0, 1, 2, 3, 4], spacing_xy=(0.5, 0.5))
    assert _index_order(geo, [(0, 0), (3, 3), (4, 4)])[::2] == ("position order", 3)
    assert _index_order(geo, [(0, 4), (3, 1), (2, 2)])[::2] == ("instance order", 3)  # a viewer in instance order
    assert _index_order(geo, [(0, 0), (3, 3), (1, 2)])[::2] == ("position order", 2)  # one wrong index
    assert _index_order(geo, [])[::2] == ("position order", 0)  # no z: position order, as in COCA
    assert _index_order(geo, [(2, 2)])[::2] == ("position order", 1)  # a tie: position order


def test_coca_rerun_skips_finished_cases(coca, tmp_path):
    root, _, cases, _ = coca
    out = tmp_path / "out"
    first = convert_coca(root, out)
    stamps = {p: p.stat().st_mtime_ns for p in (out / "labels").iterdir()}
    report, truth = _read_csv(out / "report.csv"), _read_csv(out / "truth.csv")
    seen = []
    second = convert_coca(root, out, on_start=seen.append, on_case=lambda r: seen.append(r["id"]))
    assert seen == [3, "coca_1", "coca_2", "coca_3"]
    assert [r["status"] for r in second] == ["skipped"] * 3
    assert [r["agatston"] for r in second] == [r["agatston"] for r in first]
    assert {p: p.stat().st_mtime_ns for p in (out / "labels").iterdir()} == stamps
    assert _read_csv(out / "report.csv") == report and _read_csv(out / "truth.csv") == truth
    # without truth.csv the scores come from the files again (and the notes from report.csv)
    (out / "truth.csv").unlink()
    convert_coca(root, out)
    assert _read_csv(out / "truth.csv") == truth
    # a case whose label is missing is converted again
    (out / "labels" / "coca_2.nii.gz").unlink()
    third = convert_coca(root, out)
    assert [r["status"] for r in third] == ["skipped", "converted", "skipped"]
    assert not list(out.rglob(".*tmp*"))


def _broken_coca(root: Path, good: Path) -> None:
    shutil.copytree(good / "patient" / "1", root / "patient" / "1")
    (root / "calcium_xml").mkdir()
    shutil.copy(good / "calcium_xml" / "1.xml", root / "calcium_xml" / "1.xml")
    (root / "patient" / "4" / "series").mkdir(parents=True)
    (root / "patient" / "4" / "series" / "IM0001.dcm").write_bytes(b"not a DICOM file")
    _write_xml(root / "calcium_xml" / "4.xml", {})
    _write_xml(root / "calcium_xml" / "5.xml", {})  # annotations without images


def test_coca_bad_cases_are_skipped_and_reported(coca, tmp_path):
    root, _, _, _ = coca
    src = tmp_path / "src"
    _broken_coca(src, root)
    out = tmp_path / "out"
    results = {r["id"]: r for r in convert_coca(src, out)}
    assert {k: r["status"] for k, r in results.items()} == {"coca_1": "converted", "coca_4": "error",
                                                            "coca_5": "error"}
    assert "no DICOM files" in results["coca_4"]["message"]
    assert "no patient/5/" in results["coca_5"]["message"]
    rows = {r["id"]: r for r in _read_csv(out / "report.csv") if r["roi"] == ""}
    assert rows["coca_4"]["status"] == "error" and rows["coca_5"]["status"] == "error"
    assert [r["id"] for r in _read_csv(out / "truth.csv")] == ["coca_1"]
    assert (out / "labels" / "coca_1.nii.gz").exists() and not (out / "images" / "coca_4.nii.gz").exists()


def test_coca_layout_error(tmp_path):
    (tmp_path / "patient").mkdir()
    with pytest.raises(DatasetLayoutError, match="calcium_xml"):
        convert_coca(tmp_path, tmp_path / "out")


def test_coca_missing_xml_skip(coca, tmp_path):
    root, _, _, _ = coca
    src = tmp_path / "src"
    shutil.copytree(root / "patient" / "3", src / "patient" / "3")
    (src / "calcium_xml").mkdir()
    (res,) = convert_coca(src, tmp_path / "out", missing_xml="skip")
    assert res["status"] == "ignored" and not (tmp_path / "out" / "images").exists()


# ---------------------------------------------------------------------------------------------------------------
# orCaScore


def _orcascore_arrays():
    hu = np.full((5, 12, 12), -100, np.int16)
    ref = np.zeros(hu.shape, np.uint8)
    hu[1, 2:4, 2:4] = 300
    hu[1, 2, 2] = 120  # labelled but below 130 HU
    ref[1, 2:4, 2:4] = 1
    hu[2, 6:8, 6:9] = 350
    ref[2, 6:8, 6:9] = 2
    hu[3, 9:11, 2:4] = 400
    ref[3, 9:11, 2:4] = 3
    hu[3, 11, 2] = 410  # touches the RCA lesion, not labelled
    want = np.zeros(hu.shape, np.uint8)
    want[ref == 1] = 2
    want[1, 2, 2] = 0
    want[ref == 2] = 3
    want[ref == 3] = 4
    return hu, ref, want


def _write_mhd(path: Path, array: np.ndarray, direction=(1, 0, 0, 0, 1, 0, 0, 0, 1)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = sitk.GetImageFromArray(array)
    img.SetSpacing((0.7, 0.7, 3.0))
    img.SetOrigin((1.0, 2.0, 3.0))
    img.SetDirection(direction)
    sitk.WriteImage(img, str(path))


def _orcascore_src(src: Path) -> None:
    hu, ref, _ = _orcascore_arrays()
    _write_mhd(src / "Images" / "TRV1P1CTI.mhd", hu)
    _write_mhd(src / "Reference standard" / "TRV1P1CTI.mhd", ref)
    _write_mhd(src / "Images" / "TRV1P1CTAI.mhd", hu)  # the CTA: no reference
    flip = (-1, 0, 0, 0, 1, 0, 0, 0, 1)
    _write_mhd(src / "p2" / "TRV1P2CTI.mhd", hu[:, ::-1].copy(), flip)
    _write_mhd(src / "p2" / "TRV1P2CTI_label.mhd", ref[:, ::-1].copy(), flip)


def test_orcascore_conversion(tmp_path):
    src, out = tmp_path / "orcascore", tmp_path / "out"
    _orcascore_src(src)
    results = {r["id"]: r for r in convert_orcascore(src, out)}
    assert {k: r["status"] for k, r in results.items()} == {"TRV1P1CTAI": "ignored", "TRV1P1CTI": "converted",
                                                            "TRV1P2CTI": "converted"}
    hu, ref, want = _orcascore_arrays()
    assert np.array_equal(_array(out / "images" / "TRV1P1CTI.nii.gz"), hu)
    assert np.array_equal(_array(out / "labels" / "TRV1P1CTI.nii.gz"), want)
    # the flipped case: same lesions on its own (canonical) grid, found by their HU
    img, lab = _array(out / "images" / "TRV1P2CTI.nii.gz"), _array(out / "labels" / "TRV1P2CTI.nii.gz")
    for value, label in ((300, 2), (350, 3), (400, 4)):
        assert np.array_equal(lab == label, img == value)
    assert not lab[np.isin(img, (120, 410))].any()
    truth = {r["id"]: r for r in _read_csv(out / "truth.csv")}
    score = agatston.score(hu, (3.0, 0.7, 0.7), want)
    for case_id in ("TRV1P1CTI", "TRV1P2CTI"):
        row = truth[case_id]
        assert float(row["agatston"]) == pytest.approx(score.agatston, abs=1e-5)
        assert float(row["LM"]) == 0.0 and "LM merged into LAD" in row["labels_note"]
        for k, name in ((2, "LAD"), (3, "LCX"), (4, "RCA")):
            assert float(row[name]) == pytest.approx(score.by_label[k].agatston, abs=1e-5)
    assert json.loads((out / "labels_meta.json").read_text()) == {
        "TRV1P1CTI": {"lm_merged_into_lad": True}, "TRV1P2CTI": {"lm_merged_into_lad": True}}
    rows = [r for r in _read_csv(out / "report.csv") if r["id"] == "TRV1P1CTI" and r["roi"]]
    by_vessel = {r["vessel"]: r for r in rows}
    assert set(by_vessel) == {"LAD", "LCX", "RCA"}
    assert by_vessel["LAD"]["status"] == "mismatch" and "1 of 4 labelled voxel(s) below 130 HU" in by_vessel[
        "LAD"]["message"]
    assert by_vessel["LCX"]["status"] == "ok" and by_vessel["LCX"]["n_voxels"] == "6"
    assert by_vessel["RCA"]["status"] == "mismatch" and "1 more voxel(s)" in by_vessel["RCA"]["message"]
    assert by_vessel["RCA"]["slice"] == "3" and by_vessel["RCA"]["max_hu"] == "400"


def test_orcascore_layout_error_lists_what_was_found(tmp_path):
    hu, _, _ = _orcascore_arrays()
    _write_mhd(tmp_path / "src" / "TRV1P1CTI.mhd", hu)
    with pytest.raises(DatasetLayoutError, match=r"TRV1P1CTI\.mhd") as info:
        convert_orcascore(tmp_path / "src", tmp_path / "out")
    assert "_label.mhd" in str(info.value) and "reference" in str(info.value)


# ---------------------------------------------------------------------------------------------------------------
# CLI


def _cli(*args):
    return runner.invoke(app, ["dataset", *[str(a) for a in args]])


def test_cli_exit_codes(coca, tmp_path):
    root, _, _, _ = coca
    r = _cli("coca", root, tmp_path / "ok")
    assert r.exit_code == 0, r.output
    assert "3 converted" in r.output
    src = tmp_path / "broken"
    _broken_coca(src, root)
    r = _cli("coca", src, tmp_path / "partial")
    assert r.exit_code == 4, r.output
    assert "coca_4" in r.output and "coca_5" in r.output
    r = _cli("coca", tmp_path / "nothing_here", tmp_path / "x")
    assert r.exit_code == 3 and "patient/<id>/" in r.output
    r = _cli("coca", root, tmp_path / "y", "--missing-xml", "maybe")
    assert r.exit_code == 2
    (tmp_path / "empty").mkdir()
    r = _cli("orcascore", tmp_path / "empty", tmp_path / "z")
    assert r.exit_code == 3 and "no orCaScore image with a reference" in r.output


def test_cli_orcascore_bad_reference_partial(tmp_path):
    src = tmp_path / "src"
    _orcascore_src(src)
    hu, ref, _ = _orcascore_arrays()
    _write_mhd(src / "p3" / "TRV1P3CTI.mhd", hu)
    _write_mhd(src / "p3" / "TRV1P3CTI-label.mhd", ref[:, :10].copy())  # not on the image's grid
    r = _cli("orcascore", src, tmp_path / "out")
    assert r.exit_code == 4, r.output
    assert "TRV1P3CTI" in r.output and "differs from the image" in r.output
    assert {row["id"] for row in _read_csv(tmp_path / "out" / "truth.csv")} == {"TRV1P1CTI", "TRV1P2CTI"}
