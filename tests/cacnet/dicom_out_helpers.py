"""Helpers of the DICOM output tests: CT series in any accepted orientation, a toy ensemble that labels
all four arteries, dciodvfy, and a real Orthanc on free localhost ports."""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

# Patient and study attributes of the synthetic series: the outputs must carry exactly these
PATIENT = {"PatientName": "Doe^Jane", "PatientID": "CAC-TEST-17", "PatientBirthDate": "19580312", "PatientSex": "F",
           "StudyDate": "20240105", "StudyTime": "101500", "AccessionNumber": "ACC0017", "StudyID": "17",
           "ReferringPhysicianName": "Ref^Doctor", "StudyDescription": "CT calcium score", "PatientAge": "065Y"}

# peak HU of each blob -> the artery the banded toy model gives it (LM [130, 200), LAD [200, 300),
# LCX [300, 400), RCA >= 400); (z0, z1, y0, y1, x0, x1) on the canonical LPS grid of SHAPE
BLOBS = {1: (180.0, (2, 4, 6, 10, 6, 11)), 2: (250.0, (3, 4, 5, 9, 34, 40)),
         3: (350.0, (4, 7, 28, 33, 8, 12)), 4: (600.0, (5, 6, 29, 35, 36, 43))}
SHAPE = (9, 40, 48)  # z, y, x: non-square in-plane, so that swapped axes cannot go unnoticed
SPACING = (3.0, 0.6, 0.5)  # dz, dy, dx (mm)

#: Orientations the reader accepts for DICOM, as ITK orientation strings: all 8 in-plane axis orders and
#: flips (the slice normal ImageOrientationPatient gives is +z for half of them, -z for the others); the
#: last letter (S or I) only changes the order the slices are stored and numbered in.
ORIENTATIONS = ["LPS", "RPI", "LAS", "RAI", "PLS", "PRI", "ALS", "ARI"]


def phantom_hu(blobs: bool = True) -> np.ndarray:
    """Soft tissue with air at the sides and, with ``blobs``, one calcification per artery."""
    hu = np.full(SHAPE, 40.0, np.float32)
    hu[:, :, :3] = -850.0
    hu[:, :, -3:] = -850.0
    if blobs:
        for peak, (z0, z1, y0, y1, x0, x1) in BLOBS.values():
            hu[z0:z1, y0:y1, x0:x1] = peak - 20.0
            hu[z0, (y0 + y1) // 2, (x0 + x1) // 2] = peak  # the peak decides the band
    return hu


def write_ct_series(folder: Path, hu_lps: np.ndarray, orientation: str = "LPS", *, reverse_instances: bool = False,
                    series_uid: Optional[str] = None, study_uid: Optional[str] = None) -> list[Path]:
    """Write ``hu_lps`` (canonical z, y, x) as a CT series stored in ``orientation`` (pydicom, one file a slice).

    The voxels are the same patient points whatever the orientation; ``reverse_instances`` numbers the
    instances against the stored slice order. Returns the files in stored slice order.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    img = sitk.GetImageFromArray(hu_lps)
    img.SetSpacing(SPACING[::-1])
    img.SetOrigin((-12.0, -10.0, 40.0))
    stored = sitk.DICOMOrient(img, orientation)
    arr = sitk.GetArrayFromImage(stored)
    d = np.array(stored.GetDirection()).reshape(3, 3)
    sx, sy, _ = stored.GetSpacing()
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    frame_uid = generate_uid()
    paths = []
    n = arr.shape[0]
    for k in range(n):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        for key, value in PATIENT.items():
            setattr(ds, key, value)
        ds.Modality, ds.Manufacturer, ds.ImageType = "CT", "ACME", ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.SeriesNumber, ds.SeriesDescription = 3, "Calcium score 3.0"
        ds.InstanceNumber = (n - k) if reverse_instances else (k + 1)
        ds.PositionReferenceIndicator = ""
        ds.ImagePositionPatient = [f"{v:.4f}" for v in stored.TransformIndexToPhysicalPoint((0, 0, k))]
        ds.ImageOrientationPatient = [f"{v:g}" for v in (*d[:, 0], *d[:, 1])]
        ds.PixelSpacing = [f"{sy:g}", f"{sx:g}"]
        ds.SliceThickness, ds.KVP = "3", "120"
        ds.Rows, ds.Columns = arr.shape[1], arr.shape[2]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "-1024", "1", "HU"
        ds.PixelData = np.rint(arr[k] + 1024).astype(np.int16).tobytes()
        # file names in a scrambled order: the reader sorts by position
        path = folder / f"im_{hashlib.sha1(str(ds.SOPInstanceUID).encode()).hexdigest()[:8]}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def banded_model(path: Path) -> None:
    """An ONNX 'model' whose artery is the HU band of the coarse voxel (see ``BLOBS``).

    logits_c = slope_c * x + intercept_c with slopes 0..4 (x 100): the upper envelope of
    the lines gives background below 130 HU and arteries 1-4 in consecutive bands.
    """
    import onnx
    from onnx import TensorProto, helper

    bounds = [(h + 300.0) / 1100.0 for h in (130.0, 200.0, 300.0, 400.0)]
    s = 100.0
    slope = np.array([0, 1, 2, 3, 4], np.float32) * s
    icpt = np.zeros(5, np.float32)
    for c in range(1, 5):  # lines c-1 and c cross at bounds[c-1]
        icpt[c] = icpt[c - 1] - s * bounds[c - 1]
    graph = helper.make_graph(
        [helper.make_node("Mul", ["image", "slope"], ["m"]), helper.make_node("Add", ["m", "icpt"], ["logits"])],
        "banded",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["n", 1, "z", "y", "x"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 5, "z", "y", "x"])],
        [helper.make_tensor("slope", TensorProto.FLOAT, [1, 5, 1, 1, 1], slope),
         helper.make_tensor("icpt", TensorProto.FLOAT, [1, 5, 1, 1, 1], icpt)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def banded_weights(folder: Path, n: int = 3) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    models = []
    for i in range(n):
        f = folder / f"banded_{i}.onnx"
        banded_model(f)
        models.append({"file": f.name, "sha256": hashlib.sha256(f.read_bytes()).hexdigest(), "seed": i})
    (folder / "manifest.json").write_text(json.dumps({"models": models, "training": {"data": "toy bands"}}))
    return folder


def dciodvfy(path: Path) -> tuple[list[str], list[str]]:
    """(errors, warnings) of dicom3tools' dciodvfy on a file; fails (never skips) without dciodvfy."""
    exe = shutil.which("dciodvfy")
    assert exe, "dciodvfy not found: install the Debian package dicom3tools (.ci/run does)"
    out = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=60)
    lines = [ln.strip() for ln in (out.stdout + out.stderr).splitlines() if ln.strip()]
    return [ln for ln in lines if ln.startswith("Error")], [ln for ln in lines if ln.startswith("Warning")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def orthanc_executable() -> str:
    exe = shutil.which("Orthanc") or next((p for p in ("/usr/sbin/Orthanc", "/usr/bin/Orthanc") if Path(p).exists()),
                                          None)
    assert exe, "Orthanc not found: install the Debian package orthanc (.ci/run does)"
    return exe


@contextlib.contextmanager
def running_orthanc(workdir: Path) -> Iterator[dict]:
    """A real Orthanc on free localhost ports with its own configuration and storage; stopped afterwards.

    Yields ``{"dicom_port", "http", "aet", "log"}``; ``http`` is the REST base URL.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    for _ in range(5):
        dicom_port, http_port = free_port(), free_port()
        if dicom_port != http_port:
            break
    config = {"Name": "cac-toolkit-test", "StorageDirectory": str(workdir / "storage"),
              "IndexDirectory": str(workdir / "storage"), "DicomAet": "ORTHANC", "DicomPort": dicom_port,
              "HttpPort": http_port, "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
              "DicomCheckCalledAet": False, "DicomAlwaysAllowStore": True, "Plugins": [],
              "StorageCompression": False, "HttpServerEnabled": True, "DicomServerEnabled": True}
    (workdir / "orthanc.json").write_text(json.dumps(config))
    log = workdir / "orthanc.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen([orthanc_executable(), str(workdir / "orthanc.json")], stdout=fh,
                                stderr=subprocess.STDOUT)
    http = f"http://127.0.0.1:{http_port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, f"Orthanc exited ({proc.returncode}):\n{log.read_text()[-2000:]}"
            try:
                urllib.request.urlopen(http + "/system", timeout=1).read()
                with socket.create_connection(("127.0.0.1", dicom_port), timeout=1):
                    break
            except OSError:
                assert time.monotonic() < deadline, f"Orthanc did not start:\n{log.read_text()[-2000:]}"
                time.sleep(0.05)
        yield {"dicom_port": dicom_port, "http": http, "aet": "ORTHANC", "log": log}
    finally:  # a clean stop takes Orthanc ~3.5 s (its servers poll); its storage is thrown away anyway
        proc.terminate()
        try:
            proc.wait(timeout=0.5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def rest(url: str, data: Optional[bytes] = None):
    """GET (or POST ``data``) an Orthanc REST URL and decode its JSON."""
    req = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def read_header(path: Path) -> Dataset:
    return pydicom.dcmread(path, stop_before_pixels=True)


def source_order(folder: Path) -> dict[str, int]:
    """SOP Instance UID -> slice index k of the source grid: the files sorted along their slice normal."""
    pos = {}
    for f in folder.iterdir():
        ds = read_header(f)
        iop = np.array(ds.ImageOrientationPatient, float)
        pos[str(ds.SOPInstanceUID)] = float(np.dot(np.array(ds.ImagePositionPatient, float),
                                                   np.cross(iop[:3], iop[3:])))
    return {uid: k for k, uid in enumerate(sorted(pos, key=pos.get))}
