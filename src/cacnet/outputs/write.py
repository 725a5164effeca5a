"""Writing a scored scan's outputs: ``<id>.json``, the mask, and on request the preview, the report, DICOM SEG + SR."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from .._files import write_image_atomic, write_text_atomic
from ..io import to_source_grid

if TYPE_CHECKING:  # pragma: no cover
    from ..pipeline import ScanResult

__all__ = ["write_outputs"]


def write_outputs(result: ScanResult, outdir: Path, preview: bool = False, report: bool = False,
                  dicom: bool = False) -> None:
    """``<id>.json``, ``<id>_calcium.nii.gz`` (uint8 on the input grid), ``<id>.png`` (preview), ``<id>.html`` (report).

    With ``dicom`` (DICOM input only, else :class:`~cacnet.errors.UsageError`), also ``<id>_seg.dcm`` and
    ``<id>_sr.dcm`` (:func:`cacnet.outputs.dicom.write_dicom_outputs`), listed with their UIDs under ``"dicom"``
    in the JSON. The JSON is written last.
    """
    outdir = Path(outdir)
    assert result.scan is not None
    write_image_atomic(to_source_grid(result.labels, result.scan), outdir / f"{result.id}_calcium.nii.gz")
    if preview or report:
        from ..components import find_components

        table = find_components(result.scan.hu, result.scan.spacing, result.labels, result.data, result.triage)
    if preview:
        from .preview import write_result_preview

        write_result_preview(result, outdir / f"{result.id}.png", table)
    if report:
        from .report import write_report

        write_report(result, outdir / f"{result.id}.html", table)
    if dicom:
        from .dicom import write_dicom_outputs

        written = write_dicom_outputs(result, result.scan.source_path, outdir)
        result.data["dicom"] = {**written.to_dict(), "seg": written.seg and written.seg.name, "sr": written.sr.name}
    write_text_atomic(outdir / f"{result.id}.json", json.dumps(result.data, indent=2))
