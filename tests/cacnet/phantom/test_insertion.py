"""Synthetic calcium inserted into a (real or phantom) scan along a tracing: cacnet.phantom.insertion."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

import agatston
from cacnet.phantom import generate_phantom, oriented_image
from cacnet.phantom.insertion import (augment_scan, estimate_psf_sigma, insert_calcium, load_tracing,
                                      resample_for_cac, validate_tracing)
from cacnet.train import inserted_cases

#: sha256 of hu + labels of generate_phantom(seed, size=160, category=cat), computed before the phantom's
#: Grid / sample_plaque(artery=) refactor: the phantom must stay bit-identical.
PHANTOM_HASHES = {
    (3, None): "3c46ac68c3fd9e3de81d1c08f606bd164ddc42d71b29cc76fe9b251c4258d064",
    (5, "C"): "fb69bdca1828b81e4a094994970e700be3a278a143ace5ee62558d1d0a9f502b",
    (8, "B"): "4b4896798c7cb811386be46c7ed3f40d63a010998e87be7ac9d3e5d00ff89df1",
}


def test_phantom_bit_identical_after_refactor():
    for (seed, cat), want in PHANTOM_HASHES.items():
        c = generate_phantom(seed, size=160, category=cat)
        assert hashlib.sha256(c.hu.tobytes() + c.labels.tobytes()).hexdigest() == want, (seed, cat)


# -- helpers ---------------------------------------------------------------------------

def _image(hu, spacing, origin_zyx):
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(np.ascontiguousarray(hu, dtype=np.float32))
    img.SetSpacing([float(spacing[2]), float(spacing[1]), float(spacing[0])])
    img.SetOrigin([float(origin_zyx[2]), float(origin_zyx[1]), float(origin_zyx[0])])
    return img


def _dist_to_polyline(points_zyx, poly_zyx):
    """Distance (mm) of each point to a polyline."""
    p = np.asarray(points_zyx, float)[:, None, :]
    a, b = poly_zyx[:-1][None], poly_zyx[1:][None]
    ab = b - a
    t = np.clip(((p - a) * ab).sum(-1) / np.maximum((ab * ab).sum(-1), 1e-9), 0, 1)
    return np.linalg.norm(p - (a + t[..., None] * ab), axis=-1).min(axis=1)


def _ring(c_zyx, r, n=12, axis="z"):
    a = np.linspace(0, 2 * np.pi, n, endpoint=False)
    pts = np.stack([np.full(n, c_zyx[0]), c_zyx[1] + r * np.sin(a), c_zyx[2] + r * np.cos(a)], 1)
    return [list(map(float, p[::-1])) for p in pts]  # LPS [x, y, z]


ORIGIN = (-24.0, -20.0, -20.0)  # (z, y, x) mm
SPACING = (3.0, 0.5, 0.5)
LAD_ZYX = np.array([[12.0, -12.0, -15.0], [6.0, -10.0, -8.0], [0.0, -8.0, -1.0], [-6.0, -7.0, 6.0],
                    [-12.0, -6.0, 12.0], [-18.0, -5.0, 15.0]])


def _tiny():
    """A small fat background with noise, a fake bone next to the LAD, and a hand-made tracing."""
    rng = np.random.default_rng(0)
    shape = (17, 80, 80)
    hu = (-100 + 12 * rng.standard_normal(shape)).astype(np.float32)
    hu[:, 60:75, 5:30] = 40.0  # some soft tissue
    # Fake bone: 2.5 mm beside the LAD around z = 0 (index 8): pre-existing >= 130 HU voxels.
    bone = np.zeros(shape, bool)
    zi = int(round((0.0 - ORIGIN[0]) / SPACING[0]))
    yi, xi = (np.array([-8.0, -1.0]) - np.array(ORIGIN[1:])) / 0.5
    bone[zi - 1:zi + 2, int(yi) + 5:int(yi) + 12, int(xi) - 4:int(xi) + 4] = True
    hu[bone] = 700.0
    tracing = {"name": "tiny", "frame": "LPS patient coordinates in mm", "structures": {
        "LAD": [list(map(float, p[::-1])) for p in LAD_ZYX],
        "aortic_root_wall": [_ring((9.0, 8.0, 8.0), 6.0)],
        "ascending_aorta_wall": [_ring((15.0, 8.0, 8.0), 6.0)],
        "aortic_valve_plane": _ring((6.0, 8.0, 8.0), 6.0),
        "mitral_annulus": _ring((-12.0, 10.0, -10.0), 6.0),
    }}
    return hu, bone, tracing


# -- tiny hand-made tracing ------------------------------------------------------------

@pytest.mark.parametrize("cat", ["B", "D"])
def test_tiny_category_labels_and_lookalikes(cat):
    hu, bone, tracing = _tiny()
    img = _image(hu, SPACING, ORIGIN)
    ins = insert_calcium(img, tracing, np.random.default_rng(3), target_category=cat,
                         lookalikes=["aortic_wall", "aortic_valve", "mitral_annulus"], psf_sigma_mm=0.45,
                         thickness_mm=3.0)
    assert ins.hu.dtype == np.float32 and ins.labels.dtype == np.uint8 and ins.hu.shape == hu.shape
    lab = ins.labels
    assert set(np.unique(lab)) <= {0, 2}
    assert lab.any() and np.all(ins.hu[lab > 0] >= 130)  # labels only where >= 130 HU
    assert not lab[bone].any()  # pre-existing bright voxels stay 0
    # The score of the labels is the truth, in the requested category.
    assert ins.truth.agatston > 0 and agatston.category(ins.truth.agatston) == cat
    assert agatston.score(ins.hu, ins.spacing, lab).agatston == pytest.approx(ins.truth.agatston)
    # Every labelled voxel lies within a few mm of the traced LAD.
    idx = np.argwhere(lab > 0)
    mm = np.array(ORIGIN) + idx * np.array(SPACING)
    assert _dist_to_polyline(mm, LAD_ZYX).max() < 6.0
    # Look-alikes: present, on their structures, labelled 0 and visible (>= 130 HU) in places.
    looks = [o for o in ins.meta["objects"] if o["label"] == 0]
    assert {o["kind"] for o in looks} == {"aortic_wall", "aortic_valve", "mitral_annulus"}
    assert all(o["structure"] in ("aortic_root_wall", "ascending_aorta_wall", "aortic_valve_plane", "mitral_annulus")
               for o in looks)
    added = (ins.hu - hu > 100) & (ins.hu >= 130)
    far = np.zeros(hu.shape, bool)
    far[tuple(idx.T)] = True
    all_idx = np.argwhere(added)
    d = _dist_to_polyline(np.array(ORIGIN) + all_idx * np.array(SPACING), LAD_ZYX)
    look_vox = all_idx[d > 8.0]
    assert len(look_vox) > 0 and not lab[tuple(look_vox.T)].any()
    plaques = [o for o in ins.meta["objects"] if o["label"]]
    assert plaques and all(o["artery"] == "LAD" for o in plaques)
    for o in ins.meta["objects"]:
        assert set(o) >= {"kind", "position_mm", "length_mm", "radius_mm", "value_hu", "peak_hu"}


def test_plaque_touching_bone_leaves_bone_unlabelled():
    from scipy import ndimage

    hu, bone, tracing = _tiny()
    ins = insert_calcium(_image(hu, SPACING, ORIGIN), tracing, np.random.default_rng(4), n_plaques=25,
                         lookalikes=False, psf_sigma_mm=0.45)
    near = ndimage.binary_dilation(bone, np.ones((3, 3, 3), bool)) & ~bone
    assert (ins.labels[near] > 0).sum() > 0  # a labelled plaque in the same >= 130 HU component as the bone
    assert np.abs(ins.hu[bone] - hu[bone]).max() > 100  # and adding density to it
    assert not ins.labels[bone].any()  # the bone (already >= 130 HU, mostly its own density) stays 0


def test_tiny_deterministic_and_n_plaques():
    hu, _, tracing = _tiny()
    img = _image(hu, SPACING, ORIGIN)
    a = insert_calcium(img, tracing, np.random.default_rng(11), n_plaques=3, psf_sigma_mm=0.4)
    b = insert_calcium(img, tracing, np.random.default_rng(11), n_plaques=3, psf_sigma_mm=0.4)
    assert np.array_equal(a.hu, b.hu) and np.array_equal(a.labels, b.labels) and a.meta == b.meta
    assert a.meta["n_plaques"] <= 3 and sum(o["label"] > 0 for o in a.meta["objects"]) == a.meta["n_plaques"]
    c = insert_calcium(img, tracing, np.random.default_rng(12), n_plaques=3, psf_sigma_mm=0.4)
    assert not np.array_equal(a.hu, c.hu)
    # Category A: no coronary calcium (look-alikes may be there).
    z = insert_calcium(img, tracing, np.random.default_rng(1), target_category="A", lookalikes=1.0)
    assert not z.labels.any() and z.truth.agatston == 0 and z.meta["lookalikes"]
    with pytest.raises(ValueError, match="not both"):
        insert_calcium(img, tracing, np.random.default_rng(0), n_plaques=2, target_category="B")


# -- phantom background with its own centrelines as the tracing --------------------------

def test_phantom_background_along_centrelines():
    case = generate_phantom(2, category="A", size=256)
    img = oriented_image(case.hu.astype(np.float32), case, "identity")
    polys = {}
    for name, a in (("LAD", 2), ("RCA", 4)):
        pts = case.anatomy.coronaries[a][0][::7]  # every ~4 mm, (z, y, x) mm
        polys[a] = pts
    tracing = {"structures": {"LAD": [list(map(float, p[::-1])) for p in polys[2]],
                              "RCA": [list(map(float, p[::-1])) for p in polys[4]]}}
    pre = case.hu >= 130
    ins = insert_calcium(img, tracing, np.random.default_rng(5), target_category="C", lookalikes=False,
                         psf_sigma_mm=case.acquisition.psf_mm, thickness_mm=case.acquisition.thickness_mm)
    assert ins.origin == pytest.approx(case.origin) and ins.spacing == pytest.approx(case.spacing)
    assert agatston.category(ins.truth.agatston) == "C"
    assert set(np.unique(ins.labels)) <= {0, 2, 4} and np.all(ins.hu[ins.labels > 0] >= 130)
    assert not ins.labels[pre].any()
    for a in (2, 4):
        idx = np.argwhere(ins.labels == a)
        if len(idx):
            mm = np.array(case.origin) + idx * np.array(case.spacing)
            assert _dist_to_polyline(mm, polys[a]).max() < 6.0


# -- tracing files -----------------------------------------------------------------------

def test_load_tracing_errors(tmp_path):
    _, _, tracing = _tiny()
    good = tmp_path / "good.json"
    good.write_text(json.dumps(tracing))
    assert load_tracing(good)["structures"]["LAD"] == tracing["structures"]["LAD"]
    nameless = tmp_path / "p7.json"
    nameless.write_text(json.dumps({"structures": {"RCA": [[0, 0, 0], [1, 1, 1]]}}))
    assert load_tracing(nameless)["name"] == "p7"
    with pytest.raises(ValueError, match="missing.json: no such"):
        load_tracing(tmp_path / "missing.json")
    cases = {
        "notjson": ("{", "not valid JSON"),
        "nostructures": (json.dumps({"name": "x"}), "missing key 'structures'"),
        "badpoint": (json.dumps({"structures": {"LAD": [[0, 0, 0], [1, 2]]}}), r"structures\.LAD\[1\]"),
        "nan": (json.dumps({"structures": {"LM": [[0, 0, 0], [1, 2, float("nan")]]}}), r"structures\.LM\[1\]"),
        "short": (json.dumps({"structures": {"RCA": [[0, 0, 0]]}}), r"structures\.RCA must be"),
        "unknown": (json.dumps({"structures": {"LAD": [[0, 0, 0], [1, 1, 1]], "PDA": []}}), "unknown structure 'PDA'"),
        "nocoronary": (json.dumps({"structures": {"mitral_annulus": [[0, 0, 0], [1, 0, 0], [0, 1, 0]]}}),
                       "no coronary polyline"),
        "badring": (json.dumps({"structures": {"LAD": [[0, 0, 0], [1, 1, 1]], "aortic_root_wall": [[[0, 0, 0]]]}}),
                    r"structures\.aortic_root_wall\[0\]"),
        "frame": (json.dumps({"frame": "RAS", "structures": {"LAD": [[0, 0, 0], [1, 1, 1]]}}), "frame must be LPS"),
    }
    for name, (text, msg) in cases.items():
        p = tmp_path / f"{name}.json"
        p.write_text(text)
        with pytest.raises(ValueError, match=f"{name}.json") as err:
            load_tracing(p)
        assert err.match(msg), name
    with pytest.raises(ValueError, match="tracing: missing key"):
        validate_tracing({})


# -- augmentation, resampling, PSF, training cases -----------------------------------------

def test_augment_moves_tracing_with_the_anatomy():
    shape, spacing, origin = (6, 100, 100), (3.0, 0.6, 0.6), (0.0, -30.0, -30.0)
    hu = np.full(shape, -100, np.float32)
    marks = [(7.5, -14.0, 16.0), (7.5, 12.0, -10.0), (7.5, 0.0, 20.0)]  # (z, y, x) mm, mid slice z index 2.5
    zz, yy, xx = np.meshgrid(*[origin[i] + spacing[i] * np.arange(shape[i]) for i in range(3)], indexing="ij")
    for m in marks:
        hu[((yy - m[1]) ** 2 + (xx - m[2]) ** 2 < 1.5 ** 2)] = 1000.0
    tracing = {"structures": {"LAD": [list(m[::-1]) for m in marks]}}
    out, moved, params = augment_scan(_image(hu, spacing, origin), tracing, np.random.default_rng(4), rotation_deg=20,
                                      elastic_mm=2.0, hu_offset=0, hu_gain=0)
    import SimpleITK as sitk

    arr = sitk.GetArrayFromImage(out)
    assert abs(params["rotation_deg"]) > 1
    for p in moved["structures"]["LAD"]:
        x, y = p[0], p[1]
        near = (arr > 400) & ((yy - y) ** 2 + (xx - x) ** 2 < 5 ** 2)
        assert near.sum() > 0
        cy, cx = yy[near].mean(), xx[near].mean()
        assert np.hypot(cy - y, cx - x) < 0.6  # the marker moved to where the tracing point moved


def test_resample_for_cac(tmp_path):
    from cacnet.io import read_scan
    import SimpleITK as sitk

    fine = np.zeros((30, 64, 64), np.float32)
    fine[10:20, 20:40, 20:40] = 300
    p = tmp_path / "fine.nii.gz"
    sitk.WriteImage(_image(fine, (1.0, 0.3, 0.3), (0.0, 0.0, 0.0)), str(p))
    r = resample_for_cac(read_scan(p), 3.0, 0.5)
    assert r.spacing == pytest.approx((3.0, 0.5, 0.5)) and r.meta["slice_thickness_mm"] == pytest.approx(3.0)
    assert r.hu.shape == (10, 38, 38)
    assert r.hu[5, 19, 19] == pytest.approx(300, abs=1)
    coarse = tmp_path / "coarse.nii.gz"
    sitk.WriteImage(_image(np.zeros((8, 32, 32), np.float32), (5.0, 0.8, 0.8), (0.0, 0.0, 0.0)), str(coarse))
    r2 = resample_for_cac(read_scan(coarse), 3.0, 0.5)
    assert r2.spacing == pytest.approx((5.0, 0.8, 0.8)) and r2.hu.shape == (8, 32, 32)  # never finer than the source


def test_estimate_psf_sigma_on_blurred_body():
    from scipy import ndimage

    px = 0.8
    n = 300
    y, x = (np.mgrid[:n, :n] - n / 2 + 0.3) * px
    # Supersampled elliptic body (-100 HU) in air, blurred with a known Gaussian PSF.
    ss = 4
    yf, xf = (np.mgrid[:n * ss, :n * ss] - n * ss / 2 + 0.5) * px / ss
    inside = ((yf / 90) ** 2 + (xf / 110) ** 2 <= 1).reshape(n, ss, n, ss).mean(axis=(1, 3))
    sl = -1000 + 900 * inside
    sigma = 0.45
    sl = ndimage.gaussian_filter(sl, sigma / px)
    vol = np.repeat(sl[None], 4, axis=0) + np.random.default_rng(0).normal(0, 8, (4, n, n))
    est, k = estimate_psf_sigma(vol.astype(np.float32), (3.0, px, px))
    assert k >= 10 and est == pytest.approx(sigma, abs=0.1)
    assert estimate_psf_sigma(np.zeros((2, 20, 20), np.float32), (3.0, px, px)) == (0.45, 0)


def test_inserted_cases(tmp_path):
    import SimpleITK as sitk

    hu, _, tracing = _tiny()
    sitk.WriteImage(_image(hu, SPACING, ORIGIN), str(tmp_path / "bg.nii.gz"))
    (tmp_path / "tiny.json").write_text(json.dumps(tracing))
    cases = inserted_cases(tmp_path / "bg.nii.gz", tmp_path / "tiny.json", 2, seed=7, augment=True)
    assert [c.case_id for c in cases] == ["tiny_ins7_000", "tiny_ins7_001"]
    assert cases[0].meta["category"] == "A" and not cases[0].y.any()
    assert cases[1].meta["category"] == "B" and cases[1].y.any() and cases[1].meta["inserted"]
    assert cases[1].x.shape == cases[1].y.shape and cases[1].x.dtype == np.float32
    again = inserted_cases(tmp_path / "bg.nii.gz", tmp_path / "tiny.json", 2, seed=7, augment=True)
    assert np.array_equal(again[1].x, cases[1].x)
