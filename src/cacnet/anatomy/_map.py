"""The anatomical map of one scan: heart, pericardial sac, aortas, lungs, body (see docs/anatomy.md)."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Optional, Sequence

import numpy as np
from scipy import ndimage

from ..triage import MIN_HEART_ML
from ._aorta import AortaTrack, find_aortas

__all__ = ["AnatomyMap", "anatomical_map", "ANATOMY_FEATURES", "AORTA_MEASURES", "MAP_VERSION", "SAC_MARGIN_MM",
           "MIN_HEART_ML", "HEART_HU"]

#: HU band (smoothed) of the heart's blood and muscle; fat is below, calcium and bone above.
HEART_HU = (-20.0, 200.0)
#: The sac: heart-region tissue within this distance (mm) of the heart's surface.
SAC_MARGIN_MM = 25.0
#: Per-candidate anatomical features (mm, or fractions of the heart's radii), in this order.
ANATOMY_FEATURES = ("heart_sdist_mm", "sac_sdist_mm", "lung_dist_mm", "front_depth_mm",
                    "rel_z", "rel_y", "rel_x")
#: The map's version: results record it, and cached training rows of another version get their anatomy columns
#: recomputed (cacnet.train). 4: the heart's top is found relative to at most _MAX_HEART_CM2.
MAP_VERSION = "4"
#: What :meth:`AnatomyMap.aorta_at` reads, in this order (not features of the second stage: docs/anatomy.md).
AORTA_MEASURES = ("asc_aorta_sdist_mm", "desc_aorta_sdist_mm", "root_dz_mm")
#: What a distance or a height reads where the structure was not found.
_FAR_MM = 1e3

_S2 = np.zeros((3, 3, 3), bool)
_S2[1] = ndimage.generate_binary_structure(2, 1)
_ZLINE = np.zeros((3, 3, 3), bool)
_ZLINE[:, 1, 1] = True
_BONE_HU = 150.0  # smoothed HU of bone (sternum, ribs, spine): the sac does not grow through it
#: Below the heart's reference slice, each slice keeps only what lies under the slice above (grown by this
#: many mm): the heart narrows to its apex, while the liver under it widens to the right.
_TAPER_MM = 7.0
#: Tissue with lung this close above it (mm) lies under a lung base: liver or spleen, not heart.
_UNDER_LUNG_MM = 12.0
#: Below the reference slice the heart only narrows; a slice this much wider than the narrowest above it
#: is the liver (and so is everything below it).
_GROWTH = 1.2
#: ... unless within this many mm above it the area grows back over this share of the reference's.
_RETURN_MM = 30.0
_RETURN_SHARE = 0.5
#: The widest axial section (cm^2) of a heart with its epicardial fat: 83-106 on the real scans, 39-69 on phantoms.
_MAX_HEART_CM2 = 120.0
#: Above the reference slice the heart ends where its area falls under this share of the reference's ...
_BASE_SHARE = 0.35
#: ... and the aortic root and coronary ostia lie within this many mm above that level.
_BASE_MM = 15.0
#: Bright (>= 150 HU smoothed) structures at least this large (mL) are bone (spine, sternum, ribs): the sac does
#: not grow through them. Calcified plaques are far smaller.
_BONE_ML = 2.0


def _largest(mask: np.ndarray) -> np.ndarray:
    lab, n = ndimage.label(mask)
    if n == 0:
        return mask
    return lab == (np.bincount(lab.ravel())[1:].argmax() + 1)


def _mediastinum(parts: Any, cell: Sequence[float]) -> np.ndarray:
    """Per row of each slice, the tissue between the outermost lung on either side, in front of the spine.

    Triage's heart region needs a right and a left lung beside the heart; this
    needs only lung on both sides of each row (one lung region wrapping the
    heart, lungs cut by a small field of view), so the two together find
    hearts that either alone misses.
    """
    lung, body = parts.lung, parts.body
    nx = lung.shape[2]
    xs = np.arange(nx)
    first = np.where(lung.any(axis=2), np.argmax(lung, axis=2), nx)  # (z, y)
    last = np.where(lung.any(axis=2), nx - 1 - np.argmax(lung[:, :, ::-1], axis=2), -1)
    out = (xs > first[..., None]) & (xs < last[..., None]) & body & ~lung
    out[:, parts.spine_front:, :] = False
    return out


def _under_lung(lung: np.ndarray, cell: Sequence[float]) -> np.ndarray:
    """Cells with lung at most :data:`_UNDER_LUNG_MM` above them: the liver dome and the spleen under the lung
    bases (the heart has heart, vessels or mediastinal fat above it, not lung)."""
    out = np.zeros(lung.shape, bool)
    for d in range(1, max(1, int(round(_UNDER_LUNG_MM / cell[0]))) + 1):
        out[:-d] |= lung[d:]
    return out


def _trim_heart(heart: np.ndarray, right_lung: np.ndarray, cell: Sequence[float]) -> np.ndarray:
    """Cut the liver below the heart and the great vessels above it (see :data:`_TAPER_MM`, :data:`_BASE_MM`).

    The reference slice is the heart's widest among the slices where the
    right lung is at least half its largest: the liver dome lies under the
    right lung's base, so there the soft tissue is the heart's. Below it each
    slice keeps what lies under the slice above (grown by :data:`_TAPER_MM`):
    the heart narrows to its apex while the liver widens to the right. Above
    it, the heart ends where its area falls under :data:`_BASE_SHARE` of the
    reference's (the atria end; only the great vessels go on) and does not grow
    back over :data:`_RETURN_SHARE` of it within :data:`_RETURN_MM`; the aortic
    root and the coronary ostia lie within :data:`_BASE_MM` above that. A
    reference wider than :data:`_MAX_HEART_CM2` holds more than the heart (the
    liver, where triage found the right lung on a few slices only): that share
    is taken of :data:`_MAX_HEART_CM2` instead.
    """
    area = heart.sum(axis=(1, 2))
    if not area.any():
        return heart
    rl = right_lung.sum(axis=(1, 2))
    eligible = (rl >= 0.5 * rl.max()) & (area > 0) if rl.any() else area > 0
    if not eligible.any():
        eligible = area > 0
    ref = int(np.argmax(np.where(eligible, area, -1)))
    out = heart.copy()
    k = max(1, int(round(_TAPER_MM / min(cell[1], cell[2]))))
    disk = ndimage.generate_binary_structure(2, 1)
    footprint = ndimage.binary_dilation(out[ref], structure=disk, iterations=k)
    smallest = float(area[ref])
    for z in range(ref - 1, -1, -1):
        out[z] &= footprint & ndimage.binary_dilation(out[z + 1], structure=disk, iterations=k)
        a = float(out[z].sum())
        if a > _GROWTH * smallest and smallest < area[ref]:  # it widens again below the apex: the liver
            out[:z + 1] = False
            break
        smallest = min(smallest, a)
    widest = min(float(area[ref]), _MAX_HEART_CM2 * 100.0 / (cell[1] * cell[2]))
    kept = out.sum(axis=(1, 2))
    ahead = max(1, int(round(_RETURN_MM / cell[0])))
    for z in np.flatnonzero((kept < _BASE_SHARE * widest) & (np.arange(len(area)) > ref)):
        if kept[z + 1:z + 1 + ahead].max(initial=0) > _RETURN_SHARE * widest:
            continue  # the heart widens again above: the liver's narrow top under the heart, not the atria's end
        out[int(z) + int(round(_BASE_MM / cell[0])):] = False
        break
    return _largest(out) if out.any() else out


def _sdist(mask: np.ndarray, cell: Sequence[float]) -> np.ndarray:
    """Signed distance (mm) to the surface of ``mask``: positive outside, negative inside (exact EDTs)."""
    if not mask.any():
        return np.full(mask.shape, np.inf, np.float32)
    out = ndimage.distance_transform_edt(~mask, sampling=cell)
    # inside, the nearest outside cell lies within the mask's bounding box grown by one cell (clamping any
    # other outside cell into that box brings it closer and keeps it outside): measure there only
    idx = np.nonzero(mask)
    box = tuple(slice(max(0, int(i.min()) - 1), min(n, int(i.max()) + 2)) for i, n in zip(idx, mask.shape))
    inside = ndimage.distance_transform_edt(mask[box], sampling=cell)
    out[box] -= inside
    return out.astype(np.float32)


@dataclass
class AnatomyMap:
    """The anatomy of one scan on a coarse grid (``block`` fine voxels per cell, (z, y, x)).

    Attributes
    ----------
    block : tuple of int
        Fine voxels per cell along (z, y, x).
    cell_mm : tuple of float
        The cell's size (mm).
    heart, sac, lung, body : numpy.ndarray of bool
        The heart's blood and muscle, the pericardial sac (heart and the
        fat around it), both lungs, the patient.
    heart_sdist, sac_sdist, lung_dist, skin_dist : numpy.ndarray of float32
        Signed distance (mm) to the heart's and the sac's surface (negative
        inside); distance to the nearest lung; depth (mm) behind the body's
        front surface along the antero-posterior axis.
    heart_center_mm, heart_radii_mm : numpy.ndarray
        Centroid (z, y, x) of the heart in grid mm, and its half-extents
        (2 standard deviations) along each axis.
    aorta_inputs : tuple or None
        What :attr:`asc_aorta` and :attr:`desc_aorta` are found from, when
        first asked for (the decision does not use them: scoring does not
        pay for them).
    """

    block: tuple[int, int, int]
    cell_mm: tuple[float, float, float]
    heart: np.ndarray = field(repr=False)
    sac: np.ndarray = field(repr=False)
    lung: np.ndarray = field(repr=False)
    body: np.ndarray = field(repr=False)
    heart_sdist: np.ndarray = field(repr=False)
    sac_sdist: np.ndarray = field(repr=False)
    lung_dist: np.ndarray = field(repr=False)
    skin_dist: np.ndarray = field(repr=False)
    heart_center_mm: np.ndarray = field(default_factory=lambda: np.full(3, np.nan))
    heart_radii_mm: np.ndarray = field(default_factory=lambda: np.full(3, np.nan))
    aorta_inputs: Optional[tuple] = field(default=None, repr=False)
    _aortas: Optional[dict] = field(default=None, init=False, repr=False, compare=False)

    def _aorta(self) -> dict:
        """The aortas, found on first use from :attr:`aorta_inputs` (see :func:`cacnet.anatomy.find_aortas`)."""
        if self._aortas is None:
            empty = AortaTrack.empty()
            out: dict[str, Any] = {"asc": empty, "desc": empty, "asc_sdist": None, "desc_sdist": None,
                                   "root_z_mm": float("nan")}
            if self.aorta_inputs is not None:
                vb, local_parts, heart, region, columns, box = self.aorta_inputs
                # the body's midline per slice: the centre of its columns (on the whole width, not the box's)
                midline = np.array([float(np.flatnonzero(c).mean()) if c.any() else columns.shape[1] / 2.0
                                    for c in columns]) - box[2].start
                found = find_aortas(vb, local_parts, heart, region, midline, self.cell_mm)
                for key, t in zip(("asc", "desc"), found):
                    if not t.found:
                        continue
                    d = np.full(self.heart.shape, _FAR_MM, np.float32)
                    d[box] = _sdist(t.mask(vb.shape, self.cell_mm), self.cell_mm)  # in the box
                    out[f"{key}_sdist"] = d
                    out[key] = AortaTrack(t.z + box[0].start, t.y + box[1].start, t.x + box[2].start,
                                          t.radius_mm, t.score)
                if out["asc"].found:
                    out["root_z_mm"] = float(out["asc"].z.min()) * self.cell_mm[0]
            self._aortas = out
        return self._aortas

    @property
    def asc_aorta(self) -> AortaTrack:
        """The ascending aorta down to its root: circles followed slice by slice (empty when not found)."""
        return self._aorta()["asc"]

    @property
    def desc_aorta(self) -> AortaTrack:
        """The descending aorta: circles followed slice by slice (empty when not found)."""
        return self._aorta()["desc"]

    @property
    def root_z_mm(self) -> float:
        """Height (grid mm) of the aortic root: the ascending aorta's lowest circle (NaN when not found)."""
        return self._aorta()["root_z_mm"]

    def aorta_at(self, z, y, x) -> np.ndarray:
        """The :data:`AORTA_MEASURES` at fine-grid positions: float64 (n, 3); 1000 where not found."""
        pts = self._coords(z, y, x)
        a = self._aorta()
        far = np.full(pts.shape[1], _FAR_MM)
        cols = [far if a[k] is None else ndimage.map_coordinates(a[k], pts, order=1, mode="nearest")
                for k in ("asc_sdist", "desc_sdist")]
        cols.append(far if np.isnan(a["root_z_mm"]) else pts[0] * self.cell_mm[0] - a["root_z_mm"])
        return np.stack(cols, axis=1).astype(np.float64)

    @property
    def found(self) -> bool:
        """Whether a heart was found at all."""
        return bool(self.heart.any())

    @property
    def heart_ml(self) -> float:
        """The volume (mL) of the heart found."""
        return float(self.heart.sum()) * float(np.prod(self.cell_mm)) / 1000.0

    @property
    def usable(self) -> bool:
        """Whether the map is trusted to rule candidates out: a heart of at least :data:`MIN_HEART_ML`.

        A smaller "heart" means the map failed on this scan (an unusual anatomy or
        geometry); then no candidate is ruled out by it (the second stage still
        decides, with the anatomical features it has) and the result says so.
        """
        return self.heart_ml >= MIN_HEART_ML  # triage's smallest heart region

    def _coords(self, z, y, x) -> np.ndarray:
        """Fine indices -> continuous cell coordinates (cell centres at integers), clipped to the grid."""
        pts = np.stack([np.asarray(v, dtype=np.float64) for v in (z, y, x)])
        for a in range(3):
            pts[a] = np.clip((pts[a] + 0.5) / self.block[a] - 0.5, 0, self.heart.shape[a] - 1)
        return pts

    def at(self, z, y, x) -> np.ndarray:
        """The :data:`ANATOMY_FEATURES` at fine-grid positions: float64 (n, 7)."""
        pts = self._coords(z, y, x)
        n = pts.shape[1]
        if not self.found:
            far = np.full(n, _FAR_MM)
            return np.stack([far, far, np.zeros(n), np.zeros(n), far, far, far], axis=1)
        cols = [ndimage.map_coordinates(d, pts, order=1, mode="nearest")
                for d in (self.heart_sdist, self.sac_sdist, self.lung_dist, self.skin_dist)]
        mm = pts * np.asarray(self.cell_mm)[:, None]
        rel = (mm - self.heart_center_mm[:, None]) / np.maximum(self.heart_radii_mm[:, None], 1.0)
        return np.stack(cols + [rel[0], rel[1], rel[2]], axis=1).astype(np.float64)

    def outside_reason(self, features: np.ndarray) -> list[Optional[str]]:
        """Per row of :meth:`at`'s output: why it cannot be coronary calcium (outside the sac), or None.

        Always None when the map is not :attr:`usable`.
        """
        out: list[Optional[str]] = []
        usable = self.usable  # a sum over the heart mask: once, not per candidate
        for hs, ss in features[:, :2]:
            if not usable:
                out.append(None)
            elif ss > 0:
                out.append(f"outside the pericardial sac ({ss:.1f} mm from it, {hs:.1f} mm from the heart)")
            else:
                out.append(None)
        return out

    def fine_mask(self, which: str, shape: Sequence[int]) -> np.ndarray:
        """A boolean map (``"heart"``, ``"sac"``, ``"lung"``, ``"body"``, ``"asc_aorta"``, ``"desc_aorta"``) on
        the fine grid of ``shape``."""
        m = getattr(self, which)
        if isinstance(m, AortaTrack):
            m = m.mask(self.heart.shape, self.cell_mm)
        full = m
        for a, k in enumerate(self.block):
            full = np.repeat(full, k, axis=a)
        pad = [(0, max(0, int(s) - f)) for s, f in zip(shape, full.shape)]
        full = np.pad(full, pad, mode="edge" if full.size else "constant")
        return full[tuple(slice(0, int(s)) for s in shape)]

    def summary(self) -> dict[str, Any]:
        """Volumes (mL) of the heart and the sac, for the result's ``anatomy`` entry."""
        cell_ml = float(np.prod(self.cell_mm)) / 1000.0
        return {"heart_ml": round(self.heart_ml, 1),
                "sac_ml": round(float(self.sac.sum()) * cell_ml, 1),
                "sac_margin_mm": SAC_MARGIN_MM, "sac_rule_applied": self.usable, "map_version": MAP_VERSION}


def anatomical_map(checked: Any) -> AnatomyMap:
    """The anatomy of a triaged scan (:func:`cacnet.triage.triage`'s result; its smoothed grid and parts).

    Examples
    --------
    >>> from cacnet.phantom import generate_phantom
    >>> from cacnet.triage import triage
    >>> from cacnet.io import Scan
    >>> case = generate_phantom(7, category="A")       # doctest: +SKIP
    >>> amap = anatomical_map(triage(case.scan))       # doctest: +SKIP
    >>> amap.found                                     # doctest: +SKIP
    True
    """
    v, f, parts = checked.smoothed, tuple(checked.block), checked.parts
    if v is None:
        raise ValueError("anatomical_map: the triage result has no smoothed grid")
    cell = tuple(float(c) for c in checked.cell_mm)
    shape = v.shape
    none = np.zeros(shape, bool)
    region = none if parts is None else parts.heart | _mediastinum(parts, cell)
    if not region.any():
        inf = np.full(shape, np.inf, np.float32)
        body = parts.body if parts is not None else none
        lung = parts.lung if parts is not None else none
        return AnatomyMap(f, cell, none, none, lung, body, inf, inf, np.zeros(shape, np.float32),
                          np.zeros(shape, np.float32))
    # everything is measured in a box around the heart region (distances beyond it are not needed)
    pad = [int(np.ceil((SAC_MARGIN_MM + 15.0) / c)) for c in cell]
    idx = np.nonzero(region)
    box = tuple(slice(max(0, int(i.min()) - p), min(n, int(i.max()) + p + 1)) for i, p, n in zip(idx, pad, shape))
    vb, region, lung, body = v[box], region[box], parts.lung[box], parts.body[box]
    # the heart's blood and muscle: soft tissue of the heart region (one cell around it), holes filled per
    # slice, thin links (pericardium, small vessels) opened, the largest 3D piece, the liver cut off
    near = ndimage.binary_dilation(region, structure=_S2) & ~lung
    soft = near & (vb >= HEART_HU[0]) & (vb <= HEART_HU[1]) & ~_under_lung(lung, cell)
    soft = ndimage.binary_fill_holes(np.pad(soft, ((1, 1), (0, 0), (0, 0))), structure=_S2)[1:-1] & ~lung
    soft = ndimage.binary_opening(soft, structure=_S2, iterations=1)
    heart = _largest(soft) if soft.any() else soft
    heart = _trim_heart(heart, parts.right[box], cell)
    if not heart.any():
        heart = region.copy()
    # the sac: tissue reached from the heart within SAC_MARGIN_MM without crossing lung, air or bone
    bright, nb = ndimage.label(vb >= _BONE_HU)
    big = np.bincount(bright.ravel(), minlength=nb + 1) * float(np.prod(cell)) / 1000.0 >= _BONE_ML
    big[0] = False
    passable = body & ~lung & ~big[bright] | heart
    steps = max(1, int(round(SAC_MARGIN_MM / min(cell[1], cell[2]))))
    sac = ndimage.binary_dilation(heart, structure=_S2, iterations=steps, mask=passable)
    zsteps = int(round(SAC_MARGIN_MM / cell[0]))
    if zsteps:
        sac |= ndimage.binary_dilation(heart, structure=_ZLINE, iterations=zsteps, mask=passable)
    heart_sdist = _sdist(heart, cell)
    sac &= heart_sdist <= SAC_MARGIN_MM
    sac_sdist = _sdist(sac, cell)
    lung_dist = (ndimage.distance_transform_edt(~lung, sampling=cell) if lung.any()
                 else np.full(lung.shape, _FAR_MM))
    # depth behind the body's front surface, along the column (anterior chest wall: skin, muscle, sternum)
    full_body = parts.body
    front = np.where(full_body.any(axis=1), np.argmax(full_body, axis=1), shape[1])[box[0], box[2]]  # (z, x)
    rows = np.arange(shape[1])[box[1]]
    skin_dist = (rows[None, :, None] - front[:, None, :]) * cell[1]

    def paste(a: np.ndarray, fill) -> np.ndarray:
        out = np.full(shape, fill, dtype=np.float32 if a.dtype != bool else bool)
        out[box] = a
        return out

    # what the aortas are found from, when first asked for (AnatomyMap._aorta): (z, x) the body's columns
    aorta_inputs = (vb, SimpleNamespace(body=body, lung=lung, spine_front=parts.spine_front - box[1].start),
                    heart, region, parts.body.any(axis=1)[box[0]], box)

    heart_full, sac_full = paste(heart, False), paste(sac, False)
    heart_sdist, sac_sdist = paste(heart_sdist, _FAR_MM), paste(sac_sdist, _FAR_MM)
    lung_dist, skin_dist = paste(lung_dist, _FAR_MM), paste(skin_dist, _FAR_MM)
    heart = heart_full
    idx = np.nonzero(heart)
    mm = np.stack([(i + 0.0) * c for i, c in zip(idx, cell)])
    center = mm.mean(axis=1)
    radii = 2.0 * mm.std(axis=1)
    return AnatomyMap(f, cell, heart, sac_full, parts.lung, parts.body, heart_sdist, sac_sdist, lung_dist,
                      skin_dist, center, radii, aorta_inputs)
