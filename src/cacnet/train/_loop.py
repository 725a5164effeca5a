"""Training settings, learning-rate schedule, loss and validation metric (private).

The training loop itself is :func:`cacnet.train.train_models` (``_joint.py``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from ._data import Case, pad_to_multiple

__all__ = ["TrainConfig", "learning_rate", "bf16_supported", "dice_ce_loss", "evaluate", "pooled"]


@dataclass
class TrainConfig:
    """Settings of a training run (every model of the run alike)."""

    #: Steps per model (each step trains every model once, in turn).
    steps: int = 2500
    #: Patches per step and model: ``batch - real_per_batch - neg_per_batch``
    #: phantom patches, then ``real_per_batch`` patches of real training cases,
    #: then ``neg_per_batch`` patches of hard negatives.
    batch: int = 2
    patch: tuple[int, int, int] = (40, 64, 64)
    lr: float = 1e-3
    #: Validate every this many steps (and at the last step).
    val_every: int = 250
    #: Checkpoint every this many steps (and at every validation).
    checkpoint_every: int = 100
    #: Seed of the first model; model ``i`` of the run uses ``seed + i``
    #: (its initial weights and its patch draws).
    seed: int = 0
    threads: int = 2
    #: Stop after this much training time (seconds) even before ``steps``; the
    #: learning-rate drops then follow the time (see :func:`learning_rate`).
    max_seconds: Optional[float] = None
    real_per_batch: int = 0
    neg_per_batch: int = 0
    #: Also validate every this many seconds of training (None: by steps only).
    val_seconds: Optional[float] = None
    #: Warm the rate up over this share of the run (0: none; 0.03 suits a
    #: start from trained weights with a fresh optimizer state).
    warmup: float = 0.0
    #: A validated step is a candidate for a model's best only when the model
    #: labels at most this many coarse voxels of the hard negatives as calcium
    #: (None: no limit; the start weights are subject to it too).
    max_negative_voxels: Optional[int] = None


def learning_rate(config: TrainConfig, step: int, elapsed: float) -> float:
    """Adam's rate: ``lr``, x0.3 from 70 % and again from 90 % of the run.

    Progress is ``step / steps``, or the share of ``max_seconds`` used when
    that is further along (a run limited by time). With ``warmup`` the rate
    rises linearly from 10 % to 100 % over the first ``warmup`` of the run.
    """
    progress = step / max(config.steps, 1)
    if config.max_seconds:
        progress = max(progress, elapsed / config.max_seconds)
    rate = config.lr * (0.3 if progress >= 0.7 else 1.0) * (0.3 if progress >= 0.9 else 1.0)
    if config.warmup > 0:
        rate *= min(1.0, 0.1 + 0.9 * progress / config.warmup)
    return rate


def bf16_supported() -> bool:
    """Whether bf16 autocast runs on this CPU (checked once by a tiny convolution).

    ``CAC_TRAIN_FP32=1`` in the environment forces fp32.
    """
    if os.environ.get("CAC_TRAIN_FP32") == "1":
        return False
    try:
        conv = torch.nn.Conv3d(1, 2, 3)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            conv(torch.zeros(1, 1, 4, 4, 4))
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:  # noqa: BLE001 - any failure means: use fp32
        return False


#: Input value of 130 HU after preprocessing: coarse voxels below it can never
#: become calcium (the final mask keeps voxels >= 130 HU only).
CANDIDATE_X = (130.0 + 300.0) / 1100.0
CLASS_WEIGHTS = (1.0, 8.0, 8.0, 8.0, 8.0)


def dice_ce_loss(logits: torch.Tensor, target: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
    """Weighted cross-entropy plus (1 - soft Dice), over the candidate voxels.

    Candidates are the coarse voxels that reach 130 HU (``x >= CANDIDATE_X``;
    every voxel when ``x`` is None). Only they can end up in a mask (the
    ensemble's vote is read at the coarse voxel holding a lesion's peak), so
    the loss is spent on telling calcium from bone, look-alikes and noise,
    not on soft tissue. Calcium classes weigh 8x in the cross-entropy, which
    also teaches the artery; a network trained with the loss over all voxels
    (or with pure Dice) collapsed to predicting no calcium at all.
    """
    logits = logits.float()
    if x is None:
        cand = torch.ones_like(target, dtype=torch.bool)
    else:
        cand = x[:, 0] >= CANDIDATE_X
    weight = torch.tensor(CLASS_WEIGHTS, dtype=logits.dtype, device=logits.device)
    ce_map = F.cross_entropy(logits, target, weight=weight, reduction="none")
    w = weight[target] * cand
    ce = (ce_map * cand).sum() / w.sum().clamp_min(1.0)
    prob_fg = (1.0 - torch.softmax(logits, dim=1)[:, 0]) * cand
    fg = (target > 0).float() * cand
    dice = (2 * (prob_fg * fg).sum() + 1.0) / (prob_fg.sum() + fg.sum() + 1.0)
    return ce + (1.0 - dice)


@torch.no_grad()
def evaluate(model: torch.nn.Module, cases: list[Case], bf16: bool) -> dict:
    """Global calcium Dice (over candidate voxels) and artery agreement on whole coarse volumes.

    The Dice pools all cases: ``2 |P & T| / (|P| + |T|)`` with P and T the
    predicted and true calcium voxels among the candidate coarse voxels
    (>= 130 HU) of every case together (1.0 when both are empty). The counts
    are returned too (``intersection``, ``predicted``, ``true``,
    ``artery_correct``, ``artery_total``), so that results on several sets can
    be pooled (:func:`pooled`); on cases without calcium ``predicted`` counts
    the false calcium voxels.
    """
    model.eval()
    inter = pred_sum = true_sum = 0
    artery_ok = artery_n = 0
    for case in cases:
        device = next(model.parameters()).device
        x = torch.from_numpy(pad_to_multiple(case.x)[None, None]).to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            out = model(x.contiguous(memory_format=torch.channels_last_3d))
        pred = out.float().argmax(1)[0].cpu().numpy()[tuple(slice(0, n) for n in case.x.shape)]
        # only candidate voxels (>= 130 HU) can reach a mask: score the model there
        p, t = (pred > 0) & (case.x >= CANDIDATE_X), case.y > 0
        inter += int((p & t).sum())
        pred_sum += int(p.sum())
        true_sum += int(t.sum())
        both = p & t
        artery_ok += int((pred[both] == case.y[both]).sum())
        artery_n += int(both.sum())
    model.train()
    return pooled({"intersection": inter, "predicted": pred_sum, "true": true_sum, "artery_correct": artery_ok,
                   "artery_total": artery_n})


def pooled(*results: dict) -> dict:
    """:func:`evaluate`'s metrics over several sets of cases together (sums of the counts)."""
    keys = ("intersection", "predicted", "true", "artery_correct", "artery_total")
    n = {k: sum(int(r[k]) for r in results) for k in keys}
    return {
        "dice": (2 * n["intersection"] / (n["predicted"] + n["true"])) if n["predicted"] + n["true"] else 1.0,
        "artery_accuracy": n["artery_correct"] / n["artery_total"] if n["artery_total"] else 1.0,
        **n,
    }
