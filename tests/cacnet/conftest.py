"""Fixtures for cacnet tests: toy ONNX ensembles and small phantom scans."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from cacnet.phantom import generate_phantom, oriented_image


def threshold_model(path: Path, threshold_hu: float, artery: int = 2) -> None:
    """An ONNX 'model' that calls calcium every coarse voxel above a HU threshold.

    Same interface as the real U-Nets: image (N, 1, Z, Y, X) in [0, 1] ->
    logits (N, 5, Z, Y, X); calcium is labelled ``artery``.
    """
    import onnx
    from onnx import TensorProto, helper

    t = (threshold_hu + 300.0) / 1100.0
    bias = np.full((1, 5, 1, 1, 1), -1.0, np.float32)
    bias[0, artery] = 0.0
    bias[0, 0] = 0.0
    sign = np.array([-1, 1, 1, 1, 1], np.float32).reshape(1, 5, 1, 1, 1) * 100
    nodes = [
        helper.make_node("Sub", ["image", "t"], ["d"]),
        helper.make_node("Mul", ["d", "sign"], ["s"]),
        helper.make_node("Add", ["s", "bias"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes, "threshold",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["n", 1, "z", "y", "x"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 5, "z", "y", "x"])],
        [helper.make_tensor("t", TensorProto.FLOAT, [], [t]),
         helper.make_tensor("sign", TensorProto.FLOAT, sign.shape, sign.ravel()),
         helper.make_tensor("bias", TensorProto.FLOAT, bias.shape, bias.ravel())],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def make_weights(folder: Path, thresholds=(130, 130, 130, 300, 300)) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    models = []
    for i, thr in enumerate(thresholds):
        f = folder / f"toy_{i}.onnx"
        threshold_model(f, thr)
        models.append({"file": f.name, "sha256": hashlib.sha256(f.read_bytes()).hexdigest(), "seed": i})
    (folder / "manifest.json").write_text(json.dumps({"models": models, "training": {"data": "toy thresholds"}}))
    return folder


@pytest.fixture(scope="session", autouse=True)
def _model_cache_in_a_temporary_folder(tmp_path_factory):
    """OpenVINO's model cache (cacnet._model_cache) of the tests' processes, CLI runs included: not the user's."""
    import os

    if "CAC_CACHE_DIR" in os.environ:
        yield
        return
    os.environ["CAC_CACHE_DIR"] = str(tmp_path_factory.mktemp("model_cache"))
    try:
        yield
    finally:
        os.environ.pop("CAC_CACHE_DIR", None)


@pytest.fixture(scope="session")
def toy_weights(tmp_path_factory) -> Path:
    pytest.importorskip("onnx", reason="onnx (test extra) builds the toy models")
    return make_weights(tmp_path_factory.mktemp("weights"))


@pytest.fixture(scope="session")
def phantom_scans(tmp_path_factory):
    """Three small phantom scans on disk (one stored flipped), with their cases."""
    out = tmp_path_factory.mktemp("scans")
    cases = {}
    for seed, cat, orientation in ((21, "C", "identity"), (22, "D", "flip_x"), (23, "A", "swap_xy")):
        case = generate_phantom(seed, category=cat, size=128)
        sitk.WriteImage(oriented_image(case.hu, case, orientation), str(out / f"case{seed}.nii.gz"))
        cases[f"case{seed}"] = (case, orientation)
    return out, cases


@pytest.fixture(scope="session")
def scored_example(tmp_path_factory):
    """The bundled example scored by the shipped U-Nets' majority vote, with report and preview: (outdir, ScanResult).

    The majority vote leaves the example a rejected candidate (a component a minority voted for), which the
    review tests need to accept, reject and relabel; the second stage's way through scoring and the report is
    tested in test_candidates.py and by test_shipped_weights.py.
    """
    from cacnet.ensemble import Ensemble
    from cacnet.outputs.write import write_outputs
    from cacnet.pipeline import score_scan

    example = Path(__file__).resolve().parents[2] / "examples" / "data" / "phantom_example.nii.gz"
    out = tmp_path_factory.mktemp("scored_example")
    res = score_scan(example, Ensemble(device="cpu", second_stage=False))
    write_outputs(res, out, preview=True, report=True)
    return out, res
