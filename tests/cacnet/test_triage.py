"""cacnet.triage: is this a calcium-scoring scan? Rules on synthetic volumes, refusal and --force."""

import json

import numpy as np
import pytest
import SimpleITK as sitk
from typer.testing import CliRunner

from cacnet.errors import InvalidScanError, UnsuitableScanError
from cacnet.io import Scan
from cacnet.phantom import generate_phantom
from cacnet.triage import CONTRAST_THRESHOLD_HU, MAX_HEART_ML, NOISE_THRESHOLD_HU, kernel_is_sharp, triage

runner = CliRunner()


def as_scan(hu, spacing, **meta):
    return Scan(id="t", hu=np.asarray(hu, np.float32), spacing=tuple(spacing), image=None, source_image=None,
                meta=meta)


def heart_ellipsoid(case):
    """The phantom's heart (blood and myocardium) as a boolean (z, y, x) mask, from its sampled anatomy."""
    h = case.anatomy.heart
    sp, org = np.array(case.spacing), np.array(case.origin)
    reach = np.ceil(h.radii.max() / sp).astype(int) + 1
    c = np.round((h.center - org) / sp).astype(int)
    lo = np.maximum(c - reach, 0)
    hi = np.minimum(c + reach + 1, case.hu.shape)
    grid = np.stack(np.meshgrid(*[org[a] + sp[a] * np.arange(lo[a], hi[a]) for a in range(3)], indexing="ij"), -1)
    local = (grid - h.center) @ h.axes.T / h.radii
    mask = np.zeros(case.hu.shape, bool)
    mask[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = (local ** 2).sum(-1) <= 1.0
    return mask


@pytest.fixture(scope="module")
def case():
    return generate_phantom(3, category="A")


@pytest.fixture(scope="module")
def contrast_hu(case):
    """The phantom with its heart's blood and myocardium raised to about 350 HU (contrast-enhanced)."""
    hu = case.hu.astype(np.float32)
    heart = heart_ellipsoid(case) & (hu > -50) & (hu < 150)
    hu[heart] += 310.0
    return hu


def test_phantom_is_a_calcium_scan(case):
    t = triage(as_scan(case.hu, case.spacing, slice_thickness_mm=case.acquisition.thickness_mm))
    assert t.verdict in ("ok", "warn") and not t.refusals
    heart, contrast, noise = t.checks["heart"], t.checks["contrast"], t.checks["noise"]
    assert heart["verdict"] == "ok" and heart["volume_ml"] >= 150
    # the region holds the phantom's heart centre
    centre = np.round((case.anatomy.heart.center - np.array(case.origin)) / np.array(case.spacing)).astype(int)
    assert all(lo <= c <= hi for c, (lo, hi) in zip(centre, heart["bbox_zyx"]))
    assert contrast["verdict"] == "ok" and 20 < contrast["blood_pool_hu"] < 70
    assert noise["verdict"] == "ok" and noise["noise_hu"] < NOISE_THRESHOLD_HU / 2
    assert t.checks["kernel"]["verdict"] == "unknown" and t.checks["kvp"]["verdict"] == "unknown"
    json.dumps(t.to_dict())
    assert set(t.to_dict()) == {"verdict", "kind", "checks", "forced"}
    assert t.to_dict()["kind"]["kind"] == "gated calcium score"  # a phantom covers the heart only


def test_contrast_is_refused(case, contrast_hu):
    t = triage(as_scan(contrast_hu, case.spacing))
    c = t.checks["contrast"]
    assert c["verdict"] == "refuse" and c["blood_pool_hu"] >= CONTRAST_THRESHOLD_HU + 100
    assert t.verdict == "refuse" and any("contrast-enhanced" in r for r in t.refusals)
    assert t.checks["heart"]["verdict"] == "ok"  # the heart is still found


def test_sharp_noise_is_refused(case):
    noisy = case.hu.astype(np.float32) + np.random.default_rng(0).normal(0, 60, case.hu.shape).astype(np.float32)
    t = triage(as_scan(noisy, case.spacing))
    assert t.checks["noise"]["verdict"] == "refuse" and t.checks["noise"]["noise_hu"] > 50
    assert t.checks["heart"]["verdict"] == "ok" and t.checks["contrast"]["verdict"] == "ok"
    assert any("sharp or very noisy" in r for r in t.refusals)


def test_sharp_kernel_tag_is_refused(case):
    t = triage(as_scan(case.hu, case.spacing, kernel="B70f", manufacturer="SIEMENS", kvp=120.0))
    assert t.checks["kernel"] == {"kernel": "B70f", "manufacturer": "SIEMENS", "sharp": True, "verdict": "refuse",
                                  "message": t.checks["kernel"]["message"]}
    assert t.verdict == "refuse" and t.checks["kvp"]["verdict"] == "ok"
    soft = triage(as_scan(case.hu, case.spacing, kernel="B35f", manufacturer="SIEMENS"))
    assert soft.checks["kernel"]["verdict"] == "ok" and not soft.refusals


@pytest.mark.parametrize("kernel, maker, sharp", [
    ("B70f", "SIEMENS", True), ("B50f", "SIEMENS", True), ("B40f", "SIEMENS", False), ("B10f", "SIEMENS", False),
    ("Br64\\2", "Siemens Healthineers", True), ("Qr36\\3", "Siemens Healthineers", False),
    ("L", "Philips", True), ("B", "Philips", False), ("LUNG", "GE MEDICAL SYSTEMS", True),
    ("BONEPLUS", "GE MEDICAL SYSTEMS", True), ("STANDARD", "GE MEDICAL SYSTEMS", False),
    ("FC52", "TOSHIBA", True), ("FC12", "TOSHIBA", False), (None, "SIEMENS", None), ("XYZ", "ACME", None),
])
def test_kernel_table(kernel, maker, sharp):
    assert kernel_is_sharp(kernel, maker) is sharp


def test_no_heart_is_refused():
    hu = np.full((20, 256, 256), -1000.0, np.float32)  # a water cylinder: body, no lungs
    yy, xx = np.mgrid[:256, :256]
    hu[:, (yy - 128) ** 2 + (xx - 128) ** 2 < 110 ** 2] = 20.0
    t = triage(as_scan(hu, (3.0, 0.6, 0.6)))
    assert t.checks["heart"]["verdict"] == "refuse" and t.checks["contrast"]["verdict"] == "unknown"
    assert any("heart not found" in r for r in t.refusals)


def test_images_too_small_to_hold_a_heart_are_refused(case):
    """A score of 0 (A) on an image that cannot show a heart would claim "no calcium": refused, not warned."""
    t = triage(as_scan(np.full((4, 20, 20), -50.0), (3.0, 0.5, 0.5)))
    assert t.verdict == "refuse" and t.checks["heart"]["verdict"] == "refuse" and len(t.refusals) == 1
    assert t.refusals[0].startswith("too small to hold a heart: the image is 10 x 10 mm in-plane and 12 mm long")
    # no air in so small a field says nothing about the HU scale
    assert t.checks["hu_scale"]["verdict"] == "unknown"
    two = triage(as_scan(case.hu[20:22], case.spacing))  # 2 slices of a chest
    assert two.checks["heart"]["verdict"] == "refuse" and "too small to hold a heart" in two.refusals[0]
    assert "6 mm long (2 slice(s) of 3 mm)" in two.refusals[0]


def test_unrescaled_hu_is_refused_before_the_heart_search(case):
    raw = np.clip(case.hu, -1024, None).astype(np.float32) + 1024  # uint16 stored values: air near 0, water 1024
    t = triage(as_scan(raw, case.spacing))
    assert t.checks["hu_scale"]["verdict"] == "refuse" and t.checks["hu_scale"]["minimum_hu"] == 0
    assert t.checks["heart"]["verdict"] == "unknown" and t.checks["contrast"]["verdict"] == "unknown"
    assert len(t.refusals) == 1 and t.refusals[0].startswith("HU look un-rescaled: minimum 0, air at ~")
    assert "RescaleIntercept (-1024" in t.refusals[0] and not any("heart not found" in r for r in t.refusals)
    assert triage(as_scan(case.hu, case.spacing)).checks["hu_scale"]["verdict"] == "ok"


def test_heart_region_larger_than_any_heart_is_refused(case):
    """The phantom with every spacing doubled (a header off by 2): a plausible grid, an 8 x too large heart."""
    t = triage(as_scan(case.hu, tuple(2 * s for s in case.spacing)))
    heart = t.checks["heart"]
    assert heart["verdict"] == "refuse" and heart["volume_ml"] > MAX_HEART_ML == heart["max_volume_ml"]
    assert t.checks["contrast"]["verdict"] == "unknown"
    assert any(r.startswith(f"the heart region measures {heart['volume_ml']:.0f} mL, more than any heart")
               and "voxel spacing (6 x 0.6376 x 0.6376 mm) is likely wrong" in r for r in t.refusals)


def test_field_of_view_slices_and_kvp_warn():
    t = triage(as_scan(np.full((12, 400, 400), -1000.0), (5.0, 1.4, 1.4), kvp=100.0, slice_thickness_mm=5.0))
    fov = t.checks["field_of_view"]
    assert fov["verdict"] == "warn" and fov["fov_mm"] == [560.0, 560.0] and fov["pixel_mm"] == 1.4
    assert any("whole-body field of view" in w for w in t.warnings)
    assert t.checks["slices"]["verdict"] == "warn" and t.checks["kvp"]["verdict"] == "warn"


# --- through score_scan and the CLI ------------------------------------------------------------------


def half_resolution(hu, case):
    """2 x 2 in-plane block means as an image (0.8 mm pixels, 200 mm): quick to score, same anatomy."""
    z, y, x = hu.shape
    small = hu[:, : y // 2 * 2, : x // 2 * 2].reshape(z, y // 2, 2, x // 2, 2).mean(axis=(2, 4))
    img = sitk.GetImageFromArray(np.round(small).astype(np.int16))
    img.SetSpacing((2 * case.spacing[2], 2 * case.spacing[1], case.spacing[0]))
    return img


@pytest.fixture(scope="module")
def files(case, contrast_hu, tmp_path_factory):
    out = tmp_path_factory.mktemp("triage")
    sitk.WriteImage(half_resolution(case.hu.astype(np.float32), case), str(out / "plain.nii.gz"))
    sitk.WriteImage(half_resolution(contrast_hu, case), str(out / "cta.nii.gz"))
    return out


@pytest.fixture(scope="module")
def ensemble(toy_weights):
    from cacnet.ensemble import Ensemble

    return Ensemble(toy_weights, device="cpu")


def test_score_scan_refuses_and_force_scores(files, ensemble):
    from cacnet.pipeline import score_scan

    with pytest.raises(UnsuitableScanError) as err:
        score_scan(files / "cta.nii.gz", ensemble)
    assert isinstance(err.value, InvalidScanError) and err.value.exit_code == 3
    msg = str(err.value)
    assert str(files / "cta.nii.gz") in msg and "contrast-enhanced" in msg and "HU" in msg and "--force" in msg
    d = score_scan(files / "cta.nii.gz", ensemble, force=True).data
    assert d["triage"]["verdict"] == "refuse" and d["triage"]["forced"] is True
    assert d["triage"]["checks"]["contrast"]["verdict"] == "refuse"
    assert any(w.startswith("forced: contrast-enhanced") for w in d["warnings"])
    plain = score_scan(files / "plain.nii.gz", ensemble).data
    assert plain["triage"]["verdict"] in ("ok", "warn") and plain["triage"]["forced"] is False
    assert not any("forced" in w or "contrast" in w for w in plain["warnings"])
    json.dumps(d)


@pytest.fixture(scope="module")
def odd_files(case, tmp_path_factory):
    """Scans that used to be scored with exit 0: un-rescaled HU, 2 slices, 3 components, 300 mm slices."""
    out = tmp_path_factory.mktemp("odd")
    plain = half_resolution(case.hu.astype(np.float32), case)
    arr = sitk.GetArrayFromImage(plain)
    raw = sitk.GetImageFromArray((np.clip(arr, -1024, None) + 1024).astype(np.uint16))
    raw.CopyInformation(plain)
    sitk.WriteImage(raw, str(out / "raw.nii.gz"))
    sitk.WriteImage(plain[:, :, 20:22], str(out / "two.nii.gz"))
    vector = sitk.GetImageFromArray(np.stack([arr] * 3, axis=-1), isVector=True)
    vector.CopyInformation(plain)
    sitk.WriteImage(vector, str(out / "vector.nii.gz"))
    thick = sitk.Image(plain)
    thick.SetSpacing(plain.GetSpacing()[:2] + (300.0,))
    sitk.WriteImage(thick, str(out / "thick.nii.gz"))
    return out


def test_prepare_scan_refuses_odd_scans(odd_files):
    from cacnet.pipeline import prepare_scan

    for name, error, message in [
        ("raw", UnsuitableScanError, "HU look un-rescaled: minimum 0, air at ~"),
        ("two", UnsuitableScanError, "too small to hold a heart: the image is 163.2 x 163.2 mm in-plane and 6 mm long"),
        ("vector", InvalidScanError, "has 3 components per voxel"),
        ("thick", InvalidScanError, "slice increment is 300 mm"),
    ]:
        path = odd_files / f"{name}.nii.gz"
        with pytest.raises(InvalidScanError) as err:
            prepare_scan(path)
        assert type(err.value) is error and err.value.exit_code == 3, name
        assert str(err.value).startswith(f"{path}: ") and message in str(err.value), (name, str(err.value))
    # triage refusals can be forced; the reader's (the geometry or the pixel type is wrong) cannot
    assert prepare_scan(odd_files / "two.nii.gz", force=True).checked.forced
    assert prepare_scan(odd_files / "raw.nii.gz", force=True).checked.checks["hu_scale"]["verdict"] == "refuse"
    with pytest.raises(InvalidScanError, match="slice increment is 300 mm"):
        prepare_scan(odd_files / "thick.nii.gz", force=True)


def test_cli_refuses_odd_scans(odd_files, toy_weights):
    from cacnet.cli import app

    for name, message in [("raw", "HU look un-rescaled: minimum 0, air at ~"),
                          ("two", "too small to hold a heart: the image is 163.2 x 163.2 mm in-plane and 6 mm long"),
                          ("vector", "has 3 components per voxel"), ("thick", "slice increment is 300 mm")]:
        path = odd_files / f"{name}.nii.gz"
        r = runner.invoke(app, ["score", str(path), "--weights", str(toy_weights)])
        assert r.exit_code == 3 and f"{path}: " in r.stderr and message in r.stderr, (name, r.stderr)
    r = runner.invoke(app, ["score", str(odd_files / "raw.nii.gz"), "--weights", str(toy_weights), "--force", "--json"])
    assert r.exit_code == 0
    warnings = json.loads(r.stdout)["warnings"]  # the reader's warning is given once, as the forced refusal
    assert [w for w in warnings if "un-rescaled" in w] == [w for w in warnings if w.startswith("forced: HU look")]
    assert len([w for w in warnings if "un-rescaled" in w]) == 1
    r = runner.invoke(app, ["score", str(odd_files / "thick.nii.gz"), "--weights", str(toy_weights), "--force"])
    assert r.exit_code == 3 and "slice increment is 300 mm" in r.stderr


def test_cli_exit_3_and_force(files, toy_weights):
    from cacnet.cli import app

    r = runner.invoke(app, ["score", str(files / "cta.nii.gz"), "--weights", str(toy_weights)])
    assert r.exit_code == 3 and "contrast-enhanced" in r.stderr and "--force" in r.stderr
    r = runner.invoke(app, ["score", str(files / "cta.nii.gz"), "--weights", str(toy_weights), "--force"])
    assert r.exit_code == 0 and "forced: contrast-enhanced" in r.stderr
    r = runner.invoke(app, ["score", str(files / "cta.nii.gz"), str(files / "plain.nii.gz"), "--json",
                            "--weights", str(toy_weights)])
    assert r.exit_code == 4  # a refused scan is an error row; the batch goes on
    rows = {d["id"]: d for d in json.loads(r.stdout)}
    assert rows["cta"]["status"] == "error" and rows["cta"]["exit_code"] == 3 and "contrast" in rows["cta"]["error"]
    assert rows["plain"]["status"] == "ok" and rows["plain"]["triage"]["checks"]["heart"]["verdict"] == "ok"
