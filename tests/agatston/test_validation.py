"""Bad input raises InvalidInputError (a ValueError) with a specific message."""

import numpy as np
import pytest

import agatston
from agatston import InvalidInputError

HU = np.zeros((2, 4, 4))
SP = (3.0, 0.5, 0.5)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(hu=np.zeros((4, 4))), r"3D array indexed \(z, y, x\); got 2 dimension.*hu\[np.newaxis\]"),
        (dict(hu=np.zeros((1, 2, 4, 4))), r"3D array .* got 4 dimension"),
        (dict(hu=np.zeros((0, 4, 4))), r"empty"),
        (dict(hu=np.full((2, 4, 4), np.nan)), r"32 NaN and 0 infinite"),
        (dict(hu=np.array([[[np.inf]]])), r"0 NaN and 1 infinite"),
        (dict(hu=np.zeros((2, 4, 4), bool)), r"numeric array of Hounsfield units; got dtype bool"),
        (dict(hu=np.array([[["a"]]])), r"numeric array"),
        (dict(spacing=(3.0, 0.5)), r"exactly three values"),
        (dict(spacing=(3.0, 0.0, 0.5)), r"positive finite"),
        (dict(spacing=(3.0, -0.5, 0.5)), r"positive finite"),
        (dict(spacing=(np.nan, 0.5, 0.5)), r"positive finite"),
        (dict(spacing="abc"), r"three numbers"),
        (dict(spacing=None), r"three numbers"),
        (dict(mask=np.zeros((2, 4, 5), bool)), r"mask has shape \(2, 4, 5\) but hu has shape \(2, 4, 4\)"),
        (dict(mask=np.zeros((2, 4, 4), float)), r"boolean or integer labels; got dtype float64"),
        (dict(mask=-np.ones((2, 4, 4), np.int8)), r"negative labels"),
        (dict(connectivity=6), r"connectivity must be 4 or 8"),
        (dict(connectivity=True), r"connectivity must be 4 or 8"),
        (dict(threshold_hu=np.nan), r"threshold_hu must be finite"),
        (dict(min_area_mm2=-1.0), r"min_area_mm2 must be >= 0"),
        (dict(min_voxels=0), r"min_voxels must be an integer >= 1"),
        (dict(min_voxels=2.5), r"min_voxels must be an integer >= 1"),
        (dict(calibration=0.0), r"calibration must be > 0"),
        (dict(calibration="x"), r"calibration must be a number"),
        (dict(water_hu=200.0), r"water_hu .* must be below threshold_hu"),
    ],
)
def test_score_rejects_bad_input(kwargs, message):
    args = dict(hu=HU, spacing=SP)
    args.update(kwargs)
    with pytest.raises(InvalidInputError, match=message) as info:
        agatston.score(**args)
    assert isinstance(info.value, ValueError)


def test_error_class_is_exported_and_a_value_error():
    assert issubclass(agatston.InvalidInputError, ValueError)
