"""Training speed of the joint loop (``cac train``) on this machine, per precision.

Each precision (bf16 autocast, the default where the CPU has it; fp32 with
``CAC_TRAIN_FP32=1``) runs in its own process: ``--models`` U-Nets stepped in
turn by ``cacnet.train.train_models`` (``cac train``'s loop) on the first 20
training phantoms, batches of ``--batch`` patches of 40 x 64 x 64, 2 threads,
for ``--seconds`` of training. Reported: steps per second (one step trains
every model once) and model-steps per second, timed from the end of the first
step to the end of the last (the one validation at the end and the checkpoint
are left out), and seconds per model-step.

Run:  python -m benchmarks.train_speed [--cache DIR (cac train's cache/train)] [--models 2] [--batch 2] [--seconds 30]
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
from cacnet.train import TRAIN_SET_SEED, TrainConfig, TrainData, phantom_cases, train_models
cache = Path(sys.argv[1]) if sys.argv[1] else None
models, batch, seconds = int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
cases = phantom_cases(TRAIN_SET_SEED, 20, cache=cache, workers=2)
stamps = []
s = train_models(Path(tempfile.mkdtemp()), TrainData(cases, cases[:1]),
                 TrainConfig(steps=10**9, batch=batch, patch=(40, 64, 64), val_every=10**9, checkpoint_every=10**9,
                             threads=2, max_seconds=seconds),
                 models=models,
                 on_event=lambda kind, info: stamps.append(time.perf_counter()) if kind == "step" else None)
rate = (len(stamps) - 1) / (stamps[-1] - stamps[0])
print(("bf16" if s[0]["bf16"] else "fp32"), len(stamps), round(rate, 3), round(rate * models, 3),
      round(1 / (rate * models), 3))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", type=Path, default=None, help="phantom cache (made there when missing)")
    parser.add_argument("--models", type=int, default=2)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=30.0, help="training time per precision")
    parser.add_argument("--precision", choices=["bf16", "fp32"], nargs="+", default=["bf16", "fp32"])
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    for precision in args.precision:
        run_env = ({**env, "CAC_TRAIN_FP32": "1"} if precision == "fp32"
                   else {k: v for k, v in env.items() if k != "CAC_TRAIN_FP32"})
        out = subprocess.run([sys.executable, "-c", CHILD, str(args.cache or ""), str(args.models), str(args.batch),
                              str(args.seconds)], env=run_env, capture_output=True, text=True, check=True)
        got, steps, rate, model_rate, per_model_step = out.stdout.split()[-5:]
        print(f"{got}: {rate} steps/s of {args.models} models ({model_rate} model-steps/s, {per_model_step} s per "
              f"model-step; batch {args.batch} x 40x64x64, 2 threads, {steps} steps in ~{args.seconds:g} s)")


if __name__ == "__main__":
    main()
