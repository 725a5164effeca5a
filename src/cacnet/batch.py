"""Batches for `cac score`: finding scans, writing outputs, CSV rows (private-ish API)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Optional

from ._files import write_image_atomic, write_text_atomic
from .errors import InvalidScanError
from .io import IMAGE_SUFFIXES, scan_id, to_source_grid
from .pipeline import ScanResult

__all__ = ["expand_inputs", "write_outputs", "csv_row", "CSV_COLUMNS"]

CSV_COLUMNS = ["id", "agatston", "category", "volume_mm3", "mass_mg", "LM", "LAD", "LCX", "RCA", "n_lesions",
               "cac_drs", "n_review", "warnings", "status", "error", "input"]


def _is_image(p: Path) -> bool:
    return p.is_file() and p.name.lower().endswith(IMAGE_SUFFIXES)


def expand_inputs(inputs: Iterable[Path]) -> list[Path]:
    """Scans named by the inputs.

    A file is a scan. A folder holding image files (``.nii.gz``, ``.nrrd``,
    ``.mha``, ``.zip``, ...) or sub-folders is a batch of those; a folder
    holding only other files is one DICOM scan. Missing paths and empty
    folders are reported as scans that fail (so a batch goes on).
    """
    out: list[Path] = []
    for p in inputs:
        p = Path(p)
        if p.is_dir():
            children = sorted(c for c in p.iterdir() if not c.name.startswith("."))
            images = [c for c in children if _is_image(c)]
            folders = [c for c in children if c.is_dir()]
            others = [c for c in children if c.is_file() and not _is_image(c)]
            if images or (folders and not others):
                out.extend(sorted(images + folders))  # a batch
            else:
                out.append(p)  # one DICOM series (or an empty folder: read_scan says so)
        else:
            out.append(p)
    return out


def write_outputs(result: ScanResult, outdir: Path, preview: bool = False, report: bool = False,
                  dicom: bool = False) -> None:
    """``<id>.json``, ``<id>_calcium.nii.gz`` (uint8 on the input grid), ``<id>.png`` (preview), ``<id>.html`` (report).

    With ``dicom`` (DICOM input only, else :class:`~cacnet.errors.UsageError`), also ``<id>_seg.dcm`` and
    ``<id>_sr.dcm`` (:func:`cacnet.dicom_out.write_dicom_outputs`), listed with their UIDs under ``"dicom"``
    in the JSON. The JSON is written last.
    """
    outdir = Path(outdir)
    assert result.scan is not None
    write_image_atomic(to_source_grid(result.labels, result.scan), outdir / f"{result.id}_calcium.nii.gz")
    if preview or report:
        from .review import find_components

        table = find_components(result.scan.hu, result.scan.spacing, result.labels, result.data, result.triage)
    if preview:
        from .preview import write_result_preview

        write_result_preview(result, outdir / f"{result.id}.png", table)
    if report:
        from .report import write_report

        write_report(result, outdir / f"{result.id}.html", table)
    if dicom:
        from .dicom_out import write_dicom_outputs

        written = write_dicom_outputs(result, result.scan.source_path, outdir)
        result.data["dicom"] = {**written.to_dict(), "seg": written.seg and written.seg.name, "sr": written.sr.name}
    write_text_atomic(outdir / f"{result.id}.json", json.dumps(result.data, indent=2))


def csv_row(data: Optional[dict[str, Any]], *, input_path: Path, status: str, error: str = "") -> dict[str, Any]:
    """One CSV row of a scan (``data`` is a result's JSON, None on error)."""
    row: dict[str, Any] = {c: "" for c in CSV_COLUMNS}
    row.update({"id": scan_id(input_path) if data is None else data["id"], "status": status, "error": error,
                "input": str(input_path)})
    if data is not None:
        row.update({
            "agatston": round(data["agatston"], 4), "category": data["category"],
            "volume_mm3": round(data["volume_mm3"], 4),
            "mass_mg": "" if data["mass_mg"] is None else round(data["mass_mg"], 4),
            **{k: round(v["agatston"], 4) for k, v in data["arteries"].items()},
            "n_lesions": data["n_lesions"], "cac_drs": data["cac_drs"]["label"],
            "n_review": len(data["review"]), "warnings": " | ".join(data["warnings"]),
        })
    return row


def read_result(path: Path) -> dict[str, Any]:
    """A result JSON written by :func:`write_outputs`."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise InvalidScanError(f"{path}: cannot read a previous result ({exc}).") from None
