"""The plain version of the paper's pipeline: the yardstick of the speed benchmarks.

Read the scan, reduce it to the coarse grid (2.5 or 3 mm), run five
onnxruntime sessions created with default options one after the other on the
whole volume, take the majority vote, threshold at 130 HU and decide each 2D
component by the vote at its densest voxel, then score with the naive
per-slice, per-component Agatston loop (``bench_agatston.naive_score``).

``plain()`` is what ``bench_score.py`` times in process; run as a script it is
one fresh process, as ``bench_process.py`` times it against ``cac score``. It
imports only what it runs (no OpenVINO, no command-line framework).

Run:  python -m benchmarks.plain_pipeline SCAN [--weights DIR]
      (prints {"agatston": ..., "calcium_voxels": ...} as JSON)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from benchmarks.bench_agatston import naive_score
from cacnet.ensemble import DEFAULT_WEIGHTS, combine_votes, verify_weights
from cacnet.io import read_scan
from cacnet.pipeline import decide_components
from cacnet.preprocess import coarse_grid, downsample, normalize, pad_to_multiple


def plain(path: Path, weights: Path) -> tuple[float, np.ndarray]:
    """Agatston score and label volume of a scan by the plain pipeline."""
    import onnxruntime as ort

    scan = read_scan(path)
    grid = coarse_grid(scan.hu.shape, scan.spacing)
    x = normalize(downsample(scan.hu, grid))
    inp = pad_to_multiple(x)[None, None]
    crop = tuple(slice(0, s) for s in x.shape)
    classes = []
    models = verify_weights(weights)
    for m in models:
        sess = ort.InferenceSession(m["path"], providers=["CPUExecutionProvider"])
        classes.append(sess.run(None, {sess.get_inputs()[0].name: inp})[0][0].argmax(0)[crop].astype(np.uint8))
    labels, _ = decide_components(scan.hu, combine_votes(classes, len(models)), grid)
    return naive_score(scan.hu, scan.spacing, labels), labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scan", type=Path)
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    args = parser.parse_args()
    score, labels = plain(args.scan, args.weights)
    print(json.dumps({"agatston": float(score), "calcium_voxels": int(np.count_nonzero(labels))}))


if __name__ == "__main__":
    main()
