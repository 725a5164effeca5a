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


@pytest.mark.parametrize("fov_mm", [150.0, 200.0, 250.0])
def test_triage_accepts_heart_zoomed_calcium_score_geometry(fov_mm, tmp_path):
    """Gated calcium-score CT is reconstructed heart-zoomed (150-250 mm, 0.3-0.5 mm pixels, 3 mm slices):
    a real heart resampled to that geometry, centred on the traced coronaries, must not be refused."""
    import numpy as np
    import SimpleITK as sitk

    from cacnet.train import ANATOMY_DIR

    tracing = json.loads((ANATOMY_DIR / "lung_pet_ct_dx_a0002.json").read_text())["structures"]
    centre = np.mean([p for k in ("LM", "LAD", "LCX", "RCA") for p in tracing[k]], axis=0)  # LPS x, y, z mm
    src = sitk.ReadImage(str(DATA / "a0002_B40f.nii.gz"))
    px, dz = fov_mm / 512, 3.0
    top = src.TransformIndexToPhysicalPoint((0, 0, src.GetSize()[2] - 1))[2]
    bottom = src.TransformIndexToPhysicalPoint((0, 0, 0))[2]
    lo, hi = min(top, bottom), max(top, bottom)
    ref = sitk.Image(512, 512, int((hi - lo) // dz), sitk.sitkInt16)
    ref.SetSpacing((px, px, dz))
    ref.SetOrigin((centre[0] - fov_mm / 2, centre[1] - fov_mm / 2, lo))
    zoomed = sitk.Resample(src, ref, sitk.Transform(), sitk.sitkLinear, -1024.0, sitk.sitkInt16)
    sitk.WriteImage(zoomed, str(tmp_path / "zoomed.nii.gz"))
    t = triage(read_scan(tmp_path / "zoomed.nii.gz")).to_dict()
    assert t["verdict"] != "refuse", t["checks"]
    assert t["checks"]["heart"]["verdict"] == "ok" and t["checks"]["contrast"]["verdict"] == "ok"
