"""The aortas of the anatomical map (cacnet.anatomy.find_aortas): tubes followed slice by slice."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from cacnet.anatomy import AORTA_MEASURES, ANATOMY_FEATURES, AortaTrack, anatomical_map, find_aortas
from cacnet.phantom import case_seed, generate_phantom
from cacnet.triage import triage

CELL = (3.5, 3.5, 3.5)


def _disk(shape, cy, cx, r_mm):
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    return np.hypot((yy - cy) * CELL[1], (xx - cx) * CELL[2]) <= r_mm


def _chest(nz=40, n=80, asc_top=True):
    """A smoothed chest: fat in a body, a lung on either side, a spine, a heart (z 5-24), an ascending aorta
    (r 15 mm, from the heart's top up), a descending aorta (r 12 mm, every slice). Returns v, parts, heart,
    region, midline and the truth (centres)."""
    v = np.full((nz, n, n), -1000.0)
    body = np.zeros(v.shape, bool)
    body[:, 8:76, 4:76] = True
    v[body] = -100.0  # fat
    lung = np.zeros(v.shape, bool)
    lung[:, 15:62, 6:22] = True
    lung[:, 15:62, 58:74] = True
    v[lung] = -800.0
    v[:, 62:74, 34:46] = 400.0  # vertebral body
    heart = np.zeros(v.shape, bool)
    for z in range(5, 25):  # an ellipsoid: widest in the middle, narrowing to the base and the apex
        heart[z] = _disk((n, n), 36, 40, 58.0 * np.sqrt(max(0.0, 1.0 - ((z - 14.5) / 10.5) ** 2)))
    v[heart] = 40.0
    asc_c, desc_c = (32, 38), (56, 50)
    for z in range(nz):
        v[z][_disk((n, n), *desc_c, 12.0)] = 40.0
        if z >= 20:
            v[z][_disk((n, n), *asc_c, 15.0)] = 40.0
    region = np.zeros(v.shape, bool)
    region[:, 15:62, 22:58] = True
    parts = SimpleNamespace(body=body, lung=lung, spine_front=62)
    return v, parts, heart, region, np.full(nz, 40.0), {"asc": asc_c, "desc": desc_c}


def test_both_aortas_are_followed_where_they_are():
    v, parts, heart, region, mid, truth = _chest()
    asc, desc = find_aortas(v, parts, heart, region, mid, CELL)
    assert desc.found and asc.found
    # the descending aorta: every slice above the heart's middle, at its centre, about its radius
    assert set(range(15, 40)) <= set(desc.z.tolist())
    assert np.all(np.abs(desc.y - truth["desc"][0]) <= 1) and np.all(np.abs(desc.x - truth["desc"][1]) <= 1)
    assert np.all(np.abs(desc.radius_mm - 12.0) <= 2.0)
    # the ascending aorta: above the heart at its centre; its root (lowest circle) at the heart's top, not in it
    above = asc.z >= 25
    assert above.sum() >= 10
    assert np.all(np.abs(asc.y[above] - truth["asc"][0]) <= 1) and np.all(np.abs(asc.x[above] - truth["asc"][1]) <= 1)
    assert 15 <= asc.z.min() <= 25


def test_round_things_outside_the_mediastinum_are_not_aortas():
    v, parts, heart, region, mid, truth = _chest()
    for z in range(v.shape[0]):  # a round muscle in the chest wall, in front of the mediastinum, and no vessels
        v[z][v[z] == 40.0] = -100.0
        v[z][_disk(v.shape[1:], 12, 40, 15.0)] = 40.0
    v[heart] = 40.0
    for track in find_aortas(v, parts, heart, region, mid, CELL):
        assert not np.any(track.y < 18)  # whatever round it finds, not the chest wall's
    v[:] = -100.0  # nothing but fat: nothing at all
    assert not any(t.found for t in find_aortas(v, parts, heart, region, mid, CELL))


def test_track_mask_is_the_circles():
    t = AortaTrack(np.array([2, 3]), np.array([10, 10]), np.array([12, 12]), np.array([7.0, 7.0]), np.ones(2))
    m = t.mask((5, 20, 24), CELL)
    assert not m[[0, 1, 4]].any()
    assert m[2, 10, 12] and m[2, 10, 14] and not m[2, 10, 15]  # 2 cells = 7 mm: on the circle; 3 cells: out
    np.testing.assert_array_equal(m[2], m[3])


def test_map_features_of_the_aortas_on_a_phantom():
    case = generate_phantom(case_seed(4242, 3), category="D")
    amap = anatomical_map(triage(SimpleNamespace(hu=case.hu, spacing=case.spacing, meta={})))
    if not (amap.asc_aorta.found and amap.desc_aorta.found):
        pytest.fail(f"aortas not found on a default phantom: {amap.summary()}")
    # inside a tube its signed distance is negative, and the fine mask agrees with it at cell centres
    for which, col in (("asc_aorta", 0), ("desc_aorta", 1)):
        track = getattr(amap, which)
        z, y, x = (np.asarray(a) * b + b // 2 for a, b in zip((track.z, track.y, track.x), amap.block))
        f = amap.aorta_at(z, y, x)
        assert f.shape == (len(z), len(AORTA_MEASURES)) and np.all(f[:, col] < 0)
        assert amap.fine_mask(which, case.hu.shape)[z, y, x].all()
    # the height above the root: zero at the root's slice, growing upward
    t = amap.asc_aorta
    k = np.argsort(t.z)
    z = t.z[k] * amap.block[0] + amap.block[0] // 2
    dz = amap.aorta_at(z, t.y[k] * amap.block[1], t.x[k] * amap.block[2])[:, 2]
    assert abs(dz[0]) < amap.cell_mm[0] and np.all(np.diff(dz) > 0)


def test_a_map_without_aortas_reads_far():
    hu = np.full((20, 128, 128), -1000.0, np.float32)
    hu[:, 20:100, 20:100] = 40.0
    amap = anatomical_map(triage(SimpleNamespace(hu=hu, spacing=(3.0, 1.0, 1.0), meta={})))
    assert amap.at([8], [60], [60]).shape == (1, len(ANATOMY_FEATURES))
    assert not amap.asc_aorta.found and np.isnan(amap.root_z_mm)
    np.testing.assert_array_equal(amap.aorta_at([8], [60], [60]), [[1e3, 1e3, 1e3]])


def test_the_aortas_are_found_only_when_asked_for(monkeypatch):
    import cacnet.anatomy._map as where

    calls = []
    monkeypatch.setattr(where, "find_aortas", lambda *a: calls.append(1) or find_aortas(*a))
    case = generate_phantom(case_seed(4242, 3), category="D")
    amap = anatomical_map(triage(SimpleNamespace(hu=case.hu, spacing=case.spacing, meta={})))
    amap.at([10], [200], [200])
    assert calls == []  # scoring reads ANATOMY_FEATURES only
    first = amap.asc_aorta
    assert amap.desc_aorta is not None and amap.asc_aorta is first and calls == [1]  # found once, kept
