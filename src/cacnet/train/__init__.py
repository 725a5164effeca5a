"""Training the U-Net ensemble (needs the `train` extra: torch, onnx).

Never imported by inference.
"""

from ._data import BatchedPatchSampler, BatchSampler, Case, PatchSampler, dataset_cases, pad_to_multiple, phantom_cases
from ._ensemble import TRAIN_SET_SEED, VAL_SET_SEED, train_ensemble
from ._export import export_onnx, sha256, write_manifest
from ._loop import TrainConfig, bf16_supported, dice_ce_loss, evaluate, learning_rate, train_model
from ._model import ARCHITECTURE, UNet3D

__all__ = [
    "ARCHITECTURE", "BatchSampler", "BatchedPatchSampler", "Case", "PatchSampler", "TrainConfig", "UNet3D", "bf16_supported", "dataset_cases",
    "dice_ce_loss", "evaluate", "export_onnx", "learning_rate", "pad_to_multiple", "phantom_cases", "sha256", "train_model",
    "write_manifest", "train_ensemble", "TRAIN_SET_SEED", "VAL_SET_SEED",
]
