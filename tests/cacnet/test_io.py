"""cacnet.io: reading scans, the bad-input corpus, orientation round trips, warnings."""

import zipfile

import numpy as np
import pytest
import SimpleITK as sitk

from cacnet.errors import InvalidScanError, SeriesSelectionError
from cacnet.io import read_scan, scan_id, to_source_grid
from cacnet.phantom import ORIENTATIONS, generate_phantom, oriented_image

from .dicom_helpers import write_series


def ct_like(shape=(6, 32, 40), seed=0):
    rng = np.random.default_rng(seed)
    hu = np.full(shape, -1000.0)
    hu[:, 4:-4, 4:-4] = rng.normal(40, 10, size=(shape[0], shape[1] - 8, shape[2] - 8)).round()
    hu[:, 10:12, 10:12] = 400
    return hu


@pytest.fixture(scope="module")
def small_case():
    return generate_phantom(5, category="C", size=96)


def test_scan_id():
    assert scan_id("a/case.nii.gz") == "case" and scan_id("b/x.nrrd") == "x" and scan_id("c/folder") == "folder"


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha", ".mhd"])
def test_reads_every_file_format(tmp_path, suffix):
    hu = ct_like()
    img = sitk.GetImageFromArray(hu.astype(np.int16))
    img.SetSpacing((0.5, 0.5, 3.0))
    sitk.WriteImage(img, str(tmp_path / f"scan{suffix}"))
    scan = read_scan(tmp_path / f"scan{suffix}")
    assert np.array_equal(scan.hu, hu) and scan.spacing == (3.0, 0.5, 0.5) and scan.id == "scan"


def test_reads_dicom_folder_zip_and_jpeg2000(tmp_path):
    hu = ct_like()
    write_series(tmp_path / "plain", hu)
    write_series(tmp_path / "j2k", hu, compressor="JPEG2000")
    with zipfile.ZipFile(tmp_path / "series.zip", "w") as zf:
        for f in (tmp_path / "plain").iterdir():
            zf.write(f, f"inner/{f.name}")
    for path in (tmp_path / "plain", tmp_path / "j2k", tmp_path / "series.zip"):
        scan = read_scan(path)
        assert np.array_equal(scan.hu, hu), path
        assert scan.spacing == (3.0, 0.5, 0.5)
        assert scan.meta["kvp"] == 120 and scan.meta["slice_thickness_mm"] == 3.0
    assert read_scan(tmp_path / "series.zip").id == "series"


def test_rescale_applied_per_slice_and_slices_sorted(tmp_path):
    hu = ct_like()
    write_series(tmp_path / "s", hu, intercept=[-1024, -2048, -1024, -1000, -1024, -3000])
    for i, f in enumerate(sorted((tmp_path / "s").iterdir())):  # shuffle file names
        f.rename(tmp_path / "s" / f"x{(i * 7) % 6}_{i}.dcm")
    assert np.array_equal(read_scan(tmp_path / "s").hu, hu)


def test_slope_two(tmp_path):
    hu = ct_like() // 2 * 2
    write_series(tmp_path / "s", hu, intercept=-2048, slope=2.0)
    assert np.array_equal(read_scan(tmp_path / "s").hu, hu)


def _nifti(path, arr, spacing=(0.5, 0.5, 3.0)):
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    sitk.WriteImage(img, str(path))
    return path


BAD = {
    "truncated file": (lambda d: _truncate(_nifti(d / "t.nii.gz", ct_like().astype(np.int16))), "truncated"),
    "truncated nii": (lambda d: _truncate(_nifti(d / "t.nii", ct_like().astype(np.int16))), "truncated"),
    "not an image": (lambda d: _text(d / "notes.mha"), "cannot be read as an image"),
    "not gzip": (lambda d: _text(d / "notes.nii.gz"), "truncated or corrupt"),
    "2D": (lambda d: _nifti(d / "flat.nii.gz", ct_like()[0].astype(np.int16), (0.5, 0.5)), "is 2D"),
    "4D": (lambda d: _four_d(d / "four.nii.gz"), "is 4D"),
    "empty folder": (lambda d: _mkdir(d / "empty"), "no DICOM files"),
    "missing": (lambda d: d / "nothing_here.nii.gz", "no such file"),
    "two series": (lambda d: _two_series(d / "two"), "2 CT series found; choose one with --series"),
    "missing slice": (lambda d: _series(d / "gap", drop=(3,)), "about 1 missing slice"),
    "tilted series": (lambda d: _series(d / "tilt", tilt=12.0), "gantry tilt"),
    "drifting positions": (lambda d: _series(d / "drift", lateral_shift=1.0), "gantry tilt"),
    "MR modality": (lambda d: _series(d / "mr", modality="MR"), "modality MR"),
    "localizer": (lambda d: _series(d / "scout", image_type="ORIGINAL\\PRIMARY\\LOCALIZER"), "localizer"),
    "4D DICOM": (lambda d: _series(d / "phases", duplicate_positions=True), "share a position"),
    "NaNs": (lambda d: _nifti(d / "nan.nii.gz", np.where(ct_like() > 300, np.nan, ct_like()).astype(np.float32)),
             "NaN"),
    "NaNs in mha": (lambda d: _nifti(d / "nan.mha", np.where(ct_like() > 300, np.nan, ct_like()).astype(np.float32)),
                    "NaN"),
    "zero spacing": (lambda d: _zero_spacing(d / "zero"), "spacing"),
}


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    return path


def _text(path):
    path.write_text("this is not an image")
    return path


def _mkdir(path):
    path.mkdir()
    return path


def _four_d(path):
    arr = np.stack([ct_like(), ct_like(seed=1)]).astype(np.int16)
    sitk.WriteImage(sitk.GetImageFromArray(arr, isVector=False), str(path))
    return path


def _series(path, **kw):
    write_series(path, ct_like(), **kw)
    return path


def _two_series(path):
    write_series(path, ct_like(), series_uid="1.2.3.4.1", description="Calcium 3.0")
    write_series(path / "b", ct_like(seed=2), series_uid="1.2.3.4.2", description="Calcium 1.5")
    for f in (path / "b").iterdir():
        f.rename(path / f"b_{f.name}")
    (path / "b").rmdir()
    return path


def _zero_spacing(path):
    _nifti(path.with_suffix(".mha"), ct_like().astype(np.int16))
    text = path.with_suffix(".mha").read_bytes()
    head, _, body = text.partition(b"ElementDataFile = LOCAL\n")
    head = b"\n".join(ln if not ln.startswith(b"ElementSpacing") else b"ElementSpacing = 0.5 0 3"
                       for ln in head.split(b"\n"))
    path.with_suffix(".mha").write_bytes(head + b"ElementDataFile = LOCAL\n" + body)
    return path.with_suffix(".mha")


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_gives_clear_error(tmp_path, case):
    make, message = BAD[case]
    path = make(tmp_path)
    with pytest.raises(InvalidScanError, match=message) as info:
        read_scan(path)
    assert str(path) in str(info.value)  # the message names the file


def test_series_selection(tmp_path):
    path = _two_series(tmp_path / "two")
    with pytest.raises(SeriesSelectionError) as info:
        read_scan(path)
    assert "1.2.3.4.1" in str(info.value) and "1.2.3.4.2" in str(info.value) and "6 slice(s)" in str(info.value)
    scan = read_scan(path, series="1.2.3.4.2")
    assert np.array_equal(scan.hu, ct_like(seed=2))
    with pytest.raises(SeriesSelectionError, match="no series with UID 9.9"):
        read_scan(path, series="9.9")


@pytest.mark.parametrize("orientation", list(ORIENTATIONS))
def test_orientation_round_trip(tmp_path, small_case, orientation):
    src = oriented_image(small_case.hu, small_case, orientation)
    sitk.WriteImage(src, str(tmp_path / "s.nii.gz"))
    scan = read_scan(tmp_path / "s.nii.gz")
    assert np.array_equal(scan.hu, small_case.hu)  # canonical whatever the file order
    assert scan.spacing == pytest.approx(small_case.spacing)
    back = to_source_grid(small_case.labels, scan)
    expected = oriented_image(small_case.labels, small_case, orientation)
    assert back.GetSize() == src.GetSize()
    assert back.GetSpacing() == pytest.approx(src.GetSpacing())
    assert back.GetOrigin() == pytest.approx(src.GetOrigin(), abs=1e-3)
    assert back.GetDirection() == pytest.approx(src.GetDirection())
    assert np.array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(expected))


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"kvp": 100}, "100 kVp, not 120"),
        ({"thickness": 1.0, "spacing": (1.0, 0.5, 0.5)}, "slice thickness is 1 mm"),
    ],
)
def test_acquisition_warnings(tmp_path, kw, message):
    write_series(tmp_path / "s", ct_like(), **kw)
    assert any(message in w for w in read_scan(tmp_path / "s").warnings)


def test_missing_rescale_and_contrast_warnings(tmp_path):
    shifted = ct_like() + 1024  # raw values without the intercept
    _nifti(tmp_path / "raw.nii.gz", shifted.astype(np.int16))
    assert any("rescale intercept missing" in w for w in read_scan(tmp_path / "raw.nii.gz").warnings)
    contrast = ct_like()
    contrast[:, 6:-6, 6:-6] = 350  # blood pool full of contrast
    _nifti(tmp_path / "cta.nii.gz", contrast.astype(np.int16))
    assert any("contrast-enhanced" in w for w in read_scan(tmp_path / "cta.nii.gz").warnings)
    assert read_scan(_nifti(tmp_path / "ok.nii.gz", ct_like().astype(np.int16))).warnings == []


def test_size_one_axes_are_dropped(tmp_path):
    arr = ct_like().astype(np.int16)[None]  # a 4D file holding one volume
    img = sitk.GetImageFromArray(arr, isVector=False)
    sitk.WriteImage(img, str(tmp_path / "one.nii.gz"))
    assert np.array_equal(read_scan(tmp_path / "one.nii.gz").hu, ct_like())
