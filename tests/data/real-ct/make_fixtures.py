"""Write the real-CT test fixtures of this folder from the full scans (run once; kept for provenance).

Each fixture is a heart-level slab of a real scan from ``shared/data/real-ct``
(see README.md here for sources and licences): the slices through the middle
of the heart region that :func:`cacnet.triage.triage` finds, cropped in
plane to the body (air around it dropped), stored as int16 HU NIfTI on the
scan's own grid (spacing, origin and direction kept).

Run:  python tests/data/real-ct/make_fixtures.py ../shared/data/real-ct
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from cacnet.io import read_scan, to_source_grid
from cacnet.triage import triage

HERE = Path(__file__).resolve().parent

#: fixture name, source path in real-ct, slab length in mm
FIXTURES = [
    ("a0001_sharp_L", "lung-pet-ct-dx/A0001-5mm-series2", 40.0),
    ("a0002_B40f", "lung-pet-ct-dx/A0002-8mm-B40f", 48.0),
    ("acrin013_B10f", "acrin-flt-breast-013", 48.0),
    ("lidc0001_contrast", "lidc-idri-0001/ct.nii.gz", 32.5),
]


def slab(source: Path, length_mm: float):
    scan = read_scan(source)
    (z0, z1), _, _ = triage(scan).to_dict()["checks"]["heart"]["bbox_zyx"]
    n = max(3, int(round(length_mm / scan.spacing[0])))
    mid = (z0 + z1) // 2
    lo = max(0, mid - n // 2)
    hi = min(scan.hu.shape[0], lo + n)
    body = ndimage.binary_opening(scan.hu[lo:hi] > -400, iterations=2).any(axis=0)
    ys, xs = np.nonzero(body)
    y0, y1 = max(0, ys.min() - 4), min(body.shape[0], ys.max() + 5)
    x0, x1 = max(0, xs.min() - 4), min(body.shape[1], xs.max() + 5)
    hu = np.clip(np.rint(scan.hu), -1024, 3071).astype(np.int16)
    image = to_source_grid(hu, scan)  # int16 on the scan's own grid
    canonical = sitk.DICOMOrient(image, "LPS")  # crop in canonical indices, keeps physical geometry
    return canonical[int(x0):int(x1), int(y0):int(y1), int(lo):int(hi)]


def main() -> None:
    root = Path(sys.argv[1])
    for name, rel, length in FIXTURES:
        img = slab(root / rel, length)
        out = HERE / f"{name}.nii.gz"
        sitk.WriteImage(img, str(out), useCompression=True)
        print(f"{out.name}: size {img.GetSize()}, spacing {tuple(round(s, 3) for s in img.GetSpacing())}, "
              f"{out.stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
