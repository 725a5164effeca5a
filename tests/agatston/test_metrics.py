"""Agreement metrics against hand-computed values and naive references."""

import itertools
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import agatston
from agatston import InvalidInputError

letters = st.lists(st.sampled_from("ABCDE"), min_size=2, max_size=40)


def naive_c_index(pred, true):
    num = den = 0.0
    for i, j in itertools.combinations(range(len(true)), 2):
        if true[i] == true[j]:
            continue
        den += 1
        if pred[i] == pred[j]:
            num += 0.5
        elif (pred[i] < pred[j]) == (true[i] < true[j]):
            num += 1
    return num / den if den else math.nan


def test_c_index_hand_example():
    # pairs with different truth: (A,B) (A,C) (B,C); predictions A,A,C tie the first
    assert agatston.c_index(["A", "A", "C"], ["A", "B", "C"]) == pytest.approx(2.5 / 3)
    assert agatston.c_index([3, 2, 1], [1, 2, 3]) == 0.0
    assert math.isnan(agatston.c_index("ABC", "BBB"))


@given(st.data())
def test_c_index_matches_naive_reference(data):
    true = data.draw(letters)
    pred = data.draw(st.lists(st.sampled_from("ABCDE"), min_size=len(true), max_size=len(true)))
    expected = naive_c_index(pred, true)
    got = agatston.c_index(pred, true)
    assert (math.isnan(got) and math.isnan(expected)) or got == pytest.approx(expected)


@given(letters)
def test_c_index_is_one_for_perfect_predictions(true):
    if len(set(true)) > 1:
        assert agatston.c_index(true, true) == 1.0


@given(st.lists(st.floats(0, 2000), min_size=2, max_size=30), st.data())
def test_c_index_symmetric_when_reversing_both_and_bounded(scores, data):
    true = data.draw(st.lists(st.sampled_from("ABCDE"), min_size=len(scores), max_size=len(scores)))
    codes = ["ABCDE".index(t) for t in true]
    c = agatston.c_index(scores, true)
    if math.isnan(c):
        return
    assert 0.0 <= c <= 1.0
    assert agatston.c_index([-s for s in scores], [-k for k in codes]) == pytest.approx(c)


def test_c_index_accepts_scores_against_letters_and_lower_case():
    assert agatston.c_index([0.0, 5.0, 50.0, 150.0, 900.0], list("abcde")) == 1.0


def test_accuracy_and_confusion_matrix():
    pred, true = list("AABCEE"), list("ABBCDE")
    assert agatston.accuracy(pred, true) == pytest.approx(4 / 6)
    m = agatston.confusion_matrix(pred, true)
    assert m.shape == (5, 5) and m.sum() == 6
    assert m[1, 0] == 1 and m[1, 1] == 1 and m[3, 4] == 1 and np.trace(m) == 4
    assert (agatston.confusion_matrix([0, 1, 2, 3, 4], "ABCDE") == np.eye(5, dtype=int)).all()


def test_weighted_kappa_hand_example():
    assert agatston.weighted_kappa("AABB", "ABBB") == pytest.approx(0.5)
    assert agatston.weighted_kappa("ABCDE", "ABCDE") == 1.0
    assert math.isnan(agatston.weighted_kappa("AAA", "AAA"))


@given(st.data())
def test_weighted_kappa_symmetric_and_at_most_one(data):
    a = data.draw(letters)
    b = data.draw(st.lists(st.sampled_from("ABCDE"), min_size=len(a), max_size=len(a)))
    k = agatston.weighted_kappa(a, b)
    if not math.isnan(k):
        assert k <= 1.0 + 1e-12
        assert agatston.weighted_kappa(b, a) == pytest.approx(k)


def test_icc_shrout_fleiss_table():
    # Shrout & Fleiss (1979), Table 2: six targets, four judges; ICC(2,1) = 0.29.
    data = np.array([[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8], [7, 1, 2, 6], [10, 5, 6, 9], [6, 2, 4, 7]], float)
    assert agatston.icc(*data.T) == pytest.approx(0.2898, abs=5e-4)


def test_icc_two_raters():
    a = [0.0, 10.0, 100.0, 400.0]
    assert agatston.icc(a, a) == 1.0
    shifted = agatston.icc(a, [x + 50 for x in a])  # absolute agreement penalises bias
    assert 0.9 < shifted < 1.0
    assert math.isnan(agatston.icc([1, 1], [1, 1]))
    with pytest.raises(InvalidInputError, match="at least 2 cases"):
        agatston.icc([1.0], [1.0])


def test_bland_altman():
    ba = agatston.bland_altman([12.0, 20.0, 33.0], [10.0, 20.0, 30.0])
    d = np.array([2.0, 0.0, 3.0])
    assert ba.bias == pytest.approx(d.mean()) and ba.sd == pytest.approx(d.std(ddof=1))
    assert ba.lower == pytest.approx(d.mean() - 1.96 * d.std(ddof=1))
    assert ba.upper == pytest.approx(d.mean() + 1.96 * d.std(ddof=1)) and ba.n == 3
    assert agatston.bland_altman([1.0], [0.0]).to_dict()["sd"] is None


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: agatston.accuracy("AB", "ABC"), "same length"),
        (lambda: agatston.accuracy("AX", "AB"), "'X', which is not a category letter"),
        (lambda: agatston.accuracy([0.5, 1], [0, 1]), "integer codes 0-4.*agatston.category"),
        (lambda: agatston.accuracy([0, 7], [0, 1]), "integer codes 0-4"),
        (lambda: agatston.c_index([], []), "empty"),
        (lambda: agatston.c_index(["A", 1], ["A", "B"]), "mixes category letters and numbers"),
        (lambda: agatston.c_index([math.nan, 1], [0, 1]), "NaN"),
        (lambda: agatston.icc([1, 2], [1, 2, 3]), "same number of cases"),
    ],
)
def test_metrics_reject_bad_input(call, message):
    with pytest.raises(InvalidInputError, match=message):
        call()
