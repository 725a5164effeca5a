"""`cac score` as a process ends without the interpreter's teardown (cli.main): its outputs, its JSON on a pipe
and its exit code are whole all the same."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import SimpleITK as sitk

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "data" / "phantom_example.nii.gz"


def cac(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cacnet", *args], capture_output=True, text=True, timeout=600)


def test_score_process_writes_everything_before_it_ends(tmp_path):
    out, table = tmp_path / "out", tmp_path / "scores.csv"
    proc = cac("score", str(EXAMPLE), "--json", "-o", str(out), "--csv", str(table), "--preview")
    assert proc.returncode == 0, proc.stderr[-2000:]
    printed = json.loads(proc.stdout)  # the whole JSON reached the pipe
    assert printed["status"] == "ok" and printed["lesions"]
    assert json.loads((out / "phantom_example.json").read_text())["agatston"] == printed["agatston"]
    mask = sitk.ReadImage(str(out / "phantom_example_calcium.nii.gz"))
    assert sitk.GetArrayViewFromImage(mask).any()
    assert (out / "phantom_example.png").stat().st_size > 0
    rows = list(csv.DictReader(table.open()))
    assert len(rows) == 1 and rows[0]["status"] == "ok"
    manifest = [json.loads(line) for line in Path(str(table) + ".manifest.jsonl").read_text().splitlines()]
    assert manifest[-1]["status"] == "ok"  # the run manifest's last line is whole


def test_score_process_keeps_its_exit_codes(tmp_path):
    missing = cac("score", str(tmp_path / "missing.nii.gz"), "--json")
    assert missing.returncode == 3 and json.loads(missing.stdout)["status"] == "error"
    usage = cac("score", str(EXAMPLE), "--precision", "fp8")
    assert usage.returncode == 2 and "fp8" in usage.stderr
