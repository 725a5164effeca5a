"""What `cac score -o OUT` writes for a scored scan: files, preview, HTML report, DICOM SEG + SR, and sending them."""

# write.py: write_outputs, every output of one scan (<id>.json last); preview.py: the preview PNG (--preview)
# and montages of phantoms; report.py: the self-contained HTML review report (--report); dicom.py: DICOM SEG
# and SR (--dicom); send.py: C-STORE of the DICOM files to a node (--send). The names below are loaded on
# first use (PEP 562), so that importing this package loads none of the writers (the report, the DICOM
# writer and the sender are not on the plain scoring path).

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import attach

_NAMES = {
    "write": ["write_outputs"],
    "preview": ["ARTERY_COLORS", "render_montage", "render_result_preview", "write_preview", "write_result_preview"],
    "report": ["NOT_VALIDATED_NOTICE", "render_report", "write_report"],
    "dicom": ["DicomOutputs", "write_dicom_outputs"],
    "send": ["DicomNode", "parse_node", "send_files"],
}
__getattr__, __dir__, __all__ = attach(__name__, _NAMES, globals())


if TYPE_CHECKING:  # pragma: no cover - what type checkers and editors see
    from .dicom import DicomOutputs, write_dicom_outputs
    from .preview import ARTERY_COLORS, render_montage, render_result_preview, write_preview, write_result_preview
    from .report import NOT_VALIDATED_NOTICE, render_report, write_report
    from .send import DicomNode, parse_node, send_files
    from .write import write_outputs
