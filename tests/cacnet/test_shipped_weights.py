"""The shipped ensemble: present, verified, documented, and usable on the bundled example."""

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

import agatston
from cacnet.candidates import FEATURE_NAMES
from cacnet.ensemble import DEFAULT_WEIGHTS, Ensemble, load_second_stage, verify_weights
from cacnet.pipeline import score_scan

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "data" / "phantom_example.nii.gz"


def test_manifest_matches_the_files():
    models = verify_weights(DEFAULT_WEIGHTS)
    manifest = json.loads((DEFAULT_WEIGHTS / "manifest.json").read_text())
    assert len(models) == 5 and [m["seed"] for m in models] == [0, 1, 2, 3, 4]
    assert "synthetic phantoms" in manifest["training"]["data"]
    assert manifest["architecture"]["filters"] == [16, 32, 64, 128]
    assert manifest["preprocessing"]["clip_hu"] == [-300.0, 800.0]
    assert all(m["onnx_vs_torch_max_prob_diff"] < 1e-4 for m in manifest["models"])
    card = (DEFAULT_WEIGHTS / "README.md").read_text()
    # the card says plainly what real data the models saw: no real calcium, real backgrounds and hard negatives
    assert "no real scan with\ncoronary calcium" in card and "hard negatives" in card
    assert "backgrounds with inserted calcium" in manifest["training"]["real_scans"]
    # the second stage is named, hashed, loadable, and held the same patient out as the U-Nets
    stage = manifest["second_stage"]
    assert load_second_stage(DEFAULT_WEIGHTS) is not None and stage["features"] == list(FEATURE_NAMES)
    assert stage["data"]["held_out_backgrounds"] == ["lung_pet_ct_dx_a0002"]
    assert "lung_pet_ct_dx_a0002" in manifest["training"]["backgrounds"]["held_out"]


def test_shipped_ensemble_scores_the_bundled_example():
    truth = json.loads((ROOT / "examples" / "data" / "phantom_example_truth.json").read_text())
    res = score_scan(EXAMPLE, Ensemble(device="cpu"))
    d = res.data
    assert d["models"]["decision"] == "second stage" and all("p_coronary" in les for les in d["lesions"])
    assert d["models"]["n_models"] == 5 and d["models"]["models_run"] == 5
    assert d["category"] == truth["category"]
    assert d["triage"]["kind"]["kind"] == "gated calcium score" and d["anatomy"]["sac_ml"] > d["anatomy"]["heart_ml"]
    # every voxel the ensemble keeps is >= 130 HU, and every true lesion is found
    truth_img = sitk.DICOMOrient(sitk.ReadImage(str(ROOT / "examples" / "data" / "phantom_example_truth.nii.gz")),
                                 "LPS")
    t = sitk.GetArrayFromImage(truth_img)
    assert (res.scan.hu[res.labels > 0] >= 130).all()
    rep = agatston.detection_report(res.labels, t, res.scan.spacing)
    assert rep.sensitivity_count == 1.0
    # the ship rule: exactly the truth (score, category, lesions); the pericardial look-alike on slices 19-20
    # (0-1 votes, which v0.6 and v0.7 called LAD) is not a lesion
    assert d["agatston"] == pytest.approx(truth["agatston"], abs=0.05)
    assert d["arteries"]["LAD"]["agatston"] == pytest.approx(truth["LAD"], abs=0.05)
    assert d["n_lesions"] == truth["n_lesions"] == 2
    assert all((t[les["slice_index"]] > 0).any() for les in d["lesions"])
    assert all(r["reason"] for r in d["rejected_candidates"] if r["slice_index"] in (19, 20))
    assert np.isfinite(d["agatston"])
