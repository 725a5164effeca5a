"""Reading CT scans (NIfTI, NRRD, MetaImage, DICOM folders and zips) with SimpleITK.

:func:`read_scan` returns a :class:`Scan`: a float32 (z, y, x) array in HU on one canonical LPS grid,
with the source geometry kept (:func:`to_source_grid`, :func:`canonical_to_source_index`) and the
acquisition recorded. Spacing comes from the file's own header, orientation is decided by geometry,
geometry no CT of a patient has, cut-short DICOM slices and multi-component images are
:class:`~cacnet.errors.InvalidScanError`; whether a readable scan suits calcium scoring is
:mod:`cacnet.triage`'s question.

See docs/cli.md ("What `cac score` checks on reading") for every rule and bound.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import math
import re
import shutil
import tempfile
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn, Optional

import numpy as np

from ._files import sha256_file
from .errors import InvalidScanError, SeriesSelectionError

try:  # ISA-L's gzip (python-isal): the same bytes as the standard library, about twice as fast
    from isal.igzip import decompress as _gunzip_bytes
    from isal.igzip_lib import IsalError as _GunzipError
except ImportError:  # pragma: no cover - where no isal wheel exists
    from gzip import decompress as _gunzip_bytes

    _GunzipError = zlib.error

__all__ = ["Scan", "SeriesInfo", "acquisition_flags", "read_scan", "list_series", "to_source_grid", "canonical_to_source_index",
           "lesion_position", "scan_id", "scan_sha256", "IMAGE_SUFFIXES", "is_scan_path", "hu_levels", "unrescaled_hu",
           "SLICE_INCREMENT_RANGE_MM", "PIXEL_RANGE_MM", "MAX_LENGTH_MM", "MAX_FOV_MM", "UNRESCALED_AIR_HU"]

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".zip")

#: Slice increment (mm) of any CT of a patient: overlapping reconstructions of 0.2-0.25 mm rows reach ~0.1 mm;
#: interspaced HRCT, the widest clinical increment, uses 10-20 mm. Outside: the header is wrong (reader error).
SLICE_INCREMENT_RANGE_MM = (0.1, 20.0)
#: Pixel size (mm): 1024 pixels over the smallest (50 mm) display field, up to 256 over a PET/CT's 700 mm field
#: (2.7 mm) and copies downsampled to the models' 2.5-3 mm grid; beyond 5 mm no image shows a heart's anatomy.
PIXEL_RANGE_MM = (0.05, 5.0)
#: Longest scan (slices x increment, mm): the longest table travel of any CT is about 2000 mm.
MAX_LENGTH_MM = 2000.0
#: Widest in-plane field (mm): no CT bore is wider than about 900 mm.
MAX_FOV_MM = 1000.0
#: A CT in HU has air (-1000) or lung (-900 to -500) below this; when even the 1st percentile is above it, the
#: values look un-rescaled (stored values without RescaleIntercept, e.g. uint16 HU + 1024).
UNRESCALED_AIR_HU = -200.0

# DICOM tags read for each file of a series
_TAGS = {
    "modality": "0008|0060", "image_type": "0008|0008", "series_uid": "0020|000e", "description": "0008|103e",
    "position": "0020|0032", "orientation": "0020|0037", "kvp": "0018|0060", "thickness": "0018|0050",
    "tilt": "0018|1120", "manufacturer": "0008|0070", "number_of_frames": "0028|0008",
    "pixel_spacing": "0028|0030", "imager_pixel_spacing": "0018|1164", "sop_instance_uid": "0008|0018",
    "instance_number": "0020|0013", "kernel": "0018|1210", "contrast_agent": "0018|0010",
    "trigger_time": "0018|1060",
}


@dataclass
class SeriesInfo:
    """One DICOM series found in a folder."""

    uid: str
    description: str
    modality: str
    files: list[str]
    image_type: str = ""

    def __str__(self) -> str:
        return f"{self.uid}  {self.modality}  {len(self.files)} slice(s)  {self.description!r}"


@dataclass
class Scan:
    """A CT scan in canonical orientation.

    Attributes
    ----------
    id : str
        File name without extension, or folder name.
    hu : numpy.ndarray of float32
        (z, y, x) in HU, LPS identity orientation; a read-only view of
        ``image``'s pixels (copy it to modify it).
    spacing : tuple of float
        (dz, dy, dx) mm; dz is the slice increment.
    image : SimpleITK.Image
        Canonical image (float32 HU; ``hu`` views its pixels).
    source_image : SimpleITK.Image
        The grid of the input as stored (size, spacing, origin, direction);
        its pixels are not kept (uint8 zeros).
    meta : dict
        kVp, slice thickness and increment, modality, series, manufacturer;
        for DICOM also ``kernel`` (ConvolutionKernel) and ``contrast_agent``
        (ContrastBolusAgent), None when absent.
    warnings : list of str
        Things a reader of the result must know (non-120 kVp, slice
        thickness outside 2.5-3 mm, missing rescale suspected). Contrast,
        heart, noise and kernel are checked by :func:`cacnet.triage.triage`.
    slices : list of dict
        DICOM input only (else empty): one entry per **canonical** slice
        (index z of ``hu``), the file that slice came from, as
        ``{"sop_instance_uid": str, "instance_number": int or None}``. Kept
        out of ``meta`` (it would swell the JSON result).
    source_path : pathlib.Path or None
        The file or folder the scan was read from (absolute), None for a
        scan made in memory.
    """

    id: str
    hu: np.ndarray
    spacing: tuple[float, float, float]
    image: Any
    source_image: Any
    meta: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    slices: list[dict[str, Any]] = field(default_factory=list, repr=False)
    source_path: Optional[Path] = field(default=None, repr=False)


def scan_id(path: Path) -> str:
    """``case.nii.gz`` -> ``case``; a folder -> its name."""
    path = Path(path)
    name = path.name
    for suffix in IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def scan_sha256(path: Path | str) -> str:
    """sha256 identifying a scan's bytes.

    A file (NIfTI, NRRD, MetaImage header, zip): the sha256 of its bytes. A
    folder (DICOM): the sha256 of the lines ``<relative path>\\0<sha256 of the
    file>\\n`` of every file in it, recursively, sorted by relative path,
    hidden files left out. A MetaImage ``.mhd`` is hashed with its data file
    only when it is a ``.mha``; for ``.mhd`` the header and the ``.raw``/``.zraw``
    file next to it with the same stem are hashed together.
    """
    path = Path(path)
    if path.is_dir():
        h = hashlib.sha256()
        files = sorted((p for p in path.rglob("*") if p.is_file()
                        and not any(part.startswith(".") for part in p.relative_to(path).parts)),
                       key=lambda p: p.relative_to(path).as_posix())
        for p in files:
            h.update(p.relative_to(path).as_posix().encode("utf-8") + b"\0" + sha256_file(p).encode() + b"\n")
        return h.hexdigest()
    if path.name.lower().endswith(".mhd"):
        h = hashlib.sha256(sha256_file(path).encode())
        for ext in (".raw", ".zraw"):
            data = path.with_suffix(ext)
            if data.exists():
                h.update(sha256_file(data).encode())
        return h.hexdigest()
    return sha256_file(path)


def is_scan_path(path: Path) -> bool:
    """Whether ``path`` is a file with a supported image extension."""
    return Path(path).is_file() and Path(path).name.lower().endswith(IMAGE_SUFFIXES)


def _tag(reader, key: str) -> str:
    tag = _TAGS[key]
    return reader.GetMetaData(tag).strip() if reader.HasMetaDataKey(tag) else ""


def _dirs_with_files(folder: Path) -> list[Path]:
    """``folder`` and every folder below it that holds files; links to folders are followed, each real folder once."""
    import os

    dirs, seen = {folder}, set()
    for root, subdirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:  # a link back up (a loop) or a second link to the same folder
            subdirs[:] = []
            continue
        seen.add(real)
        if any(os.path.isfile(os.path.join(root, f)) for f in files):
            dirs.add(Path(root))
    return sorted(dirs)


def list_series(folder: Path) -> list[SeriesInfo]:
    """DICOM series in ``folder`` (recursively, links to folders followed), with modality and description."""
    import SimpleITK as sitk

    folder = Path(folder)
    dirs = _dirs_with_files(folder)
    out: dict[str, SeriesInfo] = {}
    # ITK prints "No Series were found" to stderr for a folder without DICOM
    # files; the caller reports that itself, so keep ITK quiet meanwhile.
    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        uids_by_dir = [(d, sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(d)) or ()) for d in dirs]
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)
    for d, uids in uids_by_dir:
        for uid in uids:
            files = list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(d), uid))
            r = sitk.ImageFileReader()
            r.SetFileName(files[0])
            r.LoadPrivateTagsOff()
            try:
                r.ReadImageInformation()
            except RuntimeError:
                continue
            info = out.setdefault(uid, SeriesInfo(uid, _tag(r, "description"), _tag(r, "modality").upper(), [],
                                                  _tag(r, "image_type").upper()))
            info.files.extend(f for f in files if f not in info.files)
    return list(out.values())


def _qualifies(s: SeriesInfo) -> bool:
    return s.modality == "CT" and "LOCALIZER" not in s.image_type and len(s.files) >= 3


def _series_folder(s: SeriesInfo, folder: Path) -> Optional[str]:
    """The name of the sub-folder of ``folder`` that holds every file of ``s``; None when it is ``folder`` itself."""
    import os

    try:
        common = Path(os.path.commonpath([os.path.dirname(f) for f in s.files]))
        rel = common.relative_to(folder)
    except ValueError:
        return None
    return rel.parts[0] if rel.parts else None


def _read_dicom(folder: Path, series: Optional[str], label: str):
    import SimpleITK as sitk

    all_series = list_series(folder)
    if not all_series:
        raise InvalidScanError(f"{label}: no DICOM files found; expected a folder of DICOM slices of one CT series.")
    if series is not None:
        chosen = [s for s in all_series if s.uid == series]
        if not chosen:
            listing = "\n  ".join(str(s) for s in all_series)
            raise SeriesSelectionError(f"{label}: no series with UID {series}; the folder holds:\n  {listing}")
        s = chosen[0]
        if s.modality != "CT":
            raise InvalidScanError(f"{label}: series {s.uid} has modality {s.modality or 'unknown'}, not CT.")
        if "LOCALIZER" in s.image_type:
            raise InvalidScanError(f"{label}: series {s.uid} is a localizer (scout), not an axial CT series.")
    else:
        ok = [s for s in all_series if _qualifies(s)]
        if not ok:
            why = "; ".join(
                f"{s.uid}: " + ("modality " + (s.modality or "unknown") if s.modality != "CT"
                                else "localizer" if "LOCALIZER" in s.image_type else f"{len(s.files)} slice(s)")
                for s in all_series
            )
            raise SeriesSelectionError(f"{label}: no CT series with at least 3 axial slices ({why}).")
        if len(ok) > 1:
            homes = [_series_folder(s, folder) for s in ok]
            if str(folder) == label and all(h is not None for h in homes) and len(set(homes)) == len(homes):
                # a folder of series folders (e.g. a patient's reconstructions): each can be a scan of its own
                raise SeriesSelectionError(
                    f"{label}: {len(ok)} CT series found, each in its own sub-folder; to score each as a scan, give "
                    f"the sub-folders as the inputs (e.g. cac score {folder}/*/); to score one, give its sub-folder "
                    "or choose it with --series UID:\n  "
                    + "\n  ".join(f"{h}/  {s}" for h, s in zip(homes, ok)))
            raise SeriesSelectionError(
                f"{label}: {len(ok)} CT series found; choose one with --series UID:\n  "
                + "\n  ".join(str(s) for s in ok))
        s = ok[0]
    _check_unlisted_files(s, all_series, label)
    return _read_series(s, label)  # image, meta, slices (per file in index order)


def _float_list(text: str) -> list[float]:
    return [float(v) for v in text.replace(" ", "").split("\\") if v]


def _read_series(s: SeriesInfo, label: str):
    import SimpleITK as sitk

    if len(s.files) < 3:
        raise InvalidScanError(f"{label}: series {s.uid} has {len(s.files)} slice(s); a 3D CT needs at least 3.")
    readers = []
    for f in s.files:
        r = sitk.ImageFileReader()
        r.SetFileName(f)
        r.LoadPrivateTagsOff()
        r.ReadImageInformation()
        readers.append(r)
    components = readers[0].GetNumberOfComponents()
    if components != 1:
        raise InvalidScanError(f"{label}: series {s.uid} has {components} components per voxel (SamplesPerPixel: "
                               "a colour or vector image, e.g. a screen capture); a CT holds one grey level (HU) "
                               "per voxel. Score the CT series itself.")
    frames = _tag(readers[0], "number_of_frames")
    if frames and int(float(frames)) > 1:
        raise InvalidScanError(f"{label}: multi-frame DICOM ({frames} frames per file) is not supported; "
                               "convert it to NIfTI first (e.g. dcm2niix).")
    _check_pixel_data(readers, s.files, label)
    try:
        orient = np.array(_float_list(_tag(readers[0], "orientation")))
        pos = np.array([_float_list(_tag(r, "position")) for r in readers])
    except ValueError:
        raise InvalidScanError(f"{label}: slices lack ImagePositionPatient/ImageOrientationPatient.") from None
    if orient.size != 6 or pos.shape[1:] != (3,):
        raise InvalidScanError(f"{label}: slices lack ImagePositionPatient/ImageOrientationPatient.")
    normal = np.cross(orient[:3], orient[3:])
    if abs(normal[2]) < 0.9:
        raise InvalidScanError(
            f"{label}: slices are not axial (slice normal {np.round(normal, 3).tolist()} from "
            "ImageOrientationPatient; axial slices have their normal along patient z). A sagittal or coronal "
            "DICOM series is a reconstruction, not an axial acquisition, and Agatston scoring is defined on "
            "axial slices: score the study's axial series instead.")
    dy, dx = _dicom_pixel_spacing(readers, s.files, label)
    tilt = _tag(readers[0], "tilt")
    if tilt and abs(float(tilt)) > 0.01:
        raise InvalidScanError(f"{label}: gantry tilt of {float(tilt):g} degrees; resample the series "
                               "to an untilted grid first.")
    order = np.argsort(pos @ normal)
    pos = pos[order]
    files = [s.files[i] for i in order]
    along = pos @ normal
    steps = np.diff(along)
    if np.any(np.isclose(steps, 0, atol=1e-3)):
        raise InvalidScanError(f"{label}: several slices share a position (a 4D or multi-phase series); "
                               "export one phase only.")
    lateral = pos - along[:, None] * normal[None, :]
    if np.abs(lateral - lateral[0]).max() > 0.05 * float(np.median(steps)) + 1e-3:
        raise InvalidScanError(f"{label}: slice positions drift sideways along the stack (gantry tilt); "
                               "resample to an untilted grid first.")
    med = float(np.median(steps))
    if not (math.isfinite(med) and med > 0):
        raise InvalidScanError(f"{label}: the slice positions (ImagePositionPatient) do not advance along the "
                               f"slice normal (median step {med:g} mm); the slice increment is unknown.")
    bad = np.flatnonzero(np.abs(steps - med) > 0.01 * med)
    if bad.size:
        i = int(bad[0])
        gap = steps[i] / med
        what = (f"about {round(gap) - 1} missing slice(s)" if gap > 1.5 else "uneven slice spacing")
        raise InvalidScanError(
            f"{label}: {what} between z = {along[i]:.2f} and {along[i + 1]:.2f} mm "
            f"(step {steps[i]:.3f} mm, median {med:.3f} mm, tolerance 1 %).")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    reader.SetOutputPixelType(sitk.sitkFloat32)
    try:
        image = reader.Execute()  # rescale slope/intercept applied per slice
    except RuntimeError as exc:
        raise InvalidScanError(f"{label}: the DICOM pixel data cannot be decoded ({str(exc).splitlines()[-1]})"
                               + _undecodable_slice(files) + ".") from None
    itk_dz = image.GetSpacing()[2]
    if not abs(itk_dz - med) <= 0.01 * med:
        raise InvalidScanError(f"{label}: the slice positions give a {med:.4f} mm slice increment but ITK reads "
                               f"{itk_dz:.4f} mm; the slice geometry is inconsistent. Export the series again.")
    # the in-plane spacing is the file's own (ITK puts 1 mm where PixelSpacing is missing)
    image.SetSpacing((dx, dy, itk_dz))
    sorted_readers = [readers[i] for i in order]
    slices = [{"sop_instance_uid": _tag(r, "sop_instance_uid"), "instance_number": _int(_tag(r, "instance_number"))}
              for r in sorted_readers]
    r0 = readers[0]
    meta = {
        "format": "DICOM", "series_uid": s.uid, "series_description": s.description, "modality": s.modality,
        "manufacturer": _tag(r0, "manufacturer"), "kvp": _num(_tag(r0, "kvp")),
        "slice_thickness_mm": _num(_tag(r0, "thickness")), "slice_increment_mm": round(med, 4),
        "n_files": len(files), "kernel": _tag(r0, "kernel") or None,
        "contrast_agent": _tag(r0, "contrast_agent") or None,
        "trigger_time_ms": _num(_tag(r0, "trigger_time")),  # ECG-gated acquisitions record it
    }
    return image, meta, slices


def _num(text: str) -> Optional[float]:
    try:
        return float(text)
    except ValueError:
        return None


def _int(text: str) -> Optional[int]:
    value = _num(text)
    return int(value) if value is not None and math.isfinite(value) else None


def _dicom_pixel_spacing(readers: list, files: list[str], label: str) -> tuple[float, float]:
    """(dy, dx) in mm from PixelSpacing (0028,0030), else ImagerPixelSpacing (0018,1164).

    ImagerPixelSpacing is used only where PixelSpacing is absent. Both must
    be two positive numbers, the same on every slice.
    """
    first: Optional[tuple[float, float]] = None
    for r, f in zip(readers, files):
        text, name = _tag(r, "pixel_spacing"), "PixelSpacing (0028,0030)"
        if not text:
            text, name = _tag(r, "imager_pixel_spacing"), "ImagerPixelSpacing (0018,1164)"
        if not text:
            raise InvalidScanError(
                f"{label}: DICOM slice {Path(f).name} has no PixelSpacing (0028,0030) nor ImagerPixelSpacing "
                "(0018,1164); the file does not say how large a pixel is. Export the series again with its "
                "full header (or fix the header, e.g. with pydicom or dcmodify) before scoring.")
        try:
            values = _float_list(text)
        except ValueError:
            values = []
        if len(values) != 2 or not all(math.isfinite(v) and v > 0 for v in values):
            raise InvalidScanError(
                f"{label}: DICOM {name} of slice {Path(f).name} is '{text}', not two positive numbers; the file "
                "does not say how large a pixel is. Fix the header (e.g. with pydicom or dcmodify) before scoring.")
        here = (values[0], values[1])
        if first is None:
            first = here
        elif not np.allclose(here, first, rtol=1e-4, atol=0):
            raise InvalidScanError(f"{label}: DICOM {name} differs between slices ({list(first)} and "
                                   f"{list(here)} in {Path(f).name}); the slices are not one grid.")
    assert first is not None
    return first


#: Transfer syntaxes whose pixel data is stored native (uncompressed): (explicit VR, little endian) of the data
#: set. Deflated is explicit VR little endian once inflated. Any other (JPEG, JPEG 2000, JPEG-LS, RLE, ...)
#: encapsulates its pixel data: the element's length says nothing about the pixel count, and GDCM's decoders
#: refuse a cut stream themselves.
_NATIVE_TRANSFER_SYNTAXES = {"1.2.840.10008.1.2": (False, True), "1.2.840.10008.1.2.1": (True, True),
                             "1.2.840.10008.1.2.2": (True, False), "1.2.840.10008.1.2.1.99": (True, True)}
_DEFLATED_TRANSFER_SYNTAX = "1.2.840.10008.1.2.1.99"
# explicit VRs with a 2-byte reserved field and a 4-byte length (PS3.5 7.1.2)
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})
_UNDEFINED_LENGTH = 0xFFFFFFFF


@dataclass
class _PixelDataExtent:
    """What a DICOM file's own bytes say about its PixelData (7FE0,0010), parsed by :func:`_pixel_data_extent`."""

    transfer_syntax: str  # "" where the file has no file meta information
    series_uid: str  # "" where the parse did not reach SeriesInstanceUID (0020,000E)
    declared: Optional[int] = None  # the element's value length; None where the parse did not reach the element
    available: int = 0  # bytes of that value the file holds (inflated, for Deflated)
    cut: bool = False  # the file ends before PixelData, or inside the fragments of an encapsulated one

    def runs_past_end(self) -> bool:
        """Whether the file ends before its PixelData does (or before the parse reached PixelData)."""
        if self.declared is None or self.declared == _UNDEFINED_LENGTH:
            return self.cut
        return self.declared > self.available


def _element_header(buf, pos: int, explicit: bool, little: bool) -> tuple[int, int, bytes, int, int]:
    """(group, element, VR, value length, value position) of the data element at ``pos``."""
    import struct

    e = "<" if little else ">"
    group, elem = struct.unpack_from(e + "HH", buf, pos)
    if group == 0xFFFE or not explicit:  # items and delimiters have no VR, nor has implicit VR
        return group, elem, b"", struct.unpack_from(e + "I", buf, pos + 4)[0], pos + 8
    vr = bytes(buf[pos + 4 : pos + 6])
    if vr in _LONG_VRS:
        return group, elem, vr, struct.unpack_from(e + "I", buf, pos + 8)[0], pos + 12
    return group, elem, vr, struct.unpack_from(e + "H", buf, pos + 6)[0], pos + 8


def _skip_undefined(buf, pos: int, vr: bytes, explicit: bool, little: bool) -> int:
    """The position after an undefined-length sequence whose items start at ``pos``.

    An undefined-length UN is a sequence in implicit VR little endian (PS3.5 6.2.2).
    """
    if vr == b"UN":
        explicit, little = False, True
    while True:
        group, elem, _, n, pos = _element_header(buf, pos, explicit, little)
        if (group, elem) == (0xFFFE, 0xE0DD):  # sequence delimitation
            return pos
        if (group, elem) != (0xFFFE, 0xE000):
            raise ValueError("not an item")
        if n != _UNDEFINED_LENGTH:
            pos += n
            continue
        while True:  # an undefined-length item: its elements up to the item delimitation
            group, elem, vr2, n, pos = _element_header(buf, pos, explicit, little)
            if (group, elem) == (0xFFFE, 0xE00D):
                break
            pos = _skip_undefined(buf, pos, vr2, explicit, little) if n == _UNDEFINED_LENGTH else pos + n


def _pixel_data_extent(path) -> Optional[_PixelDataExtent]:
    """Parse a DICOM file up to its PixelData (7FE0,0010) element, without pydicom.

    The file meta information (group 0002, explicit VR little endian) gives
    the transfer syntax; the data set is then walked element by element in
    that encoding (implicit or explicit VR, little or big endian; Deflated is
    inflated first), skipping each value by its length and undefined-length
    sequences item by item, up to PixelData, whose value length and the bytes
    the file really holds after it are returned. The file is memory-mapped:
    only the header pages are read, not the pixels. A file without file meta
    information is taken as implicit VR little endian unless its first element
    carries an explicit VR. What the parse could not reach stays empty (a file
    cut inside its header, ``cut`` set); None where the file cannot be opened.
    """
    import mmap
    import os

    try:
        fh = open(path, "rb")
    except OSError:
        return None
    with fh:
        size = os.fstat(fh.fileno()).st_size
        if size < 8:
            return _PixelDataExtent("", "")
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            return _walk_to_pixel_data(buf, size)


def _walk_to_pixel_data(buf, size: int) -> _PixelDataExtent:
    import struct

    out = _PixelDataExtent("", "")
    pos = 132 if size >= 132 and buf[128:132] == b"DICM" else 0
    try:
        while pos + 8 <= size and struct.unpack_from("<H", buf, pos)[0] == 0x0002:  # file meta information
            _, elem, _, n, vpos = _element_header(buf, pos, True, True)
            if elem == 0x0010:
                out.transfer_syntax = bytes(buf[vpos : vpos + n]).rstrip(b"\0 ").decode("ascii", "replace")
            pos = vpos + n
        if out.transfer_syntax:
            explicit, little = _NATIVE_TRANSFER_SYNTAXES.get(out.transfer_syntax, (True, True))
        else:
            vr = bytes(buf[pos + 4 : pos + 6])
            explicit, little = vr.isalpha() and vr.isupper(), True
        if out.transfer_syntax == _DEFLATED_TRANSFER_SYNTAX:
            buf = zlib.decompressobj(-15).decompress(bytes(buf[pos:]))  # a cut stream inflates to less
            pos, size = 0, len(buf)
        last = (-1, -1)
        while pos + 8 <= size:
            group, elem, vr, n, vpos = _element_header(buf, pos, explicit, little)
            if (group, elem) <= last:  # a data set's elements ascend: this is not one (or not this encoding)
                raise ValueError("elements out of order")
            last = (group, elem)
            if (group, elem) == (0x7FE0, 0x0010):
                out.declared, out.available = n, max(size - vpos, 0)
                if n == _UNDEFINED_LENGTH:  # encapsulated: its fragments must end inside the file
                    out.cut = _skip_undefined(buf, vpos, b"OB", explicit, little) > size
                return out
            if group > 0x7FE0:
                return out
            if n == _UNDEFINED_LENGTH:
                pos = _skip_undefined(buf, vpos, vr, explicit, little)
                continue
            if (group, elem) == (0x0020, 0x000E) and vpos + n <= size:
                out.series_uid = bytes(buf[vpos : vpos + n]).rstrip(b"\0 ").decode("ascii", "replace")
            pos = vpos + n
        out.cut = pos > size
    except struct.error:  # an element header, or an item of a sequence, past the end of the file
        out.cut = True
    except (ValueError, IndexError, RecursionError, zlib.error):  # not DICOM as far as this parse goes
        pass
    return out


def _expected_pixel_bytes(reader) -> Optional[tuple[int, str]]:
    """Bytes of native pixel data a slice's header announces, and how they add up; None where a tag is unusable.

    Rows x Columns x SamplesPerPixel x ceil(BitsAllocated / 8) x
    NumberOfFrames (1 where absent), from the tags SimpleITK read; 1-bit
    pixels are packed, 8 to a byte.
    """
    def value(tag: str, default: Optional[int] = None) -> Optional[int]:
        text = reader.GetMetaData(tag).strip() if reader.HasMetaDataKey(tag) else ""
        number = _int(text) if text else default
        return number if number is not None and number > 0 else default

    rows, cols, bits = value("0028|0010"), value("0028|0011"), value("0028|0100")
    samples, frames = value("0028|0002", 1), value("0028|0008", 1)
    if rows is None or cols is None or bits is None or samples is None or frames is None:
        return None
    pixels = rows * cols * samples * frames
    how = f"{rows} rows x {cols} columns" + (f" x {samples} samples" if samples > 1 else "")
    how += f" x {frames} frames" if frames > 1 else ""
    if bits == 1:
        return (pixels + 7) // 8, how + " at 1 bit"
    per = (bits + 7) // 8
    return pixels * per, how + f" x {per} byte{'s' if per > 1 else ''} ({bits} bits allocated)"


def _check_pixel_data(readers: list, files: list[str], label: str) -> None:
    """Every slice with native pixel data must hold all the pixels its header announces.

    GDCM reads a slice whose PixelData (7FE0,0010) is shorter than Rows x
    Columns x SamplesPerPixel x ceil(BitsAllocated / 8) x NumberOfFrames
    without an error and fills the missing pixels with garbage (a real series
    with one such slice scored 0.0 instead of 314). The element's length and
    the bytes the file holds after it are parsed from the file itself
    (:func:`_pixel_data_extent`); the shorter of the two must reach the
    expected count. Where the parse cannot find the element, the file as a
    whole must at least be as long as its pixels (which catches a gross cut,
    not one of a few bytes). Encapsulated (compressed) transfer syntaxes are
    left to the decoder, which refuses a cut stream.
    """
    import os

    for r, f in zip(readers, files):
        expected = _expected_pixel_bytes(r)
        if expected is None:
            continue
        need, how = expected
        extent = _pixel_data_extent(f)
        if extent is None:
            continue
        if extent.transfer_syntax and extent.transfer_syntax not in _NATIVE_TRANSFER_SYNTAXES:
            continue
        fix = (" The file was cut short (an interrupted copy, transfer or export); copy or export the series "
               "again and score it.")
        if extent.declared is not None:
            have = min(extent.declared, extent.available)
            if have < need:
                where = (f"its PixelData (7FE0,0010) holds {have} bytes" if extent.declared <= extent.available
                         else f"its PixelData (7FE0,0010) announces {extent.declared} bytes but the file ends "
                              f"after {have}")
                raise InvalidScanError(
                    f"{label}: DICOM slice {Path(f).name} is truncated: {where}, but its header's {how} "
                    f"need {need}. The missing pixels would be read as garbage and the score would be "
                    "wrong." + fix)
            continue
        size = os.path.getsize(f)
        if size < need:
            raise InvalidScanError(
                f"{label}: DICOM slice {Path(f).name} is truncated: the whole file holds {size} bytes, but its "
                f"header's {how} need {need} bytes of pixel data. The missing pixels would be read as "
                "garbage and the score would be wrong." + fix)


def _check_unlisted_files(s: SeriesInfo, all_series: list[SeriesInfo], label: str) -> None:
    """No file beside the slices of ``s`` may be a cut-short slice of ``s`` that GDCM skipped.

    GDCM leaves out of a series, without a word, a file whose PixelData (or
    header) runs past the end of the file: a slice cut inside the series then
    shows as a missing slice, and a cut first or last slice vanishes and the
    scan is scored without it. Each file in the series' folders that no series
    lists and that starts like DICOM is parsed (:func:`_pixel_data_extent`);
    one that ends before its pixel data does is refused when it names this
    series, or when it is cut before its SeriesInstanceUID.
    """
    import os

    listed = {os.path.normpath(f) for t in all_series for f in t.files}
    for d in sorted({os.path.dirname(os.path.normpath(f)) for f in s.files}):
        try:
            names = sorted(os.listdir(d))
        except OSError:
            continue
        for name in names:
            f = os.path.join(d, name)
            if f in listed or name.startswith(".") or not os.path.isfile(f) or not _looks_like_dicom(f):
                continue
            extent = _pixel_data_extent(f)
            if extent is None or not extent.runs_past_end() or extent.series_uid not in ("", s.uid):
                continue
            if extent.declared is None:
                why = "the file ends inside its header"
            elif extent.declared == _UNDEFINED_LENGTH:
                why = (f"the fragments of its compressed PixelData (7FE0,0010) run past the end of the file, "
                       f"after {extent.available} bytes")
            else:
                why = (f"its PixelData (7FE0,0010) announces {extent.declared} bytes but the file ends after "
                       f"{extent.available}")
            whose = f"of series {s.uid}" if extent.series_uid == s.uid else "whose series cannot be read"
            raise InvalidScanError(
                f"{label}: DICOM file {name} ({whose}) is truncated: {why}. The DICOM reader leaves such a file "
                "out of the series, and the scan would be scored without that slice. The file was cut short (an "
                "interrupted copy, transfer or export); copy or export the series again and score it.")


def _undecodable_slice(files: list[str]) -> str:
    """", in slice NAME..." for the first of ``files`` GDCM cannot decode alone (a cut JPEG stream), else ""."""
    import SimpleITK as sitk

    def decodes(f: str) -> bool:
        r = sitk.ImageFileReader()
        r.SetFileName(f)
        try:
            r.Execute()
        except RuntimeError:
            return False
        return True

    for i, f in enumerate(files):
        if not decodes(f):
            if i > 0 or (len(files) > 1 and decodes(files[1])):
                return (f", in slice {Path(f).name}; other slices decode, so that file is damaged (cut short?): "
                        "copy or export the series again")
            return f", in slice {Path(f).name}"
    return ""


def _looks_like_dicom(path: str) -> bool:
    """DICM at byte 128 (Part 10), or a bare data set starting with group 0002 or 0008 (little endian)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return head[128:] == b"DICM" or head[:2] in (b"\x02\x00", b"\x08\x00")


def _check_complete(path: Path, label: str) -> Optional[dict[str, Any]]:
    """Checks ITK does not do: it reads some broken files without complaint.

    See :func:`_check_nifti` (this returns only its first value).
    """
    return _check_nifti(path, label)[0]


def _check_nifti(path: Path, label: str, copy: Optional[Path] = None
                 ) -> tuple[Optional[dict[str, Any]], Optional[Path]]:
    """Checks ITK does not do: it reads some broken files without complaint.

    A gzip stream must end properly; a NIfTI file must hold all the bytes its
    header announces; a floating-point NIfTI must hold no NaN (ITK's reader
    silently turns NaN into 0).

    Returns
    -------
    dict or None
        For a NIfTI-1 file, the header fields that give its geometry
        (:func:`_nifti_geometry`); None for other files.
    Path or None
        ``copy``, when given, the file is a single-file NIfTI-1 ``.nii.gz`` that
        passed the checks, and its decompressed bytes (read here anyway) could
        be written there: reading that copy spares ITK decompressing the file a
        second time. None otherwise.
    """
    import struct

    name = path.name.lower()
    if name.endswith(".gz"):
        try:
            data = _gunzip_bytes(path.read_bytes())
        except (OSError, EOFError, zlib.error, _GunzipError) as exc:
            raise InvalidScanError(f"{label}: the compressed file is truncated or corrupt ({exc}); "
                                   "copy or export it again.") from None
    elif name.endswith(".nii"):
        data = path.read_bytes()
    else:
        return None, None
    if not (name.endswith(".nii") or name.endswith(".nii.gz")):
        return None, None
    if len(data) < 348:
        raise InvalidScanError(f"{label}: too short for a NIfTI header; the file is truncated.")
    for endian in "<>":
        if struct.unpack(endian + "i", data[:4])[0] != 348:
            continue
        dims = struct.unpack(endian + "8h", data[40:56])
        datatype, bitpix = struct.unpack(endian + "2h", data[70:74])
        offset = int(struct.unpack(endian + "f", data[108:112])[0])
        n = int(np.prod([max(d, 1) for d in dims[1 : max(1, min(dims[0], 7)) + 1]]))
        need = offset + n * bitpix // 8
        if len(data) < need:
            raise InvalidScanError(f"{label}: holds {len(data)} bytes of image data but its header announces "
                                   f"{need}; the file is truncated.")
        if datatype in (16, 64):
            values = np.frombuffer(data, dtype=np.dtype(endian + ("f4" if datatype == 16 else "f8")), count=n,
                                   offset=offset)
            bad = int((~np.isfinite(values)).sum())
            if bad:
                raise InvalidScanError(f"{label}: contains {bad} NaN or infinite voxel value(s); "
                                       "fill them (e.g. with -1024) before scoring.")
        geometry = _nifti_geometry(bytes(data[:348]), endian)
        if copy is None or not name.endswith(".nii.gz") or bytes(data[344:348]) != b"n+1\0":
            return geometry, None
        try:
            copy.write_bytes(data)
        except OSError:
            return geometry, None
        return geometry, copy
    return None, None


def _nifti_geometry(header: bytes, endian: str) -> dict[str, Any]:
    """dim, pixdim, qform_code, sform_code and the sform rows of a NIfTI-1 header."""
    import struct

    return {
        "dim": struct.unpack(endian + "8h", header[40:56]),
        "pixdim": struct.unpack(endian + "8f", header[76:108]),
        "qform_code": struct.unpack(endian + "h", header[252:254])[0],
        "sform_code": struct.unpack(endian + "h", header[254:256])[0],
        "srow": np.array(struct.unpack(endian + "12f", header[280:328]), dtype=float).reshape(3, 4),
    }


_NIFTI_AXES = {1: "column spacing", 2: "row spacing", 3: "slice spacing"}


def _nifti_spacing(geometry: dict[str, Any], label: str) -> dict[int, float]:
    """The voxel spacing a NIfTI header gives, by ITK index axis (0, 1, 2).

    The column norms of the sform matrix when ``sform_code > 0``, else
    ``pixdim[1..3]``. Only axes the file has (more than one voxel along) are
    checked: a single-slice file is reported as 2D later.
    """
    dim, pixdim = geometry["dim"], geometry["pixdim"]
    axes = [k for k in (1, 2, 3) if k <= dim[0] and dim[k] > 1]
    fix = " Fix the header (e.g. with nibabel or fslorient) before scoring."
    out: dict[int, float] = {}
    sform = geometry["sform_code"] > 0
    norms = np.linalg.norm(geometry["srow"][:, :3], axis=0)
    for k in axes:
        p = float(pixdim[k])
        what = f"NIfTI pixdim[{k}] ({_NIFTI_AXES[k]})"
        if math.isfinite(p) and p < 0:
            raise InvalidScanError(f"{label}: {what} is {p:g}, negative; NIfTI voxel sizes must be positive (the "
                                   "handedness goes in pixdim[0])." + fix)
        if sform:
            s = float(norms[k - 1])
            if not (math.isfinite(s) and s > 0):
                raise InvalidScanError(
                    f"{label}: the NIfTI sform (srow_x/y/z, sform_code {geometry['sform_code']}) gives voxel axis "
                    f"{k} ({_NIFTI_AXES[k]}) a length of {s:g}; the file does not say how far apart the voxels "
                    "are." + fix)
            if math.isfinite(p) and p > 0 and abs(p - s) > 0.01 * s:
                raise InvalidScanError(
                    f"{label}: {what} is {p:g} mm but the sform gives {s:g} mm; the header gives two different "
                    "voxel sizes." + fix)
            out[k - 1] = s
        else:
            if not (math.isfinite(p) and p > 0):
                raise InvalidScanError(
                    f"{label}: {what} is {p:g}; the file does not say how far apart the "
                    + ("slices" if k == 3 else "voxels") + " are." + fix)
            out[k - 1] = p
    return out


def _text_header(path: Path, stop: bytes, sep: bytes) -> dict[str, str]:
    """``key <sep> value`` lines at the start of a file, up to a blank line or the ``stop`` key."""
    with open(path, "rb") as fh:
        head = fh.read(1 << 16)
    fields: dict[str, str] = {}
    for line in head.split(b"\n"):
        line = line.rstrip(b"\r")
        if not line.strip():
            break
        key, found, value = line.partition(sep)
        if not found:
            continue
        k = key.strip().decode("latin-1")
        fields[k] = value.strip().decode("latin-1")
        if k == stop.decode():
            break
    return fields


def _check_header_spacing(path: Path, label: str) -> None:
    """MetaImage and NRRD: the header must give a positive, finite spacing for every axis.

    ITK reads a missing spacing as 1 mm and refuses a zero one with a message
    about ITK internals; this says which header field is wrong.
    """
    name = path.name.lower()
    fix = " Fix the header before scoring."
    if name.endswith((".mha", ".mhd")):
        fields = _text_header(path, b"ElementDataFile", b"=")
        if "DimSize" not in fields and "NDims" not in fields:
            return  # not a MetaImage header: ITK says the file cannot be read
        key = next((k for k in ("ElementSpacing", "ElementSize") if k in fields), None)
        if key is None:
            raise InvalidScanError(f"{label}: the MetaImage header has no ElementSpacing; the file does not say "
                                   "how far apart the voxels are." + fix)
        try:
            values = [float(v) for v in fields[key].split()]
        except ValueError:
            values = []
        if not values or not all(math.isfinite(v) and v != 0 for v in values):
            raise InvalidScanError(f"{label}: the MetaImage {key} is {fields[key]!r}; every axis needs a non-zero "
                                   "spacing in mm, or the file does not say how far apart the voxels are." + fix)
    elif name.endswith(".nrrd"):
        with open(path, "rb") as fh:
            if not fh.read(4) == b"NRRD":
                return
        fields = _text_header(path, b"", b":")
        kinds = fields.get("kinds", "").split()
        spatial = [i for i, k in enumerate(kinds) if k.lower() in ("domain", "space")] if kinds else None
        if "space directions" in fields:
            tokens = re.findall(r"none|\([^)]*\)", fields["space directions"])
            for i, tok in enumerate(tokens):
                if tok == "none":
                    continue
                try:
                    length = float(np.linalg.norm([float(v) for v in tok.strip("()").split(",")]))
                except ValueError:
                    length = float("nan")
                if not (math.isfinite(length) and length > 0):
                    raise InvalidScanError(f"{label}: the NRRD 'space directions' vector {tok} of axis {i} has no "
                                           "length; the file does not say how far apart the voxels are." + fix)
        elif "spacings" in fields:
            for i, v in enumerate(fields["spacings"].split()):
                if spatial is not None and i not in spatial:
                    continue
                try:
                    value = float(v)
                except ValueError:
                    value = float("nan")
                if not (math.isfinite(value) and value != 0):
                    raise InvalidScanError(f"{label}: the NRRD 'spacings' of axis {i} is {v!r}; the file does not "
                                           "say how far apart the voxels are." + fix)
        else:
            raise InvalidScanError(f"{label}: the NRRD header has neither 'space directions' nor 'spacings'; the "
                                   "file does not say how far apart the voxels are." + fix)


def _read_file(path: Path, label: str):
    import SimpleITK as sitk

    gz = path.name.lower().endswith(".nii.gz")
    with tempfile.TemporaryDirectory() if gz else contextlib.nullcontext(None) as tmp:
        # a .nii.gz is decompressed once, here, and ITK reads the checked bytes (a temporary .nii)
        nifti, copy = _check_nifti(path, label, Path(tmp) / "scan.nii" if tmp else None)
        want = _nifti_spacing(nifti, label) if nifti is not None else {}
        _check_header_spacing(path, label)
        _check_components(copy or path, label)
        image = None
        if copy is not None:
            try:
                image = sitk.ReadImage(str(copy), sitk.sitkFloat32)
            except RuntimeError:  # read the file itself below: same error and message as without the copy
                image = None
        try:
            if image is None:
                image = sitk.ReadImage(str(path), sitk.sitkFloat32)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()
            hint = next((ln for ln in first if "ERROR" in ln or "rror" in ln), first[-1] if first else "")
            if "spacing" in str(exc).lower():
                raise InvalidScanError(f"{label}: the header's voxel spacing is zero or invalid "
                                       f"({hint.strip()[:200]}); the file does not say how far apart the "
                                       "voxels are. Fix the header before scoring.") from None
            raise InvalidScanError(f"{label}: cannot be read as an image ({hint.strip()[:200]}); "
                                   "is the file complete and in a supported format?") from None
    spacing = list(image.GetSpacing())
    if any(a < len(spacing) and abs(spacing[a] - v) > 0.01 * v for a, v in want.items()):
        # ITK takes pixdim, and 1 mm where it is 0; the sform gave the file's own spacing
        for a, v in want.items():
            if a < len(spacing):
                spacing[a] = v
        image.SetSpacing(spacing)
    return image, {"format": path.name.split(".", 1)[-1].upper()}


def _check_components(path: Path, label: str) -> None:
    """The header must give one component per voxel: ITK reads a vector or RGB image as float by mixing them."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return  # unreadable: reading the image says why
    n = reader.GetNumberOfComponents()
    if n != 1:
        raise InvalidScanError(f"{label}: has {n} components per voxel (a vector, RGB or multi-channel image); a CT "
                               "holds one grey level (HU) per voxel, and reading it would mix the components into "
                               "one. Export the CT volume itself (one component) before scoring.")


def _drop_unit_axes(image, label: str):
    import SimpleITK as sitk

    size = image.GetSize()
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InvalidScanError(f"{label}: has {image.GetNumberOfComponentsPerPixel()} components per voxel; "
                               "expected a grey-level CT.")
    real = [n for n in size if n > 1]
    if len(size) > 3 and len(real) <= 3:  # drop size-1 axes (a 4D file holding one volume)
        image = sitk.Extract(image, [n if n > 1 else 0 for n in size], [0] * len(size))
        size = image.GetSize()
        real = [n for n in size if n > 1]
    if len(size) != 3 or len(real) < 3:
        shape = "x".join(str(n) for n in size)
        kind = "2D" if len(real) <= 2 else f"{len(real)}D"
        raise InvalidScanError(f"{label}: is {kind} (size {shape}); expected one 3D CT volume"
                               + (" (a 4D file holds several volumes: export one)" if len(real) > 3 else "") + ".")
    return image


def _check_geometry(image, label: str) -> None:
    sp = image.GetSpacing()
    if not all(math.isfinite(s) and s > 0 for s in sp):
        raise InvalidScanError(f"{label}: voxel spacing {tuple(sp)} is not three positive numbers.")
    d = np.array(image.GetDirection()).reshape(3, 3)
    if abs(abs(np.linalg.det(d)) - 1) > 1e-3:
        raise InvalidScanError(f"{label}: direction matrix is not orthonormal.")
    # A signed permutation (any of the 48 axis orders and flips) is accepted: after reorientation to LPS the
    # slices run along patient z. The decision is by geometry alone (see docs/cli.md).
    if np.abs(d - np.round(d)).max() > 0.01:
        raise InvalidScanError(f"{label}: the grid is oblique or tilted (direction "
                               f"{np.round(d, 3).ravel().tolist()} is not a signed permutation within 0.01); "
                               "resample to an axis-aligned grid first.")


def _check_extent(image, label: str) -> None:
    """The physical bounds of a CT of a patient (see docs/cli.md); ``image`` has an axis-aligned grid."""
    sp, size = image.GetSpacing(), image.GetSize()
    d = np.abs(np.array(image.GetDirection()).reshape(3, 3))
    along = [int(np.argmax(d[:, p])) for p in range(3)]  # patient axis (0 x, 1 y, 2 z) of each file axis
    z = along.index(2)
    inplane = [p for p in range(3) if p != z]
    fix = " The header's voxel spacing cannot be right (not in mm?); fix it before scoring."
    lo, hi = SLICE_INCREMENT_RANGE_MM
    inc = float(sp[z])
    if not lo <= inc <= hi:
        why = ("finer than any CT reconstructs (the thinnest detector rows are 0.2-0.25 mm)" if inc < lo else
               "wider than any CT reconstruction (interspaced HRCT, the widest, uses 10-20 mm)")
        raise InvalidScanError(f"{label}: slice increment is {inc:g} mm (the spacing along patient z), outside "
                               f"{lo:g}-{hi:g} mm: {why}." + fix)
    lo, hi = PIXEL_RANGE_MM
    for p in inplane:
        if not lo <= sp[p] <= hi:
            why = ("finer than any CT reconstructs (1024 pixels over the smallest, 50 mm, field)" if sp[p] < lo else
                   "coarser than any CT reconstructs (256 pixels over a PET/CT's 700 mm field give 2.7 mm)")
            raise InvalidScanError(f"{label}: pixel size is {sp[p]:g} mm (file axis {p}), outside {lo:g}-{hi:g} mm: "
                                   f"{why}." + fix)
    length = size[z] * inc
    if length > MAX_LENGTH_MM:
        raise InvalidScanError(f"{label}: the scan is {length:g} mm long ({size[z]} slices x {inc:g} mm), more than "
                               f"{MAX_LENGTH_MM:g} mm, the longest table travel of any CT." + fix)
    for p in inplane:
        if size[p] * sp[p] > MAX_FOV_MM:
            raise InvalidScanError(f"{label}: the field of view is {size[p] * sp[p]:g} mm wide ({size[p]} pixels x "
                                   f"{sp[p]:g} mm), more than {MAX_FOV_MM:g} mm: no CT bore is that wide." + fix)


def hu_levels(hu: np.ndarray) -> tuple[float, float]:
    """(minimum, 1st percentile) of ``hu``; the percentile on every 4th row and column (air, where there is air)."""
    return float(np.min(hu)), float(np.percentile(hu[:, ::4, ::4], 1))


def unrescaled_hu(hu: np.ndarray, levels: Optional[tuple[float, float]] = None) -> Optional[str]:
    """Why the values of ``hu`` look un-rescaled, or None when they look like HU.

    A CT in HU has air (about -1000) or lung (-900 to -500): its 1st
    percentile is below :data:`UNRESCALED_AIR_HU`. Stored values without the
    RescaleIntercept (e.g. uint16 HU + 1024: air near 0, water near 1024,
    nothing below 0) are not. The reader warns with this message and
    :func:`cacnet.triage.triage` refuses with it. ``levels``: :func:`hu_levels`
    of ``hu`` when already measured.
    """
    minimum, air = hu_levels(hu) if levels is None else levels
    if air <= UNRESCALED_AIR_HU:
        return None
    return (f"HU look un-rescaled: minimum {round(minimum):d}, air at ~{round(air):d} (1st percentile), nothing below "
            f"{UNRESCALED_AIR_HU:g} HU where a CT in HU has air at about -1000 and lung at -900 to -500 (rescale "
            "intercept missing?). Apply the RescaleIntercept (-1024 for most scanners) and RescaleSlope, and score "
            "again.")


def acquisition_flags(spacing, meta: dict) -> dict[str, bool]:
    """What the reader warns about in the acquisition (the triage reports the same as verdicts).

    ``kvp``: known and not 120 kVp; ``thickness``: the nominal slice
    thickness is known and outside 2.5-3 mm; ``increment``: the slice
    increment ``spacing[0]`` is outside 2.5-3 mm and not already the
    thickness warned about.
    """
    kvp, thick, inc = meta.get("kvp"), meta.get("slice_thickness_mm"), spacing[0]
    return {"kvp": kvp is not None and abs(kvp - 120) > 0.5,
            "thickness": thick is not None and not 2.5 - 1e-3 <= thick <= 3.0 + 1e-3,
            "increment": not 2.5 - 1e-3 <= inc <= 3.0 + 1e-3 and (thick is None or abs(inc - thick) > 1e-3)}


def _warnings(hu: np.ndarray, spacing, meta: dict) -> list[str]:
    out = []
    flags = acquisition_flags(spacing, meta)
    if flags["kvp"]:
        out.append(f"tube voltage is {meta['kvp']:g} kVp, not 120: the 130 HU threshold and density weights are "
                   "defined at 120 kVp (see agatston.threshold_for_kvp).")
    if flags["thickness"]:
        out.append(f"slice thickness is {meta['slice_thickness_mm']:g} mm; Agatston scoring is defined for "
                   "2.5-3 mm slices.")
    if flags["increment"]:
        out.append(f"slice increment is {spacing[0]:g} mm (outside 2.5-3 mm); scores use dz/3 and may not compare "
                   "with standard reconstructions.")
    unrescaled = unrescaled_hu(hu)
    if unrescaled:
        out.append(unrescaled)
    # contrast enhancement, the heart and the kernel are judged from the image by cacnet.triage
    return out


def read_scan(path: Path | str, series: Optional[str] = None) -> Scan:
    """Read a CT scan and bring it to canonical orientation.

    Parameters
    ----------
    path : path
        ``.nii``, ``.nii.gz``, ``.nrrd``, ``.mha``/``.mhd``, a folder of DICOM
        files (plain or gzipped, ``*.dcm.gz``), or a ``.zip`` of one.
    series : str, optional
        SeriesInstanceUID to read when a DICOM folder holds several series.

    Raises
    ------
    InvalidScanError
        With a message that names the file, what is wrong and what to do.
    """
    import SimpleITK as sitk

    path = Path(path)
    label = str(path)
    if not path.exists():
        raise InvalidScanError(f"{label}: no such file or folder.")
    dicom_slices: list[dict[str, Any]] = []
    if path.is_dir():
        image, meta, dicom_slices = _read_folder(path, series, label)
    elif path.name.lower().endswith(".zip"):
        if not zipfile.is_zipfile(path):
            raise InvalidScanError(f"{label}: not a valid zip archive.")
        with tempfile.TemporaryDirectory() as tmp:
            with zipfile.ZipFile(path) as zf:
                zf.extractall(tmp)
            image, meta, dicom_slices = _read_folder(Path(tmp), series, label)
    elif path.name.lower().endswith(IMAGE_SUFFIXES):
        image, meta = _read_file(path, label)
    elif path.name.lower().endswith(".gz"):
        _read_gzipped_file(path, label)  # raises: one gzipped DICOM slice is not a scan
    else:
        # a single DICOM file or anything else SimpleITK can read
        image, meta = _read_file(path, label)
    image = _drop_unit_axes(image, label)
    _check_geometry(image, label)
    _check_extent(image, label)
    if image.GetPixelID() != sitk.sitkFloat32:
        image = sitk.Cast(image, sitk.sitkFloat32)
    canonical = sitk.DICOMOrient(image, "LPS")
    # Memory: ``hu`` is a read-only view of the canonical image's pixels, and
    # the source pixels are dropped (only their grid is kept, as uint8), so a
    # scan costs one float32 volume plus a byte per voxel.
    source = sitk.Image(image.GetSize(), sitk.sitkUInt8)
    source.CopyInformation(image)
    del image
    hu = _pixels_view(canonical)
    if not np.isfinite(hu).all():
        raise InvalidScanError(f"{label}: contains NaN or infinite voxel values.")
    sx, sy, sz = canonical.GetSpacing()
    spacing = (float(sz), float(sy), float(sx))
    meta.setdefault("slice_increment_mm", round(spacing[0], 4))
    meta.update({"size_xyz": list(source.GetSize()), "spacing_zyx_mm": list(spacing),
                 "orientation": sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(source.GetDirection())})
    # DICOM: file index k is files[k] (sorted along the slice normal); canonical z maps to k, maybe flipped
    slices = []
    if dicom_slices:
        slices = [dicom_slices[int(round(_to_source_index(source, (z, 0.0, 0.0))[2]))] for z in range(hu.shape[0])]
    return Scan(id=scan_id(path), hu=hu, spacing=spacing, image=canonical, source_image=source, meta=meta,
                warnings=_warnings(hu, spacing, meta), slices=slices, source_path=path.resolve())


class _ImagePixels:
    """The pixels of a SimpleITK image as numpy sees them, holding the image: a view of them keeps it alive.

    ``sitk.GetArrayViewFromImage`` gives a view that does not: once the image is freed (a ``Scan`` dropped
    while its ``hu`` is still used) the view reads freed memory.
    """

    def __init__(self, image) -> None:
        import SimpleITK as sitk

        self.image = image
        self.__array_interface__ = sitk.GetArrayViewFromImage(image).__array_interface__


def _pixels_view(image) -> np.ndarray:
    """A read-only (z, y, x) view of ``image``'s pixels that keeps ``image`` alive as long as it is used."""
    return np.asarray(_ImagePixels(image))


def _gzipped_files(folder: Path) -> list[Path]:
    """``*.gz`` files (not ``.nii.gz``, not hidden) in ``folder``, recursively."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name.lower().endswith(".gz")
                  and not p.name.lower().endswith(".nii.gz") and not p.name.startswith("."))


def _gunzip(src: Path, dst: Path, label: str) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        with gzip.open(src, "rb") as fin, open(dst, "wb") as fout:
            shutil.copyfileobj(fin, fout, 1 << 20)
    except (OSError, EOFError, zlib.error) as exc:
        where = "" if str(src) == label else f" ({src.name})"
        raise InvalidScanError(f"{label}: the compressed file{where} is truncated or corrupt ({exc}); "
                               "copy or export it again.") from None


def _read_folder(folder: Path, series: Optional[str], label: str):
    """A folder of DICOM files, plain or gzipped (``*.dcm.gz``: decompressed into a temporary folder)."""
    gz = _gzipped_files(folder)
    if not gz:
        return _read_dicom(folder, series, label)
    plain = list_series(folder)
    if plain:
        n = sum(len(s.files) for s in plain)
        raise InvalidScanError(
            f"{label}: holds both gzipped files ({len(gz)} *.gz) and {n} uncompressed DICOM file(s); a scan is "
            "read from one or the other. Keep one copy of the series (gunzip the .gz files, or remove them) and "
            "score again.")
    with tempfile.TemporaryDirectory() as tmp:
        for p in gz:
            rel = p.relative_to(folder)
            _gunzip(p, Path(tmp) / rel.parent / rel.name[: -len(".gz")], label)
        return _read_dicom(Path(tmp), series, label)


def _read_gzipped_file(path: Path, label: str) -> NoReturn:
    """A single ``.gz`` file that is not NIfTI: always an error, saying what the file is."""
    import SimpleITK as sitk

    with tempfile.TemporaryDirectory() as tmp:
        inner = Path(tmp) / path.name[: -len(".gz")]
        _gunzip(path, inner, label)
        with open(inner, "rb") as fh:
            is_dicom = fh.read(132)[128:] == b"DICM"
        r = sitk.ImageFileReader()
        r.SetFileName(str(inner))
        try:
            r.ReadImageInformation()
            is_dicom = is_dicom or r.HasMetaDataKey("0008|0016")
            frames = int(float(r.GetMetaData("0028|0008"))) if r.HasMetaDataKey("0028|0008") else 1
        except (RuntimeError, ValueError):
            frames = 1
    if is_dicom and frames > 1:
        raise InvalidScanError(f"{label}: multi-frame DICOM ({frames} frames per file) is not supported; "
                               "convert it to NIfTI first (e.g. dcm2niix).")
    if is_dicom:
        raise InvalidScanError(f"{label}: is one gzipped DICOM file, i.e. one slice, not a 3D scan; give the "
                               "folder that holds all the slices of the series (a folder of .dcm.gz files is "
                               "read as one scan).")
    raise InvalidScanError(f"{label}: is gzipped but neither a NIfTI (.nii.gz) nor a DICOM file; decompress it "
                           "(gunzip) and score the file inside.")


def _to_source_index(source, zyx) -> tuple[float, float, float]:
    """Canonical (z, y, x) -> (i, j, k) on the grid of ``source`` (see :func:`canonical_to_source_index`)."""
    d = np.array(source.GetDirection()).reshape(3, 3)
    size = source.GetSize()
    c_xyz = (float(zyx[2]), float(zyx[1]), float(zyx[0]))
    out = []
    for p in range(3):  # file index axis p runs along patient axis a (LPS), forwards or backwards
        a = int(np.argmax(np.abs(d[:, p])))
        out.append(c_xyz[a] if d[a, p] > 0 else (size[p] - 1) - c_xyz[a])
    return out[0], out[1], out[2]


def canonical_to_source_index(scan: Scan, zyx) -> tuple[float, float, float]:
    """A position on the canonical grid as a voxel index of the input file.

    Parameters
    ----------
    scan : Scan
        The scan the position refers to.
    zyx : sequence of 3 floats
        (z, y, x) index into ``scan.hu`` (fractional for a centroid).

    Returns
    -------
    tuple of float
        (i, j, k): the same voxel as ITK and NIfTI index the input file,
        i fastest (the file's own first axis, whatever patient axis it runs
        along). This is the mapping :func:`to_source_grid` applies: a voxel
        at ``zyx`` of a canonical array lands at index (i, j, k) of the
        returned image, i.e. at ``[k, j, i]`` of its numpy array.
    """
    return _to_source_index(scan.source_image, zyx)


def lesion_position(scan: Scan, z: int, y: float, x: float) -> dict[str, Any]:
    """Where a canonical-grid position lies in the input file and in the patient.

    Parameters
    ----------
    scan : Scan
        The scan read.
    z, y, x : float
        Index into ``scan.hu`` (canonical LPS grid); ``z`` is a slice index.

    Returns
    -------
    dict
        ``voxel_ijk``: (i, j, k) index of the input file as ITK/NIfTI index it
        (i fastest), rounded to 2 decimals; ``patient_lps_mm``: the physical
        point (x, y, z) in mm, LPS; for DICOM input also ``sop_instance_uid``
        and ``instance_number`` of the slice file at ``z``.
    """
    ijk = canonical_to_source_index(scan, (z, y, x))
    point = scan.image.TransformContinuousIndexToPhysicalPoint((float(x), float(y), float(z)))
    out: dict[str, Any] = {"voxel_ijk": [round(float(v), 2) + 0.0 for v in ijk],
                           "patient_lps_mm": [round(float(v), 2) + 0.0 for v in point]}
    if scan.slices:
        out.update(scan.slices[int(z)])
    return out


def to_source_grid(array_zyx: np.ndarray, scan: Scan):
    """A canonical (z, y, x) array as a SimpleITK image on the scan's own grid.

    Same size, spacing, origin and direction as the input file, voxel for voxel.
    """
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(np.ascontiguousarray(array_zyx))
    img.CopyInformation(scan.image)
    orientation = sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(scan.source_image.GetDirection())
    out = sitk.DICOMOrient(img, orientation)
    out.SetOrigin(scan.source_image.GetOrigin())
    out.SetDirection(scan.source_image.GetDirection())
    out.SetSpacing(scan.source_image.GetSpacing())
    return out
