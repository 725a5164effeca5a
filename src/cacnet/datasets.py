"""Converting public coronary calcium data sets into the layout `cac train --data` reads.

Two data sets are read in the layout they are distributed in (the `cac dataset
coca` and `cac dataset orcascore` commands):

**COCA** (Stanford AIMI, "COCA - Coronary Calcium and chest CTs", gated part):
``SRC/patient/<id>/<series folder>/*.dcm`` (one calcium-scoring series per
patient) and ``SRC/calcium_xml/<id>.xml``, an OsiriX ROI export (an Apple
plist). SRC may also be the folder that holds ``Gated_release_final/``. The
top-level ``Images`` array holds, per annotated slice, ``ImageIndex`` and
``ROIs``; each ROI has ``Name`` (the vessel), ``Point_px`` (polygon vertices
"(x, y)" in pixels of the slice), ``Point_mm`` and ``Center`` ("(x, y, z)"
patient mm), ``Area`` (cm^2) and ``Max`` (HU). Rules:

* Vessel: "Left Coronary Artery" (left main) -> 1 LM, "Left Anterior
  Descending Artery" -> 2 LAD, "Left Circumflex Artery" -> 3 LCX, "Right
  Coronary Artery" -> 4 RCA (case-insensitive; the abbreviations LM, LAD, LCX,
  RCA are accepted too). Any other name: an error row in report.csv, the ROI
  is left out.
* Slice: found by the ROI's z in patient mm (the median z of ``Point_mm``,
  else the z of ``Center``), matched against the z of the slices' positions
  (ImagePositionPatient) within half a slice increment, whatever order the
  files are in. ``ImageIndex`` is the 0-based index of the image in the
  OsiriX 2D viewer the ROIs were exported from (the ExportROIs plugin writes
  ``ImageIndex = i`` while walking ``[viewerController pixList]``; its comment:
  "order in the series, start by zero"). That order is the viewer's: by
  instance number by default, by slice location where OsiriX's preference
  says so, reversed after "Flip series"; COCA's exports count in position
  order (increasing z). So the order an export follows is found from its ROIs
  that have a z (the order most of them agree with, among position, instance
  and their reverses; position order when none has a z or on a tie), and
  each ROI's ``ImageIndex`` is checked against that order: only an index that
  names another slice than the z is a mismatch (the z is used). Without any
  z the slice comes from ``ImageIndex`` in that order; the report's
  ``slice_from`` says which was used, and the case row which order. A z that
  matches no slice is an error row: the ROI is left out, the case is
  converted without it and its ``labels_note`` in truth.csv says so.
* Pixels: OsiriX pixel coordinates put the centre of pixel ``c`` at
  ``c + 0.5`` (``DCMPix convertPixX:pixY:toDICOMCoords:`` subtracts 0.5
  before adding ``c * spacing`` to the position of the first pixel's centre),
  so a vertex ``(x, y)`` is at index ``(x - 0.5, y - 0.5)``. Where
  ``Point_mm`` gives every vertex, the two are compared and a difference of
  more than :data:`PX_MM_TOLERANCE_PX` pixel is reported.
* Mask: the filled polygon (:func:`fill_polygon`: pixel centres inside by
  the even-odd rule, plus every pixel the outline passes through; one point:
  its pixel; two points: the segment's pixels) intersected with >= 130 HU,
  labelled by vessel. A pixel already labelled by an earlier ROI keeps its
  label (reported where two vessels claim it).
* Checks (report.csv): the maximum HU against ``Max`` (ok within
  :data:`MAX_HU_TOLERANCE` HU, over the filled pixels or the pixels whose
  centre is inside). A ROI without a pixel >= 130 HU is reported too.
  Mismatching ROIs are kept in the mask. ``Area`` is recorded
  (``area_cm2_annotation``) next to the filled pixels' area (``area_cm2``) and
  the outline's geometric area (``polygon_area_cm2``), for information, and is
  not checked: it is OsiriX's ``AreaCM2`` of the ROI (``ROI -dataString``: its
  ``-Area`` times both pixel spacings / 100, or square pixels without a pixel
  spacing), and ``-Area`` is the number of pixels of a brush ROI's mask
  (``Type`` 20, ``-plainArea``) or the shoelace area of a polygon's outline,
  spline-smoothed where OsiriX's spline option is on (``-Area:
  splinePoints``). The exported ``Point_px`` of a brush ROI is an outline of
  its mask, which does not give back its pixel count, so ``Area`` differs
  from either recomputed area on correct annotations and says nothing about
  the voxels converted.
* Patients without ``calcium_xml/<id>.xml``: COCA ships annotations only
  for patients with coronary calcium (the xml holds the calcium ROIs; the
  community loaders read a missing xml as "no calcifications"), so by
  default such a patient gets an all-zero label (category A) and a
  ``labels_note`` saying it was assumed. ``missing_xml="skip"`` leaves them
  out instead. An xml without a patient folder is a failed case.
* Case ids are ``coca_<id>``.

**orCaScore** (MICCAI 2014 challenge): MetaImage non-contrast CT images with
reference label images (1 = LAD, left main included, 2 = LCX, 3 = RCA;
lesions are 3D 6-connected components > 130 HU). Images are the ``*.mhd``
files anywhere under SRC whose name does not contain "label", "reference" or
"ref" and that do not lie in a reference folder (a folder whose name starts
with "reference" or "label", any case). The reference of ``<stem>.mhd`` is,
in this order of search (all matches are collected; exactly one must be
found): ``<stem>_label.mhd`` or ``<stem>-label.mhd`` next to it, or
``<stem>.mhd`` anywhere inside a reference folder that is a sub-folder of the
image's folder or of its parent. Images without a reference (the CTA scans
of the challenge, the test set) are listed as ignored, not failed. Labels map
1 -> 2 (LAD), 2 -> 3 (LCX), 3 -> 4 (RCA); the mask is the reference
intersected with >= 130 HU. LM is merged into LAD: ``labels_note`` says so
and ``OUT/labels_meta.json`` holds ``{id: {"lm_merged_into_lad": true}}``.
report.csv has one row per reference lesion (6-connected component of one
label): voxels below 130 HU, and a >= 130 HU region reaching beyond the
labelled voxels, are reported. Case ids are the file stems (characters other
than letters, digits, ``_`` and ``-`` become ``_``).

**Output** (OUT): ``images/<id>.nii.gz`` (int16 HU) and ``labels/<id>.nii.gz``
(uint8 0 / 1 LM / 2 LAD / 3 LCX / 4 RCA) on the same grid (the canonical LPS
grid of :func:`cacnet.io.read_scan`); ``truth.csv`` (:data:`TRUTH_COLUMNS`,
scores from :func:`agatston.score` on the written arrays); ``report.csv``
(:data:`REPORT_COLUMNS`). Every file is written atomically; truth.csv and
report.csv are rewritten after each case, keep the rows of cases not in this
run (so both data sets can go into one OUT), and a case whose image and label
both exist is not converted again (its scores are recomputed from the files,
its earlier report rows are kept). A bad case is recorded and skipped; it
never stops the run.
"""

from __future__ import annotations

import csv
import json
import math
import plistlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence
from xml.parsers.expat import ExpatError

import numpy as np

from ._files import write_csv_atomic, write_image_atomic, write_text_atomic
from .errors import InvalidScanError

__all__ = [
    "DatasetLayoutError", "convert_coca", "convert_orcascore", "fill_polygon", "polygon_area",
    "TRUTH_COLUMNS", "REPORT_COLUMNS", "COCA_VESSELS", "MAX_HU_TOLERANCE", "PX_MM_TOLERANCE_PX",
    "THRESHOLD_HU",
]

#: Columns of OUT/truth.csv.
TRUTH_COLUMNS = ["id", "agatston", "category", "LM", "LAD", "LCX", "RCA", "labels_note"]

#: Columns of OUT/report.csv: one row per annotation (ROI or reference lesion), one per case (``roi`` empty).
REPORT_COLUMNS = ["id", "roi", "image_index", "slice", "instance_number", "z_mm", "slice_from", "vessel", "label",
                  "n_points", "n_voxels", "area_cm2", "polygon_area_cm2", "area_cm2_annotation", "max_hu",
                  "max_hu_annotation", "status", "message"]

#: OsiriX ROI names of COCA (lower case) and their labels.
COCA_VESSELS: dict[str, int] = {
    "left coronary artery": 1, "left anterior descending artery": 2, "left circumflex artery": 3,
    "right coronary artery": 4, "lm": 1, "lad": 2, "lcx": 3, "rca": 4,
}

#: Tolerance of the maximum-HU check, in HU.
MAX_HU_TOLERANCE = 1.0
#: Largest accepted distance between ``Point_px`` and ``Point_mm``, in pixels.
PX_MM_TOLERANCE_PX = 0.25
#: Calcium threshold (HU, >=).
THRESHOLD_HU = 130

_NAMES = {1: "LM", 2: "LAD", 3: "LCX", 4: "RCA"}
_ORCASCORE_MAP = {1: 2, 2: 3, 3: 4}
_ORCASCORE_NOTE = "LM merged into LAD (orCaScore labels left main calcium as LAD): LM is absent, not zero"
_FLOAT = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


class DatasetLayoutError(InvalidScanError):
    """SRC is not laid out as the data set is distributed (exit 3)."""


# --------------------------------------------------------------------------------------------------------------
# polygons


def _segment_pixels(p0: np.ndarray, p1: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(x, y) indices of every pixel a segment passes through (pixels half-open, centres at integers).

    The parameters where the segment crosses a pixel border (x or y at
    ``k + 0.5``) split it into pieces that each lie in one pixel; the pixel of
    every crossing point, every piece's midpoint and both ends is taken.
    """
    d = p1 - p0
    ts = [np.array([0.0, 1.0])]
    for a in (0, 1):
        if d[a] != 0:
            lo, hi = sorted((float(p0[a]), float(p1[a])))
            size = shape[1 - a]  # x runs along columns (shape[1]), y along rows (shape[0])
            k = np.arange(max(math.ceil(lo - 0.5), -2), min(math.floor(hi - 0.5), size) + 1, dtype=np.float64)
            ts.append((k + 0.5 - p0[a]) / d[a])
    t = np.unique(np.clip(np.concatenate(ts), 0.0, 1.0))
    t = np.concatenate([t, (t[:-1] + t[1:]) / 2])
    return np.floor(p0[None, :] + t[:, None] * d[None, :] + 0.5).astype(np.int64)


def fill_polygon(points_xy: Any, shape: Sequence[int], outline: bool = True) -> np.ndarray:
    """Pixels of a polygon on a 2D grid: centre inside (even-odd rule), or touched by the outline.

    Parameters
    ----------
    points_xy : array_like, shape (n, 2)
        Vertices as (x, y) = (column, row) in index coordinates: the centre
        of pixel ``[r, c]`` is at (c, r) and the pixel covers
        ``[c - 0.5, c + 0.5) x [r - 0.5, r + 0.5)``. One point: its pixel; two
        points: the pixels of the segment; three or more: a closed polygon.
    shape : (rows, columns)
        Size of the grid; pixels outside it are dropped.
    outline : bool, default True
        Include the pixels the outline passes through. With False only the
        pixels whose centre is inside (none for one or two points).

    Returns
    -------
    numpy.ndarray of bool, shape ``shape``

    Examples
    --------
    >>> fill_polygon([(1, 1), (3, 1), (3, 3), (1, 3)], (5, 5)).sum()
    9
    """
    pts = np.asarray(points_xy, dtype=np.float64).reshape(-1, 2)
    rows, cols = int(shape[0]), int(shape[1])
    mask = np.zeros((rows, cols), dtype=bool)
    if pts.shape[0] == 0:
        return mask
    if not np.isfinite(pts).all():
        raise ValueError("polygon vertices must be finite numbers")
    n = pts.shape[0]
    if outline:
        ends = [(pts[i], pts[(i + 1) % n]) for i in range(n)] if n >= 3 else [(pts[0], pts[-1])]
        for p0, p1 in ends:
            xy = _segment_pixels(p0, p1, (rows, cols))
            ok = (xy[:, 0] >= 0) & (xy[:, 0] < cols) & (xy[:, 1] >= 0) & (xy[:, 1] < rows)
            mask[xy[ok, 1], xy[ok, 0]] = True
    if n >= 3:
        c0, c1 = max(math.ceil(pts[:, 0].min()), 0), min(math.floor(pts[:, 0].max()), cols - 1)
        r0, r1 = max(math.ceil(pts[:, 1].min()), 0), min(math.floor(pts[:, 1].max()), rows - 1)
        if c0 <= c1 and r0 <= r1:
            yy, xx = np.mgrid[r0:r1 + 1, c0:c1 + 1].astype(np.float64)
            inside = np.zeros(yy.shape, dtype=bool)
            xj, yj = pts[-1]
            for xi, yi in pts:
                crosses = (yi > yy) != (yj > yy)
                if crosses.any():
                    x_at = xi + (yy - yi) * (xj - xi) / (yj - yi) if yj != yi else np.full_like(yy, np.inf)
                    inside ^= crosses & (xx < x_at)
                xj, yj = xi, yi
            mask[r0:r1 + 1, c0:c1 + 1] |= inside
    return mask


def polygon_area(points_xy: Any) -> float:
    """Geometric (shoelace) area of a closed polygon, in square index units (0 for fewer than 3 points)."""
    pts = np.asarray(points_xy, dtype=np.float64).reshape(-1, 2)
    if pts.shape[0] < 3:
        return 0.0
    x, y = pts[:, 0], pts[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2)


# --------------------------------------------------------------------------------------------------------------
# output folder


def _num(value: Any) -> Optional[float]:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _fmt(value: Optional[float], digits: int = 4) -> Any:
    return "" if value is None else round(float(value), digits)


def _read_rows(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            return [r for r in csv.DictReader(fh) if r.get("id")]
    except (OSError, csv.Error, UnicodeDecodeError):
        return []


class _Store:
    """OUT: truth.csv, report.csv and labels_meta.json, kept in memory and rewritten after each case."""

    def __init__(self, out: Path) -> None:
        self.out = Path(out)
        self.truth: dict[str, dict[str, Any]] = {r["id"]: r for r in _read_rows(self.out / "truth.csv")}
        self.report: dict[str, list[dict[str, Any]]] = {}
        for r in _read_rows(self.out / "report.csv"):
            self.report.setdefault(r["id"], []).append(r)
        self.meta: dict[str, Any] = {}
        self._meta_path = self.out / "labels_meta.json"
        if self._meta_path.is_file():
            try:
                loaded = json.loads(self._meta_path.read_text(encoding="utf-8"))
                self.meta = loaded if isinstance(loaded, dict) else {}
            except (OSError, ValueError):
                self.meta = {}
        self._meta_dirty = False

    def paths(self, case_id: str) -> tuple[Path, Path]:
        return self.out / "images" / f"{case_id}.nii.gz", self.out / "labels" / f"{case_id}.nii.gz"

    def finished(self, case_id: str) -> bool:
        image, label = self.paths(case_id)
        return image.is_file() and label.is_file()

    def set_case(self, case_id: str, truth: Optional[dict[str, Any]], report: list[dict[str, Any]],
                 meta: Optional[dict[str, Any]] = None) -> None:
        if truth is None:
            self.truth.pop(case_id, None)
        else:
            self.truth[case_id] = truth
        self.report[case_id] = report
        if meta is not None:
            self.meta[case_id] = meta
            self._meta_dirty = True

    def write(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        write_csv_atomic(self.out / "truth.csv", TRUTH_COLUMNS,
                         [{k: r.get(k, "") for k in TRUTH_COLUMNS} for r in self.truth.values()])
        write_csv_atomic(self.out / "report.csv", REPORT_COLUMNS,
                         [{k: r.get(k, "") for k in REPORT_COLUMNS} for rows in self.report.values() for r in rows])
        if self._meta_dirty:
            write_text_atomic(self._meta_path, json.dumps(self.meta, indent=2, sort_keys=True) + "\n")


def _truth_row(case_id: str, hu: np.ndarray, spacing: Sequence[float], labels: np.ndarray, note: str) -> dict:
    import agatston

    res = agatston.score(hu, spacing, labels)
    row: dict[str, Any] = {"id": case_id, "agatston": round(res.agatston, 6), "category": res.category}
    for k, name in _NAMES.items():
        row[name] = round(res.by_label[k].agatston, 6) if k in res.by_label else 0.0
    row["labels_note"] = note
    return row


def _write_case(store: _Store, case_id: str, scan: Any, hu16: np.ndarray, labels: np.ndarray) -> None:
    """images/<id>.nii.gz then labels/<id>.nii.gz, on the scan's canonical grid, each atomically."""
    import SimpleITK as sitk

    image_path, label_path = store.paths(case_id)
    for array, path in ((hu16, image_path), (labels, label_path)):
        img = sitk.GetImageFromArray(np.ascontiguousarray(array))
        img.CopyInformation(scan.image)
        write_image_atomic(img, path)


def _rescore(store: _Store, case_id: str, default_note: str) -> dict[str, Any]:
    """truth.csv row of a case converted earlier: its earlier row, else scored again from its files."""
    import SimpleITK as sitk

    old = store.truth.get(case_id)
    if old and all(_num(old.get(k)) is not None for k in ("agatston", *_NAMES.values())) and old.get("category"):
        return {k: old.get(k, "") for k in TRUTH_COLUMNS}
    rows = [r for r in store.report.get(case_id, []) if r.get("roi")]
    n_err = sum(r.get("status") == "error" for r in rows)
    if n_err and not default_note:
        default_note = f"{n_err} of {len(rows)} ROI(s) left out (see report.csv)"
    image_path, label_path = store.paths(case_id)
    try:
        img = sitk.ReadImage(str(image_path))
        lab = sitk.ReadImage(str(label_path))
    except RuntimeError as exc:
        raise InvalidScanError(f"{image_path}: cannot be read ({str(exc).strip().splitlines()[-1][:200]})") from None
    hu = sitk.GetArrayFromImage(img)
    labels = sitk.GetArrayFromImage(lab)
    if hu.shape != labels.shape:
        raise InvalidScanError(f"{label_path}: {labels.shape} voxels, the image {hu.shape}")
    sx, sy, sz = img.GetSpacing()
    return _truth_row(case_id, hu, (sz, sy, sx), labels, default_note)


def _hu16(hu: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(hu), -32768, 32767).astype(np.int16)


@dataclass
class _Case:
    id: str
    source: str
    convert: Callable[[], tuple[dict[str, Any], list[dict[str, Any]], Optional[dict[str, Any]], str]]
    default_note: str = ""
    meta: Optional[dict[str, Any]] = None


def _case_row(case_id: str, status: str, message: str) -> dict[str, Any]:
    return {"id": case_id, "roi": "", "status": status, "message": message}


def _run(cases: list[_Case], store: _Store, ignored: list[dict[str, Any]],
         on_start: Optional[Callable[[int], None]], on_case: Optional[Callable[[dict[str, Any]], None]]
         ) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = list(ignored)
    if on_start is not None:
        on_start(len(cases))
    for case in cases:
        result: dict[str, Any] = {"id": case.id, "source": case.source}
        done = False
        if store.finished(case.id):
            try:
                truth = _rescore(store, case.id, case.default_note)
                report = store.report.get(case.id) or [
                    _case_row(case.id, "ok", "converted in an earlier run (no earlier report rows)")]
                store.set_case(case.id, truth, report, case.meta)
                result.update(status="skipped", message="already converted (image and label present)")
                done = True
            except (InvalidScanError, ValueError):
                done = False  # unreadable earlier output: convert again
        if not done:
            try:
                truth, report, meta, message = case.convert()
                store.set_case(case.id, truth, report, meta)
                result.update(status="converted", message=message)
            except InvalidScanError as exc:
                store.set_case(case.id, None, [_case_row(case.id, "error", str(exc))])
                result.update(status="error", message=str(exc))
            except Exception as exc:  # noqa: BLE001 - a bad case never stops the run; say what happened
                msg = f"internal error: {exc!r} (please report it)"
                store.set_case(case.id, None, [_case_row(case.id, "error", msg)])
                result.update(status="error", message=msg)
        truth_row = store.truth.get(case.id)
        if truth_row is not None and result["status"] != "error":
            result.update(agatston=float(truth_row["agatston"]), category=truth_row["category"])
        rows = store.report.get(case.id, [])
        for st in ("ok", "mismatch", "error"):
            result[f"n_{st}"] = sum(1 for r in rows if r.get("roi") != "" and r.get("status") == st)
        store.write()
        results.append(result)
        if on_case is not None:
            on_case(result)
    store.write()
    return results


def _listing(folder: Path, limit: int = 12) -> str:
    try:
        entries = sorted(folder.iterdir())
    except OSError:
        return "(cannot be listed)"
    names = [p.name + ("/" if p.is_dir() else "") for p in entries[:limit]]
    more = f", ... ({len(entries) - limit} more)" if len(entries) > limit else ""
    return (", ".join(names) + more) if names else "(empty)"


def _natural(name: str) -> tuple:
    return tuple((0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.findall(r"\d+|\D+", name))


def _safe_id(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", text)


# --------------------------------------------------------------------------------------------------------------
# COCA


def _coca_root(src: Path) -> Path:
    src = Path(src)
    if not src.is_dir():
        raise DatasetLayoutError(f"{src}: no such folder; expected the COCA gated folder with patient/<id>/"
                                 "<series folder>/*.dcm and calcium_xml/<id>.xml.")
    for root in (src, src / "Gated_release_final"):
        if (root / "patient").is_dir() and (root / "calcium_xml").is_dir():
            return root
    missing = [d for d in ("patient", "calcium_xml") if not (src / d).is_dir()]
    raise DatasetLayoutError(
        f"{src}: not the COCA gated layout (no {' and no '.join(d + '/' for d in missing)} folder). Expected "
        "SRC/patient/<id>/<series folder>/*.dcm (one calcium-score series per patient) and "
        "SRC/calcium_xml/<id>.xml (OsiriX ROI exports), as in Gated_release_final/ of the download; "
        f"found: {_listing(src)}.")


def _tuple(text: Any, n: int) -> Optional[tuple[float, ...]]:
    if isinstance(text, (list, tuple)):
        vals = [_num(v) for v in text]
    else:
        vals = [_num(v) for v in _FLOAT.findall(str(text))]
    if len(vals) != n or any(v is None for v in vals):
        return None
    return tuple(float(v) for v in vals)  # type: ignore[arg-type]


@dataclass
class _SeriesGeometry:
    """A DICOM scan's file grid: slice z, instance order, canonical slice of each file slice."""

    z: np.ndarray  # patient z of each file slice k (ascending along the slice normal)
    step: float
    canonical: list[int]  # canonical z index of file slice k
    instance: list[Optional[int]]
    by_index: Optional[list[int]]  # ImageIndex i -> file slice k (instance order), None when unknown
    position_order: list[int]  # i -> k in order of increasing z
    spacing_xy: tuple[float, float]


def _series_geometry(scan: Any) -> _SeriesGeometry:
    from .io import canonical_to_source_index

    src = scan.source_image
    nk = src.GetSize()[2]
    z = np.array([src.TransformContinuousIndexToPhysicalPoint((0.0, 0.0, float(k)))[2] for k in range(nk)])
    step = float(np.median(np.abs(np.diff(z)))) if nk > 1 else float(scan.spacing[0])
    canonical = [0] * nk
    instance: list[Optional[int]] = [None] * nk
    for zc in range(scan.hu.shape[0]):
        k = int(round(canonical_to_source_index(scan, (zc, 0.0, 0.0))[2]))
        canonical[k] = zc
        if scan.slices:
            instance[k] = scan.slices[zc].get("instance_number")
    by_index = None
    if all(v is not None for v in instance) and len(set(instance)) == nk:
        by_index = sorted(range(nk), key=lambda k: instance[k])  # type: ignore[arg-type, return-value]
    sx, sy = src.GetSpacing()[:2]
    return _SeriesGeometry(z, step, canonical, instance, by_index, sorted(range(nk), key=lambda k: z[k]),
                           (float(sx), float(sy)))


def _roi_z(roi: dict[str, Any]) -> tuple[Optional[float], str, list, bool]:
    """A ROI's z in patient mm: (z, where from ("Point_mm" or "Center", "" without), Point_mm, all readable)."""
    raw_mm = roi.get("Point_mm") or []
    mm = [_tuple(p, 3) for p in raw_mm] if isinstance(raw_mm, list) else []
    mm_ok = bool(mm) and all(p is not None for p in mm)
    if mm_ok:
        return float(np.median([p[2] for p in mm])), "Point_mm", mm, True  # type: ignore[index]
    center = _tuple(roi.get("Center"), 3) if roi.get("Center") is not None else None
    if center is not None:
        return center[2], "Center", mm, False
    return None, "", mm, False


def _z_slice(geo: _SeriesGeometry, z_val: float) -> Optional[int]:
    """The file slice at ``z_val`` (within half a slice increment), None when there is none."""
    dist = np.abs(geo.z - z_val)
    k = int(np.argmin(dist))
    return k if dist[k] <= geo.step / 2 * (1 + 1e-6) + 1e-4 else None


def _image_index(value: Any) -> Optional[int]:
    return int(value) if isinstance(value, (int, float)) and float(value).is_integer() else None


def _index_order(geo: _SeriesGeometry, pairs: list[tuple[int, int]]) -> tuple[str, list[int], int]:
    """The order an export counts ``ImageIndex`` in: (its name, ImageIndex i -> file slice k, ROIs that agree).

    ``pairs``: (ImageIndex, file slice of the ROI's z) of the ROIs with both. The candidates are the orders
    an OsiriX viewer shows a series in (position, instance, and both reversed); the one most ROIs agree with
    wins, position order first on a tie (and when no ROI has a z).
    """
    position = list(geo.position_order)
    orders = [("position order", position)]
    if geo.by_index is not None:
        orders.append(("instance order", list(geo.by_index)))
    orders.append(("reverse position order", position[::-1]))
    if geo.by_index is not None:
        orders.append(("reverse instance order", list(geo.by_index)[::-1]))

    def agree(order: list[int]) -> int:
        return sum(1 for i, k in pairs if 0 <= i < len(order) and order[i] == k)

    name, order = max(orders, key=lambda o: agree(o[1]))  # the first of the best: position order on a tie
    return name, order, agree(order)


def _coca_roi(roi: Any, image_index: Any, geo: _SeriesGeometry, src_image: Any, hu: np.ndarray,
              labels: np.ndarray, row: dict[str, Any], order: tuple[str, list[int]]) -> bool:
    """Check one ROI, fill it into ``labels`` (file grid) and complete its report row; False when left out.

    ``order``: the order the export counts ``ImageIndex`` in (:func:`_index_order`).
    """
    if not isinstance(roi, dict):
        row.update(status="error", message="the ROI is not a dictionary; left out")
        return False
    notes: list[str] = []  # disagreements: the row becomes a mismatch
    info: list[str] = []  # said in the message only
    name = str(roi.get("Name", "")).strip()
    label = COCA_VESSELS.get(name.lower())
    row.update(vessel=_NAMES.get(label, name) if label else name, label=label or "")
    area_xml, max_xml = _num(roi.get("Area")), _num(roi.get("Max"))
    row.update(area_cm2_annotation=_fmt(area_xml, 6), max_hu_annotation=_fmt(max_xml, 2))
    if label is None:
        row.update(status="error", message=f"unknown vessel name {name!r} (expected Left Coronary Artery, Left "
                                           "Anterior Descending Artery, Left Circumflex Artery or Right Coronary "
                                           "Artery); ROI left out")
        return False
    raw_px = roi.get("Point_px") or []
    pts = [_tuple(p, 2) for p in raw_px] if isinstance(raw_px, list) else [None]
    row["n_points"] = len(pts)
    if not pts or any(p is None for p in pts):
        row.update(status="error", message=f"Point_px is missing or unreadable ({str(raw_px)[:80]}); ROI left out")
        return False
    z_val, z_src, mm, mm_ok = _roi_z(roi)
    nk = len(geo.z)
    idx = _image_index(image_index)
    order_name, index_order = order
    k_index = index_order[idx] if idx is not None and 0 <= idx < nk else None
    if z_val is not None:
        row["z_mm"] = round(z_val, 3)
        z_k = _z_slice(geo, z_val)
        if z_k is None:
            row.update(status="error", message=(
                f"z = {z_val:.2f} mm (from {z_src}) matches no slice (slices at {geo.z.min():.2f} to "
                f"{geo.z.max():.2f} mm every {geo.step:.2f} mm; ImageIndex {image_index}); ROI left out"))
            return False
        k = z_k
        row["slice_from"] = f"z ({z_src})"
        if k_index is None:
            notes.append(f"ImageIndex {image_index!r} names no slice of the {nk}; z used")
        elif k_index != k:
            notes.append(f"ImageIndex {idx} is slice {geo.canonical[k_index]} in {order_name} (the order this "
                         f"export counts ImageIndex in) but the z gives slice {geo.canonical[k]}; z used")
    else:
        if k_index is None:
            row.update(status="error", message=(
                f"no z in Point_mm or Center and ImageIndex {image_index!r} names no slice ({nk} slices); "
                "ROI left out"))
            return False
        k = k_index
        row["slice_from"] = "ImageIndex"
        info.append(f"no z in Point_mm or Center: slice from ImageIndex ({order_name})")
    row.update(slice=geo.canonical[k], instance_number=geo.instance[k] if geo.instance[k] is not None else "")
    rows_n, cols_n = labels.shape[1:]
    xy = np.array(pts, dtype=np.float64) - 0.5  # OsiriX pixel coordinates -> index coordinates
    if (xy[:, 0].min() < -1 or xy[:, 0].max() > cols_n or xy[:, 1].min() < -1 or xy[:, 1].max() > rows_n):
        row.update(status="error", message=f"Point_px lies outside the {cols_n} x {rows_n} image; ROI left out")
        return False
    if mm_ok and len(mm) == len(pts):
        sx, sy = geo.spacing_xy
        dev = 0.0
        for (x, y), p in zip(xy, mm):
            q = src_image.TransformContinuousIndexToPhysicalPoint((float(x), float(y), float(k)))
            dev = max(dev, abs(q[0] - p[0]) / sx, abs(q[1] - p[1]) / sy)  # type: ignore[index]
        if dev > PX_MM_TOLERANCE_PX:
            notes.append(f"Point_px and Point_mm differ by {dev:.2f} pixel(s)")
    fill = fill_polygon(xy, (rows_n, cols_n))
    if not fill.any():
        row.update(status="error", message="the polygon covers no pixel of the image; ROI left out")
        return False
    px_cm2 = geo.spacing_xy[0] * geo.spacing_xy[1] / 100.0
    area = float(fill.sum()) * px_cm2
    poly = polygon_area(xy) * px_cm2
    sl = hu[k]
    max_fill = float(sl[fill].max())
    centre = fill_polygon(xy, (rows_n, cols_n), outline=False)
    max_centre = float(sl[centre].max()) if centre.any() else None
    row.update(area_cm2=round(area, 6), polygon_area_cm2=round(poly, 6), max_hu=round(max_fill, 2))
    if max_xml is not None:
        if abs(max_fill - max_xml) > MAX_HU_TOLERANCE and (
                max_centre is None or abs(max_centre - max_xml) > MAX_HU_TOLERANCE):
            notes.append(f"max {max_fill:.1f} HU differs from Max {max_xml:.1f} by more than "
                         f"{MAX_HU_TOLERANCE:g} HU")
    calc = fill & (sl >= THRESHOLD_HU)
    cur = labels[k]
    taken = calc & (cur != 0) & (cur != label)
    if taken.any():
        others = ", ".join(_NAMES[int(v)] for v in np.unique(cur[taken]))
        notes.append(f"{int(taken.sum())} pixel(s) already labelled {others} by an earlier ROI keep that label")
    cur[calc & (cur == 0)] = label
    row["n_voxels"] = int(calc.sum())
    if not calc.any():
        notes.append(f"no pixel >= {THRESHOLD_HU} HU inside the ROI")
    row.update(status="mismatch" if notes else "ok", message="; ".join(notes + info))
    return True


def _convert_coca_case(store: _Store, case_id: str, pid: str, folder: Optional[Path], xml: Optional[Path]):
    import SimpleITK as sitk

    from .io import read_scan, to_source_grid

    if folder is None:
        raise InvalidScanError(f"{xml}: calcium annotations for patient {pid}, but there is no patient/{pid}/ "
                               "folder of DICOM files; restore the patient's series (or remove the xml).")
    annotations = None
    if xml is not None:
        try:
            with open(xml, "rb") as fh:
                annotations = plistlib.load(fh)
        except (plistlib.InvalidFileException, ExpatError, ValueError, OSError, TypeError) as exc:
            raise InvalidScanError(f"{xml}: not a readable plist ({exc}); expected an OsiriX ROI export with "
                                   "an Images array. Download the file again.") from None
        if not isinstance(annotations, dict) or not isinstance(annotations.get("Images", []), list):
            raise InvalidScanError(f"{xml}: has no Images array at the top level; expected an OsiriX ROI export "
                                   "(Images -> ImageIndex, ROIs).")
    scan = read_scan(folder)
    hu16 = _hu16(np.asarray(scan.hu))
    report: list[dict[str, Any]] = []
    if annotations is None:
        labels = np.zeros(hu16.shape, np.uint8)
        note = (f"no calcium_xml/{pid}.xml: no coronary calcium assumed (COCA ships annotations only for "
                "patients with calcium)")
        message = note
    else:
        geo = _series_geometry(scan)
        hu_src = _hu16(sitk.GetArrayFromImage(to_source_grid(np.asarray(scan.hu), scan)))
        lab_src = np.zeros(hu_src.shape, np.uint8)
        entries = [(e if isinstance(e, dict) else {}) for e in annotations.get("Images", [])]
        pairs = []  # (ImageIndex, slice of the z) of the ROIs with both: which order ImageIndex counts in
        for entry in entries:
            idx, rois = _image_index(entry.get("ImageIndex")), entry.get("ROIs") or []
            for roi in (rois if isinstance(rois, list) else [rois]):
                try:
                    z_val = _roi_z(roi)[0] if isinstance(roi, dict) else None
                except (TypeError, ValueError, AttributeError, OverflowError):  # the ROI's own row says why
                    z_val = None
                z_k = _z_slice(geo, z_val) if z_val is not None and idx is not None else None
                if z_k is not None:
                    pairs.append((idx, z_k))
        order_name, index_order, n_agree = _index_order(geo, pairs)
        n_roi = 0
        for i, entry in enumerate(entries):
            image_index = entry.get("ImageIndex")
            rois = entry.get("ROIs") or []
            for j, roi in enumerate(rois if isinstance(rois, list) else [rois]):
                n_roi += 1
                row: dict[str, Any] = {"id": case_id, "roi": f"{i}.{j}",
                                       "image_index": image_index if image_index is not None else ""}
                try:
                    _coca_roi(roi, image_index, geo, scan.source_image, hu_src, lab_src, row,
                              (order_name, index_order))
                except (TypeError, ValueError, KeyError, AttributeError, OverflowError) as exc:  # odd xml content
                    row.update(status="error", message=f"the ROI cannot be read ({exc!r}); ROI left out")
                report.append(row)
        img = sitk.GetImageFromArray(lab_src)
        img.CopyInformation(scan.source_image)
        labels = sitk.GetArrayFromImage(sitk.DICOMOrient(img, "LPS"))
        if labels.shape != hu16.shape:  # pragma: no cover - read_scan's canonical grid is this reorientation
            raise InvalidScanError(f"{folder}: the label grid {labels.shape} differs from the image {hu16.shape}")
        n_err = sum(r["status"] == "error" for r in report)
        n_mis = sum(r["status"] == "mismatch" for r in report)
        note = f"{n_err} of {n_roi} ROI(s) left out (see report.csv)" if n_err else ""
        message = (f"{n_roi} ROI(s): {n_roi - n_err - n_mis} ok, {n_mis} mismatch, {n_err} left out"
                   + ("" if n_roi else f" (calcium_xml/{xml.name if xml else ''} holds no ROI)"))
        if n_roi:
            message += (f"; ImageIndex counted in {order_name} ({n_agree} of {len(pairs)} ROI(s) with a z agree)"
                        if pairs else f"; ImageIndex taken in {order_name} (no ROI has a z)")
    _write_case(store, case_id, scan, hu16, labels)
    truth = _truth_row(case_id, hu16, scan.spacing, labels, note)
    report.insert(0, _case_row(case_id, "ok", "converted; " + message))
    return truth, report, None, message


def convert_coca(src: Path | str, out: Path | str, *, missing_xml: str = "zero",
                 on_start: Optional[Callable[[int], None]] = None,
                 on_case: Optional[Callable[[dict[str, Any]], None]] = None) -> list[dict[str, Any]]:
    """Convert the gated part of COCA into ``images/``, ``labels/``, ``truth.csv`` and ``report.csv``.

    Parameters
    ----------
    src : path
        The COCA gated folder: ``patient/<id>/<series>/*.dcm`` and
        ``calcium_xml/<id>.xml`` (or the folder holding ``Gated_release_final/``).
    out : path
        Output folder (created; rerunning skips the cases already converted).
    missing_xml : {"zero", "skip"}, default "zero"
        A patient without ``calcium_xml/<id>.xml``: an all-zero label
        (no calcium, as COCA distributes zero-score patients), or left out.
    on_start : callable, optional
        Called once with the number of cases.
    on_case : callable, optional
        Called after each case with its result dictionary.

    Returns
    -------
    list of dict
        One per patient: ``id``, ``source``, ``status`` (converted, skipped,
        error or ignored), ``message``, and for converted or skipped cases
        ``agatston``, ``category`` and ``n_ok``, ``n_mismatch``, ``n_error``
        (report rows of its ROIs).

    Raises
    ------
    DatasetLayoutError
        SRC is not the COCA layout (exit 3 in the CLI).
    """
    if missing_xml not in ("zero", "skip"):
        raise ValueError(f"missing_xml must be 'zero' or 'skip', got {missing_xml!r}")
    root = _coca_root(Path(src))
    patients = {d.name: d for d in (root / "patient").iterdir() if d.is_dir() and not d.name.startswith(".")}
    xmls = {p.stem: p for p in (root / "calcium_xml").iterdir()
            if p.is_file() and p.suffix.lower() == ".xml" and not p.name.startswith(".")}
    if not patients:
        raise DatasetLayoutError(f"{root / 'patient'}: holds no patient folders; expected patient/<id>/<series "
                                 f"folder>/*.dcm. Found: {_listing(root / 'patient')}.")
    store = _Store(Path(out))
    cases, ignored = [], []
    for pid in sorted(set(patients) | set(xmls), key=_natural):
        case_id = f"coca_{_safe_id(pid)}"
        folder, xml = patients.get(pid), xmls.get(pid)
        if xml is None and missing_xml == "skip":
            ignored.append({"id": case_id, "source": str(folder), "status": "ignored",
                            "message": f"no calcium_xml/{pid}.xml (left out: --missing-xml skip)"})
            continue
        default_note = "" if xml is not None else (
            f"no calcium_xml/{pid}.xml: no coronary calcium assumed (COCA ships annotations only for patients "
            "with calcium)")
        cases.append(_Case(
            case_id, str(folder or xml), default_note=default_note,
            convert=lambda case_id=case_id, pid=pid, folder=folder, xml=xml: _convert_coca_case(
                store, case_id, pid, folder, xml)))
    return _run(cases, store, ignored, on_start, on_case)


# --------------------------------------------------------------------------------------------------------------
# orCaScore


def _is_ref_name(stem: str) -> bool:
    s = stem.lower()
    return "label" in s or "reference" in s or "ref" in s


def _is_ref_folder(name: str) -> bool:
    s = name.lower()
    return s.startswith("reference") or s.startswith("label")


def _orcascore_references(image: Path) -> list[Path]:
    stem = image.name[: -len(".mhd")]
    found: list[Path] = []
    wanted = {f"{stem}_label.mhd".lower(), f"{stem}-label.mhd".lower()}
    found += [p for p in sorted(image.parent.iterdir()) if p.is_file() and p.name.lower() in wanted]
    for folder in (image.parent, image.parent.parent):
        for d in sorted(folder.iterdir()):
            if d.is_dir() and _is_ref_folder(d.name):
                found += sorted(p for p in d.rglob(f"{stem}.mhd") if p.is_file())
    out: list[Path] = []
    for p in found:
        if all(p.resolve() != q.resolve() for q in out):
            out.append(p)
    return out


def _find_orcascore(src: Path) -> tuple[list[tuple[Path, list[Path]]], list[Path]]:
    """(image, references) pairs and the images without a reference."""
    if not src.is_dir():
        raise DatasetLayoutError(f"{src}: no such folder; expected orCaScore MetaImage files (<stem>.mhd + .raw) "
                                 "with reference label images.")
    images = []
    for p in sorted(src.rglob("*"), key=lambda q: str(q).lower()):
        if not (p.is_file() and p.name.lower().endswith(".mhd")):
            continue
        rel = p.relative_to(src).parts
        if _is_ref_name(p.name[: -len(".mhd")]) or any(_is_ref_folder(part) for part in rel[:-1]):
            continue
        images.append(p)
    pairs, without = [], []
    for p in images:
        refs = _orcascore_references(p)
        (pairs.append((p, refs)) if refs else without.append(p))
    if not pairs:
        all_mhd = sorted(str(p.relative_to(src)) for p in src.rglob("*") if p.name.lower().endswith(".mhd"))
        shown = ", ".join(all_mhd[:12]) + (f", ... ({len(all_mhd) - 12} more)" if len(all_mhd) > 12 else "")
        raise DatasetLayoutError(
            f"{src}: no orCaScore image with a reference found. Expected MetaImage CT images <stem>.mhd (a name "
            "without 'label', 'reference' or 'ref') each with a reference label image: <stem>_label.mhd or "
            "<stem>-label.mhd next to it, or <stem>.mhd in a folder named reference*/label* beside the image or "
            f"beside its folder. Found {len(all_mhd)} .mhd file(s)" + (f": {shown}" if all_mhd else "")
            + f"; top level: {_listing(src)}.")
    return pairs, without


def _orcascore_lesion_rows(case_id: str, ref: np.ndarray, hu16: np.ndarray, spacing: Sequence[float]
                           ) -> list[dict[str, Any]]:
    from scipy import ndimage

    six = ndimage.generate_binary_structure(3, 1)
    hi = hu16 >= THRESHOLD_HU
    hi_cc, n_hi = ndimage.label(hi, structure=six)
    hi_size = np.bincount(hi_cc.ravel(), minlength=n_hi + 1)
    px_cm2 = spacing[1] * spacing[2] / 100.0
    rows: list[dict[str, Any]] = []
    n = 0
    for value in (1, 2, 3):
        sel = ref == value
        if not sel.any():
            continue
        cc, m = ndimage.label(sel, structure=six)
        same_in_hi = np.bincount(hi_cc[sel & hi], minlength=n_hi + 1)
        for i, box in enumerate(ndimage.find_objects(cc), start=1):
            vox = cc[box] == i
            h = hu16[box]
            kept = vox & (h >= THRESHOLD_HU)
            nv, nkept = int(vox.sum()), int(kept.sum())
            notes = []
            if nkept < nv:
                notes.append(f"{nv - nkept} of {nv} labelled voxel(s) below {THRESHOLD_HU} HU (left out)")
            ids = np.unique(hi_cc[box][kept])
            ids = ids[ids > 0]
            extra = int((hi_size[ids] - same_in_hi[ids]).sum()) if ids.size else 0
            if extra:
                notes.append(f"its 6-connected >= {THRESHOLD_HU} HU region holds {extra} more voxel(s) not labelled "
                             f"{_NAMES[_ORCASCORE_MAP[value]]}")
            z0, z1 = box[0].start, box[0].stop - 1
            n += 1
            rows.append({
                "id": case_id, "roi": str(n), "slice": f"{z0}" if z0 == z1 else f"{z0}-{z1}",
                "slice_from": "reference", "vessel": _NAMES[_ORCASCORE_MAP[value]], "label": _ORCASCORE_MAP[value],
                "n_voxels": nkept, "area_cm2": round(nkept * px_cm2, 6), "max_hu": int(h[vox].max()),
                "status": "mismatch" if notes else "ok", "message": "; ".join(notes)})
    return rows


def _convert_orcascore_case(store: _Store, case_id: str, image: Path, refs: list[Path]):
    import SimpleITK as sitk

    from .io import read_scan

    if len(refs) > 1:
        raise InvalidScanError(f"{image}: {len(refs)} reference files match ({', '.join(map(str, refs))}); keep "
                               "exactly one.")
    ref_path = refs[0]
    scan = read_scan(image)
    try:
        ref_img = sitk.ReadImage(str(ref_path))
    except RuntimeError as exc:
        raise InvalidScanError(f"{ref_path}: the reference cannot be read ({str(exc).strip().splitlines()[-1][:200]}"
                               "); is the .raw file next to the .mhd?") from None
    src = scan.source_image
    if ref_img.GetDimension() != 3 or ref_img.GetNumberOfComponentsPerPixel() != 1:
        raise InvalidScanError(f"{ref_path}: the reference is not a 3D label image.")
    same = (ref_img.GetSize() == src.GetSize()
            and np.allclose(ref_img.GetSpacing(), src.GetSpacing(), rtol=1e-3)
            and np.allclose(ref_img.GetOrigin(), src.GetOrigin(), atol=1e-2 * min(src.GetSpacing()))
            and np.allclose(ref_img.GetDirection(), src.GetDirection(), atol=1e-3))
    if not same:
        raise InvalidScanError(
            f"{ref_path}: the reference grid (size {ref_img.GetSize()}, spacing "
            f"{tuple(round(s, 4) for s in ref_img.GetSpacing())}, origin "
            f"{tuple(round(s, 3) for s in ref_img.GetOrigin())}) differs from the image {image.name} (size "
            f"{src.GetSize()}, spacing {tuple(round(s, 4) for s in src.GetSpacing())}, origin "
            f"{tuple(round(s, 3) for s in src.GetOrigin())}); the reference must be on the image's grid.")
    ref_img.CopyInformation(src)
    ref = sitk.GetArrayFromImage(sitk.DICOMOrient(ref_img, "LPS"))
    values = np.unique(ref)
    bad = [v for v in values.tolist() if v not in (0, 1, 2, 3)]
    if bad:
        raise InvalidScanError(f"{ref_path}: holds values {bad[:8]}; an orCaScore reference has 0 background, "
                               "1 LAD (left main included), 2 LCX, 3 RCA.")
    ref = ref.astype(np.uint8)
    hu16 = _hu16(np.asarray(scan.hu))
    lut = np.array([0, 2, 3, 4], np.uint8)
    labels = np.where(hu16 >= THRESHOLD_HU, lut[ref], 0).astype(np.uint8)
    report = _orcascore_lesion_rows(case_id, ref, hu16, scan.spacing)
    _write_case(store, case_id, scan, hu16, labels)
    truth = _truth_row(case_id, hu16, scan.spacing, labels, _ORCASCORE_NOTE)
    n_mis = sum(r["status"] == "mismatch" for r in report)
    counts = ", ".join(f"{v} {sum(r['vessel'] == v for r in report)}" for v in ("LAD", "LCX", "RCA"))
    message = f"{len(report)} reference lesion(s) ({counts}), {n_mis} mismatch; reference {ref_path.name}"
    report.insert(0, _case_row(case_id, "ok", "converted; " + message + "; " + _ORCASCORE_NOTE))
    return truth, report, {"lm_merged_into_lad": True}, message


def convert_orcascore(src: Path | str, out: Path | str, *,
                      on_start: Optional[Callable[[int], None]] = None,
                      on_case: Optional[Callable[[dict[str, Any]], None]] = None) -> list[dict[str, Any]]:
    """Convert orCaScore (MetaImage images with reference labels) into the `cac train --data` layout.

    Parameters
    ----------
    src : path
        Folder searched recursively for ``*.mhd`` images and their reference
        label images (see the module docstring for the accepted names).
    out : path
        Output folder (created; rerunning skips the cases already converted).
    on_start, on_case : callable, optional
        As for :func:`convert_coca`.

    Returns
    -------
    list of dict
        One per image: ``id``, ``source``, ``status`` (converted, skipped,
        error, or ignored for an image without a reference), ``message``, and
        for converted or skipped cases ``agatston``, ``category`` and the
        counts of report rows ``n_ok``, ``n_mismatch``, ``n_error``.

    Raises
    ------
    DatasetLayoutError
        No image with a reference under SRC (exit 3 in the CLI); the message
        lists the accepted names and what was found.
    """
    src = Path(src)
    pairs, without = _find_orcascore(src)
    store = _Store(Path(out))
    ignored = [{"id": _safe_id(p.name[: -len(".mhd")]), "source": str(p), "status": "ignored",
                "message": "no reference label image found (a CTA or test-set image?)"} for p in without]
    cases = []
    seen: dict[str, Path] = {}
    for image, refs in pairs:
        case_id = _safe_id(image.name[: -len(".mhd")])
        if case_id in seen:
            msg = f"{image}: the id {case_id} is taken by {seen[case_id]}; rename one of the two"
            ignored.append({"id": case_id, "source": str(image), "status": "error", "message": msg})
            store.set_case(str(image), None, [_case_row(case_id, "error", msg)])
            continue
        seen[case_id] = image
        cases.append(_Case(case_id, str(image), default_note=_ORCASCORE_NOTE, meta={"lm_merged_into_lad": True},
                           convert=lambda case_id=case_id, image=image, refs=refs: _convert_orcascore_case(
                               store, case_id, image, refs)))
    return _run(cases, store, ignored, on_start, on_case)
