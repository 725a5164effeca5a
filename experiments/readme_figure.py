"""Make docs/phantom_vs_qrm.png: a generated case beside the real QRM phantom scan.

Left: an axial slice of a synthetic case through its coronary calcium (truth
outlined by artery: LM yellow, LAD red, LCX green, RCA blue). Right: slice 22
of the real QRM phantom scan bundled in tests/data (calcium inserts, 120 kVp).
Both shown with the same window (-300 to 700 HU).

Run:  python -m experiments.readme_figure
"""

from __future__ import annotations

import gzip
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from cacnet.outputs.preview import choose_slices, render_montage
from cacnet.phantom import generate_phantom

from experiments._common import ROOT


def main() -> None:
    case = generate_phantom(7, category="D")
    z = choose_slices(case.labels, n=1)[0]
    left = render_montage(case.hu, case.labels, [z], columns=1)
    qrm_file = next((ROOT / "tests" / "data" / "qrm-canon-large-rep1").glob("22_*.dcm.gz"))
    with tempfile.TemporaryDirectory() as tmp:
        f = Path(tmp) / "s.dcm"
        f.write_bytes(gzip.decompress(qrm_file.read_bytes()))
        qrm = sitk.GetArrayFromImage(sitk.ReadImage(str(f), sitk.sitkFloat32))
    right = render_montage(qrm, np.zeros(qrm.shape, np.uint8), [0], columns=1)
    gap = np.full((left.shape[0], 8, 3), 255, np.uint8)
    img = np.concatenate([left, gap, right], axis=1)
    out = ROOT / "docs" / "phantom_vs_qrm.png"
    out.parent.mkdir(exist_ok=True)
    sitk.WriteImage(sitk.GetImageFromArray(img, isVector=True), str(out))
    print(f"wrote {out} (phantom slice {z}, truth {case.truth.agatston:.1f} {case.truth.category})")


if __name__ == "__main__":
    main()
