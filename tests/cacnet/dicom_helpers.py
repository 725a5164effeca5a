"""Writing small synthetic DICOM series for the reader tests (SimpleITK/GDCM)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import SimpleITK as sitk

STUDY_UID = "1.2.826.0.1.3680043.8.498.1"


def write_series(
    folder: Path,
    hu: np.ndarray,
    spacing=(3.0, 0.5, 0.5),
    origin=(0.0, -50.0, -50.0),
    *,
    series_uid: str = "1.2.826.0.1.3680043.8.498.2",
    modality: str = "CT",
    kvp: float = 120,
    thickness: Optional[float] = None,
    description: str = "Calcium score 3.0",
    image_type: str = "ORIGINAL\\PRIMARY\\AXIAL",
    intercept: "float | list[float]" = -1024.0,
    slope: float = 1.0,
    tilt: float = 0.0,
    compressor: Optional[str] = None,
    drop: tuple[int, ...] = (),
    lateral_shift: float = 0.0,
    duplicate_positions: bool = False,
) -> list[Path]:
    """Write ``hu`` (z, y, x) as one file per slice.

    GDCM stores ``(hu - intercept) / slope`` and writes the rescale tags, so
    a reader that applies them gets ``hu`` back (exactly for slope 1).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    dz, dy, dx = spacing
    paths = []
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    if compressor:
        writer.SetUseCompression(True)
        writer.SetCompressor(compressor)
    for k in range(hu.shape[0]):
        if k in drop:
            continue
        icpt = intercept[k] if isinstance(intercept, (list, tuple)) else intercept
        img = sitk.GetImageFromArray(np.rint(hu[k]).astype(np.int16)[None])
        img.SetSpacing((dx, dy, dz))
        z = origin[0] + (k // 2 if duplicate_positions else k) * dz
        pos = (origin[2] + k * lateral_shift, origin[1], z)
        tags = {
            "0008|0060": modality, "0008|0008": image_type, "0020|000d": STUDY_UID, "0020|000e": series_uid,
            "0008|103e": description, "0020|0013": str(k + 1), "0020|0032": "\\".join(f"{v:.4f}" for v in pos),
            "0020|0037": "1\\0\\0\\0\\1\\0", "0018|0050": f"{thickness or dz:g}", "0018|0060": f"{kvp:g}",
            "0028|1052": f"{icpt:g}", "0028|1053": f"{slope:g}", "0028|0030": f"{dy:g}\\{dx:g}",
            "0008|0018": f"{series_uid}.{k + 1}", "0008|0016": "1.2.840.10008.5.1.4.1.1.2",
        }
        if tilt:
            tags["0018|1120"] = f"{tilt:g}"
        for key, value in tags.items():
            img.SetMetaData(key, value)
        path = folder / f"slice_{k:03d}.dcm"
        writer.SetFileName(str(path))
        writer.Execute(img)
        paths.append(path)
    return paths
