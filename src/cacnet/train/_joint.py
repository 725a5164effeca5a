"""Training several U-Nets together in one process, stepping them in turn (private).

This is the one training loop of the package: ``cac train`` and
:func:`cacnet.train.train_ensemble` use it for the ensemble, on a CPU or a GPU
alike. Every step trains each model once, in turn; on a GPU the queue stays
full while Python launches the next model's kernels. Each batch is cut in one
go on the training device (:class:`BatchSampler`: all cases sit in one padded
tensor), from up to three sources: phantoms, real training cases, hard
negatives (``TrainConfig.real_per_batch`` / ``neg_per_batch`` patches of
each batch). Nothing waits for the GPU between steps: losses are summed on the
device and read at each checkpoint.
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from .._files import write_text_atomic
from ._data import MAX_SHAPE, BatchSampler, Case, PhantomStream
from ._export import state_from_onnx
from ._loop import CANDIDATE_X, TrainConfig, bf16_supported, dice_ce_loss, evaluate, learning_rate, pooled
from ._model import UNet3D

__all__ = ["TrainData", "train_models", "load_start_state"]

LOG_COLUMNS = ["step", "loss", "val_dice", "val_phantom_dice", "val_real_dice", "val_artery_accuracy",
               "negatives_false_voxels", "lr", "elapsed_s", "train_cases", "skipped_steps"]


@dataclass
class TrainData:
    """What a run trains and validates on.

    ``train`` (phantoms) fills the first ``batch - real_per_batch -
    neg_per_batch`` patches of each batch, ``real`` the next
    ``real_per_batch``, ``negatives`` (hard negatives: every label
    background, patches centred near their candidate voxels >= 130 HU two
    times in three) the last ``neg_per_batch``. Validation: ``val`` and
    ``real_val`` together. ``more_train``: phantoms still being made, added
    to ``train`` as they come; training starts once ``min_train`` exist.
    """

    train: list[Case]
    val: list[Case]
    real: list[Case] = field(default_factory=list)
    real_val: list[Case] = field(default_factory=list)
    negatives: list[Case] = field(default_factory=list)
    more_train: Optional[PhantomStream] = None
    min_train: int = 40

    def fingerprint(self, models: int, seed: int) -> dict:
        """What a checkpoint must have been trained on to be resumed."""
        return {"models": models, "seed": seed,
                "phantoms": len(self.train) + (self.more_train.pending if self.more_train else 0),
                "val": [c.case_id for c in self.val], "real": sorted(c.case_id for c in self.real),
                "real_val": sorted(c.case_id for c in self.real_val),
                "negatives": sorted(c.case_id for c in self.negatives)}


def _save_atomic(obj, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_start_state(init: Path, seed: int, calibration: Callable[[], torch.Tensor]) -> dict:
    """Start weights of model ``seed`` from a folder.

    Looked for in this order: ``model_<seed>/best.pt`` (a ``cac train``
    output folder), ``model_<seed>.npz`` (a state dict, float16 or float32),
    ``unet_<seed>.onnx`` (a weights folder; the folded batch norms are rebuilt
    by :func:`state_from_onnx` on ``calibration()``, training patches).
    """
    init = Path(init)
    pt, npz, onnx = init / f"model_{seed}" / "best.pt", init / f"model_{seed}.npz", init / f"unet_{seed}.onnx"
    if pt.exists():
        return torch.load(pt, weights_only=False, map_location="cpu")["model"]
    if npz.exists():
        with np.load(npz) as z:
            return {name: torch.from_numpy(z[name].astype(np.float32) if z[name].dtype == np.float16
                                           else z[name].copy()) for name in z.files}
    if onnx.exists():
        return state_from_onnx(onnx, calibration())
    raise FileNotFoundError(f"no start weights for model {seed} in {init}: expected model_{seed}/best.pt, "
                            f"model_{seed}.npz or unet_{seed}.onnx")


def _sampler(cases: list[Case], patch, device, capacity: Optional[int] = None, max_shape=None,
             negatives: bool = False) -> tuple[BatchSampler, list[str]]:
    if max_shape is None:
        max_shape = tuple(int(max(2, max(c.x.shape[a] for c in cases))) for a in range(3)) if cases else (2, 2, 2)
    s = BatchSampler(max(1, capacity or len(cases)), patch, device, max_shape=max_shape)
    too_big = [c.case_id for c in cases
               if not s.add(c, focus=np.argwhere(c.x >= CANDIDATE_X) if negatives else None)]
    return s, too_big


def _eligible(v: dict, config: TrainConfig) -> bool:
    """May this validation result become a model's best (``config.max_negative_voxels``)?"""
    cap, false = config.max_negative_voxels, v.get("negatives_false_voxels")
    return cap is None or false is None or false <= cap


def _better_fallback(v: dict, fallback: Optional[dict]) -> bool:
    """Is ``v`` a better stand-in than ``fallback`` when no step is eligible: fewer negative voxels, then Dice?"""
    if fallback is None:
        return True
    key = (-v["negatives_false_voxels"], v["dice"])
    return key > (-fallback["val"]["negatives_false_voxels"], fallback["val"]["dice"])


def train_models(
    outdir: Path,
    data: TrainData,
    config: TrainConfig,
    *,
    models: int = 1,
    init: Optional[Path] = None,
    exclude_start: bool = False,
    on_event: Optional[Callable[[str, dict], None]] = None,
) -> list[dict]:
    """Train ``models`` U-Nets (seeds ``config.seed`` + 0, 1, ...) together, stepping them in turn.

    Files in ``outdir``: ``checkpoint.pt`` (every model, optimizer and random
    stream, the step, the best states and the logs; every
    ``checkpoint_every`` steps and at every validation), and per model
    ``model_<seed>/best.pt`` (the best validated weights), ``log.csv`` and
    ``summary.json``. Run it again with the same data to resume: it continues
    from the checkpoint up to ``config.steps`` (or ``max_seconds`` of training
    time in all).

    Validation: every ``val_every`` steps, every ``val_seconds`` seconds when
    set, and at the last step. The selection metric is the calcium Dice over
    all validation cases (phantoms and real ones pooled, candidate voxels
    >= 130 HU; see :func:`evaluate`); each model keeps its best step. With
    ``init`` (see :func:`load_start_state`) the start weights are validated
    too (step 0) and are a candidate unless ``exclude_start``.

    Returns one summary per model.
    """
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    emit = on_event or (lambda kind, info: None)
    torch.set_num_threads(config.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # a GPU when there is one
    cuda = device.type == "cuda"
    bf16 = cuda or bf16_supported()
    torch.backends.cudnn.benchmark = cuda  # the patch shape never changes
    seeds = [config.seed + i for i in range(models)]
    n_ph = config.batch - config.real_per_batch - config.neg_per_batch
    has_ph = bool(data.train) or (data.more_train is not None and data.more_train.pending > 0)
    for what, n, have in (("phantom", n_ph, has_ph), ("real", config.real_per_batch, bool(data.real)),
                          ("hard negative", config.neg_per_batch, bool(data.negatives))):
        if n < 0:
            raise ValueError(f"batch {config.batch} is smaller than real_per_batch + neg_per_batch")
        if n and not have:
            raise ValueError(f"each batch has {n} {what} patches but there are no {what} training cases")
        if have and not n:
            raise ValueError(f"{what} training cases given but no {what} patches in a batch of {config.batch} "
                             "(set real_per_batch / neg_per_batch, or a larger batch)")
    if not data.val and not data.real_val:
        raise ValueError("no validation cases")
    fingerprint = data.fingerprint(models, config.seed)

    # the cases, on the device
    stream = data.more_train
    capacity = len(data.train) + (stream.pending if stream else 0)
    phantoms, too_big = _sampler(data.train, config.patch, device, capacity,
                                 max_shape=MAX_SHAPE if stream and stream.pending else None)
    real = _sampler(data.real, config.patch, device)[0] if data.real else None
    negs = _sampler(data.negatives, config.patch, device, negatives=True)[0] if data.negatives else None
    if too_big:
        print(f"warning: {len(too_big)} training cases larger than the buffer {tuple(phantoms.max_shape)} "
              f"left out: {too_big[:5]}")

    def take(block: bool) -> None:
        for case in stream.get(block=block):  # type: ignore[union-attr]
            if not phantoms.add(case):
                too_big.append(case.case_id)

    if stream is not None:
        while not stream.done and len(phantoms) < min(data.min_train, capacity):
            take(block=True)
        emit("streamed", {"train_cases": len(phantoms), "pending": stream.pending})

    rngs = [np.random.default_rng(s) for s in seeds]
    gens = [torch.Generator(device=device).manual_seed(s) for s in seeds]

    def batch(k: int):
        parts = []
        if n_ph:
            parts.append(phantoms.batch(n_ph, rngs[k], gens[k]))
        if config.real_per_batch:
            parts.append(real.batch(config.real_per_batch, rngs[k], gens[k]))  # type: ignore[union-attr]
        if config.neg_per_batch:
            parts.append(negs.batch(config.neg_per_batch, rngs[k], gens[k]))  # type: ignore[union-attr]
        if len(parts) == 1:
            return parts[0]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    def validate(model) -> dict:
        torch.backends.cudnn.benchmark = False  # whole volumes of many shapes: no benchmarking of each
        try:
            ph = evaluate(model, data.val, bf16) if data.val else None
            re = evaluate(model, data.real_val, bf16) if data.real_val else None
            both = pooled(*[r for r in (ph, re) if r is not None])
            out = {"dice": both["dice"], "artery_accuracy": both["artery_accuracy"],
                   "phantom_dice": None if ph is None else ph["dice"], "real_dice": None if re is None else re["dice"],
                   "negatives_false_voxels": evaluate(model, data.negatives, bf16)["predicted"] if data.negatives
                   else None}
            return out
        finally:
            torch.backends.cudnn.benchmark = cuda

    def snapshot(model) -> dict:
        return {n: v.detach().cpu().clone() for n, v in model.state_dict().items()}

    ckpt_path = outdir / "checkpoint.pt"
    fused = {"fused": True} if cuda else {}
    nets, opts = [], []
    for k, s in enumerate(seeds):
        torch.manual_seed(s)
        net = UNet3D()
        if init is not None and not ckpt_path.exists():  # resumed: the checkpoint has the weights
            net.load_state_dict(load_start_state(
                init, s, lambda k=k: torch.cat([batch(k)[0] for _ in range(4)]).float().cpu()))
        nets.append(net.to(device=device, memory_format=torch.channels_last_3d))
        opts.append(torch.optim.Adam(nets[-1].parameters(), lr=config.lr, **fused))

    step, elapsed = 0, 0.0
    best: list[dict] = [{"dice": -1.0, "step": None, "val": None, "state": None} for _ in seeds]
    logs: list[list[list]] = [[] for _ in seeds]
    skipped = [0] * models
    start_val: list[Optional[dict]] = [None] * models
    if ckpt_path.exists():
        ckpt = torch.load(ckpt_path, weights_only=False, map_location="cpu")
        if ckpt.get("data") != fingerprint:
            raise ValueError(f"{ckpt_path} was written for other data or models ({ckpt.get('data')}); "
                             "use another output folder")
        for k in range(models):
            nets[k].load_state_dict(ckpt["models"][k])
            opts[k].load_state_dict(ckpt["optimizers"][k])
            rngs[k].bit_generator.state = ckpt["rngs"][k]
            gens[k].set_state(ckpt["gens"][k].cpu())
        torch.set_rng_state(ckpt["torch_rng"].cpu())
        step, elapsed, best, logs = ckpt["step"], ckpt["elapsed"], ckpt["best"], ckpt["logs"]
        skipped, start_val = ckpt["skipped"], ckpt["start_val"]
        emit("resume", {"step": step})
    elif init is not None or config.steps == 0:  # the start weights: validated, a candidate unless excluded
        for k, net in enumerate(nets):
            v = validate(net)
            start_val[k] = v
            if not exclude_start and _eligible(v, config):
                best[k] = {"dice": v["dice"], "step": 0, "val": v, "state": snapshot(net)}
            elif not exclude_start:
                best[k]["fallback"] = {"step": 0, "val": v, "state": snapshot(net)}
            logs[k].append([0, "", round(v["dice"], 4), _r(v["phantom_dice"]), _r(v["real_dice"]),
                            round(v["artery_accuracy"], 4), _r(v["negatives_false_voxels"]), 0.0, 0.0,
                            len(phantoms), 0])
        emit("val", {"step": 0, "dice": [v["dice"] for v in start_val]})  # type: ignore[index]

    dirs = [outdir / f"model_{s}" for s in seeds]
    for d in dirs:
        d.mkdir(exist_ok=True)

    def write_best(k: int) -> None:
        if best[k]["state"] is not None:
            _save_atomic({"model": best[k]["state"], "step": best[k]["step"], "val": best[k]["val"]},
                         dirs[k] / "best.pt")

    def write_logs() -> None:
        for k in range(models):
            buf = io.StringIO()
            w = csv.writer(buf, lineterminator="\n")
            w.writerow(LOG_COLUMNS)
            w.writerows(logs[k])
            write_text_atomic(dirs[k] / "log.csv", buf.getvalue())

    for k in range(models):  # what the checkpoint holds (a crash may have come between the two)
        write_best(k)
    write_logs()

    emit("start", {"models": models, "step": step, "steps": config.steps, "device": device.type,
                   "max_seconds": config.max_seconds})
    t_run = time.perf_counter()
    t0 = t_run - elapsed  # training time, over all runs of this folder
    first_step = step
    loss_sum = [torch.zeros((), device=device) for _ in seeds]
    n_ok = [torch.zeros((), device=device) for _ in seeds]
    n_window = 0
    next_val = time.perf_counter() + config.val_seconds if config.val_seconds else None

    def out_of_time() -> bool:
        return config.max_seconds is not None and time.perf_counter() - t0 >= config.max_seconds

    done = step >= config.steps or out_of_time()  # decided once per step: the last step is always validated
    while not done:
        lr = learning_rate(config, step, time.perf_counter() - t0)
        for k, (net, opt) in enumerate(zip(nets, opts)):
            for group in opt.param_groups:
                group["lr"] = lr
            x, y = batch(k)
            xt = x.contiguous(memory_format=torch.channels_last_3d)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                logits = net(xt)
            loss = dice_ce_loss(logits, y, xt)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            params = [p for p in net.parameters() if p.grad is not None]
            norm = torch.nn.utils.clip_grad_norm_(params, 10.0)
            # A non-finite loss or gradient (a bf16 overflow) must not reach the weights, and checking it
            # here would make the CPU wait for the GPU every step: the clipped gradients are then all 0
            # or NaN; NaN becomes 0, and the step moves the weights by Adam's momentum only.
            ok = torch.isfinite(norm)
            for p in params:
                p.grad.nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)
            opt.step()
            loss_sum[k] += torch.where(ok, loss.detach(), torch.zeros((), device=device))
            n_ok[k] += ok
        step += 1
        n_window += 1
        if stream is not None and not stream.done:
            take(block=False)
        emit("step", {"step": step})
        done = step >= config.steps or out_of_time()
        now = time.perf_counter()
        val_now = done or step % config.val_every == 0 or (next_val is not None and now >= next_val)
        if not (val_now or step % config.checkpoint_every == 0):
            continue
        vals: list[Optional[dict]] = [None] * models
        for k, net in enumerate(nets):
            good = int(n_ok[k].item())
            skipped[k] += n_window - good
            if n_window - good > 20:
                raise FloatingPointError(f"model {seeds[k]}: {n_window - good} of the last {n_window} steps had "
                                         "non-finite losses; retry without bf16 (CAC_TRAIN_FP32=1)")
            mean_loss = float(loss_sum[k].item()) / max(good, 1)
            if val_now:
                v = vals[k] = validate(net)
                if v["dice"] > best[k]["dice"] and _eligible(v, config):
                    best[k] = {"dice": v["dice"], "step": step, "val": v, "state": snapshot(net)}
                    write_best(k)
                elif (best[k]["state"] is None and not _eligible(v, config)
                      and _better_fallback(v, best[k].get("fallback"))):
                    # kept in case no step ever meets max_negative_voxels (see the end of the run)
                    best[k]["fallback"] = {"step": step, "val": v, "state": snapshot(net)}
            v = vals[k] or {}
            logs[k].append([step, round(mean_loss, 5), _r(v.get("dice")), _r(v.get("phantom_dice")),
                            _r(v.get("real_dice")), _r(v.get("artery_accuracy")), _r(v.get("negatives_false_voxels")),
                            float(f"{lr:.6g}"), round(time.perf_counter() - t0, 1), len(phantoms), skipped[k]])
            loss_sum[k].zero_()
            n_ok[k].zero_()
        n_window = 0
        _save_atomic({
            "version": 2, "data": fingerprint, "config": asdict(config), "step": step,
            "elapsed": time.perf_counter() - t0,
            "models": [net.state_dict() for net in nets], "optimizers": [opt.state_dict() for opt in opts],
            "rngs": [r.bit_generator.state for r in rngs], "gens": [g.get_state() for g in gens],
            "torch_rng": torch.get_rng_state(), "best": best, "logs": logs, "skipped": skipped,
            "start_val": start_val,
        }, ckpt_path)
        write_logs()
        if val_now:
            if next_val is not None:
                next_val = time.perf_counter() + config.val_seconds  # type: ignore[operator]
            emit("val", {"step": step, "dice": [v["dice"] for v in vals],  # type: ignore[index]
                         "best": [(b["dice"], b["step"]) for b in best]})
    run_seconds = time.perf_counter() - t_run
    if stream is not None:
        stream.close()
    summaries = []
    for k, s in enumerate(seeds):
        fallback = best[k].get("fallback")
        if best[k]["state"] is None and fallback is not None:
            # better than losing the run: the validated step with the fewest negative voxels, said loudly
            best[k] = {"dice": fallback["val"]["dice"], "step": fallback["step"], "val": fallback["val"],
                       "state": fallback["state"],
                       "note": (f"no validated step labelled at most {config.max_negative_voxels} coarse voxels of "
                                f"the hard negatives as calcium; kept step {fallback['step']}, which labelled the "
                                f"fewest ({fallback['val']['negatives_false_voxels']})")}
            emit("warning", {"model": s, "message": best[k]["note"]})
            write_best(k)
        if best[k]["state"] is None:
            raise RuntimeError(f"model {s}: no validated weights to keep (exclude_start with no training step, or "
                               f"no validated step within max_negative_voxels={config.max_negative_voxels})")
        summary = {
            "seed": s, "config": asdict(config), "steps_done": step, "best_step": best[k]["step"],
            "best_val_dice": best[k]["dice"], "best_val": best[k]["val"], "start_val": start_val[k],
            "skipped_steps": skipped[k], "bf16": bf16, "device": device.type,
            "selection_note": best[k].get("note"),
            "train_seconds": round(time.perf_counter() - t0 if step > first_step else elapsed, 1),
            "steps_this_run": step - first_step, "seconds_this_run": round(run_seconds, 2),
            "steps_per_second": round((step - first_step) / run_seconds, 4) if step > first_step else None,
            "n_train_phantoms": len(phantoms), "n_train_real": len(data.real), "n_negatives": len(data.negatives),
            "n_val": len(data.val) + len(data.real_val), "too_big": too_big,
        }
        (dirs[k] / "summary.json").write_text(json.dumps(summary, indent=2))
        summaries.append(summary)
    emit("trained", {"step": step})
    return summaries


def _r(v):
    return "" if v is None else v if isinstance(v, int) else round(float(v), 4)
