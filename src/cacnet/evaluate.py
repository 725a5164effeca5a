"""`cac eval`: agreement of predictions with ground truth (scores, categories, lesions)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any, Callable, Collection, Optional, Sequence

import numpy as np

import agatston

from .datasets.layout import TRUTH_FILE
from .errors import InvalidScanError

__all__ = ["read_truth", "read_ids", "manifest_split_ids", "dataset_scans", "predictions_from_csv",
           "predictions_from_scans", "evaluate_predictions", "print_report", "SPLITS"]

#: ``cac eval --dataset DIR --split``: the manifest's ``training.data_sets[].<split>_ids``, or every case.
SPLITS = ("val", "train", "all")


#: First bytes of files that are often given by mistake where a CSV belongs, and what they are.
_NOT_CSV = ((b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"%PDF", "a PDF document"),
            (b"PK\x03\x04", "a zip archive (an Excel .xlsx workbook is one: save it as CSV)"),
            (b"\x1f\x8b", "a gzip file"), (b"\xd0\xcf\x11\xe0", "an old Excel/Office document (save it as CSV)"),
            (b"\x93NUMPY", "a numpy array"))


def _expected(what: str) -> str:
    return (f"a {what} CSV is comma-separated UTF-8 text with a header row holding 'id' and 'agatston' and/or "
            "'category' (cac score --csv writes one)")


def _read_csv(path: Path, what: str) -> list[dict[str, str]]:
    """The rows of a truth or prediction CSV; a file that is not such a CSV is an InvalidScanError naming it."""
    import io

    path = Path(path)
    if path.is_dir():
        raise InvalidScanError(f"{path}: a folder, not a {what} CSV file.")
    if not path.is_file():
        raise InvalidScanError(f"{path}: no such {what} CSV file.")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise InvalidScanError(f"{path}: cannot read the {what} CSV ({exc.strerror or exc}).") from None
    if not raw.strip():
        raise InvalidScanError(f"{path}: the {what} CSV is empty; {_expected(what)}.")
    kind = next((name for magic, name in _NOT_CSV if raw.startswith(magic)), None)
    if kind is None and raw[128:132] == b"DICM":
        kind = "a DICOM file"
    if kind is None and b"\x00" in raw[:65536]:
        kind = "binary data (or UTF-16 text)"
    if kind is not None:
        raise InvalidScanError(f"{path}: not a CSV file but {kind}; {_expected(what)}.")
    try:
        text = raw.decode("utf-8-sig")  # a byte order mark (Excel's 'CSV UTF-8') is dropped
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise InvalidScanError(f"{path}, line {line}: not UTF-8 text (byte 0x{raw[exc.start]:02x}); save it as UTF-8: "
                               f"{_expected(what)}.") from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        header = [h.strip() for h in reader.fieldnames or []]
        reader.fieldnames = header
        rows = list(reader)
    except csv.Error as exc:
        raise InvalidScanError(f"{path}, line {reader.line_num}: not a valid CSV ({exc}); {_expected(what)}.") from None
    if "id" not in header:
        hint = ""
        if len(header) == 1 and any(sep in header[0] for sep in ";\t|"):
            hint = " (its columns look separated by something other than commas: save it comma-separated)"
        shown = ", ".join(repr(h) for h in header[:8]) + (", ..." if len(header) > 8 else "")
        raise InvalidScanError(f"{path}: the {what} CSV has no 'id' column in its header ({shown}){hint}; "
                               f"{_expected(what)}.")
    if not rows:
        raise InvalidScanError(f"{path}: the {what} CSV has a header but no rows; {_expected(what)}.")
    for n, r in enumerate(rows, start=2):
        extra = [v for v in r.pop(None, None) or [] if v and v.strip()]  # type: ignore[call-overload]
        if extra:
            raise InvalidScanError(f"{path}, line {n}: more values than the {len(header)} columns of the header "
                                   f"({', '.join(repr(v) for v in extra[:3])} left over; a comma inside an "
                                   "unquoted value?).")
        for k, v in r.items():
            r[k] = "" if v is None else v.strip()  # a short row's missing values are empty
    return rows


def _parse(rows: list[dict[str, str]], path: Path, what: str) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    has_score = "agatston" in rows[0]
    has_cat = "category" in rows[0]
    if not (has_score or has_cat):
        raise InvalidScanError(f"{path}: the {what} CSV needs an 'agatston' or a 'category' column "
                               f"(its header: {', '.join(repr(k) for k in rows[0])}).")
    for n, r in enumerate(rows, start=2):
        if r.get("status") == "error":
            continue
        if not r["id"]:
            raise InvalidScanError(f"{path}, line {n}: the id is empty.")
        entry: dict[str, Any] = {}
        try:
            if has_score and r["agatston"] != "":
                try:
                    value = float(r["agatston"])
                except ValueError:
                    raise ValueError(f"agatston {r['agatston']!r} is not a number") from None
                if not (math.isfinite(value) and value >= 0):
                    raise ValueError(f"agatston {r['agatston']!r} is not a score (a finite number >= 0)")
                entry["agatston"] = value
                entry["category"] = agatston.category(entry["agatston"])
            if has_cat and r["category"]:
                cat = r["category"].strip().upper()
                if cat not in agatston.CATEGORIES:
                    raise ValueError(f"category {r['category']!r}")
                if "category" in entry and entry["category"] != cat:
                    raise ValueError(f"category {cat} does not match agatston {entry['agatston']}")
                entry["category"] = cat
        except ValueError as exc:
            raise InvalidScanError(f"{path}, line {n}: {exc}.") from None
        if "category" not in entry:
            raise InvalidScanError(f"{path}, line {n}: neither agatston nor category given for {r['id']!r}.")
        if r["id"] in out:
            raise InvalidScanError(f"{path}, line {n}: id {r['id']!r} appears twice.")
        out[r["id"]] = entry
    return out


def read_truth(path: Path) -> dict[str, dict[str, Any]]:
    """Ground truth: ``id`` with ``agatston`` and/or ``category``."""
    return _parse(_read_csv(path, "truth"), path, "truth")


def predictions_from_csv(path: Path) -> dict[str, dict[str, Any]]:
    """Predictions from a CSV (e.g. ``cac score --csv``); failed rows are left out."""
    return _parse(_read_csv(path, "prediction"), path, "prediction")


class _SparseMask:
    """A predicted label mask kept as its nonzero voxels (a data set's worth of dense masks is gigabytes)."""

    def __init__(self, labels: np.ndarray) -> None:
        self.shape, self.dtype = labels.shape, labels.dtype
        self.index = np.flatnonzero(labels)
        self.values = labels.ravel()[self.index]

    @property
    def labels(self) -> np.ndarray:
        out = np.zeros(self.shape, self.dtype)
        out.ravel()[self.index] = self.values
        return out


def predictions_from_scans(inputs, ensemble, force: bool = False, ids: Optional[Collection[str]] = None,
                           on_scan: Optional[Callable[[int, str], None]] = None,
                           ) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Score scans; returns predictions and their masks (objects with ``.labels``, canonical arrays).

    ``force`` scores scans the triage refuses (see :func:`cacnet.pipeline.score_scan`).
    ``ids``: score only the scans with these ids (:func:`cacnet.io.scan_id` of
    the path). ``on_scan(total, id)`` is called before each scan is scored.
    """
    from .batch import check_unique_ids, expand_inputs
    from .io import scan_id
    from .pipeline import score_scan

    paths = expand_inputs(inputs)
    if ids is not None:
        wanted = set(ids)
        paths = [p for p in paths if scan_id(p) in wanted]
    check_unique_ids(paths)  # two scans with one id would give one prediction
    preds, masks = {}, {}
    for path in paths:
        if on_scan is not None:
            on_scan(len(paths), scan_id(path))
        res = score_scan(path, ensemble, force=force)
        preds[res.id] = {"agatston": res.data["agatston"], "category": res.data["category"]}
        masks[res.id] = _SparseMask(res.labels)
    return preds, masks


def read_ids(path: Path) -> list[str]:
    """Case ids from a text file, one a line (blank lines and ``#`` comments skipped), in file order."""
    path = Path(path)
    if not path.is_file():
        raise InvalidScanError(f"{path}: no such ids file.")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidScanError(f"{path}: cannot read the ids file as UTF-8 text ({exc}); expected one case id "
                               "per line.") from None
    ids = [s for s in (line.strip() for line in text.splitlines()) if s and not s.startswith("#")]
    if not ids:
        raise InvalidScanError(f"{path}: no ids in it; expected one case id per line.")
    return list(dict.fromkeys(ids))


def _names(items: Sequence[str], n: int = 8) -> str:
    return ", ".join(items[:n]) + (f", ... ({len(items)} in all)" if len(items) > n else "")


def manifest_split_ids(manifest: Path, dataset: Path, split: str) -> list[str]:
    """The ids of ``dataset`` in a training ``split`` (``val`` or ``train``) as the weights' manifest records them.

    `cac train --data DIR` writes ``training.data_sets`` into
    ``WEIGHTS/manifest.json``: one entry per data set with ``path``, ``name``,
    ``train_ids`` and ``val_ids``. ``dataset`` is the entry whose ``path``
    resolves to it, else the one whose folder name is its folder name.
    ``manifest`` is the JSON file or its folder.
    """
    if split not in ("val", "train"):
        raise ValueError(f"split must be val or train, not {split!r}")
    key = f"{split}_ids"
    path = Path(manifest)
    if path.is_dir():
        path = path / "manifest.json"
    if not path.is_file():
        raise InvalidScanError(f"{path}: no such weights manifest.")
    try:
        m = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidScanError(f"{path}: not a JSON manifest ({exc}).") from None
    sets = (m.get("training") or {}).get("data_sets") if isinstance(m, dict) else None
    sets = [s for s in sets if isinstance(s, dict)] if isinstance(sets, list) else []
    if not sets:
        raise InvalidScanError(
            f"{path} records no data set ids (looked for training.data_sets[].{key}): these weights were not "
            f"trained with `cac train --data`. Give the manifest of the weights trained on {dataset} "
            f"(--manifest or --weights), or evaluate every case with --split all.")
    target = Path(dataset).resolve()
    match = [s for s in sets if s.get("path") and Path(s["path"]).resolve() == target]
    if not match:
        match = [s for s in sets if (s.get("name") or Path(s.get("path") or "").name) == target.name]
    listed = _names([f"{s.get('name')} ({s.get('path')})" for s in sets])
    if not match:
        raise InvalidScanError(
            f"{path}: no data set in training.data_sets is {dataset} (matched by path, then by folder name "
            f"{target.name!r}); it lists: {listed}.")
    if len(match) > 1:
        raise InvalidScanError(f"{path}: several data sets in training.data_sets match {dataset} by folder name "
                               f"({listed}); run cac eval with the path given to cac train --data.")
    entry = match[0]
    ids = entry.get(key)
    if not isinstance(ids, list):
        raise InvalidScanError(f"{path}: the entry of {entry.get('name')} in training.data_sets has no {key!r} list.")
    if not ids:
        raise InvalidScanError(
            f"{path}: training.data_sets[].{key} of {entry.get('name')} is empty"
            + (" (trained with --val-fraction 0?)" if split == "val" else "") + ".")
    return [str(i) for i in ids]


def dataset_scans(dataset: Path, ids: Optional[Sequence[str]] = None) -> dict[str, Path]:
    """``{id: DIR/images/<id>.nii.gz}`` of a converted data set (`cac dataset`), for ``ids`` or every image.

    Raises :class:`InvalidScanError` when the layout is not there or an id has no image.
    """
    from .io import is_scan_path, scan_id

    dataset = Path(dataset)
    images = dataset / "images"
    if not images.is_dir():
        raise InvalidScanError(f"{dataset}: no images/ folder; expected a converted data set (cac dataset): "
                               f"images/<id>.nii.gz, labels/<id>.nii.gz and truth.csv.")
    if not (dataset / TRUTH_FILE).is_file():
        raise InvalidScanError(f"{dataset}: no truth.csv; expected a converted data set (cac dataset).")
    found = {scan_id(p): p for p in sorted(images.iterdir()) if not p.name.startswith(".") and is_scan_path(p)}
    if ids is None:
        if not found:
            raise InvalidScanError(f"{images}: no <id>.nii.gz images.")
        return dict(sorted(found.items()))
    missing = [i for i in ids if i not in found]
    if missing:
        raise InvalidScanError(f"{len(missing)} of the {len(ids)} ids have no image in {images}: {_names(missing)}.")
    return {i: found[i] for i in ids}


def _clean(x: Any) -> Any:
    if isinstance(x, float) and math.isnan(x):
        return None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    return x


def _mask_file(folder: Path, case_id: str, suffixes: tuple[str, ...]) -> Optional[Path]:
    for s in suffixes:
        p = Path(folder) / f"{case_id}{s}"
        if p.exists():
            return p
    return None


def evaluate_predictions(
    truth: dict[str, dict[str, Any]],
    predictions: dict[str, dict[str, Any]],
    *,
    truth_masks: Optional[Path] = None,
    pred_masks: Optional[Path] = None,
    pred_mask_arrays: Optional[dict[str, Any]] = None,
) -> dict[str, Any]:
    """All agreement metrics over the ids present in both."""
    import SimpleITK as sitk

    ids = sorted(set(truth) & set(predictions))
    if not ids:
        raise InvalidScanError("no id is in both the truth and the predictions; check the id columns.")
    t_cat = [truth[i]["category"] for i in ids]
    p_cat = [predictions[i]["category"] for i in ids]
    report: dict[str, Any] = {
        "n": len(ids),
        "missing_predictions": sorted(set(truth) - set(predictions)),
        "extra_predictions": sorted(set(predictions) - set(truth)),
        "c_index": agatston.c_index(p_cat, t_cat),
        "accuracy": agatston.accuracy(p_cat, t_cat),
        "weighted_kappa": agatston.weighted_kappa(p_cat, t_cat),
        "confusion_matrix": {"rows_true_cols_pred": list(agatston.CATEGORIES),
                             "counts": agatston.confusion_matrix(p_cat, t_cat).tolist()},
    }
    scored = [i for i in ids if "agatston" in truth[i] and "agatston" in predictions[i]]
    if len(scored) >= 2:
        p = [predictions[i]["agatston"] for i in scored]
        t = [truth[i]["agatston"] for i in scored]
        report["c_index_scores"] = agatston.c_index(p, [truth[i]["category"] for i in scored])
        report["icc"] = agatston.icc(p, t)
        report["bland_altman"] = agatston.bland_altman(p, t).to_dict()
    if truth_masks is not None:
        lesion = {"n_true": 0, "n_pred": 0, "n_true_detected": 0, "n_pred_true_positive": 0,
                  "true_volume_mm3": 0.0, "pred_volume_mm3": 0.0, "detected_volume_mm3": 0.0,
                  "true_positive_volume_mm3": 0.0}
        used = 0
        for i in ids:
            tf = _mask_file(truth_masks, i, (".nii.gz", ".nii", ".nrrd", ".mha"))
            if tf is None:
                continue
            timg = sitk.DICOMOrient(sitk.ReadImage(str(tf)), "LPS")
            tarr = sitk.GetArrayFromImage(timg)
            if pred_mask_arrays is not None and i in pred_mask_arrays:
                parr = pred_mask_arrays[i].labels
            elif pred_masks is not None and (pf := _mask_file(pred_masks, i, ("_calcium.nii.gz", ".nii.gz"))):
                parr = sitk.GetArrayFromImage(sitk.DICOMOrient(sitk.ReadImage(str(pf)), "LPS"))
            else:
                continue
            if parr.shape != tarr.shape:
                raise InvalidScanError(f"{tf}: mask shape {tarr.shape} differs from the prediction's {parr.shape}.")
            sx, sy, sz = timg.GetSpacing()
            r = agatston.detection_report(parr, tarr, (sz, sy, sx))
            for k in lesion:
                lesion[k] += getattr(r, k)
            used += 1
        if used:
            sens = lesion["detected_volume_mm3"] / lesion["true_volume_mm3"] if lesion["true_volume_mm3"] else None
            ppv = (lesion["true_positive_volume_mm3"] / lesion["pred_volume_mm3"]) if lesion["pred_volume_mm3"] else None
            lesion.update({
                "n_cases": used,
                "sensitivity_count": lesion["n_true_detected"] / lesion["n_true"] if lesion["n_true"] else None,
                "ppv_count": lesion["n_pred_true_positive"] / lesion["n_pred"] if lesion["n_pred"] else None,
                "sensitivity_volume": sens, "ppv_volume": ppv,
                "f1_volume": (2 * sens * ppv / (sens + ppv)) if sens and ppv else (0.0 if sens == 0 or ppv == 0 else None),
            })
            report["lesions"] = lesion
    return _clean(report)


def print_report(report: dict[str, Any], console) -> None:
    """Human-readable tables of :func:`evaluate_predictions`."""
    from rich.table import Table

    def f(x: Any) -> str:
        return "n/a" if x is None else f"{x:.3f}"

    t = Table(title=f"Agreement on {report['n']} scans", show_header=False)
    t.add_row("C-index (categories)", f(report["c_index"]))
    if "c_index_scores" in report:
        t.add_row("C-index (scores)", f(report["c_index_scores"]))
    t.add_row("category accuracy", f(report["accuracy"]))
    t.add_row("linear weighted kappa", f(report["weighted_kappa"]))
    if "icc" in report:
        ba = report["bland_altman"]
        t.add_row("ICC(A,1) of Agatston", f(report["icc"]))
        t.add_row("Bland-Altman bias [95% limits]", f"{f(ba['bias'])} [{f(ba['lower'])}, {f(ba['upper'])}]")
    console.print(t)
    cm = Table(title="confusion matrix (rows: truth, columns: prediction)")
    cm.add_column("")
    for c in report["confusion_matrix"]["rows_true_cols_pred"]:
        cm.add_column(c, justify="right")
    for c, row in zip(report["confusion_matrix"]["rows_true_cols_pred"], report["confusion_matrix"]["counts"]):
        cm.add_row(c, *[str(v) for v in row])
    console.print(cm)
    if "lesions" in report:
        le = report["lesions"]
        lt = Table(title=f"lesions ({le['n_cases']} scans with masks)", show_header=False)
        for k in ("sensitivity_count", "ppv_count", "sensitivity_volume", "ppv_volume", "f1_volume"):
            lt.add_row(k, f(le[k]))
        console.print(lt)
    if report["missing_predictions"]:
        from rich.text import Text

        console.print(Text.assemble(("no prediction for:", "yellow"), " ", ", ".join(report["missing_predictions"])))
