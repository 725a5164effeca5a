"""C-STORE of the DICOM outputs (issue 17): to a real Orthanc started here, and the failures a PACS user
meets (nothing listening, unknown host, association rejected, store refused), each a clear error and exit 6."""

from __future__ import annotations

import io
import shutil
import urllib.parse
import urllib.request
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE, evt
from pynetdicom.sop_class import Comprehensive3DSRStorage, SegmentationStorage
from typer.testing import CliRunner

from cacnet.cli import EXIT_SEND, app
from cacnet.errors import SendError, UsageError
from cacnet.outputs.send import DicomNode, parse_node, send_files

from ..conftest import make_weights
from ..dicom_out_helpers import (PATIENT, banded_weights, free_port, phantom_hu, read_header, rest, running_orthanc,
                                write_ct_series)

runner = CliRunner()


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    with running_orthanc(tmp_path_factory.mktemp("orthanc")) as node:
        yield node


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    return banded_weights(tmp_path_factory.mktemp("banded"))


@pytest.fixture(scope="module")
def written(tmp_path_factory, weights):
    """A synthetic series scored with --dicom: (series folder, output folder)."""
    base = tmp_path_factory.mktemp("written")
    write_ct_series(base / "series", phantom_hu(), "PRI")
    r = runner.invoke(app, ["score", str(base / "series"), "-o", str(base / "out"), "--dicom", "--force",
                            "--weights", str(weights)])
    assert r.exit_code == 0, r.output
    return base / "series", base / "out"


def _lookup(http: str, uid: str) -> dict:
    """The Orthanc instance with SOP Instance UID ``uid``: its simplified tags."""
    (hit,) = [h for h in rest(f"{http}/tools/lookup", uid.encode()) if h["Type"] == "Instance"]
    return rest(f"{http}/instances/{hit['ID']}/tags?simplify")


def test_cli_sends_seg_and_sr_into_the_source_study(orthanc, weights, tmp_path):
    series = tmp_path / "series"
    sources = write_ct_series(series, phantom_hu(), "LAS")
    src = read_header(sources[0])
    node = f"127.0.0.1:{orthanc['dicom_port']}:{orthanc['aet']}"
    # the CT itself first, as the scanner would have: the study then holds the CT, the SEG and the SR
    assert len(send_files(sources, parse_node(node))) == len(sources)
    r = runner.invoke(app, ["score", str(series), "-o", str(tmp_path / "out"), "--dicom", "--send", node, "--force",
                            "--weights", str(weights)])
    assert r.exit_code == 0, r.output
    assert "sent 2 DICOM object(s)" in r.output
    seg = read_header(tmp_path / "out" / "series_seg.dcm")
    sr = read_header(tmp_path / "out" / "series_sr.dcm")
    http = orthanc["http"]
    for ds, modality in ((seg, "SEG"), (sr, "SR")):
        tags = _lookup(http, str(ds.SOPInstanceUID))
        assert tags["StudyInstanceUID"] == src.StudyInstanceUID
        assert tags["SeriesInstanceUID"] == ds.SeriesInstanceUID != src.SeriesInstanceUID
        assert tags["Modality"] == modality
        assert tags["PatientID"] == PATIENT["PatientID"] and tags["PatientName"] == PATIENT["PatientName"]
    (study,) = [s for s in rest(f"{http}/studies?expand")
                if s["MainDicomTags"]["StudyInstanceUID"] == src.StudyInstanceUID]
    modalities = sorted(rest(f"{http}/series/{s}")["MainDicomTags"]["Modality"] for s in study["Series"])
    assert modalities == ["CT", "SEG", "SR"]
    # what Orthanc stored is what we wrote (the data set; Orthanc writes its own file meta information)
    (hit,) = [h for h in rest(f"{http}/tools/lookup", str(seg.SOPInstanceUID).encode()) if h["Type"] == "Instance"]
    with urllib.request.urlopen(f"{http}/instances/{hit['ID']}/file", timeout=10) as fh:
        assert pydicom.dcmread(io.BytesIO(fh.read())) == pydicom.dcmread(tmp_path / "out" / "series_seg.dcm")
    # sending again replaces (same UIDs): no duplicate instances
    r = runner.invoke(app, ["score", str(series), "-o", str(tmp_path / "out2"), "--dicom", "--send", node, "--force",
                            "--weights", str(weights)])
    assert r.exit_code == 0, r.output
    parent = rest(f"{http}/instances/{hit['ID']}")["ParentSeries"]
    assert len(rest(f"{http}/series/{parent}")["Instances"]) == 1


def test_real_qrm_slices_round_trip(orthanc, tmp_path):
    """The real Toshiba slices (gzipped, implicit VR, private tags): scored, written, sent, found in the study."""
    qrm = tmp_path / "qrm"
    qrm.mkdir()
    for f in sorted((Path(__file__).resolve().parents[2] / "data" / "qrm-canon-large-rep1").glob("*.dcm.gz"))[:7]:
        shutil.copy(f, qrm / f.name)
    toy = make_weights(tmp_path / "w", thresholds=(400, 400, 400))  # calls calcium the inserts and bone
    r = runner.invoke(app, ["score", str(qrm), "-o", str(tmp_path / "out"), "--dicom", "--force", "--weights", str(toy),
                            "--send", f"localhost:{orthanc['dicom_port']}:{orthanc['aet']}"])
    assert r.exit_code == 0, r.output
    for kind, modality in (("seg", "SEG"), ("sr", "SR")):
        ds = read_header(tmp_path / "out" / f"qrm_{kind}.dcm")
        tags = _lookup(orthanc["http"], str(ds.SOPInstanceUID))
        assert tags["StudyInstanceUID"] == "1.2.392.200036.9116.2.6.1.3268.2051117512.1455183481.419226"
        assert tags["Modality"] == modality and tags["PatientID"] == "TOSHIBA" and tags["AccessionNumber"] == "458"


def test_unreachable_node_exits_6_and_keeps_the_files(weights, tmp_path):
    port = free_port()  # nothing listens there
    write_ct_series(tmp_path / "series", phantom_hu(), "LPS")
    r = runner.invoke(app, ["score", str(tmp_path / "series"), "-o", str(tmp_path / "out"), "--dicom", "--force",
                            "--send", f"127.0.0.1:{port}", "--weights", str(weights)], env={"COLUMNS": "300"})
    assert r.exit_code == EXIT_SEND == 6, r.output
    text = " ".join(r.output.split())
    assert "connection refused" in text and "The DICOM files stay in" in text
    assert {p.name for p in (tmp_path / "out").iterdir()} >= {"series_seg.dcm", "series_sr.dcm", "series.json"}


def test_unknown_host(written):
    _, out = written
    with pytest.raises(SendError, match="cannot be resolved"):
        send_files([out / "series_sr.dcm"], DicomNode("no-such-host.invalid", 104), timeout=5)


def _scp(handler=None, **settings):
    ae = AE(ae_title="RIGHT")
    for key, value in settings.items():
        setattr(ae, key, value)
    ae.add_supported_context(SegmentationStorage)
    ae.add_supported_context(Comprehensive3DSRStorage)
    port = free_port()
    handlers = [(evt.EVT_C_STORE, handler)] if handler else []
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=handlers)
    return server, port


def test_rejected_association(written):
    _, out = written
    server, port = _scp(require_called_aet=True)
    try:
        with pytest.raises(SendError, match=r"rejected the association from calling AE title 'CACTOOLKIT' \(.*"
                                            r"Called AE title not recognised"):
            send_files([out / "series_sr.dcm"], DicomNode("127.0.0.1", port, "WRONG"), timeout=5)
    finally:
        server.shutdown()


def test_store_refused_with_a_status(written):
    _, out = written
    server, port = _scp(handler=lambda event: 0xA700)  # out of resources
    try:
        with pytest.raises(SendError, match=r"refused to store .*series_seg.dcm: status 0xA700 \(Failure\); "
                                            r"0 of 2 files were stored"):
            send_files([out / "series_seg.dcm", out / "series_sr.dcm"], DicomNode("127.0.0.1", port, "RIGHT"),
                       timeout=5)
    finally:
        server.shutdown()
    assert (out / "series_seg.dcm").exists()


def test_stores_in_one_association_with_success(written):
    _, out = written
    got = []

    def handle(event):
        got.append(str(event.dataset.SOPInstanceUID))
        return 0x0000

    server, port = _scp(handler=handle)
    try:
        sent = send_files([out / "series_seg.dcm", out / "series_sr.dcm"], DicomNode("127.0.0.1", port, "RIGHT"))
    finally:
        server.shutdown()
    assert sent == got == [str(pydicom.dcmread(out / f"series_{k}.dcm").SOPInstanceUID) for k in ("seg", "sr")]


@pytest.mark.parametrize("text, node", [
    ("pacs.example.org:104", DicomNode("pacs.example.org", 104, "ANY-SCP")),
    ("10.0.0.5:11112:PACS_01", DicomNode("10.0.0.5", 11112, "PACS_01")),
    ("[::1]:4242:ORTHANC", DicomNode("::1", 4242, "ORTHANC")),
])
def test_parse_node(text, node):
    assert parse_node(text) == node
    assert str(parse_node("[::1]:4242:ORTHANC")) == "[::1]:4242 (AE title ORTHANC)"


@pytest.mark.parametrize("text", ["pacs", "pacs:", "pacs:abc", "pacs:70000", "pacs:104:", "pacs:104:" + "A" * 17,
                                  "::1:104"])
def test_parse_node_errors(text):
    with pytest.raises(UsageError):
        parse_node(text)


def test_orthanc_url_is_local(orthanc):
    """The test Orthanc listens on localhost only (RemoteAccessAllowed false)."""
    assert urllib.parse.urlparse(orthanc["http"]).hostname == "127.0.0.1"
    assert rest(f"{orthanc['http']}/system")["DicomAet"] == "ORTHANC"
