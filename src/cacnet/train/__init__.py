"""Training the U-Net ensemble (needs the `train` extra: torch, onnx).

One training loop: :func:`train_models` trains several U-Nets together in one
process, stepping them in turn (CPU or GPU); :func:`train_ensemble` (``cac
train``) prepares the data, runs it and exports ONNX weights with a manifest.
Never imported by inference.

The names below are loaded on first use (PEP 562), so that the numpy-only
parts (backgrounds, the data and the second stage; calcium insertion and
de-contrasting live in :mod:`cacnet.phantom.insertion` and
:mod:`cacnet.phantom.decontrast`, served from here too) import without
torch; only :mod:`._model`, :mod:`._loop`, :mod:`._joint`, :mod:`._export`
and :mod:`._ensemble` need it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import attach

#: The public names, by the module that defines them (relative to this package).
_NAMES = {
    "._backgrounds": ["ANATOMY_DIR", "BACKGROUND_SEED", "VAL_BACKGROUND_SEED", "Background", "find_backgrounds",
                      "inserted_cases", "iter_inserted_cases", "make_background_cases", "validation_backgrounds"],
    "._data": ["BatchSampler", "Case", "PatchSampler", "PhantomStream", "dataset_cases", "load_case", "negative_case",
               "pad_to_multiple", "phantom_cases", "save_case", "split_by_id"],
    "._ensemble": ["TRAIN_SET_SEED", "VAL_SET_SEED", "default_mix", "negative_cases", "train_ensemble"],
    "._export": ["export_onnx", "sha256", "state_from_onnx", "write_manifest"],
    "..phantom.insertion": ["InsertedCase", "augment_scan", "insert_calcium", "iter_inserted_scans", "load_tracing",
                            "resample_for_cac"],
    "._joint": ["TrainData", "load_start_state", "train_models"],
    "._loop": ["CANDIDATE_X", "TrainConfig", "bf16_supported", "dice_ce_loss", "evaluate", "learning_rate", "pooled"],
    "._model": ["ARCHITECTURE", "UNet3D"],
    "._second_stage": ["CLASSIFIER", "SECOND_STAGE_FILE", "SECOND_STAGE_SEED", "candidate_rows", "fit_second_stage",
                       "train_second_stage"],
}
__getattr__, __dir__, __all__ = attach(__name__, _NAMES, globals())


if TYPE_CHECKING:  # pragma: no cover - what type checkers and editors see
    from ..phantom.insertion import (InsertedCase, augment_scan, insert_calcium, iter_inserted_scans, load_tracing,
                                     resample_for_cac)
    from ._backgrounds import (ANATOMY_DIR, BACKGROUND_SEED, VAL_BACKGROUND_SEED, Background, find_backgrounds,
                               inserted_cases, iter_inserted_cases, make_background_cases, validation_backgrounds)
    from ._data import (BatchSampler, Case, PatchSampler, PhantomStream, dataset_cases, load_case, negative_case,
                        pad_to_multiple, phantom_cases, save_case, split_by_id)
    from ._ensemble import TRAIN_SET_SEED, VAL_SET_SEED, default_mix, negative_cases, train_ensemble
    from ._export import export_onnx, sha256, state_from_onnx, write_manifest
    from ._joint import TrainData, load_start_state, train_models
    from ._loop import CANDIDATE_X, TrainConfig, bf16_supported, dice_ce_loss, evaluate, learning_rate, pooled
    from ._model import ARCHITECTURE, UNet3D
    from ._second_stage import (CLASSIFIER, SECOND_STAGE_FILE, SECOND_STAGE_SEED, candidate_rows,
                                fit_second_stage, train_second_stage)
