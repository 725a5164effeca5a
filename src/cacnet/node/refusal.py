"""A short DICOM SR saying that a series was not scored, and why: what a viewer shows for a refused series.

A series that triage refuses (contrast, sharp kernel, no heart, ...) or that cannot be read as one
calcium-scoring CT (missing slices, a corrupt instance, gantry tilt, ...) gets no SEG and no measurement
report; the node stores this SR in its study instead, so that whoever opens the study sees that the series
was looked at and why it has no score. It is a Comprehensive SR (series 9903, "Coronary calcium not scored
(cac-toolkit)") whose document, titled (18748-4, LN, "Diagnostic imaging report"), holds:

- the procedure reported (121058, DCM) = (426005005, SCT, "Cardiac CT for calcium scoring");
- the observer: a device named ``cac-toolkit`` (as in the measurement report);
- (NOTSCORED, 99CACTK, "Calcium scoring not performed"): a TEXT item with the reason;
- the algorithm's name and version (111001 and 111003, DCM).

Its UIDs are derived, as those of the SEG and SR (:mod:`cacnet.outputs.dicom`), from the source series, the
instances handled and the reason: handling the same series again gives the same objects, never a second copy.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

from ..outputs._dicom_shared import PRIVATE_SCHEME, clip, coded, make_uid, private_coded, quiet

if TYPE_CHECKING:  # pragma: no cover
    import highdicom as hd
    from pydicom.dataset import Dataset

__all__ = ["NOT_SCORED_SERIES_NUMBER", "NOT_SCORED_DESCRIPTION", "build_not_scored_report"]

NOT_SCORED_SERIES_NUMBER = 9903
NOT_SCORED_DESCRIPTION = "Coronary calcium not scored (cac-toolkit)"
_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
          "AccessionNumber", "StudyID", "ReferringPhysicianName")


def build_not_scored_report(datasets: list["Dataset"], reason: str, fingerprint: str) -> "hd.sr.ComprehensiveSR":
    """The "not scored" SR of a source series.

    Parameters
    ----------
    datasets : list of pydicom.dataset.Dataset
        Headers of the source series' instances (at least one): the SR joins their study and lists them as
        evidence.
    reason : str
        Why the series was not scored (shown to the reader; clipped to 1024 characters).
    fingerprint : str
        Identifies the instances handled (see :mod:`cacnet.node.runner`); part of the UIDs.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    from .. import __version__

    if not datasets:
        raise ValueError("build_not_scored_report needs at least one source instance")
    for ds in datasets:  # Type 2 attributes the SR must carry: empty (unknown) where the source lacks them
        for keyword in _TYPE2:
            if keyword not in ds:
                setattr(ds, keyword, None)
    series_uid = str(datasets[0].SeriesInstanceUID)
    content = hashlib.sha256(f"{fingerprint}|{reason}|{__version__}".encode()).hexdigest()
    rel = hd.sr.RelationshipTypeValues
    root = hd.sr.ContainerContentItem(name=hd.sr.CodedConcept("18748-4", "LN", "Diagnostic imaging report"),
                                      is_content_continuous=False)
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=str(make_uid("device", __version__, "observer")), name="cac-toolkit", manufacturer_name="cac-toolkit",
        model_name=f"cac-toolkit {__version__}")
    context = hd.sr.ObservationContext(observer_device_context=hd.sr.ObserverContext(
        observer_type=codes.cid270.Device, observer_identifying_attributes=device))
    items = list(context)
    items.append(hd.sr.CodeContentItem(name=hd.sr.CodedConcept("121058", "DCM", "Procedure reported"),
                                       value=coded("procedure"), relationship_type=rel.HAS_CONCEPT_MOD))
    items.append(hd.sr.TextContentItem(name=private_coded("NOTSCORED", "Calcium scoring not performed"),
                                       value=clip(reason, 1024), relationship_type=rel.CONTAINS))
    items.append(hd.sr.TextContentItem(name=hd.sr.CodedConcept("111001", "DCM", "Algorithm Name"),
                                       value="cac-toolkit", relationship_type=rel.CONTAINS))
    items.append(hd.sr.TextContentItem(name=hd.sr.CodedConcept("111003", "DCM", "Algorithm Version"),
                                       value=__version__, relationship_type=rel.CONTAINS))
    root.ContentSequence = hd.sr.ContentSequence(items)
    scheme = hd.coding_schemes.CodingSchemeIdentificationItem(
        designator=PRIVATE_SCHEME, name="cac-toolkit local codes", responsible_organization="cac-toolkit developers")
    with quiet():
        return hd.sr.ComprehensiveSR(
            evidence=datasets, content=root, series_instance_uid=make_uid(series_uid, content, "not-scored-series"),
            series_number=NOT_SCORED_SERIES_NUMBER, sop_instance_uid=make_uid(series_uid, content, "not-scored"),
            instance_number=1, manufacturer="cac-toolkit", is_complete=True, is_final=False, is_verified=False,
            series_description=NOT_SCORED_DESCRIPTION, coding_schemes=[scheme],
            manufacturer_model_name="cac-toolkit", software_versions=__version__, device_serial_number="none")
