"""Cohort throughput: scans per minute, serial and on local Dask workers, with peak memory per worker.

Scores the same ``--n`` synthetic scans (512 x 512 in-plane by default, written
as .nii.gz, made once and kept in ``--scans``) four ways, each in a fresh
process through :func:`cacnet.cohort.run_cohort` (what `cac score` runs):

* serial: one scan after another, the plain loop;
* serial + prefetch: the next scan read and preprocessed in a background
  thread while the current one runs through the models (the default of a
  serial `cac score` batch);
* 1 worker, 2 workers: ``cac score --workers N`` (a Dask LocalCluster, one
  scan at a time per worker, cores / N model threads each).

For each: wall time (start-up included: starting workers and loading the
models) and scans per minute over it, scans per minute once started, and peak
resident memory (VmHWM) of the main process and of the largest worker (in a
serial run, the main process scores: both are the same). Scans are scored
with ``force`` (small phantoms may fail triage's heart check). The
CSVs of all ways must be identical; the script exits 1 if not.

Run:  python -m benchmarks.bench_cohort [--n 20] [--size 512] [--scans DIR] [--weights DIR]
          [--modes serial,prefetch,workers1,workers2]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODES = {
    "serial": ("serial", {"prefetch": False}),
    "prefetch": ("serial + prefetch", {"prefetch": True}),
    "workers1": ("1 worker (Dask)", {"workers": 1}),
    "workers2": ("2 workers (Dask)", {"workers": 2}),
}


def make_scans(folder: Path, n: int, size: int, seed: int) -> list[Path]:
    """``n`` phantoms (categories A-E in turn) as .nii.gz in ``folder``; existing files are kept."""
    import SimpleITK as sitk

    from cacnet.phantom import generate_phantom, oriented_image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"bench{size}_{seed}_{i:03d}.nii.gz"
        if not path.exists():
            case = generate_phantom(seed + i, category="ABCDE"[i % 5], size=size)
            sitk.WriteImage(oriented_image(case.hu, case, "identity"), str(path), useCompression=True)
        paths.append(path)
    return paths


def child(mode: str, scans: list[Path], weights: Path, csv_file: Path) -> dict:
    """One way of scoring, in this (fresh) process."""
    from cacnet._memory import return_large_buffers_to_os
    from cacnet.cohort import EnsembleSpec, ScoreOptions, peak_rss_mb, run_cohort

    return_large_buffers_to_os()  # as `cac` does (its workers too)
    _, kwargs = MODES[mode]
    t0 = time.perf_counter()
    # force: small phantoms can fail triage's heart check; every way must do the same work
    run = run_cohort(scans, EnsembleSpec(weights), ScoreOptions(force=True), csv_file=csv_file, csv_interval_s=0.0,
                     **kwargs)
    wall = time.perf_counter() - t0
    n = len(run.outcomes)
    return {
        "mode": mode, "n": n, "errors": sum(o.status == "error" for o in run.outcomes),
        "wall_s": wall, "startup_s": run.startup_s, "scoring_s": run.scoring_s,
        "per_min": 60.0 * n / wall, "per_min_started": 60.0 * n / max(run.scoring_s, 1e-9),
        "main_peak_mb": peak_rss_mb(),
        "worker_peak_mb": max((o.peak_rss_mb for o in run.outcomes), default=0.0),
        "threads": [w.get("threads") for w in run.workers],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--size", type=int, default=512, help="in-plane matrix of the phantoms")
    parser.add_argument("--seed", type=int, default=5100)
    parser.add_argument("--scans", type=Path, default=None, help="folder for the phantoms (kept; default: temporary)")
    parser.add_argument("--weights", type=Path, default=None)
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--csv", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    from cacnet.ensemble import DEFAULT_WEIGHTS

    weights = args.weights or DEFAULT_WEIGHTS
    with tempfile.TemporaryDirectory(prefix="bench_cohort_") as tmp:
        folder = args.scans or Path(tmp) / "scans"
        if args.child:
            scans = sorted(folder.glob(f"bench{args.size}_{args.seed}_*.nii.gz"))[:args.n]
            print(json.dumps(child(args.child, scans, weights, args.csv)))
            return
        t = time.perf_counter()
        scans = make_scans(folder, args.n, args.size, args.seed)
        print(f"{len(scans)} phantoms {args.size} x {args.size} in-plane in {folder} "
              f"({time.perf_counter() - t:.0f} s to make or find); weights {weights}")
        results = []
        for mode in args.modes.split(","):
            csv_file = Path(tmp) / f"{mode}.csv"
            cmd = [sys.executable, __file__, "--child", mode, "--n", str(args.n), "--size", str(args.size),
                   "--seed", str(args.seed), "--scans", str(folder), "--weights", str(weights), "--csv", str(csv_file)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if out.returncode != 0:
                sys.exit(f"{mode} failed:\n{out.stderr[-3000:]}")
            res = json.loads(out.stdout.strip().splitlines()[-1])
            res["csv"] = csv_file.read_text()
            results.append(res)
        import os

        print(f"\nmachine: {os.cpu_count()} CPUs; load average at the end (1, 5, 15 min): "
              f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}\n")
        print(f"{'way':<20} {'wall s':>7} {'start s':>8} {'scans/min':>10} {'once started':>13} "
              f"{'main MB':>8} {'worker MB':>10}  model threads")
        for r in results:
            threads = ",".join(str(x) for x in r["threads"]) or "all"
            print(f"{MODES[r['mode']][0]:<20} {r['wall_s']:>7.1f} {r['startup_s']:>8.1f} {r['per_min']:>10.1f} "
                  f"{r['per_min_started']:>13.1f} {r['main_peak_mb']:>8.0f} {r['worker_peak_mb']:>10.0f}  {threads}")
        same = all(r["csv"] == results[0]["csv"] for r in results)
        print(f"\nCSVs identical across the {len(results)} ways: {'yes' if same else 'NO'}; "
              f"errors: {sum(r['errors'] for r in results)}")
        if not same:
            sys.exit(1)


if __name__ == "__main__":
    main()
