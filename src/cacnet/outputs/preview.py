"""Preview PNGs: the quick look of a scored scan (``cac score --preview``) and montages of phantoms.

:func:`write_result_preview` draws what a reader needs at a glance (see
:func:`render_result_preview`); :func:`write_preview` is the plain montage of
axial slices with labels outlined that ``cac phantom --preview`` writes.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

import numpy as np
from scipy import ndimage

from .._files import atomic_path
from ..components import find_components

if TYPE_CHECKING:  # pragma: no cover
    from ..pipeline import ScanResult
    from ..components import ComponentTable

__all__ = ["ARTERY_COLORS", "choose_slices", "render_montage", "write_preview", "render_result_preview",
           "write_result_preview", "preview_caption", "TILE_PX", "UNCOUNTED_RGB"]

#: Outline colours (RGB) by label: LM yellow, LAD red, LCX green, RCA blue.
ARTERY_COLORS = {1: (255, 220, 0), 2: (255, 40, 40), 3: (40, 220, 40), 4: (40, 140, 255)}


def choose_slices(labels: np.ndarray, n: int = 6) -> list[int]:
    """Slices through the most calcium, one per lesion first, then spread evenly."""
    counts = (labels > 0).sum(axis=(1, 2))
    chosen: list[int] = []
    if counts.any():
        lesions, m = ndimage.label(labels > 0, structure=np.ones((3, 3, 3), bool))
        best = []
        for k, sl in enumerate(ndimage.find_objects(lesions), start=1):
            per_slice = (lesions[sl] == k).sum(axis=(1, 2))
            best.append((int(per_slice.sum()), sl[0].start + int(per_slice.argmax())))
        for _, z in sorted(best, reverse=True):
            if z not in chosen:
                chosen.append(z)
            if len(chosen) == n:
                break
    for z in np.linspace(0, labels.shape[0] - 1, n + 2)[1:-1].round().astype(int):
        if len(chosen) >= n:
            break
        if int(z) not in chosen:
            chosen.append(int(z))
    return sorted(chosen)


def render_montage(hu: np.ndarray, labels: np.ndarray, slices: Sequence[int], columns: int = 3,
                   window: tuple[float, float] = (-300.0, 700.0)) -> np.ndarray:
    """RGB uint8 montage of axial slices with label outlines (arrays (z, y, x))."""
    lo, hi = window
    tiles = []
    for z in slices:
        gray = np.clip((hu[z].astype(np.float32) - lo) / (hi - lo) * 255, 0, 255).astype(np.uint8)
        rgb = np.repeat(gray[..., None], 3, axis=2)
        for lab, color in ARTERY_COLORS.items():
            m = labels[z] == lab
            if m.any():
                edge = m & ~ndimage.binary_erosion(m)
                rgb[ndimage.binary_dilation(edge)] = color
        tiles.append(rgb)
    while len(tiles) % columns:
        tiles.append(np.zeros_like(tiles[0]))
    rows = [np.concatenate(tiles[i : i + columns], axis=1) for i in range(0, len(tiles), columns)]
    return np.concatenate(rows, axis=0)


def write_preview(hu: np.ndarray, labels: np.ndarray, path: Path, slices: Optional[Sequence[int]] = None) -> Path:
    """Write a PNG montage through the lesions of ``labels`` (canonical (z, y, x) arrays)."""
    import SimpleITK as sitk

    picked = list(slices) if slices is not None else choose_slices(labels)
    img = sitk.GetImageFromArray(render_montage(hu, labels, picked), isVector=True)
    with atomic_path(Path(path)) as tmp:
        sitk.WriteImage(img, str(tmp))
    return Path(path)


# --- the quick look of a scored scan (cac score --preview) -------------------------------------------------------

#: Side of a tile of :func:`render_result_preview` in pixels.
TILE_PX = 320
#: Outline colour of mask parts too small to count (grey, unnumbered: not lesions).
UNCOUNTED_RGB = (150, 150, 150)
_HEAD_LINE_PX = 22  # height of a header line (scale-2 text)


def _numbers(prefix: str, n: int) -> str:
    return "" if n == 0 else f" ({prefix}1)" if n == 1 else f" ({prefix}1-{prefix}{n})"


def preview_caption(data: dict[str, Any], table: "ComponentTable",
                    max_chars: Optional[int] = None) -> list[tuple[str, tuple[int, int, int]]]:
    """The header text of :func:`render_result_preview`: (line, colour) pairs, top to bottom.

    The counts are :meth:`cacnet.components.ComponentTable.counts`, as in the HTML report: lesions are the
    result's ``n_lesions`` (numbered 1, 2, ...); mask parts too small to count are "not counted"
    (grey, unnumbered); the rejected candidates are the result's ``rejected_candidates`` (2D parts, drawn
    as C1, C2, ... where parts touching in 3D are one), those no model voted for are apart (H1, H2, ...).
    Lines longer than ``max_chars`` characters are broken between their items.
    """
    n = table.counts(data)
    arts = data.get("arteries") or {}
    drs = (data.get("cac_drs") or {}).get("label", "")
    min_area = float(table.settings.get("min_area_mm2", 1.0))
    min_vox = int(table.settings.get("min_voxels", 1))
    rule = f"BELOW {min_area:g} MM2" + (f" OR {min_vox} VOXELS" if min_vox > 1 else "")
    lesions = [f"{n['lesions']} LESION{'' if n['lesions'] == 1 else 'S'}", f"{n['flagged']} FLAGGED"]
    if n["uncounted"]:
        lesions.append(f"{n['uncounted']} NOT COUNTED ({rule}, GREY)")
    groups = n["rejected_groups"]
    shown = (f" IN {groups} GROUP{'' if groups == 1 else 'S'}" if groups != n["rejected_candidates"] else "")
    cands = [f"{n['rejected_candidates']} REJECTED CANDIDATE{'' if n['rejected_candidates'] == 1 else 'S'}"
             + shown + _numbers("C", groups)]
    if n["unvoted"]:
        cands.append(f"{n['unvoted']} UNVOTED IN HEART{_numbers('H', n['unvoted'])}")
    tri = data.get("triage") or {}
    white, light, orange = (255, 255, 255), (220, 220, 220), (255, 200, 120)
    lines = [
        ([f"{data.get('id', '')}", f"AGATSTON {float(data.get('agatston') or 0.0):.1f}",
          f"CAT {data.get('category', '?')}", f"{drs}"], white),
        ([f"{a} {float((arts.get(a) or {}).get('agatston') or 0.0):.1f}" for a in ("LM", "LAD", "LCX", "RCA")],
         light),
        (lesions, light),
        (cands, light),
        ([f"TRIAGE {tri.get('verdict', '?')}" + (" (FORCED)" if tri.get("forced") else ""),
          f"{len(data.get('warnings') or [])} WARNINGS"], orange),
    ]
    out: list[tuple[str, tuple[int, int, int]]] = []
    for items, color in lines:
        cur = ""
        for item in (i for i in items if i):
            if cur and max_chars is not None and len(cur) + 2 + len(item) > max_chars:
                out.append((cur, color))
                cur = item
            else:
                cur = f"{cur}  {item}" if cur else item
        out.append((cur, color))
    return out


def _tile_slices(table: "ComponentTable", hu_shape: Sequence[int], bbox: Optional[Any], n: int = 6) -> list[int]:
    """Slices of the quick look: the largest lesion contributions, then the largest candidates, then spread."""
    per_slice: dict[int, float] = {}
    for comp in table.lesions:
        for p in comp.parts:
            per_slice[p.slice_index] = per_slice.get(p.slice_index, 0.0) + p.agatston
    chosen: list[int] = []
    for z, _ in sorted(per_slice.items(), key=lambda kv: (-kv[1], kv[0]))[: max(n - 2, 1)]:
        chosen.append(z)
    for comp in table.candidates:  # already ordered: most votes, then largest
        if len(chosen) >= n:
            break
        best = max(comp.parts, key=lambda p: (p.agatston, p.n_voxels)).slice_index
        if best not in chosen:
            chosen.append(best)
    for z in per_slice:  # the remaining lesion slices
        if len(chosen) >= n:
            break
        if z not in chosen:
            chosen.append(z)
    if len(chosen) < 3:  # nothing (or little) found: show the heart region evenly
        z0, z1 = (bbox[0][0], bbox[0][1]) if bbox else (0, hu_shape[0] - 1)
        for z in np.linspace(z0, z1, 5)[1:-1].round().astype(int):
            if len(chosen) >= 3:
                break
            if int(z) not in chosen:
                chosen.append(int(z))
    return sorted(chosen)


def render_result_preview(result: "ScanResult", table: Optional["ComponentTable"] = None) -> np.ndarray:
    """The quick look of a scored scan as an RGB uint8 image.

    A header (:func:`preview_caption`: id, total Agatston, category, CAC-DRS,
    per-artery scores, counts, triage verdict; then a legend) over up to six
    tiles: the slices with the largest lesion contributions and the largest
    rejected candidates (or, when there is nothing, three slices spread over
    the heart region), each cropped to the heart region (the same square on
    every tile), calcium window -200..800 HU, lesions outlined by artery and
    numbered as in the HTML report, mask parts too small to count outlined
    grey without a number, candidates dashed magenta and numbered C1, C2, ...
    (the result's rejected candidates) and H1, H2, ... (no model voted), with
    slice number, z (mm), DICOM instance number when known, the slice's
    Agatston sum, and R/L/A/P markers.
    """
    import agatston as _ag

    from ._render import ARTERY_RGB as _RGB, CANDIDATE_RGB, draw_text, text_width, window as _window

    scan, data = result.scan, result.data
    hu = np.asarray(scan.hu)
    if table is None:
        table = find_components(hu, scan.spacing, result.labels, data, result.triage)
    shape = hu.shape
    bbox = (((data.get("triage") or {}).get("checks") or {}).get("heart") or {}).get("bbox_zyx")
    slices = _tile_slices(table, shape, bbox)
    # the in-plane square: heart box and every component, 10 mm margin
    lo = [bbox[1][0], bbox[2][0]] if bbox else [shape[1] // 4, shape[2] // 4]
    hi = [bbox[1][1], bbox[2][1]] if bbox else [shape[1] - 1 - shape[1] // 4, shape[2] - 1 - shape[2] // 4]
    for comp in table.components:
        _, y, x = np.unravel_index(comp.voxels, shape)
        lo = [min(lo[0], int(y.min())), min(lo[1], int(x.min()))]
        hi = [max(hi[0], int(y.max())), max(hi[1], int(x.max()))]
    m = [int(round(10.0 / scan.spacing[1])), int(round(10.0 / scan.spacing[2]))]
    lo = [a - b for a, b in zip(lo, m)]
    hi = [a + b for a, b in zip(hi, m)]
    side = max(hi[0] - lo[0], hi[1] - lo[1]) + 1
    lo = [lo[0] - (side - (hi[0] - lo[0] + 1)) // 2, lo[1] - (side - (hi[1] - lo[1] + 1)) // 2]
    idx = np.minimum((np.arange(TILE_PX) * side / TILE_PX).astype(int), side - 1)  # tile pixel -> crop voxel
    ys, xs = idx + lo[0], idx + lo[1]
    inside = ((ys >= 0) & (ys < shape[1]))[:, None] & ((xs >= 0) & (xs < shape[2]))[None, :]
    yc, xc = np.clip(ys, 0, shape[1] - 1), np.clip(xs, 0, shape[2] - 1)
    owner = np.full(shape[1:], -1, np.int32)  # which component a voxel of the current slice belongs to
    z_all = {c.id: np.unravel_index(c.voxels, shape) for c in table.components}
    tiles = []
    for zi in slices:
        grey = np.where(inside, _window(hu[zi][np.ix_(yc, xc)]), 0).astype(np.uint8)
        rgb = np.repeat(grey[..., None], 3, axis=2)
        owner[:] = -1
        labels_here = []
        for k, comp in enumerate(table.components):
            z, y, x = z_all[comp.id]
            sel = z == zi
            if sel.any():
                owner[y[sel], x[sel]] = k
                labels_here.append(k)
        tile_owner = np.where(inside, owner[np.ix_(yc, xc)], -1)
        for k in labels_here:
            comp = table.components[k]
            msk = tile_owner == k
            edge = ndimage.binary_dilation(msk, np.ones((3, 3), bool), iterations=2) & ~msk
            if comp.kind == "candidate":
                yy, xx = np.indices(edge.shape)
                edge &= ((yy + xx) // 3) % 2 == 0
                color = CANDIDATE_RGB
            elif not comp.counted:  # too small to count: not a lesion, no number
                rgb[edge & ~ndimage.binary_dilation(msk, np.ones((3, 3), bool))] = UNCOUNTED_RGB
                continue
            else:
                color = _RGB.get(comp.label, (255, 255, 255))
            rgb[edge] = color
            ty, tx = np.nonzero(msk)
            if ty.size:
                tx0 = min(int(tx.max()) + 5, TILE_PX - text_width(comp.number, 2) - 2)
                draw_text(rgb, tx0, max(int(ty.min()) - 12, 0), comp.number, color, 2)
        ag = sum(p.agatston for c in table.lesions for p in c.parts if p.slice_index == zi)
        z_mm = scan.image.TransformIndexToPhysicalPoint((0, 0, int(zi)))[2]
        inst = scan.slices[zi].get("instance_number") if scan.slices else None
        draw_text(rgb, 4, 4, f"SLICE {zi}  Z {z_mm:.1f}", (255, 255, 255), 2)
        draw_text(rgb, 4, 22, (f"IN {inst}  " if inst is not None else "") + f"AG {ag:.1f}", (255, 255, 255), 2)
        for ch, (yy, xx) in {"R": (TILE_PX // 2 - 7, 3), "L": (TILE_PX // 2 - 7, TILE_PX - 13),
                             "A": (44, TILE_PX // 2 - 5), "P": (TILE_PX - 18, TILE_PX // 2 - 5)}.items():
            draw_text(rgb, xx, yy, ch, (255, 255, 0), 2)
        tiles.append(rgb)
    columns = {1: 1, 2: 2, 4: 2}.get(len(tiles), 3)
    while len(tiles) % columns:
        tiles.append(np.zeros_like(tiles[0]))
    gap = 4
    rows = []
    for i in range(0, len(tiles), columns):
        row = [tiles[i]]
        for t in tiles[i + 1:i + columns]:
            row += [np.full((TILE_PX, gap, 3), 40, np.uint8), t]
        rows.append(np.concatenate(row, axis=1))
    width = rows[0].shape[1]
    body = rows[0]
    for r in rows[1:]:
        body = np.concatenate([body, np.full((gap, width, 3), 40, np.uint8), r], axis=0)
    # header and footer
    caption = preview_caption({"id": result.id, **data}, table, max_chars=(width - 16) // text_width(" ", 2))
    head = np.full((len(caption) * _HEAD_LINE_PX + 30, width, 3), 24, np.uint8)
    for i, (line, color) in enumerate(caption):
        draw_text(head, 8, 6 + i * _HEAD_LINE_PX, line, color, 2)
    x, y = 8, 8 + len(caption) * _HEAD_LINE_PX
    for code, name in _ag.ARTERY_NAMES.items():
        head[y:y + 14, x:x + 14] = _RGB[code]
        draw_text(head, x + 18, y, name, (230, 230, 230), 2)
        x += 18 + len(name) * 12 + 14
    head[y + 6:y + 8, x:x + 20] = CANDIDATE_RGB
    head[y + 6:y + 8, x + 5:x + 8] = 24
    head[y + 6:y + 8, x + 13:x + 16] = 24
    draw_text(head, x + 26, y, "CANDIDATE (DASHED)", (230, 230, 230), 2)
    foot = np.full((22, width, 3), 24, np.uint8)
    draw_text(foot, 8, 4, "MODELS NOT VALIDATED ON PATIENTS: CHECK EVERY LESION (--REPORT)", (255, 120, 120), 2)
    return np.concatenate([head, body, foot], axis=0)


def write_result_preview(result: "ScanResult", path: Path, table: Optional["ComponentTable"] = None) -> Path:
    """Write :func:`render_result_preview` as a PNG (atomically); returns ``path``."""
    from ._render import encode_png

    data = encode_png(render_result_preview(result, table))
    with atomic_path(Path(path)) as tmp:
        tmp.write_bytes(data)
    return Path(path)
