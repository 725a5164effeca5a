"""The output folder of the converters (OUT) and what both converters share.

**Output** (OUT): ``images/<id>.nii.gz`` (int16 HU) and ``labels/<id>.nii.gz``
(uint8 0 / 1 LM / 2 LAD / 3 LCX / 4 RCA) on the same grid (the canonical LPS
grid of :func:`cacnet.io.read_scan`); ``truth.csv``
(:data:`cacnet.datasets.layout.TRUTH_COLUMNS`, scores from :func:`agatston.score` on the written arrays); ``report.csv``
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
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from .._files import write_csv_atomic, write_image_atomic, write_text_atomic
from ..errors import InvalidScanError
from .layout import LABEL_NAMES, TRUTH_COLUMNS, TRUTH_FILE

__all__ = ["DatasetLayoutError", "REPORT_COLUMNS", "THRESHOLD_HU", "Case", "Store", "case_row", "finite_float",
           "int16_hu", "listing", "natural_key", "rounded", "run_cases", "safe_id", "truth_csv_row",
           "write_case_files"]

#: Columns of OUT/report.csv: one row per annotation (ROI or reference lesion), one per case (``roi`` empty).
REPORT_COLUMNS = ["id", "roi", "image_index", "slice", "instance_number", "z_mm", "slice_from", "vessel", "label",
                  "n_points", "n_voxels", "area_cm2", "polygon_area_cm2", "area_cm2_annotation", "max_hu",
                  "max_hu_annotation", "status", "message"]

#: Calcium threshold (HU, >=).
THRESHOLD_HU = 130


class DatasetLayoutError(InvalidScanError):
    """SRC is not laid out as the data set is distributed (exit 3)."""


def finite_float(value: Any) -> Optional[float]:
    """``value`` as a finite float, None when it is not one."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def rounded(value: Optional[float], digits: int = 4) -> Any:
    """A CSV cell: ``value`` rounded, empty for None."""
    return "" if value is None else round(float(value), digits)


def _read_rows(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            return [r for r in csv.DictReader(fh) if r.get("id")]
    except (OSError, csv.Error, UnicodeDecodeError):
        return []


class Store:
    """OUT: truth.csv, report.csv and labels_meta.json, kept in memory and rewritten after each case."""

    def __init__(self, out: Path) -> None:
        self.out = Path(out)
        self.truth: dict[str, dict[str, Any]] = {r["id"]: r for r in _read_rows(self.out / TRUTH_FILE)}
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
        write_csv_atomic(self.out / TRUTH_FILE, TRUTH_COLUMNS,
                         [{k: r.get(k, "") for k in TRUTH_COLUMNS} for r in self.truth.values()])
        write_csv_atomic(self.out / "report.csv", REPORT_COLUMNS,
                         [{k: r.get(k, "") for k in REPORT_COLUMNS} for rows in self.report.values() for r in rows])
        if self._meta_dirty:
            write_text_atomic(self._meta_path, json.dumps(self.meta, indent=2, sort_keys=True) + "\n")


def truth_csv_row(case_id: str, hu: np.ndarray, spacing: Sequence[float], labels: np.ndarray, note: str) -> dict:
    """The truth.csv row of a case: :func:`agatston.score` of the written arrays."""
    import agatston

    res = agatston.score(hu, spacing, labels)
    row: dict[str, Any] = {"id": case_id, "agatston": round(res.agatston, 6), "category": res.category}
    for k, name in LABEL_NAMES.items():
        row[name] = round(res.by_label[k].agatston, 6) if k in res.by_label else 0.0
    row["labels_note"] = note
    return row


def write_case_files(store: Store, case_id: str, scan: Any, hu16: np.ndarray, labels: np.ndarray) -> None:
    """images/<id>.nii.gz then labels/<id>.nii.gz, on the scan's canonical grid, each atomically."""
    import SimpleITK as sitk

    image_path, label_path = store.paths(case_id)
    for array, path in ((hu16, image_path), (labels, label_path)):
        img = sitk.GetImageFromArray(np.ascontiguousarray(array))
        img.CopyInformation(scan.image)
        write_image_atomic(img, path)


def _rescore(store: Store, case_id: str, default_note: str) -> dict[str, Any]:
    """truth.csv row of a case converted earlier: its earlier row, else scored again from its files."""
    import SimpleITK as sitk

    old = store.truth.get(case_id)
    if (old and all(finite_float(old.get(k)) is not None for k in ("agatston", *LABEL_NAMES.values()))
            and old.get("category")):
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
    return truth_csv_row(case_id, hu, (sz, sy, sx), labels, default_note)


def int16_hu(hu: np.ndarray) -> np.ndarray:
    """HU rounded and clipped to int16, as images/<id>.nii.gz stores them."""
    return np.clip(np.rint(hu), -32768, 32767).astype(np.int16)


@dataclass
class Case:
    """One case to convert: its id, where it comes from, and the function that converts it."""

    id: str
    source: str
    convert: Callable[[], tuple[dict[str, Any], list[dict[str, Any]], Optional[dict[str, Any]], str]]
    default_note: str = ""
    meta: Optional[dict[str, Any]] = None


def case_row(case_id: str, status: str, message: str) -> dict[str, Any]:
    """The report.csv row of a case as a whole (``roi`` empty)."""
    return {"id": case_id, "roi": "", "status": status, "message": message}


def run_cases(cases: list[Case], store: Store, ignored: list[dict[str, Any]],
              on_start: Optional[Callable[[int], None]], on_case: Optional[Callable[[dict[str, Any]], None]]
              ) -> list[dict[str, Any]]:
    """Convert (or skip, when converted earlier) each case into ``store``; a bad case never stops the run."""
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
                    case_row(case.id, "ok", "converted in an earlier run (no earlier report rows)")]
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
                store.set_case(case.id, None, [case_row(case.id, "error", str(exc))])
                result.update(status="error", message=str(exc))
            except Exception as exc:  # noqa: BLE001 - a bad case never stops the run; say what happened
                msg = f"internal error: {exc!r} (please report it)"
                store.set_case(case.id, None, [case_row(case.id, "error", msg)])
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


def listing(folder: Path, limit: int = 12) -> str:
    """The first entries of a folder, for an error message."""
    try:
        entries = sorted(folder.iterdir())
    except OSError:
        return "(cannot be listed)"
    names = [p.name + ("/" if p.is_dir() else "") for p in entries[:limit]]
    more = f", ... ({len(entries) - limit} more)" if len(entries) > limit else ""
    return (", ".join(names) + more) if names else "(empty)"


def natural_key(name: str) -> tuple:
    """Sort key: numbers in a name compare as numbers (2 before 10)."""
    return tuple((0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.findall(r"\d+|\D+", name))


def safe_id(text: str) -> str:
    """A case id: characters other than letters, digits, ``_`` and ``-`` become ``_``."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", text)
