"""Score every real CT volume of ``shared/data/real-ct`` with ``cac score`` and tabulate what it finds.

None of these scans is an ECG-gated calcium-score CT and none has calcium
annotations (see that folder's README). What they can tell:

* the five **non-contrast** reconstructions (Lung-PET-CT-Dx A0001 and A0002,
  ACRIN-FLT-Breast 013) hold real bones, cartilage, aorta, heart, couch and
  kernel noise and no coronary calcium that we could see: any calcium the
  models report there is a false positive;
* the two **contrast-enhanced** scans (LIDC-IDRI-0001, RIDER CTPA) must be
  recognised by the triage and refused.

Two more scans, outside that folder: the real **QRM phantom** scan
(``shared/data/qrm-canon-large-rep1``: a calibration rod and hydroxyapatite
inserts in a water cylinder, no coronary artery: forced, it must score 0.0)
and the **bundled example** (a synthetic phantom with a known truth, 119.2).
The table ends with the specificity: the share of the zero-calcium scans
(the five negatives and the QRM scan, forced) scored exactly 0.0.

Each scan is scored twice, whole processes: as a user would (``cac score
--json``: the triage may refuse it, exit 3), and with ``--force`` (scored
whatever the triage says, so the models' output on real anatomy is always
seen). Per scan: what it is, the triage verdict and measurements, the score,
category and every lesion found (slice, position in the file's voxels,
artery, votes), warnings, and the wall time of the forced run.

Run:  python -m experiments.real_scans [--data ../shared/data/real-ct] [--weights DIR] [--out docs/real_scans]
Writes results.json and table.md into --out and prints the table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from experiments._common import ROOT

#: (path in the data folder, short description from its README, expected: "negative" or "contrast")
SCANS = [
    ("acrin-flt-breast-013", "ACRIN-FLT-Breast 013, CT of a PET/CT; Siemens B10f (very soft), 5 mm / 4 mm, "
     "1.37 mm pixels (whole-body FOV); 120 kVp", "negative"),
    ("lung-pet-ct-dx/A0001-5mm-series2", "Lung-PET-CT-Dx A0001; Philips kernel L (sharp lung), 5 mm, 0.84 mm; "
     "120 kVp", "negative"),
    ("lung-pet-ct-dx/A0001-5mm-series3", "same scan, kernel B (standard)", "negative"),
    ("lung-pet-ct-dx/A0002-8mm-B70f", "Lung-PET-CT-Dx A0002; Siemens B70f (very sharp), 8 mm, 0.65 mm; 120 kVp",
     "negative"),
    ("lung-pet-ct-dx/A0002-8mm-B40f", "same scan, B40f (medium)", "negative"),
    ("lidc-idri-0001/ct.nii.gz", "LIDC-IDRI-0001; GE, IV contrast (blood ~366 HU), 2.5 mm, 0.70 mm", "contrast"),
    ("rider-pilot-ctpa", "RIDER Pilot CT pulmonary angiogram; GE STANDARD, 1.25 mm / 0.8 mm, 0.65 mm; "
     "lower half of the heart", "contrast"),
    ("QRM:", "QRM thorax phantom with the cardiac calcification insert (real scan, Canon, FC12, 3 mm); a 20 mm "
     "calibration rod and HA inserts, no coronary artery", "negative"),
    ("EXAMPLE:", "the bundled example (synthetic phantom, truth 119.2 Agatston, LAD)", "example"),
]
EXPECTED = {"negative": "no coronary calcium", "contrast": "contrast: must be refused",
            "example": "119.2 (D): its truth"}


def run_cac(path: Path, weights: Path | None, force: bool) -> tuple[int, dict | None, str, float]:
    """``cac score PATH --json [--force]`` in a fresh process: exit code, result, stderr, seconds."""
    cmd = [sys.executable, "-m", "cacnet", "score", str(path), "--json"]
    if force:
        cmd.append("--force")
    if weights is not None:
        cmd += ["--weights", str(weights)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, encoding="utf-8")
    seconds = time.perf_counter() - t0
    try:
        data = json.loads(proc.stdout)
    except ValueError:
        data = None
    return proc.returncode, data, proc.stderr.strip(), seconds


def lesion_text(les: dict) -> str:
    ijk = les.get("position", {}).get("voxel_ijk")
    where = f"ijk {[round(v) for v in ijk]}" if ijk else f"slice {les['slice_index']}"
    return f"{where} {les['artery']} {les['votes']}/5 {les['agatston']:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "real-ct")
    parser.add_argument("--weights", type=Path, default=None, help="weights folder (default: the shipped ones)")
    parser.add_argument("--qrm", type=Path, default=ROOT.parent / "shared" / "data" / "qrm-canon-large-rep1")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "real_scans")
    args = parser.parse_args()
    if not args.data.is_dir():
        raise SystemExit(f"{args.data}: no such folder; pass --data PATH/TO/real-ct")
    special = {"QRM:": args.qrm, "EXAMPLE:": ROOT / "examples" / "data" / "phantom_example.nii.gz"}
    rows = []
    for rel, what, kind in SCANS:
        path = special.get(rel, args.data / rel)
        rel = {"QRM:": "qrm-canon-large-rep1", "EXAMPLE:": "examples/data/phantom_example.nii.gz"}.get(rel, rel)
        code, plain, err, _ = run_cac(path, args.weights, force=False)
        fcode, forced, ferr, seconds = run_cac(path, args.weights, force=True)
        result = forced or {}
        triage = result.get("triage", {})
        rows.append({
            "scan": rel, "what": what, "expected": kind, "exit_code": code,
            "refused": code == 3 and bool(plain) and plain.get("status") == "error",
            "refusal": (plain or {}).get("error", "") if code else "",
            "forced_exit_code": fcode, "forced_error": ferr if fcode else "",
            "triage": triage, "agatston": result.get("agatston"), "category": result.get("category"),
            "n_lesions": result.get("n_lesions"), "lesions": result.get("lesions", []),
            "warnings": result.get("warnings", []), "seconds": round(seconds, 1),
            "scan_kind": (result.get("triage") or {}).get("kind", {}).get("kind"),
            "rejected_outside_sac": sum(1 for c in result.get("rejected_candidates", [])
                                        if str(c.get("reason", "")).startswith("outside")),
            "models": {k: result.get("models", {}).get(k) for k in ("provider", "n_models")},
        })
        print(f"{rel}: exit {code}, forced {fcode}, Agatston {result.get('agatston')}", file=sys.stderr, flush=True)
    weights = args.weights or ROOT / "weights"
    manifest = json.loads((weights / "manifest.json").read_text())
    lines = [
        f"Weights: `{weights.relative_to(ROOT) if weights.is_relative_to(ROOT) else weights}` "
        f"({manifest.get('training', {}).get('data', 'unknown data')}).",
        "",
        "| scan | what it is | expected | kind | `cac score` | triage | Agatston with `--force` (category) | lesions "
        "found (file voxel ijk, artery, votes, Agatston) | seconds |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        verdict = r["triage"].get("verdict", "-")
        reasons = "; ".join(f"{k}: {v.get('verdict')}" for k, v in r["triage"].get("checks", {}).items()
                            if isinstance(v, dict) and v.get("verdict") not in (None, "ok"))
        outcome = "refused (exit 3)" if r["exit_code"] == 3 else f"scored (exit {r['exit_code']})"
        score = "error" if r["agatston"] is None else f"{r['agatston']:.1f} ({r['category']})"
        if r["expected"] == "negative" and r["agatston"]:
            score += " **false positive**"
        found = "; ".join(lesion_text(les) for les in r["lesions"][:6]) or "none"
        if len(r["lesions"]) > 6:
            found += f"; ... ({len(r['lesions'])} 2D records in all)"
        lines.append(f"| `{r['scan']}` | {r['what']} | {EXPECTED[r['expected']]} | {r['scan_kind'] or '-'} "
                     f"| {outcome} | {verdict}{' (' + reasons + ')' if reasons else ''} | {score} | {found} | {r['seconds']} |")
    zero = [r for r in rows if r["expected"] == "negative"]
    exact = sum(r["agatston"] == 0.0 for r in zero)
    lines += ["", f"Specificity (zero-calcium scans scored exactly 0.0, forced): {exact} of {len(zero)} "
                  f"({100.0 * exact / max(len(zero), 1):.0f} %)."]
    table = "\n".join(lines)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(rows, indent=1))
    (args.out / "table.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
