"""Previews of synthetic calcium inserted into the traced real scans (cacnet.phantom.insertion).

For every tracing ``src/cacnet/train/anatomy/<name>.json`` whose scan is under
``shared/data/real-ct``: insert category-D calcium with every look-alike kind
(one augmented copy of the scan, seed 0) and write ``docs/anatomy/<name>_inserted.png``:
rows are the slices with the most inserted calcium; columns the original
slice, the slice with calcium, and the labels drawn on it (LM yellow, LAD
red, LCX green, RCA blue; look-alike voxels >= 130 HU cyan), window
-200..800 HU, crop around the traced structures, 2x zoom.

Needs pillow (``pip install pillow``; not a dependency of the package).

A tracing with ``decontrast`` (a contrast-enhanced scan) is de-contrasted
first, as in training; the "original" column then shows the de-contrasted scan.

Usage: ``python -m experiments.make_inserted_previews [--out docs/anatomy] [--data shared/data/real-ct]
[--only NAME ...]``
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from experiments._common import ROOT
COLORS = {1: (255, 230, 0), 2: (255, 40, 40), 3: (40, 220, 40), 4: (60, 130, 255)}


def _win(a, lo=-200.0, hi=800.0):
    return (np.clip((a - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)


def render(bg, ins, box_yx, out: Path, title: str, n_rows: int = 3, zoom: int = 2) -> None:
    from PIL import Image, ImageDraw

    hu, lab = ins.hu, ins.labels
    look = ((hu - bg) > 30) & (lab == 0) & (hu >= 130)
    cor, lk = (lab > 0).sum((1, 2)), look.sum((1, 2))
    zs = [int(z) for z in np.argsort(-cor)[:n_rows - 1] if cor[z] > 0]  # the coronary slices first
    zs += [int(z) for z in np.argsort(-lk) if lk[z] > 0 and z not in zs][:n_rows - len(zs)]
    zs = sorted(zs) or [hu.shape[0] // 2]
    (y0, y1), (x0, x1) = box_yx
    rows = []
    for z in zs:
        a, b = _win(bg[z, y0:y1, x0:x1]), _win(hu[z, y0:y1, x0:x1])
        c = np.stack([b] * 3, -1).astype(float)
        for k, col in COLORS.items():
            m = lab[z, y0:y1, x0:x1] == k
            c[m] = 0.45 * c[m] + 0.55 * np.array(col)
        m = look[z, y0:y1, x0:x1]
        c[m] = 0.45 * c[m] + 0.55 * np.array((0, 230, 255))
        row = np.concatenate([np.stack([a] * 3, -1), np.stack([b] * 3, -1), c.astype(np.uint8)], axis=1)
        row = np.kron(row, np.ones((zoom, zoom, 1), np.uint8))
        im = Image.fromarray(row)
        ImageDraw.Draw(im).text((4, 4), f"slice {z}", fill=(255, 255, 255))
        rows.append(np.asarray(im))
    sheet = np.concatenate(rows, axis=0)
    im = Image.fromarray(np.concatenate([np.zeros((30, sheet.shape[1], 3), np.uint8), sheet], axis=0))
    d = ImageDraw.Draw(im)
    for i, line in enumerate(title.split("\n")[:2]):
        d.text((4, 2 + 14 * i), line, fill=(255, 255, 255))
    out.parent.mkdir(parents=True, exist_ok=True)
    im.quantize(colors=128).save(out, optimize=True)


def main() -> None:
    from cacnet.io import read_scan
    from cacnet.phantom.decontrast import decontrast_scan
    from cacnet.phantom.insertion import augment_scan, decontrast_mask_of, estimate_psf_sigma, insert_calcium, load_tracing

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "anatomy")
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "real-ct")
    ap.add_argument("--category", default="D")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", nargs="*", default=None, help="tracing names to render (default: all)")
    args = ap.parse_args()
    for path in sorted((ROOT / "src" / "cacnet" / "train" / "anatomy").glob("*.json")):
        tracing = load_tracing(path)
        if args.only is not None and tracing["name"] not in args.only:
            continue
        scan_path = args.data / tracing["scan"]
        if not scan_path.exists():
            print(f"{path.name}: {scan_path} not found; skipped")
            continue
        t = time.perf_counter()
        scan = read_scan(scan_path)
        mask = decontrast_mask_of(tracing, scan_path, str(path))
        if mask is not None:  # a contrast scan: its blood is made non-contrast first (as in training)
            scan = decontrast_scan(scan, mask)
        rng = np.random.default_rng(args.seed)
        image, moved, params = augment_scan(scan, tracing, rng)
        import SimpleITK as sitk

        bg = sitk.GetArrayFromImage(image)
        psf, n_edges = estimate_psf_sigma(scan.hu, scan.spacing)  # on the original (see augment_scan)
        ins = insert_calcium(image, moved, rng, target_category=args.category, lookalikes=1.0, psf_sigma_mm=psf,
                             thickness_mm=scan.meta.get("slice_thickness_mm"), case_id=tracing["name"])
        ins.meta["psf"] = f"estimated from {n_edges} skin-air edge profiles of the original"
        pts = np.concatenate([np.asarray(v, float).reshape(-1, 3) for v in moved["structures"].values()])
        idx = np.array([image.TransformPhysicalPointToContinuousIndex([float(c) for c in p]) for p in pts])
        ny, nx = ins.hu.shape[1:]
        y0, y1 = int(max(idx[:, 1].min() - 25, 0)), int(min(idx[:, 1].max() + 25, ny))
        x0, x1 = int(max(idx[:, 0].min() - 25, 0)), int(min(idx[:, 0].max() + 25, nx))
        m = ins.meta
        title = (f"{tracing['name']}: original | inserted ({args.category}: Agatston {ins.truth.agatston:.0f}, "
                 f"{m['n_plaques']} plaques, look-alikes {', '.join(m['lookalikes'])}) | labels (LM yellow, LAD red, LCX green, RCA blue, look-alikes cyan)\n"
                 f"PSF FWHM {m['psf_fwhm_mm']} mm, slice {m['thickness_mm']} mm; augmented rot {params['rotation_deg']} "
                 f"deg, scale {params['scale']}; W -200..800")
        out = args.out / f"{tracing['name']}_inserted.png"
        render(bg, ins, ((y0, y1), (x0, x1)), out, title)
        print(f"{out}: {out.stat().st_size // 1024} kB, Agatston {ins.truth.agatston:.1f} ({ins.truth.category}), "
              f"{m['n_plaques']} plaques, PSF FWHM {m['psf_fwhm_mm']} mm ({m['psf']}), {time.perf_counter() - t:.1f} s")


if __name__ == "__main__":
    main()
