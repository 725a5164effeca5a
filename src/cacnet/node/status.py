"""``cac orthanc status``: what a node's state folder says is pending, scored, refused, skipped and failed."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ..errors import UsageError
from .state import NodeState

__all__ = ["node_status", "format_status"]


def node_status(state: Path | str) -> dict[str, Any]:
    """The state of the node whose ``--state`` folder is ``state``, as a JSON-ready dict.

    Keys: ``state``, ``url`` (the Orthanc followed), ``feed_seq`` (its place in Orthanc's change feed),
    ``counts`` (pending, scored, refused, skipped, failed), ``pending`` (queued series ids), and ``series``
    (one record per series handled, oldest first: status, reason, score, the objects stored, timings).
    """
    folder = Path(state)
    try:
        st = NodeState(folder, readonly=True)
    except FileNotFoundError:
        raise UsageError(f"--state {folder}: no node state there (node.sqlite); run cac orthanc --url URL "
                         f"--state {folder} first.") from None
    try:
        return {"state": str(folder), "url": st.get_meta("url"), "feed_seq": st.seq, "counts": st.counts(),
                "pending": [q["series_id"] for q in st.queued()], "series": [r.to_dict() for r in st.all()]}
    finally:
        st.close()


def _when(t: Any) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(t))) if t else ""


def format_status(status: dict[str, Any], limit: int = 20) -> str:
    """``node_status`` as text: the counts, then the pending, failed and refused series and the latest scored."""
    c = status["counts"]
    lines = [f"node state {status['state']}: following {status['url'] or '?'}, at change {status['feed_seq']}",
             f"pending {c['pending']}, scored {c['scored']}, refused {c['refused']}, skipped {c['skipped']}, "
             f"failed {c['failed']}"]
    by = {s["series_id"]: s for s in status["series"]}
    if status["pending"]:
        lines.append("pending:")
        for sid in status["pending"][:limit]:
            s = by.get(sid)
            lines.append(f"  {sid}" + (f"  {s['series_uid']} (was {s['status']})" if s else ""))
    for kind in ("failed", "refused", "skipped"):
        rows = [s for s in status["series"] if s["status"] == kind]
        if rows:
            lines.append(f"{kind}:")
            for s in rows[-limit:]:
                lines.append(f"  {_when(s['updated'])}  {s['series_uid']} '{s['description'] or ''}': {s['reason']}"
                             + (f" (tries {s['attempts']})" if kind == "failed" else ""))
    scored = [s for s in status["series"] if s["status"] == "scored"]
    if scored:
        lines.append(f"scored (latest {min(limit, len(scored))}):")
        for s in scored[-limit:]:
            lines.append(f"  {_when(s['updated'])}  {s['series_uid']} '{s['description'] or ''}': Agatston "
                         f"{s['agatston']:.2f} ({s['category']}), {len(s['outputs'] or [])} object(s) stored, "
                         f"{s['seconds'] or 0:.1f} s")
    return "\n".join(lines)
