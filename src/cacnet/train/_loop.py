"""Training one model and the ensemble, with checkpoints that resume (private)."""

from __future__ import annotations

import csv
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F

from ._data import BatchedPatchSampler, Case, PatchSampler, pad_to_multiple
from ._model import UNet3D

__all__ = ["TrainConfig", "learning_rate", "train_model", "bf16_supported", "dice_ce_loss", "evaluate"]


@dataclass
class TrainConfig:
    """Settings of one model's training."""

    steps: int = 2500
    batch: int = 2
    patch: tuple[int, int, int] = (40, 64, 64)
    lr: float = 1e-3
    val_every: int = 250
    checkpoint_every: int = 100
    seed: int = 0
    threads: int = 2
    #: Stop after this much training time (seconds) even before ``steps``; the
    #: learning-rate drops then follow the time (see :func:`learning_rate`).
    max_seconds: Optional[float] = None
    #: How patches are cut: "single" (one by one, :class:`PatchSampler`),
    #: "batched" (a whole batch at once, :class:`BatchedPatchSampler`), or
    #: "auto": batched on a GPU, single on a CPU. Same draws either way.
    sampler: str = "auto"


def learning_rate(config: TrainConfig, step: int, elapsed: float) -> float:
    """Adam's rate: ``lr``, x0.3 from 70 % and again from 90 % of the run.

    Progress is ``step / steps``, or the share of ``max_seconds`` used when
    that is further along (a run limited by time).
    """
    progress = step / config.steps
    if config.max_seconds:
        progress = max(progress, elapsed / config.max_seconds)
    return config.lr * (0.3 if progress >= 0.7 else 1.0) * (0.3 if progress >= 0.9 else 1.0)


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
    """Global calcium Dice (over candidate voxels) and artery agreement on whole coarse volumes."""
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
    return {
        "dice": (2 * inter / (pred_sum + true_sum)) if pred_sum + true_sum else 1.0,
        "artery_accuracy": artery_ok / artery_n if artery_n else 1.0,
    }


def _save_atomic(obj, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def train_model(
    outdir: Path,
    train_cases: list[Case],
    val_cases: list[Case],
    config: TrainConfig,
    on_step: Optional[Callable[[int, float], None]] = None,
) -> dict:
    """Train one U-Net; resume from ``outdir/checkpoint.pt`` when it exists.

    Writes ``checkpoint.pt`` (every ``checkpoint_every`` steps), ``best.pt``
    (best validation Dice), ``log.csv`` and ``summary.json``.
    """
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # a GPU when there is one
    bf16 = device.type == "cuda" or bf16_supported()
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # the patch shape never changes
    model = UNet3D().to(device=device, memory_format=torch.channels_last_3d)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    if config.sampler not in ("auto", "single", "batched"):
        raise ValueError(f"TrainConfig.sampler must be 'auto', 'single' or 'batched', not {config.sampler!r}")
    batched = config.sampler == "batched" or (config.sampler == "auto" and device.type == "cuda")
    sampler = (BatchedPatchSampler if batched else PatchSampler)(train_cases, config.patch, seed=config.seed,
                                                                 device=device)
    step, best, best_step, elapsed = 0, -1.0, 0, 0.0
    ckpt_path = outdir / "checkpoint.pt"
    if ckpt_path.exists():
        ckpt = torch.load(ckpt_path, weights_only=False, map_location=device)
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        if "sampler" in ckpt:
            sampler.set_state(ckpt["sampler"])
        else:  # a checkpoint of version 0.1.0 (numpy sampler)
            sampler.rng.bit_generator.state = ckpt["sampler_rng"]
        torch.set_rng_state(ckpt["torch_rng"].cpu())
        step, best, best_step, elapsed = ckpt["step"], ckpt["best"], ckpt["best_step"], ckpt["elapsed"]
    log_path = outdir / "log.csv"
    new_log = not log_path.exists()
    log = open(log_path, "a", newline="")
    writer = csv.writer(log)
    if new_log:
        writer.writerow(["step", "loss", "val_dice", "val_artery_accuracy", "lr", "elapsed_s"])
    model.train()
    t0 = time.perf_counter() - elapsed
    losses: list[float] = []
    skipped = 0

    def out_of_time() -> bool:
        return config.max_seconds is not None and time.perf_counter() - t0 >= config.max_seconds

    done = out_of_time()  # decided once per step, so that the last step is always validated
    while step < config.steps and not done:
        for group in opt.param_groups:
            group["lr"] = learning_rate(config, step, time.perf_counter() - t0)
        x, y = sampler.batch(config.batch)
        xt = x.contiguous(memory_format=torch.channels_last_3d)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(xt)
        loss = dice_ce_loss(logits, y, xt)
        opt.zero_grad(set_to_none=True)
        if not torch.isfinite(loss):  # never let one bad batch poison the weights
            skipped += 1
            if skipped > 20:
                raise FloatingPointError(f"{skipped} non-finite losses; retry without bf16 (CAC_TRAIN_FP32=1)")
            continue
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        if not torch.isfinite(grad_norm):  # a bf16 overflow in backward: drop this step
            skipped += 1
            opt.zero_grad(set_to_none=True)
            continue
        opt.step()
        step += 1
        done = step >= config.steps or out_of_time()
        losses.append(loss.item())
        if on_step is not None:
            on_step(step, losses[-1])
        val = None
        if step % config.val_every == 0 or done:
            val = evaluate(model, val_cases, bf16)
            if val["dice"] > best:
                best, best_step = val["dice"], step
                state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
                _save_atomic({"model": state, "step": step, "val": val}, outdir / "best.pt")
        if step % config.checkpoint_every == 0 or val is not None:
            writer.writerow([step, round(float(np.mean(losses)), 5), "" if val is None else round(val["dice"], 4),
                             "" if val is None else round(val["artery_accuracy"], 4), opt.param_groups[0]["lr"],
                             round(time.perf_counter() - t0, 1)])
            log.flush()
            losses = []
            _save_atomic({
                "model": model.state_dict(), "optimizer": opt.state_dict(),
                "sampler": sampler.state(), "torch_rng": torch.get_rng_state(),
                "step": step, "best": best, "best_step": best_step, "elapsed": time.perf_counter() - t0,
            }, ckpt_path)
    log.close()
    summary = {"config": asdict(config), "steps_done": step, "best_val_dice": best, "best_step": best_step,
               "bf16": bf16,
               "skipped_steps": skipped,
               "device": device.type,
               "train_seconds": round(time.perf_counter() - t0, 1), "n_train": len(train_cases),
               "n_val": len(val_cases)}
    (outdir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
