"""Helpers of the Orthanc node tests (and benchmarks/orthanc_load.py): a real Orthanc that can be stopped and
started again on the same ports and storage, small CT series that triage accepts or refuses, uploads, waiting
for Orthanc's StableSeries, running `cac orthanc` as a process, and reading our objects back."""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import uuid
import urllib.request
from pathlib import Path
from typing import Optional

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from .dicom_out_helpers import free_port, orthanc_executable

USER, PASSWORD = "cacnode", "S3cret-pass-7f2a9"  # the test Orthanc's only user; must never show anywhere
REPO = Path(__file__).resolve().parents[2]


class OrthancServer:
    """A real Orthanc (Debian package) on free localhost ports with authentication and StableAge 1 s.

    ``stop()`` and ``start()`` again keep the ports and the storage (an Orthanc restart). ``tls``: a PEM file
    holding the certificate and its key; Orthanc then serves https only.
    """

    def __init__(self, workdir: Path, *, stable_age: int = 1, tls: Optional[Path] = None,
                 users: Optional[dict] = None, dicomweb: bool = False) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.dicom_port, self.http_port = free_port(), free_port()
        while self.http_port == self.dicom_port:
            self.http_port = free_port()
        self.tls = tls
        scheme = "https" if tls else "http"
        self.url = f"{scheme}://127.0.0.1:{self.http_port}"
        config = {"Name": "cac-node-test", "StorageDirectory": str(self.workdir / "storage"),
                  "IndexDirectory": str(self.workdir / "storage"), "DicomAet": "ORTHANC",
                  "DicomPort": self.dicom_port, "HttpPort": self.http_port, "RemoteAccessAllowed": False,
                  "AuthenticationEnabled": True, "RegisteredUsers": users or {USER: PASSWORD},
                  "DicomCheckCalledAet": False, "DicomAlwaysAllowStore": True, "Plugins": [],
                  "StorageCompression": False, "StableAge": stable_age, "HttpServerEnabled": True,
                  "DicomServerEnabled": True, "HttpThreadsCount": 8}
        if tls:
            config.update({"SslEnabled": True, "SslCertificate": str(tls)})
        if dicomweb:  # the Debian package orthanc-dicomweb
            plugin = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
            assert plugin.exists(), f"{plugin} not found: install the Debian package orthanc-dicomweb (.ci/run does)"
            config.update({"Plugins": [str(plugin)], "DicomWeb": {"Enable": True, "Root": "/dicom-web/",
                                                                  "EnableWado": True, "WadoRoot": "/wado"}})
        (self.workdir / "orthanc.json").write_text(json.dumps(config))
        self.log = self.workdir / "orthanc.log"
        self.proc: Optional[subprocess.Popen] = None

    def start(self, timeout: float = 30.0) -> "OrthancServer":
        with open(self.log, "ab") as fh:
            self.proc = subprocess.Popen([orthanc_executable(), str(self.workdir / "orthanc.json")], stdout=fh,
                                         stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc.poll() is None, f"Orthanc exited ({self.proc.returncode}):\n{self.log.read_text()[-2000:]}"
            try:
                with socket.create_connection(("127.0.0.1", self.http_port), timeout=1):
                    pass
                with socket.create_connection(("127.0.0.1", self.dicom_port), timeout=1):
                    break
            except OSError:
                assert time.monotonic() < deadline, f"Orthanc did not start:\n{self.log.read_text()[-2000:]}"
                time.sleep(0.05)
        return self

    def stop(self, graceful: bool = True) -> None:
        """Stop Orthanc (SIGTERM and wait; ``graceful=False``: SIGKILL, a crash)."""
        if self.proc is None:
            return
        if graceful:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        else:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    # --- REST, as an administrator --------------------------------------------------------------------------

    def request(self, method: str, path: str, data: Optional[bytes] = None) -> bytes:
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Authorization", "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode())
        import ssl

        ctx = ssl.create_default_context(cafile=str(self.tls)) if self.tls else None
        with urllib.request.urlopen(req, timeout=30, context=ctx) as r:
            return r.read()

    def get(self, path: str):
        return json.loads(self.request("GET", path))

    def upload(self, paths) -> list[str]:
        """POST each file to /instances; their Orthanc instance ids."""
        return [json.loads(self.request("POST", "/instances", Path(p).read_bytes()))["ID"] for p in paths]

    def series_id(self, series_uid: str) -> str:
        (hit,) = [h for h in json.loads(self.request("POST", "/tools/lookup", series_uid.encode()))
                  if h["Type"] == "Series"]
        return hit["ID"]

    def wait_stable(self, series_uids, timeout: float = 60.0) -> list[str]:
        """Wait until Orthanc has called each series stable (its StableSeries change is in the feed)."""
        ids = [self.series_id(u) for u in series_uids]
        deadline = time.monotonic() + timeout
        while True:
            if all(self.get(f"/series/{i}")["IsStable"] for i in ids):
                stable = {c["ID"] for c in self._all_changes() if c["ChangeType"] == "StableSeries"}
                if set(ids) <= stable:
                    return ids
            assert time.monotonic() < deadline, f"series not stable after {timeout} s"
            time.sleep(0.2)

    def _all_changes(self) -> list[dict]:
        out, since = [], 0
        while True:
            page = self.get(f"/changes?since={since}&limit=1000")
            out += page["Changes"]
            if page["Done"] or page["Last"] == since:
                return out
            since = page["Last"]

    def study_series(self, series_uid: str) -> list[dict]:
        """Every series (expanded) in the study of the series ``series_uid``."""
        study = self.get(f"/series/{self.series_id(series_uid)}")["ParentStudy"]
        return self.get(f"/studies/{study}/series")

    def ours(self, series_uid: str) -> dict[str, list[str]]:
        """Our objects (Manufacturer cac-toolkit) in the study of ``series_uid`` that reference it: modality -> SOP
        Instance UIDs of the instances."""
        out: dict[str, list[str]] = {}
        for s in self.study_series(series_uid):
            if s["MainDicomTags"].get("Manufacturer") != "cac-toolkit":
                continue
            for iid in s["Instances"]:
                tags = self.get(f"/instances/{iid}/tags?simplify")
                refs = {r["SeriesInstanceUID"] for r in tags.get("ReferencedSeriesSequence", [])}
                for st in tags.get("CurrentRequestedProcedureEvidenceSequence", []):
                    refs |= {r["SeriesInstanceUID"] for r in st.get("ReferencedSeriesSequence", [])}
                if series_uid in refs:
                    out.setdefault(tags["Modality"], []).append(tags["SOPInstanceUID"])
        return out

    def instance_file(self, sop_uid: str) -> bytes:
        (hit,) = [h for h in json.loads(self.request("POST", "/tools/lookup", sop_uid.encode()))
                  if h["Type"] == "Instance"]
        return self.request("GET", f"/instances/{hit['ID']}/file")

    def n_instances(self) -> int:
        return int(self.get("/statistics")["CountInstances"])


# --- series --------------------------------------------------------------------------------------------------

def write_ct(folder: Path, hu: np.ndarray, spacing, origin_zyx, *, study_uid: Optional[str] = None,
             series_uid: Optional[str] = None, modality: str = "CT", image_type=("ORIGINAL", "PRIMARY", "AXIAL"),
             orientation=(1, 0, 0, 0, 1, 0), description: str = "Calcium score 3.0", patient_id: str = "CAC-NODE-1",
             slices: Optional[range] = None) -> tuple[str, list[Path]]:
    """A (z, y, x) HU volume as a CT series (one file per slice, feet to head); (series UID, files).

    ``slices`` writes only those slice indices (a series still arriving). With a sagittal ``orientation`` the
    positions still step along z: only the header's orientation matters to the node.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or f"2.25.{uuid.uuid4().int}"  # short enough for a ".<slice>" suffix (64 at most)
    frame = f"{series_uid}.0"
    dz, dy, dx = spacing
    sop_class = CTImageStorage if modality == "CT" else "1.2.840.10008.5.1.4.1.1.4"  # MR Image Storage
    paths = []
    for k in (slices if slices is not None else range(hu.shape[0])):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = sop_class
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID, ds.SOPInstanceUID = sop_class, f"{series_uid}.{k + 1}"
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Node^Test", patient_id, "19600101", "O"
        ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.StudyID = "20240101", "120000", "ACC-NODE", "1"
        ds.ReferringPhysicianName, ds.StudyDescription = "", "CT calcium score"
        ds.Modality, ds.Manufacturer, ds.ImageType = modality, "ACME", list(image_type)
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame
        ds.SeriesNumber, ds.InstanceNumber, ds.SeriesDescription = 3, k + 1, description
        ds.PositionReferenceIndicator = ""
        ds.ImagePositionPatient = [f"{origin_zyx[2]:.4f}", f"{origin_zyx[1]:.4f}", f"{origin_zyx[0] + k * dz:.4f}"]
        ds.ImageOrientationPatient = [f"{v:g}" for v in orientation]
        ds.PixelSpacing, ds.SliceThickness = [f"{dy:g}", f"{dx:g}"], f"{dz:g}"
        if modality == "CT":
            ds.KVP = "120"
        ds.Rows, ds.Columns = hu.shape[1:]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = "-1024", "1"
        ds.PixelData = (np.rint(hu[k]).astype(np.int32) + 1024).astype(np.int16).tobytes()
        path = folder / f"ct_{k:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return series_uid, paths


def phantom_volume(seed: int = 11, category: str = "D", contrast: bool = False, full: bool = False):
    """A synthetic cardiac CT that triage accepts (or, with ``contrast``, refuses): (hu, spacing, origin_zyx).

    ``generate_phantom`` at 512 x 512 (0.33 mm pixels, 169 mm field), block-averaged to 256 x 256 x 43 of
    0.66 mm: 5.6 MB as DICOM, scored in ~3 s by the shipped models on 2 cores. ``contrast`` raises the
    heart's blood and myocardium by 310 HU (as tests/cacnet/test_triage.py does). ``full``: 512 x 512 as generated.
    """
    from cacnet.phantom import generate_phantom

    case = generate_phantom(seed, category=category, size=512)
    hu = case.hu.astype(np.float32)
    if contrast:
        h = case.anatomy.heart
        sp, org = np.array(case.spacing), np.array(case.origin)
        reach = np.ceil(h.radii.max() / sp).astype(int) + 1
        c = np.round((h.center - org) / sp).astype(int)
        lo, hi = np.maximum(c - reach, 0), np.minimum(c + reach + 1, hu.shape)
        grid = np.stack(np.meshgrid(*[org[a] + sp[a] * np.arange(lo[a], hi[a]) for a in range(3)], indexing="ij"), -1)
        inside = (((grid - h.center) @ h.axes.T / h.radii) ** 2).sum(-1) <= 1.0
        box = hu[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        box[inside & (box > -50) & (box < 150)] += 310.0
    if full:
        return np.rint(hu), tuple(case.spacing), tuple(case.origin)
    z = hu.shape[0]
    hu = hu.reshape(z, 256, 2, 256, 2).mean(axis=(2, 4))
    return np.rint(hu), (case.spacing[0], case.spacing[1] * 2, case.spacing[2] * 2), tuple(case.origin)


# --- the node ------------------------------------------------------------------------------------------------

def node_env(password: str = PASSWORD, user: str = USER) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAC_ORTHANC_")}
    env.update({"CAC_ORTHANC_USER": user, "CAC_ORTHANC_PASSWORD": password, "PYTHONUNBUFFERED": "1",
                "COLUMNS": "300"})
    return env


def node_cmd(url: str, state: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "cacnet", "orthanc", "--url", url, "--state", str(state), *args]


def run_node(url: str, state: Path, *args: str, env: Optional[dict] = None, timeout: float = 300):
    return subprocess.run(node_cmd(url, state, *args), env=env or node_env(), capture_output=True, text=True,
                          timeout=timeout)


def start_node(url: str, state: Path, *args: str, env: Optional[dict] = None) -> subprocess.Popen:
    out = open(Path(state).parent / f"{Path(state).name}.out", "ab")
    return subprocess.Popen(node_cmd(url, state, *args), env=env or node_env(), stdout=out, stderr=subprocess.STDOUT)


def wait_for_log(state: Path, predicate, timeout: float = 120.0, proc: Optional[subprocess.Popen] = None) -> str:
    """Wait until ``predicate(text of STATE/node.log)`` holds; the text."""
    deadline = time.monotonic() + timeout
    log = Path(state) / "node.log"
    while True:
        text = log.read_text() if log.exists() else ""
        if predicate(text):
            return text
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the node exited ({proc.returncode}) before the log said so:\n{text[-3000:]}")
        assert time.monotonic() < deadline, f"not in the node's log after {timeout} s:\n{text[-3000:]}"
        time.sleep(0.1)


def sr_total(data: bytes) -> float:
    """The total Agatston score of our TID 1500 SR (the group "Coronary arteries, total")."""
    import io

    ds = pydicom.dcmread(io.BytesIO(data))

    def walk(items, group=None):
        for it in items:
            name = it.ConceptNameCodeSequence[0].CodeMeaning if "ConceptNameCodeSequence" in it else ""
            if it.ValueType == "TEXT" and name == "Tracking Identifier":
                group = it.TextValue
            if (it.ValueType == "NUM" and it.ConceptNameCodeSequence[0].CodeValue == "450360000"
                    and group == "Coronary arteries, total"):
                return float(it.MeasuredValueSequence[0].NumericValue)
            if "ContentSequence" in it:
                inner = [c for c in it.ContentSequence]
                tid = next((c.TextValue for c in inner if c.ValueType == "TEXT" and
                            c.ConceptNameCodeSequence[0].CodeMeaning == "Tracking Identifier"), group)
                found = walk(inner, tid)
                if found is not None:
                    return found
        return None

    total = walk(ds.ContentSequence)
    assert total is not None, "no total Agatston score in the SR"
    return total


def sr_texts(data: bytes) -> dict[str, str]:
    """TEXT items of an SR (concept meaning -> value), at any depth."""
    import io

    ds = pydicom.dcmread(io.BytesIO(data))
    out: dict[str, str] = {}

    def walk(items):
        for it in items:
            if it.ValueType == "TEXT":
                out[it.ConceptNameCodeSequence[0].CodeMeaning] = str(it.TextValue)
            if "ContentSequence" in it:
                walk(it.ContentSequence)

    walk(ds.ContentSequence)
    return out


class CountingProxy:
    """A TCP forwarder in front of Orthanc that counts the connections made through it (one per request).

    With ``tls=(certificate, key)`` it terminates TLS, as nginx in front of Orthanc does (docs/deployment.md:
    the HTTPS of Debian 12's Orthanc 1.10.1 itself drops the connection and exits on the first request).
    """

    def __init__(self, target_port: int, tls: Optional[tuple[Path, Path]] = None) -> None:
        self.target = target_port
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.ssl = None
        if tls is not None:
            import ssl

            self.ssl = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.ssl.load_cert_chain(str(tls[0]), str(tls[1]))
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._connect, args=(client,), daemon=True).start()

    def _connect(self, client: socket.socket) -> None:
        try:
            if self.ssl is not None:
                client = self.ssl.wrap_socket(client, server_side=True)  # the handshake: fails for an untrusting client
            upstream = socket.create_connection(("127.0.0.1", self.target))
        except OSError:
            client.close()
            return
        for a, b in ((client, upstream), (upstream, client)):
            threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while True:
                data = a.recv(65536)
                if not data:
                    break
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.sock.close()


# --- OHIF -----------------------------------------------------------------------------------------------------

OHIF_CONFIG = """window.config = {
  routerBasename: '/', extensions: [], modes: [], showStudyList: true, maxNumberOfWebWorkers: 2,
  showWarningMessageForCrossOrigin: false, showCPUFallbackMessage: false, showLoadingIndicator: true,
  investigationalUseDialog: { option: 'never' },
  defaultDataSourceName: 'orthanc',
  dataSources: [{
    namespace: '@ohif/extension-default.dataSourcesModule.dicomweb', sourceName: 'orthanc',
    configuration: { friendlyName: 'Orthanc', name: 'orthanc', wadoUriRoot: '/wado', qidoRoot: '/dicom-web',
      wadoRoot: '/dicom-web', qidoSupportsIncludeField: false, imageRendering: 'wadors',
      thumbnailRendering: 'wadors', enableStudyLazyLoad: true, supportsFuzzyMatching: false,
      supportsWildcard: true, omitQuotationForMultipartRequest: true, bulkDataURI: { enabled: true } },
  }],
};
"""


class OhifServer:
    """The built OHIF viewer (``dist``) served on a free localhost port, with ``/dicom-web`` and ``/wado``
    proxied to Orthanc's DICOMweb plugin (the proxy adds Orthanc's credentials: the browser holds none).
    ``app-config.js`` is :data:`OHIF_CONFIG` (one DICOMweb data source, Orthanc); unknown paths serve
    ``index.html`` (OHIF routes in the browser)."""

    def __init__(self, dist: Path, orthanc: OrthancServer) -> None:
        from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

        assert (Path(dist) / "index.html").is_file(), (
            f"the OHIF viewer is not in {dist}: python tests/cacnet/fetch_ohif.py fetches it (.ci/run does)")
        auth = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        root = str(dist)

        class Handler(SimpleHTTPRequestHandler):
            def __init__(self, *a, **k):
                super().__init__(*a, directory=root, **k)

            def log_message(self, *a):
                pass

            def _send(self, code: int, body: bytes, ctype: Optional[str] = None) -> None:
                self.send_response(code)
                if ctype:
                    self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                path = self.path.split("?")[0]
                if path.startswith(("/dicom-web", "/wado")):
                    req = urllib.request.Request(orthanc.url + self.path, headers={
                        "Authorization": auth, "Accept": self.headers.get("Accept", "*/*")})
                    try:
                        with urllib.request.urlopen(req, timeout=60) as resp:
                            self._send(resp.status, resp.read(), resp.headers.get("Content-Type"))
                    except urllib.error.HTTPError as exc:
                        self._send(exc.code, exc.read(), exc.headers.get("Content-Type"))
                    return
                if path == "/app-config.js":
                    self._send(200, OHIF_CONFIG.encode(), "application/javascript")
                    return
                if not (Path(root) / path.lstrip("/")).is_file():
                    self.path = "/index.html"
                super().do_GET()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
