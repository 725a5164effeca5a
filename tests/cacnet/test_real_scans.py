"""Real CT (heart-level slabs of open TCIA scans, tests/data/real-ct): triage verdicts, and no false
coronary calcium from the shipped ensemble on real anatomy without coronary calcium."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cacnet.ensemble import Ensemble
from cacnet.errors import UnsuitableScanError
from cacnet.io import read_scan
from cacnet.pipeline import score_scan
from cacnet.triage import triage

DATA = Path(__file__).resolve().parents[1] / "data" / "real-ct"

#: fixture -> (overall verdict, the checks that must give it)
VERDICTS = {
    "a0001_sharp_L": ("refuse", {"noise": "refuse", "contrast": "ok", "heart": "ok"}),
    "a0002_B40f": ("warn", {"noise": "ok", "contrast": "ok", "heart": "ok", "slices": "warn"}),
    "acrin013_B10f": ("warn", {"noise": "ok", "contrast": "ok", "heart": "ok", "field_of_view": "warn"}),
    "lidc0001_contrast": ("refuse", {"contrast": "refuse", "heart": "ok", "noise": "ok"}),
}
NEGATIVES = ["a0001_sharp_L", "a0002_B40f", "acrin013_B10f"]


@pytest.fixture(scope="module")
def shipped():
    return Ensemble(device="cpu")


@pytest.mark.parametrize("name", sorted(VERDICTS))
def test_triage_verdicts_on_real_scans(name):
    verdict, checks = VERDICTS[name]
    t = triage(read_scan(DATA / f"{name}.nii.gz")).to_dict()
    assert t["verdict"] == verdict
    for check, expected in checks.items():
        assert t["checks"][check]["verdict"] == expected, (check, t["checks"][check])


def test_real_contrast_scan_is_refused_with_the_measurement(shipped):
    with pytest.raises(UnsuitableScanError, match=r"contrast-enhanced.*blood pool measures \d+ HU.*--force"):
        score_scan(DATA / "lidc0001_contrast.nii.gz", shipped)


@pytest.mark.parametrize("name", NEGATIVES)
def test_no_false_coronary_calcium_on_real_negatives(name, shipped):
    """Forced or not, the shipped ensemble reports less than 1 Agatston (these scans have no coronary calcium)."""
    res = score_scan(DATA / f"{name}.nii.gz", shipped, force=True)
    assert res.data["agatston"] < 1.0, res.data["lesions"]
    assert not any("contrast" in w for w in res.data["warnings"])
    assert res.data["triage"]["forced"] == (VERDICTS[name][0] == "refuse")


def test_cli_refuses_the_sharp_kernel_and_scores_it_with_force(tmp_path):
    path = DATA / "a0001_sharp_L.nii.gz"
    cmd = [sys.executable, "-m", "cacnet", "score", str(path), "--json"]
    refused = subprocess.run(cmd, capture_output=True, text=True, encoding="utf-8")
    assert refused.returncode == 3
    out = json.loads(refused.stdout)
    assert out["status"] == "error" and "noise" in out["error"] and "--force" in out["error"]
    forced = subprocess.run(cmd + ["--force"], capture_output=True, text=True, encoding="utf-8")
    assert forced.returncode == 0, forced.stderr
    data = json.loads(forced.stdout)
    assert data["agatston"] < 1.0 and data["triage"]["verdict"] == "refuse" and data["triage"]["forced"]
    assert any(w.startswith("forced:") for w in data["warnings"])


def test_cac_eval_refuses_like_score_and_takes_force(tmp_path):
    truth = tmp_path / "truth.csv"
    truth.write_text("id,agatston,category\na0001_sharp_L,0,A\n")
    cmd = [sys.executable, "-m", "cacnet", "eval", str(DATA / "a0001_sharp_L.nii.gz"), "--truth", str(truth), "--json"]
    refused = subprocess.run(cmd, capture_output=True, text=True, encoding="utf-8")
    assert refused.returncode == 3 and "--force" in refused.stderr
    forced = subprocess.run(cmd + ["--force"], capture_output=True, text=True, encoding="utf-8")
    assert forced.returncode == 0, forced.stderr
    assert json.loads(forced.stdout)["n"] == 1
