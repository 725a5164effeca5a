"""Old command line of the GPU training, kept as a thin wrapper around ``cac train``.

The loop that lived here (all models in one process, stepped in turn, batches
cut on the GPU, start weights from ONNX, hard negatives mixed into each batch,
validation every N seconds, best step per model, phantoms made while training
starts) is now the package's only training loop: ``cacnet.train.train_models``
behind ``cac train``. This script translates its flags and runs ``cac train``,
which writes ONNX weights and a manifest into ``--pack``/weights (no more
``size_<n>_part<k>.npz`` packs for ``import_trained.py``). The shipped v0.3
weights were made with:

    python -m experiments.train_gpu --init weights --negatives .gpu_neg --neg-per-batch 4 --batch 16 --lr 3e-4 \\
        --minutes 6 --val-seconds 40 --exclude-start --train 300 --val 20 --workers 14 --pack OUT

which is now:

    cac train OUT --init weights --negatives .gpu_neg --neg-per-batch 4 --batch 16 --lr 3e-4 \\
        --max-minutes 6 --val-seconds 40 --exclude-start --phantoms 300 --val-phantoms 20 --workers 14 --stream

(``--negatives`` takes scans, files or DICOM folders, or ``.npz`` cases written by
``cacnet.train.save_case``, one by one or as a folder of them.)
"""

from __future__ import annotations

import argparse
import os
import shlex
from pathlib import Path

from experiments._common import use_source_tree

use_source_tree()  # this checkout's cacnet, installed or not


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--init", type=Path, default=None)
    parser.add_argument("--negatives", type=Path, default=None)
    parser.add_argument("--neg-per-batch", type=int, default=4)
    parser.add_argument("--exclude-start", action="store_true")
    parser.add_argument("--models", type=int, default=5)
    parser.add_argument("--train", type=int, default=300)
    parser.add_argument("--val", type=int, default=20)
    parser.add_argument("--minutes", type=float, default=7.0)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--patch", type=int, nargs=3, default=[40, 64, 64])
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--val-seconds", type=float, default=40.0)
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 2))
    parser.add_argument("--pack", type=Path, required=True, help="the output folder of cac train")
    args = parser.parse_args()
    argv = ["train", str(args.pack), "--models", str(args.models), "--phantoms", str(args.train),
            "--val-phantoms", str(args.val), "--max-minutes", str(args.minutes), "--batch", str(args.batch),
            "--patch", *map(str, args.patch), "--lr", str(args.lr), "--val-seconds", str(args.val_seconds),
            "--workers", str(args.workers), "--warmup", "0.03", "--stream"]
    if args.init is not None:
        argv += ["--init", str(args.init)]
    if args.negatives is not None:
        argv += ["--negatives", str(args.negatives), "--neg-per-batch", str(args.neg_per_batch)]
    if args.exclude_start:
        argv += ["--exclude-start"]
    print("cac " + shlex.join(argv), flush=True)
    from cacnet.cli import app

    app(argv)


if __name__ == "__main__":
    main()
