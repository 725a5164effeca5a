"""The component table of a scored scan: its lesions and candidates, with stable ids.

:func:`find_components` computes it from the scan, the result's mask and the result JSON, identically
when the report (:mod:`cacnet.outputs.report`) or the preview is written and when a review
(:mod:`cacnet.review`) is applied; :class:`ComponentTable` holds the parts, lesions (U... uncounted),
candidates (C... rejected, H... unvoted) and the digest that makes a review of another result stale.
:data:`REVIEW_FORMAT` and :data:`REVIEW_VERSION` are the review file's contract, kept here below both.

See docs/review.md ("Components and their ids", "The review file") for the definitions.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Optional, Sequence

import numpy as np
from scipy import ndimage

import agatston

from .errors import InvalidScanError
from .triage import triage

__all__ = [
    "Part", "Component", "ComponentTable", "find_components", "part_ids", "REVIEW_FORMAT", "REVIEW_VERSION", "ARTERY_CODES",
    "MAX_QUIET_CANDIDATES", "MAX_QUIET_CANDIDATE_MM3", "MAX_VOTED_CANDIDATES",
]

#: ``format`` of a review file.
REVIEW_FORMAT = "cac-review"
#: ``version`` of the review file format this package writes and reads.
REVIEW_VERSION = 1
#: Artery names and their mask labels.
ARTERY_CODES = {name: code for code, name in agatston.ARTERY_NAMES.items()}
#: At most this many candidates that no model voted for are listed (the largest).
MAX_QUIET_CANDIDATES = 12
#: Candidates no model voted for that are larger than this (mm^3) are left out (bone, not a plaque).
MAX_QUIET_CANDIDATE_MM3 = 2000.0
#: At most this many candidates that models voted for are listed (most votes, then largest); the rest are counted.
MAX_VOTED_CANDIDATES = 60


@dataclass(frozen=True)
class Part:
    """One 2D component (one axial slice) of a :class:`Component`.

    Attributes
    ----------
    id : str
        ``"z-y-x"``: its first voxel in C order on the canonical grid.
    slice_index : int
    label : int
        Its mask label in the result (0 for a candidate).
    n_voxels : int
    area_mm2, max_hu, mean_hu : float
    counted : bool
        Whether ``agatston.score`` counts it (area and voxel minimums).
    agatston, volume_mm3 : float
        Its contributions (0 when not counted), computed by ``agatston.score``.
    mass_mg : float or None
        Its mass contribution; None without a calibration factor.
    centroid_yx : tuple of float
    votes : int or None
        Models that voted for it (from the result), None when not recorded.
    review : bool
        Flagged for review in the result (not every model voted for it).
    p_coronary : float or None
        The second stage's P(coronary) of it (from the result), None when
        the result has none (majority vote, or not recorded).
    reviewed : str or None
        What a reader decided about it in an earlier review ("accepted",
        "relabelled", "added", "rejected"), None when never reviewed.
    reason : str or None
        Why the result rejected it (its ``rejected_candidates`` entry's
        ``reason``), None when the entry gives none.
    voxels : numpy.ndarray
        Its voxels as flat (C order) indices into the canonical volume.
    """

    id: str
    slice_index: int
    label: int
    n_voxels: int
    area_mm2: float
    max_hu: float
    mean_hu: float
    counted: bool
    agatston: float
    volume_mm3: float
    mass_mg: Optional[float]
    centroid_yx: tuple[float, float]
    votes: Optional[int] = None
    review: bool = False
    p_coronary: Optional[float] = None
    reviewed: Optional[str] = None
    reason: Optional[str] = None
    voxels: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64), repr=False, compare=False)


@dataclass(frozen=True)
class Component:
    """A lesion or a rejected candidate: what one decision of a review applies to.

    Attributes
    ----------
    id : str
        Its first part's id (``"z-y-x"``), stable for a given scan and mask.
    kind : str
        ``"lesion"`` (in the mask) or ``"candidate"`` (not in the mask).
    number : str
        Display number: ``"1"``, ``"2"``, ... for lesions by decreasing
        Agatston contribution, ``"U1"``, ... for uncounted mask parts,
        ``"C1"``, ``"C2"``, ... for the result's rejected candidates and
        ``"H1"``, ... for candidates no model voted for.
    label : int
        The lesion's artery (1 LM, 2 LAD, 3 LCX, 4 RCA); for a candidate the
        artery the most-voting model proposed, 0 when none.
    votes : int or None
        Lesion: the fewest votes of its parts; candidate: the most.
    review : bool
        A lesion not every model voted for.
    source : str
        ``"models"`` (the ensemble's output or its minority votes),
        ``"reader"`` (added or rejected in an earlier review) or
        ``"heart region"`` (a candidate no model voted for).
    parts : tuple of Part
        In C order of their first voxels.
    """

    id: str
    kind: str
    number: str
    label: int
    votes: Optional[int]
    review: bool
    source: str
    parts: tuple[Part, ...]

    @property
    def counted(self) -> bool:
        """Whether ``agatston.score`` counts any of its parts (a lesion of the mask that is not: uncounted)."""
        return any(p.counted for p in self.parts)

    @property
    def p_coronary(self) -> Optional[float]:
        """The second stage's P(coronary): a lesion's lowest over its parts, a candidate's highest; None without."""
        ps = [p.p_coronary for p in self.parts if p.p_coronary is not None]
        if not ps:
            return None
        return min(ps) if self.kind == "lesion" else max(ps)

    @property
    def agatston(self) -> float:
        """Sum of the parts' Agatston contributions."""
        return float(sum(p.agatston for p in self.parts))

    @property
    def volume_mm3(self) -> float:
        """Sum of the parts' volume contributions (mm^3)."""
        return float(sum(p.volume_mm3 for p in self.parts))

    @property
    def mass_mg(self) -> Optional[float]:
        """Sum of the parts' mass contributions (mg); None without calibration."""
        masses = [p.mass_mg for p in self.parts if p.counted]
        return None if not masses or any(m is None for m in masses) else float(sum(masses))  # type: ignore[misc]

    @property
    def n_voxels(self) -> int:
        """Voxels of all parts."""
        return int(sum(p.n_voxels for p in self.parts))

    @property
    def slices(self) -> list[int]:
        """The axial slices it spans (sorted)."""
        return sorted({p.slice_index for p in self.parts})

    @property
    def reviewed(self) -> Optional[str]:
        """An earlier reader's decision on it (from its parts), None when none."""
        return next((p.reviewed for p in self.parts if p.reviewed), None)

    @property
    def voxels(self) -> np.ndarray:
        """All its voxels as flat indices into the canonical volume."""
        return np.concatenate([p.voxels for p in self.parts]) if self.parts else np.zeros(0, np.int64)

    def centroid_zyx(self, shape: Sequence[int]) -> tuple[float, float, float]:
        """Mean voxel position (z, y, x) on the canonical grid."""
        z, y, x = np.unravel_index(self.voxels, tuple(shape))
        return float(z.mean()), float(y.mean()), float(x.mean())


@dataclass(frozen=True)
class ComponentTable:
    """The components of a result (see :func:`find_components`).

    Attributes
    ----------
    components : tuple of Component
        Lesions first (by number), then uncounted mask parts, then
        candidates (the result's rejected ones, then those no model voted for).
    digest : str
        sha256 of the table (see docs/review.md, "Components and their ids").
    shape : tuple of int
        The canonical volume's shape.
    settings : dict
        The scoring settings used (threshold, area, voxels, connectivity,
        spacing, calibration, water_hu).
    unmatched : tuple of dict
        Rejected candidates of the result that no component matched (none
        for a result this package wrote for the same scan).
    left_out : int
        Candidates the models voted for beyond :data:`MAX_VOTED_CANDIDATES`
        (not listed, not reviewable).
    """

    components: tuple[Component, ...]
    digest: str
    shape: tuple[int, int, int]
    settings: dict[str, Any]
    unmatched: tuple[dict[str, Any], ...] = ()
    left_out: int = 0

    @property
    def lesions(self) -> list[Component]:
        """The lesions, by number: 3D lesions of the mask holding a counted part (the result's ``n_lesions``)."""
        return [c for c in self.components if c.kind == "lesion" and c.counted]

    @property
    def uncounted(self) -> list[Component]:
        """3D groups of mask parts none of which ``agatston.score`` counts (too small): not lesions, add nothing."""
        return [c for c in self.components if c.kind == "lesion" and not c.counted]

    @property
    def in_mask(self) -> list[Component]:
        """Everything in the mask: the lesions, then the uncounted parts."""
        return [c for c in self.components if c.kind == "lesion"]

    @property
    def candidates(self) -> list[Component]:
        """The candidates, by number: the result's rejected ones, then those no model voted for."""
        return [c for c in self.components if c.kind == "candidate"]

    @property
    def rejected(self) -> list[Component]:
        """The candidates holding the result's ``rejected_candidates`` (C1, C2, ...)."""
        return [c for c in self.components if c.kind == "candidate" and c.source != "heart region"]

    @property
    def unvoted(self) -> list[Component]:
        """The candidates no model voted for: dense parts in the heart region (H1, H2, ...)."""
        return [c for c in self.components if c.kind == "candidate" and c.source == "heart region"]

    def counts(self, data: dict[str, Any]) -> dict[str, int]:
        """The numbers the preview and the report show, one definition for both (``data``: the result JSON).

        ``lesions`` (the result's ``n_lesions``: 3D lesions holding a counted part), ``uncounted``,
        ``rejected_candidates`` (the entries of the result's ``rejected_candidates``: 2D parts, one per
        slice, as the JSON lists them), ``rejected_groups`` (the candidates C1, C2, ... they form, parts
        that touch in 3D being one), ``unvoted`` (H1, H2, ...) and ``flagged`` (lesions flagged for review).
        """
        return {"lesions": len(self.lesions), "uncounted": len(self.uncounted),
                "rejected_candidates": len(data.get("rejected_candidates") or []),
                "rejected_groups": len(self.rejected), "unvoted": len(self.unvoted),
                "flagged": len(data.get("review") or [])}

    def get(self, component_id: str) -> Optional[Component]:
        """The component with this id, None when there is none."""
        return next((c for c in self.components if c.id == component_id), None)



def _structures(connectivity: int) -> tuple[np.ndarray, np.ndarray]:
    s2 = np.zeros((3, 3, 3), bool)
    s2[1] = ndimage.generate_binary_structure(2, 2 if connectivity == 8 else 1)
    return s2, np.ones((3, 3, 3), bool)


def _pid(flat: int, shape: Sequence[int]) -> str:
    z, y, x = np.unravel_index(int(flat), tuple(shape))
    return f"{int(z)}-{int(y)}-{int(x)}"


def _settings(data: dict[str, Any], spacing: Sequence[float]) -> dict[str, Any]:
    s = dict(data.get("settings") or {})
    return {"threshold_hu": float(s.get("threshold_hu", 130.0)), "min_area_mm2": float(s.get("min_area_mm2", 1.0)),
            "min_voxels": int(s.get("min_voxels", 1)), "connectivity": int(s.get("connectivity", 8)),
            "spacing": [float(v) for v in spacing], "calibration": s.get("calibration"),
            "water_hu": float(s.get("water_hu", 0.0))}


def _units(mask: np.ndarray, s2: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """2D units of ``mask``: (flat voxel indices sorted, unit index per voxel (0-based), number of units)."""
    lab, n = ndimage.label(mask, structure=s2)
    flat = np.flatnonzero(lab)
    return flat, lab.ravel()[flat] - 1, np.int64(n)


def _record_index(records: Sequence[dict[str, Any]]) -> dict[int, list[dict[str, Any]]]:
    out: dict[int, list[dict[str, Any]]] = {}
    for r in records:
        try:
            out.setdefault(int(r["slice_index"]), []).append(r)
        except (KeyError, TypeError, ValueError):
            continue
    return out


def _match(index: dict[int, list[dict[str, Any]]], z: int, cy: float, cx: float, tol: float) -> Optional[dict]:
    best, dist = None, tol
    for r in index.get(z, []):
        try:
            ry, rx = (float(v) for v in r["centroid_yx"])
        except (KeyError, TypeError, ValueError):
            continue
        d = max(abs(ry - cy), abs(rx - cx))
        if d <= dist:
            best, dist = r, d
    return best


def _in_heart(hu: np.ndarray, spacing: Sequence[float], data: dict[str, Any], z: np.ndarray, y: np.ndarray,
              x: np.ndarray, found: Any = None) -> np.ndarray:
    """Whether voxel positions lie in the heart region (grown by one 3.5 mm cell), see :func:`find_components`.

    ``found``: the scan's :class:`cacnet.triage.Triage` when scoring made one; otherwise it is made here.
    """
    if found is None:
        found = triage(SimpleNamespace(hu=hu, spacing=tuple(spacing), meta={}))
    heart, f = found.heart_mask, found.block
    if heart is not None and heart.any():
        grown = ndimage.binary_dilation(heart, structure=np.ones((3, 3, 3), bool))
        cells = [np.asarray(a, dtype=np.float64).round().astype(np.int64) // k for a, k in zip((z, y, x), f)]
        ok = np.ones(len(cells[0]), bool)
        for a in range(3):
            ok &= (cells[a] >= 0) & (cells[a] < grown.shape[a])
        out = np.zeros(len(cells[0]), bool)
        out[ok] = grown[cells[0][ok], cells[1][ok], cells[2][ok]]
        return out
    shape = hu.shape
    bbox = (((data.get("triage") or {}).get("checks") or {}).get("heart") or {}).get("bbox_zyx")
    if bbox is None:
        bbox = [[0, shape[0] - 1], [shape[1] // 4, shape[1] - 1 - shape[1] // 4],
                [shape[2] // 4, shape[2] - 1 - shape[2] // 4]]
    return ((z >= bbox[0][0]) & (z <= bbox[0][1]) & (y >= bbox[1][0]) & (y <= bbox[1][1])
            & (x >= bbox[2][0]) & (x <= bbox[2][1]))


def find_components(hu: np.ndarray, spacing: Sequence[float], labels: np.ndarray,
                    data: dict[str, Any], triaged: Any = None) -> ComponentTable:
    """The lesions and rejected candidates of a result, with stable ids (see docs/review.md).

    Parameters
    ----------
    hu : numpy.ndarray
        The scan on the canonical grid (z, y, x), as :func:`cacnet.io.read_scan` gives it.
    spacing : sequence of 3 floats
        (dz, dy, dx) in mm.
    labels : numpy.ndarray
        The result's mask on the same grid (0, 1 LM, 2 LAD, 3 LCX, 4 RCA).
    data : dict
        The result JSON (settings, lesions with votes, rejected candidates, triage).
    triaged : cacnet.triage.Triage, optional
        The scan's triage, when scoring just made it (``ScanResult.triage``):
        its heart region is used instead of finding it again.

    Returns
    -------
    ComponentTable
    """
    hu = np.asarray(hu)
    labels = np.asarray(labels)
    if labels.shape != hu.shape:
        raise InvalidScanError(f"the mask has shape {labels.shape} but the scan has shape {hu.shape}; "
                               "they must be on the same grid.")
    shape = tuple(int(n) for n in hu.shape)
    st = _settings(data, spacing)
    dz, dy, dx = st["spacing"]
    s2, s26 = _structures(st["connectivity"])
    cand = hu >= st["threshold_hu"]
    min_area = st["min_area_mm2"] * (1 - 1e-9)

    # --- lesions: parts per artery label, grouped 26-connected per label
    groups: list[dict[str, Any]] = []  # each: kind, label, units (list of flat arrays), votes info
    for k in sorted(int(v) for v in np.unique(labels[labels > 0])):
        m = cand & (labels == k)
        if not m.any():
            continue
        box = ndimage.find_objects(m.astype(np.uint8))[0]
        sub = m[box]
        lo = [s.start for s in box]
        g3, n3 = ndimage.label(sub, structure=s26)
        u2, n2 = ndimage.label(sub, structure=s2)
        local = np.flatnonzero(u2)
        uid = u2.ravel()[local] - 1
        gid = g3.ravel()[local] - 1
        zz, yy, xx = np.unravel_index(local, sub.shape)
        flat = np.ravel_multi_index((zz + lo[0], yy + lo[1], xx + lo[2]), shape)
        order = np.argsort(uid, kind="stable")
        bounds = np.searchsorted(uid[order], np.arange(n2 + 1))
        unit_voxels = [flat[order[bounds[i]:bounds[i + 1]]] for i in range(n2)]
        unit_group = np.zeros(n2, np.int64)
        unit_group[uid] = gid
        for g in range(n3):
            groups.append({"kind": "lesion", "label": k,
                           "units": [unit_voxels[i] for i in np.flatnonzero(unit_group == g)]})

    # --- candidates: unlabelled parts the models voted for, and dense parts in the heart region
    records = list(data.get("rejected_candidates") or [])
    rec_index = _record_index(records)
    flat, uid, n = _units(cand & (labels == 0), s2)
    selected: dict[int, dict[str, Any]] = {}
    unmatched: list[dict[str, Any]] = []
    if n:
        counts = np.bincount(uid, minlength=n)
        zz, yy, xx = np.unravel_index(flat, shape)
        cy = np.bincount(uid, weights=yy, minlength=n) / counts
        cx = np.bincount(uid, weights=xx, minlength=n) / counts
        _, first = np.unique(uid, return_index=True)
        uz = zz[first]
        # matched records (their centroids are rounded to 2 decimals)
        for z, recs in rec_index.items():
            on = np.flatnonzero(uz == z)
            for r in recs:
                try:
                    ry, rx = (float(v) for v in r["centroid_yx"])
                except (KeyError, TypeError, ValueError):
                    unmatched.append(r)
                    continue
                d = np.maximum(np.abs(cy[on] - ry), np.abs(cx[on] - rx))
                if d.size and d.min() <= 0.0051:
                    selected[int(on[int(np.argmin(d))])] = r
                else:
                    unmatched.append(r)
        # quiet candidates: counted parts with their centroid in the heart region
        inside = _in_heart(hu, (dz, dy, dx), data, uz, cy, cx, triaged)
        inside &= (counts >= st["min_voxels"]) & (counts * dy * dx >= min_area)
        quiet = [int(i) for i in np.flatnonzero(inside) if int(i) not in selected]
        chosen = np.array(sorted(set(selected) | set(quiet)), dtype=np.int64)
        if chosen.size:
            keep = np.isin(uid, chosen)
            sel_flat, sel_uid = flat[keep], uid[keep]
            order = np.argsort(sel_uid, kind="stable")
            sel_flat, sel_uid = sel_flat[order], sel_uid[order]
            bounds = np.searchsorted(sel_uid, np.append(chosen, n))
            unit_voxels = {int(u): sel_flat[bounds[i]:bounds[i + 1]] for i, u in enumerate(chosen)}
            selmask = np.zeros(shape, bool)
            selmask.ravel()[sel_flat] = True
            g3, n3 = ndimage.label(selmask, structure=s26)
            g_of = {u: int(g3.ravel()[v[0]]) for u, v in unit_voxels.items()}
            by_group: dict[int, list[int]] = {}
            for u in chosen:
                by_group.setdefault(g_of[int(u)], []).append(int(u))
            for _, members in sorted(by_group.items()):
                recs = [selected[u] for u in members if u in selected]
                groups.append({"kind": "candidate", "units": [unit_voxels[u] for u in members], "records": recs,
                               "quiet": not recs})

    # --- contributions of every part, by agatston.score on a mask with one label per part
    units = [u for g in groups for u in g["units"]]
    contrib: dict[int, agatston.Lesion] = {}
    if units:
        allv = np.concatenate(units)
        zyx = np.unravel_index(allv, shape)
        lo = [int(a.min()) for a in zyx]
        hi = [int(a.max()) + 1 for a in zyx]
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        sub_shape = tuple(b - a for a, b in zip(lo, hi))
        part_mask = np.zeros(sub_shape, np.int32)
        for i, u in enumerate(units, start=1):
            z, y, x = np.unravel_index(u, shape)
            part_mask[z - lo[0], y - lo[1], x - lo[2]] = i
        res = agatston.score(hu[box], (dz, dy, dx), part_mask, threshold_hu=st["threshold_hu"],
                             min_area_mm2=st["min_area_mm2"], min_voxels=st["min_voxels"],
                             connectivity=st["connectivity"], calibration=st["calibration"], water_hu=st["water_hu"])
        contrib = {les.label: les for les in res.lesions}

    lesion_index = _record_index(list(data.get("lesions") or []))
    hu_flat = hu.ravel()
    counter = 0
    built: list[tuple[dict[str, Any], list[Part]]] = []
    for g in groups:
        parts = []
        for u in g["units"]:
            counter += 1
            les = contrib.get(counter)
            z, y, x = np.unravel_index(u, shape)
            vals = hu_flat[u].astype(np.float64)
            cyx = (float(y.mean()), float(x.mean()))
            rec = None
            if g["kind"] == "lesion":
                rec = _match(lesion_index, int(z[0]), cyx[0], cyx[1], 1e-3)
            else:
                rec = _match(rec_index, int(z[0]), cyx[0], cyx[1], 0.0051)
            votes = int(rec["votes"]) if rec is not None and rec.get("votes") is not None else None
            parts.append(Part(
                id=_pid(u[0], shape), slice_index=int(z[0]), label=int(g.get("label", 0)), n_voxels=int(u.size),
                area_mm2=float(u.size * dy * dx), max_hu=float(vals.max()), mean_hu=float(vals.mean()),
                counted=les is not None, agatston=les.agatston if les else 0.0,
                volume_mm3=les.volume_mm3 if les else 0.0, mass_mg=les.mass_mg if les else None,
                centroid_yx=cyx, votes=votes, review=bool(rec.get("review", False)) if rec else False,
                p_coronary=rec.get("p_coronary") if rec else None,
                reviewed=(rec.get("reviewed") or None) if rec else None,
                reason=(str(rec["reason"]) if rec.get("reason") else None) if rec else None, voxels=u))
        parts.sort(key=lambda p: int(p.voxels[0]))
        built.append((g, parts))

    lesions, cands = [], []
    for g, parts in built:
        votes = [p.votes for p in parts if p.votes is not None]
        if g["kind"] == "lesion":
            comp = dict(kind="lesion", label=g["label"], votes=min(votes) if votes else None,
                        review=any(p.review for p in parts),
                        source="reader" if any(p.reviewed == "added" for p in parts) else "models", parts=parts)
            lesions.append(comp)
        else:
            recs = g["records"]
            best = max(recs, key=lambda r: int(r.get("votes") or 0)) if recs else None
            label = ARTERY_CODES.get(str(best.get("artery") or "")) if best else None
            source = ("heart region" if g["quiet"] else
                      "reader" if any(r.get("source") == "reader" for r in recs) else "models")
            comp = dict(kind="candidate", label=label or 0, votes=max(votes) if votes else (0 if g["quiet"] else None),
                        review=False, source=source, parts=parts)
            cands.append(comp)
    # quiet candidates: drop bone-sized groups, keep the largest few
    quiet = [c for c in cands if c["source"] == "heart region"]
    loud = [c for c in cands if c["source"] != "heart region"]
    vox_mm3 = dz * dy * dx
    quiet = [c for c in quiet if sum(p.n_voxels for p in c["parts"]) * vox_mm3 <= MAX_QUIET_CANDIDATE_MM3]
    quiet.sort(key=lambda c: (-sum(p.agatston for p in c["parts"]), int(c["parts"][0].voxels[0])))
    quiet = quiet[:MAX_QUIET_CANDIDATES]

    def key(c: dict) -> tuple:
        return (-sum(p.agatston for p in c["parts"]), int(c["parts"][0].voxels[0]))

    lesions.sort(key=key)
    counted = [c for c in lesions if any(p.counted for p in c["parts"])]
    uncounted = [c for c in lesions if not any(p.counted for p in c["parts"])]
    uncounted.sort(key=lambda c: (-sum(p.n_voxels for p in c["parts"]), int(c["parts"][0].voxels[0])))
    loud.sort(key=lambda c: (-(c["votes"] or 0),) + key(c))
    left_out = max(0, len(loud) - MAX_VOTED_CANDIDATES)
    loud = loud[:MAX_VOTED_CANDIDATES]
    components = [Component(id=c["parts"][0].id, number=str(i), **c) for i, c in enumerate(counted, start=1)]
    components += [Component(id=c["parts"][0].id, number=f"U{i}", **c) for i, c in enumerate(uncounted, start=1)]
    components += [Component(id=c["parts"][0].id, number=f"C{i}", **c) for i, c in enumerate(loud, start=1)]
    components += [Component(id=c["parts"][0].id, number=f"H{i}", **c) for i, c in enumerate(quiet, start=1)]
    digest_src = {"shape": list(shape), "settings": {k: st[k] for k in ("threshold_hu", "min_area_mm2", "min_voxels",
                                                                           "connectivity")},
                  "components": sorted([[c.id, c.kind, c.label, [[p.id, p.n_voxels] for p in c.parts]]
                                        for c in components])}
    digest = hashlib.sha256(json.dumps(digest_src, sort_keys=True).encode()).hexdigest()
    return ComponentTable(components=tuple(components), digest=digest, shape=shape, settings=st,  # type: ignore[arg-type]
                          unmatched=tuple(unmatched), left_out=left_out)


def part_ids(hu: np.ndarray, labels: np.ndarray, settings: dict[str, Any]) -> dict[tuple[int, float, float], str]:
    """The id of every 2D part of a mask, as :func:`agatston.score` lists its lesions.

    Keyed by (slice index, centroid y, centroid x), the centroid rounded to 6
    decimals; ``settings``: :attr:`ComponentTable.settings` (threshold, connectivity).
    """
    shape = hu.shape
    cand = (hu >= settings["threshold_hu"]) & (labels > 0)
    s2, _ = _structures(settings["connectivity"])
    first_of: dict[tuple[int, float, float], str] = {}
    for k in sorted(int(v) for v in np.unique(labels[cand])):
        flat, uid, n = _units(cand & (labels == k), s2)
        if not n:
            continue
        _, first = np.unique(uid, return_index=True)
        zz, yy, xx = np.unravel_index(flat, shape)
        counts = np.bincount(uid, minlength=n)
        cy = np.bincount(uid, weights=yy, minlength=n) / counts
        cx = np.bincount(uid, weights=xx, minlength=n) / counts
        for u in range(int(n)):
            first_of[(int(zz[first[u]]), round(float(cy[u]), 6), round(float(cx[u]), 6))] = _pid(flat[first[u]], shape)
    return first_of
