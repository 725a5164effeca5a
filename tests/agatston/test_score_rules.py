"""Hand-computed examples for every scoring rule."""

import json
import math

import numpy as np
import pytest

import agatston

SP = (3.0, 0.5, 0.5)  # 4 pixels = 1 mm^2; dz = 3 so Agatston = area * factor


def blob(value, shape=(1, 12, 12), at=(0, 2, 2), size=(2, 2), background=0.0):
    hu = np.full(shape, background, dtype=float)
    z, y, x = at
    hu[z, y : y + size[0], x : x + size[1]] = value
    return hu


@pytest.mark.parametrize(
    "value, factor",
    [(129.9, 0), (130.0, 1), (199.5, 1), (199.99, 1), (200.0, 2), (299.99, 2), (300.0, 3), (399.0, 3),
     (399.99, 3), (400.0, 4), (1500.0, 4)],
)
def test_density_bands_are_half_open(value, factor):
    r = agatston.score(blob(value), SP)
    assert r.agatston == pytest.approx(1.0 * factor)
    assert agatston.density_factor(value) == max(factor, 1)


def test_factor_comes_from_the_maximum_not_the_mean():
    hu = blob(150.0)
    hu[0, 2, 2] = 450.0
    r = agatston.score(hu, SP)
    (les,) = r.lesions
    assert les.density_factor == 4 and r.agatston == pytest.approx(4.0)
    assert les.max_hu == 450.0 and les.mean_hu == pytest.approx((450 + 3 * 150) / 4)


def test_connectivity_8_joins_diagonal_blocks_4_does_not():
    hu = blob(150.0, size=(2, 2))
    hu[0, 4:6, 4:6] = 450.0  # touches the first block at one corner only
    r8 = agatston.score(hu, SP, connectivity=8)
    r4 = agatston.score(hu, SP, connectivity=4)
    assert len(r8.lesions) == 1 and r8.agatston == pytest.approx(2.0 * 4)
    assert len(r4.lesions) == 2 and r4.agatston == pytest.approx(1.0 * 1 + 1.0 * 4)


def test_min_area_exactly_at_the_boundary_counts():
    four = agatston.score(blob(250.0, size=(2, 2)), SP)  # 1.00 mm^2
    three = agatston.score(blob(250.0, size=(1, 3)), SP)  # 0.75 mm^2
    assert four.agatston == pytest.approx(2.0) and len(four.lesions) == 1
    assert three.agatston == 0.0 and three.lesions == ()


def test_min_area_boundary_survives_floating_point():
    d = math.sqrt(0.2)
    assert 5 * (d * d) < 1.0  # 0.9999999999999999 in floating point
    r = agatston.score(blob(250.0, size=(1, 5)), (3.0, d, d))
    assert len(r.lesions) == 1
    assert agatston.score(blob(250.0, size=(1, 4)), (3.0, d, d)).lesions == ()


def test_the_papers_rule_counts_three_voxels_of_any_area():
    sp = (3.0, 0.1, 0.1)
    three = agatston.score(blob(250.0, size=(1, 3)), sp, min_voxels=3, min_area_mm2=0.0)
    two = agatston.score(blob(250.0, size=(1, 2)), sp, min_voxels=3, min_area_mm2=0.0)
    assert three.agatston == pytest.approx(0.03 * 2) and two.agatston == 0.0
    assert agatston.score(blob(250.0, size=(1, 3)), sp).agatston == 0.0  # default: 1 mm^2


@pytest.mark.parametrize("dz", [1.5, 2.5, 3.0, 5.0])
def test_dz_over_three_scaling(dz):
    r = agatston.score(blob(450.0), (dz, 0.5, 0.5))
    assert r.agatston == pytest.approx(4.0 * dz / 3)
    assert r.volume_mm3 == pytest.approx(1.0 * dz)


def test_mass_score_with_and_without_water_reference():
    r = agatston.score(blob(250.0), SP, calibration=0.8)
    assert r.mass_mg == pytest.approx(0.8 * 3.0 * 250.0 / 1000)
    rw = agatston.score(blob(250.0), SP, calibration=0.8, water_hu=50.0)
    assert rw.mass_mg == pytest.approx(0.8 * 3.0 * 200.0 / 1000)
    assert agatston.score(blob(250.0), SP).mass_mg is None


def test_slices_are_scored_separately_and_grouped_into_3d_lesions():
    hu = np.zeros((3, 12, 12))
    hu[:, 2:4, 2:4] = 250.0  # one 3D lesion over three slices
    hu[1, 8:10, 8:10] = 450.0  # another one
    r = agatston.score(hu, SP)
    assert len(r.lesions) == 4 and r.n_lesions == 2
    assert [les.slice_index for les in r.lesions] == [0, 1, 1, 2]
    assert {les.lesion_id for les in r.lesions if les.max_hu == 250.0} == {1}
    assert [les.lesion_id for les in r.lesions if les.max_hu == 450.0] == [2]
    assert r.agatston == pytest.approx(3 * 2.0 + 4.0)


def test_mask_restricts_candidates():
    hu = blob(450.0)
    hu[0, 8:10, 8:10] = 450.0
    mask = np.zeros(hu.shape, bool)
    mask[0, 0:5, 0:5] = True  # covers the first blob only
    r = agatston.score(hu, SP, mask)
    assert r.agatston == pytest.approx(4.0) and r.by_label == {}
    mask[0, 9, 9] = True  # one pixel of the second blob: 0.25 mm^2, below the area rule
    assert agatston.score(hu, SP, mask).agatston == pytest.approx(4.0)


def test_labels_split_components_and_sum_to_total():
    hu = blob(450.0, size=(2, 4))
    labels = np.zeros(hu.shape, np.uint8)
    labels[0, 2:4, 2:4] = 2  # LAD half
    labels[0, 2:4, 4:6] = 3  # LCX half
    labels[0, 10, 10] = 1  # LM present but below threshold
    r = agatston.score(hu, SP, labels)
    assert sorted(r.by_label) == [1, 2, 3]
    assert r.by_label[2].agatston == pytest.approx(4.0) and r.by_label[3].agatston == pytest.approx(4.0)
    assert r.by_label[1].agatston == 0.0 and r.by_label[1].category == "A"
    assert r.agatston == pytest.approx(8.0) and len(r.lesions) == 2 and r.n_lesions == 2
    assert {les.label for les in r.lesions} == {2, 3}


def test_lesion_record_fields():
    hu = blob(300.0, at=(0, 5, 6), size=(2, 3))
    r = agatston.score(hu, SP, calibration=1.0)
    (les,) = r.lesions
    assert les.slice_index == 0 and les.label == 1 and les.n_voxels == 6
    assert les.area_mm2 == pytest.approx(1.5) and les.density_factor == 3
    assert les.agatston == pytest.approx(4.5) and les.volume_mm3 == pytest.approx(4.5)
    assert les.mass_mg == pytest.approx(4.5 * 300 / 1000)
    assert les.centroid_yx == pytest.approx((5.5, 7.0)) and les.lesion_id == 1


def test_no_candidates_gives_zero_and_category_a():
    r = agatston.score(np.full((2, 5, 5), 129.0), SP, calibration=0.8)
    assert (r.agatston, r.volume_mm3, r.mass_mg, r.category, r.lesions) == (0.0, 0.0, 0.0, "A", ())


def test_integer_hu_input_and_json_round_trip():
    hu = blob(450, background=-1000).astype(np.int16)
    labels = (hu > 0).astype(np.uint8) * 4
    r = agatston.score(hu, SP, labels, calibration=0.75)
    d = json.loads(json.dumps(r.to_dict()))
    assert d["agatston"] == pytest.approx(4.0) and d["category"] == "B"
    assert d["by_label"]["4"]["name"] == "RCA" and d["by_label"]["4"]["category"] == "B"
    assert d["lesions"][0]["density_factor"] == 4 and d["settings"]["connectivity"] == 8
    assert "lesions" not in r.to_dict(include_lesions=False)


def test_threshold_override():
    hu = blob(150.0)
    assert agatston.score(hu, SP, threshold_hu=agatston.threshold_for_kvp(80)).agatston == 0.0
    assert agatston.score(hu, SP, threshold_hu=agatston.threshold_for_kvp(100)).agatston == pytest.approx(1.0)
