"""De-contrasting a contrast-enhanced CT for use as a non-contrast background: cacnet.phantom.decontrast."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cacnet.phantom.decontrast import _tone_map, decontrast, decontrast_scan, read_mask
from cacnet.phantom.insertion import decontrast_mask_of, iter_inserted_scans, load_tracing

SPACING = (2.5, 0.7, 0.7)
HEART, AORTA, RIB, LUNG = 51, 52, 95, 10


def _chest(seed: int = 0):
    """Fat with noise; a contrast heart (380 HU blood, 120 HU myocardium rim) with its label; a 'coronary' tube
    (300 HU, unlabelled) in the fat next to it; a rib (700 HU) labelled; a lung with a contrast vessel; and a
    dense unlabelled slab far from everything (the table: must stay)."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    shape = (10, 96, 96)
    hu = np.full(shape, -100.0, np.float32)
    mask = np.zeros(shape, np.uint8)
    zz, yy, xx = np.mgrid[:shape[0], :shape[1], :shape[2]]
    r = np.hypot(yy - 40, xx - 40)
    heart = r <= 16
    hu[heart] = 120.0  # enhanced myocardium
    hu[r <= 13] = 380.0  # contrast blood
    mask[heart] = HEART
    tube = np.hypot(yy - 40, xx - 61) <= 1.6  # 2.2 mm wide vessel 4-5 mm from the heart, in fat
    hu[tube] = 300.0
    rib = (yy >= 70) & (yy < 76) & (xx >= 10) & (xx < 30)
    hu[rib] = 700.0
    mask[rib] = RIB
    lung = (xx >= 70) & (yy >= 60) & (yy < 90)
    hu[lung] = -850.0
    mask[lung] = LUNG
    lvessel = lung & (np.hypot(yy - 75, xx - 82) <= 1.5)
    hu[lvessel] = 330.0
    table = (yy >= 92) & (xx < 40)
    hu[table] = 300.0
    hu = ndimage.gaussian_filter(hu, (0, 0.8, 0.8))  # the scanner's blur, then its noise
    hu = (hu + 18 * rng.standard_normal(shape)).astype(np.float32)
    hu[rib] = 700.0  # exact, to check that bone is untouched
    return hu, mask, dict(heart=heart, blood=r <= 13, tube=tube, rib=rib, lung=lung, lvessel=lvessel, table=table,
                          far_fat=(r > 24) & ~tube & ~rib & ~lung & ~table & (np.hypot(yy - 40, xx - 61) > 6)
                          & (yy < 88))


def test_contrast_blood_and_myocardium_become_non_contrast_soft_tissue():
    hu, mask, reg = _chest()
    before = hu.copy()
    out = decontrast(hu, mask, SPACING)
    assert out.dtype == np.float32 and out.shape == hu.shape
    assert np.array_equal(hu, before)  # the input is not modified
    core = reg["heart"] & (np.hypot(*(np.mgrid[:96, :96] - 40)) <= 14)[None]  # the heart eroded by 2 px
    assert 35 <= np.median(out[core]) <= 50
    assert out[core].max() < 130
    assert 5 < out[reg["blood"]].std() < 30  # the scan's noise stays, not a flat fill
    heart_rim = reg["heart"] & ~reg["blood"]
    assert 20 <= np.median(out[heart_rim]) <= 50  # enhanced myocardium -> ~ blood, as without contrast


def test_bone_fat_lung_and_far_dense_things_are_untouched():
    hu, mask, reg = _chest()
    out = decontrast(hu, mask, SPACING)
    assert np.array_equal(out[reg["rib"]], hu[reg["rib"]])  # 700 HU bone, exactly
    assert np.allclose(out[reg["far_fat"]], hu[reg["far_fat"]], atol=1e-3)  # fat away from the blood
    assert np.array_equal(out[reg["table"]], hu[reg["table"]])  # dense, unlabelled, not near the heart: kept
    lung_par = reg["lung"] & (np.hypot(*np.mgrid[:96, :96] - np.array([75, 82])[:, None, None]) > 5)[None]
    assert np.allclose(out[lung_par], hu[lung_par], atol=1e-3)
    # lung parenchyma, 5 px and more from its vessel, exactly
    lung_par = reg["lung"] & (np.hypot(*(np.mgrid[:96, :96] - np.array([75, 82])[:, None, None])) > 5)[None]
    assert np.allclose(out[lung_par], hu[lung_par], atol=1e-3)


def test_coronary_tube_in_fat_and_lung_vessel_become_soft_tissue():
    hu, mask, reg = _chest()
    out = decontrast(hu, mask, SPACING)
    centre = out[:, 40, 61]
    assert np.all((centre > 20) & (centre < 70)), centre  # a soft-tissue tube, not a 300 HU lumen
    assert out[reg["tube"]].max() < 130
    assert np.all((out[:, 75, 82] > 0) & (out[:, 75, 82] < 70))  # 1-2 pixel pulmonary vessel in the lung label
    assert out[reg["lvessel"]].max() < 130
    assert np.median(hu[reg["lvessel"]] - out[reg["lvessel"]]) > 0
    # nothing >= 130 HU outside bone (with its blurred edge) and the table
    from scipy import ndimage

    bone_edge = ndimage.binary_dilation(reg["rib"], np.ones((1, 5, 5), bool))
    assert not ((out >= 130) & ~bone_edge & ~reg["table"]).any()
    assert ((hu >= 130) & ~bone_edge & ~reg["table"]).sum() > 1000  # there were plenty before


def test_tone_map_is_monotone_and_bounded():
    h = np.linspace(-1024, 3071, 5000).astype(np.float32)
    y = _tone_map(h, -50.0, 120.0, 38.0, 350.0, 45.0)
    assert np.all(np.diff(y) >= 0)
    assert np.array_equal(y[h < -50], h[h < -50])
    assert y.max() <= 60.0 + 1e-4
    assert abs(float(_tone_map(np.float32([350.0]), -50.0, 120.0, 38.0, 350.0, 45.0)[0]) - 45.0) < 1e-4


def test_bad_input_raises():
    hu, mask, _ = _chest()
    with pytest.raises(ValueError, match="same shape"):
        decontrast(hu, mask[:, :-1], SPACING)
    with pytest.raises(ValueError, match="spacing"):
        decontrast(hu, mask, (2.5, 0.0, 0.7))


def _write(tmp_path, hu, mask, flip_mask=False):
    import SimpleITK as sitk

    root = tmp_path / "real-ct"
    (root / "pt").mkdir(parents=True)
    img = sitk.GetImageFromArray(hu)
    img.SetSpacing((SPACING[2], SPACING[1], SPACING[0]))
    img.SetOrigin((-30.0, -30.0, 100.0))
    sitk.WriteImage(img, str(root / "pt" / "ct.nii.gz"))
    lab = sitk.GetImageFromArray(mask)
    lab.CopyInformation(img)
    if flip_mask:  # stored LAS, like the shipped LIDC mask: read_mask must reorient it
        lab = sitk.DICOMOrient(lab, "LAS")
    sitk.WriteImage(lab, str(root / "pt" / "mask.nii.gz"))
    return root


def test_read_mask_orients_like_read_scan_and_decontrast_scan(tmp_path):
    from cacnet.io import read_scan

    hu, mask, reg = _chest()
    root = _write(tmp_path, hu, mask, flip_mask=True)
    scan = read_scan(root / "pt" / "ct.nii.gz")
    assert np.array_equal(read_mask(root / "pt" / "mask.nii.gz", scan.image), mask)
    dc = decontrast_scan(scan, root / "pt" / "mask.nii.gz")
    assert np.array_equal(np.asarray(dc.hu), decontrast(np.asarray(scan.hu), mask, scan.spacing))
    assert dc.image.GetOrigin() == scan.image.GetOrigin() and dc.meta["decontrast"].endswith("mask.nii.gz")
    assert np.asarray(scan.hu)[reg["blood"]].min() > 200  # the original scan is unchanged
    with pytest.raises(FileNotFoundError, match="nope.nii.gz"):
        read_mask(root / "pt" / "nope.nii.gz", scan.image)


def _tracing(**extra):
    lad = [[0.0 + 1.0 * i, -2.0, 105.0 + 2.5 * i] for i in range(4)]  # LPS x, y, z
    return {"name": "pt", "scan": "pt/ct.nii.gz", "frame": "LPS patient coordinates in mm",
            "structures": {"LAD": lad}, **extra}


def test_tracing_decontrast_key_is_checked_and_resolved(tmp_path):
    hu, mask, _ = _chest()
    root = _write(tmp_path, hu, mask)
    good = tmp_path / "pt.json"
    good.write_text(json.dumps(_tracing(decontrast={"mask": "pt/mask.nii.gz"})))
    t = load_tracing(good)
    assert decontrast_mask_of(t, root / "pt" / "ct.nii.gz") == root / "pt" / "mask.nii.gz"
    assert decontrast_mask_of(_tracing(), root / "pt" / "ct.nii.gz") is None  # no key: no de-contrast
    for i, bad in enumerate(["pt/mask.nii.gz", {"path": "x"}, {"mask": ""}, {"mask": 3}, {"mask": "/abs/m.nii.gz"},
                             {"mask": "m", "extra": 1}]):
        p = tmp_path / f"bad{i}.json"
        p.write_text(json.dumps(_tracing(decontrast=bad)))
        with pytest.raises(ValueError, match=rf"bad{i}\.json: decontrast must be"):
            load_tracing(p)
    missing = _tracing(decontrast={"mask": "pt/gone.nii.gz"})
    with pytest.raises(FileNotFoundError, match=r"pt/gone\.nii\.gz"):
        decontrast_mask_of(missing, root / "pt" / "ct.nii.gz", "pt.json")
    with pytest.raises(ValueError, match="not the tracing's scan"):
        decontrast_mask_of(t, tmp_path / "elsewhere.nii.gz")


def test_find_backgrounds_checks_the_mask_and_insertion_uses_the_decontrasted_scan(tmp_path):
    from cacnet.train._backgrounds import find_backgrounds

    hu, mask, reg = _chest()
    root = _write(tmp_path, hu, mask)
    tdir = tmp_path / "anatomy"
    tdir.mkdir()
    (tdir / "pt.json").write_text(json.dumps(_tracing(decontrast={"mask": "pt/gone.nii.gz"})))
    with pytest.raises(FileNotFoundError, match=r"decontrast mask .*pt/gone\.nii\.gz not found"):
        find_backgrounds(root, tracings_dir=tdir)
    (tdir / "pt.json").write_text(json.dumps(_tracing(decontrast={"mask": "pt/mask.nii.gz"})))
    (b,), _ = find_backgrounds(root, tracings_dir=tdir)
    (_, ins, _), = iter_inserted_scans(b.path, b.tracing_path, [0], 1, augment=False, lookalikes=False)
    assert ins.meta.get("target_category") in (None, "A") and not ins.labels.any()  # category A: no calcium
    assert 35 <= np.median(ins.hu[reg["blood"]]) <= 50  # de-contrasted before insertion
    assert np.array_equal(ins.hu[reg["rib"]], hu[reg["rib"]])
