"""Reviewing a scored scan: review files, and applying a review exactly.

:func:`apply_review` (``cac review apply``) turns the decisions of a ``<id>_review.json`` saved by the
HTML report (:mod:`cacnet.outputs.report`) into a new mask, recomputes every score with
:func:`agatston.score` (never the page's sums), and writes the reviewed result and training data in the
layout ``cac train --data`` reads. The unit of a decision is a component of :mod:`cacnet.components`.

See docs/review.md for the review file's format, what is written and what is refused.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

import agatston

from . import components, io
from ._deprecated import moved
from ._files import sha256_file, write_csv_atomic, write_image_atomic, write_text_atomic
from .components import ARTERY_CODES, REVIEW_FORMAT, REVIEW_VERSION
from .datasets.layout import POINTS_COLUMNS, POINTS_FILE, TRUTH_COLUMNS, TRUTH_FILE
from .errors import ReviewError, UsageError
from .io import canonical_to_source_index, lesion_position, read_scan, to_source_grid
from .outputs.preview import write_result_preview
from .outputs.report import write_report
from .pipeline import ScanResult
from .triage import triage

if TYPE_CHECKING:  # pragma: no cover
    from .components import ComponentTable, Part

__all__ = [
    "ReviewOutcome", "read_review", "apply_review", "apply_decisions", "artery_code", "REVIEW_FORMAT",
    "REVIEW_VERSION", "ARTERY_CODES", "POINTS_COLUMNS",
]

_ACTIONS = {"lesion": ("accept", "reject", "relabel"), "candidate": ("add", "reject")}


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
        Also write ``<id>.png`` (:func:`cacnet.outputs.preview.write_result_preview`).

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
    now = io.scan_sha256(spath)
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

    checked = triage(scan)  # once: its heart region serves both component tables and the report
    table = components.find_components(scan.hu, scan.spacing, labels, data, checked)
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
    new_table = components.find_components(scan.hu, scan.spacing, new_labels, new_data, checked)
    files["report"] = write_report(result, out / f"{case_id}.html", new_table)
    if preview:
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
    files["points"] = out / POINTS_FILE
    _merge_csv(files["points"], POINTS_COLUMNS, rows, case_id)
    files["truth"] = out / TRUTH_FILE
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
    decisions = review["decisions"]
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
    # the new mask's 2D parts (as agatston.score lists them): their ids by slice and centroid
    first_of = components.part_ids(scan.hu, new_labels, table.settings)
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


#: Names that moved, with their new module: importable from here for one release, with a DeprecationWarning.
_MOVED = {name: "cacnet.components" for name in (
    "Part", "Component", "ComponentTable", "find_components", "MAX_QUIET_CANDIDATES", "MAX_QUIET_CANDIDATE_MM3",
    "MAX_VOTED_CANDIDATES")}
_MOVED["scan_sha256"] = "cacnet.io"
__getattr__ = moved(__name__, _MOVED)
