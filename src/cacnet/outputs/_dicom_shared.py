"""What the DICOM writers share (SEG and SR here, the node's "not scored" SR): codes, reproducible UIDs, helpers."""

from __future__ import annotations

import contextlib
import uuid
import warnings
from typing import TYPE_CHECKING, Iterator

if TYPE_CHECKING:  # pragma: no cover
    import highdicom as hd

__all__ = ["CODES", "PRIVATE_SCHEME", "clip", "coded", "make_uid", "private_coded", "quiet"]

#: Private coding scheme of the concepts that have no standard code.
PRIVATE_SCHEME = "99CACTK"

#: Coded concepts used, as (code value, coding scheme designator, code meaning).
CODES: dict[str, tuple[str, str, str]] = {
    "segment_category": ("49755003", "SCT", "Morphologically abnormal structure"),
    "segment_type": ("18115005", "SCT", "Pathologic calcification"),
    "LM": ("3227004", "SCT", "Left main coronary artery"),
    "LAD": ("59438005", "SCT", "Left anterior descending coronary artery"),
    "LCX": ("57396003", "SCT", "Circumflex coronary artery"),
    "RCA": ("13647002", "SCT", "Right coronary artery"),
    "coronary_artery": ("41801008", "SCT", "Coronary artery"),
    "procedure": ("426005005", "SCT", "Cardiac CT for calcium scoring"),
    "agatston": ("450360000", "SCT", "Coronary artery calcium score"),
    "agatston_method": ("112055", "DCM", "Agatston scoring method"),
    "volume": ("122660", "DCM", "Calcium Volume"),
    "mass": ("122661", "DCM", "Calcium Mass"),
    "n_lesions": ("111038", "DCM", "Number of calcifications"),
    "threshold": ("122657", "DCM", "Agatston Score Threshold"),
    "calibration": ("122659", "DCM", "Calcium Scoring Calibration"),
    "qualitative_evaluations": ("C0034375", "UMLS", "Qualitative Evaluations"),
    "cac_drs": ("CACDRS", PRIVATE_SCHEME, "CAC-DRS"),
    "risk_category": ("RISKCAT", PRIVATE_SCHEME, "Agatston risk category"),
    "warning": ("WARNING", PRIVATE_SCHEME, "Scoring warning"),
    "unit_none": ("1", "UCUM", "no units"),
    "unit_mm3": ("mm3", "UCUM", "cubic millimeter"),
    "unit_mg": ("mg", "UCUM", "milligram"),
    "unit_hu": ("[hnsf'U]", "UCUM", "Hounsfield unit"),
    "unit_calibration": ("mg/cm3/[hnsf'U]", "UCUM", "milligram per cubic centimeter per Hounsfield unit"),
}


def coded(key: str) -> "hd.sr.CodedConcept":
    """The coded concept ``CODES[key]``."""
    import highdicom as hd

    value, scheme, meaning = CODES[key]
    return hd.sr.CodedConcept(value=value, scheme_designator=scheme, meaning=meaning)


def private_coded(value: str, meaning: str) -> "hd.sr.CodedConcept":
    """A concept of the private scheme :data:`PRIVATE_SCHEME`."""
    import highdicom as hd

    return hd.sr.CodedConcept(value=value, scheme_designator=PRIVATE_SCHEME, meaning=meaning)


_UID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "cac-toolkit/dicom-outputs")


def make_uid(series_uid: str, content: str, what: str) -> str:
    """A UID under the 2.25 root (ISO/IEC 9834-8) from a name-based (SHA-1, version 5) UUID: reproducible."""
    return f"2.25.{uuid.uuid5(_UID_NAMESPACE, '|'.join((series_uid, content, what))).int}"


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence highdicom's advice on the source's person names: they are copied as they are, not ours to fix."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*person name.*", category=UserWarning)
        yield


def clip(text: str, n: int) -> str:
    """``text`` cut to at most ``n`` characters, ending in "..." when cut (a DICOM text value's limit)."""
    return text if len(text) <= n else text[: n - 3] + "..."
