"""Contour previews of the anatomical map (:func:`cacnet.anatomy.anatomical_map`) on every real scan we have.

For each scan (the five non-contrast reconstructions of ``shared/data/real-ct``:
Lung-PET-CT-Dx A0001 and A0002, two kernels each, and ACRIN-FLT-Breast 013;
LIDC-IDRI-0001 de-contrasted with its TotalSegmentator labels; the QRM thorax
phantom ``shared/data/qrm-canon-large-rep1``; the bundled
``examples/data/phantom_example.nii.gz``) write ``docs/anatomy/map_<name>.png``:
a grid of axial slices evenly spread over the sac's z range, window -250..250
HU, cropped around the sac (20 mm margin), scaled to a common 0.45 mm per
display pixel (about 2x for 0.7-0.8 mm pixels), with

* the map's heart (blood and muscle) contour in green,
* the pericardial sac contour in red,
* the lungs' contour in blue (thin),
* the map's ascending aorta tube (down to its estimated root) in orange and
  its descending aorta tube in cyan (thin),
* voxels >= 130 HU tinted yellow,
* traced coronary points (``src/cacnet/train/anatomy/*.json``, polylines
  resampled every 1 mm, those within half a slice of the slice) as magenta
  circles; for the phantom example, its truth coronary calcium instead (a
  circle per 2D piece). Up to 3 of the slices are those with the most marks.
* traced aortic wall points (``aortic_root_wall``, ``ascending_aorta_wall``
  rings, within half a slice) as small white circles, when a tracing exists.

The slice nearest the estimated aortic root (the ascending tube's lowest
circle) is always one of the slices, titled "(aortic root, est.)".

The contours are those of the map's coarse cells (``fine_mask``), so they
are staircases of about 3.5 mm steps. Each PNG is kept under about 400 kB
(fewer or smaller tiles when needed).

``--phantom VARIANT:INDEX`` (repeatable) also renders generated phantoms
(``generate_phantom(case_seed(8100, INDEX), category="ABCDE"[INDEX % 5], variant=VARIANT)``)
with their truth coronary calcium, as ``map_phantom_<variant>_<index>.png``.

Needs pillow (``pip install pillow``; not a dependency of the package).

Usage: ``python -m experiments.make_map_previews [--out docs/anatomy] [--data ../shared/data]
[--only NAME ...] [--phantom varied:1]``
"""

from __future__ import annotations

import argparse
import time
import types
from pathlib import Path

import numpy as np
from scipy import ndimage

from experiments._common import ROOT
TRACINGS = ROOT / "src" / "cacnet" / "train" / "anatomy"
CORONARY = ("LM", "LAD", "LCX", "RCA")
AORTIC_WALL = ("aortic_root_wall", "ascending_aorta_wall")
#: (preview name, path under the data folder or the repository, kind)
SCANS = [
    ("lung_pet_ct_dx_a0001_series2", "real-ct/lung-pet-ct-dx/A0001-5mm-series2", "real"),
    ("lung_pet_ct_dx_a0001_series3", "real-ct/lung-pet-ct-dx/A0001-5mm-series3", "real"),
    ("lung_pet_ct_dx_a0002_b40f", "real-ct/lung-pet-ct-dx/A0002-8mm-B40f", "real"),
    ("lung_pet_ct_dx_a0002_b70f", "real-ct/lung-pet-ct-dx/A0002-8mm-B70f", "real"),
    ("acrin_flt_breast_013", "real-ct/acrin-flt-breast-013", "real"),
    ("lidc_idri_0001_decontrast", "real-ct/lidc-idri-0001/ct.nii.gz", "real"),
    ("qrm_canon_large_rep1", "qrm-canon-large-rep1", "real"),
    ("phantom_example", "examples/data/phantom_example.nii.gz", "example"),
]
WINDOW = (-250.0, 250.0)
MM_PER_PX = 0.45
MAX_BYTES = 400_000
GREEN, RED, BLUE, YELLOW, MAGENTA = (40, 230, 40), (255, 50, 50), (70, 140, 255), (255, 225, 0), (255, 0, 255)
ORANGE, CYAN, WHITE = (255, 150, 0), (0, 230, 230), (255, 255, 255)


def _tracing_for(rel: str):
    """The tracing valid for the real-CT path ``rel`` (``scan`` or ``also_valid_for``), or None."""
    from cacnet.phantom.insertion import load_tracing

    rel = rel.removeprefix("real-ct/")
    for path in sorted(TRACINGS.glob("*.json")):
        t = load_tracing(path)
        if rel in [t["scan"], *t.get("also_valid_for", [])]:
            return t, path
    return None, None


def _points(value) -> list[list[float]]:
    if len(value) and not isinstance(value[0], (list, tuple)):
        return [[float(c) for c in value]]
    return [p for v in value for p in _points(v)]


def traced_coronaries(tracing: dict, image) -> np.ndarray:
    """(n, 3) continuous (z, y, x) indices of the traced coronary polylines, resampled every 1 mm."""
    structures = tracing.get("structures", tracing)
    out = []
    for name in CORONARY:
        if name not in structures:
            continue
        pts = np.asarray(_points(structures[name]), float)
        for a, b in zip(pts[:-1], pts[1:]):
            n = max(int(np.ceil(np.linalg.norm(b - a))), 1)
            for t in np.linspace(0.0, 1.0, n, endpoint=False):
                out.append(a + t * (b - a))
        out.append(pts[-1])
    idx = np.array([image.TransformPhysicalPointToContinuousIndex([float(c) for c in p]) for p in out])
    return idx[:, ::-1] if len(idx) else np.zeros((0, 3))


def traced_aortic_wall(tracing: dict, image) -> np.ndarray | None:
    """(n, 3) continuous (z, y, x) indices of the traced aortic root and ascending aorta wall rings' points,
    or None when the tracing has none."""
    structures = tracing.get("structures", tracing)
    pts = [p for name in AORTIC_WALL if name in structures for p in _points(structures[name])]
    if not pts:
        return None
    idx = np.array([image.TransformPhysicalPointToContinuousIndex([float(c) for c in p]) for p in pts])
    return idx[:, ::-1]


def _root_slice(amap) -> int | None:
    """The fine slice index nearest the estimated aortic root, or None when the ascending aorta was not found."""
    if not np.isfinite(amap.root_z_mm):
        return None
    c = amap.root_z_mm / amap.cell_mm[0]
    return int(round((c + 0.5) * amap.block[0] - 0.5))


def _blobs(mask: np.ndarray) -> np.ndarray | None:
    """(n, 3) (z, y, x) centres of the 2D pieces of ``mask`` on each slice, or None when it is empty."""
    out = []
    for z in np.flatnonzero(mask.any(axis=(1, 2))):
        lab, n = ndimage.label(mask[z])
        out += [(float(z), c[0], c[1]) for c in ndimage.center_of_mass(mask[z], lab, range(1, n + 1))]
    return np.array(out) if out else None


def _edge(mask: np.ndarray, width: int) -> np.ndarray:
    if not mask.any():
        return mask
    inner = ndimage.binary_erosion(mask, iterations=width, border_value=1)
    return mask & ~inner


def _resize(a: np.ndarray, shape: tuple[int, int], order: int) -> np.ndarray:
    zoom = (shape[0] / a.shape[0], shape[1] / a.shape[1])
    out = ndimage.zoom(a.astype(np.float32), zoom, order=order, mode="nearest", grid_mode=True)
    return out[:shape[0], :shape[1]]


def render(hu: np.ndarray, spacing, amap, out: Path, title: str, marks: np.ndarray | None = None,
           mark_label: str = "traced coronary points", max_tiles: int = 8, mm_per_px: float = MM_PER_PX,
           cols: int = 4, aortic_marks: np.ndarray | None = None) -> int:
    """Write the preview; return its size in bytes."""
    from PIL import Image, ImageDraw

    shape = hu.shape
    heart, sac, lung = (amap.fine_mask(w, shape) for w in ("heart", "sac", "lung"))
    asc, desc = (amap.fine_mask(w, shape) for w in ("asc_aorta", "desc_aorta"))
    root = _root_slice(amap)
    if root is not None:
        root = min(max(root, 0), shape[0] - 1)
    where = sac if sac.any() else np.ones(shape, bool)
    zs_all = np.flatnonzero(where.any(axis=(1, 2)))
    z0, z1 = int(zs_all[0]), int(zs_all[-1])
    picked: list[int] = []
    if marks is not None and len(marks):  # the (up to 3) slices with the most marks, then evenly over the sac
        zc = np.round(marks[:, 0]).astype(int)
        counts = np.bincount(zc[(zc >= 0) & (zc < shape[0])], minlength=shape[0])
        picked = [int(z) for z in np.argsort(-counts, kind="stable")[:min(3, max_tiles // 2)] if counts[z] > 0]
    if root is not None and root not in picked:
        picked.append(root)
    n = min(max_tiles - len(picked), z1 - z0 + 1)
    even = [int(round(z)) for z in np.linspace(z0, z1, n + 2)[1:-1]] if z1 - z0 + 1 > n else list(range(z0, z1 + 1))
    zs = sorted(set(picked) | set(even))
    while len(zs) > max_tiles:  # drop even picks next to a picked slice
        drop = min((z for z in zs if z not in picked), key=lambda z: min(abs(z - q) for q in picked) if picked else 0)
        zs.remove(drop)
    ys, xs = np.nonzero(where.any(axis=0))
    my, mx = int(round(20.0 / spacing[1])), int(round(20.0 / spacing[2]))
    y0, y1 = max(int(ys.min()) - my, 0), min(int(ys.max()) + my + 1, shape[1])
    x0, x1 = max(int(xs.min()) - mx, 0), min(int(xs.max()) + mx + 1, shape[2])
    th = int(round((y1 - y0) * spacing[1] / mm_per_px))
    tw = int(round((x1 - x0) * spacing[2] / mm_per_px))
    sy, sx = th / (y1 - y0), tw / (x1 - x0)
    nearest_root = min(zs, key=lambda q: abs(q - root)) if root is not None else None
    tiles = []
    for z in zs:
        img = _resize(np.asarray(hu[z, y0:y1, x0:x1], np.float32), (th, tw), order=1)
        g = np.clip((img - WINDOW[0]) / (WINDOW[1] - WINDOW[0]), 0, 1) * 255
        rgb = np.stack([g] * 3, -1)
        dense = _resize(np.asarray(hu[z, y0:y1, x0:x1]) >= 130, (th, tw), order=0) > 0.5
        rgb[dense] = 0.4 * rgb[dense] + 0.6 * np.array(YELLOW)
        for m, col, w in ((lung, BLUE, 1), (sac, RED, 2), (heart, GREEN, 2), (asc, ORANGE, 1), (desc, CYAN, 1)):
            mm = _resize(m[z, y0:y1, x0:x1], (th, tw), order=0) > 0.5
            rgb[_edge(mm, w)] = col
        im = Image.fromarray(rgb.astype(np.uint8))
        d = ImageDraw.Draw(im)
        if marks is not None and len(marks):
            near = marks[np.abs(marks[:, 0] - z) <= 0.5]
            for _, yy, xx in near:
                cy, cx = (yy - y0 + 0.5) * sy, (xx - x0 + 0.5) * sx
                d.ellipse([cx - 5, cy - 5, cx + 5, cy + 5], outline=MAGENTA, width=2)
        if aortic_marks is not None and len(aortic_marks):
            near = aortic_marks[np.abs(aortic_marks[:, 0] - z) <= 0.5]
            for _, yy, xx in near:
                cy, cx = (yy - y0 + 0.5) * sy, (xx - x0 + 0.5) * sx
                d.ellipse([cx - 2, cy - 2, cx + 2, cy + 2], outline=WHITE, width=1)
        label = f"slice {z}" + (" (aortic root, est.)" if z == nearest_root else "")
        d.rectangle([0, 0, 8 + 6 * len(label), 13], fill=(0, 0, 0))
        d.text((3, 1), label, fill=(255, 255, 255))
        tiles.append(np.asarray(im))
    cols = min(cols, len(tiles))
    rows = -(-len(tiles) // cols)
    blank = np.zeros_like(tiles[0])
    tiles += [blank] * (rows * cols - len(tiles))
    gap = np.full((th, 3, 3), 40, np.uint8)
    sheet = np.concatenate([np.concatenate(sum(([t, gap] for t in tiles[r * cols:(r + 1) * cols]), [])[:-1], axis=1)
                            for r in range(rows)], axis=0)
    legend = [("heart (map)", GREEN), ("pericardial sac (map)", RED), ("lungs", BLUE),
              ("ascending aorta (map)", ORANGE), ("descending aorta (map)", CYAN), (">= 130 HU", YELLOW),
              *(((mark_label, MAGENTA),) if marks is not None else ()),
              *((("traced aortic wall", WHITE),) if aortic_marks is not None and len(aortic_marks) else ())]
    placed, x, y = [], 4, 20  # the legend, wrapped to the sheet's width
    for label, col in legend:
        w = 14 + 7 * len(label) + 16
        if x > 4 and x + w - 16 > sheet.shape[1]:
            x, y = 4, y + 12
        placed.append((x, y, label, col))
        x += w
    head = y + 24
    canvas = Image.fromarray(np.concatenate([np.zeros((head, sheet.shape[1], 3), np.uint8), sheet], axis=0))
    d = ImageDraw.Draw(canvas)
    d.text((4, 2), title, fill=(255, 255, 255))
    for x, y, label, col in placed:
        d.rectangle([x, y, x + 10, y + 10], outline=col, width=2)
        d.text((x + 14, y - 1), label, fill=col)
    root_txt = "" if root is None else f"; estimated aortic root at slice {root}"
    d.text((4, head - 12), f"W {WINDOW[0]:g}..{WINDOW[1]:g} HU, {mm_per_px:g} mm per display pixel; contours are the "
                           f"map's {' x '.join(f'{c:.1f}' for c in amap.cell_mm)} mm cells{root_txt}",
           fill=(200, 200, 200))
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.quantize(colors=96).save(out, optimize=True)
    return out.stat().st_size


def render_small_enough(hu, spacing, amap, out: Path, title: str, **kw) -> int:
    """:func:`render`, with coarser display pixels (then fewer tiles) until the PNG is under MAX_BYTES."""
    mm, tiles = MM_PER_PX, 8
    for _ in range(8):
        size = render(hu, spacing, amap, out, title, mm_per_px=mm, max_tiles=tiles, **kw)
        if size <= MAX_BYTES:
            return size
        if mm < 0.7:
            mm = round(mm * 1.15, 3)
        else:
            tiles = max(tiles - 2, 4)
    return size


def _title(name: str, amap, extra: str = "") -> str:
    s = amap.summary()
    yn = {True: "found", False: "not found"}
    return (f"{name}: map heart {s['heart_ml']} mL, sac {s['sac_ml']} mL (margin {s['sac_margin_mm']:g} mm), "
            f"ascending aorta {yn[amap.asc_aorta.found]}, descending {yn[amap.desc_aorta.found]}{extra}")


def main() -> None:
    from cacnet.anatomy import anatomical_map
    from cacnet.io import read_scan
    from cacnet.phantom.decontrast import decontrast_scan, read_mask
    from cacnet.phantom.insertion import decontrast_mask_of
    from cacnet.triage import triage

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "anatomy")
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--only", nargs="*", default=None, help="preview names to render (default: all)")
    ap.add_argument("--phantom", action="append", default=[], metavar="VARIANT:INDEX",
                    help="also render a generated phantom")
    args = ap.parse_args()
    for name, rel, kind in SCANS:
        if args.only is not None and name not in args.only:
            continue
        t = time.perf_counter()
        path = (ROOT / rel) if kind == "example" else (args.data / rel)
        if not path.exists():
            print(f"{name}: {path} not found; skipped")
            continue
        scan = read_scan(path)
        marks, label, extra, aortic = None, "traced coronary points", "", None
        tracing, tpath = _tracing_for(rel) if kind == "real" else (None, None)
        if tracing is not None:
            mask = decontrast_mask_of(tracing, path, str(tpath))
            if mask is not None:
                scan = decontrast_scan(scan, mask)
                extra = " (de-contrasted with its TotalSegmentator labels)"
            marks = traced_coronaries(tracing, scan.image)
            aortic = traced_aortic_wall(tracing, scan.image)
        if kind == "example":
            truth = read_mask(path.with_name(path.name.replace(".nii.gz", "_truth.nii.gz")), scan.image)
            marks = _blobs(truth > 0)
            label = "truth coronary calcium"
        amap = anatomical_map(triage(scan))
        out = args.out / f"map_{name}.png"
        size = render_small_enough(scan.hu, scan.spacing, amap, out, _title(name, amap, extra), marks=marks,
                                   mark_label=label, aortic_marks=aortic)
        print(f"{out}: {size // 1024} kB, {time.perf_counter() - t:.1f} s")
    for spec in args.phantom:
        from cacnet.phantom import case_seed, generate_phantom

        variant, index = spec.split(":")
        i = int(index)
        case = generate_phantom(case_seed(8100, i), category="ABCDE"[i % 5], variant=variant)
        scan = types.SimpleNamespace(hu=case.hu, spacing=case.spacing, meta={})
        amap = anatomical_map(triage(scan))
        marks = _blobs(case.labels > 0)
        out = args.out / f"map_phantom_{variant}_{i}.png"
        size = render_small_enough(case.hu, case.spacing, amap, out,
                                   _title(f"phantom {variant} {i} (seed {case_seed(8100, i)})", amap), marks=marks,
                                   mark_label="truth coronary calcium voxels")
        print(f"{out}: {size // 1024} kB")


if __name__ == "__main__":
    main()
