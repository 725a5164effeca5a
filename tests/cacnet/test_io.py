"""cacnet.io: reading scans, the bad-input corpus, orientation round trips, warnings."""

import itertools
import zipfile

import numpy as np
import pytest
import SimpleITK as sitk

from cacnet.errors import InvalidScanError, SeriesSelectionError
from cacnet.io import canonical_to_source_index, read_scan, scan_id, to_source_grid
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


def test_hu_outlives_its_scan(tmp_path):
    """``hu`` is a view of the image's pixels (no copy); kept after the Scan is dropped, it must keep the image
    alive: a bare SimpleITK array view read freed memory then (garbage HU, or a crash)."""
    import gc

    hu = ct_like(shape=(40, 64, 64))
    img = sitk.GetImageFromArray(hu.astype(np.int16))
    img.SetSpacing((0.5, 0.5, 3.0))
    sitk.WriteImage(img, str(tmp_path / "scan.nii.gz"))
    kept = read_scan(tmp_path / "scan.nii.gz").hu  # the Scan itself is dropped at once
    gc.collect()
    churn = [sitk.Image(64, 64, 40, sitk.sitkFloat32) + 9999.0 for _ in range(20)]  # reuse freed memory
    assert len(churn) == 20 and not kept.flags.writeable and not kept.flags.owndata
    np.testing.assert_array_equal(kept, hu)


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
    "zero spacing": (lambda d: _zero_spacing(d / "zero"), "MetaImage ElementSpacing is '0.5 0 3'"),
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


def test_missing_rescale_warning(tmp_path):
    shifted = ct_like() + 1024  # raw values without the intercept
    _nifti(tmp_path / "raw.nii.gz", shifted.astype(np.int16))
    assert any("rescale intercept missing" in w for w in read_scan(tmp_path / "raw.nii.gz").warnings)
    # contrast is judged from the heart by cacnet.triage (tests/cacnet/test_triage.py), not by the reader
    contrast = ct_like()
    contrast[:, 6:-6, 6:-6] = 350
    _nifti(tmp_path / "cta.nii.gz", contrast.astype(np.int16))
    assert not any("contrast" in w for w in read_scan(tmp_path / "cta.nii.gz").warnings)
    assert read_scan(_nifti(tmp_path / "ok.nii.gz", ct_like().astype(np.int16))).warnings == []


def test_unrescaled_warning_names_the_levels(tmp_path):
    raw = (ct_like() + 1024).astype(np.uint16)  # stored values, HU + 1024: air at 24, nothing below 0
    warnings = read_scan(_nifti(tmp_path / "raw.nii.gz", raw)).warnings
    assert warnings == ["HU look un-rescaled: minimum 24, air at ~24 (1st percentile), nothing below -200 HU where a "
                        "CT in HU has air at about -1000 and lung at -900 to -500 (rescale intercept missing?). Apply "
                        "the RescaleIntercept (-1024 for most scanners) and RescaleSlope, and score again."]


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_vector_image_is_refused(tmp_path, suffix):
    """ITK reads a vector image as float by mixing its components: a 3-component file used to be scored."""
    hu = ct_like().astype(np.int16)
    img = sitk.GetImageFromArray(np.stack([hu, hu, hu], axis=-1), isVector=True)
    img.SetSpacing((0.5, 0.5, 3.0))
    path = tmp_path / f"vector{suffix}"
    sitk.WriteImage(img, str(path))
    with pytest.raises(InvalidScanError) as err:
        read_scan(path)
    assert str(err.value).startswith(f"{path}: has 3 components per voxel") and "one grey level" in str(err.value)


@pytest.mark.parametrize("shape, spacing_xyz, message", [
    ((6, 32, 40), (0.5, 0.5, 300.0), "slice increment is 300 mm (the spacing along patient z), outside 0.1-20 mm"),
    ((6, 32, 40), (0.5, 0.5, 0.003), "slice increment is 0.003 mm (the spacing along patient z), outside 0.1-20 mm"),
    ((6, 32, 40), (0.003, 0.003, 3.0), "pixel size is 0.003 mm (file axis 0), outside 0.05-5 mm"),
    ((6, 32, 40), (6.0, 6.0, 3.0), "pixel size is 6 mm (file axis 0), outside 0.05-5 mm"),
    ((101, 8, 8), (0.5, 0.5, 20.0), "the scan is 2020 mm long (101 slices x 20 mm), more than 2000 mm"),
    ((3, 8, 520), (2.0, 0.5, 3.0), "the field of view is 1040 mm wide (520 pixels x 2 mm), more than 1000 mm"),
])
def test_impossible_geometry_is_refused(tmp_path, shape, spacing_xyz, message):
    """Geometry no CT of a patient has: the header is wrong, and the reader refuses it (no --force)."""
    path = _nifti(tmp_path / "odd.nii.gz", np.full(shape, -1000, np.int16), spacing=spacing_xyz)
    with pytest.raises(InvalidScanError) as err:
        read_scan(path)
    assert type(err.value) is InvalidScanError and str(err.value).startswith(f"{path}: {message}")


def test_slice_increment_is_taken_along_patient_z(tmp_path):
    """The increment bound applies to the file axis that runs along patient z, whichever it is."""
    img = sitk.GetImageFromArray(np.full((40, 32, 6), -1000, np.int16))  # file axes: 6 (x), 32, 40
    img.SetSpacing((300.0, 0.5, 0.5))  # file axis 0 runs along patient z (below): 300 mm slices
    img.SetDirection((0, 0, 1, 0, 1, 0, 1, 0, 0))
    sitk.WriteImage(img, str(tmp_path / "zfirst.nii.gz"))
    with pytest.raises(InvalidScanError, match="slice increment is 300 mm"):
        read_scan(tmp_path / "zfirst.nii.gz")
    img.SetSpacing((3.0, 0.5, 0.5))
    sitk.WriteImage(img, str(tmp_path / "zfirst_ok.nii.gz"))
    assert read_scan(tmp_path / "zfirst_ok.nii.gz").spacing == (3.0, 0.5, 0.5)


def test_size_one_axes_are_dropped(tmp_path):
    arr = ct_like().astype(np.int16)[None]  # a 4D file holding one volume
    img = sitk.GetImageFromArray(arr, isVector=False)
    sitk.WriteImage(img, str(tmp_path / "one.nii.gz"))
    assert np.array_equal(read_scan(tmp_path / "one.nii.gz").hu, ct_like())


# --- spacing must come from the file's own metadata (ITK fills in 1 mm) ---


def _edit_slices(folder, edit):
    import pydicom

    for f in sorted(folder.iterdir()):
        ds = pydicom.dcmread(f)
        edit(ds)
        ds.save_as(f)
    return folder


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda ds: delattr(ds, "PixelSpacing"), r"no PixelSpacing \(0028,0030\) nor ImagerPixelSpacing"),
        (lambda ds: setattr(ds, "PixelSpacing", [0, 0]), r"PixelSpacing \(0028,0030\) of slice .* is '0.0\\0.0'"),
        (lambda ds: setattr(ds, "PixelSpacing", [0.5, -0.5]), "not two positive numbers"),
    ],
    ids=["deleted", "zero", "negative"],
)
def test_dicom_pixel_spacing_missing_or_zero_is_an_error(tmp_path, edit, message):
    folder = _edit_slices(_series(tmp_path / "s"), edit)
    with pytest.raises(InvalidScanError, match=message) as info:
        read_scan(folder)
    assert str(folder) in str(info.value) and "does not say how large a pixel is" in str(info.value)


def test_dicom_imager_pixel_spacing_only_where_pixel_spacing_is_absent(tmp_path):
    def imager_only(ds):
        del ds.PixelSpacing
        ds.ImagerPixelSpacing = [0.7, 0.7]

    scan = read_scan(_edit_slices(_series(tmp_path / "imager"), imager_only))
    assert scan.spacing == pytest.approx((3.0, 0.7, 0.7))  # ITK alone reads 1 mm here
    assert np.array_equal(scan.hu, ct_like())
    both = _edit_slices(_series(tmp_path / "both"), lambda ds: setattr(ds, "ImagerPixelSpacing", [0.7, 0.7]))
    assert read_scan(both).spacing == pytest.approx((3.0, 0.5, 0.5))


def _patch_nifti(path, *, pixdim=None, sform_code=None, srow_column_zero=None):
    """Rewrite header fields of an uncompressed or gzipped NIfTI-1 file in place."""
    import gzip
    import struct

    gz = path.name.endswith(".gz")
    data = bytearray(gzip.decompress(path.read_bytes()) if gz else path.read_bytes())
    for k, v in (pixdim or {}).items():
        data[76 + 4 * k : 80 + 4 * k] = struct.pack("<f", v)
    if sform_code is not None:
        data[254:256] = struct.pack("<h", sform_code)
    if srow_column_zero is not None:  # zero column c of srow_x/y/z
        for row in range(3):
            at = 280 + 16 * row + 4 * srow_column_zero
            data[at : at + 4] = struct.pack("<f", 0.0)
    path.write_bytes(gzip.compress(bytes(data)) if gz else bytes(data))
    return path


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
@pytest.mark.parametrize(
    "patch, message",
    [
        ({"pixdim": {3: 0.0}, "sform_code": 0}, r"NIfTI pixdim\[3\] \(slice spacing\) is 0; the file does not say "
                                                 r"how far apart the slices are\. Fix the header"),
        ({"pixdim": {1: float("nan")}, "sform_code": 0}, r"pixdim\[1\] \(column spacing\) is nan"),
        ({"pixdim": {2: -0.5}}, r"pixdim\[2\] \(row spacing\) is -0.5, negative"),
        ({"pixdim": {3: 0.0}, "srow_column_zero": 2}, r"sform .* gives voxel axis 3 \(slice spacing\) a length of 0"),
        ({"pixdim": {3: 2.0}}, r"pixdim\[3\] \(slice spacing\) is 2 mm but the sform gives 3 mm"),
    ],
    ids=["pixdim-zero", "pixdim-nan", "pixdim-negative", "sform-zero", "pixdim-vs-sform"],
)
def test_nifti_zero_or_missing_spacing_is_an_error(tmp_path, suffix, patch, message):
    path = _patch_nifti(_nifti(tmp_path / f"scan{suffix}", ct_like().astype(np.int16)), **patch)
    with pytest.raises(InvalidScanError, match=message) as info:
        read_scan(path)
    assert str(path) in str(info.value)


def test_nifti_sform_gives_the_spacing_where_pixdim_is_zero(tmp_path):
    path = _patch_nifti(_nifti(tmp_path / "scan.nii.gz", ct_like().astype(np.int16)), pixdim={3: 0.0})
    scan = read_scan(path)  # ITK alone reads pixdim: 1 mm
    assert scan.spacing == (3.0, 0.5, 0.5) and np.array_equal(scan.hu, ct_like())


def _mha_header(path, old, new):
    data = path.read_bytes()
    assert old in data
    path.write_bytes(data.replace(old, new, 1))
    return path


@pytest.mark.parametrize(
    "suffix, old, new, message",
    [
        (".mha", b"ElementSpacing = 0.5 0.5 3\n", b"", "MetaImage header has no ElementSpacing"),
        (".mha", b"ElementSpacing = 0.5 0.5 3", b"ElementSpacing = 0.5 0.5 nan", "ElementSpacing is '0.5 0.5 nan'"),
        (".nrrd", b"(0,0,3)", b"(0,0,0)", r"'space directions' vector \(0,0,0\) of axis 2 has no length"),
        (".nrrd", b"space directions: (0.5,0,0) (0,0.5,0) (0,0,3)\n", b"spacings: 0.5 0.5 0\n",
         "'spacings' of axis 2 is '0'"),
        (".nrrd", b"space directions: (0.5,0,0) (0,0.5,0) (0,0,3)\n", b"",
         "neither 'space directions' nor 'spacings'"),
    ],
    ids=["mha-missing", "mha-nan", "nrrd-zero-direction", "nrrd-zero-spacings", "nrrd-missing"],
)
def test_mha_and_nrrd_spacing_errors_name_the_field(tmp_path, suffix, old, new, message):
    path = _mha_header(_nifti(tmp_path / f"scan{suffix}", ct_like().astype(np.int16)), old, new)
    with pytest.raises(InvalidScanError, match=message) as info:
        read_scan(path)
    assert str(path) in str(info.value) and "how far apart the voxels are" in str(info.value)


# --- any axis order and flip of an axis-aligned grid (geometry rule) ---

_PERMS = [(perm, signs) for perm in itertools.permutations(range(3)) for signs in itertools.product((1, -1), repeat=3)]
_SP_XYZ = np.array([0.5, 0.6, 3.0])
_ORIGIN = np.array([-10.0, 20.0, 30.0])


def _stored(canonical_zyx, perm, signs):
    """``canonical_zyx`` (LPS identity grid) stored with file axis d along patient axis perm[d], sign signs[d].

    Returns the file's numpy array (k, j, i) and the SimpleITK image: the same physical content.
    """
    arr = np.transpose(canonical_zyx, [2 - perm[2], 2 - perm[1], 2 - perm[0]])
    origin, direction = _ORIGIN.copy(), np.zeros((3, 3))
    for d in range(3):
        axis = np.eye(3)[perm[d]]
        if signs[d] < 0:
            arr = np.flip(arr, axis=2 - d)
            origin += (canonical_zyx.shape[2 - perm[d]] - 1) * _SP_XYZ[perm[d]] * axis
        direction[:, d] = signs[d] * axis
    arr = np.ascontiguousarray(arr)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing([float(_SP_XYZ[p]) for p in perm])
    img.SetOrigin(origin.tolist())
    img.SetDirection(direction.ravel().tolist())
    return arr, img


@pytest.mark.parametrize("perm, signs", _PERMS, ids=[f"{p}{s}" for p, s in _PERMS])
def test_every_axis_permutation_and_flip_is_read_identically(tmp_path, perm, signs):
    canonical = ct_like((8, 12, 10), seed=3).astype(np.int16)
    canonical[3, 5:7, 6:9] = 500  # some calcium
    labels = np.zeros(canonical.shape, np.uint8)
    labels[3, 5:7, 6:9] = 2
    labels[6, 1, 2] = 4  # a lone voxel near a corner: any axis mix-up shows
    # NIfTI stores every signed permutation (qfac = -1 covers the left-handed ones), so both formats are tested
    for suffix in (".nii.gz", ".mha"):
        _, img = _stored(canonical, perm, signs)
        path = tmp_path / f"scan{suffix}"
        sitk.WriteImage(img, str(path))
        scan = read_scan(path)
        assert np.array_equal(scan.hu, canonical), suffix
        assert scan.spacing == pytest.approx(tuple(_SP_XYZ[::-1]))
        back = to_source_grid(labels, scan)
        expected, _ = _stored(labels, perm, signs)
        assert np.array_equal(sitk.GetArrayFromImage(back), expected)  # voxel for voxel on the file's own layout
        assert back.GetDirection() == pytest.approx(img.GetDirection())
        assert back.GetOrigin() == pytest.approx(img.GetOrigin())
        # the index helper agrees with to_source_grid, for every marked voxel
        for zyx in np.argwhere(labels == 4).tolist() + [[3, 5, 6]]:
            marked = np.zeros(canonical.shape, np.uint8)
            marked[tuple(zyx)] = 1
            k, j, i = np.argwhere(sitk.GetArrayFromImage(to_source_grid(marked, scan)))[0]
            assert canonical_to_source_index(scan, zyx) == (i, j, k)


def test_oblique_grid_is_rejected(tmp_path):
    img = sitk.GetImageFromArray(ct_like().astype(np.int16))
    a = np.deg2rad(5)
    img.SetDirection([np.cos(a), -np.sin(a), 0, np.sin(a), np.cos(a), 0, 0, 0, 1])
    sitk.WriteImage(img, str(tmp_path / "oblique.nii.gz"))
    with pytest.raises(InvalidScanError, match="oblique or tilted .* not a signed permutation"):
        read_scan(tmp_path / "oblique.nii.gz")


def test_sagittal_dicom_series_is_rejected_with_the_reason(tmp_path):
    folder = _edit_slices(_series(tmp_path / "sag"), lambda ds: setattr(ds, "ImageOrientationPatient",
                                                                        [0, 1, 0, 0, 0, -1]))
    with pytest.raises(InvalidScanError, match="not axial .* reconstruction, not an axial acquisition"):
        read_scan(folder)


@pytest.mark.parametrize("orientation", [[1, 0, 0, 0, 1, 0], [1, 0, 0, 0, -1, 0], [-1, 0, 0, 0, 1, 0]],
                         ids=["normal+z", "normal-z", "flipped-x"])
def test_dicom_slice_files_are_kept_per_canonical_slice(tmp_path, orientation):
    folder = _edit_slices(_series(tmp_path / "s"), lambda ds: setattr(ds, "ImageOrientationPatient", orientation))
    scan = read_scan(folder)
    # write_series puts instance k + 1 at z = k * 3 mm: canonical z runs from feet to head whatever the file order
    assert [s["instance_number"] for s in scan.slices] == list(range(1, 7))
    assert [s["sop_instance_uid"] for s in scan.slices] == [f"1.2.826.0.1.3680043.8.498.2.{k}" for k in range(1, 7)]
    assert "slices" not in scan.meta
    up = np.cross(orientation[:3], orientation[3:])[2] > 0  # files sorted along the normal: k runs up or down
    for z in range(6):
        assert canonical_to_source_index(scan, (z, 0, 0))[2] == (z if up else 5 - z)
    assert read_scan(_nifti(tmp_path / "n.nii.gz", ct_like().astype(np.int16))).slices == []


# --- gzipped DICOM slices ---


def _gzip_folder(src, dst):
    import gzip

    dst.mkdir()
    for f in sorted(src.iterdir()):
        (dst / f"{f.name}.gz").write_bytes(gzip.compress(f.read_bytes()))
    return dst


def test_folder_of_gzipped_dicom_is_one_scan(tmp_path):
    from cacnet.batch import expand_inputs

    plain = _series(tmp_path / "plain")
    gz = _gzip_folder(plain, tmp_path / "gz")
    (gz / "README.txt").write_text("notes next to the slices")
    scan, ref = read_scan(gz), read_scan(plain)
    assert np.array_equal(scan.hu, ref.hu) and scan.spacing == ref.spacing and scan.id == "gz"
    assert scan.slices == ref.slices and scan.meta["n_files"] == 6
    assert expand_inputs([gz]) == [gz]  # one DICOM scan, not a batch
    with zipfile.ZipFile(tmp_path / "gz.zip", "w") as zf:
        for f in gz.iterdir():
            zf.write(f, f"inner/{f.name}")
    assert np.array_equal(read_scan(tmp_path / "gz.zip").hu, ref.hu)


def test_gzipped_dicom_errors(tmp_path):
    plain = _series(tmp_path / "plain")
    gz = _gzip_folder(plain, tmp_path / "gz")
    single = gz / "slice_002.dcm.gz"
    with pytest.raises(InvalidScanError, match="one gzipped DICOM file, i.e. one slice, not a 3D scan") as info:
        read_scan(single)
    assert str(single) in str(info.value)
    mixed = _gzip_folder(plain, tmp_path / "mixed")
    (mixed / "slice_005.dcm.gz").unlink()
    (mixed / "slice_005.dcm").write_bytes((plain / "slice_005.dcm").read_bytes())
    with pytest.raises(InvalidScanError, match=r"both gzipped files \(5 \*\.gz\) and 1 uncompressed DICOM"):
        read_scan(mixed)
    broken = gz / "slice_001.dcm.gz"
    broken.write_bytes(broken.read_bytes()[:100])
    with pytest.raises(InvalidScanError, match=r"\(slice_001\.dcm\.gz\) is truncated or corrupt"):
        read_scan(gz)
    (tmp_path / "notes.txt.gz").write_bytes(__import__("gzip").compress(b"not an image"))
    with pytest.raises(InvalidScanError, match="neither a NIfTI"):
        read_scan(tmp_path / "notes.txt.gz")


def test_real_gzipped_dicom_is_read(tmp_path):
    """tests/data/qrm-canon-large-rep1: real .dcm.gz slices (two runs of slices with a gap between them)."""
    from pathlib import Path

    data = Path(__file__).resolve().parents[1] / "data" / "qrm-canon-large-rep1"
    with pytest.raises(InvalidScanError, match="about 5 missing slice"):  # read as far as the slice positions
        read_scan(data)
    folder = tmp_path / "first_run"
    folder.mkdir()
    for f in sorted(data.glob("*.dcm.gz"))[:7]:  # z index 19-25: contiguous
        (folder / f.name).write_bytes(f.read_bytes())
    scan = read_scan(folder)
    assert scan.hu.shape == (7, 512, 512) and scan.spacing[0] == pytest.approx(3.0)
    assert scan.spacing[1] == pytest.approx(0.488, abs=1e-3) and len(scan.slices) == 7


# --- DICOM slices cut short (GDCM reads a short PixelData as garbage, and skips a file cut inside an element) ---

def _lesion_hu():
    hu = np.full((6, 32, 40), -1000.0)
    hu[:, 4:-4, 4:-4] = 40.0
    hu[2, 20:23, 25:29] = 500.0  # the lesion lies in slice_002.dcm, the slice cut below
    return hu


def _short_pixel_data(path, keep):
    """Rewrite the PixelData of a GDCM-written slice (implicit VR little endian, PixelData last) to its first
    ``keep`` bytes, length field included: the file still parses."""
    import struct

    data = path.read_bytes()
    n = 32 * 40 * 2
    head = data[:-n]
    assert head[-8:-4] == b"\xe0\x7f\x10\x00" and struct.unpack("<I", head[-4:])[0] == n
    path.write_bytes(head[:-4] + struct.pack("<I", keep) + data[-n:][:keep])


@pytest.mark.parametrize("keep", [1000, 32 * 40 * 2 - 4], ids=["cut_to_1000_bytes", "cut_by_4_bytes"])
def test_dicom_slice_with_short_pixel_data_is_refused_by_cac_score(tmp_path, toy_weights, keep):
    import json

    from typer.testing import CliRunner

    from cacnet.cli import app

    folder = tmp_path / "series"
    files = write_series(folder, _lesion_hu())
    args = ["score", str(folder), "--json", "--weights", str(toy_weights), "--force"]
    intact = CliRunner().invoke(app, args)
    assert intact.exit_code == 0, intact.output
    assert json.loads(intact.stdout)["agatston"] > 0
    _short_pixel_data(files[2], keep)
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 3, r.output
    d = json.loads(r.stdout)
    assert d["status"] == "error" and "agatston" not in d
    message = f"DICOM slice slice_002.dcm is truncated: its PixelData (7FE0,0010) holds {keep} bytes"
    assert message in d["error"] and message in r.stderr
    assert "32 rows x 40 columns x 2 bytes (16 bits allocated) need 2560" in d["error"]
    assert str(folder) in d["error"] and "copy or export the series again" in d["error"]


@pytest.mark.parametrize("which", [0, 2, 5], ids=["first", "middle", "last"])
@pytest.mark.parametrize("cut", [4, 1000, 3000], ids=["4_bytes", "1000_bytes", "into_the_header"])
def test_dicom_file_cut_short_is_refused_not_left_out(tmp_path, which, cut):
    """GDCM leaves a file whose PixelData runs past its end out of the series: a cut first or last slice used to
    vanish (the scan scored without it), a cut middle one to read as a missing slice."""
    folder = tmp_path / "series"
    files = write_series(folder, ct_like())
    (folder / "README.txt").write_text("notes beside the slices")
    (folder / "zeros.bin").write_bytes(bytes(1 << 16))
    data = files[which].read_bytes()
    files[which].write_bytes(data[:-cut])
    with pytest.raises(InvalidScanError, match=rf"DICOM file slice_00{which}\.dcm \(.*\) is truncated") as info:
        read_scan(folder)
    text = str(info.value)
    assert str(folder) in text and "would be scored without that slice" in text
    if cut < 2560:
        assert f"announces 2560 bytes but the file ends after {2560 - cut}" in text
        assert "of series 1.2.826.0.1.3680043.8.498.2" in text


def test_files_beside_an_intact_series_are_not_mistaken_for_cut_slices(tmp_path):
    folder = _series(tmp_path / "s")
    (folder / "README.txt").write_text("notes")
    (folder / "zeros.bin").write_bytes(bytes(1 << 16))
    (folder / "DICOMDIR").write_bytes(bytes(128) + b"DICM")  # a Part 10 file with nothing in it
    write_series(folder / "other", ct_like(seed=3), series_uid="1.2.3.4.9")  # another series, cut
    cut = folder / "other" / "slice_001.dcm"
    cut.write_bytes(cut.read_bytes()[:-100])
    scan = read_scan(folder, series="1.2.826.0.1.3680043.8.498.2")
    assert np.array_equal(scan.hu, ct_like()) and scan.meta["n_files"] == 6


def _reencode(folder, transfer_syntax, keep=None, cut_slice=2):
    """Re-encode a series in ``transfer_syntax`` with undefined-length sequences (nested), optionally with the
    PixelData of ``cut_slice`` kept to its first ``keep`` bytes."""
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import Dataset
    from pydicom.filewriter import dcmwrite
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRBigEndian, ImplicitVRLittleEndian

    for i, f in enumerate(sorted(folder.iterdir())):
        ds = pydicom.dcmread(f)
        code = Dataset()
        code.CodeValue = "X"
        code.is_undefined_length_sequence_item = True
        item = Dataset()
        item.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        item.ConceptNameCodeSequence = Sequence([code])
        item["ConceptNameCodeSequence"].is_undefined_length = True
        item.is_undefined_length_sequence_item = True
        ds.ReferencedImageSequence = Sequence([item, item])
        ds["ReferencedImageSequence"].is_undefined_length = True
        big = transfer_syntax == ExplicitVRBigEndian
        if big:
            ds.PixelData = ds.pixel_array.astype(">i2").tobytes()
        if keep is not None and i == cut_slice:
            ds.PixelData = ds.PixelData[:keep]
        ds.file_meta.TransferSyntaxUID = transfer_syntax
        dcmwrite(f, ds, little_endian=not big, implicit_vr=transfer_syntax == ImplicitVRLittleEndian,
                 enforce_file_format=True)
    return folder


@pytest.mark.parametrize("syntax", ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2",
                                    "1.2.840.10008.1.2.1.99"],
                         ids=["implicit_le", "explicit_le", "explicit_be", "deflated"])
def test_short_pixel_data_is_refused_in_every_uncompressed_transfer_syntax(tmp_path, syntax):
    from pydicom.uid import UID

    intact = _reencode(_series(tmp_path / "intact"), UID(syntax))
    assert np.array_equal(read_scan(intact).hu, ct_like())
    for keep in (1000, 2558):
        folder = _reencode(_series(tmp_path / f"short{keep}"), UID(syntax), keep=keep)
        with pytest.raises(InvalidScanError, match=rf"slice_002\.dcm is truncated: its PixelData \(7FE0,0010\) "
                                                   rf"holds {keep} bytes, .* need 2560"):
            read_scan(folder)


def test_cut_compressed_slice_is_refused_by_the_decoder_naming_the_file(tmp_path):
    """JPEG 2000: the encapsulated stream's length says nothing about the pixels; OpenJPEG refuses a cut one."""
    pydicom = pytest.importorskip("pydicom")
    from pydicom.encaps import encapsulate, generate_frames

    folder = tmp_path / "j2k"
    files = write_series(folder, ct_like(), compressor="JPEG2000")
    ds = pydicom.dcmread(files[2])
    (frame,) = generate_frames(ds.PixelData, number_of_frames=1)
    ds.PixelData = encapsulate([frame[: len(frame) - 4]])
    ds.save_as(files[2])
    with pytest.raises(InvalidScanError, match=r"pixel data cannot be decoded .*in slice slice_002\.dcm"):
        read_scan(folder)
    files[3].write_bytes(files[3].read_bytes()[: files[3].stat().st_size // 2])  # cut inside the fragments
    with pytest.raises(InvalidScanError, match=r"slice_003\.dcm \(of series .*\) is truncated: the fragments"):
        read_scan(folder)
