"""Risk categories, CAC-DRS and kVp-specific thresholds (private)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence, Union

from ._errors import InvalidInputError

__all__ = [
    "CATEGORIES",
    "ARTERY_NAMES",
    "CacDrs",
    "category",
    "cac_drs",
    "threshold_for_kvp",
    "KVP_THRESHOLDS",
]

#: The paper's risk categories, in order.
CATEGORIES: tuple[str, ...] = ("A", "B", "C", "D", "E")

#: Conventional artery labels of a label mask.
ARTERY_NAMES: dict[int, str] = {1: "LM", 2: "LAD", 3: "LCX", 4: "RCA"}

#: Upper bounds (inclusive) of categories A-D; E is everything above 400.
_CATEGORY_UPPER = (0.0, 10.0, 100.0, 400.0)

#: Published Agatston thresholds (HU) by tube voltage (kVp).
#: 120 kVp: Agatston et al., JACC 1990. 100 kVp: 147 HU, Nakazato et al.,
#: J Cardiovasc Comput Tomogr 2009. 80 kVp: 167 HU, as used by some vendor
#: tools (see CONVENTIONS.md). Other voltages have no single agreed value.
KVP_THRESHOLDS: dict[int, float] = {80: 167.0, 100: 147.0, 120: 130.0}


def category(score: float) -> str:
    """Risk category of an Agatston score.

    Half-open intervals on real-valued scores: A = 0, B in (0, 10],
    C in (10, 100], D in (100, 400], E > 400.

    Parameters
    ----------
    score : float
        Agatston score (>= 0, finite).

    Returns
    -------
    str
        One of ``"A"`` .. ``"E"``.

    Examples
    --------
    >>> category(0), category(0.5), category(10), category(10.01), category(401)
    ('A', 'B', 'B', 'C', 'E')
    """
    try:
        s = float(score)
    except (TypeError, ValueError):
        raise InvalidInputError(f"score must be a number; got {score!r}.") from None
    if not math.isfinite(s) or s < 0:
        raise InvalidInputError(f"an Agatston score must be finite and >= 0; got {score!r}.")
    for letter, upper in zip(CATEGORIES, _CATEGORY_UPPER):
        if s <= upper:
            return letter
    return CATEGORIES[-1]


@dataclass(frozen=True)
class CacDrs:
    """CAC-DRS (SCCT 2018) Agatston grade and vessel count.

    Attributes
    ----------
    grade : int
        0 (score 0), 1 (0 < s < 100), 2 (100 <= s < 300) or 3 (s >= 300).
    vessels : int
        Number of arteries (LM, LAD, LCX, RCA) with a score > 0.
    total : float
        Sum of the per-artery scores.
    """

    grade: int
    vessels: int
    total: float

    def __str__(self) -> str:
        if self.grade == 0:
            return "CAC-DRS A0"
        return f"CAC-DRS A{self.grade}/N{self.vessels}"

    def to_dict(self) -> dict[str, object]:
        """JSON-ready representation."""
        return {"grade": self.grade, "vessels": self.vessels, "total": self.total, "label": str(self)}


_ArteryScores = Union[Mapping[Union[str, int], float], Sequence[float]]


def cac_drs(per_artery_scores: _ArteryScores) -> CacDrs:
    """CAC-DRS grade and vessel count from per-artery Agatston scores.

    Parameters
    ----------
    per_artery_scores : mapping or sequence
        Either a mapping keyed by artery name (``"LM"``, ``"LAD"``, ``"LCX"``,
        ``"RCA"``) or label (1-4), missing arteries counting as 0, or a
        sequence of four scores in the order LM, LAD, LCX, RCA.

    Returns
    -------
    CacDrs

    Examples
    --------
    >>> str(cac_drs({"LAD": 120.0, "RCA": 30.0}))
    'CAC-DRS A2/N2'
    >>> str(cac_drs([0, 0, 0, 0]))
    'CAC-DRS A0'
    """
    names = list(ARTERY_NAMES.values())
    if isinstance(per_artery_scores, Mapping):
        scores = dict.fromkeys(names, 0.0)
        for key, value in per_artery_scores.items():
            name = ARTERY_NAMES.get(key, key) if isinstance(key, int) else str(key).upper()
            if name not in scores:
                raise InvalidInputError(
                    f"unknown artery {key!r}; expected one of {names} or labels 1-4."
                )
            scores[name] += _check_score(value, name)
        values = list(scores.values())
    else:
        values = [_check_score(v, n) for v, n in zip(per_artery_scores, names)]
        if len(values) != 4 or len(per_artery_scores) != 4:
            raise InvalidInputError(
                f"a sequence of per-artery scores must have 4 values (LM, LAD, LCX, RCA); "
                f"got {len(per_artery_scores)}."
            )
    total = float(sum(values))
    vessels = sum(1 for v in values if v > 0)
    if total == 0:
        grade = 0
    elif total < 100:
        grade = 1
    elif total < 300:
        grade = 2
    else:
        grade = 3
    return CacDrs(grade=grade, vessels=vessels, total=total)


def _check_score(value: object, name: str) -> float:
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise InvalidInputError(f"score of {name} must be a number; got {value!r}.") from None
    if not math.isfinite(v) or v < 0:
        raise InvalidInputError(f"score of {name} must be finite and >= 0; got {value!r}.")
    return v


def threshold_for_kvp(kvp: float) -> float:
    """Published Agatston HU threshold for a tube voltage.

    Parameters
    ----------
    kvp : float
        Tube voltage in kVp (DICOM 0018,0060).

    Returns
    -------
    float
        The threshold in HU to pass as ``threshold_hu`` to :func:`score`.

    Raises
    ------
    InvalidInputError
        For a voltage without a published value (only the voltages in
        :data:`KVP_THRESHOLDS` are known; no interpolation is done).

    Notes
    -----
    The Agatston method is defined at 120 kVp; the density weights are kept
    unchanged at other voltages. Callers should warn when a scan is not
    120 kVp, whatever threshold they use.

    Examples
    --------
    >>> threshold_for_kvp(120), threshold_for_kvp(100)
    (130.0, 147.0)
    """
    try:
        k = float(kvp)
    except (TypeError, ValueError):
        raise InvalidInputError(f"kvp must be a number; got {kvp!r}.") from None
    for known, threshold in KVP_THRESHOLDS.items():
        if abs(k - known) < 0.5:
            return threshold
    raise InvalidInputError(
        f"no published Agatston threshold for {kvp!r} kVp; known: "
        + ", ".join(f"{v} HU at {k} kVp" for k, v in KVP_THRESHOLDS.items())
        + ". Pass threshold_hu explicitly."
    )
