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

__all__ = ["export_onnx", "sha256", "state_from_onnx", "write_manifest"]


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


def state_from_onnx(path: Path, calibration: "torch.Tensor") -> dict:
    """A trainable U-Net state dict from an exported ONNX model (to continue training it).

    The ONNX export folds each batch norm into the convolution before it
    (weight and bias), so the running statistics and the affine parameters
    of the batch norms are gone. They are rebuilt so that the model computes
    exactly what the ONNX file computes in eval mode, and so that in train
    mode (batch statistics) it starts close to it: each batch norm gets the
    mean and variance of its convolution's output over ``calibration``
    (patches like those it will be trained on) as running statistics, and
    the affine parameters that undo them, plus the folded bias.

    Parameters
    ----------
    path : path
        An ``unet_<k>.onnx`` written by :func:`export_onnx`.
    calibration : torch.Tensor
        (n, 1, z, y, x) preprocessed inputs, spatial dims multiples of 8.

    Returns
    -------
    dict
        A state dict for :class:`UNet3D` (float32 tensors).
    """
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    init = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    model = UNet3D()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    folded: dict[str, np.ndarray] = {}  # "enc.0.conv1" -> folded bias
    for node in graph.node:
        if node.op_type not in ("Conv", "ConvTranspose"):
            continue
        module = node.name.strip("/").rsplit("/", 1)[0].replace("/", ".")  # "/enc.0/conv1/Conv" -> "enc.0.conv1"
        weight = init[node.input[1]]
        if f"{module}.weight" not in state:
            raise ValueError(f"{path}: ONNX node {node.name} matches no U-Net layer")
        state[f"{module}.weight"] = torch.from_numpy(weight.copy())
        if len(node.input) > 2:
            bias = init[node.input[2]]
            if f"{module}.bias" in state:
                state[f"{module}.bias"] = torch.from_numpy(bias.copy())
            else:  # a convolution followed by a batch norm that was folded into it
                folded[module] = bias
    bn_of = {conv: conv.replace("conv", "bn") for conv in folded}
    for conv, bn in bn_of.items():  # exact identity in eval mode, whatever the statistics
        n = folded[conv].size
        state[f"{bn}.running_mean"] = torch.zeros(n)
        state[f"{bn}.running_var"] = torch.ones(n)
        state[f"{bn}.weight"] = torch.full((n,), float(np.sqrt(1.0 + model.enc[0].bn1.eps)))
        state[f"{bn}.bias"] = torch.from_numpy(folded[conv].copy())
    model.load_state_dict(state)
    model.eval()
    stats: dict[str, list] = {}
    hooks = [model.get_submodule(conv).register_forward_hook(
        lambda mod, inp, out, name=conv: stats.setdefault(name, []).append(
            (out.double().mean(dim=(0, 2, 3, 4)), out.double().pow(2).mean(dim=(0, 2, 3, 4)))))
        for conv in folded]
    with torch.no_grad():
        for x in calibration.split(2):
            model(x.float())
    for h in hooks:
        h.remove()
    for conv, bn in bn_of.items():
        mean = torch.stack([m for m, _ in stats[conv]]).mean(0)
        var = (torch.stack([s for _, s in stats[conv]]).mean(0) - mean ** 2).clamp_min(1e-4)
        eps = model.get_submodule(bn).eps
        state[f"{bn}.running_mean"] = mean.float()
        state[f"{bn}.running_var"] = var.float()
        state[f"{bn}.weight"] = torch.sqrt(var + eps).float()
        state[f"{bn}.bias"] = (torch.from_numpy(folded[conv].copy()).double() + mean).float()
    return state
