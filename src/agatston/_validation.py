"""Argument checks shared by the public functions (private)."""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from ._errors import InvalidInputError

__all__ = [
    "check_volume",
    "check_spacing",
    "check_mask",
    "check_connectivity",
    "check_finite_number",
]


def check_volume(hu: Any, name: str = "hu") -> np.ndarray:
    """Return ``hu`` as a 3D real array; reject NaN/inf and wrong shapes."""
    arr = np.asarray(hu)
    if arr.dtype == bool or not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise InvalidInputError(
            f"{name} must be a numeric array of Hounsfield units; got dtype {arr.dtype}."
        )
    if arr.ndim != 3:
        hint = " (wrap a single slice as hu[np.newaxis])" if arr.ndim == 2 else ""
        raise InvalidInputError(
            f"{name} must be a 3D array indexed (z, y, x); got {arr.ndim} dimension(s) "
            f"with shape {arr.shape}{hint}."
        )
    if arr.size == 0:
        raise InvalidInputError(f"{name} is empty (shape {arr.shape}); expected at least one voxel.")
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        n_nan = int(np.isnan(arr).sum())
        n_inf = int(np.isinf(arr).sum())
        raise InvalidInputError(
            f"{name} contains {n_nan} NaN and {n_inf} infinite value(s); expected finite HU "
            "everywhere (fill padding with e.g. -1024 before scoring)."
        )
    return arr


def check_spacing(spacing: Any) -> tuple[float, float, float]:
    """Return ``spacing`` as three positive finite floats (dz, dy, dx) in mm."""
    try:
        values = tuple(float(s) for s in spacing)
    except (TypeError, ValueError):
        raise InvalidInputError(
            f"spacing must be three numbers (dz, dy, dx) in mm; got {spacing!r}."
        ) from None
    if len(values) != 3:
        raise InvalidInputError(
            f"spacing must have exactly three values (dz, dy, dx) in mm; got {len(values)}: {spacing!r}."
        )
    if not all(math.isfinite(v) and v > 0 for v in values):
        raise InvalidInputError(
            f"spacing must be three positive finite numbers (dz, dy, dx) in mm; got {values}."
        )
    return values  # type: ignore[return-value]


def check_mask(mask: Any, shape: Sequence[int], name: str = "mask") -> np.ndarray:
    """Return ``mask`` as a bool or non-negative integer array of ``shape``."""
    arr = np.asarray(mask)
    if arr.dtype != bool and not np.issubdtype(arr.dtype, np.integer):
        raise InvalidInputError(
            f"{name} must be boolean or integer labels; got dtype {arr.dtype} "
            "(convert with mask.astype(bool) or mask.astype(np.uint8))."
        )
    if arr.shape != tuple(shape):
        raise InvalidInputError(
            f"{name} has shape {arr.shape} but hu has shape {tuple(shape)}; "
            "they must match voxel for voxel."
        )
    if arr.dtype != bool and np.issubdtype(arr.dtype, np.signedinteger) and arr.size and arr.min() < 0:
        raise InvalidInputError(
            f"{name} contains negative labels (min {int(arr.min())}); expected 0 for background "
            "and positive integers for labels."
        )
    return arr


def check_connectivity(connectivity: Any) -> int:
    """Return the in-plane connectivity (4 or 8)."""
    if isinstance(connectivity, bool) or connectivity not in (4, 8):
        raise InvalidInputError(
            f"connectivity must be 4 or 8 (in-plane neighbours); got {connectivity!r}."
        )
    return int(connectivity)


def check_finite_number(value: Any, name: str, *, minimum: float | None = None,
                        strictly_positive: bool = False) -> float:
    """Return ``value`` as a finite float, optionally bounded below."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise InvalidInputError(f"{name} must be a number; got {value!r}.") from None
    if not math.isfinite(out):
        raise InvalidInputError(f"{name} must be finite; got {value!r}.")
    if strictly_positive and out <= 0:
        raise InvalidInputError(f"{name} must be > 0; got {value!r}.")
    if minimum is not None and out < minimum:
        raise InvalidInputError(f"{name} must be >= {minimum}; got {value!r}.")
    return out
