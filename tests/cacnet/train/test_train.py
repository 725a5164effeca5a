"""Training: a tiny run that learns, resumes, and exports models cacnet can load."""

import csv
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="training needs the train extra (torch)")
pytest.importorskip("onnx", reason="ONNX export needs onnx")

from cacnet.ensemble import Ensemble, verify_weights  # noqa: E402
from cacnet.train import (Case, TrainConfig, TrainData, UNet3D, dice_ce_loss, export_onnx, save_case,  # noqa: E402
                          train_models, write_manifest)


def toy_cases(n, seed):
    """Coarse volumes with bright blobs; left blobs are LAD (2), right ones RCA (4)."""
    rng = np.random.default_rng(seed)
    cases = []
    for i in range(n):
        x = rng.normal(0.3, 0.02, size=(16, 32, 32)).astype(np.float32)
        y = np.zeros(x.shape, np.uint8)
        for _ in range(3):
            z, r, c = rng.integers(2, 14), rng.integers(4, 28), rng.integers(4, 28)
            x[z - 1 : z + 1, r - 1 : r + 2, c - 1 : c + 2] = 0.8
            y[z - 1 : z + 1, r - 1 : r + 2, c - 1 : c + 2] = 2 if c < 16 else 4
        cases.append(Case(f"toy{i}", x, y, {}))
    return cases


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("train")
    cfg = TrainConfig(steps=40, batch=2, patch=(16, 32, 32), lr=3e-3, val_every=20, checkpoint_every=10, seed=0,
                      threads=2)
    (summary,) = train_models(out / "m", TrainData(toy_cases(6, 0), toy_cases(2, 1)), cfg)
    return out, summary, cfg


def test_model_shape_and_prior():
    m = UNet3D().eval()
    with torch.no_grad():
        out = m(torch.zeros(1, 1, 8, 16, 24))
    assert out.shape == (1, 5, 8, 16, 24)
    assert float(torch.softmax(out, 1)[:, 1:].mean()) < 0.05  # starts near the rare-calcium prior


def _loss_on(cases, state=None) -> float:
    """The training loss of a model over whole toy volumes (eval mode: no patch sampling noise)."""
    torch.manual_seed(0)
    model = UNet3D()
    if state is not None:
        model.load_state_dict(state)
    model.eval()
    x = torch.from_numpy(np.stack([c.x for c in cases]))[:, None]
    y = torch.from_numpy(np.stack([c.y for c in cases])).long()
    with torch.no_grad():
        return float(dice_ce_loss(model(x), y, x))


def test_tiny_training_decreases_the_loss(trained):
    # The per-step loss of 40 steps on random patches is too noisy to compare
    # (windows of 10 steps vary by +-20 %); the loss over the whole training
    # volumes is not: ~5.0 untrained, ~1.0 after training, in repeated runs.
    out, summary, _ = trained
    ckpt = torch.load(out / "m" / "checkpoint.pt", weights_only=False)
    assert ckpt["step"] == 40
    assert _loss_on(toy_cases(6, 0), ckpt["models"][0]) < 0.5 * _loss_on(toy_cases(6, 0))
    with open(out / "m" / "model_0" / "log.csv") as fh:
        assert [int(r["step"]) for r in csv.DictReader(fh)] == [10, 20, 30, 40]
    assert (out / "m" / "model_0" / "best.pt").exists() and summary["best_val_dice"] >= 0


def test_resume_continues_from_the_checkpoint(trained):
    out, _, cfg = trained
    more = TrainConfig(**{**cfg.__dict__, "steps": 50})
    train_models(out / "m", TrainData(toy_cases(6, 0), toy_cases(2, 1)), more)
    with open(out / "m" / "model_0" / "log.csv") as fh:
        steps = [int(r["step"]) for r in csv.DictReader(fh)]
    assert steps == sorted(steps) and steps[-1] == 50 and steps.count(40) == 1  # no step trained twice
    ckpt = torch.load(out / "m" / "checkpoint.pt", weights_only=False)
    assert ckpt["step"] == 50


def test_export_agrees_with_torch_and_loads_in_cacnet(trained, tmp_path):
    out, _, _ = trained
    best = torch.load(out / "m" / "model_0" / "best.pt", weights_only=False)
    weights = tmp_path / "weights"
    diffs = [export_onnx(best["model"], weights / f"unet_{i}.onnx") for i in range(3)]
    assert max(diffs) < 1e-4
    write_manifest(weights, [{"file": f"unet_{i}.onnx", "seed": i} for i in range(3)], {"data": "toy"}, {})
    manifest = json.loads((weights / "manifest.json").read_text())
    assert manifest["architecture"]["levels"] == 4 and manifest["preprocessing"]["clip_hu"] == [-300.0, 800.0]
    assert len(verify_weights(weights)) == 3
    ens = Ensemble(weights, device="cpu")
    vote = ens.vote(toy_cases(1, 5)[0].x)
    assert vote.votes.shape == (16, 32, 32) and vote.models_run == 3


def test_loss_is_low_for_the_right_answer():
    target = torch.zeros(1, 4, 4, 4, dtype=torch.long)
    target[0, 1, 1, 1] = 2
    good = torch.full((1, 5, 4, 4, 4), -10.0)
    good[:, 0] = 10
    good[0, 0, 1, 1, 1], good[0, 2, 1, 1, 1] = -10, 10
    assert float(dice_ce_loss(good, target)) < 0.01 < float(dice_ce_loss(-good, target))


def test_user_dataset_from_labels_and_points(tmp_path, capsys):
    import SimpleITK as sitk

    from cacnet.phantom import generate_phantom, oriented_image
    from cacnet.train import dataset_cases

    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    cases = {}
    rows = ["id,label,artery,x_mm,y_mm,z_mm"]
    truth = ["id,category"]
    for seed, orientation in ((31, "flip_y"), (32, "swap_xy")):
        case = generate_phantom(seed, category="C", size=96)
        cid = f"c{seed}"
        cases[cid] = case
        sitk.WriteImage(oriented_image(case.hu, case, orientation), str(root / "images" / f"{cid}.nii.gz"))
        truth.append(f"{cid},C")
        if seed == 31:  # labels given
            sitk.WriteImage(oriented_image(case.labels, case, orientation), str(root / "labels" / f"{cid}.nii.gz"))
        else:  # points given, in LPS mm
            for p in case.points:
                z, y, x = p["mm_zyx"]
                rows.append(f"{cid},{p['label']},{p['artery']},{x},{y},{z}")
    (root / "points.csv").write_text("\n".join(rows) + "\n")
    (root / "truth.csv").write_text("\n".join(truth) + "\n")
    got = {c.case_id: c for c in dataset_cases(root)}
    assert set(got) == {"c31", "c32"}
    for cid, case in cases.items():
        from cacnet.preprocess import downsample_labels, preprocess

        x, grid = preprocess(case.hu.astype(np.float32), case.spacing)
        assert np.allclose(got[cid].x, x)
        if case.meta["merged_with_lookalike"] == 0:
            assert np.array_equal(got[cid].y, downsample_labels(case.labels, grid))
        assert got[cid].meta["category"] == "C"
    (root / "truth.csv").write_text("id,category\nc31,E\nc32,C\n")  # a wrong annotation is caught
    assert {c.case_id for c in dataset_cases(root)} == {"c32"}
    assert "annotated E" in capsys.readouterr().out


def test_patches_match_a_scipy_reference():
    """The grid_sample patch equals map_coordinates (trilinear image, nearest labels) at the same coordinates."""
    from scipy import ndimage

    from cacnet.train import PatchSampler

    rng = np.random.default_rng(3)
    shape, patch = (24, 40, 40), (6, 10, 8)
    x = rng.random(shape).astype(np.float32)
    y = (rng.random(shape) > 0.9).astype(np.uint8) * rng.integers(1, 5, shape).astype(np.uint8)
    sampler = PatchSampler([Case("r", x, y, {})], patch=patch, seed=0)
    fg = np.argwhere(y > 0)
    compared = near_calcium = 0
    for _ in range(6):
        state = sampler.state()
        px, py = sampler.sample()
        assert px.shape == (1, *patch) and py.dtype == torch.int64
        sampler.set_state(state)  # replay the same random choices by hand
        r = sampler.rng
        r.integers(1)
        if r.random() < 0.67:  # near calcium, half a voxel off where the patch size is even
            center = fg[r.integers(len(fg))] + r.integers(-12, 13, size=3) + 0.5
            near_calcium += 1
        else:
            center = r.uniform(0, 1, size=3) * np.array(shape)
        ang, scale = np.deg2rad(r.uniform(-10, 10)), r.uniform(0.9, 1.1)
        rot = np.array([[1, 0, 0], [0, np.cos(ang), -np.sin(ang)], [0, np.sin(ang), np.cos(ang)]])
        grid = np.indices(patch, dtype=np.float64).reshape(3, -1) - (np.array(patch)[:, None] - 1) / 2
        coords = (rot * np.array([1, scale, scale])[None, :]) @ grid + center[:, None]
        if center[0] % 1 == 0.5:  # z is never rotated or scaled: patch slices land on the case's slices
            assert np.array_equal(coords[0], np.round(coords[0]))
        ref_x = ndimage.map_coordinates(x, coords, order=1, mode="constant", cval=0.0).reshape(patch)
        ref_y = ndimage.map_coordinates(y, coords, order=0, mode="constant", cval=0).reshape(patch)
        sd = r.uniform(0, 0.01)
        gain, offset = r.uniform(0.95, 1.05), r.uniform(-15, 15) / 1100
        sampler.sample()  # move on to the next patch's random state
        c = coords.reshape(3, *patch)
        inside = np.all((c >= 0) & (c <= np.array(shape)[:, None, None, None] - 1), axis=0)
        # inside the volume both interpolate the same values (the noise is at most a few sd)
        assert np.abs(px[0].numpy()[inside] - (ref_x[inside] * gain + offset)).max(initial=0) < 6 * sd + 1e-4
        exact = inside & (np.abs(c - np.round(c)).max(0) < 0.49)  # nearest neighbour is unambiguous
        assert np.array_equal(py.numpy()[exact], ref_y[exact].astype(np.int64))
        compared += int(exact.sum())
    assert compared > 100 and near_calcium > 0


def test_time_limited_run_stops_and_drops_the_rate(tmp_path):
    from cacnet.train import learning_rate

    cfg = TrainConfig(steps=10**6, lr=1e-3, max_seconds=100.0)
    assert learning_rate(cfg, 0, 0.0) == 1e-3
    assert learning_rate(cfg, 0, 75.0) == pytest.approx(3e-4)
    assert learning_rate(cfg, 0, 95.0) == pytest.approx(9e-5)
    assert learning_rate(TrainConfig(steps=100, lr=1e-3), 95, 0.0) == pytest.approx(9e-5)
    run = TrainConfig(steps=10**6, batch=1, patch=(8, 16, 16), val_every=10**6, checkpoint_every=10**6,
                      threads=1, max_seconds=2.0)
    (summary,) = train_models(tmp_path / "t", TrainData(toy_cases(2, 0), toy_cases(1, 1)), run)
    assert 0 < summary["steps_done"] < 10**6 and summary["train_seconds"] < 30
    assert (tmp_path / "t" / "model_0" / "best.pt").exists()  # validated at the end of the time
    warm = TrainConfig(steps=100, lr=1e-3, warmup=0.1)  # from 10 % of the rate to all of it over 10 % of the run
    assert [learning_rate(warm, s, 0.0) for s in (0, 5, 10, 50)] == pytest.approx([1e-4, 5.5e-4, 1e-3, 1e-3])


def test_phantom_cases_stop_at_the_deadline(tmp_path):
    """Past the deadline no further case is waited for: the first ones come back, and are cached."""
    import time

    from cacnet.train import phantom_cases

    got = phantom_cases(7, 3, cache=tmp_path, workers=1, deadline=time.perf_counter())
    assert [c.case_id for c in got] == ["phantom_7_0000"]
    assert sorted(p.name for p in tmp_path.glob("*.npz")) == ["phantom_7_0000.npz"]
    again = phantom_cases(7, 1, cache=tmp_path, workers=1)  # from the cache
    assert np.array_equal(again[0].x, got[0].x)


def test_batch_sampler_cuts_the_patches_of_patch_sampler():
    """One batched cut from the padded buffer gives PatchSampler's patches for the same random draws."""
    from cacnet.train import BatchSampler, PatchSampler

    rng = np.random.default_rng(5)
    cases = []
    for i, shape in enumerate([(20, 36, 30), (16, 40, 40), (24, 28, 36)]):  # different shapes share one buffer
        x = rng.random(shape).astype(np.float32)
        y = ((rng.random(shape) > 0.9) * rng.integers(1, 5, shape)).astype(np.uint8)
        cases.append(Case(f"c{i}", x, y, {}))
    patch = (8, 12, 10)
    batched = BatchSampler(capacity=3, patch=patch, device="cpu", max_shape=(26, 42, 40))
    assert all(batched.add(c) for c in cases)
    assert not batched.add(cases[0])  # full
    single = PatchSampler(cases, patch=patch, seed=11)
    bx, by = batched.batch(12, np.random.default_rng(11), torch.Generator().manual_seed(11))
    assert bx.shape == (12, 1, *patch) and by.shape == (12, *patch) and by.dtype == torch.int64
    same_labels = 0
    for j in range(12):
        px, py = single.sample()
        # same case, place, rotation, scaling, gain and offset; the noise (sd <= 0.01) may differ
        assert torch.abs(bx[j] - px).max() < 0.06
        same_labels += int((by[j] == py).sum())
    # nearest-neighbour labels can differ only at coordinates that fall half-way between voxels
    assert same_labels >= 0.999 * by.numel()
    assert int(by.sum()) > 0


def test_batch_sampler_refuses_a_case_larger_than_its_buffer():
    from cacnet.train import BatchSampler

    s = BatchSampler(capacity=2, patch=(4, 4, 4), device="cpu", max_shape=(8, 8, 8))
    big = Case("big", np.zeros((9, 8, 8), np.float32), np.zeros((9, 8, 8), np.uint8), {})
    assert not s.add(big) and len(s) == 0


def test_batch_sampler_replays_a_batch_from_restored_random_states():
    """What a checkpoint restores (numpy and torch random states) gives the same batch again."""
    from cacnet.train import BatchSampler

    s = BatchSampler(capacity=3, patch=(8, 16, 16), device="cpu", max_shape=(16, 32, 32))
    for c in toy_cases(3, 7):
        assert s.add(c)
    rng, gen = np.random.default_rng(4), torch.Generator().manual_seed(4)
    s.batch(2, rng, gen)
    state = (rng.bit_generator.state, gen.get_state())
    x1, y1 = s.batch(4, rng, gen)
    rng.bit_generator.state = state[0]
    gen.set_state(state[1])
    x2, y2 = s.batch(4, rng, gen)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)


def test_fp32_joint_training_is_bit_reproducible_across_a_resume(tmp_path, monkeypatch):
    """CAC_TRAIN_FP32=1: two models stepped together on phantom, real and hard-negative patches; a run
    stopped after 2 steps and resumed to 4 logs the same losses and ends with the same weights as a run
    of 4 steps at once (the checkpoint restores models, optimizers and random streams)."""
    import dataclasses

    monkeypatch.setenv("CAC_TRAIN_FP32", "1")
    negative = toy_cases(1, 9)[0]
    negative.y[:] = 0

    def data():
        return TrainData(toy_cases(3, 0), toy_cases(1, 1), real=toy_cases(2, 2), real_val=toy_cases(1, 3),
                         negatives=[negative])

    cfg = TrainConfig(steps=4, batch=3, patch=(8, 16, 16), lr=3e-3, val_every=2, checkpoint_every=2, seed=0,
                      threads=2, real_per_batch=1, neg_per_batch=1)
    whole = train_models(tmp_path / "a", data(), cfg, models=2)
    first = train_models(tmp_path / "b", data(), dataclasses.replace(cfg, steps=2), models=2)
    assert [s["steps_done"] for s in first] == [2, 2] and all(s["bf16"] is False for s in first)
    resumed = train_models(tmp_path / "b", data(), cfg, models=2)
    assert [s["steps_this_run"] for s in resumed] == [2, 2]  # continued from step 2, not from 0
    logs = {}
    for run in ("a", "b"):
        for seed in (0, 1):
            with open(tmp_path / run / f"model_{seed}" / "log.csv") as fh:
                logs[run, seed] = [(r["step"], r["loss"], r["val_dice"]) for r in csv.DictReader(fh)]
    assert logs["a", 0] == logs["b", 0] and logs["a", 1] == logs["b", 1] and logs["a", 0] != logs["a", 1]
    assert [int(step) for step, _, _ in logs["b", 0]] == [2, 4]
    a, b = (torch.load(tmp_path / run / "checkpoint.pt", weights_only=False)["models"] for run in ("a", "b"))
    assert all(torch.equal(a[k][n], b[k][n]) for k in (0, 1) for n in a[k])
    assert whole[0]["best_val"]["real_dice"] is not None and whole[0]["n_negatives"] == 1
    with pytest.raises(ValueError, match="no real training cases"):  # real patches in the batch but none given
        train_models(tmp_path / "bad", TrainData(toy_cases(1, 2), toy_cases(1, 3)), cfg)


def test_state_from_onnx_rebuilds_a_trainable_model_that_computes_the_onnx_file(trained, tmp_path):
    """The ONNX export folds batch norms away; state_from_onnx rebuilds them exactly (eval) and
    with the calibration patches' statistics (train mode starts where eval is)."""
    import onnxruntime as ort

    from cacnet.train import state_from_onnx

    out, _, _ = trained
    best = torch.load(out / "m" / "model_0" / "best.pt", weights_only=False)
    # a trained model whose batch norms are far from identity, so that folding matters
    original = {k: v.clone() for k, v in best["model"].items()}
    for name in original:
        if name.endswith("running_mean"):
            original[name] += 0.3
        if name.endswith("running_var"):
            original[name] *= 2.5
    export_onnx(original, tmp_path / "m.onnx")
    cases = toy_cases(2, 7)
    x = torch.from_numpy(np.stack([c.x for c in cases])[:, None])
    state = state_from_onnx(tmp_path / "m.onnx", x)
    model = UNet3D()
    model.load_state_dict(state)
    model.eval()
    with torch.no_grad():
        mine = model(x).numpy()
    onnx_out = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"]).run(
        None, {"image": x.numpy()})[0]
    assert np.abs(mine - onnx_out).max() < 1e-4
    model.train()  # batch statistics of the calibration batch: the same function
    with torch.no_grad():
        assert np.abs(model(x).numpy() - onnx_out).max() < 1e-3
    loss = dice_ce_loss(model(x), torch.from_numpy(np.stack([c.y for c in cases])).long(), x)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_negative_case_and_focus_centre_patches_on_candidates(tmp_path):
    """A hard negative: all labels background; its patches centre near the given focus voxels."""
    import SimpleITK as sitk

    from cacnet.train import CANDIDATE_X, BatchSampler, negative_case
    from cacnet.train._data import draw_patch

    hu = np.full((12, 80, 80), 40.0, np.float32)
    hu[5:7, 60:63, 60:63] = 700.0  # "bone"
    img = sitk.GetImageFromArray(hu)
    img.SetSpacing((2.5, 2.5, 2.5))
    sitk.WriteImage(img, str(tmp_path / "neg.nii.gz"))
    case = negative_case(tmp_path / "neg.nii.gz")
    assert case.case_id == "neg" and case.meta["negative"] and not case.y.any()
    focus = np.argwhere(case.x >= CANDIDATE_X)
    assert len(focus) == 18 and (focus[:, 1] >= 60).all()
    near = {}
    for name, f in (("focus", focus), ("plain", None)):
        sampler = BatchSampler(1, (4, 8, 8), "cpu", max_shape=case.x.shape)
        assert sampler.add(case, focus=f)
        x, y = sampler.batch(4, np.random.default_rng(0), torch.Generator().manual_seed(0))
        assert not y.any() and x.shape == (4, 1, 4, 8, 8)
        rng = np.random.default_rng(1)
        centres = np.array([draw_patch(rng, sampler.shapes, sampler.fg, sampler.patch).center for _ in range(400)])
        near[name] = float((np.abs(centres[:, 1:] - 61) <= 13.5).all(axis=1).mean())
    assert near["focus"] > 0.6 and near["plain"] < 0.25, near


def _write_volume(arr, path):
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((2.5, 2.5, 2.5))  # the coarse grid: preprocessing keeps the shape
    sitk.WriteImage(img, str(path))


def _tiny_run_folder(out):
    """A cac train folder whose phantom caches hold toy cases (2 training, 1 validation): no phantom is made."""
    for i, c in enumerate(toy_cases(2, 0)):
        c.case_id = f"phantom_1000_{i:04d}"
        save_case(c, out / "cache" / "train")
    val = toy_cases(1, 1)[0]
    val.case_id = "phantom_1001_0000"
    save_case(val, out / "cache" / "val")
    return out


TINY = ["--phantoms", "2", "--val-phantoms", "1", "--models", "2", "--batch", "3", "--patch", "8", "16", "16",
        "--workers", "1"]


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """`cac train` with 2 models on toy phantoms, a 3-case --data set and one --negatives scan, stopped at step 2."""
    from typer.testing import CliRunner

    from cacnet.cli import app

    root = tmp_path_factory.mktemp("cli_train")
    data = root / "data"
    (data / "images").mkdir(parents=True)
    (data / "labels").mkdir()
    for i in range(3):
        hu = np.full((16, 32, 32), 40.0, np.float32)
        labels = np.zeros(hu.shape, np.uint8)
        hu[6:9, 10:13, 8 + 5 * i:11 + 5 * i] = 400.0
        labels[6:9, 10:13, 8 + 5 * i:11 + 5 * i] = 2
        _write_volume(hu, data / "images" / f"d{i}.nii.gz")
        _write_volume(labels, data / "labels" / f"d{i}.nii.gz")
    neg = np.full((16, 32, 32), 40.0, np.float32)
    neg[4:8, 20:26, 20:26] = 700.0  # "bone": a candidate that is not coronary calcium
    _write_volume(neg, root / "neg.nii.gz")
    out = _tiny_run_folder(root / "run")
    args = ["train", str(out), *TINY, "--data", str(data), "--negatives", str(root / "neg.nii.gz"),
            "--val-every", "2", "--checkpoint-every", "1"]
    res = CliRunner().invoke(app, [*args, "--steps", "2"])  # "interrupted" after 2 steps
    assert res.exit_code == 0, res.output
    with open(out / "model_0" / "log.csv") as fh:
        first_rows = list(csv.DictReader(fh))
    return root, out, args, first_rows


def test_cac_train_end_to_end_with_data_negatives_and_resume(cli_run):
    """Two models in one process on phantoms + a --data split by id + a hard negative; rerun with more
    steps continues from the checkpoint; the export loads in cacnet.ensemble.Ensemble."""
    from typer.testing import CliRunner

    from cacnet.cli import app

    root, out, args, first_rows = cli_run
    assert torch.load(out / "checkpoint.pt", weights_only=False)["step"] == 2
    res = CliRunner().invoke(app, [*args, "--steps", "4"])
    assert res.exit_code == 0, res.output
    assert "resuming from step 2" in res.output
    for seed in (0, 1):
        with open(out / f"model_{seed}" / "log.csv") as fh:
            rows = list(csv.DictReader(fh))
        assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]  # no step trained twice
        if seed == 0:
            assert rows[:2] == first_rows  # the first run's steps were kept, not trained again
        assert rows[1]["val_real_dice"] != "" and rows[3]["negatives_false_voxels"] != ""
    assert torch.load(out / "checkpoint.pt", weights_only=False)["step"] == 4
    manifest = json.loads((out / "weights" / "manifest.json").read_text())
    t = manifest["training"]
    (data_set,) = t["data_sets"]
    assert sorted(data_set["train_ids"] + data_set["val_ids"]) == ["d0", "d1", "d2"] and len(data_set["val_ids"]) == 1
    assert [n["id"] for n in t["negatives"]] == ["neg"] and t["negatives"][0]["source"].endswith("neg.nii.gz")
    assert t["batch"] == "1 phantom + 1 real + 1 hard-negative patches" and t["init"].startswith("none")
    assert t["train_cases"] == 2 + 2 and t["val_cases"] == 1 + 1 and "pooled" in t["selection"]
    assert [m["file"] for m in manifest["models"]] == ["unet_0.onnx", "unet_1.onnx"]
    assert all(m["best_step"] in (2, 4) and m["steps_done"] == 4 for m in manifest["models"])
    assert Ensemble(out / "weights", device="cpu").vote(np.zeros((8, 16, 16), np.float32)).models_run == 2


def test_cac_train_init_from_onnx_starts_from_those_weights(cli_run):
    """--init WEIGHTS (unet_<k>.onnx): before any step the models compute what the ONNX files compute;
    with --exclude-start the start weights are never kept."""
    import onnxruntime as ort
    from typer.testing import CliRunner

    from cacnet.cli import app

    root, out, _, _ = cli_run  # its weights/: exported at the end of every run
    x = np.random.default_rng(0).random((1, 1, 16, 32, 32)).astype(np.float32)

    def logits(folder, k):
        return ort.InferenceSession(str(folder / f"unet_{k}.onnx"), providers=["CPUExecutionProvider"]).run(
            None, {"image": x})[0]

    start = _tiny_run_folder(root / "init0")
    res = CliRunner().invoke(app, ["train", str(start), *TINY, "--init", str(out / "weights"), "--steps", "0"])
    assert res.exit_code == 0, res.output
    for k in (0, 1):
        assert np.abs(logits(start / "weights", k) - logits(out / "weights", k)).max() < 1e-4
    manifest = json.loads((start / "weights" / "manifest.json").read_text())
    assert manifest["training"]["init"] == str(out / "weights") and manifest["training"]["config"]["warmup"] == 0.03
    assert [m["best_step"] for m in manifest["models"]] == [0, 0]
    assert manifest["models"][0]["start_val_dice"] is not None
    tuned = _tiny_run_folder(root / "init1")
    res = CliRunner().invoke(app, ["train", str(tuned), *TINY, "--init", str(out / "weights"), "--steps", "1",
                                   "--exclude-start"])
    assert res.exit_code == 0, res.output
    assert [m["best_step"] for m in json.loads((tuned / "weights" / "manifest.json").read_text())["models"]] == [1, 1]


def test_max_negative_voxels_keeps_only_steps_quiet_on_the_negatives(tmp_path, monkeypatch):
    """A step whose model labels more hard-negative coarse voxels than the cap is never kept: the best step
    is the best-Dice step among those within the cap (read back from the log). When no step meets the cap,
    the run is not lost: the step with the fewest such voxels (then the best Dice) is kept, with a note."""
    import dataclasses

    monkeypatch.setenv("CAC_TRAIN_FP32", "1")
    negative = toy_cases(1, 9)[0]
    negative.y[:] = 0

    def data():
        return TrainData(toy_cases(3, 0), toy_cases(1, 1), negatives=[negative])

    cfg = TrainConfig(steps=6, batch=2, patch=(8, 16, 16), lr=3e-2, val_every=1, checkpoint_every=1, seed=0,
                      threads=2, neg_per_batch=1)
    free = train_models(tmp_path / "free", data(), cfg, models=1)[0]
    with open(tmp_path / "free" / "model_0" / "log.csv") as fh:
        rows = [r for r in csv.DictReader(fh) if r["val_dice"]]
    false = {int(r["step"]): int(float(r["negatives_false_voxels"])) for r in rows}
    dice = {int(r["step"]): float(r["val_dice"]) for r in rows}
    assert free["best_step"] == max(dice, key=lambda s: (dice[s], -s))
    cap = min(false.values())
    assert any(v > cap for v in false.values())  # the cap excludes some validated step
    capped = train_models(tmp_path / "capped", data(), dataclasses.replace(cfg, max_negative_voxels=cap),
                          models=1)[0]
    allowed = [s for s in dice if false[s] <= cap]
    assert capped["best_step"] in allowed
    assert dice[capped["best_step"]] == max(dice[s] for s in allowed)
    assert capped["best_val"]["negatives_false_voxels"] <= cap
    events = []
    none = train_models(tmp_path / "none", data(), dataclasses.replace(cfg, max_negative_voxels=cap - 1), models=1,
                        on_event=lambda kind, info: events.append((kind, info)))[0]
    first_best = min(dice, key=lambda s: (false[s], -dice[s], s))  # fewest, then best Dice, then earliest
    assert none["best_step"] == first_best and none["best_val"]["negatives_false_voxels"] == cap
    assert f"kept step {first_best}" in none["selection_note"] and f"at most {cap - 1}" in none["selection_note"]
    assert [info["model"] for kind, info in events if kind == "warning"] == [0]
