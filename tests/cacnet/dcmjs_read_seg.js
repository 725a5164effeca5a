// Read a DICOM SEG back with dcmjs, the library OHIF parses SEG with (tests/cacnet/test_seg_dcmjs.py).
//
//   node dcmjs_read_seg.js DCMJS_JS SEG.dcm CT_FOLDER OUT_FOLDER
//
// The CT slices are parsed with dcmjs too and handed to dcmjs's SEG reader,
// dcmjs.adapters.Cornerstone.Segmentation.generateToolState (cornerstoneTools 4 label maps), through a
// Cornerstone-style metadata provider keyed by imageId = the slice's SOP Instance UID. Writes to OUT_FOLDER:
//   labelmap_<i>.u16  each label map dcmjs returns (uint16 little endian, slices x rows x columns, in the
//                     order of result.json's imageIds; the value is the segment number, 0 outside)
//   result.json       imageIds, rows, columns, the segments (number, label, CIELab and dcmjs's RGB of it,
//                     anatomic region code), dcmjs's segmentsOnFrame, and every SEG frame as dcmjs parses it
//                     (segment number, referenced SOP Instance UID, its non-zero pixel indices)
"use strict";
const fs = require("fs");
const path = require("path");

const [dcmjsPath, segPath, ctFolder, outFolder] = process.argv.slice(2);
const dcmjs = require(path.resolve(dcmjsPath));
const { DicomMessage, DicomMetaDictionary, Colors } = dcmjs.data;

function arrayBufferOf(file) {
  const b = fs.readFileSync(file);
  return b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength);
}

function naturalized(file) {
  const dicomData = DicomMessage.readFile(arrayBufferOf(file));
  const ds = DicomMetaDictionary.naturalizeDataset(dicomData.dict);
  ds._meta = DicomMetaDictionary.namifyDataset(dicomData.meta);
  return ds;
}

const asArray = (v) => (v === undefined ? [] : Array.isArray(v) ? v : [v]);
const numbers = (v) => asArray(v).map(Number);

// the CT: one imageId per slice, ordered along the slice normal
const slices = fs.readdirSync(ctFolder).map((f) => naturalized(path.join(ctFolder, f)));
const normalOf = (ds) => {
  const [a, b, c, d, e, f] = numbers(ds.ImageOrientationPatient);
  return [b * f - c * e, c * d - a * f, a * e - b * d];
};
const along = (ds) => {
  const n = normalOf(ds);
  const p = numbers(ds.ImagePositionPatient);
  return n[0] * p[0] + n[1] * p[1] + n[2] * p[2];
};
slices.sort((x, y) => along(x) - along(y));
const byId = new Map(slices.map((ds) => [String(ds.SOPInstanceUID), ds]));
const imageIds = [...byId.keys()];

const metadataProvider = {
  get(type, imageId) {
    const ds = byId.get(imageId);
    if (!ds) return undefined;
    const iop = numbers(ds.ImageOrientationPatient);
    switch (type) {
      case "imagePlaneModule":
        return {
          frameOfReferenceUID: ds.FrameOfReferenceUID, rows: ds.Rows, columns: ds.Columns,
          rowCosines: iop.slice(0, 3), columnCosines: iop.slice(3, 6),
          imagePositionPatient: numbers(ds.ImagePositionPatient),
          rowPixelSpacing: numbers(ds.PixelSpacing)[0], columnPixelSpacing: numbers(ds.PixelSpacing)[1],
        };
      case "generalSeriesModule":
        return { seriesInstanceUID: ds.SeriesInstanceUID, modality: ds.Modality };
      case "imagePixelModule":
        return { rows: ds.Rows, columns: ds.Columns, bitsAllocated: ds.BitsAllocated };
      case "sopCommonModule":
        return { sopInstanceUID: ds.SOPInstanceUID, sopClassUID: ds.SOPClassUID };
      case "instance":
        return { ...ds, ImagePositionPatient: numbers(ds.ImagePositionPatient) };
      default:
        return undefined;
    }
  },
};

const { Segmentation } = dcmjs.adapters.Cornerstone;
const result = Segmentation.generateToolState(imageIds, arrayBufferOf(segPath), metadataProvider);
if (!result || !result.labelmapBufferArray) {
  console.error("dcmjs: generateToolState returned no label map");
  process.exit(2);
}

fs.mkdirSync(outFolder, { recursive: true });
result.labelmapBufferArray.forEach((buf, i) => {
  fs.writeFileSync(path.join(outFolder, `labelmap_${i}.u16`), Buffer.from(buf));
});

// the segments, as dcmjs's segMetadata gives them (index 0 is unused)
const segments = result.segMetadata.data.slice(1).map((s) => {
  const lab = numbers(s.RecommendedDisplayCIELabValue);
  const region = asArray(s.AnatomicRegionSequence)[0] || {};
  return {
    number: s.SegmentNumber, label: s.SegmentLabel, cielab: lab,
    rgb: lab.length === 3 ? Colors.dicomlab2RGB(lab).map((x) => Math.round(x * 255)) : null,
    region: { value: region.CodeValue, scheme: region.CodingSchemeDesignator, meaning: region.CodeMeaning },
    algorithmType: s.SegmentAlgorithmType,
  };
});

// every frame as dcmjs's parser gives it: its segment, its source image and its pixels
const seg = naturalized(segPath);
const shared = asArray(seg.SharedFunctionalGroupsSequence)[0] || {};
const frameSize = seg.Rows * seg.Columns;
const bits = new Uint8Array(seg.PixelData[0] || seg.PixelData);
const frames = asArray(seg.PerFrameFunctionalGroupsSequence).map((fg, f) => {
  const ident = asArray((fg.SegmentIdentificationSequence ? fg : shared).SegmentIdentificationSequence)[0];
  const derivation = asArray(fg.DerivationImageSequence)[0];
  const source = asArray(derivation && derivation.SourceImageSequence)[0];
  const on = [];
  for (let j = 0; j < frameSize; ++j) {
    const bit = f * frameSize + j; // BitsAllocated 1: frames packed back to back, least significant bit first
    if (bits[bit >> 3] & (1 << (bit & 7))) on.push(j);
  }
  return {
    segment: ident.ReferencedSegmentNumber,
    referencedSOPInstanceUID: source ? source.ReferencedSOPInstanceUID : null,
    imagePositionPatient: numbers(asArray(fg.PlanePositionSequence)[0].ImagePositionPatient),
    pixels: on,
  };
});

fs.writeFileSync(path.join(outFolder, "result.json"), JSON.stringify({
  dcmjsBundle: dcmjsPath, imageIds, rows: seg.Rows, columns: seg.Columns,
  bitsAllocated: seg.BitsAllocated, segmentationType: seg.SegmentationType,
  labelmaps: result.labelmapBufferArray.length, segments,
  segmentsOnFrame: result.segmentsOnFrame, frames,
}));
console.log(`dcmjs: ${segments.length} segments, ${frames.length} frames, ${imageIds.length} source images`);
