"""Load test of the Orthanc node (issue 28): a morning's worklist arriving at once.

A real Orthanc (Debian package) is started on free ports; N series are uploaded to it at once (mostly calcium-score
CT phantoms, some contrast CT that triage refuses, some MR that the node skips); then `cac orthanc` runs as a
service (not --once) until every series has an outcome. Optionally the node is killed (SIGKILL) after K series
and started again, and/or Orthanc is stopped and started again mid-run.

Reported (stdout, and --json FILE): series, seconds from the node's start to the last outcome, series per minute
(all, and CT series scored or refused), per-series seconds (median, 90th percentile, from the node's state), the
node's peak resident memory (VmHWM of each node process), losses (series without an outcome, or a scored /
refused series without its objects in Orthanc) and duplicates (more than one SEG or SR per source series).

    python -m benchmarks.orthanc_load --series 50 --contrast 5 --mr 5 --json runs/orthanc_load.json
    python -m benchmarks.orthanc_load --series 50 --kill-after 10 --restart-orthanc-after 25

Needs the Debian package orthanc and the test extra; uses tests/cacnet/orthanc_helpers.py.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from tests.cacnet.orthanc_helpers import OrthancServer, phantom_volume, start_node, write_ct


def _vm(pid: int, key: str = "VmHWM") -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--series", type=int, default=50, help="series in all")
    ap.add_argument("--contrast", type=int, default=5, help="of which contrast CT (refused)")
    ap.add_argument("--mr", type=int, default=5, help="of which MR (skipped)")
    ap.add_argument("--weights", type=Path, default=None, help="weights folder (default: a copy of the shipped)")
    ap.add_argument("--report", action="store_true", help="attach the HTML report too (the node's default)")
    ap.add_argument("--kill-after", type=int, default=0, help="SIGKILL the node after this many outcomes, restart")
    ap.add_argument("--restart-orthanc-after", type=int, default=0,
                    help="stop Orthanc after this many outcomes, start it again 10 s later")
    ap.add_argument("--full-size", action="store_true",
                    help="512 x 512 phantoms (22 MB a series, as a clinical scan) instead of 256 x 256 (5.6 MB)")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = ap.parse_args()

    from cacnet.ensemble import DEFAULT_WEIGHTS
    from cacnet.node.status import node_status

    work = args.workdir or Path(tempfile.mkdtemp(prefix="orthanc_load_"))
    work.mkdir(parents=True, exist_ok=True)
    weights = args.weights or Path(shutil.copytree(DEFAULT_WEIGHTS, work / "weights", dirs_exist_ok=True))
    n_ct = args.series - args.contrast - args.mr
    t0 = time.perf_counter()
    volumes = [phantom_volume(seed, cat, full=args.full_size)
               for seed, cat in ((11, "D"), (21, "C"), (31, "A"), (41, "E"))]
    contrast = phantom_volume(12, "B", contrast=True, full=args.full_size)
    import numpy as np

    mr = (np.full((20, 128, 128), 40.0), (5.0, 1.5, 1.5), (0.0, -96.0, -96.0))
    planned = []
    for i in range(args.series):
        if i < n_ct:
            vol, kind = volumes[i % len(volumes)], "ct"
        elif i < n_ct + args.contrast:
            vol, kind = contrast, "contrast"
        else:
            vol, kind = mr, "mr"
        uid, files = write_ct(work / "series" / f"s{i:03d}", *vol, patient_id=f"LOAD-{i:03d}",
                              modality="MR" if kind == "mr" else "CT")
        planned.append({"uid": uid, "files": files, "kind": kind})
    print(f"{args.series} series written ({n_ct} CT, {args.contrast} contrast CT, {args.mr} MR) in "
          f"{time.perf_counter() - t0:.1f} s; {sum(len(p['files']) for p in planned)} instances")

    orthanc = OrthancServer(work / "orthanc").start()
    try:
        t0 = time.perf_counter()
        lock = threading.Lock()
        todo = list(planned)

        def uploader() -> None:
            while True:
                with lock:
                    if not todo:
                        return
                    p = todo.pop(0)
                orthanc.upload(p["files"])

        threads = [threading.Thread(target=uploader) for _ in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        upload_s = time.perf_counter() - t0
        orthanc.wait_stable([p["uid"] for p in planned], timeout=300)
        print(f"uploaded at once in {upload_s:.1f} s (4 connections); all stable after {time.perf_counter() - t0:.1f} s")

        state = work / "state"
        node_args = ["--poll", "0.5", "--max-backoff", "5", "--weights", str(weights)]
        if not args.report:
            node_args.append("--no-report")
        start = time.perf_counter()
        node = start_node(orthanc.url, state, *node_args)
        peaks: list[float] = []
        kills = restarts = 0
        orthanc_down_at = None
        wanted = {p["uid"] for p in planned}
        while True:
            time.sleep(0.5)
            peaks.append(_vm(node.pid))
            try:
                st = node_status(state)
            except Exception:  # noqa: BLE001 - not created yet
                continue
            outcomes = {s["series_uid"]: s for s in st["series"] if s["series_uid"] in wanted}
            done = [s for s in outcomes.values() if s["status"] in ("scored", "refused", "skipped")]
            if args.kill_after and not kills and len(done) >= args.kill_after:
                node.send_signal(signal.SIGKILL)
                node.wait()
                kills += 1
                print(f"node killed (SIGKILL) after {len(done)} outcomes; started again")
                node = start_node(orthanc.url, state, *node_args)
            if args.restart_orthanc_after and not restarts and len(done) >= args.restart_orthanc_after:
                orthanc.stop()
                orthanc_down_at = time.perf_counter()
                restarts += 1
                print(f"Orthanc stopped after {len(done)} outcomes")
            if orthanc_down_at is not None and time.perf_counter() - orthanc_down_at > 10:
                orthanc.start()
                orthanc_down_at = None
                print("Orthanc started again")
            if len(done) == len(wanted) and not st["pending"]:
                break
            if node.poll() is not None:
                raise SystemExit(f"the node exited ({node.returncode}); see {state}/node.log")
        elapsed = time.perf_counter() - start
        peaks.append(_vm(node.pid))
        node.send_signal(signal.SIGTERM)
        node.wait(timeout=60)

        # losses and duplicates, from Orthanc itself
        losses = duplicates = 0
        per_kind: dict[str, int] = {}
        for p in planned:
            rec = outcomes.get(p["uid"])
            per_kind[f"{p['kind']}:{rec['status'] if rec else 'lost'}"] = per_kind.get(
                f"{p['kind']}:{rec['status'] if rec else 'lost'}", 0) + 1
            ours = orthanc.ours(p["uid"])
            if rec is None:
                losses += 1
                continue
            got = {k: len(v) for k, v in ours.items()}
            duplicates += sum(max(0, n - 1) for n in got.values())  # one SEG and one SR per series at most
            if rec["status"] in ("scored", "refused") and not got.get("SR"):
                losses += 1  # an outcome without its report in Orthanc
            if rec["status"] == "scored" and (rec["agatston"] or 0) > 0 and not got.get("SEG"):
                losses += 1
            if rec["status"] == "skipped" and got:
                duplicates += sum(got.values())  # objects where none belong
        seconds = [s["seconds"] for s in outcomes.values() if s["status"] in ("scored", "refused") and s["seconds"]]
        scored = [s for s in outcomes.values() if s["status"] == "scored"]
        figures = {
            "series": len(planned), "instances": sum(len(p["files"]) for p in planned), "outcomes": per_kind,
            "node_seconds": round(elapsed, 1), "series_per_minute": round(60 * len(planned) / elapsed, 2),
            "ct_series_per_minute": round(60 * len(seconds) / elapsed, 2),
            "per_series_s_median": round(statistics.median(seconds), 2) if seconds else None,
            "per_series_s_p90": round(sorted(seconds)[int(0.9 * (len(seconds) - 1))], 2) if seconds else None,
            "scored_per_series_s_median": round(statistics.median([s["seconds"] for s in scored]), 2) if scored else None,
            "node_peak_rss_mb": round(max(peaks), 1), "losses": losses, "duplicates": duplicates,
            "node_killed": kills, "orthanc_restarted": restarts, "report": args.report,
            "orthanc_instances": orthanc.n_instances(), "upload_s": round(upload_s, 1),
            "matrix": 512 if args.full_size else 256,
        }
    finally:
        orthanc.stop(graceful=False)
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0 if losses == 0 and duplicates == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
