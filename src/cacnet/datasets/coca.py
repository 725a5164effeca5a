"""Converting the gated part of COCA into the layout `cac train --data` reads (`cac dataset coca`).

:func:`convert_coca` reads ``SRC/patient/<id>/<series folder>/*.dcm`` and the OsiriX ROI exports
``SRC/calcium_xml/<id>.xml``: each ROI's polygon, placed on its slice by z (``ImageIndex`` checked
against the order the export follows), filled and intersected with >= 130 HU, labelled by vessel
(1 LM, 2 LAD, 3 LCX, 4 RCA), checked against the annotation (:data:`PX_MM_TOLERANCE_PX`,
:data:`MAX_HU_TOLERANCE`) in report.csv. Case ids are ``coca_<id>``.

See docs/datasets.md (COCA, and "The conversion rules in detail") for every rule. The output folder:
:mod:`cacnet.datasets._output`.
"""

from __future__ import annotations

import plistlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional
from xml.parsers.expat import ExpatError

import numpy as np

from ..errors import InvalidScanError
from ._output import (THRESHOLD_HU, Case, DatasetLayoutError, Store, case_row, finite_float, int16_hu, listing,
                      natural_key, rounded, run_cases, safe_id, truth_csv_row, write_case_files)
from ._polygons import fill_polygon, polygon_area
from .layout import LABEL_NAMES

__all__ = ["COCA_VESSELS", "MAX_HU_TOLERANCE", "PX_MM_TOLERANCE_PX", "convert_coca"]

#: OsiriX ROI names of COCA (lower case) and their labels.
COCA_VESSELS: dict[str, int] = {
    "left coronary artery": 1, "left anterior descending artery": 2, "left circumflex artery": 3,
    "right coronary artery": 4, "lm": 1, "lad": 2, "lcx": 3, "rca": 4,
}

#: Tolerance of the maximum-HU check, in HU.
MAX_HU_TOLERANCE = 1.0
#: Largest accepted distance between ``Point_px`` and ``Point_mm``, in pixels.
PX_MM_TOLERANCE_PX = 0.25

_FLOAT = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


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
        f"found: {listing(src)}.")


def _tuple(text: Any, n: int) -> Optional[tuple[float, ...]]:
    if isinstance(text, (list, tuple)):
        vals = [finite_float(v) for v in text]
    else:
        vals = [finite_float(v) for v in _FLOAT.findall(str(text))]
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
    from ..io import canonical_to_source_index

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
    row.update(vessel=LABEL_NAMES.get(label, name) if label else name, label=label or "")
    area_xml, max_xml = finite_float(roi.get("Area")), finite_float(roi.get("Max"))
    row.update(area_cm2_annotation=rounded(area_xml, 6), max_hu_annotation=rounded(max_xml, 2))
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
        others = ", ".join(LABEL_NAMES[int(v)] for v in np.unique(cur[taken]))
        notes.append(f"{int(taken.sum())} pixel(s) already labelled {others} by an earlier ROI keep that label")
    cur[calc & (cur == 0)] = label
    row["n_voxels"] = int(calc.sum())
    if not calc.any():
        notes.append(f"no pixel >= {THRESHOLD_HU} HU inside the ROI")
    row.update(status="mismatch" if notes else "ok", message="; ".join(notes + info))
    return True


def _convert_coca_case(store: Store, case_id: str, pid: str, folder: Optional[Path], xml: Optional[Path]):
    import SimpleITK as sitk

    from ..io import read_scan, to_source_grid

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
    hu16 = int16_hu(np.asarray(scan.hu))
    report: list[dict[str, Any]] = []
    if annotations is None:
        labels = np.zeros(hu16.shape, np.uint8)
        note = (f"no calcium_xml/{pid}.xml: no coronary calcium assumed (COCA ships annotations only for "
                "patients with calcium)")
        message = note
    else:
        geo = _series_geometry(scan)
        hu_src = int16_hu(sitk.GetArrayFromImage(to_source_grid(np.asarray(scan.hu), scan)))
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
    write_case_files(store, case_id, scan, hu16, labels)
    truth = truth_csv_row(case_id, hu16, scan.spacing, labels, note)
    report.insert(0, case_row(case_id, "ok", "converted; " + message))
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
                                 f"folder>/*.dcm. Found: {listing(root / 'patient')}.")
    store = Store(Path(out))
    cases, ignored = [], []
    for pid in sorted(set(patients) | set(xmls), key=natural_key):
        case_id = f"coca_{safe_id(pid)}"
        folder, xml = patients.get(pid), xmls.get(pid)
        if xml is None and missing_xml == "skip":
            ignored.append({"id": case_id, "source": str(folder), "status": "ignored",
                            "message": f"no calcium_xml/{pid}.xml (left out: --missing-xml skip)"})
            continue
        default_note = "" if xml is not None else (
            f"no calcium_xml/{pid}.xml: no coronary calcium assumed (COCA ships annotations only for patients "
            "with calcium)")
        cases.append(Case(
            case_id, str(folder or xml), default_note=default_note,
            convert=lambda case_id=case_id, pid=pid, folder=folder, xml=xml: _convert_coca_case(
                store, case_id, pid, folder, xml)))
    return run_cases(cases, store, ignored, on_start, on_case)
