"""Training the U-Net ensemble (needs the `train` extra: torch, onnx).

Never imported by inference.
"""

from ._data import (BatchedPatchSampler, BatchSampler, Case, PatchSampler, dataset_cases, negative_case, pad_to_multiple,
                    phantom_cases, save_case)
from ._ensemble import TRAIN_SET_SEED, VAL_SET_SEED, train_ensemble
from ._export import export_onnx, sha256, state_from_onnx, write_manifest
from ._loop import CANDIDATE_X, TrainConfig, bf16_supported, dice_ce_loss, evaluate, learning_rate, train_model
from ._model import ARCHITECTURE, UNet3D

__all__ = [
    "ARCHITECTURE", "CANDIDATE_X", "BatchSampler", "BatchedPatchSampler", "Case", "PatchSampler", "TrainConfig", "UNet3D", "bf16_supported", "dataset_cases", "negative_case", "save_case",
    "dice_ce_loss", "evaluate", "export_onnx", "learning_rate", "pad_to_multiple", "phantom_cases", "sha256", "state_from_onnx", "train_model",
    "write_manifest", "train_ensemble", "TRAIN_SET_SEED", "VAL_SET_SEED",
]
