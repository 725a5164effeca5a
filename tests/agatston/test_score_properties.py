"""Property-based tests of agatston.score against a naive reference."""

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import agatston

from .reference import naive_score

HU_VALUES = [-1000.0, -50.0, 0.0, 129.9, 130.0, 150.0, 199.5, 200.0, 250.0, 299.99, 300.0, 399.0,
             400.0, 900.0]


@st.composite
def volumes(draw, max_side=9):
    shape = draw(st.tuples(st.integers(1, 3), st.integers(1, max_side), st.integers(1, max_side)))
    hu = draw(arrays(np.float64, shape, elements=st.sampled_from(HU_VALUES)))
    return hu


@st.composite
def cases(draw):
    hu = draw(volumes())
    kind = draw(st.sampled_from(["none", "bool", "labels"]))
    if kind == "bool":
        mask = draw(arrays(np.bool_, hu.shape))
    elif kind == "labels":
        mask = draw(arrays(np.uint8, hu.shape, elements=st.integers(0, 4)))
    else:
        mask = None
    spacing = draw(st.tuples(*[st.sampled_from([0.4, 0.5, 0.7, 1.0, 2.5, 3.0])] * 3))
    kwargs = dict(
        min_area_mm2=draw(st.sampled_from([0.0, 0.5, 1.0, 2.0])),
        min_voxels=draw(st.integers(1, 4)),
        connectivity=draw(st.sampled_from([4, 8])),
        calibration=draw(st.sampled_from([None, 0.75])),
    )
    return hu, spacing, mask, kwargs


@given(cases())
def test_matches_naive_reference(case):
    hu, spacing, mask, kwargs = case
    fast = agatston.score(hu, spacing, mask, **kwargs)
    ref = naive_score(hu, spacing, mask, **kwargs)
    assert fast.agatston == pytest.approx(ref["agatston"], rel=1e-12, abs=1e-12)
    assert fast.volume_mm3 == pytest.approx(ref["volume"], rel=1e-12, abs=1e-12)
    assert len(fast.lesions) == ref["n_fragments"]
    if kwargs["calibration"] is None:
        assert fast.mass_mg is None
    else:
        assert fast.mass_mg == pytest.approx(ref["mass"], rel=1e-12, abs=1e-12)
    assert {k: v.agatston for k, v in fast.by_label.items()} == pytest.approx(ref["by_label"])
    assert sum(les.agatston for les in fast.lesions) == pytest.approx(fast.agatston)


@given(cases(), st.integers(0, 3), st.integers(0, 4), st.integers(0, 4))
def test_invariant_under_translation(case, pz, py, px):
    hu, spacing, mask, kwargs = case
    pad = ((pz, 1), (py, 2), (px, 0))
    hu2 = np.pad(hu, pad, constant_values=-1000.0)
    mask2 = None if mask is None else np.pad(mask, pad)
    a = agatston.score(hu, spacing, mask, **kwargs)
    b = agatston.score(hu2, spacing, mask2, **kwargs)
    assert b.agatston == pytest.approx(a.agatston) and b.volume_mm3 == pytest.approx(a.volume_mm3)
    assert [les.slice_index - pz for les in b.lesions] == [les.slice_index for les in a.lesions]


@given(cases(), st.sampled_from([0, 1, 2]))
def test_invariant_under_flips(case, axis):
    hu, spacing, mask, kwargs = case
    flip = lambda a: None if a is None else np.flip(a, axis=axis)  # noqa: E731
    a = agatston.score(hu, spacing, mask, **kwargs)
    b = agatston.score(flip(hu), spacing, flip(mask), **kwargs)
    assert b.agatston == pytest.approx(a.agatston) and b.volume_mm3 == pytest.approx(a.volume_mm3)
    assert sorted(les.agatston for les in b.lesions) == pytest.approx(sorted(les.agatston for les in a.lesions))


@given(volumes(), volumes(), st.sampled_from([4, 8]))
def test_additive_over_separated_lesions(hu_a, hu_b, connectivity):
    z = max(hu_a.shape[0], hu_b.shape[0])
    y = max(hu_a.shape[1], hu_b.shape[1])
    both = np.full((z, y, hu_a.shape[2] + 1 + hu_b.shape[2]), -1000.0)
    both[: hu_a.shape[0], : hu_a.shape[1], : hu_a.shape[2]] = hu_a
    both[: hu_b.shape[0], : hu_b.shape[1], hu_a.shape[2] + 1 :] = hu_b
    sp = (3.0, 0.5, 0.5)
    total = agatston.score(both, sp, connectivity=connectivity)
    a = agatston.score(hu_a, sp, connectivity=connectivity)
    b = agatston.score(hu_b, sp, connectivity=connectivity)
    assert total.agatston == pytest.approx(a.agatston + b.agatston)
    assert total.volume_mm3 == pytest.approx(a.volume_mm3 + b.volume_mm3)
    assert total.n_lesions == a.n_lesions + b.n_lesions


@given(arrays(np.float64, st.tuples(st.integers(1, 3), st.integers(1, 8), st.integers(1, 8)),
              elements=st.floats(-2000, 129.99)))
def test_zero_when_everything_is_below_threshold(hu):
    r = agatston.score(hu, (3.0, 0.5, 0.5), min_area_mm2=0.0)
    assert (r.agatston, r.volume_mm3, r.lesions, r.category) == (0.0, 0.0, (), "A")


@given(cases(), st.data())
def test_monotone_in_hu(case, data):
    hu, spacing, mask, kwargs = case
    delta = data.draw(arrays(np.float64, hu.shape, elements=st.sampled_from([0.0, 0.5, 50.0, 300.0])))
    a = agatston.score(hu, spacing, mask, **kwargs)
    b = agatston.score(hu + delta, spacing, mask, **kwargs)
    assert b.agatston >= a.agatston - 1e-9
    assert b.volume_mm3 >= a.volume_mm3 - 1e-9


@given(cases(), st.sampled_from([0.5, 2.0, 3.0, 1 / 3]))
def test_scales_with_dz(case, k):
    hu, (dz, dy, dx), mask, kwargs = case
    a = agatston.score(hu, (dz, dy, dx), mask, **kwargs)
    b = agatston.score(hu, (dz * k, dy, dx), mask, **kwargs)
    assert b.agatston == pytest.approx(k * a.agatston) and b.volume_mm3 == pytest.approx(k * a.volume_mm3)


@given(cases(), st.sampled_from([0.5, 2.0, 1.5]))
def test_scales_with_pixel_area(case, s):
    hu, (dz, dy, dx), mask, kwargs = case
    a = agatston.score(hu, (dz, dy, dx), mask, **kwargs)
    kwargs = dict(kwargs, min_area_mm2=kwargs["min_area_mm2"] * s * s)
    b = agatston.score(hu, (dz, dy * s, dx * s), mask, **kwargs)
    assert b.agatston == pytest.approx(s * s * a.agatston)
    assert len(b.lesions) == len(a.lesions)


@given(cases())
def test_boolean_mask_equals_labels_merged(case):
    hu, spacing, mask, kwargs = case
    assume(mask is not None and mask.dtype != bool)
    merged = agatston.score(hu, spacing, mask.astype(bool), **kwargs)
    per_label = agatston.score(hu, spacing, mask, **kwargs)
    # Splitting by label can only drop area below the area rule, never add it.
    assert per_label.agatston <= merged.agatston + 1e-9
    assert sum(v.agatston for v in per_label.by_label.values()) == pytest.approx(per_label.agatston)
