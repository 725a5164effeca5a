"""Agreement metrics between predicted and reference scores (private)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np

from ._categories import CATEGORIES
from ._errors import InvalidInputError

__all__ = [
    "c_index",
    "accuracy",
    "confusion_matrix",
    "weighted_kappa",
    "icc",
    "BlandAltman",
    "bland_altman",
]

_LETTER_CODE = {letter: i for i, letter in enumerate(CATEGORIES)}


def _as_ordinal(values: Any, name: str) -> np.ndarray:
    """Category letters (A-E) -> 0..4; numbers -> float. Always 1D."""
    seq = list(values) if not isinstance(values, np.ndarray) else values.ravel().tolist()
    if not seq:
        raise InvalidInputError(f"{name} is empty; expected at least one value.")
    if all(isinstance(v, str) for v in seq):
        try:
            return np.array([_LETTER_CODE[v.strip().upper()] for v in seq], dtype=np.float64)
        except KeyError as err:
            raise InvalidInputError(
                f"{name} contains {err.args[0]!r}, which is not a category letter A-E."
            ) from None
    if any(isinstance(v, str) for v in seq):
        raise InvalidInputError(f"{name} mixes category letters and numbers; use one kind.")
    try:
        arr = np.asarray(seq, dtype=np.float64)
    except (TypeError, ValueError):
        raise InvalidInputError(f"{name} must hold category letters or numbers.") from None
    if not np.isfinite(arr).all():
        raise InvalidInputError(f"{name} contains NaN or infinite values.")
    return arr


def _as_codes(values: Any, name: str) -> np.ndarray:
    """Category letters or integer codes 0..4 -> int codes."""
    arr = _as_ordinal(values, name)
    if np.any(arr != np.round(arr)) or arr.min() < 0 or arr.max() >= len(CATEGORIES):
        raise InvalidInputError(
            f"{name} must hold category letters A-E or integer codes 0-4; got values in "
            f"[{arr.min()}, {arr.max()}]. Convert Agatston scores with agatston.category first."
        )
    return arr.astype(np.int64)


def _pair(predicted: Any, true: Any, conv) -> tuple[np.ndarray, np.ndarray]:
    p = conv(predicted, "predicted")
    t = conv(true, "true")
    if p.shape != t.shape:
        raise InvalidInputError(
            f"predicted and true must have the same length; got {p.size} and {t.size}."
        )
    return p, t


def c_index(predicted: Sequence[Any], true: Sequence[Any]) -> float:
    """Harrell's concordance index between predicted and true rankings.

    Over all pairs of cases whose true values differ, the fraction whose
    predicted values are ordered the same way; a tie in prediction counts 1/2.

    Parameters
    ----------
    predicted, true : sequence
        Category letters (``"A"`` .. ``"E"``) or ordinal numbers (category
        codes or raw scores). Each sequence is read on its own, so letters
        can be compared with scores.

    Returns
    -------
    float
        In [0, 1]; 1 is perfect, 0.5 random. NaN when all true values are
        equal (no comparable pair).

    Examples
    --------
    >>> c_index(["A", "B", "C"], ["A", "B", "C"])
    1.0
    >>> c_index(["A", "A", "C"], ["A", "B", "C"])
    0.8333333333333334
    """
    p, t = _pair(predicted, true, _as_ordinal)
    concordant = 0.0
    comparable = 0
    chunk = max(1, 4_000_000 // p.size)
    for start in range(0, p.size, chunk):
        dt = np.sign(t[start : start + chunk, None] - t[None, :])
        dp = np.sign(p[start : start + chunk, None] - p[None, :])
        valid = dt != 0
        comparable += int(valid.sum())
        concordant += float(np.sum(valid & (dp == dt))) + 0.5 * float(np.sum(valid & (dp == 0)))
    return concordant / comparable if comparable else math.nan


def accuracy(predicted: Sequence[Any], true: Sequence[Any]) -> float:
    """Fraction of cases whose predicted category equals the true one.

    Parameters
    ----------
    predicted, true : sequence
        Category letters A-E or integer codes 0-4.

    Examples
    --------
    >>> accuracy("ABCD", "ABCE")
    0.75
    """
    p, t = _pair(predicted, true, _as_codes)
    return float(np.mean(p == t))


def confusion_matrix(predicted: Sequence[Any], true: Sequence[Any]) -> np.ndarray:
    """5 x 5 confusion matrix of categories A-E.

    Rows are the true category, columns the predicted one
    (``m[i, j]`` counts cases of true category i predicted as j).

    Examples
    --------
    >>> confusion_matrix("AB", "AA")[0].tolist()
    [1, 1, 0, 0, 0]
    """
    p, t = _pair(predicted, true, _as_codes)
    n = len(CATEGORIES)
    return np.bincount(t * n + p, minlength=n * n).reshape(n, n)


def weighted_kappa(predicted: Sequence[Any], true: Sequence[Any]) -> float:
    """Linearly weighted Cohen's kappa over categories A-E.

    Weights ``|i - j| / 4``. Returns NaN when expected disagreement is zero
    (both raters put every case in one and the same category).

    Examples
    --------
    >>> weighted_kappa("ABCDE", "ABCDE")
    1.0
    """
    observed = confusion_matrix(predicted, true).astype(np.float64)
    n = observed.shape[0]
    total = observed.sum()
    i, j = np.indices((n, n))
    weights = np.abs(i - j) / (n - 1)
    expected = np.outer(observed.sum(axis=1), observed.sum(axis=0)) / total
    denom = float((weights * expected).sum())
    if denom == 0:
        return math.nan
    return 1.0 - float((weights * observed).sum()) / denom


def icc(ratings_a: Sequence[float], ratings_b: Sequence[float], *more: Sequence[float]) -> float:
    """Intraclass correlation, two-way model, absolute agreement, single rater.

    ICC(A,1) of McGraw and Wong (1996), ICC(2,1) of Shrout and Fleiss
    (1979): ``(MSR - MSE) / (MSR + (k-1) MSE + k (MSC - MSE) / n)``.

    Parameters
    ----------
    ratings_a, ratings_b, *more : sequence of float
        The scores of each rater (e.g. predicted and reference Agatston) for
        the same n >= 2 cases.

    Returns
    -------
    float
        NaN when every rating is identical (no variance).

    Examples
    --------
    >>> icc([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    1.0
    """
    cols = [_as_ordinal(r, f"ratings {i}") for i, r in enumerate((ratings_a, ratings_b, *more))]
    n = cols[0].size
    if any(c.size != n for c in cols):
        raise InvalidInputError(f"every rater needs the same number of cases; got {[c.size for c in cols]}.")
    if n < 2:
        raise InvalidInputError(f"ICC needs at least 2 cases; got {n}.")
    x = np.column_stack(cols)
    k = x.shape[1]
    grand = x.mean()
    row = x.mean(axis=1, keepdims=True)
    col = x.mean(axis=0, keepdims=True)
    msr = k * float(((row - grand) ** 2).sum()) / (n - 1)
    msc = n * float(((col - grand) ** 2).sum()) / (k - 1)
    mse = float(((x - row - col + grand) ** 2).sum()) / ((n - 1) * (k - 1))
    denom = msr + (k - 1) * mse + k * (msc - mse) / n
    if denom == 0:
        return math.nan
    return (msr - mse) / denom


@dataclass(frozen=True)
class BlandAltman:
    """Bland-Altman agreement of predicted minus true.

    Attributes
    ----------
    bias : float
        Mean difference (predicted - true).
    sd : float
        Standard deviation of the differences (ddof=1; NaN for n=1).
    lower, upper : float
        Limits of agreement ``bias -/+ 1.96 sd``.
    n : int
    """

    bias: float
    sd: float
    lower: float
    upper: float
    n: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready representation (NaN becomes None)."""
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in asdict(self).items()}


def bland_altman(predicted: Sequence[float], true: Sequence[float]) -> BlandAltman:
    """Bias and 95 % limits of agreement of predicted against true scores.

    Examples
    --------
    >>> ba = bland_altman([2.0, 4.0], [1.0, 3.0])
    >>> ba.bias, ba.sd
    (1.0, 0.0)
    """
    p, t = _pair(predicted, true, _as_ordinal)
    d = p - t
    bias = float(d.mean())
    sd = float(d.std(ddof=1)) if d.size > 1 else math.nan
    return BlandAltman(bias=bias, sd=sd, lower=bias - 1.96 * sd, upper=bias + 1.96 * sd, n=int(d.size))
