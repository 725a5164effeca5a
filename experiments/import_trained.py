"""Export the weights packed by ``train_sizes.py`` to ONNX ensembles with manifests.

Each training-set size becomes ``OUT/size_<n>/`` holding ``unet_<seed>.onnx``
and ``manifest.json`` (loadable with ``cac score --weights OUT/size_<n>``).

Run:  python -m experiments.import_trained PACK_DIR OUT
"""

from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from cacnet.train import export_onnx, write_manifest


def load_packs(pack_dir: Path) -> tuple[dict[int, dict[int, dict[str, torch.Tensor]]], dict[int, str]]:
    """{size: {seed: state_dict (float32)}} from ``size_<n>_part<k>.npz`` files, and each size's stored dtype."""
    states: dict[int, dict[int, dict[str, torch.Tensor]]] = defaultdict(dict)
    dtypes: dict[int, str] = {}
    for path in sorted(pack_dir.glob("size_*_part*.npz")):
        size = int(re.match(r"size_(\d+)_part", path.name).group(1))
        with np.load(path) as z:
            for key in z.files:
                model, name = key.split("/", 1)
                seed = int(model.split("_")[1])
                arr = z[key]
                if arr.dtype.kind == "f":
                    dtypes[size] = str(arr.dtype)
                t = torch.from_numpy(arr.astype(np.float32) if arr.dtype == np.float16 else arr.copy())
                states[size].setdefault(seed, {})[name] = t
    return states, dtypes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pack_dir", type=Path)
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    log = json.loads((args.pack_dir / "train_sizes.json").read_text())
    summaries = {(r["size"], r["seed"]): r["summary"] for r in log["results"] if r["summary"]}
    states, dtypes = load_packs(args.pack_dir)
    for size, models in sorted(states.items()):
        out = args.out / f"size_{size}"
        entries = []
        for seed, state in sorted(models.items()):
            name = f"unet_{seed}.onnx"
            diff = export_onnx(state, out / name)
            s = summaries.get((size, seed), {})
            entries.append({"file": name, "seed": seed, "best_step": s.get("best_step"),
                            "val_dice": round(s.get("best_val_dice", float("nan")), 4),
                            "onnx_vs_torch_max_prob_diff": diff})
        cfg = log["config"]
        training = {
            "data": f"{size} synthetic phantoms (cacnet.phantom, seed 1000, balanced A-E)",
            "validation": "20 synthetic phantoms (seed 1001)",
            "train_cases": size,
            "val_cases": 20,
            "real_scans": "none",
            "config": cfg,
            "weights_stored_as": dtypes[size],
            "machine": f"{log['machine']['gpu']}, torch {log['machine']['torch']}; {len(log['results'])} models "
                       f"trained side by side for {cfg['max_seconds']:.0f} s each",
            "seeds": sorted(models),
        }
        path = write_manifest(out, entries, training, metrics={})
        print(f"size {size}: {len(entries)} models -> {path}")


if __name__ == "__main__":
    main()
