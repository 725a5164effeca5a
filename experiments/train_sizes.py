"""Train ensembles on three training-set sizes at once (the paper's Table 1), on one GPU.

A measuring wrapper around the package's training loop: generates the
phantoms (cached, in parallel on all cores), then trains ``len(sizes) x
models`` U-Nets on the GPU, one process per size, each process stepping its
``models`` U-Nets together (``cacnet.train.train_models``, the loop of ``cac
train``), for the same wall-clock time, so every model gets about the same
number of steps. (The Table 1 rows in the README were made by an earlier
version that ran one process per model, 15 processes time-sharing the GPU.) Training-set sizes are nested prefixes of the training
phantom set (seed ``TRAIN_SET_SEED``), all balanced A-E; validation uses the
same 20 validation phantoms for every model.

At the end it packs each model's best weights into ``--pack`` (at most 8 files,
each under 16 MiB): the ``--ship-size`` models in float32 (they become the
shipped weights after ``experiments/import_trained.py`` exports them to ONNX),
the others in float16 (used for the size comparison only), plus a JSON log.

Run (GPU machine):
    python -m experiments.train_sizes --sizes 100 300 1000 --deadline-minutes 8.5 --pack OUT
It also runs on a CPU (slowly; use tiny settings to check it).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import sys
import time
import traceback
from pathlib import Path

import numpy as np

from experiments._common import use_source_tree

use_source_tree()  # this checkout's cacnet, installed or not (also in the spawned processes)

CHUNK_BYTES = 15 * 2**20


def _train_size(run_dir: str, size: int, models: int, cfg: dict, n_val: int, result_q) -> None:
    try:
        from cacnet.train import TRAIN_SET_SEED, VAL_SET_SEED, TrainConfig, TrainData, phantom_cases, train_models

        root = Path(run_dir)
        train = phantom_cases(TRAIN_SET_SEED, size, cache=root / "cache" / "train", workers=1)
        val = phantom_cases(VAL_SET_SEED, n_val, cache=root / "cache" / "val", workers=1)
        summaries = train_models(root / f"size_{size}", TrainData(train, val), TrainConfig(**{**cfg, "seed": 0}),
                                 models=models)
        for seed, summary in enumerate(summaries):
            result_q.put((size, seed, summary, None))
    except BaseException:  # noqa: BLE001 - reported to the parent, which packs what exists
        for seed in range(models):
            result_q.put((size, seed, None, traceback.format_exc()))


def pack(run_dir: Path, sizes: list[int], models: int, ship_size: int, out: Path, log: dict) -> list[str]:
    """Best weights of every model into .npz files of at most CHUNK_BYTES each."""
    import torch

    out.mkdir(parents=True, exist_ok=True)
    written = []
    for size in sizes:
        dtype = np.float32 if size == ship_size else np.float16
        chunk: dict[str, np.ndarray] = {}
        nbytes, part = 0, 0

        def flush():
            nonlocal chunk, nbytes, part
            if chunk:
                name = f"size_{size}_part{part}.npz"
                np.savez(out / name, **chunk)
                written.append(name)
                chunk, nbytes, part = {}, 0, part + 1

        for seed in range(models):
            best = run_dir / f"size_{size}" / f"model_{seed}" / "best.pt"
            if not best.exists():
                continue
            state = torch.load(best, weights_only=False, map_location="cpu")["model"]
            arrays = {f"model_{seed}/{k}": (v.numpy().astype(dtype) if v.is_floating_point() else v.numpy())
                      for k, v in state.items()}
            size_bytes = sum(a.nbytes for a in arrays.values())
            if nbytes + size_bytes > CHUNK_BYTES:
                flush()
            chunk.update(arrays)
            nbytes += size_bytes
        flush()
    for size in sizes:
        for seed in range(models):
            path = run_dir / f"size_{size}" / f"model_{seed}" / "log.csv"
            if path.exists():
                log.setdefault("logs", {})[f"size_{size}/model_{seed}"] = path.read_text()
    (out / "train_sizes.json").write_text(json.dumps(log, indent=1))
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 300, 1000])
    parser.add_argument("--models", type=int, default=5)
    parser.add_argument("--val", type=int, default=20)
    parser.add_argument("--ship-size", type=int, default=None, help="default: the largest size")
    parser.add_argument("--deadline-minutes", type=float, default=8.5,
                        help="whole run, generation included; training gets what is left minus packing")
    parser.add_argument("--generation-minutes", type=float, default=2.5,
                        help="stop making training phantoms after this; the largest size shrinks to what exists")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--patch", type=int, nargs=3, default=[48, 80, 80])
    parser.add_argument("--val-every", type=int, default=100)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--run-dir", type=Path, default=Path("/tmp/train_sizes"))
    parser.add_argument("--pack", type=Path, required=True)
    args = parser.parse_args()
    t_start = time.perf_counter()
    ship_size = args.ship_size or max(args.sizes)

    import torch

    from cacnet.train import TRAIN_SET_SEED, VAL_SET_SEED, phantom_cases

    log: dict = {"argv": sys.argv, "machine": {
        "platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
        "numpy": np.__version__, "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}}
    print(json.dumps(log["machine"]), flush=True)
    t0 = time.perf_counter()
    phantom_cases(VAL_SET_SEED, args.val, cache=args.run_dir / "cache" / "val", workers=args.workers)
    made = len(phantom_cases(TRAIN_SET_SEED, max(args.sizes), cache=args.run_dir / "cache" / "train",
                             workers=args.workers, deadline=t0 + args.generation_minutes * 60))
    log["generation_seconds"] = round(time.perf_counter() - t0, 1)
    if made < max(args.sizes):  # out of time: the largest set is what was made
        sizes = sorted({min(s, made) for s in args.sizes})
        print(f"only {made} phantoms in time; sizes {args.sizes} -> {sizes}", flush=True)
        ship_size = min(ship_size, made)
        args.sizes = sizes
    log["sizes"] = args.sizes
    print(f"generated {made} + {args.val} phantoms in {log['generation_seconds']} s", flush=True)

    left = args.deadline_minutes * 60 - (time.perf_counter() - t_start)
    train_seconds = max(30.0, left - 60.0)  # start-up of the trainers and packing
    cfg = {"steps": 10**6, "batch": args.batch, "patch": tuple(args.patch), "lr": 1e-3, "val_every": args.val_every,
           "checkpoint_every": 200, "threads": 1, "max_seconds": train_seconds - 20.0}
    log["config"] = cfg
    print(f"training {len(args.sizes)} x {args.models} models, one process per size, for {cfg['max_seconds']:.0f} s", flush=True)
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_train_size, args=(str(args.run_dir), s, args.models, cfg, args.val, q))
             for s in args.sizes]
    for p in procs:
        p.start()
    results = []
    deadline = time.perf_counter() + train_seconds + 30
    while len(results) < len(procs) * args.models and time.perf_counter() < deadline:
        try:
            results.append(q.get(timeout=5))
        except Exception:  # noqa: BLE001 - queue.Empty
            pass
    for p in procs:
        p.join(timeout=5)
        if p.is_alive():
            p.terminate()
    log["results"] = [{"size": s, "seed": m, "summary": summ, "error": err} for s, m, summ, err in results]
    for r in log["results"]:
        if r["error"]:
            print(f"size {r['size']} model {r['seed']} FAILED:\n{r['error']}", flush=True)
        else:
            sm = r["summary"]
            print(f"size {r['size']} model {r['seed']}: {sm['steps_done']} steps, best val dice "
                  f"{sm['best_val_dice']:.3f} at {sm['best_step']}", flush=True)
    log["total_seconds"] = round(time.perf_counter() - t_start, 1)
    files = pack(args.run_dir, args.sizes, args.models, ship_size, args.pack, log)
    print(f"packed {files} in {time.perf_counter() - t_start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
