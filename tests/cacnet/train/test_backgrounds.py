"""Real backgrounds with inserted calcium as training data: cac train --backgrounds / train_ensemble(backgrounds=)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="training needs the train extra (torch)")
pytest.importorskip("onnx", reason="ONNX export needs onnx")

from cacnet.phantom import generate_phantom, oriented_image  # noqa: E402
from cacnet.train import (Case, TrainConfig, find_backgrounds, load_case, make_background_cases,  # noqa: E402
                          save_case, train_ensemble)


@pytest.fixture(scope="module")
def fake_real_ct(tmp_path_factory):
    """A tiny "real-ct" folder: a category A phantom crop as a non-contrast scan (two "reconstructions"), a second
    traced patient, and a tracings folder: ``tiny`` (its coronaries, the phantom's own) and ``other``."""
    import SimpleITK as sitk

    base = tmp_path_factory.mktemp("bg")
    root, tracings = base / "real-ct", base / "anatomy"
    (root / "site").mkdir(parents=True)
    (root / "other").mkdir()
    tracings.mkdir()
    case = generate_phantom(2, category="A", size=128)  # 48 x 128 x 128, 0.42 mm pixels: a crop of the heart
    img = oriented_image(case.hu.astype(np.float32), case, "identity")
    sitk.WriteImage(img, str(root / "site" / "bg.nii.gz"))
    shutil.copy(root / "site" / "bg.nii.gz", root / "site" / "bg-sharp.nii.gz")
    shutil.copy(root / "site" / "bg.nii.gz", root / "other" / "bg.nii.gz")
    lo = np.array(case.origin) + 3
    hi = np.array(case.origin) + (np.array(case.hu.shape) - 1) * np.array(case.spacing) - 3
    structures = {}
    for name, a in (("LAD", 2), ("LCX", 3)):
        pts = case.anatomy.coronaries[a][0][::7]  # every ~4 mm, (z, y, x) mm
        pts = pts[np.all((pts >= lo) & (pts <= hi), axis=1)]  # the part inside the crop
        structures[name] = [list(map(float, p[::-1])) for p in pts]  # LPS [x, y, z]
    assert len(structures["LCX"]) >= 3
    for name, scan, also in (("tiny", "site/bg.nii.gz", ["site/bg-sharp.nii.gz", "site/not-here.nii.gz"]),
                             ("other", "other/bg.nii.gz", [])):
        (tracings / f"{name}.json").write_text(json.dumps(
            {"name": name, "scan": scan, "also_valid_for": also, "frame": "LPS patient coordinates in mm",
             "structures": structures}))
    return root, tracings


def _run_folder(out):
    """A cac train folder whose phantom caches hold toy cases (2 training, 1 validation): no phantom is made."""
    rng = np.random.default_rng(0)
    for i, folder in ((0, "train"), (1, "train"), (0, "val")):
        x = rng.normal(0.3, 0.02, size=(16, 32, 32)).astype(np.float32)
        y = np.zeros(x.shape, np.uint8)
        x[6:9, 10:13, 10:13], y[6:9, 10:13, 10:13] = 0.8, 2
        save_case(Case(f"phantom_{1000 if folder == 'train' else 1001}_{i:04d}", x, y, {}), out / "cache" / folder)
    return out


def test_find_backgrounds_and_its_errors(fake_real_ct, tmp_path):
    root, tracings = fake_real_ct
    bgs, record = find_backgrounds(root, tracings_dir=tracings)
    assert sorted(b.scan for b in bgs) == ["other/bg.nii.gz", "site/bg-sharp.nii.gz", "site/bg.nii.gz"]
    assert record["not_found"] == ["site/not-here.nii.gz"] and record["held_out"] == []
    assert len({b.seed for b in bgs}) == 3  # one seed per reconstruction
    assert [b.seed for b in bgs] == [b.seed for b in find_backgrounds(root, tracings_dir=tracings)[0]]  # stable
    kept, record = find_backgrounds(root, tracings_dir=tracings, hold_out=["other"])
    assert {b.tracing for b in kept} == {"tiny"} and record["held_out_scans"] == ["other/bg.nii.gz"]
    with pytest.raises(ValueError, match="'nobody' not among the tracings"):
        find_backgrounds(root, tracings_dir=tracings, hold_out=["nobody"])
    with pytest.raises(ValueError, match="held out"):
        find_backgrounds(root, tracings_dir=tracings, hold_out=["other", "tiny"])
    with pytest.raises(FileNotFoundError, match="no such folder"):
        find_backgrounds(tmp_path / "nowhere", tracings_dir=tracings)
    with pytest.raises(FileNotFoundError, match="looked for .*site/bg.nii.gz"):
        find_backgrounds(tmp_path, tracings_dir=tracings)  # a folder without the traced scans
    with pytest.raises(FileNotFoundError, match="lung-pet-ct-dx/A0001-5mm-series3"):
        find_backgrounds(tmp_path)  # the shipped tracings name what they look for


def test_background_cases_are_made_balanced_cached_and_reused(fake_real_ct, tmp_path, monkeypatch):
    root, tracings = fake_real_ct
    bgs, _ = find_backgrounds(root, tracings_dir=tracings, hold_out=["other"])
    cases = make_background_cases(bgs, 2, cache=tmp_path, workers=1)
    assert len(cases) == 4 and len({c.case_id for c in cases}) == 4
    assert [c.meta["category"] for c in cases] == ["A", "B", "A", "B"]
    assert not cases[0].y.any() and cases[1].y.any() and cases[1].meta["inserted"]
    files = sorted(tmp_path.rglob("*.npz"))
    assert len(files) == 4 and {f.parent.name.rsplit("-", 1)[0] for f in files} == {"site_bg.nii.gz",
                                                                                     "site_bg-sharp.nii.gz"}
    # a rerun reuses the cache (nothing is made again) and gets the same cases
    import cacnet.train._backgrounds as mod

    monkeypatch.setattr(mod, "iter_inserted_cases", lambda *a, **k: pytest.fail("made again"))
    again = make_background_cases(bgs, 2, cache=tmp_path, workers=1)
    assert [c.case_id for c in again] == [c.case_id for c in cases]
    assert np.array_equal(again[1].x, cases[1].x) and np.array_equal(again[1].y, cases[1].y)
    assert load_case(files[0]).meta["inserted"]


def test_train_ensemble_on_backgrounds_with_a_held_out_patient(fake_real_ct, tmp_path):
    root, tracings = fake_real_ct
    out = _run_folder(tmp_path / "run")
    cfg = TrainConfig(steps=1, batch=2, patch=(8, 16, 16), val_every=1, checkpoint_every=1, threads=2)
    manifest = train_ensemble(out, phantoms=2, val_phantoms=1, models=1, config=cfg, workers=1,
                              backgrounds=root, background_cases=2, hold_out_backgrounds=["other"],
                              tracings_dir=tracings)
    t = json.loads(manifest.read_text())["training"]
    bg = t["backgrounds"]
    assert [r["scan"] for r in bg["reconstructions"]] == ["site/bg.nii.gz", "site/bg-sharp.nii.gz"]
    assert all(r["categories"] == {"A": 1, "B": 1} and r["cases"] == 2 for r in bg["reconstructions"])
    assert bg["cases_per_reconstruction"] == 2 and bg["held_out"] == ["other"]
    assert bg["held_out_scans"] == ["other/bg.nii.gz"] and bg["not_found"] == ["site/not-here.nii.gz"]
    assert len({r["seed"] for r in bg["reconstructions"]}) == 2 and "validation" in bg
    assert t["train_cases"] == 2 + 4 and t["val_cases"] == 1  # backgrounds train, never validate
    assert t["batch"].startswith("1 phantom + 1 real + 0 hard-negative") and "backgrounds" in t["real_scans"]
    assert "4 real backgrounds with inserted calcium" in t["data"]
    cached = sorted(p.name for p in (out / "cache" / "backgrounds").rglob("*.npz"))
    assert cached == sorted(i + ".npz" for r in bg["reconstructions"] for i in r["ids"])
    assert not any(name.startswith("other") for name in cached)  # the held-out patient: no case made
    assert torch.load(out / "checkpoint.pt", weights_only=False)["step"] == 1


def test_background_validation_cases_are_other_cases_of_the_training_patients(fake_real_ct, tmp_path):
    root, tracings = fake_real_ct
    out = _run_folder(tmp_path / "run")
    cfg = TrainConfig(steps=1, batch=2, patch=(8, 16, 16), val_every=1, checkpoint_every=1, threads=2)
    manifest = train_ensemble(out, phantoms=2, val_phantoms=1, models=1, config=cfg, workers=1,
                              backgrounds=root, background_cases=1, val_background_cases=1,
                              hold_out_backgrounds=["other"], tracings_dir=tracings)
    t = json.loads(manifest.read_text())["training"]
    bg = t["backgrounds"]
    train_ids = [i for r in bg["reconstructions"] for i in r["ids"]]
    val_ids = [i for r in bg["validation_reconstructions"] for i in r["ids"]]
    assert len(train_ids) == len(val_ids) == 2 and not set(train_ids) & set(val_ids)
    assert [r["scan"] for r in bg["validation_reconstructions"]] == [r["scan"] for r in bg["reconstructions"]]
    assert {r["seed"] for r in bg["validation_reconstructions"]}.isdisjoint(r["seed"] for r in bg["reconstructions"])
    assert t["train_cases"] == 2 + 2 and t["val_cases"] == 1 + 2  # phantoms + backgrounds, both ways
    assert "2 real backgrounds with other inserted calcium" in t["validation"]
    assert not any(i.startswith("other") for i in val_ids)  # the held-out patient never validates either


def test_cac_train_backgrounds_cli(fake_real_ct, tmp_path):
    from typer.testing import CliRunner

    from cacnet.cli import app

    root, tracings = fake_real_ct
    out = _run_folder(tmp_path / "run")
    tiny = ["--phantoms", "2", "--val-phantoms", "1", "--models", "1", "--batch", "3", "--patch", "8", "16", "16",
            "--workers", "1", "--steps", "1"]
    res = CliRunner().invoke(app, ["train", str(out), *tiny, "--backgrounds", str(root), "--tracings", str(tracings),
                                   "--background-cases", "1", "--real-per-batch", "2"])
    assert res.exit_code == 0, res.output
    assert "on each of 3 real background(s)" in res.output
    t = json.loads((out / "weights" / "manifest.json").read_text())["training"]
    assert len(t["backgrounds"]["reconstructions"]) == 3 and t["backgrounds"]["held_out"] == []
    assert t["batch"].startswith("1 phantom + 2 real")
    # errors: a missing root (exit 3, names it), a root without the traced scans (exit 3, names what was looked for),
    # an unknown patient to hold out (exit 2)
    res = CliRunner().invoke(app, ["train", str(tmp_path / "x"), *tiny, "--backgrounds", str(tmp_path / "nowhere")])
    assert res.exit_code == 3 and "no such folder" in res.output and "nowhere" in res.output
    res = CliRunner().invoke(app, ["train", str(tmp_path / "x"), *tiny, "--backgrounds", str(tmp_path)])
    assert res.exit_code == 3 and "A0001-5mm-series3" in res.output.replace("\n", "")
    res = CliRunner().invoke(app, ["train", str(tmp_path / "x"), *tiny, "--backgrounds", str(root),
                                   "--tracings", str(tracings), "--hold-out-background", "nobody"])
    assert res.exit_code == 2 and "nobody" in res.output
    res = CliRunner().invoke(app, ["train", str(tmp_path / "x"), *tiny, "--hold-out-background", "tiny"])
    assert res.exit_code == 2 and "need --backgrounds" in res.output
    res = CliRunner().invoke(app, ["train", str(tmp_path / "x"), *tiny, "--val-background-cases", "1"])
    assert res.exit_code == 2 and "need --backgrounds" in res.output
    res = CliRunner().invoke(app, ["train", str(tmp_path / "x"), *tiny, "--second-stage-cases", "2"])
    assert res.exit_code == 2 and "need --backgrounds" in res.output
    res = CliRunner().invoke(app, ["train", str(tmp_path / "x"), *tiny, "--second-stage-validation", "2"])
    assert res.exit_code == 2 and "need --backgrounds" in res.output
    res = CliRunner().invoke(app, ["train", str(tmp_path / "x"), *tiny, "--backgrounds", str(root),
                                   "--tracings", str(tracings), "--validation-scans", str(tmp_path / "nothing")])
    assert res.exit_code == 3 and "nothing" in res.output
    res = CliRunner().invoke(app, ["train", str(tmp_path / "x"), *tiny, "--backgrounds", str(root),
                                   "--tracings", str(tracings), "--second-stage-validation", "2"])
    assert res.exit_code == 2 and "give --second-stage-cases too" in res.output


@pytest.fixture
def stage_inputs(fake_real_ct, tmp_path, toy_weights):
    """The second stage's inputs: the training backgrounds, a copy of the toy weights, a real category-A scan."""
    pytest.importorskip("sklearn", reason="the second stage is fitted with scikit-learn (train extra)")
    root, tracings = fake_real_ct
    bgs, _ = find_backgrounds(root, tracings_dir=tracings, hold_out=["other"])
    w = tmp_path / "w"
    shutil.copytree(toy_weights, w)
    return bgs, w, root / "other" / "bg.nii.gz"


def test_second_stage_is_fitted_on_backgrounds_cached_and_loaded(stage_inputs, tmp_path, monkeypatch):
    from cacnet.candidates import FEATURE_NAMES
    from cacnet.ensemble import Ensemble
    from cacnet.train import _second_stage, train_second_stage

    bgs, w, negative = stage_inputs  # negative: a category-A scan, every candidate non-coronary
    events = []
    entry = train_second_stage(w, bgs[:1], 3, negatives=[negative], phantoms=0, cache=tmp_path / "cache",
                               held_out=["other"], emit=lambda kind, info: events.append((kind, info)))
    m = json.loads((w / "manifest.json").read_text())
    assert m["second_stage"] == entry and entry["file"] == "second_stage.npz"
    assert entry["data"]["backgrounds"] == ["site/bg.nii.gz"] and entry["data"]["held_out_backgrounds"] == ["other"]
    assert 0 < entry["data"]["coronary_rows"] < entry["data"]["rows"]  # categories A, B, C: coronary and not
    assert entry["features"] == list(FEATURE_NAMES) and entry["numpy_vs_sklearn_max_prob_diff"] < 1e-9
    assert [k for k, _ in events].count("second_stage_case") == 3 + 1
    assert entry["data"]["negatives"] == [str(negative)]
    n_neg, coronary_neg = entry["data"]["rows_by_source"]["negatives"]
    assert n_neg > 0 and coronary_neg == 0
    ens = Ensemble(w, backend="onnxruntime")
    assert ens.stage is not None and ens.stage.threshold == entry["threshold"]
    # one category-A case has no coronary candidate: a clear error
    with pytest.raises(ValueError, match="no coronary candidate"):
        train_second_stage(w, bgs[:1], 1, phantoms=0, cache=tmp_path / "cache2")
    # a rerun reads the cached rows: no case is made again, and the same classifier comes out
    monkeypatch.setattr(_second_stage, "iter_inserted_scans", lambda *a, **k: pytest.fail("case made again"))
    again = train_second_stage(w, bgs[:1], 3, negatives=[negative], phantoms=0, cache=tmp_path / "cache",
                               held_out=["other"])
    assert again["data"] == entry["data"]
    rerun = Ensemble(w, backend="onnxruntime").stage.model
    for name in ("feature", "threshold", "left", "right", "value", "roots"):
        np.testing.assert_array_equal(getattr(rerun, name), getattr(ens.stage.model, name))


def test_second_stage_thresholds_are_chosen_on_validation_cases(stage_inputs, tmp_path, monkeypatch):
    from cacnet.ensemble import Ensemble
    from cacnet.train import _second_stage, train_second_stage

    bgs, w, negative = stage_inputs
    events = []
    entry = train_second_stage(w, bgs[:1], 3, negatives=[negative], phantoms=0, cache=tmp_path / "cache",
                               validation=2, validation_scans=[negative], variants=(),
                               emit=lambda kind, info: events.append((kind, info)))
    v = entry["validation"]
    # two inserted cases (category A: look-alikes only, and B) and the real scan without calcium
    assert v["zero_calcium_cases"] == 2 and v["calcium_cases"] == 1
    assert [k for k, _ in events].count("second_stage_validation_case") == 3
    assert entry["threshold_no_vote"] >= entry["threshold"]
    assert v["zero_calcium_scored"] / v["zero_calcium_cases"] <= _second_stage.MAX_ZERO_SCANS_SCORED
    stage = Ensemble(w, backend="onnxruntime").stage
    assert (stage.threshold, stage.threshold_no_vote) == (entry["threshold"], entry["threshold_no_vote"])
    # the operating point holds on the validation cases: replay them with the chosen thresholds
    cases = [(p.stem, p.stem.startswith("val_real") or p.stem.endswith("_000"), *_second_stage._load_rows(p))
             for p in sorted((tmp_path / "cache").glob("*/val_*.npz"))]
    assert len(cases) == 3
    assert entry["threshold_majority"] <= entry["threshold"] <= entry["threshold_no_vote"]
    assert stage.threshold_majority == entry["threshold_majority"] and v["n_models"] == 5
    zero_scored = 0
    for _, zero, X, y in cases:
        p = stage.predict(X)
        votes = X[:, _second_stage.FEATURE_NAMES.index("votes")]
        inside = X[:, _second_stage.FEATURE_NAMES.index("sac_sdist_mm")] <= 0
        needed = np.where(votes >= 3, stage.threshold_majority,
                          np.where(votes > 0, stage.threshold, stage.threshold_no_vote))  # 5 models: 3 is a majority
        acc = inside & (p >= needed)
        zero_scored += bool(zero and acc.any())
    assert zero_scored == v["zero_calcium_scored"]
    # a changed anatomical map recomputes only the anatomy columns of cached rows, without making any case
    monkeypatch.setattr(_second_stage, "iter_inserted_scans", lambda *a, **k: pytest.fail("case made again"))
    monkeypatch.setattr(_second_stage, "MAP_VERSION", "another")
    path = sorted((tmp_path / "cache").glob("*/val_real_*.npz"))[0]
    with np.load(path) as z:
        cached = z["X"]
    remapped, _ = _second_stage._load_rows(path)
    np.testing.assert_array_equal(remapped, cached)  # same map code: same columns


def test_second_stage_learns_from_lookalike_rich_phantoms(stage_inputs, tmp_path, monkeypatch):
    """Hard negatives next to the heart: extra phantoms with every look-alike kind (pericardium among them)."""
    from cacnet.train import _second_stage, train_second_stage

    made = []
    real_generate = __import__("cacnet.phantom", fromlist=["generate_phantom"]).generate_phantom

    def spy(seed, **kw):
        made.append(kw)
        return real_generate(seed, **{**kw, "size": 256})

    monkeypatch.setattr("cacnet.phantom.generate_phantom", spy)
    bgs, w, _ = stage_inputs
    entry = train_second_stage(w, bgs[:1], 3, phantoms=0, lookalike_phantoms=1, variants=("default",),
                               cache=tmp_path / "cache")
    assert entry["data"]["lookalike_phantoms_per_variant"] == 1
    assert entry["data"]["lookalike_rich_rate"] == _second_stage.LOOKALIKE_RICH_RATE == 1.0
    assert "phantom-default-lookalikes" in entry["data"]["rows_by_source"]
    assert made == [{"category": "A", "variant": "default", "lookalike_rate": 1.0}]
    assert (next((tmp_path / "cache").iterdir()) / "phantom-default-lookalikes_000.npz").exists()
