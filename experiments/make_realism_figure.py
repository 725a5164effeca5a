"""Realism figure: generated slices (default and varied phantoms) next to real non-contrast CT slices.

Writes ``docs/realism.png``: one row each of real slices (TCIA, see
``docs/realism_attribution.md``), default phantoms and varied phantoms
(``generate_phantom(seed, variant=...)``). Every panel is the same physical
crop around the heart (``--crop`` mm square, resampled to 1 mm per pixel
... ``--px`` mm), shown twice at the same window, W 800 / L 200: plain,
and with the voxels >= 130 HU (the Agatston threshold) tinted: coronary truth
in red, everything else >= 130 HU in orange (real slices: no truth, all
orange). Phantom slices are the ones with the most coronary calcium. Panel
labels give the source, slice thickness and kernel.

Needs pillow and pydicom (``pip install pillow pydicom``; not dependencies
of the package).

Usage: ``python -m experiments.make_realism_figure [--data ../shared/data/real-ct] [--out docs/realism.png]``
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

from experiments._common import ROOT

#: Real slices shown: file under single-slices/, crop centre (x, y) in mm from the image centre (chosen by
#: eye on the heart), and a short label. All have identity orientation (columns = patient left, rows = back).
REAL = [
    ("covid-19-ny-sbu/A046441_19001111-045.dcm", (5.0, -20.0), "COVID-19-NY-SBU A046441"),
    ("tcga-lung/ID_0059_AGE_0074_CONTRAST_0_CT.dcm", (5.0, -5.0), "TCGA ID_0059"),
    ("tcga-lung/ID_0063_AGE_0073_CONTRAST_0_CT.dcm", (15.0, 0.0), "TCGA ID_0063"),
    ("covid-19-ny-sbu/A048383_19001231-30.dcm", (-10.0, -35.0), "COVID-19-NY-SBU A048383"),
]
DEFAULT_SEEDS = [(11, "D"), (12, "C"), (13, "E"), (14, "D")]
VARIED_SEEDS = [(37, "D"), (8, "E"), (45, "D"), (21, "D")]

WINDOW = (200.0 - 400.0, 200.0 + 400.0)  # W 800 / L 200
TRUTH = np.array([235, 40, 40], float)
OTHER = np.array([255, 160, 0], float)


def _resample(img: np.ndarray, px_src: float, center_rc: tuple[float, float], crop: float, px: float) -> np.ndarray:
    """Crop ``crop`` mm around ``center_rc`` (row, col, in pixels of img) at ``px`` mm per pixel (outside: -1024)."""
    n = int(round(crop / px))
    off = (np.arange(n) - (n - 1) / 2) * px / px_src
    rr, cc = np.meshgrid(center_rc[0] + off, center_rc[1] + off, indexing="ij")
    return ndimage.map_coordinates(img.astype(np.float32), [rr, cc], order=1, mode="constant", cval=-1024.0)


def _panel(hu: np.ndarray, truth: np.ndarray | None, label: str) -> np.ndarray:
    from PIL import Image, ImageDraw

    g = (np.clip((hu - WINDOW[0]) / (WINDOW[1] - WINDOW[0]), 0, 1) * 255).astype(np.uint8)
    plain = np.stack([g] * 3, -1).astype(float)
    tinted = plain.copy()
    cand = hu >= 130
    other = cand & ~truth if truth is not None else cand
    tinted[other] = 0.35 * tinted[other] + 0.65 * OTHER
    if truth is not None:
        tinted[truth] = 0.35 * tinted[truth] + 0.65 * TRUTH
    both = np.concatenate([plain, np.full((hu.shape[0], 3, 3), 255.0), tinted], axis=1).astype(np.uint8)
    im = Image.fromarray(both)
    d = ImageDraw.Draw(im)
    d.rectangle([0, 0, len(label) * 6 + 4, 12], fill=(0, 0, 0))
    d.text((2, 1), label, fill=(255, 255, 255))
    return np.asarray(im)


def real_panels(data: Path, crop: float, px: float) -> list[np.ndarray]:
    import pydicom

    out = []
    for name, (cx, cy), label in REAL:
        ds = pydicom.dcmread(str(data / "single-slices" / name))
        hu = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        p = float(ds.PixelSpacing[0])
        center = ((hu.shape[0] - 1) / 2 + cy / p, (hu.shape[1] - 1) / 2 + cx / p)
        kernel = str(ds.get("ConvolutionKernel", "")).strip()
        out.append(_panel(_resample(hu, p, center, crop, px), None,
                          f"real: {label}, {float(ds.SliceThickness):g} mm {kernel}"))
    return out


def phantom_panels(variant: str, seeds, crop: float, px: float) -> list[np.ndarray]:
    from cacnet.phantom import generate_phantom

    out = []
    for seed, cat in seeds:
        t0 = time.perf_counter()
        case = generate_phantom(seed, category=cat, variant=variant)
        dt = time.perf_counter() - t0
        per_slice = (case.labels > 0).sum(axis=(1, 2))
        heart = case.anatomy.heart.center
        z = int(np.argmax(per_slice)) if per_slice.any() else int(round((heart[0] - case.origin[0]) / case.spacing[0]))
        sp = case.spacing
        center = ((heart[1] - case.origin[1]) / sp[1], (heart[2] - case.origin[2]) / sp[2])
        hu = _resample(case.hu[z], sp[1], center, crop, px)
        truth = _resample(case.labels[z].astype(np.float32), sp[1], center, crop, px) >= 0.5
        acq = case.acquisition
        out.append(_panel(hu, truth & (hu >= 130), f"{variant} {seed}: {acq.thickness_mm:g} mm {acq.kernel}, "
                                                    f"FOV {case.hu.shape[2] * sp[2]:.0f} mm"))
        print(f"{variant} seed {seed}: {dt:.1f} s, {case.hu.shape}, kernel {acq.kernel}, noise {acq.noise_sd:.0f} HU, "
              f"Agatston {case.truth.agatston:.0f}, look-alikes {case.meta['lookalikes']}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "real-ct")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "realism.png")
    ap.add_argument("--crop", type=float, default=180.0, help="Crop side (mm).")
    ap.add_argument("--px", type=float, default=0.9, help="Display pixel (mm).")
    args = ap.parse_args()
    from PIL import Image, ImageDraw

    rows = [("real non-contrast CT (TCIA)", real_panels(args.data, args.crop, args.px)),
            ("default phantom (shipped models trained on it)", phantom_panels("default", DEFAULT_SEEDS, args.crop, args.px)),
            ("varied phantom (variant='varied')", phantom_panels("varied", VARIED_SEEDS, args.crop, args.px))]
    gap = 6
    sheet = []
    for title, panels in rows:
        w = sum(p.shape[1] for p in panels) + gap * (len(panels) - 1)
        head = Image.new("RGB", (w, 16), (255, 255, 255))
        ImageDraw.Draw(head).text((2, 2), title, fill=(0, 0, 0))
        line = [panels[0]]
        for p in panels[1:]:
            line += [np.full((p.shape[0], gap, 3), 255, np.uint8), p]
        sheet += [np.asarray(head), np.concatenate(line, axis=1), np.full((gap, w, 3), 255, np.uint8)]
    img = Image.fromarray(np.concatenate(sheet, axis=0))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    img.quantize(colors=160, method=Image.Quantize.MEDIANCUT).save(args.out, optimize=True)
    print(f"wrote {args.out} ({args.out.stat().st_size // 1024} KiB)")


if __name__ == "__main__":
    main()
