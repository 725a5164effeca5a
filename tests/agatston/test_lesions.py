"""Lesion-level detection metrics and masks from annotation points."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import ndimage

import agatston
from agatston import InvalidInputError

SP = (3.0, 0.5, 0.5)


def two_lesions():
    t = np.zeros((3, 10, 10), bool)
    t[1, 1:3, 1:3] = True  # 4 voxels
    t[0:2, 6:9, 6:9] = True  # 18 voxels
    return t


def test_detection_report_hand_example():
    t = two_lesions()
    p = np.zeros_like(t)
    p[1, 7, 7] = True  # hits the big lesion
    p[2, 0, 9] = True  # false positive
    r = agatston.detection_report(p, t, SP)
    voxel = 3.0 * 0.25
    assert (r.n_true, r.n_pred, r.n_true_detected, r.n_pred_true_positive) == (2, 2, 1, 1)
    assert r.sensitivity_count == 0.5 and r.ppv_count == 0.5
    assert r.true_volume_mm3 == pytest.approx(22 * voxel) and r.detected_volume_mm3 == pytest.approx(18 * voxel)
    assert r.sensitivity_volume == pytest.approx(18 / 22) and r.ppv_volume == pytest.approx(0.5)
    s, q = 18 / 22, 0.5
    assert r.f1_volume == pytest.approx(2 * s * q / (s + q))


def test_detection_report_perfect_and_empty():
    t = two_lesions()
    perfect = agatston.detection_report(t, t, SP)
    assert (perfect.sensitivity_count, perfect.ppv_count, perfect.f1_volume) == (1.0, 1.0, 1.0)
    none = agatston.detection_report(np.zeros_like(t), t, SP)
    assert none.sensitivity_count == 0.0 and none.ppv_count is None and none.f1_volume is None
    assert none.to_dict()["n_pred"] == 0


def test_detection_uses_26_connectivity_and_ignores_labels():
    t = np.zeros((2, 4, 4), np.uint8)
    t[0, 0, 0] = 1
    t[1, 1, 1] = 3  # diagonal neighbour across slices: the same lesion
    r = agatston.detection_report(t > 0, t, SP)
    assert r.n_true == 1 and r.n_pred == 1


@given(arrays(np.bool_, (3, 6, 6)), arrays(np.bool_, (3, 6, 6)))
def test_detection_sensitivity_is_ppv_with_roles_swapped(p, t):
    a = agatston.detection_report(p, t, SP)
    b = agatston.detection_report(t, p, SP)
    assert a.sensitivity_count == b.ppv_count and a.sensitivity_volume == b.ppv_volume


def test_detection_report_rejects_shape_mismatch():
    with pytest.raises(InvalidInputError, match="predicted_mask has shape"):
        agatston.detection_report(np.zeros((2, 3, 3), bool), np.zeros((2, 3, 4), bool), SP)


def volume_with_lesions():
    hu = np.zeros((3, 12, 12))
    hu[0, 1:3, 1:3] = 300  # lesion a
    hu[1, 3, 3] = 500  # joins lesion a diagonally across slices
    hu[1, 8:10, 8:10] = 200  # lesion b
    hu[2, 0, 11] = 900  # lesion c (never annotated)
    return hu


def test_mask_from_points_takes_whole_3d_components():
    hu = volume_with_lesions()
    r = agatston.mask_from_points(hu, [[0, 1.4, 1.6], [1, 8, 9]])
    expected = (hu >= 130) & ~((np.arange(12)[None, None, :] == 11) & (np.arange(3)[:, None, None] == 2))
    assert r.mask.dtype == bool and (r.mask == expected).all()
    assert [p.status for p in r.points] == ["inside", "inside"] and r.missed == ()


def test_point_below_threshold_is_snapped_within_1_mm_or_reported():
    hu = volume_with_lesions()
    near = [1, 7, 9]  # 0.5 mm from lesion b (200 HU)
    far = [1, 5, 9]  # 1.5 mm away
    no_spacing = agatston.mask_from_points(hu, [near])
    assert no_spacing.missed == (0,) and not no_spacing.mask.any()
    r = agatston.mask_from_points(hu, [near, far], spacing=SP)
    assert r.snapped == (0,) and r.missed == (1,)
    assert r.points[0].used_voxel == (1, 8, 9) and r.mask.sum() == 4
    wider = agatston.mask_from_points(hu, [far], spacing=SP, snap_mm=1.5)
    assert wider.snapped == (0,) and wider.mask.sum() == 4


def test_snapping_prefers_the_densest_voxel():
    hu = np.zeros((1, 5, 5))
    hu[0, 2, 1] = 150  # 0.5 mm away
    hu[0, 2, 4] = 700  # 1.0 mm away, denser: wins
    r = agatston.mask_from_points(hu, [[0, 2, 2]], spacing=(3.0, 0.5, 0.5))
    assert r.points[0].used_voxel == (0, 2, 4)


def test_labels_and_conflicts():
    hu = volume_with_lesions()
    r = agatston.mask_from_points(hu, [[0, 1, 1], [1, 3, 3], [1, 9, 9], [0, 2, 2]], labels=[2, 3, 4, 2])
    assert r.mask.dtype == np.uint8
    assert r.mask[0, 1, 1] == 2 and r.mask[1, 3, 3] == 2  # majority label of the component
    assert r.mask[1, 9, 9] == 4 and r.mask[2, 0, 11] == 0
    assert r.conflicts == ((0, 1, 3),)


@pytest.mark.parametrize(
    "points, kwargs, message",
    [
        ([[3, 0, 0]], {}, r"outside the volume of shape \(3, 12, 12\)"),
        ([[0, -1, 0]], {}, "outside the volume"),
        ([[0, 0]], {}, r"shape \(n, 3\)"),
        ([[0, 0, np.nan]], {}, "NaN"),
        ([[0, 0, 0]], {"labels": [0]}, "one positive integer per point"),
        ([[0, 0, 0]], {"labels": [1, 2]}, "one positive integer per point"),
    ],
)
def test_mask_from_points_rejects_bad_points(points, kwargs, message):
    with pytest.raises(InvalidInputError, match=message):
        agatston.mask_from_points(volume_with_lesions(), points, **kwargs)


@given(arrays(np.float64, (3, 8, 8), elements=st.sampled_from([0.0, 100.0, 150.0, 400.0])), st.data())
def test_points_reproduce_the_components_they_hit(hu, data):
    comps, n = ndimage.label(hu >= 130, structure=np.ones((3, 3, 3)))
    chosen = data.draw(st.sets(st.integers(1, max(n, 1)), max_size=n)) if n else set()
    points = [np.argwhere(comps == k)[0] for k in sorted(chosen)]
    r = agatston.mask_from_points(hu, np.array(points).reshape(-1, 3))
    assert (r.mask == np.isin(comps, list(chosen))).all()
