"""3D lesions: detection metrics between masks and masks from points (private)."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any, Optional, Sequence

import numpy as np
from scipy import ndimage

from ._errors import InvalidInputError
from ._validation import check_finite_number, check_mask, check_spacing, check_volume

__all__ = ["DetectionReport", "detection_report", "PointOutcome", "PointsMask", "mask_from_points"]

_STRUCT_26 = np.ones((3, 3, 3), dtype=bool)


def _ratio(num: float, den: float) -> Optional[float]:
    return num / den if den > 0 else None


@dataclass(frozen=True)
class DetectionReport:
    """Lesion-level detection of a predicted mask against a reference mask.

    A lesion is a 26-connected 3D component of non-zero voxels. A true lesion
    is detected when any predicted voxel overlaps it; a predicted lesion is a
    true positive when it overlaps any true voxel. Ratios are None where
    undefined (no lesion in the denominator).

    Attributes
    ----------
    n_true, n_pred : int
        Lesion counts.
    n_true_detected, n_pred_true_positive : int
        True lesions hit by a prediction; predicted lesions that hit truth.
    true_volume_mm3, pred_volume_mm3 : float
        Total lesion volumes.
    detected_volume_mm3, true_positive_volume_mm3 : float
        Volume of the detected true lesions; of the true-positive predictions.
    sensitivity_count, ppv_count : float or None
        ``n_true_detected / n_true``; ``n_pred_true_positive / n_pred``.
    sensitivity_volume, ppv_volume : float or None
        The same weighted by lesion volume.
    f1_volume : float or None
        Harmonic mean of ``sensitivity_volume`` and ``ppv_volume``.
    """

    n_true: int
    n_pred: int
    n_true_detected: int
    n_pred_true_positive: int
    true_volume_mm3: float
    pred_volume_mm3: float
    detected_volume_mm3: float
    true_positive_volume_mm3: float
    sensitivity_count: Optional[float]
    ppv_count: Optional[float]
    sensitivity_volume: Optional[float]
    ppv_volume: Optional[float]
    f1_volume: Optional[float]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready representation."""
        return asdict(self)


def _lesion_hits(a: np.ndarray, b: np.ndarray) -> tuple[int, int, float, float]:
    """Lesions of ``a``: count, how many touch ``b``, their voxels, touched voxels."""
    lab, n = ndimage.label(a, structure=_STRUCT_26)
    if n == 0:
        return 0, 0, 0.0, 0.0
    sizes = np.bincount(lab.ravel(), minlength=n + 1)
    hit = np.zeros(n + 1, dtype=bool)
    hit[np.unique(lab[a & b])] = True
    hit[0] = False
    return n, int(hit.sum()), float(sizes[1:].sum()), float(sizes[hit].sum())


def detection_report(predicted_mask: Any, true_mask: Any, spacing: Sequence[float]) -> DetectionReport:
    """Lesion-level sensitivity, PPV and F1 of a predicted calcium mask.

    Parameters
    ----------
    predicted_mask, true_mask : array_like of bool or int, shape (z, y, x)
        Non-zero voxels are calcium (labels are ignored).
    spacing : sequence of 3 floats
        (dz, dy, dx) in mm, for volumes.

    Returns
    -------
    DetectionReport

    Examples
    --------
    >>> import numpy as np
    >>> t = np.zeros((3, 8, 8), bool); t[1, 1:3, 1:3] = True; t[1, 5:7, 5:7] = True
    >>> p = np.zeros_like(t); p[1, 1, 1] = True
    >>> r = detection_report(p, t, (3.0, 0.5, 0.5))
    >>> r.sensitivity_count, r.ppv_count, r.sensitivity_volume
    (0.5, 1.0, 0.5)
    """
    dz, dy, dx = check_spacing(spacing)
    t = np.asarray(true_mask)
    if t.ndim != 3:
        raise InvalidInputError(f"true_mask must be 3D (z, y, x); got shape {t.shape}.")
    t = check_mask(t, t.shape, "true_mask").astype(bool)
    p = check_mask(predicted_mask, t.shape, "predicted_mask").astype(bool)
    voxel = dz * dy * dx
    n_true, n_det, v_true, v_det = _lesion_hits(t, p)
    n_pred, n_tp, v_pred, v_tp = _lesion_hits(p, t)
    sens_v = _ratio(v_det, v_true)
    ppv_v = _ratio(v_tp, v_pred)
    if sens_v is None or ppv_v is None:
        f1 = None
    else:
        f1 = 0.0 if sens_v + ppv_v == 0 else 2 * sens_v * ppv_v / (sens_v + ppv_v)
    return DetectionReport(
        n_true=n_true,
        n_pred=n_pred,
        n_true_detected=n_det,
        n_pred_true_positive=n_tp,
        true_volume_mm3=v_true * voxel,
        pred_volume_mm3=v_pred * voxel,
        detected_volume_mm3=v_det * voxel,
        true_positive_volume_mm3=v_tp * voxel,
        sensitivity_count=_ratio(n_det, n_true),
        ppv_count=_ratio(n_tp, n_pred),
        sensitivity_volume=sens_v,
        ppv_volume=ppv_v,
        f1_volume=f1,
    )


@dataclass(frozen=True)
class PointOutcome:
    """What :func:`mask_from_points` did with one annotation point.

    Attributes
    ----------
    index : int
        Position of the point in the input.
    voxel : tuple of int
        The point rounded to the nearest voxel (z, y, x).
    status : str
        ``"inside"`` (voxel >= threshold), ``"snapped"`` (moved to the densest
        voxel >= threshold within ``snap_mm``) or ``"missed"`` (nothing
        >= threshold within reach; the point adds nothing to the mask).
    used_voxel : tuple of int or None
        The voxel whose component was taken.
    label : int
    """

    index: int
    voxel: tuple[int, int, int]
    status: str
    used_voxel: Optional[tuple[int, int, int]]
    label: int


@dataclass(frozen=True)
class PointsMask:
    """Result of :func:`mask_from_points`.

    Attributes
    ----------
    mask : numpy.ndarray
        Boolean mask, or integer labels (uint8/uint16) when labels were given.
    points : tuple of PointOutcome
        One entry per input point, in input order.
    conflicts : tuple of tuple of int
        Groups of point indices that hit the same component with different
        labels; the component got the most frequent label (ties: smallest).
    """

    mask: np.ndarray
    points: tuple[PointOutcome, ...]
    conflicts: tuple[tuple[int, ...], ...]

    @property
    def missed(self) -> tuple[int, ...]:
        """Indices of points that found no voxel >= threshold."""
        return tuple(p.index for p in self.points if p.status == "missed")

    @property
    def snapped(self) -> tuple[int, ...]:
        """Indices of points moved to a nearby voxel >= threshold."""
        return tuple(p.index for p in self.points if p.status == "snapped")


def _snap(hu: np.ndarray, voxel: tuple[int, int, int], point: np.ndarray, spacing, snap_mm: float,
          threshold_hu: float) -> Optional[tuple[int, int, int]]:
    """Densest voxel >= threshold within snap_mm of the point (ties: nearest)."""
    reach = [int(math.ceil(snap_mm / s)) for s in spacing]
    lo = [max(0, v - r) for v, r in zip(voxel, reach)]
    hi = [min(n, v + r + 1) for v, n, r in zip(voxel, hu.shape, reach)]
    box = hu[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]].astype(np.float64)
    grids = np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi)], indexing="ij")
    dist2 = sum(((g - c) * s) ** 2 for g, c, s in zip(grids, point, spacing))
    ok = (dist2 <= snap_mm**2 + 1e-12) & (box >= threshold_hu)
    if not ok.any():
        return None
    cand = np.flatnonzero(ok)
    order = np.lexsort((dist2.ravel()[cand], -box.ravel()[cand]))
    best = np.unravel_index(cand[order[0]], box.shape)
    return tuple(int(b + l) for b, l in zip(best, lo))  # type: ignore[return-value]


def mask_from_points(
    hu: Any,
    points_zyx: Any,
    threshold_hu: float = 130.0,
    *,
    labels: Optional[Sequence[int]] = None,
    spacing: Optional[Sequence[float]] = None,
    snap_mm: float = 1.0,
) -> PointsMask:
    """Calcium mask from annotation points (the paper's ground-truth rule).

    The mask is the union of the 3D (26-connected) components of voxels
    >= ``threshold_hu`` that contain an annotated point.

    Parameters
    ----------
    hu : array_like, shape (z, y, x)
        CT volume in HU.
    points_zyx : array_like, shape (n, 3)
        Points in voxel coordinates (z, y, x); fractional values are rounded
        to the nearest voxel.
    threshold_hu : float, default 130
    labels : sequence of int, optional
        A positive label per point (e.g. 1 LM, 2 LAD, 3 LCX, 4 RCA); the mask
        is then an integer label volume, otherwise boolean.
    spacing : sequence of 3 floats, optional
        (dz, dy, dx) in mm. Needed to snap points below threshold.
    snap_mm : float, default 1.0
        A point whose voxel is below threshold moves to the densest voxel
        >= threshold within this distance (mm); without ``spacing``, or when
        none is in reach, the point is reported as missed and adds nothing.

    Returns
    -------
    PointsMask
        The mask plus what happened to each point (``.missed``,
        ``.snapped``, ``.conflicts``).

    Examples
    --------
    >>> import numpy as np
    >>> hu = np.zeros((1, 6, 6)); hu[0, 1:3, 1:3] = 300; hu[0, 4, 4] = 300
    >>> r = mask_from_points(hu, [[0, 1, 1]])
    >>> int(r.mask.sum()), r.missed
    (4, ())
    """
    hu = check_volume(hu)
    threshold_hu = check_finite_number(threshold_hu, "threshold_hu")
    snap_mm = check_finite_number(snap_mm, "snap_mm", minimum=0.0)
    sp = check_spacing(spacing) if spacing is not None else None
    pts = np.asarray(points_zyx, dtype=np.float64)
    if pts.size == 0:
        pts = pts.reshape(0, 3)
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise InvalidInputError(f"points_zyx must have shape (n, 3); got {pts.shape}.")
    if not np.isfinite(pts).all():
        raise InvalidInputError("points_zyx contains NaN or infinite coordinates.")
    if labels is None:
        point_labels = np.ones(len(pts), dtype=np.int64)
    else:
        point_labels = np.asarray(labels, dtype=np.int64).ravel()
        if point_labels.size != len(pts) or (point_labels < 1).any():
            raise InvalidInputError(
                f"labels must hold one positive integer per point; got {point_labels.size} "
                f"label(s) for {len(pts)} point(s)."
            )
    vox = np.rint(pts).astype(np.int64)
    shape = np.array(hu.shape)
    bad = np.flatnonzero(((vox < 0) | (vox >= shape)).any(axis=1))
    if bad.size:
        raise InvalidInputError(
            f"point(s) {bad.tolist()} lie outside the volume of shape {hu.shape} "
            f"(first: {pts[bad[0]].tolist()}); points are voxel indices (z, y, x)."
        )

    comp, _ = ndimage.label(hu >= threshold_hu, structure=_STRUCT_26)
    outcomes = []
    votes: dict[int, Counter] = {}
    members: dict[int, list[int]] = {}
    for i, (p, v, lab) in enumerate(zip(pts, vox, point_labels)):
        v_t = (int(v[0]), int(v[1]), int(v[2]))
        used: Optional[tuple[int, int, int]] = v_t
        status = "inside"
        if hu[v_t] < threshold_hu:
            used = _snap(hu, v_t, p, sp, snap_mm, threshold_hu) if sp is not None else None
            status = "snapped" if used is not None else "missed"
        outcomes.append(PointOutcome(index=i, voxel=v_t, status=status, used_voxel=used, label=int(lab)))
        if used is not None:
            c = int(comp[used])
            votes.setdefault(c, Counter())[int(lab)] += 1
            members.setdefault(c, []).append(i)

    lut_dtype = np.uint8 if point_labels.max(initial=0) < 256 else np.uint16
    lut = np.zeros(int(comp.max()) + 1, dtype=lut_dtype)
    conflicts = []
    for c, counter in votes.items():
        best = max(counter.items(), key=lambda kv: (kv[1], -kv[0]))[0]
        lut[c] = best
        if len(counter) > 1:
            conflicts.append(tuple(members[c]))
    mask = lut[comp]
    if labels is None:
        mask = mask.astype(bool)
    return PointsMask(mask=mask, points=tuple(outcomes), conflicts=tuple(conflicts))
