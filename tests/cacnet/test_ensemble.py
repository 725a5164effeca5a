"""The vote arithmetic of cacnet.ensemble against brute force over every way the rest could vote."""

import itertools
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cacnet.ensemble import (DEFAULT_WEIGHTS, Ensemble, combine_votes, cpu_supports_bf16, decided, openvino_available,
                             resolve_backend)
from cacnet.errors import DeviceUnavailableError, UsageError

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "data" / "phantom_example.nii.gz"


def reference_outcome(maps: list[int], n_models: int) -> tuple[bool, int]:
    """Majority calcium and most voted artery (lowest label on ties) of one voxel, obviously."""
    calcium_votes = sum(1 for m in maps if m > 0)
    calcium = 2 * calcium_votes > n_models
    counts = {a: sum(1 for m in maps if m == a) for a in (1, 2, 3, 4)}
    best = max(counts.values())
    artery = min(a for a in (1, 2, 3, 4) if counts[a] == best) if calcium else 0
    return calcium, artery


def reference_decided(maps: list[int], n_models: int) -> bool:
    """True when every completion of the remaining models' votes gives the same outcome."""
    outcomes = {reference_outcome(maps + list(rest), n_models)
                for rest in itertools.product(range(5), repeat=n_models - len(maps))}
    return len(outcomes) == 1


@settings(max_examples=300, deadline=None)
@given(n_models=st.sampled_from([1, 2, 3, 4, 5]), data=st.data())
def test_decided_matches_brute_force(n_models, data):
    k = data.draw(st.integers(1, n_models), label="models run")
    voxels = data.draw(st.lists(st.lists(st.integers(0, 4), min_size=k, max_size=k), min_size=1, max_size=12))
    maps = [np.array([v[i] for v in voxels], dtype=np.uint8) for i in range(k)]
    vote = combine_votes(maps, n_models)
    got = decided(vote)
    expected = [reference_decided(v, n_models) for v in voxels]
    assert got.tolist() == expected
    # where decided, the partial vote already gives the final outcome
    for i, v in enumerate(voxels):
        if expected[i]:
            calcium, artery = reference_outcome(v, n_models)
            assert bool(vote.calcium[i]) == calcium
            if calcium:
                assert int(vote.artery[i]) == artery


def test_four_of_five_decides_more_than_unanimity():
    # 3 of 4 models say LAD, one says nothing: the fifth cannot change it
    maps = [np.array([2]), np.array([2]), np.array([2]), np.array([0])]
    assert decided(combine_votes(maps, 5)).all()
    assert not decided(combine_votes(maps[1:], 5)).any()  # 2 LAD, 1 none after 3: undecided
    # a 2-2 split after 4 is undecided
    assert not decided(combine_votes([np.array([1]), np.array([1]), np.array([0]), np.array([0])], 5)).any()


HAS_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()


@pytest.mark.parametrize("backend", ["auto", "onnxruntime"])
def test_auto_on_the_cpu_is_not_a_warning(toy_weights, backend):
    ens = Ensemble(toy_weights, device="auto", backend=backend)
    assert ens.warnings == []
    assert ens.provider in ("CPUExecutionProvider", "CUDAExecutionProvider", "OpenVINO:CPU")
    if not HAS_CUDA:
        cpu = "OpenVINO:CPU" if ens.backend == "openvino" else "CPUExecutionProvider"
        assert ens.provider == cpu and ens.device == "cpu"
        with pytest.raises(DeviceUnavailableError) as info:
            Ensemble(toy_weights, device="cuda", backend=backend)
        assert info.value.exit_code == 5


def test_backend_selection(toy_weights, monkeypatch):
    import cacnet.ensemble as ensemble_mod

    ov = ensemble_mod.openvino_available()
    if not HAS_CUDA:
        assert resolve_backend("auto", "auto") == ("openvino" if ov else "onnxruntime")
    assert resolve_backend("auto", "cpu") == ("openvino" if ov else "onnxruntime")
    assert resolve_backend("auto", "cuda") == "onnxruntime"
    assert resolve_backend("onnxruntime", "cpu") == "onnxruntime"
    assert resolve_backend("openvino", "cpu") == "openvino"
    with pytest.raises(ValueError, match="backend must be"):
        resolve_backend("tensorrt", "cpu")
    explicit = Ensemble(toy_weights, device="cpu", backend="onnxruntime")
    assert explicit.describe() == {"backend": "onnxruntime", "provider": "CPUExecutionProvider", "device": "cpu",
                                   "precision": "fp32", "threads": None, "decision": "majority vote"}
    # without OpenVINO, auto falls back to onnxruntime and an explicit openvino is refused
    monkeypatch.setattr(ensemble_mod, "openvino_available", lambda: False)
    assert Ensemble(toy_weights, device="cpu").backend == "onnxruntime"
    with pytest.raises(DeviceUnavailableError, match="pip install openvino"):
        Ensemble(toy_weights, device="cpu", backend="openvino")
    with pytest.raises(UsageError, match="runs on the CPU"):
        Ensemble(toy_weights, device="cuda", backend="openvino")


needs_openvino = pytest.mark.skipif(not openvino_available(), reason="OpenVINO is not installed")


@needs_openvino
def test_openvino_is_fp32_and_reports_what_ran(toy_weights):
    ens = Ensemble(toy_weights, device="cpu", threads=1)
    assert ens.describe() == {"backend": "openvino", "provider": "OpenVINO:CPU", "device": "cpu",
                              "precision": "fp32", "threads": 1, "decision": "majority vote"}
    assert str(ens.sessions[0].get_property("INFERENCE_PRECISION_HINT")) in ("<Type: 'float32'>", "f32")
    assert Ensemble(toy_weights, device="cpu").threads >= 1  # set explicitly even when not given


@needs_openvino
def test_backends_give_identical_votes_on_toy_models(toy_weights):
    ov_ens = Ensemble(toy_weights, device="cpu", backend="openvino")
    ort_ens = Ensemble(toy_weights, device="cpu", backend="onnxruntime")
    rng = np.random.default_rng(7)
    for shape in [(1, 1, 4), (5, 17, 23), (16, 32, 32)]:  # dynamic shapes: one compiled model serves all
        x = rng.random(shape, dtype=np.float32)
        a, b = ov_ens.vote(x), ort_ens.vote(x)
        assert np.array_equal(a.votes, b.votes) and np.array_equal(a.artery, b.artery)
        for la, lb in zip(ov_ens.logits(x), ort_ens.logits(x)):
            assert la.shape == (5, *shape) and np.allclose(la, lb, atol=1e-4)


@needs_openvino
@pytest.mark.skipif(not (DEFAULT_WEIGHTS / "manifest.json").exists() or not EXAMPLE.exists(),
                    reason="needs the shipped weights and the example scan of a source checkout")
def test_backends_give_identical_votes_on_the_shipped_weights():
    from cacnet.io import read_scan
    from cacnet.preprocess import coarse_grid, downsample, normalize

    scan = read_scan(EXAMPLE)
    x = normalize(downsample(scan.hu, coarse_grid(scan.hu.shape, scan.spacing)))[:16, :48, :48]
    ov_ens = Ensemble(device="cpu", backend="openvino")
    maps = {"openvino": list(ov_ens.predict(x)), "onnxruntime": list(Ensemble(device="cpu", backend="onnxruntime")
                                                                     .predict(x))}
    graph = ov_ens.classes(x)  # the five models as one OpenVINO graph with an argmax each
    for a, b, g in zip(maps["openvino"], maps["onnxruntime"], graph):
        assert np.array_equal(a, b) and np.array_equal(g, b) and g.dtype == np.uint8


@needs_openvino
def test_one_graph_argmax_breaks_ties_like_numpy():
    """The TopK that ends each model in the one-graph ensemble picks the lowest class among equal maxima."""
    import openvino as ov

    from cacnet.ensemble import _argmax_node

    try:
        from openvino import opset11 as ops
    except ImportError:
        from openvino.runtime import opset11 as ops
    param = ops.parameter(ov.PartialShape([1, 5, -1, -1, -1]), ov.Type.f32)
    model = ov.Model([ops.result(_argmax_node(ops, param.output(0)))], [param])
    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    rng = np.random.default_rng(3)
    logits = rng.integers(0, 3, size=(1, 5, 6, 40, 40)).astype(np.float32)  # ties everywhere
    logits[0, :, 0, 0, 0] = 1.0  # a five-way tie
    got = compiled({0: logits})[0][:, 0]
    assert got.shape == (1, 6, 40, 40)
    assert np.array_equal(got, logits.argmax(axis=1)) and got[0, 0, 0, 0] == 0


@needs_openvino
def test_vote_without_early_stop_uses_the_one_graph(toy_weights):
    """Toy threshold models tie their logits on most voxels: the one graph still gives numpy's argmax."""
    ens = Ensemble(toy_weights, device="cpu", backend="openvino")
    rng = np.random.default_rng(11)
    x = rng.random((8, 24, 24), dtype=np.float32)
    single = list(ens.predict(x))
    assert all(np.array_equal(a, b) for a, b in zip(ens.classes(x), single))
    full = ens.vote(x)
    assert full.models_run == 5 and np.array_equal(full.votes, combine_votes(single, 5).votes)


def test_bf16_is_refused_where_unsupported(toy_weights, monkeypatch):
    import cacnet.ensemble as ensemble_mod

    with pytest.raises(ValueError, match="precision must be"):
        Ensemble(toy_weights, device="cpu", precision="fp16")
    with pytest.raises(UsageError, match="needs the OpenVINO backend") as info:
        Ensemble(toy_weights, device="cpu", backend="onnxruntime", precision="bf16")
    assert info.value.exit_code == 2
    if openvino_available():
        monkeypatch.setattr(ensemble_mod, "cpu_supports_bf16", lambda: False)
        with pytest.raises(UsageError, match="no bf16 support"):
            Ensemble(toy_weights, device="cpu", precision="bf16")


@needs_openvino
@pytest.mark.skipif(not cpu_supports_bf16(), reason="this CPU has no bf16")
def test_bf16_where_supported(toy_weights):
    ens = Ensemble(toy_weights, device="cpu", precision="bf16")
    assert ens.describe()["precision"] == "bf16"
    x = ((np.array([0.0, 140.0, 250.0, 500.0], np.float32) + 300) / 1100).reshape(1, 1, 4)
    assert ens.vote(x).votes.ravel().tolist() == [0, 3, 3, 5]
