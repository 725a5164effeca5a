"""Converting orCaScore into the layout `cac train --data` reads (`cac dataset orcascore`).

:func:`convert_orcascore` pairs each MetaImage image under SRC with its reference label image, maps
the labels 1 -> 2 (LAD, left main merged in), 2 -> 3 (LCX), 3 -> 4 (RCA) intersected with >= 130 HU,
and reports each reference lesion in report.csv.

See docs/datasets.md (orCaScore, and "The conversion rules in detail") for the accepted names and
rules. The output folder: :mod:`cacnet.datasets._output`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from ..errors import InvalidScanError
from ._output import (THRESHOLD_HU, Case, DatasetLayoutError, Store, case_row, int16_hu, listing, run_cases,
                      safe_id, truth_csv_row, write_case_files)
from .layout import LABEL_NAMES

__all__ = ["convert_orcascore"]

_ORCASCORE_MAP = {1: 2, 2: 3, 3: 4}
_ORCASCORE_NOTE = "LM merged into LAD (orCaScore labels left main calcium as LAD): LM is absent, not zero"


def _is_ref_name(stem: str) -> bool:
    s = stem.lower()
    return "label" in s or "reference" in s or "ref" in s


def _is_ref_folder(name: str) -> bool:
    s = name.lower()
    return s.startswith("reference") or s.startswith("label")


def _orcascore_references(image: Path) -> list[Path]:
    stem = image.name[: -len(".mhd")]
    found: list[Path] = []
    wanted = {f"{stem}_label.mhd".lower(), f"{stem}-label.mhd".lower()}
    found += [p for p in sorted(image.parent.iterdir()) if p.is_file() and p.name.lower() in wanted]
    for folder in (image.parent, image.parent.parent):
        for d in sorted(folder.iterdir()):
            if d.is_dir() and _is_ref_folder(d.name):
                found += sorted(p for p in d.rglob(f"{stem}.mhd") if p.is_file())
    out: list[Path] = []
    for p in found:
        if all(p.resolve() != q.resolve() for q in out):
            out.append(p)
    return out


def _find_orcascore(src: Path) -> tuple[list[tuple[Path, list[Path]]], list[Path]]:
    """(image, references) pairs and the images without a reference."""
    if not src.is_dir():
        raise DatasetLayoutError(f"{src}: no such folder; expected orCaScore MetaImage files (<stem>.mhd + .raw) "
                                 "with reference label images.")
    images = []
    for p in sorted(src.rglob("*"), key=lambda q: str(q).lower()):
        if not (p.is_file() and p.name.lower().endswith(".mhd")):
            continue
        rel = p.relative_to(src).parts
        if _is_ref_name(p.name[: -len(".mhd")]) or any(_is_ref_folder(part) for part in rel[:-1]):
            continue
        images.append(p)
    pairs, without = [], []
    for p in images:
        refs = _orcascore_references(p)
        (pairs.append((p, refs)) if refs else without.append(p))
    if not pairs:
        all_mhd = sorted(str(p.relative_to(src)) for p in src.rglob("*") if p.name.lower().endswith(".mhd"))
        shown = ", ".join(all_mhd[:12]) + (f", ... ({len(all_mhd) - 12} more)" if len(all_mhd) > 12 else "")
        raise DatasetLayoutError(
            f"{src}: no orCaScore image with a reference found. Expected MetaImage CT images <stem>.mhd (a name "
            "without 'label', 'reference' or 'ref') each with a reference label image: <stem>_label.mhd or "
            "<stem>-label.mhd next to it, or <stem>.mhd in a folder named reference*/label* beside the image or "
            f"beside its folder. Found {len(all_mhd)} .mhd file(s)" + (f": {shown}" if all_mhd else "")
            + f"; top level: {listing(src)}.")
    return pairs, without


def _orcascore_lesion_rows(case_id: str, ref: np.ndarray, hu16: np.ndarray, spacing: Sequence[float]
                           ) -> list[dict[str, Any]]:
    from scipy import ndimage

    six = ndimage.generate_binary_structure(3, 1)
    hi = hu16 >= THRESHOLD_HU
    hi_cc, n_hi = ndimage.label(hi, structure=six)
    hi_size = np.bincount(hi_cc.ravel(), minlength=n_hi + 1)
    px_cm2 = spacing[1] * spacing[2] / 100.0
    rows: list[dict[str, Any]] = []
    n = 0
    for value in (1, 2, 3):
        sel = ref == value
        if not sel.any():
            continue
        cc, m = ndimage.label(sel, structure=six)
        same_in_hi = np.bincount(hi_cc[sel & hi], minlength=n_hi + 1)
        for i, box in enumerate(ndimage.find_objects(cc), start=1):
            vox = cc[box] == i
            h = hu16[box]
            kept = vox & (h >= THRESHOLD_HU)
            nv, nkept = int(vox.sum()), int(kept.sum())
            notes = []
            if nkept < nv:
                notes.append(f"{nv - nkept} of {nv} labelled voxel(s) below {THRESHOLD_HU} HU (left out)")
            ids = np.unique(hi_cc[box][kept])
            ids = ids[ids > 0]
            extra = int((hi_size[ids] - same_in_hi[ids]).sum()) if ids.size else 0
            if extra:
                notes.append(f"its 6-connected >= {THRESHOLD_HU} HU region holds {extra} more voxel(s) not labelled "
                             f"{LABEL_NAMES[_ORCASCORE_MAP[value]]}")
            z0, z1 = box[0].start, box[0].stop - 1
            n += 1
            rows.append({
                "id": case_id, "roi": str(n), "slice": f"{z0}" if z0 == z1 else f"{z0}-{z1}",
                "slice_from": "reference", "vessel": LABEL_NAMES[_ORCASCORE_MAP[value]], "label": _ORCASCORE_MAP[value],
                "n_voxels": nkept, "area_cm2": round(nkept * px_cm2, 6), "max_hu": int(h[vox].max()),
                "status": "mismatch" if notes else "ok", "message": "; ".join(notes)})
    return rows


def _convert_orcascore_case(store: Store, case_id: str, image: Path, refs: list[Path]):
    import SimpleITK as sitk

    from ..io import read_scan

    if len(refs) > 1:
        raise InvalidScanError(f"{image}: {len(refs)} reference files match ({', '.join(map(str, refs))}); keep "
                               "exactly one.")
    ref_path = refs[0]
    scan = read_scan(image)
    try:
        ref_img = sitk.ReadImage(str(ref_path))
    except RuntimeError as exc:
        raise InvalidScanError(f"{ref_path}: the reference cannot be read ({str(exc).strip().splitlines()[-1][:200]}"
                               "); is the .raw file next to the .mhd?") from None
    src = scan.source_image
    if ref_img.GetDimension() != 3 or ref_img.GetNumberOfComponentsPerPixel() != 1:
        raise InvalidScanError(f"{ref_path}: the reference is not a 3D label image.")
    same = (ref_img.GetSize() == src.GetSize()
            and np.allclose(ref_img.GetSpacing(), src.GetSpacing(), rtol=1e-3)
            and np.allclose(ref_img.GetOrigin(), src.GetOrigin(), atol=1e-2 * min(src.GetSpacing()))
            and np.allclose(ref_img.GetDirection(), src.GetDirection(), atol=1e-3))
    if not same:
        raise InvalidScanError(
            f"{ref_path}: the reference grid (size {ref_img.GetSize()}, spacing "
            f"{tuple(round(s, 4) for s in ref_img.GetSpacing())}, origin "
            f"{tuple(round(s, 3) for s in ref_img.GetOrigin())}) differs from the image {image.name} (size "
            f"{src.GetSize()}, spacing {tuple(round(s, 4) for s in src.GetSpacing())}, origin "
            f"{tuple(round(s, 3) for s in src.GetOrigin())}); the reference must be on the image's grid.")
    ref_img.CopyInformation(src)
    ref = sitk.GetArrayFromImage(sitk.DICOMOrient(ref_img, "LPS"))
    values = np.unique(ref)
    bad = [v for v in values.tolist() if v not in (0, 1, 2, 3)]
    if bad:
        raise InvalidScanError(f"{ref_path}: holds values {bad[:8]}; an orCaScore reference has 0 background, "
                               "1 LAD (left main included), 2 LCX, 3 RCA.")
    ref = ref.astype(np.uint8)
    hu16 = int16_hu(np.asarray(scan.hu))
    lut = np.array([0, 2, 3, 4], np.uint8)
    labels = np.where(hu16 >= THRESHOLD_HU, lut[ref], 0).astype(np.uint8)
    report = _orcascore_lesion_rows(case_id, ref, hu16, scan.spacing)
    write_case_files(store, case_id, scan, hu16, labels)
    truth = truth_csv_row(case_id, hu16, scan.spacing, labels, _ORCASCORE_NOTE)
    n_mis = sum(r["status"] == "mismatch" for r in report)
    counts = ", ".join(f"{v} {sum(r['vessel'] == v for r in report)}" for v in ("LAD", "LCX", "RCA"))
    message = f"{len(report)} reference lesion(s) ({counts}), {n_mis} mismatch; reference {ref_path.name}"
    report.insert(0, case_row(case_id, "ok", "converted; " + message + "; " + _ORCASCORE_NOTE))
    return truth, report, {"lm_merged_into_lad": True}, message


def convert_orcascore(src: Path | str, out: Path | str, *,
                      on_start: Optional[Callable[[int], None]] = None,
                      on_case: Optional[Callable[[dict[str, Any]], None]] = None) -> list[dict[str, Any]]:
    """Convert orCaScore (MetaImage images with reference labels) into the `cac train --data` layout.

    Parameters
    ----------
    src : path
        Folder searched recursively for ``*.mhd`` images and their reference
        label images (see docs/datasets.md for the accepted names).
    out : path
        Output folder (created; rerunning skips the cases already converted).
    on_start, on_case : callable, optional
        As for :func:`convert_coca`.

    Returns
    -------
    list of dict
        One per image: ``id``, ``source``, ``status`` (converted, skipped,
        error, or ignored for an image without a reference), ``message``, and
        for converted or skipped cases ``agatston``, ``category`` and the
        counts of report rows ``n_ok``, ``n_mismatch``, ``n_error``.

    Raises
    ------
    DatasetLayoutError
        No image with a reference under SRC (exit 3 in the CLI); the message
        lists the accepted names and what was found.
    """
    src = Path(src)
    pairs, without = _find_orcascore(src)
    store = Store(Path(out))
    ignored = [{"id": safe_id(p.name[: -len(".mhd")]), "source": str(p), "status": "ignored",
                "message": "no reference label image found (a CTA or test-set image?)"} for p in without]
    cases = []
    seen: dict[str, Path] = {}
    for image, refs in pairs:
        case_id = safe_id(image.name[: -len(".mhd")])
        if case_id in seen:
            msg = f"{image}: the id {case_id} is taken by {seen[case_id]}; rename one of the two"
            ignored.append({"id": case_id, "source": str(image), "status": "error", "message": msg})
            store.set_case(str(image), None, [case_row(case_id, "error", msg)])
            continue
        seen[case_id] = image
        cases.append(Case(case_id, str(image), default_note=_ORCASCORE_NOTE, meta={"lm_merged_into_lad": True},
                           convert=lambda case_id=case_id, image=image, refs=refs: _convert_orcascore_case(
                               store, case_id, image, refs)))
    return run_cases(cases, store, ignored, on_start, on_case)
