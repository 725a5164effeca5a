"""`cac orthanc` (issue 28): the node next to a real Orthanc (Debian package, free localhost ports, a user and
password, StableAge 1 s), run as a process the way cron or systemd runs it.

- happy path: a CT series sent by C-STORE -> `cac orthanc --once` -> SEG + SR in the study, the SR's total equal to
  `cac score` on the same files; the HTML report attached and the status in the series' metadata; dcmtk's
  dsrdump prints the SR; a second run (and a run with a lost state folder) adds no instance;
- bad input: MR, localizer, sagittal, a foreign SR, contrast CT, a corrupt instance: each skipped or refused with
  its reason (refused: a "not scored" SR in the study and metadata), the good series beside them scored;
- a series completed after Orthanc first called it stable: scored again, the earlier objects replaced;
- the node killed (SIGKILL) mid-series, then rerun: every series scored once, no duplicate;
- Orthanc stopped mid-run and started again: the node backs off, recovers by itself and goes on;
- credentials: wrong ones give one clear error and exit 6 after a single request; none in the URL; secrets never
  in logs, state, results or the process list; TLS verified (a self-signed Orthanc refused without --ca-file).

The tests fail (never skip) without Orthanc or dcmtk (.ci/run installs them). They score with a copy of the
shipped weights (copied once, so that weights retrained meanwhile cannot make two runs differ).
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from cacnet.errors import UsageError
from cacnet.node.client import Credentials, OrthancClient, check_url, load_credentials
from cacnet.node.runner import classify_series, fingerprint
from cacnet.outputs.send import parse_node, send_files

from ..orthanc_helpers import (PASSWORD, USER, CountingProxy, OrthancServer, node_env, phantom_volume, run_node,
                              sr_texts, sr_total, start_node, wait_for_log, write_ct)

pytestmark = pytest.mark.slow


# --- fixtures --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    from cacnet.ensemble import DEFAULT_WEIGHTS

    return Path(shutil.copytree(DEFAULT_WEIGHTS, tmp_path_factory.mktemp("weights") / "weights"))


@pytest.fixture(scope="module")
def volumes():
    return {"normal": phantom_volume(11, "D"), "contrast": phantom_volume(12, "B", contrast=True)}


@pytest.fixture(scope="module")
def series(tmp_path_factory, volumes, weights):
    """The calcium-score series every test uploads (same files, same UIDs, each test its own Orthanc), and
    `cac score --json` of it: (folder, series UID, files, result)."""
    folder = tmp_path_factory.mktemp("ct") / "ct"
    uid, files = write_ct(folder, *volumes["normal"])
    r = subprocess.run([sys.executable, "-m", "cacnet", "score", str(folder), "--json", "--weights", str(weights)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["agatston"] > 10  # calcium in the arteries: a SEG is written
    return folder, uid, files, result


@pytest.fixture()
def orthanc(tmp_path):
    server = OrthancServer(tmp_path / "orthanc").start()
    yield server
    server.stop(graceful=False)  # its storage is thrown away


def _copies(tmp_path: Path, volume, n: int, **kw) -> list[tuple[str, list[Path]]]:
    """``n`` more series of one volume (new UIDs, each its own study)."""
    return [write_ct(tmp_path / f"copy{i}", *volume, patient_id=f"CAC-NODE-{i + 2}", **kw) for i in range(n)]


def _secrets_nowhere(*places: Path, texts: tuple = ()) -> None:
    """The password is in none of the files under ``places`` (logs, state database, results) nor in ``texts``."""
    needle = PASSWORD.encode()
    for place in places:
        for f in [place] if place.is_file() else [p for p in place.rglob("*") if p.is_file()]:
            assert needle not in f.read_bytes(), f"the password is in {f}"
    for t in texts:
        assert PASSWORD not in t


def _status(state: Path) -> dict:
    r = subprocess.run([sys.executable, "-m", "cacnet", "orthanc", "status", "--state", str(state), "--json"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def _by_uid(status: dict) -> dict:
    return {s["series_uid"]: s for s in status["series"]}


# --- happy path, idempotence, dsrdump --------------------------------------------------------------------------

def test_scored_series_gets_seg_and_sr_in_its_study_equal_to_cac_score(orthanc, series, weights, tmp_path):
    folder, uid, files, result = series
    # the scanner sends the series by C-STORE
    assert len(send_files(files, parse_node(f"127.0.0.1:{orthanc.dicom_port}:ORTHANC"))) == len(files)
    (sid,) = orthanc.wait_stable([uid])
    state = tmp_path / "state"
    r = run_node(orthanc.url, state, "--once", "--weights", str(weights))
    assert r.returncode == 0, r.stderr

    ours = orthanc.ours(uid)
    assert sorted(ours) == ["SEG", "SR"] and len(ours["SEG"]) == len(ours["SR"]) == 1
    sr_bytes = orthanc.instance_file(ours["SR"][0])
    assert sr_total(sr_bytes) == pytest.approx(result["agatston"], rel=1e-9)  # the same score as `cac score`
    ct = pydicom.dcmread(files[0], stop_before_pixels=True)
    seg = pydicom.dcmread(io.BytesIO(orthanc.instance_file(ours["SEG"][0])))
    sr = pydicom.dcmread(io.BytesIO(sr_bytes))
    for ds in (seg, sr):  # new series of the same study and patient
        assert ds.StudyInstanceUID == ct.StudyInstanceUID and ds.PatientID == ct.PatientID
        assert ds.SeriesInstanceUID != ct.SeriesInstanceUID
    assert seg.FrameOfReferenceUID == ct.FrameOfReferenceUID
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == uid
    assert sorted(str(s.SegmentLabel) for s in seg.SegmentSequence) == sorted(
        f"{a} calcium" for a, v in result["arteries"].items() if v["agatston"] > 0)
    study = orthanc.get(f"/series/{sid}")["ParentStudy"]
    assert sorted(s["MainDicomTags"]["Modality"] for s in orthanc.get(f"/studies/{study}/series")) == ["CT", "SEG", "SR"]

    # the HTML report as an attachment of the CT series, and the status in its metadata
    html = orthanc.request("GET", f"/series/{sid}/attachments/4210/data")
    assert html == (state / "results" / sid / f"{sid}.html").read_bytes() and b"<html" in html[:400].lower()
    meta = orthanc.get(f"/series/{sid}/metadata?expand")
    assert meta["4200"].startswith(f"scored: Agatston {result['agatston']:.2f} ({result['category']})")
    assert json.loads(meta["4201"])["sr"] == ours["SR"][0]

    # a second reader of our SR: dcmtk's dsrdump prints its tree, the total where TID 1500 puts it
    (tmp_path / "sr.dcm").write_bytes(sr_bytes)
    dump = subprocess.run(["dsrdump", str(tmp_path / "sr.dcm")], capture_output=True, text=True, timeout=60)
    assert dump.returncode == 0 and "rror" not in dump.stderr, dump.stderr
    group = dump.stdout.split('"Tracking Identifier")="Coronary arteries, total"')[1]
    value = re.search(r'NUM:\(,,"Coronary artery calcium score"\)="([0-9.eE+-]+)"', group).group(1)
    assert float(value) == pytest.approx(result["agatston"], rel=1e-9)
    assert 'CONTAINER:(,,"Imaging Measurement Report")' in dump.stdout and '"Agatston scoring method"' in group

    status = _status(state)
    assert status["counts"] == {"pending": 0, "scored": 1, "refused": 0, "skipped": 0, "failed": 0}
    assert _by_uid(status)[uid]["agatston"] == pytest.approx(result["agatston"])
    text = subprocess.run([sys.executable, "-m", "cacnet", "orthanc", "status", "--state", str(state)],
                          capture_output=True, text=True, timeout=60).stdout
    assert "pending 0, scored 1, refused 0, skipped 0, failed 0" in text and uid in text

    # idempotence: a rerun (after our own SEG and SR became stable too) adds nothing and scores nothing
    orthanc.wait_stable([seg.SeriesInstanceUID, sr.SeriesInstanceUID])
    n = orthanc.n_instances()
    assert n == len(files) + 2
    r2 = run_node(orthanc.url, state, "--once", "--weights", str(weights))
    assert r2.returncode == 0, r2.stderr
    assert "scoring" not in r2.stderr and "0 scored" in r2.stderr
    assert orthanc.n_instances() == n and orthanc.ours(uid) == ours
    # a node that lost its state scores the series again: same UIDs, so Orthanc keeps one copy of each
    r3 = run_node(orthanc.url, tmp_path / "fresh", "--once", "--weights", str(weights))
    assert r3.returncode == 0 and "1 scored" in r3.stderr, r3.stderr
    assert orthanc.n_instances() == n and orthanc.ours(uid) == ours
    # the study deleted and the same CT sent again: unchanged, but its results are gone, so they come back
    orthanc.request("DELETE", f"/studies/{study}")
    orthanc.upload(files)
    orthanc.wait_stable([uid])
    time.sleep(1.5)  # Orthanc logs the StableSeries change right after IsStable turns true
    r4 = run_node(orthanc.url, state, "--once", "--weights", str(weights))
    assert r4.returncode == 0 and "no longer in Orthanc" in r4.stderr and "1 scored" in r4.stderr, r4.stderr
    assert orthanc.n_instances() == n and orthanc.ours(uid) == ours


# --- bad input -------------------------------------------------------------------------------------------------

def _foreign_sr(folder: Path) -> tuple[str, Path]:
    """A Basic Text SR from some other system (a dose report, say): a series without images."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.88.11", generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientName, ds.PatientID, ds.StudyInstanceUID, ds.SeriesInstanceUID = "Sr^Other", "SR-1", generate_uid(), \
        generate_uid()
    ds.Modality, ds.Manufacturer, ds.SeriesNumber, ds.InstanceNumber = "SR", "Dose Corp", 997, 1
    ds.ValueType, ds.ContinuityOfContent = "CONTAINER", "SEPARATE"
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = "113701", "DCM", "X-Ray Radiation Dose Report"
    ds.ConceptNameCodeSequence = [item]
    folder.mkdir(parents=True)
    ds.save_as(folder / "sr.dcm", enforce_file_format=True)
    return str(ds.SeriesInstanceUID), folder / "sr.dcm"


def test_bad_input_is_skipped_or_refused_with_its_reason_and_none_stops_the_node(orthanc, series, volumes, weights,
                                                                                tmp_path):
    small = np.full((5, 64, 64), 40.0)
    uploads = {
        "mr": write_ct(tmp_path / "mr", small, (5.0, 3.0, 3.0), (0.0, -96.0, -96.0), modality="MR"),
        "localizer": write_ct(tmp_path / "loc", small[:1], (1.0, 3.0, 3.0), (0.0, -96.0, -96.0),
                              image_type=("ORIGINAL", "PRIMARY", "LOCALIZER")),
        "sagittal": write_ct(tmp_path / "sag", small, (3.0, 3.0, 3.0), (0.0, -96.0, -96.0),
                             orientation=(0, 1, 0, 0, 0, -1)),
        "contrast": write_ct(tmp_path / "cta", *volumes["contrast"], description="CTA coronary"),
    }
    sr_uid, sr_file = _foreign_sr(tmp_path / "sr")
    uploads["sr"] = (sr_uid, [sr_file])
    cut_uid, cut_files = write_ct(tmp_path / "cut", *volumes["normal"], patient_id="CUT-1")
    ds = pydicom.dcmread(cut_files[20])
    ds.PixelData = ds.PixelData[:1000]  # a corrupt instance: its header parses (Orthanc stores it), pixels cut short
    ds.save_as(cut_files[20])
    uploads["corrupt"] = (cut_uid, cut_files)
    _, uid, files, result = series
    uploads["good"] = (uid, files)
    for _, paths in uploads.values():
        orthanc.upload(paths)
    orthanc.wait_stable([u for u, _ in uploads.values()])

    state = tmp_path / "state"
    r = run_node(orthanc.url, state, "--once", "--weights", str(weights), "--no-report")
    assert r.returncode == 0, r.stderr  # refusals are outcomes, not failures
    rec = _by_uid(_status(state))
    assert rec[uploads["mr"][0]]["status"] == "skipped" and rec[uploads["mr"][0]]["reason"] == "not CT (modality MR)"
    assert rec[sr_uid]["reason"] == "not CT (modality SR)"
    assert rec[uploads["localizer"][0]]["status"] == "skipped" and "localizer" in rec[uploads["localizer"][0]]["reason"]
    assert rec[uploads["sagittal"][0]]["status"] == "skipped" and "not axial: sagittal" in rec[uploads["sagittal"][0]]["reason"]
    for key in ("mr", "localizer", "sagittal", "sr"):  # nothing of ours in their studies
        assert orthanc.ours(uploads[key][0]) == {}, key
    # refused: the reason in the node's state and log, in a "not scored" SR in the study and in the metadata
    for key, words in (("contrast", ("contrast-enhanced", "blood pool")), ("corrupt", ("corrupt", "1000 bytes"))):
        suid = uploads[key][0]
        assert rec[suid]["status"] == "refused" and all(w in rec[suid]["reason"] for w in words), rec[suid]
        assert str(tmp_path) not in rec[suid]["reason"]  # about the series, not the node's download folder
        found = orthanc.ours(suid)
        assert list(found) == ["SR"] and len(found["SR"]) == 1
        sr = orthanc.instance_file(found["SR"][0])
        assert sr_texts(sr)["Calcium scoring not performed"] == rec[suid]["reason"]
        assert pydicom.dcmread(io.BytesIO(sr)).SeriesDescription == "Coronary calcium not scored (cac-toolkit)"
        meta = orthanc.get(f"/series/{orthanc.series_id(suid)}/metadata?expand")
        assert meta["4200"] == f"refused: {rec[suid]['reason']}"
        assert f"refused series {suid}" in r.stderr and words[0] in r.stderr
    if "corrupt" in rec[cut_uid]["reason"]:
        assert "instance " in rec[cut_uid]["reason"]  # names the Orthanc instance
    assert rec[uid]["status"] == "scored" and rec[uid]["agatston"] == pytest.approx(result["agatston"])
    assert sorted(orthanc.ours(uid)) == ["SEG", "SR"]
    assert "1 scored, 2 refused, 4 skipped, 0 failed" in r.stderr


# --- a series still arriving when Orthanc first called it stable -------------------------------------------------

def test_series_completed_after_it_was_first_stable_is_scored_again_and_replaced(orthanc, series, weights, tmp_path):
    _, uid, files, result = series
    orthanc.upload(files[:22])  # the first half: Orthanc calls it stable, then the rest arrives
    orthanc.wait_stable([uid])
    state = tmp_path / "state"
    r1 = run_node(orthanc.url, state, "--once", "--weights", str(weights), "--no-report")
    assert r1.returncode == 0, r1.stderr
    first = _by_uid(_status(state))[uid]
    assert first["status"] in ("scored", "refused") and first["n_instances"] == 22
    first_objects = [o["sop_instance_uid"] for o in first["outputs"]]
    assert first_objects and sum(len(v) for v in orthanc.ours(uid).values()) == len(first_objects)

    orthanc.upload(files[22:])
    sid = orthanc.series_id(uid)
    deadline = time.monotonic() + 30
    while len(orthanc.get(f"/series/{sid}")["Instances"]) < len(files) or not orthanc.get(f"/series/{sid}")["IsStable"]:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    time.sleep(0.5)
    r2 = run_node(orthanc.url, state, "--once", "--weights", str(weights), "--no-report")
    assert r2.returncode == 0, r2.stderr
    assert "changed since it was" in r2.stderr and "(22 -> 43 instances)" in r2.stderr
    second = _by_uid(_status(state))[uid]
    assert second["status"] == "scored" and second["n_instances"] == len(files)
    ours = orthanc.ours(uid)
    assert sorted(ours) == ["SEG", "SR"] and len(ours["SEG"]) == len(ours["SR"]) == 1  # one result, the new one
    assert not set(first_objects) & {*ours["SEG"], *ours["SR"]}
    assert sr_total(orthanc.instance_file(ours["SR"][0])) == pytest.approx(result["agatston"], rel=1e-9)
    assert orthanc.n_instances() == len(files) + 2


# --- faults ----------------------------------------------------------------------------------------------------

def test_node_killed_mid_series_then_rerun_loses_nothing_and_duplicates_nothing(orthanc, series, volumes, weights,
                                                                                 tmp_path):
    _, uid, files, result = series
    uploads = [(uid, files), *_copies(tmp_path, volumes["normal"], 2)]
    for _, paths in uploads:
        orthanc.upload(paths)
    orthanc.wait_stable([u for u, _ in uploads])
    state = tmp_path / "state"
    node = start_node(orthanc.url, state, "--poll", "0.2", "--weights", str(weights), "--no-report")
    try:
        text = wait_for_log(state, lambda t: t.count("scoring series") >= 2, proc=node)
        cmdline = Path(f"/proc/{node.pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        assert USER not in cmdline and PASSWORD not in cmdline  # nothing secret in ps
        node.send_signal(signal.SIGKILL)
        node.wait(timeout=30)
    finally:
        if node.poll() is None:
            node.kill()
    done_before = [u for u, _ in uploads if f"scored series {u}" in text]
    assert len(done_before) == 1
    status = _status(state)  # the series being scored stays queued
    assert status["counts"]["scored"] == 1 and status["counts"]["pending"] == 2

    r = run_node(orthanc.url, state, "--once", "--weights", str(weights), "--no-report")
    assert r.returncode == 0, r.stderr
    assert "2 scored" in r.stderr and f"scoring series {done_before[0]}" not in r.stderr  # not scored again
    status = _status(state)
    assert status["counts"] == {"pending": 0, "scored": 3, "refused": 0, "skipped": 0, "failed": 0}
    for u, paths in uploads:
        ours = orthanc.ours(u)
        assert sorted(ours) == ["SEG", "SR"] and len(ours["SEG"]) == len(ours["SR"]) == 1, (u, ours)
        assert sr_total(orthanc.instance_file(ours["SR"][0])) == pytest.approx(result["agatston"], rel=1e-9)
    assert orthanc.n_instances() == sum(len(p) for _, p in uploads) + 2 * len(uploads)
    out = (tmp_path / "state.out").read_text()
    _secrets_nowhere(state, texts=(r.stdout, r.stderr, out))


def test_orthanc_stopped_mid_run_node_backs_off_and_recovers_by_itself(orthanc, series, volumes, weights, tmp_path):
    _, uid, files, result = series
    (uid2, files2), (uid3, files3) = _copies(tmp_path, volumes["normal"], 2)
    orthanc.upload(files)
    orthanc.upload(files2)
    orthanc.wait_stable([uid, uid2])
    state = tmp_path / "state"
    node = start_node(orthanc.url, state, "--poll", "0.2", "--max-backoff", "4", "--weights", str(weights),
                      "--no-report")
    try:
        wait_for_log(state, lambda t: "scoring series" in t, proc=node)
        orthanc.stop()  # mid-run: the node is scoring, and finds Orthanc gone when it stores
        text = wait_for_log(state, lambda t: "Retry 3 in" in t, proc=node)
        delays = [float(d) for d in re.findall(r"Retry \d+ in ([0-9.]+) s", text)]
        assert delays[:3] == sorted(delays[:3]) and delays[0] < 1.5 and delays[2] > 3.0  # 1, 2, 4 s (+-10 %)
        assert node.poll() is None  # waiting, not dead
        orthanc.start()
        wait_for_log(state, lambda t: t.count("scored series") >= 2 and "Orthanc is back" in t, proc=node)
        orthanc.upload(files3)  # and it goes on following the feed
        wait_for_log(state, lambda t: f"scored series {uid3}" in t, proc=node, timeout=120)
        node.send_signal(signal.SIGTERM)
        assert node.wait(timeout=30) == 0
    finally:
        if node.poll() is None:
            node.kill()
    status = _status(state)
    assert status["counts"]["scored"] == 3 and status["counts"]["failed"] == 0 and status["counts"]["pending"] == 0
    for u in (uid, uid2, uid3):
        ours = orthanc.ours(u)
        assert sorted(ours) == ["SEG", "SR"] and len(ours["SEG"]) == len(ours["SR"]) == 1
    assert orthanc.n_instances() == len(files) + len(files2) + len(files3) + 6


# --- credentials and TLS ---------------------------------------------------------------------------------------

def test_wrong_credentials_one_clear_error_no_retry_storm(orthanc, tmp_path):
    proxy = CountingProxy(orthanc.http_port)
    try:
        url = f"http://127.0.0.1:{proxy.port}"
        start = time.monotonic()
        r = run_node(url, tmp_path / "state", env=node_env(password="not-the-password"), timeout=60)  # no --once
        assert r.returncode == 6, r.stderr
        assert time.monotonic() - start < 20 and proxy.connections == 1  # one request, then it stops
        errors = [ln for ln in r.stderr.splitlines() if " ERROR " in ln]
        assert len(errors) == 1 and "HTTP 401 Unauthorized" in errors[0] and "Not retrying" in errors[0]
        assert f"user '{USER}'" in errors[0] and "not-the-password" not in r.stderr + r.stdout
        assert "not-the-password" not in (tmp_path / "state" / "node.log").read_text()
        # no credentials at all: the same, and it says where they go
        r = run_node(url, tmp_path / "state2", env={k: v for k, v in node_env().items()
                                                    if not k.startswith("CAC_ORTHANC_")}, timeout=60)
        assert r.returncode == 6 and "without credentials (set CAC_ORTHANC_USER and CAC_ORTHANC_PASSWORD" in r.stderr
        assert proxy.connections == 2
    finally:
        proxy.close()
    # credentials in the URL (visible in ps) are refused before anything is sent
    r = run_node(f"http://{USER}:{PASSWORD}@127.0.0.1:{orthanc.http_port}", tmp_path / "state3", timeout=60)
    assert r.returncode == 2 and "must not hold credentials" in r.stderr and PASSWORD not in r.stderr + r.stdout
    # a credentials file works (and a malformed one is refused without showing it)
    creds = tmp_path / "orthanc.credentials"
    creds.write_text(f"# the node's Orthanc user\n{USER}:{PASSWORD}\n")
    env = {k: v for k, v in node_env().items() if not k.startswith("CAC_ORTHANC_")}
    r = run_node(orthanc.url, tmp_path / "state4", "--once", "--credentials", str(creds), env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    creds.write_text(PASSWORD)
    r = run_node(orthanc.url, tmp_path / "state5", "--once", "--credentials", str(creds), env=env, timeout=60)
    assert r.returncode == 2 and "user:password" in r.stderr and PASSWORD not in r.stderr
    _secrets_nowhere(tmp_path / "state", tmp_path / "state4")


def test_tls_certificate_is_verified(orthanc, tmp_path, weights):
    """Orthanc behind a TLS proxy (as nginx would be) with a self-signed certificate: refused without --ca-file."""
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    proxy = CountingProxy(orthanc.http_port, tls=(cert, key))
    try:
        url = f"https://127.0.0.1:{proxy.port}"
        r = run_node(url, tmp_path / "state", "--once", timeout=60)
        assert r.returncode == 6 and "TLS certificate is not trusted" in r.stderr and "--ca-file" in r.stderr
        assert proxy.connections == 1 and "Not retrying" in r.stderr
        r = run_node(url, tmp_path / "state", "--once", "--ca-file", str(cert), "--weights", str(weights), timeout=120)
        assert r.returncode == 0 and "following Orthanc cac-node-test" in r.stderr, r.stderr
    finally:
        proxy.close()


# --- units -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("series_tags", "instance_tags", "expected"), [
    ({"Modality": "CT"}, {"ImageType": "ORIGINAL\\PRIMARY\\AXIAL", "ImageOrientationPatient": "1\\0\\0\\0\\1\\0",
                          "SOPClassUID": "1.2.840.10008.5.1.4.1.1.2"}, None),
    ({"Modality": "CT"}, {"ImageOrientationPatient": "-1\\0\\0\\0\\-1\\0"}, None),  # axial, feet first: scored
    ({"Modality": "MR"}, {}, "not CT (modality MR)"),
    ({"Modality": ""}, {}, "not CT (modality missing)"),
    ({"Modality": "SEG", "Manufacturer": "cac-toolkit"}, {}, "ours"),
    ({"Modality": "CT"}, {"ImageType": "ORIGINAL\\PRIMARY\\LOCALIZER"}, "localizer (scout) image, not an axial series"),
    ({"Modality": "CT"}, {"ImageOrientationPatient": "1\\0\\0\\0\\0\\-1"}, "not axial: coronal"),
    ({"Modality": "CT"}, {"SOPClassUID": "1.2.840.10008.5.1.4.1.1.7"}, "not a single-frame CT image"),
])
def test_classify_series(series_tags, instance_tags, expected):
    got = classify_series(series_tags, instance_tags)
    assert got is None if expected is None else got.startswith(expected), got


def test_credentials_never_from_the_command_line_and_never_shown(tmp_path):
    assert load_credentials(environ={}) is None
    c = load_credentials(environ={"CAC_ORTHANC_USER": "u", "CAC_ORTHANC_PASSWORD": "p4ss"})
    assert (c.user, c.password) == ("u", "p4ss") and "p4ss" not in repr(c) + str(c)
    with pytest.raises(UsageError, match="set both"):
        load_credentials(environ={"CAC_ORTHANC_USER": "u"})
    f = tmp_path / "creds"
    f.write_text("u2:pa:ss\n")  # a password may hold a colon
    assert load_credentials(f, environ={"CAC_ORTHANC_USER": "u", "CAC_ORTHANC_PASSWORD": "p"}).password == "pa:ss"
    with pytest.raises(UsageError, match="must not hold credentials") as exc:
        check_url("https://u:topsecret@pacs:8042")
    assert "topsecret" not in str(exc.value)
    assert check_url("https://pacs.example.org:8042/orthanc/") == "https://pacs.example.org:8042/orthanc"
    client = OrthancClient("https://pacs:8042", Credentials("u", "topsecret", "env"))
    assert "topsecret" not in repr(client)
    assert fingerprint(["b", "a"]) == fingerprint(["a", "b"]) != fingerprint(["a"])
