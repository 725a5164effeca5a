"""The run manifest of a cohort run, and its CSV streamed as rows arrive.

The run manifest, ``<csv>.manifest.jsonl``, is an append-only JSON-lines
log: a ``run`` line with the settings that decide the results (weights,
precision, calibration, series, early stop, force, outputs, version), then
one ``scan`` line per scan that finished (path, size, mtime, sha256 of the
first MiB, status, CSV row, seconds, worker, peak memory), each flushed and
fsynced before the next; a killed run loses at most the scans in flight.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Optional

from .._files import write_csv_atomic
from ..batch import CSV_COLUMNS
from ..ensemble import load_manifest
from ..errors import UsageError
from ._scan import ScanOutcome, ScoreOptions
from ._workers import EnsembleSpec

__all__ = ["MANIFEST_SUFFIX", "CsvStream", "RunManifest", "manifest_key", "manifest_path", "run_settings"]

#: The run manifest of ``--csv FILE`` is ``FILE`` + this suffix.
MANIFEST_SUFFIX = ".manifest.jsonl"
_MANIFEST_VERSION = 1


def manifest_path(csv_file: Path) -> Path:
    """The run manifest of a CSV: ``scores.csv`` -> ``scores.csv.manifest.jsonl``."""
    csv_file = Path(csv_file)
    return csv_file.with_name(csv_file.name + MANIFEST_SUFFIX)


def run_settings(spec: EnsembleSpec, options: ScoreOptions) -> dict[str, Any]:
    """What decides a run's results; a manifest written with other settings is not resumed.

    Not included: the device, backend, threads and workers, which give the
    same masks and scores (fp32).
    """
    from .. import __version__

    models = load_manifest(Path(spec.weights))["models"]
    settings = {
        "cac_toolkit": __version__, "weights": [m.get("sha256", m.get("file")) for m in models],
        "precision": spec.precision, "calibration": options.calibration, "series": options.series,
        "early_stop": options.early_stop, "force": options.force, "skip_existing": options.skip_existing,
        "outdir": None if options.outdir is None else os.path.abspath(options.outdir),
        "outputs": dict(options.outputs),
    }
    return json.loads(json.dumps(settings, sort_keys=True, default=str))


def manifest_key(path: Path) -> str:
    """The key of an input in the manifest: its absolute path."""
    return os.path.abspath(path)


class RunManifest:
    """The append-only log of a run, locked against a second run on the same CSV.

    Use :meth:`open`; :meth:`record` appends one scan's outcome and fsyncs it.
    """

    def __init__(self, path: Path, fd: int) -> None:
        self.path = Path(path)
        self._fd = fd

    @classmethod
    def open(cls, path: Path, settings: dict[str, Any]) -> tuple["RunManifest", dict[str, dict[str, Any]], str]:
        """Open (or start) the manifest at ``path`` for a run with ``settings``.

        Returns
        -------
        manifest : RunManifest
        finished : dict
            The last ``scan`` entry with status ok or skipped of each input
            (by absolute path), when the manifest was written with the same
            settings; else empty (the manifest starts over).
        note : str
            Why an existing manifest was not resumed ('' otherwise).

        Raises
        ------
        UsageError
            Another run holds the manifest.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
        try:
            try:
                import fcntl

                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except ImportError:  # not POSIX: no lock
                pass
            except OSError:
                raise UsageError(f"{path}: another cac score run is writing this manifest (and its CSV); wait for "
                                 f"it to finish or use another --csv.") from None
            with os.fdopen(os.dup(fd), "rb") as fh:
                text = fh.read()
            finished, note, keep = cls._read(text, settings, path)
            if not keep:
                os.ftruncate(fd, 0)
            elif not text.endswith(b"\n"):  # a line cut short by a kill: drop it before appending
                os.ftruncate(fd, text.rfind(b"\n") + 1)
            manifest = cls(path, fd)
            kind = "resume" if keep else "run"
            manifest._append({"kind": kind, "manifest_version": _MANIFEST_VERSION, "settings": settings,
                              "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
            return manifest, finished, note
        except BaseException:
            os.close(fd)
            raise

    @staticmethod
    def _read(text: bytes, settings: dict[str, Any], path: Path) -> tuple[dict[str, dict[str, Any]], str, bool]:
        if not text.strip():
            return {}, "", False
        entries, header = [], None
        for line in text.split(b"\n"):
            try:
                entry = json.loads(line)
            except ValueError:
                continue  # the last line of a killed run, or damage: that scan is scored again
            if not isinstance(entry, dict):
                continue
            if entry.get("kind") in ("run", "resume") and header is None:
                header = entry
            elif entry.get("kind") == "scan":
                entries.append(entry)
        if header is None or header.get("manifest_version") != _MANIFEST_VERSION:
            return {}, f"{path} is not a run manifest of this version; starting it afresh.", False
        if header.get("settings") != settings:
            old = header.get("settings") or {}
            changed = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
            return {}, (f"{path} was written by a run with other settings ({', '.join(changed)}); "
                        f"scoring every scan again."), False
        finished: dict[str, dict[str, Any]] = {}
        for e in entries:
            key = e.get("key")
            if not isinstance(key, str):
                continue
            if e.get("status") in ("ok", "skipped") and isinstance(e.get("row"), dict):
                finished[key] = e
            else:
                finished.pop(key, None)  # a later failure (e.g. the file changed) outranks an earlier success
        return finished, "", True

    def _append(self, entry: dict[str, Any]) -> None:
        data = (json.dumps(entry, default=str) + "\n").encode()
        os.lseek(self._fd, 0, os.SEEK_END)
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view):]
        os.fsync(self._fd)

    def record(self, outcome: ScanOutcome, key: str) -> None:
        """Append one finished scan (flushed and fsynced before returning)."""
        self._append({"kind": "scan", "key": key, "input": outcome.input, "index": outcome.index, "id": outcome.id,
                      "status": outcome.status, "exit_code": outcome.exit_code, "error": outcome.error,
                      "identity": outcome.identity, "row": outcome.row, "seconds": round(outcome.seconds, 3),
                      "worker": outcome.worker, "peak_rss_mb": round(outcome.peak_rss_mb, 1),
                      "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")})

    def close(self) -> None:
        """Release the lock and the file."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class CsvStream:
    """The CSV of a run, rewritten atomically as rows arrive (rows in input order), at most every ``interval_s``."""

    def __init__(self, path: Optional[Path], interval_s: float) -> None:
        self.path, self.interval_s = path, interval_s
        self.rows: dict[int, dict[str, Any]] = {}
        self._written = 0.0

    def put(self, index: int, row: dict[str, Any]) -> None:
        self.rows[index] = row
        if self.path is not None and time.monotonic() - self._written >= self.interval_s:
            self.write()

    def write(self) -> None:
        if self.path is None:
            return
        rows = [{c: self.rows[i].get(c, "") for c in CSV_COLUMNS} for i in sorted(self.rows)]
        write_csv_atomic(self.path, CSV_COLUMNS, rows)
        self._written = time.monotonic()
