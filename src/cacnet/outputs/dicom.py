"""DICOM outputs for PACS: a Segmentation (SEG) and a measurement report (SR, TID 1500).

For a scan read from DICOM, :func:`write_dicom_outputs` writes, next to the JSON result and the NIfTI
mask, ``<id>_seg.dcm`` (a binary DICOM SEG on the source series' grid, one segment per artery with
calcium; not written without calcium) and ``<id>_sr.dcm`` (a Comprehensive 3D SR holding a TID 1500
Measurement Report), both new series (9901, 9902) of the source study, with reproducible UIDs. Every
code used is in :data:`CODES`.

See docs/dicom.md for their contents, the codes and the UIDs.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Optional

import numpy as np

from agatston import ARTERY_NAMES

from .._files import atomic_path
from ..errors import InvalidScanError, UsageError
from ..io import Scan, canonical_to_source_index, to_source_grid
from ._dicom_shared import CODES, PRIVATE_SCHEME, clip, coded, make_uid, private_coded, quiet

if TYPE_CHECKING:  # pragma: no cover
    import highdicom as hd
    from pydicom.dataset import Dataset

    from ..pipeline import ScanResult

__all__ = ["CATEGORY_MEANINGS", "CODES", "DicomOutputs", "PRIVATE_SCHEME", "SEG_SERIES_NUMBER", "SR_SERIES_NUMBER",
           "build_report", "build_segmentation", "output_paths", "read_source_datasets", "source_label_volume",
           "write_dicom_outputs"]

#: Series numbers of the written objects (new series in the source study).
SEG_SERIES_NUMBER = 9901
SR_SERIES_NUMBER = 9902

#: Meanings of the risk category codes (CONVENTIONS: real-valued, half-open intervals).
CATEGORY_MEANINGS = {"A": "Agatston score 0", "B": "Agatston score (0, 10]", "C": "Agatston score (10, 100]",
                     "D": "Agatston score (100, 400]", "E": "Agatston score > 400"}

_ARTERIES = dict(ARTERY_NAMES)  # label -> artery, from the scoring core (agatston.ARTERY_NAMES)
# Patient and study attributes of Type 2 (present, maybe empty) in the SEG and SR, copied from the source
_TYPE2_COPIED = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                 "AccessionNumber", "StudyID", "ReferringPhysicianName")
_SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
_MANUFACTURER = "cac-toolkit"


@dataclass
class DicomOutputs:
    """What :func:`write_dicom_outputs` wrote.

    Attributes
    ----------
    seg : Path or None
        The Segmentation; None when no calcium was found.
    sr : Path
        The measurement report.
    study_instance_uid : str
        The source study, which both objects join.
    series_instance_uids : dict of str to str
        ``{"seg": ..., "sr": ...}`` (``seg`` absent without a SEG).
    sop_instance_uids : dict of str to str
        Same keys, the objects' SOP Instance UIDs.
    segments : dict of str to int
        Segment number of each artery with calcium, e.g. ``{"LAD": 1, "RCA": 2}``.
    """

    seg: Optional[Path]
    sr: Path
    study_instance_uid: str
    series_instance_uids: dict[str, str] = field(default_factory=dict)
    sop_instance_uids: dict[str, str] = field(default_factory=dict)
    segments: dict[str, int] = field(default_factory=dict)

    @property
    def paths(self) -> list[Path]:
        """The files written (SEG first, when there is one)."""
        return [p for p in (self.seg, self.sr) if p is not None]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready representation."""
        return {"seg": None if self.seg is None else str(self.seg), "sr": str(self.sr),
                "study_instance_uid": self.study_instance_uid,
                "series_instance_uids": dict(self.series_instance_uids),
                "sop_instance_uids": dict(self.sop_instance_uids), "segments": dict(self.segments)}


def _dicom_scan(result: "ScanResult") -> Scan:
    scan = result.scan
    if scan is None:
        raise UsageError(f"{result.id}: the result carries no scan; DICOM outputs need the scan it was scored on.")
    fmt = scan.meta.get("format")
    if fmt != "DICOM" or not scan.slices:
        raise UsageError(
            f"{result.id}: --dicom needs DICOM input (a folder or .zip of the CT series), but this scan was read "
            f"from a {fmt or 'non-DICOM'} file. A DICOM SEG and SR reference the source DICOM instances; score the "
            "original DICOM series, or leave out --dicom.")
    return scan


# --- the source instances -------------------------------------------------------------------------------

def _candidate_files(source: Path) -> Iterator[tuple[str, Any]]:
    """(name, opener) of every file that may be a DICOM slice of ``source`` (folder, zip, gzipped slices)."""
    if source.is_dir():
        for p in sorted(source.rglob("*")):
            if not p.is_file() or p.name.startswith("."):
                continue
            low = p.name.lower()
            if low.endswith(".nii.gz"):
                continue
            if low.endswith(".gz"):
                yield str(p), (lambda p=p: io.BytesIO(gzip.decompress(p.read_bytes())))
            else:
                yield str(p), (lambda p=p: open(p, "rb"))
    elif zipfile.is_zipfile(source):
        with zipfile.ZipFile(source) as zf:
            for info in zf.infolist():
                if info.is_dir() or Path(info.filename).name.startswith("."):
                    continue
                data = zf.read(info)
                if info.filename.lower().endswith(".gz"):
                    yield f"{source}:{info.filename}", (lambda d=data: io.BytesIO(gzip.decompress(d)))
                else:
                    yield f"{source}:{info.filename}", (lambda d=data: io.BytesIO(d))
    else:
        raise UsageError(f"{source}: --dicom needs the DICOM folder or .zip the scan was read from.")


def read_source_datasets(source: Path | str, scan: Scan) -> list["Dataset"]:
    """The source DICOM headers of ``scan``'s slices, in the order of the source grid's slice index.

    Parameters
    ----------
    source : path
        The folder (plain or ``*.dcm.gz`` slices) or ``.zip`` the scan was
        read from.
    scan : Scan
        The scan, as :func:`cacnet.io.read_scan` read it (``scan.slices``
        names the SOP Instance UID of each slice).

    Returns
    -------
    list of pydicom.dataset.Dataset
        Headers without pixel data; element ``k`` is the slice at index ``k``
        of the source grid (``scan.source_image``, the grid of the NIfTI mask),
        i.e. the slices sorted along their normal.

    Raises
    ------
    InvalidScanError
        When a slice is missing or its geometry (position, orientation, size)
        does not match the grid the scan was read on.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    source = Path(source)
    src = scan.source_image
    n_k = src.GetSize()[2]
    wanted: dict[str, int] = {}
    for z, s in enumerate(scan.slices):
        k = int(round(canonical_to_source_index(scan, (z, 0.0, 0.0))[2]))
        wanted[str(s["sop_instance_uid"])] = k
    found: dict[int, Any] = {}
    for name, opener in _candidate_files(source):
        try:
            with opener() as fh:
                ds = pydicom.dcmread(fh, stop_before_pixels=True)
        except (InvalidDicomError, OSError, EOFError, ValueError, TypeError, AttributeError):
            continue
        uid = str(ds.get("SOPInstanceUID", ""))
        if uid in wanted:
            found[wanted[uid]] = ds
    missing = sorted(set(range(n_k)) - set(found))
    if missing:
        raise InvalidScanError(f"{source}: {len(missing)} of the {n_k} slices scored are no longer there (first: slice "
                               f"index {missing[0]}); DICOM outputs reference the source files, so keep the series "
                               "unchanged until they are written.")
    datasets = [found[k] for k in range(n_k)]
    _check_geometry(datasets, scan, str(source))
    for ds in datasets:  # Type 2 attributes a new object must carry: empty (unknown) where the source lacks them
        for keyword in _TYPE2_COPIED:
            if keyword not in ds:
                setattr(ds, keyword, None)
    return datasets


def _check_geometry(datasets: list, scan: Scan, label: str) -> None:
    """Every slice lies where the source grid says: so the SEG frames land on the scored voxels."""
    src = scan.source_image
    cols, rows, _ = src.GetSize()
    d = np.array(src.GetDirection()).reshape(3, 3)
    dz = float(src.GetSpacing()[2])
    study = {str(ds.get("StudyInstanceUID", "")) for ds in datasets}
    if "" in study or len(study) != 1:
        raise InvalidScanError(f"{label}: the slices do not share one Study Instance UID; the SEG and SR must join "
                               "the source study.")
    frames = {str(ds.get("FrameOfReferenceUID", "") or "") for ds in datasets}
    if "" in frames or len(frames) != 1:
        raise InvalidScanError(
            f"{label}: the slices {'lack a' if '' in frames else 'do not share one'} Frame of Reference UID "
            "(0020,0052), which a CT image must have and a DICOM SEG needs to lie on them. Export the series "
            "again from the scanner or PACS, or score it without --dicom.")
    for k, ds in enumerate(datasets):
        try:
            ipp = np.array([float(v) for v in ds.ImagePositionPatient])
            iop = np.array([float(v) for v in ds.ImageOrientationPatient])
            size = (int(ds.Rows), int(ds.Columns))
        except (AttributeError, TypeError, ValueError):
            raise InvalidScanError(f"{label}: slice {ds.get('SOPInstanceUID', k)} lacks ImagePositionPatient, "
                                   "ImageOrientationPatient, Rows or Columns.") from None
        expect = np.array(src.TransformIndexToPhysicalPoint((0, 0, k)))
        along = float(np.dot(ipp - expect, d[:, 2]))  # slice k of the grid: the nearest slice position is k's
        lateral = float(np.abs(ipp - expect - along * d[:, 2]).max())
        if size != (rows, cols) or np.abs(iop[:3] - d[:, 0]).max() > 1e-3 or np.abs(iop[3:] - d[:, 1]).max() > 1e-3 \
                or abs(along) >= 0.5 * dz or lateral > 0.1 * dz + 1e-3:
            raise InvalidScanError(
                f"{label}: slice {ds.SOPInstanceUID} does not lie on the grid the scan was scored on (position "
                f"{np.round(ipp, 3).tolist()} mm, expected {np.round(expect, 3).tolist()} mm); the SEG would not "
                "overlay the scan. Score the series again.")


def source_label_volume(result: "ScanResult") -> np.ndarray:
    """The result's labels on the source grid, (k, row, column): frame ``k`` overlays source slice ``k``.

    The same array as the NIfTI mask written by :func:`cacnet.outputs.write.write_outputs`
    (``SimpleITK.GetArrayFromImage``), uint8, 0 background, 1-4 LM, LAD, LCX, RCA.
    """
    import SimpleITK as sitk

    if result.scan is None:
        raise UsageError(f"{result.id}: the result carries no scan; its grid is unknown.")
    return sitk.GetArrayFromImage(to_source_grid(result.labels, result.scan)).astype(np.uint8, copy=False)


# --- UIDs ------------------------------------------------------------------------------------------------

def _content_hash(result: "ScanResult") -> str:
    from .. import __version__

    h = hashlib.sha256()
    h.update(np.ascontiguousarray(result.labels).tobytes())
    data = result.data
    h.update(json.dumps({"agatston": data.get("agatston"), "lesions": len(result.score.lesions),
                         "arteries": data.get("arteries"), "models": data.get("models", {}).get("weights"),
                         "calibration": data.get("settings", {}).get("calibration"), "version": __version__},
                        sort_keys=True, default=str).encode())
    return h.hexdigest()


def _algorithm_parameters(result: "ScanResult") -> dict[str, str]:
    settings = result.data.get("settings", {})
    params = {"threshold_hu": f"{settings.get('threshold_hu', 130.0):g}"}
    for m in result.data.get("models", {}).get("weights", []):
        params[str(m["file"])] = "sha256:" + str(m["sha256"])
    return params


# --- SEG -------------------------------------------------------------------------------------------------

def build_segmentation(result: "ScanResult", datasets: list["Dataset"], *,
                       series_number: int = SEG_SERIES_NUMBER) -> Optional["hd.seg.Segmentation"]:
    """The DICOM Segmentation of a result, or None when it holds no calcium.

    Parameters
    ----------
    result : ScanResult
        From :func:`cacnet.pipeline.score_scan` on a DICOM series.
    datasets : list of pydicom.dataset.Dataset
        The source headers, from :func:`read_source_datasets`.
    series_number : int
        Series Number of the new series.

    Returns
    -------
    highdicom.seg.Segmentation or None
        BINARY segmentation, one segment per artery with calcium (numbered
        1..n in the order LM, LAD, LCX, RCA), empty frames left out.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    from .. import __version__
    from .preview import ARTERY_COLORS

    labels = source_label_volume(result)
    present = [lab for lab in _ARTERIES if (labels == lab).any()]
    if not present:
        return None
    lut = np.zeros(256, np.uint8)
    for number, lab in enumerate(present, start=1):
        lut[lab] = number
    pixel = lut[labels]
    algorithm = hd.AlgorithmIdentificationSequence(
        name="cac-toolkit", family=codes.cid7162.ArtificialIntelligence, version=__version__,
        source="cac-toolkit U-Net ensemble", parameters=_algorithm_parameters(result))
    content = _content_hash(result)
    series_uid = str(datasets[0].SeriesInstanceUID)
    descriptions = []
    for number, lab in enumerate(present, start=1):
        name = _ARTERIES[lab]
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=number, segment_label=f"{name} calcium",
            segmented_property_category=coded("segment_category"), segmented_property_type=coded("segment_type"),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algorithm,
            tracking_uid=make_uid(series_uid, content, f"segment-{name}"), tracking_id=f"{name} calcium",
            anatomic_regions=[coded(name)], display_color=hd.color.CIELabColor.from_rgb(*ARTERY_COLORS[lab])))
    with quiet():
        return hd.seg.Segmentation(
            source_images=datasets, pixel_array=pixel, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions, series_instance_uid=make_uid(series_uid, content, "seg-series"),
            series_number=series_number, sop_instance_uid=make_uid(series_uid, content, "seg"), instance_number=1,
            manufacturer=_MANUFACTURER, manufacturer_model_name="cac-toolkit", software_versions=__version__,
            device_serial_number="none", content_label="CAC", content_description="Coronary artery calcium",
            series_description="Coronary calcium SEG (cac-toolkit)", omit_empty_frames=True)


# --- SR --------------------------------------------------------------------------------------------------

def _measurements(hd: Any, agatston: float, volume: float, mass: Optional[float],
                  n_lesions: Optional[int] = None) -> list:
    out = [hd.sr.Measurement(name=coded("agatston"), value=float(agatston), unit=coded("unit_none"),
                             method=coded("agatston_method")),
           hd.sr.Measurement(name=coded("volume"), value=float(volume), unit=coded("unit_mm3"))]
    if mass is not None:
        out.append(hd.sr.Measurement(name=coded("mass"), value=float(mass), unit=coded("unit_mg")))
    if n_lesions is not None:
        out.append(hd.sr.Measurement(name=coded("n_lesions"), value=int(n_lesions), unit=coded("unit_none")))
    return out


def build_report(result: "ScanResult", datasets: list["Dataset"], seg: Optional["hd.seg.Segmentation"] = None, *,
                 series_number: int = SR_SERIES_NUMBER) -> "hd.sr.Comprehensive3DSR":
    """The TID 1500 measurement report of a result, as a Comprehensive 3D SR.

    Parameters
    ----------
    result : ScanResult
        From :func:`cacnet.pipeline.score_scan` on a DICOM series.
    datasets : list of pydicom.dataset.Dataset
        The source headers, from :func:`read_source_datasets`.
    seg : highdicom.seg.Segmentation, optional
        The SEG of the result (:func:`build_segmentation`); lesion groups
        reference its segments. None when there is no calcium.
    series_number : int
        Series Number of the new series.

    Returns
    -------
    highdicom.sr.Comprehensive3DSR
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    from .. import __version__

    scan = _dicom_scan(result)
    data = result.data
    calibrated = data.get("settings", {}).get("calibration") is not None
    series_uid = str(datasets[0].SeriesInstanceUID)
    content = _content_hash(result)
    algorithm = hd.sr.AlgorithmIdentification(name="cac-toolkit", version=__version__)
    algorithm_full = hd.sr.AlgorithmIdentification(
        name="cac-toolkit", version=__version__,
        parameters=[f"{k}={v}" for k, v in _algorithm_parameters(result).items()])
    groups: list[Any] = []

    # the whole coronary tree: totals, threshold, calibration, CAC-DRS and risk category
    drs = data["cac_drs"]
    drs_value = str(drs["label"]).replace("CAC-DRS ", "")
    category = str(data["category"])
    total = _measurements(hd, data["agatston"], data["volume_mm3"], data["mass_mg"] if calibrated else None,
                          n_lesions=result.score.n_lesions)
    settings = data.get("settings", {})
    total.append(hd.sr.Measurement(name=coded("threshold"), value=float(settings.get("threshold_hu", 130.0)),
                                   unit=coded("unit_hu")))
    if calibrated:
        total.append(hd.sr.Measurement(name=coded("calibration"), value=float(settings["calibration"]),
                                       unit=coded("unit_calibration")))
    groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=make_uid(series_uid, content, "group-total"),
                                                     identifier="Coronary arteries, total"),
        finding_type=coded("segment_type"), algorithm_id=algorithm_full,
        finding_sites=[hd.sr.FindingSite(coded("coronary_artery"))], measurements=total,
        qualitative_evaluations=[
            hd.sr.QualitativeEvaluation(coded("cac_drs"), private_coded(drs_value, f"CAC-DRS {drs_value}")),
            hd.sr.QualitativeEvaluation(coded("risk_category"),
                                        private_coded(category, f"Category {category}: {CATEGORY_MEANINGS[category]}")),
        ]))

    # one group per artery
    for name, a in data["arteries"].items():
        groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=make_uid(series_uid, content, f"group-{name}"),
                                                         identifier=f"{name}"),
            finding_type=coded("segment_type"), algorithm_id=algorithm,
            finding_sites=[hd.sr.FindingSite(coded(name))],
            measurements=_measurements(hd, a["agatston"], a["volume_mm3"], a["mass_mg"] if calibrated else None,
                                       n_lesions=a["n_lesions"])))

    # one group per 3D lesion, referencing its SEG segment and the source images it lies on
    by_uid = {str(ds.SOPInstanceUID): ds for ds in datasets}
    k_of = {uid: k for k, uid in enumerate(by_uid)}
    library: set[str] = set()  # the source images the report references: its image library (TID 1600)
    if seg is not None:
        number_of = {str(s.SegmentLabel).split()[0]: int(s.SegmentNumber) for s in seg.SegmentSequence}
        lesions: dict[int, list] = {}
        for les in result.score.lesions:
            lesions.setdefault(les.lesion_id, []).append(les)
        for lesion_id in sorted(lesions):
            parts = lesions[lesion_id]
            name = _ARTERIES.get(parts[0].label)
            if name is None or name not in number_of:
                continue
            number = number_of[name]
            uids = sorted({str(scan.slices[p.slice_index]["sop_instance_uid"]) for p in parts}, key=k_of.__getitem__)
            library.update(uids)
            mass = sum(p.mass_mg for p in parts if p.mass_mg is not None) if calibrated else None
            referenced = hd.sr.ReferencedSegment(
                sop_class_uid=_SEG_CLASS, sop_instance_uid=str(seg.SOPInstanceUID), segment_number=number,
                source_images=[hd.sr.SourceImageForSegmentation(str(by_uid[u].SOPClassUID), u) for u in uids])
            groups.append(hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(uid=make_uid(series_uid, content, f"lesion-{lesion_id}"),
                                                             identifier=f"Lesion {lesion_id} ({name})"),
                referenced_segment=referenced, finding_type=coded("segment_type"), algorithm_id=algorithm,
                finding_sites=[hd.sr.FindingSite(coded(name))],
                measurements=_measurements(hd, sum(p.agatston for p in parts), sum(p.volume_mm3 for p in parts),
                                           mass)))

    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=str(make_uid("device", __version__, "observer")), name="cac-toolkit", manufacturer_name=_MANUFACTURER,
        model_name=f"cac-toolkit {__version__}")
    context = hd.sr.ObservationContext(observer_device_context=hd.sr.ObserverContext(
        observer_type=codes.cid270.Device, observer_identifying_attributes=device))
    report = hd.sr.MeasurementReport(observation_context=context, procedure_reported=coded("procedure"),
                                     imaging_measurements=groups,
                                     referenced_images=[ds for ds in datasets if str(ds.SOPInstanceUID) in library]
                                     or None)
    # TID 1500 row "Qualitative Evaluations": the warnings, as TEXT (highdicom has no argument for it)
    warnings = [str(w) for w in data.get("warnings", [])]
    if warnings:
        container = hd.sr.ContainerContentItem(name=coded("qualitative_evaluations"), is_content_continuous=False,
                                               relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)
        container.ContentSequence = hd.sr.ContentSequence([
            hd.sr.TextContentItem(name=coded("warning"), value=clip(w, 1024),
                                  relationship_type=hd.sr.RelationshipTypeValues.CONTAINS) for w in warnings])
        report[0].ContentSequence.append(container)
    scheme = hd.coding_schemes.CodingSchemeIdentificationItem(
        designator=PRIVATE_SCHEME, name="cac-toolkit local codes", responsible_organization="cac-toolkit developers")
    evidence = list(datasets) + ([seg] if seg is not None else [])
    with quiet():
        sr = hd.sr.Comprehensive3DSR(
            evidence=evidence, content=report[0], series_instance_uid=make_uid(series_uid, content, "sr-series"),
            series_number=series_number, sop_instance_uid=make_uid(series_uid, content, "sr"), instance_number=1,
            manufacturer=_MANUFACTURER, is_complete=True, is_final=False, is_verified=False,
            series_description="Coronary calcium report (cac-toolkit)", coding_schemes=[scheme],
            manufacturer_model_name="cac-toolkit", software_versions=__version__, device_serial_number="none")
    return sr


def output_paths(outdir: Path | str, scan_id: str) -> list[Path]:
    """The DICOM outputs of scan ``scan_id`` found in ``outdir`` (SEG first), or [] without an SR."""
    outdir = Path(outdir)
    sr, seg = outdir / f"{scan_id}_sr.dcm", outdir / f"{scan_id}_seg.dcm"
    if not sr.is_file():
        return []
    return ([seg] if seg.is_file() else []) + [sr]


# --- writing ---------------------------------------------------------------------------------------------

def _save(ds: "Dataset", path: Path) -> None:
    with atomic_path(path) as tmp:
        ds.save_as(tmp, enforce_file_format=True)


def write_dicom_outputs(result: "ScanResult", source: Optional[Path | str], outdir: Path | str, *,
                        seg_series_number: int = SEG_SERIES_NUMBER,
                        sr_series_number: int = SR_SERIES_NUMBER) -> DicomOutputs:
    """Write ``<id>_seg.dcm`` (when there is calcium) and ``<id>_sr.dcm`` for a result scored on DICOM.

    Parameters
    ----------
    result : ScanResult
        From :func:`cacnet.pipeline.score_scan` on a DICOM series.
    source : path or None
        The DICOM folder or ``.zip`` the scan was read from (re-read for the
        source headers; pixel data are not read); None: the scan's own
        ``source_path``.
    outdir : path
        Output folder; files are written atomically.
    seg_series_number, sr_series_number : int
        Series Numbers of the two new series.

    Returns
    -------
    DicomOutputs

    Raises
    ------
    UsageError
        When the scan was not read from DICOM (exit 2).
    InvalidScanError
        When the source files changed since scoring (exit 3).
    """
    scan = _dicom_scan(result)
    try:
        import highdicom  # noqa: F401
    except ImportError as exc:
        raise UsageError(f"DICOM outputs need the dicom extra: pip install 'cac-toolkit[dicom]' ({exc}).") from None
    source = source if source is not None else scan.source_path
    if source is None:
        raise UsageError(f"{result.id}: the scan was not read from a file; DICOM outputs need the source series.")
    datasets = read_source_datasets(source, scan)
    seg = build_segmentation(result, datasets, series_number=seg_series_number)
    sr = build_report(result, datasets, seg, series_number=sr_series_number)
    outdir = Path(outdir)
    out = DicomOutputs(seg=None, sr=outdir / f"{result.id}_sr.dcm", study_instance_uid=str(sr.StudyInstanceUID))
    if seg is not None:
        out.seg = outdir / f"{result.id}_seg.dcm"
        _save(seg, out.seg)
        out.series_instance_uids["seg"] = str(seg.SeriesInstanceUID)
        out.sop_instance_uids["seg"] = str(seg.SOPInstanceUID)
        out.segments = {str(s.SegmentLabel).split()[0]: int(s.SegmentNumber) for s in seg.SegmentSequence}
    else:
        stale = outdir / f"{result.id}_seg.dcm"
        if stale.exists():  # a SEG of an earlier run would contradict this report
            stale.unlink()
    _save(sr, out.sr)
    out.series_instance_uids["sr"] = str(sr.SeriesInstanceUID)
    out.sop_instance_uids["sr"] = str(sr.SOPInstanceUID)
    return out
