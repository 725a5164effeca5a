"""Writing phantom cases to disk: NIfTI scans and labels, CSV rows (private)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .._files import write_image_atomic
from ..datasets.layout import PHANTOM_POINTS_COLUMNS as POINT_COLUMNS
from ..datasets.layout import PHANTOM_TRUTH_COLUMNS as TRUTH_COLUMNS
from ._base import ORIENTATIONS
from ._generate import PhantomCase

__all__ = ["oriented_image", "write_case", "TRUTH_COLUMNS", "POINT_COLUMNS", "truth_row"]

_AXIS_XYZ = {0: np.array([0.0, 0.0, 1.0]), 1: np.array([0.0, 1.0, 0.0]), 2: np.array([1.0, 0.0, 0.0])}


def oriented_image(array: np.ndarray, case: PhantomCase, orientation: str):
    """A SimpleITK image of a canonical (z, y, x) array, stored in ``orientation``.

    The physical position of every voxel is unchanged; only the order in
    which the file stores the voxels (and so its direction matrix) differs.
    """
    import SimpleITK as sitk

    perm, flips = ORIENTATIONS[orientation]
    arr = np.transpose(array, perm)
    for a in flips:
        arr = np.flip(arr, axis=a)
    spacing_w = [case.spacing[p] for p in perm]
    origin = np.array([case.origin[2], case.origin[1], case.origin[0]])
    direction = np.zeros((3, 3))
    for a in range(3):
        vec = _AXIS_XYZ[perm[a]].copy()
        if a in flips:
            origin = origin + (arr.shape[a] - 1) * spacing_w[a] * vec
            vec = -vec
        direction[:, 2 - a] = vec  # ITK index axis d is array axis 2 - d
    image = sitk.GetImageFromArray(np.ascontiguousarray(arr))
    image.SetSpacing([float(spacing_w[2]), float(spacing_w[1]), float(spacing_w[0])])
    image.SetOrigin([float(v) for v in origin])
    image.SetDirection([float(v) for v in direction.ravel()])
    return image


def truth_row(case: PhantomCase) -> dict[str, Any]:
    """The truth.csv row of a case."""
    import agatston

    arteries = {name: 0.0 for name in ("LM", "LAD", "LCX", "RCA")}
    for lab, sc in case.truth.by_label.items():
        arteries[agatston.ARTERY_NAMES[lab]] = round(sc.agatston, 6)
    acq = case.acquisition
    m = case.meta
    return {
        "id": case.case_id,
        "agatston": round(case.truth.agatston, 6),
        "category": case.truth.category,
        "volume_mm3": round(case.truth.volume_mm3, 6),
        **arteries,
        "n_lesions": case.truth.n_lesions,
        "cac_drs": str(agatston.cac_drs(arteries)),  # the full label, as in cac score's JSON and CSV
        "target_category": m["target_category"],
        "pixel_mm": acq.pixel_mm,
        "thickness_mm": acq.thickness_mm,
        "increment_mm": acq.increment_mm,
        "n_slices": acq.n_slices,
        "kernel": acq.kernel,
        "noise_sd": round(acq.noise_sd, 2),
        "orientation": acq.orientation,
        "lookalikes": ";".join(m["lookalikes"]),
        "faint_lesion": int(m["faint_lesion"]),
        "mitral_annulus": int(m["mitral_annulus"]),
        "noisy": int(m["noisy"]),
        "merged_with_lookalike": m["merged_with_lookalike"],
        "seed": case.seed,
        "variant": m.get("variant", "default"),
    }


def write_case(case: PhantomCase, outdir: Path, preview: bool = False) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Write ``scans/<id>.nii.gz`` (int16 HU) and ``labels/<id>.nii.gz`` (uint8).

    Returns the truth.csv row and the points.csv rows, with voxel indices
    (k, j, i) of the written file (``array[k, j, i]`` of
    ``SimpleITK.GetArrayFromImage``) and LPS millimetres.
    """
    outdir = Path(outdir)
    orientation = case.acquisition.orientation
    scan = oriented_image(case.hu, case, orientation)
    write_image_atomic(scan, outdir / "scans" / f"{case.case_id}.nii.gz")
    write_image_atomic(oriented_image(case.labels, case, orientation), outdir / "labels" / f"{case.case_id}.nii.gz")
    points = []
    for p in case.points:
        z, y, x = p["mm_zyx"]
        i, j, k = scan.TransformPhysicalPointToIndex((x, y, z))
        points.append({
            "id": case.case_id, "lesion": p["lesion"], "artery": p["artery"], "label": p["label"],
            "x_mm": round(x, 4), "y_mm": round(y, 4), "z_mm": round(z, 4), "k": k, "j": j, "i": i,
        })
    if preview:
        from ..outputs.preview import write_preview

        write_preview(case.hu, case.labels, outdir / "previews" / f"{case.case_id}.png")
    return truth_row(case), points
