"""Agatston, volume and mass calcium scores, risk categories and agreement metrics.

Depends on numpy and scipy only. Arrays are indexed (z, y, x); spacings are
(dz, dy, dx) in millimetres and always passed explicitly.

Examples
--------
>>> import numpy as np, agatston
>>> hu = np.zeros((1, 10, 10)); hu[0, 2:4, 2:4] = 450.0
>>> agatston.score(hu, spacing=(3.0, 0.5, 0.5)).agatston
4.0
"""

from ._categories import (
    ARTERY_NAMES,
    CATEGORIES,
    KVP_THRESHOLDS,
    CacDrs,
    cac_drs,
    category,
    threshold_for_kvp,
)
from ._errors import InvalidInputError
from ._lesions import DetectionReport, PointOutcome, PointsMask, detection_report, mask_from_points
from ._metrics import (
    BlandAltman,
    accuracy,
    bland_altman,
    c_index,
    confusion_matrix,
    icc,
    weighted_kappa,
)
from ._score import Lesion, Scores, ScoreResult, density_factor, score
from ._version import __version__  # the distribution's release (CHANGELOG.md)

__all__ = [
    "ARTERY_NAMES",
    "CATEGORIES",
    "KVP_THRESHOLDS",
    "BlandAltman",
    "CacDrs",
    "DetectionReport",
    "InvalidInputError",
    "Lesion",
    "PointOutcome",
    "PointsMask",
    "ScoreResult",
    "Scores",
    "accuracy",
    "bland_altman",
    "c_index",
    "cac_drs",
    "category",
    "confusion_matrix",
    "density_factor",
    "detection_report",
    "icc",
    "mask_from_points",
    "score",
    "threshold_for_kvp",
    "weighted_kappa",
]
