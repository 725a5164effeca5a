"""Reading CT scans (NIfTI, NRRD, MetaImage, DICOM folders and zips) with SimpleITK.

Every scan is brought to one canonical orientation for the model: LPS with
identity direction (``SimpleITK.DICOMOrient(image, "LPS")``), as a float32
(z, y, x) array in HU. The source geometry is kept so that outputs are
written back on the input grid exactly (:func:`to_source_grid`).
"""

from __future__ import annotations

import math
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from .errors import InvalidScanError, SeriesSelectionError

__all__ = ["Scan", "SeriesInfo", "read_scan", "list_series", "to_source_grid", "scan_id", "IMAGE_SUFFIXES",
           "is_scan_path"]

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".zip")

# DICOM tags read for each file of a series
_TAGS = {
    "modality": "0008|0060", "image_type": "0008|0008", "series_uid": "0020|000e", "description": "0008|103e",
    "position": "0020|0032", "orientation": "0020|0037", "kvp": "0018|0060", "thickness": "0018|0050",
    "tilt": "0018|1120", "manufacturer": "0008|0070", "number_of_frames": "0028|0008",
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
        kVp, slice thickness and increment, modality, series, manufacturer.
    warnings : list of str
        Things a reader of the result must know (non-120 kVp, slice
        thickness outside 2.5-3 mm, contrast or missing rescale suspected).
    """

    id: str
    hu: np.ndarray
    spacing: tuple[float, float, float]
    image: Any
    source_image: Any
    meta: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def scan_id(path: Path) -> str:
    """``case.nii.gz`` -> ``case``; a folder -> its name."""
    path = Path(path)
    name = path.name
    for suffix in IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def is_scan_path(path: Path) -> bool:
    """Whether ``path`` is a file with a supported image extension."""
    return Path(path).is_file() and Path(path).name.lower().endswith(IMAGE_SUFFIXES)


def _tag(reader, key: str) -> str:
    tag = _TAGS[key]
    return reader.GetMetaData(tag).strip() if reader.HasMetaDataKey(tag) else ""


def list_series(folder: Path) -> list[SeriesInfo]:
    """DICOM series in ``folder`` (recursively), with modality and description."""
    import SimpleITK as sitk

    folder = Path(folder)
    dirs = sorted({p.parent for p in folder.rglob("*") if p.is_file()} | {folder})
    out: dict[str, SeriesInfo] = {}
    for d in dirs:
        for uid in sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(d)) or ():
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
            raise SeriesSelectionError(
                f"{label}: {len(ok)} CT series found; choose one with --series UID:\n  "
                + "\n  ".join(str(s) for s in ok))
        s = ok[0]
    return _read_series(s, label)


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
    frames = _tag(readers[0], "number_of_frames")
    if frames and int(float(frames)) > 1:
        raise InvalidScanError(f"{label}: multi-frame DICOM ({frames} frames per file) is not supported; "
                               "convert it to NIfTI first (e.g. dcm2niix).")
    try:
        orient = np.array(_float_list(_tag(readers[0], "orientation")))
        pos = np.array([_float_list(_tag(r, "position")) for r in readers])
    except ValueError:
        raise InvalidScanError(f"{label}: slices lack ImagePositionPatient/ImageOrientationPatient.") from None
    if orient.size != 6 or pos.shape[1:] != (3,):
        raise InvalidScanError(f"{label}: slices lack ImagePositionPatient/ImageOrientationPatient.")
    normal = np.cross(orient[:3], orient[3:])
    if abs(normal[2]) < 0.9:
        raise InvalidScanError(f"{label}: slices are not axial (normal {np.round(normal, 3).tolist()}); "
                               "calcium scoring needs axial slices.")
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
        raise InvalidScanError(f"{label}: the DICOM pixel data cannot be decoded ({str(exc).splitlines()[-1]}).") from None
    r0 = readers[0]
    meta = {
        "format": "DICOM", "series_uid": s.uid, "series_description": s.description, "modality": s.modality,
        "manufacturer": _tag(r0, "manufacturer"), "kvp": _num(_tag(r0, "kvp")),
        "slice_thickness_mm": _num(_tag(r0, "thickness")), "slice_increment_mm": round(med, 4),
        "n_files": len(files),
    }
    return image, meta


def _num(text: str) -> Optional[float]:
    try:
        return float(text)
    except ValueError:
        return None


def _check_complete(path: Path, label: str) -> None:
    """Checks ITK does not do: it reads some broken files without complaint.

    A gzip stream must end properly; a NIfTI file must hold all the bytes its
    header announces; a floating-point NIfTI must hold no NaN (ITK's reader
    silently turns NaN into 0).
    """
    import gzip
    import struct
    import zlib

    name = path.name.lower()
    if name.endswith(".gz"):
        try:
            with gzip.open(path, "rb") as fh:
                data = fh.read()
        except (OSError, EOFError, zlib.error) as exc:
            raise InvalidScanError(f"{label}: the compressed file is truncated or corrupt ({exc}); "
                                   "copy or export it again.") from None
    elif name.endswith(".nii"):
        data = path.read_bytes()
    else:
        return
    if not (name.endswith(".nii") or name.endswith(".nii.gz")):
        return
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


def _read_file(path: Path, label: str):
    import SimpleITK as sitk

    _check_complete(path, label)
    try:
        image = sitk.ReadImage(str(path), sitk.sitkFloat32)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        hint = next((ln for ln in first if "ERROR" in ln or "rror" in ln), first[-1] if first else "")
        raise InvalidScanError(f"{label}: cannot be read as an image ({hint.strip()[:200]}); "
                               "is the file complete and in a supported format?") from None
    return image, {"format": path.name.split(".", 1)[-1].upper()}


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
    normal = d[:, 2]
    if abs(normal[2]) < 0.9:
        raise InvalidScanError(f"{label}: slices are not axial (slice normal {np.round(normal, 3).tolist()}).")
    if np.abs(d - np.round(d)).max() > 0.01:
        raise InvalidScanError(f"{label}: the grid is oblique or tilted (direction "
                               f"{np.round(d, 3).ravel().tolist()}); resample to an axis-aligned grid first.")


def _warnings(hu: np.ndarray, spacing, meta: dict) -> list[str]:
    out = []
    kvp = meta.get("kvp")
    if kvp is not None and abs(kvp - 120) > 0.5:
        out.append(f"tube voltage is {kvp:g} kVp, not 120: the 130 HU threshold and density weights are defined "
                   "at 120 kVp (see agatston.threshold_for_kvp).")
    thick = meta.get("slice_thickness_mm")
    if thick is not None and not 2.5 - 1e-3 <= thick <= 3.0 + 1e-3:
        out.append(f"slice thickness is {thick:g} mm; Agatston scoring is defined for 2.5-3 mm slices.")
    inc = spacing[0]
    if not 2.5 - 1e-3 <= inc <= 3.0 + 1e-3 and (thick is None or abs(inc - thick) > 1e-3):
        out.append(f"slice increment is {inc:g} mm (outside 2.5-3 mm); scores use dz/3 and may not compare "
                   "with standard reconstructions.")
    sample = hu[:, ::4, ::4]
    if float(np.percentile(sample, 1)) > -200:
        out.append("no air or lung below -200 HU: the values may not be HU (rescale intercept missing?).")
    else:
        body = sample[sample > -500]
        if body.size and float(np.mean((body > 180) & (body < 600))) > 0.08:
            out.append("many voxels at 180-600 HU: the scan looks contrast-enhanced; calcium scores need a "
                       "non-contrast scan.")
    return out


def read_scan(path: Path | str, series: Optional[str] = None) -> Scan:
    """Read a CT scan and bring it to canonical orientation.

    Parameters
    ----------
    path : path
        ``.nii``, ``.nii.gz``, ``.nrrd``, ``.mha``/``.mhd``, a folder of DICOM
        files, or a ``.zip`` of one.
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
    if path.is_dir():
        image, meta = _read_dicom(path, series, label)
    elif path.name.lower().endswith(".zip"):
        if not zipfile.is_zipfile(path):
            raise InvalidScanError(f"{label}: not a valid zip archive.")
        with tempfile.TemporaryDirectory() as tmp:
            with zipfile.ZipFile(path) as zf:
                zf.extractall(tmp)
            image, meta = _read_dicom(Path(tmp), series, label)
    elif path.name.lower().endswith(IMAGE_SUFFIXES):
        image, meta = _read_file(path, label)
    else:
        # a single DICOM file or anything else SimpleITK can read
        image, meta = _read_file(path, label)
    image = _drop_unit_axes(image, label)
    _check_geometry(image, label)
    if image.GetPixelID() != sitk.sitkFloat32:
        image = sitk.Cast(image, sitk.sitkFloat32)
    canonical = sitk.DICOMOrient(image, "LPS")
    # Memory: ``hu`` is a read-only view of the canonical image's pixels, and
    # the source pixels are dropped (only their grid is kept, as uint8), so a
    # scan costs one float32 volume plus a byte per voxel.
    source = sitk.Image(image.GetSize(), sitk.sitkUInt8)
    source.CopyInformation(image)
    del image
    hu = sitk.GetArrayViewFromImage(canonical)
    if not np.isfinite(hu).all():
        raise InvalidScanError(f"{label}: contains NaN or infinite voxel values.")
    sx, sy, sz = canonical.GetSpacing()
    spacing = (float(sz), float(sy), float(sx))
    meta.setdefault("slice_increment_mm", round(spacing[0], 4))
    meta.update({"size_xyz": list(source.GetSize()), "spacing_zyx_mm": list(spacing),
                 "orientation": sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(source.GetDirection())})
    return Scan(id=scan_id(path), hu=hu, spacing=spacing, image=canonical, source_image=source, meta=meta,
                warnings=_warnings(hu, spacing, meta))


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
