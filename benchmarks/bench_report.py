"""Time the review report and the quick look, and (with --docs) rebuild docs/report/.

Scores each scan once with the shipped ensemble, then times, over --repeat runs
(median), what ``cac score --report --preview`` adds: finding the components
(:func:`cacnet.components.find_components`, with the heart region of the triage
scoring made), rendering and writing the HTML report, and the preview PNG. With
--docs it writes docs/report/<id>.html, the quick look docs/report/<id>_preview.png
and a screenshot of the report, docs/report/<id>.png, taken with headless
Chromium (Debian package ``chromium``).

    python -m benchmarks.bench_report [--docs] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
SCANS = [
    ROOT / "examples" / "data" / "phantom_example.nii.gz",
    SHARED / "real-ct" / "lung-pet-ct-dx" / "A0001-5mm-series3",  # DICOM, standard kernel "B", 5 mm slices
    SHARED / "qrm-canon-large-rep1",  # the real QRM phantom scan (47 DICOM slices)
]


def screenshot(html: Path, png: Path, height: int = 2200) -> None:
    """A PNG of the top of the report, 1100 px wide, by headless Chromium."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("no chromium: apt-get install -y chromium")
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        f"--user-data-dir={profile}", f"--window-size=1100,{height}", f"--screenshot={png}",
                        html.as_uri()], check=True, capture_output=True, timeout=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", action="store_true", help="write docs/report/ (HTML, quick look, screenshot)")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    from cacnet.components import find_components
    from cacnet.ensemble import Ensemble
    from cacnet.errors import UnsuitableScanError
    from cacnet.outputs.preview import write_result_preview
    from cacnet.outputs.report import write_report
    from cacnet.pipeline import score_scan

    ens = Ensemble(device="cpu")
    out = ROOT / "docs" / "report"
    rows = []
    for path in SCANS:
        if not path.exists():
            print(f"{path}: missing, left out")
            continue
        forced = False
        try:
            res = score_scan(path, ens)
        except UnsuitableScanError:
            res, forced = score_scan(path, ens, force=True), True
        times: dict[str, list[float]] = {"components": [], "report": [], "preview": []}
        with tempfile.TemporaryDirectory() as tmp:
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                table = find_components(res.scan.hu, res.scan.spacing, res.labels, res.data, res.triage)
                t1 = time.perf_counter()
                html = write_report(res, Path(tmp) / f"{res.id}.html", table)
                t2 = time.perf_counter()
                write_result_preview(res, Path(tmp) / f"{res.id}.png", table)
                t3 = time.perf_counter()
                for k, dt in zip(times, (t1 - t0, t2 - t1, t3 - t2)):
                    times[k].append(dt)
            size = html.stat().st_size
            if args.docs:
                out.mkdir(parents=True, exist_ok=True)
                shutil.copy(html, out / f"{res.id}.html")
                shutil.copy(Path(tmp) / f"{res.id}.png", out / f"{res.id}_preview.png")
                screenshot(out / f"{res.id}.html", out / f"{res.id}.png")
        med = {k: round(statistics.median(v), 3) for k, v in times.items()}
        row = {"id": res.id, "shape_zyx": list(res.scan.hu.shape), "forced": forced,
               "lesions": len(table.lesions), "candidates": len(table.candidates),
               "crops": sum(len(c.slices) for c in table.components), "html_kb": round(size / 1024),
               **{f"{k}_s": v for k, v in med.items()}, "total_s": round(sum(med.values()), 3),
               "agatston": round(res.data["agatston"], 1), "score_s": res.data["timings_s"]["total"]}
        rows.append(row)
        print(json.dumps(row))
    print("| scan | voxels (z, y, x) | lesions | candidates | crops | components s | report s | preview s | "
          "HTML kB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['id']}{' (--force)' if r['forced'] else ''} | {' x '.join(map(str, r['shape_zyx']))} | "
              f"{r['lesions']} | {r['candidates']} | {r['crops']} | {r['components_s']} | {r['report_s']} | "
              f"{r['preview_s']} | {r['html_kb']} |")


if __name__ == "__main__":
    main()
