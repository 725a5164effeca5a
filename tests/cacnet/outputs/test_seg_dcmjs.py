"""A second, independent reader of our DICOM SEG (issue 28, item 3): dcmjs, the library OHIF parses SEG with.

A small CT series with one calcification per artery is scored with the banded toy ensemble of the DICOM output
tests and written with ``--dicom``'s writer; tests/cacnet/dcmjs_read_seg.js then parses the CT slices and our SEG
with dcmjs 0.52.0 (the version OHIF 3.13 depends on) and reads the SEG with the reader OHIF's Cornerstone
adapters use (``dcmjs.adapters.Cornerstone.Segmentation.generateToolState``) into label maps over the CT's
slices. Artery by artery, those label maps equal our calcium mask voxel for voxel, and so does every SEG frame as
dcmjs parses it (its segment, its referenced CT image, its pixels); the segments carry the arteries' labels,
anatomic codes and preview colours.

Fails (never skips) without Node.js (Debian nodejs) or dcmjs (fetched by tests/cacnet/fetch_dcmjs.py from the
npm registry, sha512-checked; .ci/run does both).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from cacnet.ensemble import Ensemble
from cacnet.outputs.dicom import CODES
from cacnet.outputs.preview import ARTERY_COLORS
from cacnet.outputs.write import write_outputs
from cacnet.pipeline import score_scan

from ..dicom_out_helpers import banded_weights, phantom_hu, source_order, write_ct_series
from ..fetch_dcmjs import VERSION, fetch

SCRIPT = Path(__file__).resolve().parents[1] / "dcmjs_read_seg.js"
ARTERIES = {1: "LM", 2: "LAD", 3: "LCX", 4: "RCA"}


@pytest.fixture(scope="module")
def banded(tmp_path_factory) -> Ensemble:
    return Ensemble(banded_weights(tmp_path_factory.mktemp("banded")))


def _node() -> str:
    exe = os.environ.get("CAC_NODE") or shutil.which("node") or shutil.which("nodejs")
    if not exe:
        pytest.fail("the dcmjs test needs Node.js: apt-get install -y nodejs (or set CAC_NODE); .ci/run installs it")
    return exe


def _dcmjs() -> Path:
    try:
        return fetch()
    except (OSError, SystemExit) as e:  # no network, or the tarball is not the registry's
        pytest.fail(f"dcmjs {VERSION} could not be fetched (python tests/cacnet/fetch_dcmjs.py; .ci/run runs it): {e}")


@pytest.mark.parametrize("orientation", ["LPS", "PRI"])
def test_dcmjs_reads_our_seg_into_our_mask(orientation, banded, tmp_path):
    node, dcmjs = _node(), _dcmjs()
    folder = tmp_path / "series"
    write_ct_series(folder, phantom_hu(), orientation, reverse_instances=orientation == "PRI")
    res = score_scan(folder, banded, force=True)
    out = tmp_path / "out"
    write_outputs(res, out, dicom=True)
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "series_calcium.nii.gz")))
    assert set(np.unique(mask)) == {0, 1, 2, 3, 4}  # all four arteries, each on its own blob

    read = tmp_path / "dcmjs"
    r = subprocess.run([node, str(SCRIPT), str(dcmjs), str(out / "series_seg.dcm"), str(folder), str(read)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"dcmjs_read_seg.js exited {r.returncode}:\n{r.stdout}\n{r.stderr}"
    got = json.loads((read / "result.json").read_text())
    order = source_order(folder)
    rows, cols = got["rows"], got["columns"]
    assert (len(got["imageIds"]), rows, cols) == mask.shape
    assert sorted(got["imageIds"]) == sorted(order)
    assert got["bitsAllocated"] == 1 and got["segmentationType"] == "BINARY"

    # the segments: one per artery with calcium, its label, anatomic code and preview colour
    segment_of = {}
    for s in got["segments"]:
        name = s["label"].split()[0]
        artery = next(a for a, n in ARTERIES.items() if n == name)
        assert s["label"] == f"{name} calcium"
        assert (s["region"]["value"], s["region"]["scheme"]) == CODES[name][:2], s
        assert np.abs(np.array(s["rgb"]) - ARTERY_COLORS[artery]).max() <= 2, (name, s["rgb"])
        segment_of[artery] = s["number"]
    assert set(segment_of) == {1, 2, 3, 4} and sorted(segment_of.values()) == [1, 2, 3, 4]

    # dcmjs's label maps (non-overlapping segments: one map), slice by slice onto our mask's slices
    assert got["labelmaps"] == 1, "dcmjs found overlapping segments"
    raw = np.fromfile(read / "labelmap_0.u16", dtype="<u2").reshape(len(got["imageIds"]), rows, cols)
    labelmap = np.zeros_like(raw)
    for i, uid in enumerate(got["imageIds"]):
        labelmap[order[uid]] = raw[i]
    for artery, number in segment_of.items():
        ours, theirs = mask == artery, labelmap == number
        assert ours.any() and np.array_equal(theirs, ours), (
            f"{ARTERIES[artery]}: dcmjs {int(theirs.sum())} voxels, ours {int(ours.sum())}, "
            f"{int((theirs != ours).sum())} differ")
    assert not labelmap[mask == 0].any()

    # every frame as dcmjs parses it: its segment's pixels on its referenced CT slice, and nothing left out
    covered = np.zeros(mask.shape, bool)
    artery_of = {n: a for a, n in segment_of.items()}
    for f in got["frames"]:
        k = order[f["referencedSOPInstanceUID"]]
        artery = artery_of[f["segment"]]
        pixels = np.array(f["pixels"], int)
        assert np.array_equal(pixels, np.flatnonzero(mask[k] == artery)), (ARTERIES[artery], k)
        assert not covered[k].reshape(-1)[pixels].any()
        covered[k].reshape(-1)[pixels] = True
    assert np.array_equal(covered, mask > 0)
