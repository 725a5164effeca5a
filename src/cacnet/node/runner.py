"""The Orthanc node: follow Orthanc's change feed, score each stable CT series, store the results in its study.

Each ``StableSeries`` change of ``/changes`` is left alone (our own objects), skipped, scored (SEG and
SR stored into the study, the HTML report attached, metadata 4200/4201), refused (a "not scored" SR,
:mod:`cacnet.node.refusal`) or failed (retried); a series whose instances change is scored again and
its earlier objects deleted. Orthanc unreachable: wait with backoff; refused credentials: exit 6.

See docs/deployment.md ("What the node does", "Faults, and what the node does") for the details.
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import hashlib
import json
import logging
import os
import random
import re
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from ..errors import CacError, InvalidScanError, UsageError
from .client import Credentials, OrthancAuthError, OrthancClient, OrthancError, OrthancNotFound, OrthancUnavailable
from .state import NodeState, SeriesRecord

__all__ = ["ATTACHMENT_REPORT", "METADATA_RESULT", "METADATA_STATUS", "Node", "NodeConfig", "NodeStopped",
           "classify_series", "fingerprint", "setup_logging"]

log = logging.getLogger("cacnet.node")

#: Orthanc user-defined metadata (1024-65535) and attachment (1024-65535) numbers the node writes. They work
#: without any Orthanc configuration; naming them there (UserMetadata, UserContentType; see docs/deployment.md)
#: makes Orthanc show the names.
METADATA_STATUS = 4200  # "scored: Agatston 12.3 (C) ...", "refused: reason", "skipped: reason", "failed: reason"
METADATA_RESULT = 4201  # the outcome as JSON
ATTACHMENT_REPORT = 4210  # the HTML review report (cac score --report)

_MANUFACTURER = "cac-toolkit"
_CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"


class NodeStopped(BaseException):
    """SIGTERM: stop now (the state is consistent at every point; the series being handled stays queued)."""


@dataclass
class NodeConfig:
    """Settings of a node (see ``cac orthanc --help``)."""

    url: str
    state: Path
    credentials: Optional[Credentials] = None
    ca_file: Optional[Path] = None
    once: bool = False
    poll_s: float = 5.0
    timeout_s: float = 60.0
    give_up_after_s: Optional[float] = None  # None: retry an unreachable Orthanc forever
    max_backoff_s: float = 60.0
    report: bool = True
    from_now: bool = False
    retries: int = 3  # tries of a failed series in one run (a rerun tries again)
    retry_delay_s: float = 30.0
    calibration: Optional[float] = None
    extra: dict = field(default_factory=dict)


def fingerprint(instance_ids: list[str]) -> str:
    """Identifies a version of a series: the sha1 of its sorted Orthanc instance ids (derived from the UIDs)."""
    return hashlib.sha1("\n".join(sorted(instance_ids)).encode()).hexdigest()


def _split(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, list):
        return [str(v) for v in value]
    return [v for v in str(value).split("\\")]


def classify_series(series_tags: dict, instance_tags: dict) -> Optional[str]:
    """Why a series is not scored at all (skipped), or None when it is a CT axial series to triage and score.

    ``"ours"`` for the node's own objects. ``series_tags``: Orthanc's MainDicomTags of the series;
    ``instance_tags``: the simplified tags of one of its instances.
    """
    tags = {**instance_tags, **{k: v for k, v in series_tags.items() if v not in (None, "")}}
    if str(tags.get("Manufacturer", "")).strip() == _MANUFACTURER:
        return "ours"
    modality = str(tags.get("Modality", "")).strip().upper()
    if modality != "CT":
        return f"not CT (modality {modality or 'missing'})"
    sop_class = str(instance_tags.get("SOPClassUID", "")).strip()
    if sop_class and sop_class != _CT_IMAGE:
        from pydicom.uid import UID

        return (f"not a single-frame CT image (SOP class {UID(sop_class).name}); only CT Image Storage series are "
                "scored")
    image_type = [v.strip().upper() for v in _split(instance_tags.get("ImageType"))]
    if "LOCALIZER" in image_type:
        return "localizer (scout) image, not an axial series"
    iop = _split(instance_tags.get("ImageOrientationPatient") or series_tags.get("ImageOrientationPatient"))
    if len(iop) == 6:
        try:
            r = [float(v) for v in iop[:3]]
            c = [float(v) for v in iop[3:]]
        except ValueError:
            r = c = []
        if r and c:
            n = (r[1] * c[2] - r[2] * c[1], r[2] * c[0] - r[0] * c[2], r[0] * c[1] - r[1] * c[0])
            if abs(n[2]) < max(abs(n[0]), abs(n[1])):
                plane = "sagittal" if abs(n[0]) >= abs(n[1]) else "coronal"
                return (f"not axial: {plane} slices (ImageOrientationPatient {'/'.join(iop)}); calcium is scored "
                        "on axial slices")
    return None


def setup_logging(state: Path, verbose: bool = False) -> None:
    """The node's log: stderr and ``STATE/node.log`` (appended), one line per event, with a timestamp."""
    logger = logging.getLogger("cacnet.node")
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S")
    for h in list(logger.handlers):
        if getattr(h, "_cac_node", False):
            logger.removeHandler(h)
            h.close()
    for h in (logging.StreamHandler(), logging.FileHandler(Path(state) / "node.log", encoding="utf-8")):
        h.setFormatter(fmt)
        h._cac_node = True  # type: ignore[attr-defined]
        logger.addHandler(h)
    logger.propagate = False


class Node:
    """A node following one Orthanc (see the module's description).

    Parameters
    ----------
    config : NodeConfig
    ensemble : callable
        Returns the loaded :class:`cacnet.ensemble.Ensemble` (called once, before the first series).
    client : OrthancClient, optional
        Made from ``config`` when None.
    """

    def __init__(self, config: NodeConfig, ensemble: Callable[[], Any], client: Optional[OrthancClient] = None) -> None:
        self.config = config
        self.client = client or OrthancClient(config.url, config.credentials, ca_file=config.ca_file,
                                              timeout=config.timeout_s)
        self._ensemble_factory = ensemble
        self._ensemble: Any = None
        self.state_dir = Path(config.state)
        self.state: Optional[NodeState] = None
        self._outage_since: Optional[float] = None
        self._outage_tries = 0
        self._delay = 1.0
        self._tries: dict[str, int] = {}  # failed tries per series in this run
        self.handled: dict[str, int] = {"scored": 0, "refused": 0, "skipped": 0, "failed": 0, "unchanged": 0}
        self._metadata_ok = True

    # --- the loop -----------------------------------------------------------------------------------------

    def run(self) -> int:
        """Follow the feed until stopped (``once``: until nothing is pending). Returns the exit code."""
        with self._locked():
            self.state = NodeState(self.state_dir)
            try:
                return self._run()
            finally:
                self.state.close()

    def _run(self) -> int:
        assert self.state is not None
        cfg = self.config
        shutil.rmtree(self.state_dir / "work", ignore_errors=True)  # a download a killed node left
        previous_url = self.state.get_meta("url")
        if previous_url is not None and previous_url != self.client.url:
            log.warning("this state folder followed %s; now %s: if that is another Orthanc, use another --state "
                        "(its feed positions differ)", previous_url, self.client.url)
        system = self._call(self.client.system)
        log.info("following Orthanc %s (%s, version %s) at %s; state in %s%s", system.get("Name", "?"),
                 system.get("DicomAet", "?"), system.get("Version", "?"), self.client.url, self.state_dir,
                 " (--once)" if cfg.once else "")
        self.state.set_meta("url", self.client.url)
        if self.state.get_meta("seq") is None and cfg.from_now:
            last = self._call(self.client.last_change)
            self.state.queue_changes([], last)
            log.info("--from-now: starting after change %d (earlier series are not handled)", last)
        self._check_feed_position()
        again = self.state.requeue_failed()
        if again:
            log.info("retrying %d series that failed before", again)
        self._ensemble_loaded()
        while True:
            try:
                self._read_feed()
                sid = self.state.next_queued()
                if sid is not None:
                    self._handle(sid)
                    continue
                if cfg.once:
                    break
                wake = self.state.next_retry()
                pause = cfg.poll_s if wake is None else max(0.0, min(cfg.poll_s, wake - time.time()))
                time.sleep(pause)
            except OrthancUnavailable as exc:
                self._wait_for_orthanc(exc)
        c = self.handled
        log.info("done: %d scored, %d refused, %d skipped, %d failed, %d unchanged (already handled)",
                 c["scored"], c["refused"], c["skipped"], c["failed"], c["unchanged"])
        return 4 if c["failed"] else 0

    def _call(self, fn: Callable[[], Any]) -> Any:
        """``fn()``, waiting for Orthanc (with backoff) while it is unreachable."""
        while True:
            try:
                out = fn()
                self._back()
                return out
            except OrthancUnavailable as exc:
                self._wait_for_orthanc(exc)

    def _wait_for_orthanc(self, exc: OrthancUnavailable) -> None:
        now = time.monotonic()
        if self._outage_since is None:
            self._outage_since = now
            self._outage_tries = 0
            self._delay = 1.0
        down = now - self._outage_since
        limit = self.config.give_up_after_s
        if limit is not None and down >= limit:
            raise OrthancUnavailable(f"Orthanc at {self.client.url} has been unreachable for {down:.0f} s; giving up "
                                     f"(--give-up-after {limit:g}). Last error: {exc}")
        delay = min(self._delay, self.config.max_backoff_s)
        if limit is not None:
            delay = max(0.1, min(delay, limit - down))
        delay *= random.uniform(0.9, 1.1)
        self._outage_tries += 1
        log.warning("Orthanc unreachable: %s Retry %d in %.1f s.", exc, self._outage_tries, delay)
        time.sleep(delay)
        self._delay = min(self._delay * 2, self.config.max_backoff_s)

    def _back(self) -> None:
        if self._outage_since is not None:
            log.info("Orthanc is back after %.1f s (%d retries)", time.monotonic() - self._outage_since,
                     self._outage_tries)
            self._outage_since = None
            self._delay = 1.0
            self._check_feed_position()

    def _check_feed_position(self) -> None:
        """A place in the feed past Orthanc's last change means a new Orthanc database: read it from the start."""
        assert self.state is not None
        last = self._call(self.client.last_change)
        if self.state.seq > last:
            log.warning("Orthanc's change feed ends at %d, before this node's place (%d): a new or reset Orthanc "
                        "database; reading its feed from the start (series handled before are recognised and "
                        "not scored again)", last, self.state.seq)
            self.state.queue_changes([], 0)

    def _read_feed(self) -> None:
        """Queue the series of every StableSeries change after our place, and move the place, durably."""
        assert self.state is not None
        since = self.state.seq
        while True:
            page = self.client.changes(since, limit=500)
            self._back()
            changes = page.get("Changes", [])
            stable = [(str(c["ID"]), int(c["Seq"])) for c in changes if c.get("ChangeType") == "StableSeries"]
            last = int(page.get("Last", since))
            if last < since:  # not expected from Orthanc; keep our place
                last = since
            added = self.state.queue_changes(stable, last)
            if added:
                log.debug("queued %d stable series (feed at %d)", added, last)
            if page.get("Done", True) or last == since:
                return
            since = last

    def _ensemble_loaded(self) -> Any:
        if self._ensemble is None:
            self._ensemble = self._ensemble_factory()
        return self._ensemble

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """One node per state folder: an exclusive lock on STATE/node.lock (released by the kernel if killed)."""
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.state_dir / "node.lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            from ..errors import OutputError

            raise OutputError(f"--state {self.state_dir}: cannot create or write it ({exc.strerror or exc}).") \
                from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                other = os.pread(fd, 32, 0).decode(errors="replace").strip()
                raise UsageError(f"--state {self.state_dir}: another node uses this state folder"
                                 + (f" (pid {other})" if other else "") + "; one node per state folder.") from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
            yield
        finally:
            os.close(fd)

    # --- one series ---------------------------------------------------------------------------------------

    def _handle(self, sid: str) -> None:
        assert self.state is not None
        try:
            info = self.client.get_json(f"/series/{sid}")
        except OrthancNotFound:
            log.info("series %s was deleted from Orthanc before it was handled", sid)
            self.state.dequeue(sid)
            return
        tags = info.get("MainDicomTags", {}) or {}
        instances = sorted(info.get("Instances", []) or [])
        fp = fingerprint(instances)
        label = _label(tags, sid)
        prev = self.state.get(sid)
        if str(tags.get("Manufacturer", "")).strip() == _MANUFACTURER:
            log.debug("%s: our own output, left alone", label)
            self.state.dequeue(sid)
            return
        if not info.get("IsStable", True):
            log.info("%s: still receiving instances; handled at its next StableSeries change", label)
            self.state.dequeue(sid)
            return
        if prev is not None and prev.status != "failed" and prev.fingerprint == fp:
            missing = [o for o in prev.outputs or [] if not self._exists(f"/instances/{o['id']}")]
            if not missing:
                log.info("%s: unchanged since it was %s; nothing to do", label, prev.status)
                self.handled["unchanged"] += 1
                self.state.dequeue(sid)
                return
            log.info("%s: unchanged, but %d of its objects are no longer in Orthanc (deleted?); handling it again",
                     label, len(missing))
        rec = SeriesRecord(series_id=sid, status="failed", series_uid=tags.get("SeriesInstanceUID"),
                           description=tags.get("SeriesDescription"), modality=tags.get("Modality"),
                           fingerprint=fp, n_instances=len(instances),
                           attempts=(prev.attempts if prev is not None else 0) + 1)
        start = time.monotonic()
        try:
            first = self.client.get_json(f"/instances/{instances[0]}/simplified-tags") if instances else {}
            rec.study_uid = first.get("StudyInstanceUID")  # no patient attributes in the state: it needs none
            skip = classify_series(tags, first)
            if skip == "ours":
                self.state.dequeue(sid)
                return
            if skip is not None:
                rec.status, rec.reason = "skipped", skip
                self._set_metadata(sid, rec, {"status": "skipped", "reason": skip})
                rec.seconds = time.monotonic() - start
                self.state.record(rec)
                self.handled["skipped"] += 1
                log.info("skipped %s: %s", label, skip)
                return
            if prev is not None and prev.fingerprint != fp and prev.status in ("scored", "refused"):
                log.info("%s: changed since it was %s (%d -> %d instances); scoring it again", label, prev.status,
                         prev.n_instances or 0, len(instances))
            self._score(sid, info, instances, rec, label)
            rec.seconds = time.monotonic() - start
            self.state.record(rec)
            self._tries.pop(sid, None)
            self.handled[rec.status] += 1
        except (OrthancUnavailable, OrthancAuthError, NodeStopped, KeyboardInterrupt):
            raise  # the series stays queued
        except OrthancNotFound as exc:
            log.info("%s: deleted from Orthanc while it was handled (%s); left", label, exc)
            self.state.dequeue(sid)
        except Exception as exc:  # noqa: BLE001 - any other failure: recorded with its reason, retried
            reason = str(exc) if isinstance(exc, CacError) else f"internal error: {exc!r} (please report it)"
            rec.status, rec.reason = "failed", self._relabel(reason, sid)
            rec.seconds = time.monotonic() - start
            tries = self._tries[sid] = self._tries.get(sid, 0) + 1
            again = not self.config.once and tries < self.config.retries
            self.state.record(rec, dequeue=not again)
            if again:
                self.state.defer(sid, time.time() + self.config.retry_delay_s * 2 ** (tries - 1))
            self.handled["failed"] += 1
            log.error("failed %s: %s (%s)", label, rec.reason,
                      f"try {tries} of {self.config.retries}; again in "
                      f"{self.config.retry_delay_s * 2 ** (tries - 1):g} s" if again else "a rerun retries it")
            with contextlib.suppress(OrthancError, OrthancAuthError):
                self._set_metadata(sid, rec, {"status": "failed", "reason": rec.reason})
        finally:
            shutil.rmtree(self.state_dir / "work" / sid, ignore_errors=True)
            gc.collect()

    def _exists(self, path: str) -> bool:
        try:
            self.client.get_json(path)
        except OrthancNotFound:
            return False
        return True

    def _download(self, sid: str, instances: list[str]) -> Path:
        work = self.state_dir / "work" / sid
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        for iid in instances:
            data = self.client.get(f"/instances/{iid}/file")
            (work / f"{iid}.dcm").write_bytes(data)
        return work

    def _relabel(self, message: str, sid: str) -> str:
        """A message about the downloaded copy, told about the series (no local paths)."""
        work = str(self.state_dir / "work" / sid)
        for absolute in {work, os.path.abspath(work), os.path.realpath(work)}:
            message = message.replace(absolute + "/", "instance ").replace(absolute + ": ", "").replace(absolute, "the series")
        message = re.sub(r"instance ([0-9a-f]{8}(?:-[0-9a-f]{8}){4})\.dcm", r"instance \1", message)
        return message.replace(" Use --force (score_scan(force=True)) to score it anyway.", "").strip()

    def _score(self, sid: str, info: dict, instances: list[str], rec: SeriesRecord, label: str) -> None:
        from ..outputs.write import write_outputs
        from ..pipeline import score_scan

        t0 = time.monotonic()
        log.info("scoring %s (%d instances)", label, len(instances))
        work = self._download(sid, instances)
        t_download = time.monotonic() - t0
        ensemble = self._ensemble_loaded()
        try:
            check_instances(work)
            result = score_scan(work, ensemble, calibration=self.config.calibration)
            outdir = self.state_dir / "results" / sid
            result.data["orthanc"] = {"series": sid, "study": info.get("ParentStudy"),
                                      "series_instance_uid": rec.series_uid, "instances": len(instances),
                                      "fingerprint": rec.fingerprint}
            write_outputs(result, outdir, report=self.config.report, dicom=True)
        except InvalidScanError as exc:  # triage's refusals (UnsuitableScanError) and unreadable series
            rec.status, rec.reason = "refused", self._relabel(str(exc), sid)
            self._store_refusal(sid, info, work, rec, label)
            return
        t_score = time.monotonic() - t0 - t_download
        data = result.data
        dicom = data["dicom"]
        outputs = []
        for kind in ("seg", "sr"):
            if dicom.get(kind):
                answer = self.client.store((outdir / dicom[kind]).read_bytes())
                outputs.append({"kind": kind, "id": answer["ID"], "sop_instance_uid": dicom["sop_instance_uids"][kind],
                                "series_instance_uid": dicom["series_instance_uids"][kind],
                                "stored": answer.get("Status")})
        if self.config.report and (outdir / f"{sid}.html").is_file():
            self._attach_report(sid, (outdir / f"{sid}.html").read_bytes())
        else:
            self._drop_report(sid)
        rec.status, rec.reason = "scored", None
        rec.agatston, rec.category = float(data["agatston"]), str(data["category"])
        rec.outputs = outputs
        summary = {"status": "scored", "agatston": round(rec.agatston, 2), "category": rec.category,
                   "cac_drs": data["cac_drs"]["label"], "arteries": {k: round(v["agatston"], 2) for k, v in
                                                                      data["arteries"].items()},
                   "n_lesions": data["n_lesions"], "warnings": data["warnings"],
                   "seg": dicom.get("sop_instance_uids", {}).get("seg"), "sr": dicom["sop_instance_uids"]["sr"],
                   "report_attachment": ATTACHMENT_REPORT if self.config.report else None}
        self._set_metadata(sid, rec, summary)
        removed = self._remove_stale(info, rec.series_uid, {o["id"] for o in outputs})
        log.info("scored %s: Agatston %.2f (%s), %s; stored %s in study %s%s (download %.1f s, scoring %.1f s, "
                 "total %.1f s)", label, rec.agatston, rec.category, data["cac_drs"]["label"],
                 " and ".join(f"{o['kind'].upper()} {o['sop_instance_uid']}" for o in outputs), rec.study_uid,
                 f"; removed {removed} object(s) of its earlier version" if removed else "", t_download, t_score,
                 time.monotonic() - t0)

    def _store_refusal(self, sid: str, info: dict, work: Path, rec: SeriesRecord, label: str) -> None:
        import io

        import pydicom

        from .refusal import build_not_scored_report

        datasets = []
        for f in sorted(work.glob("*.dcm")):
            try:
                datasets.append(pydicom.dcmread(f, stop_before_pixels=True))
            except Exception:  # noqa: BLE001 - an unreadable instance is not evidence
                continue
        datasets = [ds for ds in datasets if "StudyInstanceUID" in ds and "SOPInstanceUID" in ds
                    and "SeriesInstanceUID" in ds]
        outputs = []
        if datasets:
            sr = build_not_scored_report(datasets, str(rec.reason), str(rec.fingerprint))
            buf = io.BytesIO()
            sr.save_as(buf, enforce_file_format=True)
            answer = self.client.store(buf.getvalue())
            outputs.append({"kind": "not-scored", "id": answer["ID"], "sop_instance_uid": str(sr.SOPInstanceUID),
                            "series_instance_uid": str(sr.SeriesInstanceUID), "stored": answer.get("Status")})
        rec.outputs = outputs
        self._drop_report(sid)
        self._set_metadata(sid, rec, {"status": "refused", "reason": rec.reason,
                                      "sr": outputs[0]["sop_instance_uid"] if outputs else None})
        removed = self._remove_stale(info, rec.series_uid, {o["id"] for o in outputs})
        log.warning("refused %s: %s%s%s", label, rec.reason,
                    f" (stored a 'not scored' SR {outputs[0]['sop_instance_uid']} in its study)" if outputs
                    else " (no readable instance to build a 'not scored' SR from)",
                    f"; removed {removed} object(s) of its earlier version" if removed else "")

    # --- Orthanc side effects -----------------------------------------------------------------------------

    def _set_metadata(self, sid: str, rec: SeriesRecord, summary: dict) -> None:
        if not self._metadata_ok:
            return
        if rec.status == "scored":
            line = (f"scored: Agatston {summary['agatston']:.2f} ({summary['category']}), {summary['cac_drs']}"
                    f"; SR {summary['sr']}")
        else:
            line = f"{rec.status}: {rec.reason}"
        summary = {**summary, "series_instance_uid": rec.series_uid, "instances": rec.n_instances,
                   "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        try:
            self.client.put(f"/series/{sid}/metadata/{METADATA_STATUS}", line.encode("utf-8"))
            self.client.put(f"/series/{sid}/metadata/{METADATA_RESULT}", json.dumps(summary).encode("utf-8"))
        except OrthancNotFound:
            raise
        except OrthancError as exc:  # e.g. an Orthanc that refuses user metadata: the SR and the log still say it
            log.warning("Orthanc refused the node's metadata (%s); the status stays in the node's state and log "
                        "only", exc)
            self._metadata_ok = False

    def _attach_report(self, sid: str, html: bytes) -> None:
        path = f"/series/{sid}/attachments/{ATTACHMENT_REPORT}"
        self.client.delete(path)  # an earlier version's (Orthanc does not overwrite an attachment)
        self.client.put(path, html, "text/html")

    def _drop_report(self, sid: str) -> None:
        self.client.delete(f"/series/{sid}/attachments/{ATTACHMENT_REPORT}")

    def _remove_stale(self, info: dict, series_uid: Optional[str], keep: set[str]) -> int:
        """Delete our objects in the study that reference ``series_uid`` and are not ``keep``; how many."""
        if not series_uid:
            return 0
        removed = 0
        for iid in our_objects(self.client, str(info.get("ParentStudy", "")), series_uid):
            if iid not in keep and self.client.delete(f"/instances/{iid}"):
                removed += 1
        return removed


def check_instances(folder: Path) -> None:
    """Refuse a series holding an instance whose pixel data is cut short (:class:`InvalidScanError`).

    Orthanc stores such an instance (its header parses), and the image reader would read the missing pixels
    as whatever lies in memory: a wrong score with no warning. Checked for uncompressed transfer syntaxes
    (the length is known); compressed pixel data are checked by the decoder.
    """
    import pydicom

    for f in sorted(Path(folder).glob("*.dcm")):
        try:
            ds = pydicom.dcmread(f)
        except Exception as exc:  # noqa: BLE001 - what pydicom cannot read, the reader will not either
            raise InvalidScanError(f"{f}: not a readable DICOM file ({exc}).") from None
        if "PixelData" not in ds:
            raise InvalidScanError(f"{f}: no pixel data (an image of the series without its pixels).")
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        if syntax is None or syntax.is_compressed:
            continue
        try:
            expected = (int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1) or 1)
                        * int(ds.get("NumberOfFrames", 1) or 1) * int(ds.BitsAllocated) // 8)
        except (AttributeError, TypeError, ValueError):
            raise InvalidScanError(f"{f}: Rows, Columns or BitsAllocated missing or not a number.") from None
        got = len(ds.PixelData)
        if got < expected:
            raise InvalidScanError(f"{f}: corrupt: its pixel data hold {got} bytes where {ds.Rows} x {ds.Columns} "
                                   f"pixels of {ds.BitsAllocated} bits need {expected} (cut short or damaged); "
                                   "send the series again.")


def _referenced_series(tags: dict) -> set[str]:
    """Series Instance UIDs an object references: SEG's ReferencedSeriesSequence, an SR's evidence."""
    out: set[str] = set()
    for item in tags.get("ReferencedSeriesSequence", []) or []:
        if isinstance(item, dict) and item.get("SeriesInstanceUID"):
            out.add(str(item["SeriesInstanceUID"]))
    for key in ("CurrentRequestedProcedureEvidenceSequence", "PertinentOtherEvidenceSequence"):
        for study in tags.get(key, []) or []:
            for item in (study.get("ReferencedSeriesSequence", []) if isinstance(study, dict) else []) or []:
                if isinstance(item, dict) and item.get("SeriesInstanceUID"):
                    out.add(str(item["SeriesInstanceUID"]))
    return out


def our_objects(client: OrthancClient, study_id: str, series_uid: str) -> list[str]:
    """Orthanc ids of the instances in study ``study_id`` made by cac-toolkit that reference series ``series_uid``."""
    if not study_id:
        return []
    try:
        series = client.get_json(f"/studies/{study_id}/series")
    except OrthancNotFound:
        return []
    found = []
    for s in series:
        tags = s.get("MainDicomTags", {}) or {}
        if str(tags.get("Manufacturer", "")).strip() != _MANUFACTURER:
            continue
        for iid in s.get("Instances", []) or []:
            try:
                full = client.get_json(f"/instances/{iid}/tags?simplify")
            except OrthancNotFound:
                continue
            if series_uid in _referenced_series(full):
                found.append(str(iid))
    return found


def _label(tags: dict, sid: str) -> str:
    desc = str(tags.get("SeriesDescription", "") or "").strip()
    uid = tags.get("SeriesInstanceUID", "?")
    return f"series {uid}" + (f" '{desc}'" if desc else "") + f" (Orthanc {sid})"


def install_sigterm() -> None:
    """SIGTERM (systemctl stop, docker stop) stops the node between two steps, as Ctrl-C does."""
    def _stop(signum: int, frame: Any) -> None:
        raise NodeStopped()

    signal.signal(signal.SIGTERM, _stop)
