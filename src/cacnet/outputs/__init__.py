"""What `cac score -o OUT` writes for a scored scan: files, preview, HTML report, DICOM SEG + SR, and sending them."""

# write.py: write_outputs, every output of one scan (<id>.json last); preview.py: the preview PNG (--preview)
# and montages of phantoms; report.py: the self-contained HTML review report (--report); dicom.py: DICOM SEG
# and SR (--dicom); send.py: C-STORE of the DICOM files to a node (--send). The names below are loaded on
# first use (PEP 562), so that importing this package loads none of the writers (the report, the DICOM
# writer and the sender are not on the plain scoring path).

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_NAMES = {
    "write": ["write_outputs"],
    "preview": ["ARTERY_COLORS", "render_montage", "render_result_preview", "write_preview", "write_result_preview"],
    "report": ["NOT_VALIDATED_NOTICE", "render_report", "write_report"],
    "dicom": ["DicomOutputs", "write_dicom_outputs"],
    "send": ["DicomNode", "parse_node", "send_files"],
}
_HOME = {name: module for module, names in _NAMES.items() for name in names}

__all__ = sorted(_HOME)


def __getattr__(name: str) -> Any:
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # pragma: no cover - what type checkers and editors see
    from .dicom import DicomOutputs, write_dicom_outputs
    from .preview import ARTERY_COLORS, render_montage, render_result_preview, write_preview, write_result_preview
    from .report import NOT_VALIDATED_NOTICE, render_report, write_report
    from .send import DicomNode, parse_node, send_files
    from .write import write_outputs
