"""Make docs/dicom/seg_overlay.png: the DICOM SEG of `cac score --dicom` over its CT, from the DICOM files.

A synthetic phantom case (``generate_phantom(11, category="E")``, calcium in all
four arteries) is written as a CT series of DICOM files, scored with the shipped
ensemble and written with ``--dicom``. The figure is then drawn the way a viewer
does it, from the DICOM files only: the CT slices (pydicom, rescaled to HU) and
the SEG (highdicom: the frames of each source slice, and each segment's
recommended display colour), on the slice with the most of each segment.

Needs the dicom extra (pip install ".[dicom]"). Run:  python -m experiments.dicom_seg_figure [OUT_FOLDER]
(OUT_FOLDER keeps the series, SEG and SR; a temporary folder by default.)
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from PIL import Image, ImageDraw
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from cacnet.ensemble import DEFAULT_WEIGHTS, Ensemble
from cacnet.outputs.write import write_outputs
from cacnet.phantom import generate_phantom
from cacnet.pipeline import score_scan

from experiments._common import ROOT
WINDOW = (-300.0, 700.0)  # HU shown black .. white, as in docs/phantom_vs_qrm.png


def write_series(folder: Path, hu: np.ndarray, spacing, origin_zyx) -> None:
    """A canonical (z, y, x) HU volume as an axial CT series (one file a slice, LPS, feet to head)."""
    folder.mkdir(parents=True, exist_ok=True)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    dz, dy, dx = spacing
    for k in range(hu.shape[0]):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Phantom^Synthetic", "PHANTOM-11", "", "O"
        ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.StudyID = "20240101", "120000", "", "1"
        ds.ReferringPhysicianName, ds.StudyDescription = "", "Synthetic calcium score phantom"
        ds.Modality, ds.Manufacturer, ds.ImageType = "CT", "cac-toolkit phantom", ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.SeriesNumber, ds.InstanceNumber, ds.SeriesDescription = 2, k + 1, "Calcium score"
        ds.PositionReferenceIndicator = ""
        ds.ImagePositionPatient = [origin_zyx[2], origin_zyx[1], origin_zyx[0] + k * dz]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing, ds.SliceThickness, ds.KVP = [dy, dx], dz, 120
        ds.Rows, ds.Columns = hu.shape[1:]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        ds.PixelData = (hu[k].astype(np.int32) + 1024).astype(np.int16).tobytes()
        ds.save_as(folder / f"ct_{k:03d}.dcm", enforce_file_format=True)


def render(series: Path, seg_path: Path, out: Path, n_slices: int = 4, crop: int = 200, zoom: float = 1.5) -> None:
    """CT slices with the SEG's segments filled in their recommended colours, read from the DICOM files only."""
    cts = sorted((pydicom.dcmread(f) for f in series.glob("*.dcm")), key=lambda d: float(d.ImagePositionPatient[2]))
    seg = hd.seg.segread(seg_path)
    colors = {int(s.SegmentNumber): hd.color.CIELabColor.from_dicom_value(s.RecommendedDisplayCIELabValue).to_rgb()
              for s in seg.SegmentSequence}
    names = {int(s.SegmentNumber): str(s.SegmentLabel) for s in seg.SegmentSequence}
    referenced = {str(ref.ReferencedSOPInstanceUID) for item in seg.ReferencedSeriesSequence
                  for ref in item.ReferencedInstanceSequence}
    masks = {str(ct.SOPInstanceUID): seg.get_pixels_by_source_instance([str(ct.SOPInstanceUID)],
                                                                       combine_segments=True)[0]
             for ct in cts if str(ct.SOPInstanceUID) in referenced}
    # for each segment the slice with most of it, then the slices with the most calcium; shown head to feet
    index = {str(ct.SOPInstanceUID): k for k, ct in enumerate(cts)}
    order = [max(masks, key=lambda u, n=n: int((masks[u] == n).sum())) for n in sorted(colors)]
    order += sorted(masks, key=lambda u: -int((masks[u] > 0).sum()))
    chosen: list[str] = []
    for uid in order:
        if uid not in chosen and len(chosen) < n_slices:
            chosen.append(uid)
    chosen.sort(key=lambda u: -index[u])
    rows, cols = np.nonzero(np.any([masks[u] > 0 for u in masks], axis=0))
    r0 = int(np.clip((rows.min() + rows.max()) // 2 - crop // 2, 0, cts[0].Rows - crop))
    c0 = int(np.clip((cols.min() + cols.max()) // 2 - crop // 2, 0, cts[0].Columns - crop))
    panels = []
    for uid in chosen:
        ct = cts[index[uid]]
        hu = ct.pixel_array * float(ct.RescaleSlope) + float(ct.RescaleIntercept)
        grey = np.clip((hu - WINDOW[0]) / (WINDOW[1] - WINDOW[0]) * 255, 0, 255).astype(np.uint8)
        rgb = np.repeat(grey[..., None], 3, axis=2).astype(np.float32)
        for number, color in colors.items():
            on = masks[uid] == number
            rgb[on] = 0.35 * rgb[on] + 0.65 * np.array(color, np.float32)
        size = int(round(crop * zoom))
        tile = Image.fromarray(rgb[r0:r0 + crop, c0:c0 + crop].astype(np.uint8)).resize((size, size), Image.NEAREST)
        label = f"CT instance {ct.InstanceNumber}, z {float(ct.ImagePositionPatient[2]):.1f} mm"
        ImageDraw.Draw(tile).text((6, 4), label, fill=(255, 255, 255))
        panels.append(tile)
    gap, legend_h = 6, 22
    width = sum(p.width for p in panels) + gap * (len(panels) - 1)
    figure = Image.new("RGB", (width, panels[0].height + legend_h), (255, 255, 255))
    x = 0
    for p in panels:
        figure.paste(p, (x, 0))
        x += p.width + gap
    draw = ImageDraw.Draw(figure)
    x = 6
    for number in sorted(names):
        draw.rectangle((x, panels[0].height + 6, x + 12, panels[0].height + 18), fill=tuple(colors[number]))
        draw.text((x + 16, panels[0].height + 6), f"segment {number}: {names[number]}", fill=(0, 0, 0))
        x += 150
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.quantize(colors=128).save(out, optimize=True)


def main() -> int:
    keep = Path(sys.argv[1]) if len(sys.argv) > 1 else None
    with tempfile.TemporaryDirectory() as tmp:
        base = keep or Path(tmp)
        case = generate_phantom(11, category="E")
        series = base / "phantom11"
        write_series(series, case.hu, case.spacing, case.origin)
        result = score_scan(series, Ensemble(DEFAULT_WEIGHTS))
        write_outputs(result, base / "out", dicom=True)
        out = ROOT / "docs" / "dicom" / "seg_overlay.png"
        render(series, base / "out" / "phantom11_seg.dcm", out)
        print(f"wrote {out} ({out.stat().st_size // 1024} KiB); Agatston {result.data['agatston']:.1f}, "
              f"{result.data['cac_drs']['label']}, segments {result.data['dicom']['segments']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
