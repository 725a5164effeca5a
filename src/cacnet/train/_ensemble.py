"""Training the five-model ensemble end to end, then exporting it (private)."""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Callable, Optional

import torch

from ._data import dataset_cases, phantom_cases
from ._export import export_onnx, write_manifest
from ._loop import TrainConfig, train_model

__all__ = ["TRAIN_SET_SEED", "VAL_SET_SEED", "train_ensemble"]

#: Seeds of the phantom sets: training, validation. The held-out test set of
#: the experiments uses a seed never used here (benchmarks/experiments.py).
TRAIN_SET_SEED = 1000
VAL_SET_SEED = 1001


def train_ensemble(
    outdir: Path,
    *,
    data: Optional[Path] = None,
    phantoms: int = 300,
    val_phantoms: int = 20,
    models: int = 5,
    config: Optional[TrainConfig] = None,
    workers: int = 2,
    on_event: Optional[Callable[[str, dict], None]] = None,
) -> Path:
    """Train ``models`` U-Nets (seeds 0..models-1) and export them to ``outdir/weights``.

    Training data: ``phantoms`` synthetic cases (balanced A-E, seed
    TRAIN_SET_SEED), plus a user data set when ``data`` is given. Validation:
    ``val_phantoms`` cases (seed VAL_SET_SEED) pick each model's best step.
    Everything is cached and checkpointed under ``outdir``: run it again to
    resume after an interruption.
    """
    outdir = Path(outdir)
    config = config or TrainConfig()
    emit = on_event or (lambda kind, info: None)
    t0 = time.perf_counter()
    emit("data", {"phantoms": phantoms, "val": val_phantoms})
    train = phantom_cases(TRAIN_SET_SEED, phantoms, cache=outdir / "cache" / "train", workers=workers)
    val = phantom_cases(VAL_SET_SEED, val_phantoms, cache=outdir / "cache" / "val", workers=workers)
    if data is not None:
        train = train + dataset_cases(Path(data))
    data_seconds = time.perf_counter() - t0
    summaries = []
    for i in range(models):
        cfg = TrainConfig(**{**config.__dict__, "seed": i})
        emit("model", {"index": i, "steps": cfg.steps})
        summaries.append(train_model(outdir / f"model_{i}", train, val, cfg,
                                     on_step=lambda step, loss, i=i: emit("step", {"index": i, "step": step,
                                                                                   "loss": loss})))
    weights = outdir / "weights"
    entries = []
    for i, s in enumerate(summaries):
        best = torch.load(outdir / f"model_{i}" / "best.pt", weights_only=False)
        name = f"unet_{i}.onnx"
        diff = export_onnx(best["model"], weights / name)
        entries.append({"file": name, "seed": i, "best_step": s["best_step"], "val_dice": round(s["best_val_dice"], 4),
                        "onnx_vs_torch_max_prob_diff": diff})
    training = {
        "data": (f"{phantoms} synthetic phantoms (cacnet.phantom, seed {TRAIN_SET_SEED}, balanced A-E)"
                 + (f" + user data set {Path(data).name}" if data else "")),
        "validation": f"{val_phantoms} synthetic phantoms (seed {VAL_SET_SEED})",
        "train_cases": len(train),
        "val_cases": len(val),
        "real_scans": "none" if data is None else "user data set",
        "config": {k: v for k, v in config.__dict__.items() if k != "seed"},
        "loss": ("cross-entropy (calcium classes x8) + (1 - soft Dice of calcium vs background), both over "
                 "the candidate coarse voxels (>= 130 HU)"),
        "optimizer": "Adam, lr 1e-3, x0.3 at 70 % and 90 % of the steps, gradient norm clipped at 10",
        "seeds": list(range(models)),
        "train_seconds_total": round(time.perf_counter() - t0, 1),
        "data_seconds": round(data_seconds, 1),
        "machine": f"{platform.machine()}, torch {torch.__version__}, {config.threads} threads",
    }
    path = write_manifest(weights, entries, training, metrics={})
    (outdir / "training.json").write_text(json.dumps({"summaries": summaries, "training": training}, indent=2))
    emit("done", {"manifest": str(path)})
    return path
