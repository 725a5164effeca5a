"""ONNX export of trained models and the weights manifest (private)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import torch

from .._files import sha256_file as sha256
from ..preprocess import PREPROCESSING
from ._model import ARCHITECTURE, UNet3D

__all__ = ["export_onnx", "sha256", "write_manifest"]


def export_onnx(state_dict: dict, path: Path, check_shape=(1, 1, 40, 48, 56)) -> float:
    """Export a trained U-Net to ONNX (opset 17, dynamic spatial axes).

    Returns the largest difference in softmax probability between PyTorch
    and onnxruntime on a random input of ``check_shape``.
    """
    import onnxruntime as ort

    model = UNet3D()
    model.load_state_dict(state_dict)
    model.eval()
    x = torch.rand(*check_shape, generator=torch.Generator().manual_seed(0))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (torch.rand(1, 1, 16, 16, 16),), str(tmp), opset_version=17, dynamo=False,
            input_names=["image"], output_names=["logits"],
            dynamic_axes={"image": {0: "batch", 2: "z", 3: "y", 4: "x"}, "logits": {0: "batch", 2: "z", 3: "y", 4: "x"}},
        )
    tmp.replace(path)
    with torch.no_grad():
        ref = torch.softmax(model(x), dim=1).numpy()
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = sess.run(None, {"image": x.numpy()})[0]
    prob = np.exp(out - out.max(axis=1, keepdims=True))
    prob /= prob.sum(axis=1, keepdims=True)
    return float(np.abs(prob - ref).max())


def write_manifest(weights_dir: Path, models: list[dict], training: dict, metrics: dict) -> Path:
    """Write ``manifest.json``: files with sha256, architecture, preprocessing, data, seeds, metrics."""
    weights_dir = Path(weights_dir)
    entries = []
    for m in models:
        f = weights_dir / m["file"]
        entries.append({**m, "sha256": sha256(f), "bytes": f.stat().st_size})
    manifest = {
        "format": "cac-toolkit weights manifest v1",
        "models": entries,
        "architecture": ARCHITECTURE,
        "preprocessing": PREPROCESSING,
        "ensemble": "majority vote per voxel (calcium = class != background); artery = most voted among voting models",
        "training": training,
        "metrics": metrics,
    }
    path = weights_dir / "manifest.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest, indent=2))
    tmp.replace(path)
    return path
