"""Reviewing a scored scan: stable component ids, review files, and applying a review exactly.

A reader checks what the models found in the HTML report (:mod:`cacnet.report`):
per lesion *accept*, *reject* or *change artery*; per rejected candidate *add
as LM/LAD/LCX/RCA*. The page saves the decisions as ``<id>_review.json``;
:func:`apply_review` (``cac review apply``) turns them into a new mask and
recomputes every score with :func:`agatston.score` (never the page's sums).

Components and their ids
------------------------
The unit of a decision is a **component**, computed by
:func:`find_components` from the scan, the result's mask and the result JSON,
identically when the report is written and when the review is applied:

* **Parts** are the 2D connected components of candidate voxels (>= the
  result's ``threshold_hu``, in-plane ``connectivity`` of its settings) of one
  mask label on one axial slice, exactly the components ``agatston.score``
  sums over. A part's id is ``"z-y-x"``, its first voxel in C order on the
  canonical LPS grid of :func:`cacnet.io.read_scan` (slice z, row y, column
  x): it names the voxels without ambiguity, since the part is the connected
  component that holds that voxel.
* A **lesion** is a 3D lesion of the mask: the parts of one artery label that
  are 26-connected (as ``agatston.score`` numbers its ``lesion_id``) holding at
  least one counted part, so that the table's lesions are the result's
  ``n_lesions``. A 3D group of mask parts none of which is counted (below the
  minimum area or voxels of ``agatston.score``: it adds nothing) is an
  **uncounted** component (:attr:`ComponentTable.uncounted`), numbered
  ``U1``, ``U2``, ...: in the mask, not a lesion.
* A **candidate** is a group of unlabelled parts (26-connected among
  themselves) that the reader may add: the parts the models voted for without
  a majority (the result's ``rejected_candidates``, including lesions a reader
  rejected), and dense parts in the heart region that no model voted for: parts
  of at least the minimum area whose centroid lies in the heart region of
  :mod:`cacnet.triage` (heart, pericardial fat, roots of the great vessels,
  found again from the image) grown by one 3.5 mm cell, so that ribs, costal
  cartilage, sternum and spine stay out; where triage finds no heart, the
  result's heart bounding box, else the middle half of the image in-plane;
  in groups of at most
  :data:`MAX_QUIET_CANDIDATE_MM3` (larger ones are bone), the
  :data:`MAX_QUIET_CANDIDATES` largest by Agatston contribution. Candidates
  holding a part of the result's ``rejected_candidates`` are numbered ``C1``,
  ``C2``, ... (:attr:`ComponentTable.rejected`), the others ``H1``, ``H2``, ...
  (:attr:`ComponentTable.unvoted`), so that what the result rejected and what
  no model voted for are never counted together.
* A component's id is the id of its first part (its first voxel in C order).

The table's **digest** (sha256 of every component's id, kind, label and parts
with their sizes, plus the grid shape and the settings) goes into the review,
so that a review is refused when the result it was made on is no longer the
one it is applied to (the scan was scored again with other weights, or the
mask was edited): a *stale* review.

The review file
---------------
``{"format": "cac-review", "version": 1, "id", "scan_sha256",
"components_sha256", "reviewer", "saved", "decisions": {component id:
{"kind": "lesion" | "candidate", "action": ..., "artery": ...}}}``. Actions:
a lesion ``accept`` (kept, artery unchanged), ``reject`` (removed) or
``relabel`` (kept as ``artery``); a candidate ``add`` (as ``artery``) or
``reject`` (stays out). Components without a decision stay as scored.
``scan_sha256`` is the sha256 of the scan's bytes (:func:`scan_sha256`),
recorded by :func:`cacnet.pipeline.score_scan` in the result under
``source``; a review of another scan is refused.

Applying a review writes the reviewed result (``<id>.json``,
``<id>_calcium.nii.gz``, ``<id>.html``) and training data in the layout
``cac train --data`` reads: ``images/<id>.nii.gz`` (the scan, int16 HU when its
values are integers, on its own grid), ``points.csv`` (one point per part of
the reviewed mask, at its densest voxel, with its artery; the paper's
ground-truth rule, :func:`agatston.mask_from_points`, turns them back into a
mask) and ``truth.csv`` (the reviewed scores). Rows of other scans in
``points.csv`` and ``truth.csv`` are kept, so one folder collects every
reviewed scan.
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
from scipy import ndimage

import agatston

from ._files import sha256_file, write_csv_atomic, write_image_atomic, write_text_atomic
from .errors import InvalidScanError, ReviewError, UsageError

__all__ = [
    "Part", "Component", "ComponentTable", "ReviewOutcome", "find_components", "scan_sha256", "read_review",
    "apply_review", "apply_decisions", "artery_code", "REVIEW_FORMAT", "REVIEW_VERSION", "ARTERY_CODES",
    "MAX_QUIET_CANDIDATES", "MAX_QUIET_CANDIDATE_MM3", "MAX_VOTED_CANDIDATES", "POINTS_COLUMNS",
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
#: Columns of the ``points.csv`` that :func:`apply_review` writes (``cac train --data`` reads id, label, x/y/z_mm).
POINTS_COLUMNS = ["id", "label", "artery", "x_mm", "y_mm", "z_mm", "i", "j", "k", "component", "source"]

_ACTIONS = {"lesion": ("accept", "reject", "relabel"), "candidate": ("add", "reject")}


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
        sha256 of the table (see the module docstring).
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


def artery_code(name: Any) -> int:
    """Mask label of an artery name (LM, LAD, LCX, RCA; any case).

    Raises
    ------
    ReviewError
        For anything else.
    """
    code = ARTERY_CODES.get(str(name).strip().upper()) if isinstance(name, str) else None
    if code is None:
        raise ReviewError(f"unknown artery {name!r}: expected one of {', '.join(ARTERY_CODES)}.")
    return code


def scan_sha256(path: Path | str) -> str:
    """sha256 identifying a scan's bytes.

    A file (NIfTI, NRRD, MetaImage header, zip): the sha256 of its bytes. A
    folder (DICOM): the sha256 of the lines ``<relative path>\\0<sha256 of the
    file>\\n`` of every file in it, recursively, sorted by relative path,
    hidden files left out. A MetaImage ``.mhd`` is hashed with its data file
    only when it is a ``.mha``; for ``.mhd`` the header and the ``.raw``/``.zraw``
    file next to it with the same stem are hashed together.
    """
    path = Path(path)
    if path.is_dir():
        h = hashlib.sha256()
        files = sorted((p for p in path.rglob("*") if p.is_file()
                        and not any(part.startswith(".") for part in p.relative_to(path).parts)),
                       key=lambda p: p.relative_to(path).as_posix())
        for p in files:
            h.update(p.relative_to(path).as_posix().encode("utf-8") + b"\0" + sha256_file(p).encode() + b"\n")
        return h.hexdigest()
    if path.name.lower().endswith(".mhd"):
        h = hashlib.sha256(sha256_file(path).encode())
        for ext in (".raw", ".zraw"):
            data = path.with_suffix(ext)
            if data.exists():
                h.update(sha256_file(data).encode())
        return h.hexdigest()
    return sha256_file(path)


# ---------------------------------------------------------------------------------------------------------------
# the component table


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
        from types import SimpleNamespace

        from .triage import triage

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
    """The lesions and rejected candidates of a result, with stable ids (see the module docstring).

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


# ---------------------------------------------------------------------------------------------------------------
# review files


def read_review(path: Path | str) -> dict[str, Any]:
    """Read and check a review file saved by the report page.

    Returns
    -------
    dict
        The review, with ``decisions`` checked: known kinds and actions,
        an artery for ``relabel`` and ``add``.

    Raises
    ------
    ReviewError
        When the file cannot be read, is not a review, or holds a decision
        that makes no sense.
    """
    path = Path(path)
    review = _load_json(path, "review")
    if not isinstance(review, dict) or review.get("format") != REVIEW_FORMAT:
        raise ReviewError(f"{path}: not a review file (no \"format\": \"{REVIEW_FORMAT}\"); save one from the "
                          "report page (<id>.html, button \"Save review\").")
    if review.get("version") != REVIEW_VERSION:
        raise ReviewError(f"{path}: review format version {review.get('version')!r}; this cac reads version "
                          f"{REVIEW_VERSION}.")
    for key in ("id", "scan_sha256", "components_sha256"):
        if not isinstance(review.get(key), str) or not review[key]:
            raise ReviewError(f"{path}: the review has no {key!r}.")
    decisions = review.get("decisions")
    if not isinstance(decisions, dict):
        raise ReviewError(f"{path}: \"decisions\" must be an object keyed by component id.")
    for cid, d in decisions.items():
        if not isinstance(d, dict):
            raise ReviewError(f"{path}: decision for component {cid} is not an object.")
        kind, action = d.get("kind"), d.get("action")
        if kind not in _ACTIONS:
            raise ReviewError(f"{path}: component {cid}: kind {kind!r} is neither lesion nor candidate.")
        if action not in _ACTIONS[kind]:
            raise ReviewError(f"{path}: component {cid}: a {kind} can be {' or '.join(_ACTIONS[kind])}, "
                              f"not {action!r}.")
        if action in ("relabel", "add"):
            try:
                artery_code(d.get("artery"))
            except ReviewError as exc:
                raise ReviewError(f"{path}: component {cid}: {exc}") from None
    return review


def apply_decisions(labels: np.ndarray, table: ComponentTable, decisions: dict[str, Any]) -> np.ndarray:
    """The mask after a review's decisions (a new array; ``labels`` is not changed).

    Raises
    ------
    ReviewError
        For a component id the table does not hold, or a decision of the
        wrong kind.
    """
    out = np.array(labels, copy=True)
    flat = out.reshape(-1)
    for cid, d in decisions.items():
        comp = table.get(cid)
        if comp is None:
            raise ReviewError(f"the review decides on component {cid}, which this result does not have; the "
                              "review was made on another result (a stale review).")
        if comp.kind != d.get("kind"):
            raise ReviewError(f"component {cid} is a {comp.kind} in this result but a {d.get('kind')} in the "
                              "review (a stale review).")
        action = d["action"]
        if action == "reject":
            flat[comp.voxels] = 0
        elif action in ("relabel", "add"):
            flat[comp.voxels] = artery_code(d["artery"])
    return out


# ---------------------------------------------------------------------------------------------------------------
# applying a review


@dataclass
class ReviewOutcome:
    """What :func:`apply_review` did.

    Attributes
    ----------
    data : dict
        The reviewed result JSON (as written to ``<id>.json``).
    labels : numpy.ndarray
        The reviewed mask on the canonical grid.
    outdir : pathlib.Path
    files : dict of str to pathlib.Path
        What was written: json, mask, report, points, truth, image.
    before, after : float
        Total Agatston before and after the review.
    points_agree : bool
        Whether the paper's rule (:func:`agatston.mask_from_points`) rebuilds
        the reviewed mask exactly from ``points.csv``.
    """

    data: dict[str, Any]
    labels: np.ndarray
    outdir: Path
    files: dict[str, Path]
    before: float
    after: float
    points_agree: bool


def _load_json(path: Path, what: str) -> Any:
    """The JSON in ``path``; a missing or unreadable file is a :class:`ReviewError` naming ``what`` it should be."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ReviewError(f"{path}: no such {what} file.") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ReviewError(f"{path}: not a readable {what} file ({exc}).") from None


def _read_result(path: Path) -> dict[str, Any]:
    data = _load_json(path, "result")
    if not isinstance(data, dict) or "id" not in data or "lesions" not in data or "settings" not in data:
        raise ReviewError(f"{path}: not a result of cac score (<id>.json with id, lesions and settings).")
    return data


def _read_mask(path: Path, scan: Any) -> np.ndarray:
    import SimpleITK as sitk

    if not path.exists():
        raise ReviewError(f"{path}: the result's mask is missing; it is written next to <id>.json by cac score -o.")
    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise ReviewError(f"{path}: cannot read the result's mask ({str(exc).strip().splitlines()[-1]}).") from None
    if img.GetSize() != scan.source_image.GetSize():
        raise ReviewError(f"{path}: the mask's grid {img.GetSize()} is not the scan's {scan.source_image.GetSize()}.")
    img.CopyInformation(scan.source_image)
    arr = sitk.GetArrayFromImage(sitk.DICOMOrient(img, "LPS"))
    if arr.shape != scan.hu.shape:
        raise ReviewError(f"{path}: the mask does not lie on the scan's grid.")
    return arr.astype(np.uint8)


def _merge_csv(path: Path, columns: list[str], rows: list[dict[str, Any]], case_id: str) -> None:
    """Write ``rows`` into the CSV at ``path``, replacing the rows of ``case_id`` and keeping the others."""
    kept: list[dict[str, Any]] = []
    fields = list(columns)
    if path.exists():
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            for f in reader.fieldnames or []:
                if f not in fields:
                    fields.append(f)
            kept = [r for r in reader if r.get("id") != case_id]
    write_csv_atomic(path, fields, [{f: r.get(f, "") for f in fields} for r in kept + rows])


def _densest(part: Part, hu_flat: np.ndarray) -> int:
    vals = hu_flat[part.voxels]
    return int(part.voxels[int(np.argmax(vals))])


def apply_review(result_path: Path | str, review_path: Path | str, outdir: Optional[Path | str] = None, *,
                 scan_path: Optional[Path | str] = None, write_image: bool = True,
                 preview: bool = False) -> ReviewOutcome:
    """Apply a review to a result and write the reviewed result and training data.

    Parameters
    ----------
    result_path : path
        ``OUT/<id>.json`` written by ``cac score -o OUT`` (its mask
        ``<id>_calcium.nii.gz`` next to it).
    review_path : path
        ``<id>_review.json`` saved from the report page.
    outdir : path, optional
        Where to write; default ``OUT/reviewed``. Must not be the folder of
        ``result_path`` (the original result is kept).
    scan_path : path, optional
        The scan, when it is no longer where it was scored (the result's
        ``source.path``); its sha256 must match.
    write_image : bool
        Also write ``images/<id>.nii.gz`` (the training layout needs it).
    preview : bool
        Also write ``<id>.png`` (:func:`cacnet.preview.write_result_preview`).

    Returns
    -------
    ReviewOutcome

    Raises
    ------
    ReviewError
        A review of another scan, of another result (stale), an unreadable or
        malformed file, or a scan that changed since it was scored.
    UsageError
        ``outdir`` is the result's folder, or a file.
    InvalidScanError
        The scan cannot be read.
    """
    from .io import canonical_to_source_index, read_scan, to_source_grid
    from .pipeline import ScanResult

    result_path, review_path = Path(result_path), Path(review_path)
    data = _read_result(result_path)
    review = read_review(review_path)
    case_id = str(data["id"])
    if review["id"] != case_id:
        raise ReviewError(f"{review_path} is a review of scan {review['id']!r}, not of {case_id!r} "
                          f"({result_path}).")
    source = data.get("source") or {}
    if not source.get("sha256"):
        raise ReviewError(f"{result_path}: the result does not record the scan's sha256 (scored by an older cac, "
                          "or from a scan in memory); score the scan again with cac score -o OUT --report.")
    if review["scan_sha256"] != source["sha256"]:
        raise ReviewError(f"{review_path} was saved for another scan (sha256 {review['scan_sha256'][:12]}...) "
                          f"than {result_path} was scored from ({source['sha256'][:12]}...); it cannot be applied.")
    spath = Path(scan_path) if scan_path is not None else Path(source.get("path") or "")
    if scan_path is None and (not source.get("path") or not spath.exists()):
        raise ReviewError(f"the scan of {case_id} is no longer at {source.get('path')!r}; give its new place "
                          "with --scan PATH.")
    if not spath.exists():
        raise ReviewError(f"{spath}: no such scan.")
    now = scan_sha256(spath)
    if now != source["sha256"]:
        raise ReviewError(f"{spath} changed since it was scored (sha256 {now[:12]}... now, "
                          f"{source['sha256'][:12]}... then): score it again and review the new report.")
    out = Path(outdir) if outdir is not None else result_path.parent / "reviewed"
    if out.resolve() == result_path.parent.resolve():
        raise UsageError(f"-o {out} is the folder of the result; write the reviewed result to another folder "
                         "(the original is kept as scored).")
    if out.exists() and not out.is_dir():
        raise UsageError(f"-o {out} is a file, not a folder.")
    scan = read_scan(spath, series=(data.get("scan") or {}).get("series_uid"))
    labels = _read_mask(result_path.parent / f"{case_id}_calcium.nii.gz", scan)
    from .triage import triage

    checked = triage(scan)  # once: its heart region serves both component tables and the report
    table = find_components(scan.hu, scan.spacing, labels, data, checked)
    if review["components_sha256"] != table.digest:
        raise ReviewError(f"{review_path} is stale: it was made on a report whose lesions and candidates differ "
                          f"from those of {result_path} (the scan was scored again, or the mask changed). Review "
                          "the current report instead.")
    new_labels = apply_decisions(labels, table, review["decisions"])
    st = table.settings
    res = agatston.score(scan.hu, scan.spacing, new_labels, threshold_hu=st["threshold_hu"],
                         min_area_mm2=st["min_area_mm2"], min_voxels=st["min_voxels"],
                         connectivity=st["connectivity"], calibration=st["calibration"], water_hu=st["water_hu"])
    new_data = _reviewed_data(data, scan, table, review, res, new_labels, review_path)
    result = ScanResult(id=case_id, labels=new_labels, score=res, data=new_data, scan=scan, triage=checked)

    files: dict[str, Path] = {}
    files["mask"] = out / f"{case_id}_calcium.nii.gz"
    write_image_atomic(to_source_grid(new_labels, scan), files["mask"])
    from .report import write_report

    new_table = find_components(scan.hu, scan.spacing, new_labels, new_data, checked)
    files["report"] = write_report(result, out / f"{case_id}.html", new_table)
    if preview:
        from .preview import write_result_preview

        files["preview"] = write_result_preview(result, out / f"{case_id}.png", new_table)
    # training data: points (one per part, at its densest voxel), truth, image
    hu_flat = scan.hu.reshape(-1)
    rows, pts, pts_labels = [], [], []
    for comp in new_table.in_mask:  # every part of the mask, counted or not: the points rebuild the whole mask
        for p in comp.parts:
            v = _densest(p, hu_flat)
            z, y, x = (int(a) for a in np.unravel_index(v, scan.hu.shape))
            phys = scan.image.TransformIndexToPhysicalPoint((x, y, z))
            i, j, k = canonical_to_source_index(scan, (z, y, x))
            rows.append({"id": case_id, "label": comp.label, "artery": agatston.ARTERY_NAMES[comp.label],
                         "x_mm": f"{phys[0]:.4f}", "y_mm": f"{phys[1]:.4f}", "z_mm": f"{phys[2]:.4f}",
                         "i": int(round(i)), "j": int(round(j)), "k": int(round(k)), "component": p.id,
                         "source": "cac review"})
            pts.append((z, y, x))
            pts_labels.append(comp.label)
    files["points"] = out / "points.csv"
    _merge_csv(files["points"], POINTS_COLUMNS, rows, case_id)
    from .datasets import TRUTH_COLUMNS

    files["truth"] = out / "truth.csv"
    arts = new_data["arteries"]
    _merge_csv(files["truth"], TRUTH_COLUMNS, [{
        "id": case_id, "agatston": round(res.agatston, 4), "category": res.category,
        **{a: round(arts[a]["agatston"], 4) for a in ("LM", "LAD", "LCX", "RCA")},
        "labels_note": f"reviewed with cac review apply ({review_path.name})"}], case_id)
    if pts:
        rebuilt = agatston.mask_from_points(scan.hu, pts, st["threshold_hu"], labels=pts_labels,
                                            spacing=scan.spacing).mask
        agree = bool(np.array_equal(rebuilt.astype(np.uint8), (new_labels * (scan.hu >= st["threshold_hu"]))
                                    .astype(np.uint8)))
    else:
        agree = not (new_labels > 0).any()
    new_data["review_outcome"]["points_rebuild_mask"] = agree
    if not agree:
        new_data["warnings"].append(
            "points.csv: the paper's rule (the 26-connected >= 130 HU components holding the points) gives a "
            "different mask from the reviewed one (a lesion touches other dense voxels in 3D); train on "
            f"{files['mask'].name} (copy it to labels/{case_id}.nii.gz) for the exact reviewed mask.")
    if write_image:
        import SimpleITK as sitk

        files["image"] = out / "images" / f"{case_id}.nii.gz"
        hu = np.asarray(scan.hu)
        integral = bool(np.all(np.floor(hu) == hu)) and float(hu.min()) >= -32768 and float(hu.max()) <= 32767
        img = to_source_grid(hu.astype(np.int16) if integral else np.asarray(hu, np.float32), scan)
        write_image_atomic(sitk.Cast(img, sitk.sitkInt16) if integral else img, files["image"])
    files["json"] = out / f"{case_id}.json"
    write_text_atomic(files["json"], json.dumps(new_data, indent=2))
    return ReviewOutcome(data=new_data, labels=new_labels, outdir=out, files=files, before=float(data["agatston"]),
                         after=float(res.agatston), points_agree=agree)


def _reviewed_data(data: dict[str, Any], scan: Any, table: ComponentTable, review: dict[str, Any],
                   res: agatston.ScoreResult, new_labels: np.ndarray, review_path: Path) -> dict[str, Any]:
    """The result JSON after a review: new scores and lesions, the reader's decisions recorded."""
    from .pipeline import lesion_position

    decisions = review["decisions"]
    shape = scan.hu.shape
    # what the reader did to each part (by its first voxel), and the votes the models gave it
    status: dict[str, str] = {}
    votes: dict[str, Optional[int]] = {}
    flags: dict[str, bool] = {}
    for comp in table.components:
        d = decisions.get(comp.id)
        act = {"accept": "accepted", "relabel": "relabelled", "add": "added", "reject": "rejected"}.get(
            d["action"]) if d else None
        if act == "relabelled" and d and artery_code(d["artery"]) == comp.label:
            act = "accepted"
        for p in comp.parts:
            status[p.id] = act or p.reviewed or ""
            votes[p.id] = p.votes
            flags[p.id] = p.review and act is None
    # the new mask's 2D components (as agatston.score lists them), keyed by their first voxel
    cand = (scan.hu >= table.settings["threshold_hu"]) & (new_labels > 0)
    s2, _ = _structures(table.settings["connectivity"])
    first_of: dict[tuple[int, float, float], str] = {}
    for k in sorted(int(v) for v in np.unique(new_labels[cand])):
        flat, uid, n = _units(cand & (new_labels == k), s2)
        if not n:
            continue
        _, first = np.unique(uid, return_index=True)
        zz, yy, xx = np.unravel_index(flat, shape)
        counts = np.bincount(uid, minlength=n)
        cy = np.bincount(uid, weights=yy, minlength=n) / counts
        cx = np.bincount(uid, weights=xx, minlength=n) / counts
        for u in range(int(n)):
            first_of[(int(zz[first[u]]), round(float(cy[u]), 6), round(float(cx[u]), 6))] = _pid(flat[first[u]], shape)
    n_models = int((data.get("models") or {}).get("models_run") or (data.get("models") or {}).get("n_models") or 0)
    lesions = []
    for les in res.lesions:
        pid = first_of.get((les.slice_index, round(les.centroid_yx[0], 6), round(les.centroid_yx[1], 6)), "")
        d = les.to_dict()
        v = votes.get(pid)
        d.update({"artery": agatston.ARTERY_NAMES.get(les.label, str(les.label)),
                  "votes": v if v is not None else (0 if status.get(pid) == "added" else n_models),
                  "review": flags.get(pid, False),
                  "reviewed": status.get(pid) or None,
                  "position": lesion_position(scan, les.slice_index, *les.centroid_yx)})
        lesions.append(d)
    # rejected candidates: the result's, less those the reader added, plus the lesions the reader rejected
    added = [p for comp in table.components if comp.kind == "candidate"
             and (decisions.get(comp.id) or {}).get("action") == "add" for p in comp.parts]

    def was_added(r: dict[str, Any]) -> bool:
        try:
            ry, rx = (float(v) for v in r["centroid_yx"])
            return any(p.slice_index == int(r["slice_index"]) and abs(p.centroid_yx[0] - ry) <= 0.0051
                       and abs(p.centroid_yx[1] - rx) <= 0.0051 for p in added)
        except (KeyError, TypeError, ValueError):
            return False

    rejected = [r for r in (data.get("rejected_candidates") or []) if not was_added(r)]
    for comp in table.in_mask:
        if (decisions.get(comp.id) or {}).get("action") != "reject":
            continue
        for p in comp.parts:
            rejected.append({
                "slice_index": p.slice_index, "centroid_yx": [round(p.centroid_yx[0], 2), round(p.centroid_yx[1], 2)],
                "votes": p.votes if p.votes is not None else 0, "artery": agatston.ARTERY_NAMES.get(comp.label, ""),
                "position": lesion_position(scan, p.slice_index, *p.centroid_yx),
                "source": "reader", "reviewed": "rejected"})
    arteries = {}
    cal = table.settings["calibration"]
    for lab, name in agatston.ARTERY_NAMES.items():
        s = res.by_label.get(lab)
        arteries[name] = {"agatston": s.agatston if s else 0.0, "volume_mm3": s.volume_mm3 if s else 0.0,
                          "mass_mg": (s.mass_mg if s else (0.0 if cal else None)), "n_lesions": s.n_lesions if s else 0}
    drs = agatston.cac_drs({k: v["agatston"] for k, v in arteries.items()})
    counts = {a: sum(1 for d in decisions.values() if d["action"] == a)
              for a in ("accept", "reject", "relabel", "add")}
    new = dict(data)
    new.update({
        "agatston": res.agatston, "category": res.category, "volume_mm3": res.volume_mm3, "mass_mg": res.mass_mg,
        "arteries": arteries, "cac_drs": drs.to_dict(), "n_lesions": res.n_lesions, "n_lesions_2d": len(lesions),
        "lesions": lesions, "review": sorted({d["lesion_id"] for d in lesions if d["review"]}),
        "rejected_candidates": rejected, "warnings": list(data.get("warnings") or []),
    })
    new["review_outcome"] = {
        "review_file": review_path.name, "review_sha256": sha256_file(review_path),
        "reviewer": str(review.get("reviewer") or ""), "saved": str(review.get("saved") or ""),
        "applied_with": f"cac-toolkit {_version()}", "decisions": counts,
        "components_sha256": table.digest, "agatston_before": data.get("agatston"),
        "category_before": data.get("category"), "agatston_after": res.agatston,
    }
    return new


def _version() -> str:
    from . import __version__

    return str(__version__)
