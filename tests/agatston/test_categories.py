"""Risk categories, CAC-DRS and kVp thresholds."""

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

import agatston
from agatston import InvalidInputError


@pytest.mark.parametrize(
    "score, letter",
    [(0, "A"), (0.0, "A"), (1e-9, "B"), (1, "B"), (10, "B"), (10.000001, "C"), (100, "C"),
     (100.5, "D"), (400, "D"), (400.01, "E"), (5000, "E")],
)
def test_category_intervals(score, letter):
    assert agatston.category(score) == letter


@given(st.floats(0, 1e5), st.floats(0, 1e5))
def test_category_is_monotone(a, b):
    lo, hi = sorted((a, b))
    assert agatston.category(lo) <= agatston.category(hi)


@pytest.mark.parametrize("bad", [-1, math.nan, math.inf, "x", None])
def test_category_rejects_bad_scores(bad):
    with pytest.raises(InvalidInputError):
        agatston.category(bad)


@pytest.mark.parametrize(
    "scores, grade, vessels, text",
    [
        ({}, 0, 0, "CAC-DRS A0"),
        ({"LAD": 0.5}, 1, 1, "CAC-DRS A1/N1"),
        ({"LAD": 60, "RCA": 39.9}, 1, 2, "CAC-DRS A1/N2"),
        ({"LAD": 60, "RCA": 40}, 2, 2, "CAC-DRS A2/N2"),
        ({1: 100, 2: 100, 3: 99.9}, 2, 3, "CAC-DRS A2/N3"),
        ([1, 1, 1, 297], 3, 4, "CAC-DRS A3/N4"),
        ({"lcx": 1000}, 3, 1, "CAC-DRS A3/N1"),
    ],
)
def test_cac_drs(scores, grade, vessels, text):
    result = agatston.cac_drs(scores)
    assert (result.grade, result.vessels, str(result)) == (grade, vessels, text)
    assert result.to_dict()["label"] == text


@pytest.mark.parametrize("bad", [{"PDA": 3}, {5: 1}, [1, 2, 3], {"LAD": -1}, {"LAD": math.nan}])
def test_cac_drs_rejects_bad_input(bad):
    with pytest.raises(InvalidInputError):
        agatston.cac_drs(bad)


def test_kvp_thresholds():
    assert agatston.threshold_for_kvp(120) == 130.0
    assert agatston.threshold_for_kvp(100.0) == 147.0
    assert agatston.threshold_for_kvp(80) == 167.0
    with pytest.raises(InvalidInputError, match="no published Agatston threshold for 135 kVp.*threshold_hu"):
        agatston.threshold_for_kvp(135)
