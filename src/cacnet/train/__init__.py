"""Training the U-Net ensemble (needs the `train` extra: torch, onnx).

One training loop: :func:`train_models` trains several U-Nets together in one
process, stepping them in turn (CPU or GPU); :func:`train_ensemble` (``cac
train``) prepares the data, runs it and exports ONNX weights with a manifest.
Never imported by inference.
"""

from ._backgrounds import (ANATOMY_DIR, BACKGROUND_SEED, VAL_BACKGROUND_SEED, Background, find_backgrounds,
                           make_background_cases, validation_backgrounds)
from ._data import (BatchSampler, Case, PatchSampler, PhantomStream, dataset_cases, load_case, negative_case,
                    pad_to_multiple, phantom_cases, save_case, split_by_id)
from ._ensemble import TRAIN_SET_SEED, VAL_SET_SEED, default_mix, negative_cases, train_ensemble
from ._export import export_onnx, sha256, state_from_onnx, write_manifest
from ._insert import (InsertedCase, augment_scan, insert_calcium, inserted_cases, iter_inserted_cases,
                      iter_inserted_scans, load_tracing, resample_for_cac)
from ._joint import TrainData, load_start_state, train_models
from ._loop import CANDIDATE_X, TrainConfig, bf16_supported, dice_ce_loss, evaluate, learning_rate, pooled
from ._model import ARCHITECTURE, UNet3D
from ._second_stage import (CLASSIFIER, SECOND_STAGE_FILE, SECOND_STAGE_SEED, candidate_rows, fit_second_stage,
                            train_second_stage)

__all__ = [
    "ARCHITECTURE", "CANDIDATE_X", "BatchSampler", "Case", "PatchSampler", "PhantomStream", "TrainConfig", "TrainData",
    "UNet3D", "bf16_supported", "dataset_cases", "default_mix", "dice_ce_loss", "evaluate", "export_onnx",
    "learning_rate", "load_case", "load_start_state", "negative_case", "negative_cases", "pad_to_multiple",
    "phantom_cases", "pooled", "save_case", "sha256", "split_by_id", "state_from_onnx", "train_ensemble",
    "train_models", "write_manifest", "TRAIN_SET_SEED", "VAL_SET_SEED",
    "InsertedCase", "augment_scan", "insert_calcium", "inserted_cases", "iter_inserted_cases", "iter_inserted_scans",
    "load_tracing", "resample_for_cac", "ANATOMY_DIR", "BACKGROUND_SEED", "Background", "find_backgrounds",
    "make_background_cases", "VAL_BACKGROUND_SEED", "validation_backgrounds",
    "CLASSIFIER", "SECOND_STAGE_FILE", "SECOND_STAGE_SEED", "candidate_rows", "fit_second_stage", "train_second_stage",
]
