"""Write the start weights that ``benchmarks/train_gpu.py --init`` reads.

From a ``cac train`` run folder (``model_<k>/best.pt``) or from a pack written
by ``train_gpu.py`` / ``train_sizes.py`` (``size_<n>_part<k>.npz``), write
``OUT/model_<k>.npz``: each model's state dict, floats stored as float16 so
that five models (14 MB) fit in what a GPU lease carries beside the repository.

Run:  python benchmarks/make_gpu_init.py runs/ship3 .gpu_init
      python benchmarks/make_gpu_init.py packed/ .gpu_init
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np


def to_half(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = {}
    for name, arr in state.items():
        if arr.dtype.kind == "f":
            if not np.all(np.isfinite(arr)) or np.abs(arr).max(initial=0) > np.finfo(np.float16).max:
                raise ValueError(f"{name}: values do not fit float16")
            arr = arr.astype(np.float16)
        out[name] = arr
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path)
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    states: dict[int, dict[str, np.ndarray]] = {}
    for best in sorted(args.source.glob("model_*/best.pt")):
        import torch

        k = int(best.parent.name.split("_")[1])
        states[k] = {n: v.numpy() for n, v in torch.load(best, weights_only=False, map_location="cpu")["model"].items()}
    for pack in sorted(args.source.glob("size_*_part*.npz")):
        with np.load(pack) as z:
            for key in z.files:
                k = int(re.match(r"model_(\d+)/", key).group(1))
                states.setdefault(k, {})[key.split("/", 1)[1]] = z[key]
    if not states:
        raise SystemExit(f"no model_<k>/best.pt and no size_*_part*.npz in {args.source}")
    for k, state in sorted(states.items()):
        np.savez(args.out / f"model_{k}.npz", **to_half(state))
        print(f"model {k}: {len(state)} tensors -> {args.out / f'model_{k}.npz'}")


if __name__ == "__main__":
    main()
