"""Agatston, volume and mass scores from a CT volume and a mask (private)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Optional, Sequence

import numpy as np
from scipy import sparse
from scipy.sparse import csgraph

from ._categories import ARTERY_NAMES, category
from ._validation import (
    check_connectivity,
    check_finite_number,
    check_mask,
    check_spacing,
    check_volume,
)
from ._errors import InvalidInputError

__all__ = ["Lesion", "Scores", "ScoreResult", "score", "density_factor"]

#: Relative tolerance on the area rule, so that e.g. 4 pixels of 0.5 mm
#: (1.0000000000000002 mm^2 in floating point, or 0.9999999999999999)
#: count as exactly 1 mm^2.
_AREA_RTOL = 1e-9


def density_factor(max_hu: "np.ndarray | float") -> "np.ndarray | int":
    """Agatston density factor from a component's maximum HU.

    [130, 200) -> 1, [200, 300) -> 2, [300, 400) -> 3, >= 400 -> 4
    (half-open, no gaps: 199.5 gives 1). Values below 200 give 1.

    Examples
    --------
    >>> density_factor(199.5), density_factor(200), density_factor(1000)
    (1, 2, 4)
    """
    m = np.asarray(max_hu, dtype=np.float64)
    f = 1 + (m >= 200).astype(np.int64) + (m >= 300) + (m >= 400)
    return int(f) if f.ndim == 0 else f


@dataclass(frozen=True)
class Lesion:
    """One scored 2D component (a lesion fragment on one axial slice).

    Attributes
    ----------
    slice_index : int
        Index along axis 0 (z) of the input volume.
    label : int
        Mask label of the component (1 for a boolean mask or no mask).
    n_voxels : int
        Number of pixels in the component.
    area_mm2 : float
        ``n_voxels * dy * dx``.
    max_hu, mean_hu : float
        Peak and mean attenuation of the component.
    density_factor : int
        1-4 from ``max_hu``.
    agatston, volume_mm3 : float
        Contributions ``area * factor * dz / 3`` and ``area * dz``.
    mass_mg : float or None
        ``c * area * dz * (mean_hu - water_hu) / 1000``; None without
        calibration.
    lesion_id : int
        1-based id of the 3D lesion (26-connected component of candidate
        voxels of the same label) the fragment belongs to.
    centroid_yx : tuple of float
        Mean (row, column) of the pixels, in voxel units.
    """

    slice_index: int
    label: int
    n_voxels: int
    area_mm2: float
    max_hu: float
    mean_hu: float
    density_factor: int
    agatston: float
    volume_mm3: float
    mass_mg: Optional[float]
    lesion_id: int
    centroid_yx: tuple[float, float]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready representation."""
        d = asdict(self)
        d["centroid_yx"] = list(self.centroid_yx)
        return d


@dataclass(frozen=True)
class Scores:
    """Scores of one group of lesions (the whole scan or one label)."""

    agatston: float
    volume_mm3: float
    mass_mg: Optional[float]
    n_lesions: int
    n_fragments: int

    @property
    def category(self) -> str:
        """Risk category A-E of :attr:`agatston`."""
        return category(self.agatston)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready representation."""
        d = asdict(self)
        d["category"] = self.category
        return d


@dataclass(frozen=True)
class ScoreResult:
    """Result of :func:`score`.

    Attributes
    ----------
    agatston, volume_mm3 : float
        Total scores.
    mass_mg : float or None
        Total mass score; None when no calibration factor was given.
    category : str
        Risk category A-E of the Agatston score.
    lesions : tuple of Lesion
        Every counted 2D component, ordered by slice then raster position.
    by_label : dict of int to Scores
        Scores per mask label, for every positive label present in an integer
        mask (empty for a boolean mask or no mask). Sums to the totals.
    settings : dict
        The rules used (threshold, area, voxels, connectivity, spacing,
        calibration), so a result documents itself.
    """

    agatston: float
    volume_mm3: float
    mass_mg: Optional[float]
    category: str
    lesions: tuple[Lesion, ...]
    by_label: dict[int, Scores]
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def n_lesions(self) -> int:
        """Number of distinct 3D lesions among the counted fragments."""
        return len({les.lesion_id for les in self.lesions})

    def to_dict(self, *, include_lesions: bool = True) -> dict[str, Any]:
        """JSON-ready representation (label keys become strings).

        Each entry of ``by_label`` carries the artery ``name`` for labels 1-4.
        """
        out: dict[str, Any] = {
            "agatston": self.agatston,
            "volume_mm3": self.volume_mm3,
            "mass_mg": self.mass_mg,
            "category": self.category,
            "n_lesions": self.n_lesions,
            "n_fragments": len(self.lesions),
            "by_label": {
                str(k): {"name": ARTERY_NAMES.get(k), **v.to_dict()} for k, v in self.by_label.items()
            },
            "settings": dict(self.settings),
        }
        if include_lesions:
            out["lesions"] = [les.to_dict() for les in self.lesions]
        return out


# Forward neighbour offsets (dz, dy, dx); with their negatives they give the
# full neighbourhood, so each edge of the voxel graph is listed once.
_OFFSETS_2D = {
    4: ((0, 0, 1), (0, 1, 0)),
    8: ((0, 0, 1), (0, 1, -1), (0, 1, 0), (0, 1, 1)),
}
_OFFSETS_26 = tuple(
    (a, b, c)
    for a in (-1, 0, 1)
    for b in (-1, 0, 1)
    for c in (-1, 0, 1)
    if (a, b, c) > (0, 0, 0)
)


def _sparse_components(shape, flat, coords, group, offsets) -> tuple[int, np.ndarray]:
    """Connected components of a sparse voxel set.

    ``flat`` holds the sorted linear (C-order) indices of the voxels of a
    volume of ``shape``, ``coords`` their (z, y, x). Two voxels are joined
    when one is at a listed offset of the other and, if ``group`` is given,
    both have the same group value. Works on the voxel list only, never on
    the full volume: O(n log n) for n voxels.
    """
    n = flat.size
    strides = (shape[1] * shape[2], shape[2], 1)
    rows, cols = [], []
    for offset in offsets:
        ok = np.ones(n, dtype=bool)
        for axis, step in enumerate(offset):
            if step > 0:
                ok &= coords[axis] < shape[axis] - step
            elif step < 0:
                ok &= coords[axis] >= -step
        src = np.flatnonzero(ok)
        target = flat[src] + sum(st * o for st, o in zip(strides, offset))
        pos = np.minimum(np.searchsorted(flat, target), n - 1)
        hit = flat[pos] == target
        if group is not None:
            hit &= group[src] == group[pos]
        rows.append(src[hit])
        cols.append(pos[hit])
    r = np.concatenate(rows)
    c = np.concatenate(cols)
    graph = sparse.coo_matrix((np.ones(r.size, dtype=np.int8), (r, c)), shape=(n, n)).tocsr()
    n_comp, labels = csgraph.connected_components(graph, directed=False)
    return n_comp, labels


def score(
    hu: Any,
    spacing: Sequence[float],
    mask: Any = None,
    *,
    threshold_hu: float = 130.0,
    min_area_mm2: float = 1.0,
    min_voxels: int = 1,
    connectivity: int = 8,
    calibration: Optional[float] = None,
    water_hu: float = 0.0,
) -> ScoreResult:
    """Agatston, volume and mass scores of a CT volume.

    Candidate voxels have HU >= ``threshold_hu`` and, when a mask is given,
    a non-zero mask value. Lesions are the 2D connected components of the
    candidates on each axial slice (components never join different mask
    labels). A component counts when it has at least ``min_voxels`` pixels
    and an area of at least ``min_area_mm2``.

    Parameters
    ----------
    hu : array_like, shape (z, y, x)
        CT volume in Hounsfield units (integer or float; no NaN).
    spacing : sequence of 3 floats
        (dz, dy, dx) in mm. ``dz`` is the slice increment (distance between
        slice centres), not the nominal slice thickness.
    mask : array_like of bool or int, optional
        Calcification mask of the same shape. Boolean: one class. Integer:
        labels (0 background; 1 LM, 2 LAD, 3 LCX, 4 RCA by convention),
        scored per label in ``by_label``. None scores every voxel above
        threshold (meaningless on a whole scan: bone counts too).
    threshold_hu : float, default 130
        Candidate threshold (>=). See :func:`threshold_for_kvp` for other
        tube voltages.
    min_area_mm2 : float, default 1.0
        Minimum component area (clinical convention). The paper's rule is
        ``min_voxels=3, min_area_mm2=0``.
    min_voxels : int, default 1
        Minimum component size in pixels.
    connectivity : {8, 4}, default 8
        In-plane pixel connectivity of a component.
    calibration : float, optional
        Mass calibration factor c in mg HA / cm^3 / HU,
        ``c = rho_insert / (HU_insert - HU_water)``. Without it, mass is None.
    water_hu : float, default 0
        HU subtracted from each component's mean before the mass is computed.
        The default 0 is the usual clinical mass score
        (``c * area * dz * mean_hu``). Passing the HU of the water-equivalent
        background measured next to the calibration insert gives the physical
        calcium mass (the background's own attenuation is not calcium).

    Returns
    -------
    ScoreResult

    Raises
    ------
    InvalidInputError
        A ValueError subclass, for wrong dimensions, shapes, spacings, NaNs,
        connectivity or thresholds.

    Notes
    -----
    Agatston = sum of ``area_mm2 * density_factor * dz / 3``; volume = sum of
    ``area_mm2 * dz``; mass = ``c * sum(area_mm2 * dz * mean_hu) / 1000``.
    With ``water_hu`` the mass uses ``mean_hu - water_hu``.
    The density factor comes from the component's maximum HU
    (see :func:`density_factor`).

    Examples
    --------
    >>> import numpy as np
    >>> hu = np.zeros((1, 10, 10)); hu[0, 2:4, 2:4] = 250.0
    >>> r = score(hu, spacing=(3.0, 0.5, 0.5))
    >>> r.agatston, r.volume_mm3, r.category
    (2.0, 3.0, 'B')
    """
    hu = check_volume(hu)
    dz, dy, dx = check_spacing(spacing)
    threshold_hu = check_finite_number(threshold_hu, "threshold_hu")
    min_area_mm2 = check_finite_number(min_area_mm2, "min_area_mm2", minimum=0.0)
    if isinstance(min_voxels, bool) or not isinstance(min_voxels, (int, np.integer)) or min_voxels < 1:
        raise InvalidInputError(f"min_voxels must be an integer >= 1; got {min_voxels!r}.")
    connectivity = check_connectivity(connectivity)
    if calibration is not None:
        calibration = check_finite_number(calibration, "calibration", strictly_positive=True)
    water_hu = check_finite_number(water_hu, "water_hu")
    if water_hu >= threshold_hu:
        raise InvalidInputError(
            f"water_hu ({water_hu}) must be below threshold_hu ({threshold_hu}); "
            "it is the HU of water-equivalent background, typically near 0."
        )
    labels = None
    if mask is not None:
        mask = check_mask(mask, hu.shape)
        labels = None if mask.dtype == bool else mask

    settings = {
        "threshold_hu": threshold_hu,
        "min_area_mm2": min_area_mm2,
        "min_voxels": int(min_voxels),
        "connectivity": connectivity,
        "spacing": [dz, dy, dx],
        "calibration": calibration,
        "water_hu": water_hu,
    }

    candidate = hu >= threshold_hu
    if mask is not None:
        candidate &= mask if labels is None else (mask != 0)
    present = (
        sorted(int(v) for v in np.unique(labels[labels > 0])) if labels is not None else []
    )
    flat = np.flatnonzero(candidate)
    if flat.size == 0:
        return _empty_result(present, calibration, settings)
    coords = np.unravel_index(flat, hu.shape)
    group = labels[coords] if labels is not None else None

    # Components on the candidate voxel list only: 2D per slice (offsets with
    # dz = 0) and 3D (26-connected), never joining different mask labels.
    n2d, idx = _sparse_components(hu.shape, flat, coords, group, _OFFSETS_2D[connectivity])
    _, idx3d = _sparse_components(hu.shape, flat, coords, group, _OFFSETS_26)

    zz, yy, xx = coords
    vals = hu[coords].astype(np.float64)
    counts = np.bincount(idx, minlength=n2d)
    sums = np.bincount(idx, weights=vals, minlength=n2d)
    sum_y = np.bincount(idx, weights=yy, minlength=n2d)
    sum_x = np.bincount(idx, weights=xx, minlength=n2d)
    peak = np.full(n2d, -np.inf)
    np.maximum.at(peak, idx, vals)
    # Voxels are in raster order, so the first one seen of each component is
    # its first in raster order: it gives the slice, the 3D lesion, the label.
    first = np.full(n2d, flat.size, dtype=np.int64)
    np.minimum.at(first, idx, np.arange(flat.size))
    comp_z = zz[first]
    comp_3d = idx3d[first]
    comp_label = group[first] if group is not None else np.ones(n2d, dtype=np.int64)

    pixel_area = dy * dx
    area = counts * pixel_area
    keep = (counts >= min_voxels) & (area >= min_area_mm2 * (1 - _AREA_RTOL))
    kept = np.flatnonzero(keep)
    kept = kept[np.argsort(first[kept], kind="stable")]

    area_k = area[kept]
    mean_k = sums[kept] / counts[kept]
    factor_k = density_factor(peak[kept])
    agat_k = area_k * factor_k * dz / 3.0
    vol_k = area_k * dz
    mass_k = calibration * vol_k * (mean_k - water_hu) / 1000.0 if calibration is not None else None
    label_k = comp_label[kept]

    # Renumber 3D lesions 1..K in order of first appearance.
    _, first_pos, inverse = np.unique(comp_3d[kept], return_index=True, return_inverse=True)
    rank = np.empty_like(first_pos)
    rank[np.argsort(first_pos, kind="stable")] = np.arange(first_pos.size)
    lesion_id = rank[inverse] + 1

    cy = sum_y[kept] / counts[kept]
    cx = sum_x[kept] / counts[kept]
    lesions = tuple(
        Lesion(
            slice_index=int(comp_z[c]),
            label=int(label_k[i]),
            n_voxels=int(counts[c]),
            area_mm2=float(area_k[i]),
            max_hu=float(peak[c]),
            mean_hu=float(mean_k[i]),
            density_factor=int(factor_k[i]),
            agatston=float(agat_k[i]),
            volume_mm3=float(vol_k[i]),
            mass_mg=None if mass_k is None else float(mass_k[i]),
            lesion_id=int(lesion_id[i]),
            centroid_yx=(float(cy[i]), float(cx[i])),
        )
        for i, c in enumerate(kept)
    )

    by_label = {
        value: _group_scores(label_k == value, agat_k, vol_k, mass_k, lesion_id) for value in present
    }
    total = _group_scores(np.ones(kept.size, dtype=bool), agat_k, vol_k, mass_k, lesion_id)
    return ScoreResult(
        agatston=total.agatston,
        volume_mm3=total.volume_mm3,
        mass_mg=total.mass_mg,
        category=category(total.agatston),
        lesions=lesions,
        by_label=by_label,
        settings=settings,
    )


def _group_scores(sel, agat, vol, mass, lesion_id) -> Scores:
    return Scores(
        agatston=float(agat[sel].sum()),
        volume_mm3=float(vol[sel].sum()),
        mass_mg=None if mass is None else float(mass[sel].sum()),
        n_lesions=int(np.unique(lesion_id[sel]).size),
        n_fragments=int(np.count_nonzero(sel)),
    )


def _empty_result(present: list[int], calibration, settings) -> ScoreResult:
    mass = None if calibration is None else 0.0
    zero = Scores(agatston=0.0, volume_mm3=0.0, mass_mg=mass, n_lesions=0, n_fragments=0)
    return ScoreResult(
        agatston=0.0,
        volume_mm3=0.0,
        mass_mg=mass,
        category="A",
        lesions=(),
        by_label={value: zero for value in present},
        settings=settings,
    )
