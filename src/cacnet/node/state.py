"""The node's durable state: one SQLite file, ``STATE/node.sqlite`` (tables ``meta``, ``queue``, ``series``).

Reading the feed and queueing its series is one transaction, and so is recording an outcome and
taking the series off the queue: a node killed at any point resumes without losing a series.

See docs/deployment.md ("What the node does", the state) for the tables and what they hold.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional

__all__ = ["NodeState", "SeriesRecord", "STATUSES"]

#: Outcomes of a handled series.
STATUSES = ("scored", "refused", "skipped", "failed")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS queue (
    series_id TEXT PRIMARY KEY, seq INTEGER NOT NULL, queued REAL NOT NULL, not_before REAL NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS series (
    series_id TEXT PRIMARY KEY, series_uid TEXT, study_uid TEXT, patient_id TEXT, description TEXT,
    modality TEXT, status TEXT NOT NULL, reason TEXT, fingerprint TEXT, n_instances INTEGER,
    agatston REAL, category TEXT, outputs TEXT, attempts INTEGER NOT NULL DEFAULT 0, seconds REAL,
    first_seen REAL, updated REAL);
"""


@dataclass
class SeriesRecord:
    """A row of the ``series`` table."""

    series_id: str
    status: str
    series_uid: Optional[str] = None
    study_uid: Optional[str] = None
    patient_id: Optional[str] = None
    description: Optional[str] = None
    modality: Optional[str] = None
    reason: Optional[str] = None
    fingerprint: Optional[str] = None
    n_instances: Optional[int] = None
    agatston: Optional[float] = None
    category: Optional[str] = None
    outputs: Optional[list] = None
    attempts: int = 0
    seconds: Optional[float] = None
    first_seen: Optional[float] = None
    updated: Optional[float] = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


_COLUMNS = [f for f in SeriesRecord.__dataclass_fields__]


class NodeState:
    """The SQLite state of a node in ``folder`` (created when missing)."""

    def __init__(self, folder: Path | str, *, readonly: bool = False) -> None:
        self.folder = Path(folder)
        self.path = self.folder / "node.sqlite"
        if readonly:
            if not self.path.is_file():
                raise FileNotFoundError(self.path)
            self.db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=30)
        else:
            self.folder.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.executescript(_SCHEMA)
        self.db.row_factory = sqlite3.Row

    def close(self) -> None:
        self.db.close()

    # --- feed place ---------------------------------------------------------------------------------------

    def get_meta(self, key: str, default: Optional[str] = None) -> Optional[str]:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return default if row is None else str(row["value"])

    def set_meta(self, key: str, value: str) -> None:
        self.db.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = "
                        "excluded.value", (key, value))

    @property
    def seq(self) -> int:
        return int(self.get_meta("seq", "0") or 0)

    def queue_changes(self, series: Iterable[tuple[str, int]], last_seq: int) -> int:
        """Queue ``(series_id, seq)`` pairs and move the feed place to ``last_seq``, in one transaction.

        Returns the number of series newly queued (a series already queued stays queued once).
        """
        now = time.time()
        added = 0
        with self._transaction():
            for series_id, seq in series:
                cur = self.db.execute("INSERT OR IGNORE INTO queue (series_id, seq, queued, not_before) VALUES "
                                      "(?, ?, ?, 0)", (series_id, int(seq), now))
                added += cur.rowcount
            self.set_meta("seq", str(int(last_seq)))
        return added

    def requeue_failed(self) -> int:
        """Queue every failed series again, and make every queued series due now (a rerun retries them)."""
        with self._transaction():
            self.db.execute("UPDATE queue SET not_before = 0")
            cur = self.db.execute("INSERT OR IGNORE INTO queue (series_id, seq, queued, not_before) SELECT "
                                  "series_id, 0, ?, 0 FROM series WHERE status = 'failed'", (time.time(),))
        return cur.rowcount

    def next_queued(self, now: Optional[float] = None) -> Optional[str]:
        """The series to handle next (oldest change first) whose ``not_before`` has come, or None."""
        row = self.db.execute("SELECT series_id FROM queue WHERE not_before <= ? ORDER BY seq, queued LIMIT 1",
                              (time.time() if now is None else now,)).fetchone()
        return None if row is None else str(row["series_id"])

    def queued(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self.db.execute("SELECT * FROM queue ORDER BY seq, queued")]

    def next_retry(self) -> Optional[float]:
        row = self.db.execute("SELECT MIN(not_before) AS t FROM queue").fetchone()
        return None if row is None or row["t"] is None else float(row["t"])

    def dequeue(self, series_id: str) -> None:
        self.db.execute("DELETE FROM queue WHERE series_id = ?", (series_id,))

    def defer(self, series_id: str, not_before: float) -> None:
        self.db.execute("UPDATE queue SET not_before = ? WHERE series_id = ?", (not_before, series_id))

    # --- outcomes -----------------------------------------------------------------------------------------

    def get(self, series_id: str) -> Optional[SeriesRecord]:
        row = self.db.execute("SELECT * FROM series WHERE series_id = ?", (series_id,)).fetchone()
        return None if row is None else self._record(row)

    def record(self, rec: SeriesRecord, *, dequeue: bool = True) -> None:
        """Store the outcome ``rec`` (and take the series off the queue), in one transaction."""
        now = time.time()
        old = self.get(rec.series_id)
        rec.first_seen = old.first_seen if old is not None and old.first_seen else now
        rec.updated = now
        values = rec.to_dict()
        values["outputs"] = None if rec.outputs is None else json.dumps(rec.outputs)
        with self._transaction():
            self.db.execute(f"INSERT OR REPLACE INTO series ({', '.join(_COLUMNS)}) VALUES "
                            f"({', '.join('?' for _ in _COLUMNS)})", [values[c] for c in _COLUMNS])
            if dequeue:
                self.dequeue(rec.series_id)

    def all(self) -> list[SeriesRecord]:
        return [self._record(r) for r in self.db.execute("SELECT * FROM series ORDER BY updated")]

    def counts(self) -> dict[str, int]:
        out = {s: 0 for s in STATUSES}
        for row in self.db.execute("SELECT status, COUNT(*) AS n FROM series GROUP BY status"):
            out[str(row["status"])] = int(row["n"])
        out["pending"] = int(self.db.execute("SELECT COUNT(*) AS n FROM queue").fetchone()["n"])
        return out

    @staticmethod
    def _record(row: sqlite3.Row) -> SeriesRecord:
        d = dict(row)
        d["outputs"] = json.loads(d["outputs"]) if d.get("outputs") else None
        return SeriesRecord(**{k: d.get(k) for k in _COLUMNS})

    # --- transactions -------------------------------------------------------------------------------------

    class _Tx:
        def __init__(self, db: sqlite3.Connection) -> None:
            self.db = db

        def __enter__(self) -> None:
            self.db.execute("BEGIN IMMEDIATE")

        def __exit__(self, exc_type: Any, *_: Any) -> None:
            self.db.execute("COMMIT" if exc_type is None else "ROLLBACK")

    def _transaction(self) -> "NodeState._Tx":
        return NodeState._Tx(self.db)
