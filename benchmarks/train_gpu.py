"""Continue training the shipped ensemble's five U-Nets in one process on one GPU.

The CPU runs (``cac train``) gave ~0.7 s per step of 2 patches; an earlier GPU
lease ran 15 training processes side by side and got only ~10 steps/s in all
(processes time-share a GPU, and each cut its patches one by one). Here one
process holds all five models and steps them in turn, so the GPU's queue stays
full while Python launches the next model's kernels, and each batch is cut in
one go on the GPU (all cases sit in one padded tensor; a batched affine grid
and ``grid_sample``). Augmentation, loss, validation metric and data sets are
the ones of ``cac train`` (``cacnet.train``): training phantoms seed 1000
(balanced A-E), validation phantoms seed 1001, made on the CPU cores while the
GPU trains on the cases made so far.

Start weights: ``--init DIR`` holding ``model_<k>.npz`` (a state dict; the
shipped models' best checkpoints, stored as float16 to travel). Every model is
validated first, so a model that does not improve keeps its start weights
(reported as best step 0). Learning rate: warm-up over the first 3 % of the
time to ``--lr``, then x0.3 at 70 % and again at 90 % of the time.

Output in ``--pack``: ``size_<n>_part<k>.npz`` (model k's best weights,
float32) and ``train_sizes.json`` (config, machine, per-model summaries and
logs): the format ``benchmarks/import_trained.py`` reads.

Run (GPU machine):
    python benchmarks/train_gpu.py --init .gpu_init --minutes 7.5 --pack $OUT
Check on a CPU with tiny settings:
    python benchmarks/train_gpu.py --init .gpu_init --train 6 --val 2 --minutes 1 --batch 2 --pack /tmp/p
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import queue
import sys
import threading
import time
from pathlib import Path

import numpy as np

SRC = Path(__file__).resolve().parents[1] / "src"
sys.path.insert(0, str(SRC))

def _producer(args: list, workers: int, out: "queue.Queue", stop: threading.Event) -> None:
    from cacnet.train._data import _phantom_case

    pool = mp.get_context("spawn").Pool(workers)
    try:
        for case in pool.imap_unordered(_phantom_case, args, chunksize=1):
            out.put(case)
            if stop.is_set():
                break
    except BaseException as exc:  # noqa: BLE001 - reported by the trainer
        out.put(exc)
    finally:
        pool.terminate()
        out.put(None)


def write_pack(args, best, steps, restarts, logs, log, sampler, val_cases, too_big, train_time, total) -> None:
    """Best weights (float32, one file per model) and the JSON log, written atomically.

    Called after every validation round, so a run stopped early still leaves its results.
    """
    summaries = []
    for k, b in enumerate(best):
        path = args.pack / f"size_{args.train}_part{k}.npz"
        if b.get("packed_step") != b["step"] or not path.exists():
            tmp = args.pack / f".size_{args.train}_part{k}.tmp.npz"
            np.savez(tmp, **{f"model_{k}/{n}": v.numpy() for n, v in b["state"].items()})
            tmp.replace(path)
            b["packed_step"] = b["step"]
        summaries.append({"size": args.train, "seed": k, "error": None, "summary": {
            "steps_done": steps[k], "best_step": b["step"], "best_val_dice": b["dice"],
            "best_val": b["val"], "restarts": restarts[k], "train_seconds": round(train_time, 1),
            "start_val": {"dice": logs[k][1][2], "artery_accuracy": logs[k][1][3]}}})
    log.update({
        "config": {"batch": args.batch, "patch": list(args.patch), "lr": args.lr, "max_seconds": args.minutes * 60,
                   "schedule": "warm-up 3 %, x0.3 at 70 % and 90 % of the time",
                   "val_every_seconds": args.val_seconds, "init": str(args.init)},
        "train_cases_used": len(sampler), "train_cases_too_big": too_big, "val_cases": len(val_cases),
        "train_seconds": round(train_time, 1),
        "steps_per_second_per_model": round(steps[0] / max(train_time, 1e-9), 2),
        "results": summaries,
        "logs": {f"size_{args.train}/model_{k}": "\n".join(",".join(map(str, r)) for r in rows)
                 for k, rows in enumerate(logs)},
        "total_seconds": round(total, 1),
    })
    tmp = args.pack / ".train_sizes.tmp.json"
    tmp.write_text(json.dumps(log, indent=1))
    tmp.replace(args.pack / "train_sizes.json")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--init", type=Path, required=True,
                        help="folder with model_<k>.npz start weights, or a weights folder of unet_<k>.onnx "
                             "(batch norms rebuilt by cacnet.train.state_from_onnx on training patches)")
    parser.add_argument("--negatives", type=Path, default=None,
                        help="folder of <id>.npz hard negatives (cacnet.train.save_case of negative_case): real "
                             "scans without coronary calcium; --neg-per-batch of each batch's patches come from them")
    parser.add_argument("--neg-per-batch", type=int, default=4)
    parser.add_argument("--exclude-start", action="store_true",
                        help="keep the best validated step after the start (the start weights are not a candidate)")
    parser.add_argument("--models", type=int, default=5)
    parser.add_argument("--train", type=int, default=300)
    parser.add_argument("--val", type=int, default=20)
    parser.add_argument("--min-train", type=int, default=40, help="cases made before training starts")
    parser.add_argument("--minutes", type=float, default=7.0, help="training time (generation overlaps it)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--patch", type=int, nargs=3, default=[40, 64, 64])
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--val-seconds", type=float, default=40.0, help="validate every model this often")
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 2))
    parser.add_argument("--pack", type=Path, required=True)
    args = parser.parse_args()
    t_start = time.perf_counter()

    import torch

    from cacnet.train import (TRAIN_SET_SEED, VAL_SET_SEED, BatchSampler, TrainConfig, UNet3D, dice_ce_loss, learning_rate,
                              pad_to_multiple)
    from cacnet.train import evaluate as _evaluate

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    bf16 = device.type == "cuda"

    def evaluate(model, cases, bf16):  # whole volumes of many shapes: no cudnn benchmarking of each
        torch.backends.cudnn.benchmark = False
        try:
            return _evaluate(model, cases, bf16)
        finally:
            torch.backends.cudnn.benchmark = device.type == "cuda"
    args.pack.mkdir(parents=True, exist_ok=True)
    log: dict = {"argv": sys.argv, "machine": {
        "platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__, "bf16": bf16,
        "numpy": np.__version__, "gpu": torch.cuda.get_device_name(0) if device.type == "cuda" else None}}
    print(json.dumps(log["machine"]), flush=True)

    # data: validation cases first, then training cases, made on the CPU cores while the GPU trains
    work = [(VAL_SET_SEED, i, "ABCDE"[i % 5]) for i in range(args.val)] + \
           [(TRAIN_SET_SEED, i, "ABCDE"[i % 5]) for i in range(args.train)]
    made: queue.Queue = queue.Queue()
    stop = threading.Event()
    threading.Thread(target=_producer, args=(work, args.workers, made, stop), daemon=True).start()
    sampler = BatchSampler(args.train, args.patch, device)
    val_cases, too_big, producer_done = [], [], False

    def take(block: bool) -> None:
        nonlocal producer_done
        while not producer_done:
            try:
                item = made.get(timeout=1.0) if block else made.get_nowait()
            except queue.Empty:
                return
            if item is None:
                producer_done = True
            elif isinstance(item, BaseException):
                raise item
            elif item.case_id.startswith(f"phantom_{VAL_SET_SEED}_"):
                val_cases.append(item)
            elif not sampler.add(item):
                too_big.append(item.case_id)
            if block and len(val_cases) >= args.val and len(sampler) >= min(args.min_train, args.train):
                return

    while not producer_done and (len(val_cases) < args.val or len(sampler) < min(args.min_train, args.train)):
        take(block=True)
    val_cases.sort(key=lambda c: c.case_id)
    log["first_cases_seconds"] = round(time.perf_counter() - t_start, 1)
    print(f"{len(val_cases)} val + {len(sampler)} train cases after {log['first_cases_seconds']} s", flush=True)

    def snapshot(model) -> dict:
        return {n: v.detach().cpu().clone() for n, v in model.state_dict().items()}

    from cacnet.train import CANDIDATE_X, Case

    negatives, neg_cases = None, []
    if args.negatives is not None:  # hard negatives: their own buffer, patches centred near candidate voxels
        neg_cases = []
        for path in sorted(args.negatives.glob("*.npz")):
            with np.load(path) as z:
                neg_cases.append(Case(path.stem, z["x"], z["y"], json.loads(str(z["meta"]))))
        shape = np.max([c.x.shape for c in neg_cases], axis=0)
        negatives = BatchSampler(len(neg_cases), args.patch, device, max_shape=tuple(int(n) for n in shape))
        for c in neg_cases:
            negatives.add(c, focus=np.argwhere(c.x >= CANDIDATE_X))
        log["negatives"] = {c.case_id: list(c.x.shape) for c in neg_cases}
        print(f"{len(neg_cases)} hard negatives: {log['negatives']}", flush=True)

    @torch.no_grad()
    def false_calcium(model) -> int:
        """Coarse candidate voxels the model calls calcium on the hard negatives (all are false)."""
        if negatives is None:
            return 0
        model.eval()
        n = 0
        for c in neg_cases:
            x = torch.from_numpy(pad_to_multiple(c.x)[None, None]).to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                pred = model(x.contiguous(memory_format=torch.channels_last_3d)).float().argmax(1)[0].cpu().numpy()
            n += int(((pred[tuple(slice(0, m) for m in c.x.shape)] > 0) & (c.x >= CANDIDATE_X)).sum())
        model.train()
        return n

    def batch(k: int):
        n_neg = 0 if negatives is None else args.neg_per_batch
        x, y = sampler.batch(args.batch - n_neg, rngs[k], gens[k])
        if n_neg:
            xn, yn = negatives.batch(n_neg, rngs[k], gens[k])
            x, y = torch.cat([x, xn]), torch.cat([y, yn])
        return x, y

    fused = {"fused": True} if device.type == "cuda" else {}
    models, opts, rngs, gens, best, logs = [], [], [], [], [], []
    for k in range(args.models):
        rngs.append(np.random.default_rng(20_000 + k))
        gen = torch.Generator(device=device)
        gen.manual_seed(20_000 + k)
        gens.append(gen)
        if (args.init / f"unet_{k}.onnx").exists():
            from cacnet.train import state_from_onnx

            cal = torch.cat([batch(k)[0] for _ in range(4)]).cpu()
            state = state_from_onnx(args.init / f"unet_{k}.onnx", cal)
        else:
            with np.load(args.init / f"model_{k}.npz") as z:
                state = {name: torch.from_numpy(z[name].astype(np.float32) if z[name].dtype == np.float16
                                                 else z[name].copy()) for name in z.files}
        model = UNet3D()
        model.load_state_dict(state)
        model = model.to(device=device, memory_format=torch.channels_last_3d)
        models.append(model)
        opts.append(torch.optim.Adam(model.parameters(), lr=args.lr, **fused))
        val = evaluate(model, val_cases, bf16)
        best.append({"dice": -1.0 if args.exclude_start else val["dice"], "step": 0, "val": val,
                     "state": snapshot(model)})
        logs.append([["step", "loss", "val_dice", "val_artery_accuracy", "lr", "elapsed_s", "train_cases",
                      "negatives_false_voxels"],
                     [0, "", round(val["dice"], 4), round(val["artery_accuracy"], 4), 0.0, 0.0, len(sampler),
                      false_calcium(model)]])
        print(f"model {k}: start val dice {val['dice']:.4f}, artery accuracy {val['artery_accuracy']:.4f}, "
              f"false voxels on negatives {logs[k][1][7]}", flush=True)

    train_seconds = args.minutes * 60
    t0 = time.perf_counter()
    steps = [0] * args.models
    loss_sum = [torch.zeros((), device=device) for _ in models]
    loss_n = [0] * args.models
    restarts = [0] * args.models
    next_val = t0 + args.val_seconds
    last = False

    schedule = TrainConfig(lr=args.lr, max_seconds=train_seconds)  # cac train's drops at 70 % and 90 % of the time

    def lr_at(elapsed: float) -> float:
        warm = min(1.0, 0.1 + 0.9 * elapsed / train_seconds / 0.03)
        return learning_rate(schedule, 0, elapsed) * warm

    while not last:
        elapsed = time.perf_counter() - t0
        last = elapsed >= train_seconds
        lr = lr_at(elapsed)
        if not last:
            for k, (model, opt) in enumerate(zip(models, opts)):
                for group in opt.param_groups:
                    group["lr"] = lr
                x, y = batch(k)
                xt = x.contiguous(memory_format=torch.channels_last_3d)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                    logits = model(xt)
                loss = dice_ce_loss(logits, y, x)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
                opt.step()
                loss_sum[k] += loss.detach()
                loss_n[k] += 1
                steps[k] += 1
            if not producer_done:
                take(block=False)
        if last or time.perf_counter() >= next_val:
            for k, model in enumerate(models):
                mean_loss = float(loss_sum[k]) / max(loss_n[k], 1)
                if not np.isfinite(mean_loss):  # a bad step: back to the best weights, fresh optimizer state
                    restarts[k] += 1
                    model.load_state_dict(best[k]["state"])
                    opts[k] = torch.optim.Adam(model.parameters(), lr=lr, **fused)
                val = evaluate(model, val_cases, bf16)
                if val["dice"] > best[k]["dice"]:
                    best[k] = {"dice": val["dice"], "step": steps[k], "val": val, "state": snapshot(model)}
                logs[k].append([steps[k], round(mean_loss, 5), round(val["dice"], 4),
                                round(val["artery_accuracy"], 4), lr, round(time.perf_counter() - t0, 1),
                                len(sampler), false_calcium(model)])
                loss_sum[k] = torch.zeros((), device=device)
                loss_n[k] = 0
            done_s = time.perf_counter() - t0
            print(f"{done_s:6.0f} s  steps {steps[0]}  lr {lr:.1e}  train cases {len(sampler)}  val dice "
                  + " ".join(f"{row[-1][2]:.3f}" for row in logs) + "  false voxels on negatives "
                  + " ".join(str(row[-1][7]) for row in logs) + "  best "
                  + " ".join(f"{b['dice']:.3f}@{b['step']}" for b in best), flush=True)
            write_pack(args, best, steps, restarts, logs, log, sampler, val_cases, too_big, done_s,
                       time.perf_counter() - t_start)
            next_val = time.perf_counter() + args.val_seconds
    train_time = time.perf_counter() - t0
    stop.set()

    write_pack(args, best, steps, restarts, logs, log, sampler, val_cases, too_big, train_time, time.perf_counter() - t_start)
    size = len(sampler)
    print(f"{steps[0]} steps per model in {train_time:.0f} s ({log['steps_per_second_per_model']} /s), "
          f"{size} training cases; packed in {time.perf_counter() - t_start:.0f} s", flush=True)
    os._exit(0)  # do not wait for the phantom pool


if __name__ == "__main__":
    main()
