"""Training: a tiny run that learns, resumes, and exports models cacnet can load."""

import csv
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="training needs the train extra (torch)")
pytest.importorskip("onnx", reason="ONNX export needs onnx")

from cacnet.ensemble import Ensemble, verify_weights  # noqa: E402
from cacnet.train import Case, TrainConfig, UNet3D, dice_ce_loss, export_onnx, train_model, write_manifest  # noqa: E402


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
    summary = train_model(out / "m", toy_cases(6, 0), toy_cases(2, 1), cfg)
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
    assert _loss_on(toy_cases(6, 0), ckpt["model"]) < 0.5 * _loss_on(toy_cases(6, 0))
    with open(out / "m" / "log.csv") as fh:
        assert [int(r["step"]) for r in csv.DictReader(fh)] == [10, 20, 30, 40]
    assert (out / "m" / "best.pt").exists() and summary["best_val_dice"] >= 0


def test_resume_continues_from_the_checkpoint(trained):
    out, _, cfg = trained
    more = TrainConfig(**{**cfg.__dict__, "steps": 50})
    train_model(out / "m", toy_cases(6, 0), toy_cases(2, 1), more)
    with open(out / "m" / "log.csv") as fh:
        steps = [int(r["step"]) for r in csv.DictReader(fh)]
    assert steps == sorted(steps) and steps[-1] == 50 and steps.count(40) == 1  # no step trained twice
    ckpt = torch.load(out / "m" / "checkpoint.pt", weights_only=False)
    assert ckpt["step"] == 50


def test_export_agrees_with_torch_and_loads_in_cacnet(trained, tmp_path):
    out, _, _ = trained
    best = torch.load(out / "m" / "best.pt", weights_only=False)
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
    summary = train_model(tmp_path / "t", toy_cases(2, 0), toy_cases(1, 1), run)
    assert 0 < summary["steps_done"] < 10**6 and summary["train_seconds"] < 30
    assert (tmp_path / "t" / "best.pt").exists()  # validated at the end of the time


def test_phantom_cases_stop_at_the_deadline(tmp_path):
    """Past the deadline no further case is waited for: the first ones come back, and are cached."""
    import time

    from cacnet.train import phantom_cases

    got = phantom_cases(7, 3, cache=tmp_path, workers=1, deadline=time.perf_counter())
    assert [c.case_id for c in got] == ["phantom_7_0000"]
    assert sorted(p.name for p in tmp_path.glob("*.npz")) == ["phantom_7_0000.npz"]
    again = phantom_cases(7, 1, cache=tmp_path, workers=1)  # from the cache
    assert np.array_equal(again[0].x, got[0].x)


def test_cac_train_end_to_end_writes_a_loadable_ensemble(tmp_path):
    """`cac train` on two tiny phantom sets: cache, one model, export, manifest with the set sizes."""
    from typer.testing import CliRunner

    from cacnet.cli import app

    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["train", str(out), "--phantoms", "2", "--val-phantoms", "1", "--models", "1",
                                   "--steps", "2", "--val-every", "1", "--batch", "3"])
    assert res.exit_code == 0, res.output
    manifest = json.loads((out / "weights" / "manifest.json").read_text())
    assert manifest["training"]["config"]["batch"] == 3
    assert manifest["training"]["train_cases"] == 2 and manifest["training"]["val_cases"] == 1
    assert [m["file"] for m in manifest["models"]] == ["unet_0.onnx"] and manifest["models"][0]["best_step"] in (1, 2)
    assert len(list((out / "cache" / "train").glob("*.npz"))) == 2
    assert Ensemble(out / "weights", device="cpu").vote(np.zeros((8, 16, 16), np.float32)).models_run == 1


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


def test_batched_patch_sampler_draws_what_patch_sampler_draws():
    from cacnet.train import BatchedPatchSampler, PatchSampler

    cases = toy_cases(3, 7)
    a = PatchSampler(cases, patch=(8, 16, 16), seed=4)
    b = BatchedPatchSampler(cases, patch=(8, 16, 16), seed=4)
    state = b.state()
    for _ in range(3):
        (ax, ay), (bx, by) = a.batch(4), b.batch(4)
        assert torch.abs(ax - bx).max() < 0.06
        assert (ay == by).float().mean() >= 0.999
    b.set_state(state)  # a restored state replays the same batch
    again = b.batch(4)
    b.set_state(state)
    assert torch.equal(b.batch(4)[1], again[1])


def test_training_with_the_batched_sampler_runs_and_resumes(tmp_path):
    """The GPU's sampler, forced on the CPU: trains, validates, checkpoints and resumes like the default one."""
    cfg = TrainConfig(steps=4, batch=3, patch=(16, 32, 32), lr=3e-3, val_every=2, checkpoint_every=2, seed=1,
                      threads=2, sampler="batched")
    first = train_model(tmp_path / "m", toy_cases(4, 2), toy_cases(1, 3), cfg)
    assert first["steps_done"] == 4 and (tmp_path / "m" / "best.pt").exists()
    more = train_model(tmp_path / "m", toy_cases(4, 2), toy_cases(1, 3), TrainConfig(**{**cfg.__dict__, "steps": 6}))
    assert more["steps_done"] == 6
    with open(tmp_path / "m" / "log.csv") as fh:
        steps = [int(r["step"]) for r in csv.DictReader(fh)]
    assert steps == [2, 4, 6]  # continued from step 4, not from 0
    with pytest.raises(ValueError, match="sampler"):
        train_model(tmp_path / "bad", toy_cases(1, 2), toy_cases(1, 3), TrainConfig(steps=1, sampler="fast"))


def test_fp32_training_is_bit_reproducible(tmp_path, monkeypatch):
    """CAC_TRAIN_FP32=1: two runs with the same seed log the same losses and save the same weights."""
    monkeypatch.setenv("CAC_TRAIN_FP32", "1")
    cfg = TrainConfig(steps=4, batch=2, patch=(16, 32, 32), lr=3e-3, val_every=2, checkpoint_every=1, seed=0, threads=2)
    runs = []
    for name in ("a", "b"):
        summary = train_model(tmp_path / name, toy_cases(3, 0), toy_cases(1, 1), cfg)
        assert summary["bf16"] is False
        with open(tmp_path / name / "log.csv") as fh:
            losses = [r["loss"] for r in csv.DictReader(fh)]
        state = torch.load(tmp_path / name / "checkpoint.pt", weights_only=False)["model"]
        runs.append((losses, state))
    assert runs[0][0] == runs[1][0]
    assert all(torch.equal(runs[0][1][k], runs[1][1][k]) for k in runs[0][1])


def test_state_from_onnx_rebuilds_a_trainable_model_that_computes_the_onnx_file(trained, tmp_path):
    """The ONNX export folds batch norms away; state_from_onnx rebuilds them exactly (eval) and
    with the calibration patches' statistics (train mode starts where eval is)."""
    import onnxruntime as ort

    from cacnet.train import state_from_onnx

    out, _, _ = trained
    best = torch.load(out / "m" / "best.pt", weights_only=False)
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
