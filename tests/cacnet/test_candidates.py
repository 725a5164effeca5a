"""The second stage: candidates, features, the numpy tree model, loading and the decision."""

from __future__ import annotations

import hashlib
import json
import re
import shutil

import numpy as np
import SimpleITK as sitk
import pytest
from scipy import ndimage

from cacnet.candidates import (FEATURE_NAMES, HU_BANDS, SecondStage, TreeModel, candidate_features,
                               decide_candidates, find_candidates, mean_probabilities)
from cacnet.anatomy import ANATOMY_FEATURES, AnatomyMap, anatomical_map
from cacnet.ensemble import Ensemble
from cacnet.errors import WeightsError
from cacnet.phantom import generate_phantom, oriented_image
from cacnet.preprocess import preprocess


def _volume(seed: int, shape=(6, 40, 44)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    hu = rng.normal(0, 60, shape).astype(np.float32)
    hu[rng.random(shape) < 0.04] = 500.0  # specks
    hu[2, 10:14, 10:15] = 900.0  # a blob with a tie of peaks
    hu[3, 20:22, 30:33] = rng.choice([200.0, 250.0], size=(2, 3))
    return hu


def _reference_candidates(hu):
    """Slice by slice with scipy's 2D labelling: (slice, peak (y, x), count, centroid) per component."""
    out = []
    for z in range(hu.shape[0]):
        lab, n = ndimage.label(hu[z] >= 130, structure=np.ones((3, 3)))
        for i in range(1, n + 1):
            ys, xs = np.nonzero(lab == i)
            vals = hu[z][ys, xs]
            k = int(np.flatnonzero(vals == vals.max())[0])  # first in C order among equal peaks
            out.append((z, int(ys[k]), int(xs[k]), len(ys), float(ys.mean()), float(xs.mean()), float(vals.max())))
    return sorted(out)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_find_candidates_matches_slicewise_labelling(seed):
    hu = _volume(seed)
    c = find_candidates(hu)
    got = sorted((int(c.peak[0][i]), int(c.peak[1][i]), int(c.peak[2][i]), int(c.count[i]),
                  float(c.centroid_yx[i, 0]), float(c.centroid_yx[i, 1]), float(c.peak_hu[i])) for i in range(c.n))
    ref = _reference_candidates(hu)
    assert len(got) == len(ref) == c.n > 5
    for g, r in zip(got, ref):
        assert g[:4] == r[:4]
        assert g[4:] == pytest.approx(r[4:])


def test_candidate_features_against_direct_computation():
    hu = _volume(3, shape=(12, 48, 48))
    spacing = (3.0, 0.75, 0.75)
    x, grid = preprocess(hu, spacing)
    rng = np.random.default_rng(0)
    logits = [rng.normal(size=(5,) + x.shape).astype(np.float32) for _ in range(3)]
    probs = mean_probabilities(logits)
    votes = sum((lg.argmax(0) > 0).astype(np.uint8) for lg in logits)
    c = find_candidates(hu)
    X = candidate_features(hu, spacing, grid, probs, votes, c, _inside_map(hu.shape))
    assert X.shape == (c.n, len(FEATURE_NAMES))
    col = {n: i for i, n in enumerate(FEATURE_NAMES)}
    for i in rng.choice(c.n, 8, replace=False):
        z, y, x_ = (int(c.peak[a][i]) for a in range(3))
        ci = tuple(int(grid.index[a][p]) for a, p in enumerate((z, y, x_)))
        comp = c.comps == i + 1
        assert X[i, col["peak_hu"]] == hu[comp].max() == hu[z, y, x_]
        assert X[i, col["mean_hu"]] == pytest.approx(hu[comp].mean(), rel=1e-5)
        assert X[i, col["log_area_mm2"]] == pytest.approx(np.log1p(comp.sum() * 0.75 * 0.75))
        assert X[i, col["p_coronary"]] == pytest.approx(1 - probs[(0,) + ci])
        assert X[i, col["votes"]] == votes[ci]
        # maximum of P(coronary) over the 3x3x3 coarse cube around the peak (outside the volume: 0)
        lo = [max(0, q - 1) for q in ci]
        cube = (1 - probs[0])[lo[0]:ci[0] + 2, lo[1]:ci[1] + 2, lo[2]:ci[2] + 2]
        assert X[i, col["p_coronary_max3"]] == pytest.approx(cube.max())
        # share of fat (-200..-30 HU) among the fine voxels of the 3x3x3 coarse cube, zero-padded to 27 blocks
        shares = []
        for dz in (-1, 0, 1):
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    q = (ci[0] + dz, ci[1] + dy, ci[2] + dx)
                    if any(v < 0 or v >= n for v, n in zip(q, grid.coarse_shape)):
                        shares.append(0.0)
                        continue
                    block = hu[tuple(slice(int(grid.starts[a][q[a]]), int(grid.starts[a][q[a] + 1])
                                           if q[a] + 1 < grid.coarse_shape[a] else hu.shape[a]) for a in range(3))]
                    shares.append(((block >= -200) & (block < -30)).mean())
        assert X[i, col["share_fat_3"]] == pytest.approx(np.mean(shares), abs=1e-5)
    assert HU_BANDS[2] == (-200.0, -30.0)


def test_mean_probabilities_is_the_mean_softmax():
    rng = np.random.default_rng(1)
    logits = [rng.normal(size=(5, 2, 3, 4)).astype(np.float32) * 5 for _ in range(4)]
    ref = np.mean([np.exp(lg) / np.exp(lg).sum(0) for lg in logits], axis=0)
    np.testing.assert_allclose(mean_probabilities(logits), ref, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="no model output"):
        mean_probabilities([])


def test_tree_model_equals_scikit_learn():
    from sklearn.ensemble import HistGradientBoostingClassifier

    rng = np.random.default_rng(2)
    X = rng.normal(size=(3000, 6))
    y = (X[:, 0] + 0.5 * X[:, 3] ** 2 + rng.normal(0, 0.5, 3000) > 1).astype(int)
    clf = HistGradientBoostingClassifier(max_iter=40, max_leaf_nodes=7, random_state=0).fit(X, y)
    model = TreeModel.from_sklearn(clf)
    Xt = np.vstack([rng.normal(size=(500, 6)), X[:50]])
    np.testing.assert_allclose(model.predict_proba(Xt), clf.predict_proba(Xt)[:, 1], rtol=0, atol=1e-12)
    assert model.predict_proba(np.zeros((0, 6))).shape == (0,)


def _peak_stage(threshold_hu: float = 400.0) -> SecondStage:
    """A one-split model: coronary (P 0.95) when the candidate's peak exceeds ``threshold_hu``, else P 0.05."""
    k = FEATURE_NAMES.index("peak_hu")
    model = TreeModel(feature=np.array([k, -1, -1]), threshold=np.array([threshold_hu, 0.0, 0.0]),
                      left=np.array([1, 0, 0]), right=np.array([2, 0, 0]),
                      value=np.array([0.0, np.log(0.05 / 0.95), np.log(0.95 / 0.05)]), roots=np.array([0]),
                      baseline=0.0)
    return SecondStage(model, 0.5, {"note": "test"})


def test_decide_candidates_labels_what_the_stage_accepts():
    hu = _volume(4)
    spacing = (3.0, 0.7, 0.7)
    x, grid = preprocess(hu, spacing)
    probs = np.zeros((5,) + x.shape, np.float32)
    probs[0] = 0.5
    probs[3] = 0.3  # LCX the most probable artery everywhere
    probs[1] = 0.2
    votes = np.zeros(x.shape, np.uint8)
    labels, records = decide_candidates(hu, spacing, grid, probs, votes, _peak_stage(400.0), _inside_map(hu.shape))
    c = find_candidates(hu)
    for i in range(c.n):
        comp = c.comps == i + 1
        want = 3 if c.peak_hu[i] > 400 else 0
        assert (labels[comp] == want).all()
    assert (labels[hu < 130] == 0).all()
    accepted = [r for r in records if r[5]]
    assert len(accepted) == int((c.peak_hu > 400).sum()) > 0
    assert all(r[4] == 3 and r[6] == pytest.approx(0.95) for r in accepted)
    assert not [r for r in records if not r[5]]  # P 0.05 and no vote: not recorded


def _inside_map(shape, outside_x: int | None = None) -> AnatomyMap:
    """A map on the fine grid (block 1) where everything is inside the sac, except columns x >= ``outside_x``.

    Its cells are said to be 5 mm wide so that its "heart" is large enough (>= 150 mL) for the map to be trusted.
    """
    sac = np.ones(shape, bool)
    if outside_x is not None:
        sac[:, :, outside_x:] = False
    sdist = np.where(sac, -5.0, 7.0).astype(np.float32)
    z = np.zeros(shape, np.float32)
    return AnatomyMap((1, 1, 1), (5.0, 5.0, 5.0), sac.copy(), sac, np.zeros(shape, bool), np.ones(shape, bool),
                      sdist, sdist, z + 20.0, z + 50.0, np.array(shape, float) / 2, np.array(shape, float) / 4)


def test_anatomy_features_are_read_at_each_peak():
    hu = _volume(5, shape=(12, 48, 48))
    spacing = (3.0, 0.75, 0.75)
    x, grid = preprocess(hu, spacing)
    probs = mean_probabilities([np.zeros((5,) + x.shape, np.float32)])
    c = find_candidates(hu)
    amap = _inside_map(hu.shape, outside_x=24)
    X = candidate_features(hu, spacing, grid, probs, np.zeros(x.shape, np.uint8), c, amap)
    col = FEATURE_NAMES.index("sac_sdist_mm")
    for i in range(c.n):
        want = -5.0 if c.peak[2][i] < 24 else 7.0
        assert X[i, col] == pytest.approx(want)
    assert FEATURE_NAMES[-len(ANATOMY_FEATURES):] == list(ANATOMY_FEATURES)


def test_decision_rejects_outside_the_sac_and_asks_more_without_a_vote():
    hu = _volume(4)
    spacing = (3.0, 0.7, 0.7)
    x, grid = preprocess(hu, spacing)
    probs = np.zeros((5,) + x.shape, np.float32)
    probs[0], probs[2] = 0.4, 0.6  # LAD everywhere
    votes = np.zeros(x.shape, np.uint8)
    stage = _peak_stage(400.0)  # P 0.95 above 400 HU
    half = hu.shape[2] // 2
    c = find_candidates(hu)
    dense = c.peak_hu > 400
    left = c.peak[2] < half
    assert (dense & left).any() and (dense & ~left).any()
    labels, records = decide_candidates(hu, spacing, grid, probs, votes, stage, _inside_map(hu.shape, half))
    for i in range(c.n):
        comp = c.comps == i + 1
        assert (labels[comp] == (2 if dense[i] and left[i] else 0)).all()
    outside = [r for r in records if not r[5] and r[7].startswith("outside")]
    assert len(outside) >= int((dense & ~left).sum())
    assert all(r[7].startswith("outside the pericardial sac (7.0 mm from it") for r in outside)
    # no U-Net voted: a second threshold above P 0.95 rejects them all, with the reason
    stage.threshold_no_vote = 0.99
    labels, records = decide_candidates(hu, spacing, grid, probs, votes, stage, _inside_map(hu.shape, half))
    assert not labels.any()
    inside = [r for r in records if r[6] > 0.9 and not r[7].startswith("outside")]
    assert len(inside) == int((dense & left).sum())
    assert all(r[7] == "P(coronary) 0.950 below 0.99 (no U-Net voted for it: stronger evidence needed)" for r in inside)
    # ... while a vote brings the usual threshold back
    labels, _ = decide_candidates(hu, spacing, grid, probs, votes + 1, stage, _inside_map(hu.shape, half))
    assert labels[:, :, :half].any() and not labels[:, :, half:].any()
    # three tiers: a minority's vote needs ``threshold``, a majority's ``threshold_majority``
    stage.threshold, stage.threshold_majority = 0.99, 0.9
    for n_votes, found in ((1, False), (2, False), (3, True), (5, True)):
        labels, records = decide_candidates(hu, spacing, grid, probs, votes + n_votes, stage,
                                            _inside_map(hu.shape, half), n_models=5)
        assert labels[:, :, :half].any() == found and not labels[:, :, half:].any()
        if not found:
            assert any(r[7] == "P(coronary) 0.950 below 0.99" for r in records)
    # with 7 models, 3 votes are a minority
    labels, _ = decide_candidates(hu, spacing, grid, probs, votes + 3, stage, _inside_map(hu.shape, half), n_models=7)
    assert not labels.any()


def test_second_stage_file_round_trip_and_checks(tmp_path):
    stage = _peak_stage()
    path = stage.save(tmp_path / "s.npz")
    back = SecondStage.load(path)
    X = np.zeros((3, len(FEATURE_NAMES)))
    X[:, 0] = [100, 401, 900]
    np.testing.assert_array_equal(back.model.predict_proba(X), stage.model.predict_proba(X))
    assert back.threshold == 0.5 and back.meta["note"] == "test"
    assert back.threshold_no_vote is None and back.threshold_majority is None
    stage.threshold_no_vote, stage.threshold_majority = 0.8, 0.3
    back = SecondStage.load(stage.save(tmp_path / "s3.npz"))
    assert (back.threshold_majority, back.threshold, back.threshold_no_vote) == (0.3, 0.5, 0.8)
    # a file trained on features this version does not compute is refused
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(str(arrays["meta"]))
    meta["feature_names"] = meta["feature_names"][:-1] + ["bogus"]
    arrays["meta"] = np.array(json.dumps(meta))
    np.savez(tmp_path / "other.npz", **arrays)
    with pytest.raises(ValueError, match=r"other features .*\(bogus\)"):
        SecondStage.load(tmp_path / "other.npz")
    # ... one trained on fewer features (v0.6's, without the anatomy) reads its columns by name
    meta["feature_names"] = ["mean_hu", "peak_hu"]
    arrays["meta"] = np.array(json.dumps(meta))
    np.savez(tmp_path / "fewer.npz", **arrays)
    fewer = SecondStage.load(tmp_path / "fewer.npz")
    X = np.zeros((2, len(FEATURE_NAMES)))
    X[:, FEATURE_NAMES.index("mean_hu")] = [900, 100]  # the model's column 0 is now mean_hu
    np.testing.assert_allclose(fewer.predict(X), [0.95, 0.05])
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a readable second-stage file"):
        SecondStage.load(tmp_path / "junk.npz")


def _weights_with_stage(src, dst, stage: SecondStage):
    shutil.copytree(src, dst)
    path = stage.save(dst / "second_stage.npz")
    m = json.loads((dst / "manifest.json").read_text())
    m["second_stage"] = {"file": "second_stage.npz", "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    (dst / "manifest.json").write_text(json.dumps(m))
    return dst


def test_ensemble_loads_and_checks_the_second_stage(toy_weights, tmp_path):
    w = _weights_with_stage(toy_weights, tmp_path / "w", _peak_stage())
    ens = Ensemble(w, backend="onnxruntime")
    assert ens.stage is not None and ens.describe()["decision"] == "second stage"
    # results say which P(coronary) each vote tier needed (no tier thresholds saved: all the one threshold)
    assert ens.describe()["thresholds"] == {"majority_vote": 0.5, "minority_vote": 0.5, "no_vote": 0.5}
    assert Ensemble(w, backend="onnxruntime", second_stage=False).stage is None
    (w / "second_stage.npz").write_bytes((w / "second_stage.npz").read_bytes() + b"x")
    with pytest.raises(WeightsError, match="does not match the manifest"):
        Ensemble(w, backend="onnxruntime")
    (w / "second_stage.npz").unlink()
    with pytest.raises(WeightsError, match="second stage is missing"):
        Ensemble(w, backend="onnxruntime")


def test_score_scan_with_a_second_stage(toy_weights, tmp_path, phantom_scans):
    from cacnet.pipeline import score_scan

    w = _weights_with_stage(toy_weights, tmp_path / "w", _peak_stage(400.0))
    # a phantom large enough to hold a heart (the 128-pixel fixtures are too small: there nothing is coronary)
    case = generate_phantom(22, category="D", size=256)
    path = tmp_path / "case22.nii.gz"
    sitk.WriteImage(oriented_image(case.hu, case, "flip_x"), str(path))  # stored flipped
    staged = score_scan(path, Ensemble(w, backend="onnxruntime"), force=True, early_stop=True)
    assert staged.data["models"]["decision"] == "second stage" and staged.data["models"]["models_run"] == 5
    assert any("early stop: not used" in w for w in staged.data["warnings"])
    # every candidate component with a peak above 400 HU inside the pericardial sac, and nothing else, is calcium
    c = find_candidates(staged.scan.hu)
    amap = anatomical_map(staged.triage)
    inside = np.array([r is None for r in amap.outside_reason(amap.at(*c.peak))])
    want = np.zeros(c.n + 1, bool)
    want[1:] = (c.peak_hu > 400) & inside
    assert want.any() and ((c.peak_hu > 400) & ~inside).any()  # the phantom's spine and ribs are outside
    np.testing.assert_array_equal(staged.labels > 0, want[c.comps])
    outside = [r for r in staged.data["rejected_candidates"] if r["reason"].startswith("outside the pericardial sac")]
    assert outside and staged.data["anatomy"]["sac_ml"] > staged.data["anatomy"]["heart_ml"] > 0
    assert staged.data["lesions"] and all(les["p_coronary"] == pytest.approx(0.95) for les in staged.data["lesions"])
    # the review report shows the second stage's P next to the votes, for lesions and the page's JSON alike
    from cacnet.outputs.report import render_report

    html = render_report(staged)
    assert "second stage P(coronary) 0.95" in html and re.search(r'"p_coronary":\s*0\.95', html)
    plain = score_scan(path, Ensemble(w, backend="onnxruntime", second_stage=False), force=True)
    assert plain.data["models"]["decision"] == "majority vote"
    assert all("p_coronary" not in les for les in plain.data["lesions"])
    assert "second stage P(coronary)" not in render_report(plain)
