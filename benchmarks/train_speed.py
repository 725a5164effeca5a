"""Seconds per training step on this machine: bf16 autocast (default) against fp32 (CAC_TRAIN_FP32=1).

Each precision runs in its own process (``cac train``'s settings: batches of 2
patches of 40 x 64 x 64, 2 threads) on the first 20 training phantoms, for
``--steps`` steps including one validation on one case.

Run:  python benchmarks/train_speed.py [--cache DIR (cac train's cache/train)] [--steps 30]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

CHILD = """
import sys, tempfile, time
from pathlib import Path
from cacnet.train import TRAIN_SET_SEED, TrainConfig, phantom_cases, train_model
cache = Path(sys.argv[1]) if sys.argv[1] else None
steps = int(sys.argv[2])
cases = phantom_cases(TRAIN_SET_SEED, 20, cache=cache, workers=2)
t = time.perf_counter()
s = train_model(Path(tempfile.mkdtemp()) / "m", cases, cases[:1],
                TrainConfig(steps=steps, batch=2, patch=(40, 64, 64), val_every=10**9, checkpoint_every=10**9,
                            seed=0, threads=2))
print(("bf16" if s["bf16"] else "fp32"), round((time.perf_counter() - t) / steps, 3))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", type=Path, default=None, help="phantom cache (made there when missing)")
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    for fp32 in (False, True):
        run_env = {**env, "CAC_TRAIN_FP32": "1"} if fp32 else {k: v for k, v in env.items() if k != "CAC_TRAIN_FP32"}
        out = subprocess.run([sys.executable, "-c", CHILD, str(args.cache or ""), str(args.steps)],
                             env=run_env, capture_output=True, text=True, check=True)
        precision, seconds = out.stdout.split()[-2:]
        print(f"{precision}: {seconds} s per step (batch 2 x 40x64x64, 2 threads, {args.steps} steps incl. one validation)")


if __name__ == "__main__":
    main()
