"""Do OpenVINO and onnxruntime give the same masks? Measured, case by case.

Every scan is scored in this one process with both backends (``score_scan``,
``force=True`` so that scans triage refuses are scored too): onnxruntime
(fp32, the reference) and OpenVINO at ``--precision`` (fp32 by default).
Scans: the first ``--n`` held-out phantoms of experiments/experiments.py (from
``--cache`` when there), the bundled example and the real-CT test fixtures.

Printed per scan: coarse voxels where a model's argmax differs (with the
reference's top-2 logit margin there, to tell near-ties from real
disagreement), fine-grid voxels whose label differs (the first few listed),
the Agatston difference, and the largest |logit| and |softmax probability|
differences over the five models. A summary follows.

Run:  python -m experiments.backend_agreement [--n 100] [--cache DIR] [--precision fp32|bf16]
          [--weights weights] [--no-extra] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from cacnet.ensemble import DEFAULT_WEIGHTS, Ensemble, combine_votes
from cacnet.io import Scan, read_scan
from cacnet.pipeline import score_scan
from experiments._common import ROOT


def recording(ens: Ensemble) -> list:
    """Make ``ens`` keep the logits of its last vote (one array per model run).

    OpenVINO votes with one graph that returns class maps, not logits
    (:meth:`Ensemble.classes`); for it the logits are computed afterwards by
    the single compiled models, and the graph's class maps are checked
    against their argmax (``graph_argmax_differ``).
    """
    kept: list = []
    run, run_classes = ens.logits, ens.classes

    def logits(x):
        kept.clear()
        for out in run(x):
            kept.append(out)
            yield out

    def classes(x):
        maps = run_classes(x)
        if ens.backend == "openvino":
            list(logits(x))
            kept.append(sum(int((m != la.argmax(0)).sum()) for m, la in zip(maps, kept)))
        return maps

    run_soft = ens.soft_vote

    def soft_vote(x):
        # with a second stage, OpenVINO runs the soft vote as one graph (classes and mean probabilities, no
        # logits): the single models give the logits afterwards, and the graph's vote is checked against theirs
        probs, vote = run_soft(x)
        if ens.backend == "openvino":
            list(logits(x))
            again = combine_votes([la.argmax(0).astype(np.uint8) for la in kept], ens.n_models)
            kept.append(int((again.votes != vote.votes).sum() + (again.artery != vote.artery).sum()))
        return probs, vote

    ens.logits = logits  # type: ignore[method-assign]  # an instance attribute shadows the method
    ens.classes = classes  # type: ignore[method-assign]
    ens.soft_vote = soft_vote  # type: ignore[method-assign]
    return kept


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=0, keepdims=True))
    return e / e.sum(axis=0, keepdims=True)


def scan_from_phantom(i: int, cache: Path | None, tmp: Path) -> Scan:
    import SimpleITK as sitk
    from experiments.experiments import held_out_case

    case = held_out_case(i, cache)
    img = sitk.GetImageFromArray(case["hu"])
    img.SetSpacing(tuple(float(v) for v in case["spacing"][::-1]))
    path = tmp / f"held_out_{i:04d}.nii.gz"
    sitk.WriteImage(img, str(path))
    scan = read_scan(path)
    path.unlink()
    return scan


def compare(name: str, scan: Scan, ref: Ensemble, test: Ensemble, ref_logits: list, test_logits: list,
            show: int = 5) -> dict:
    a = score_scan(scan, ref, force=True)
    b = score_scan(scan, test, force=True)
    row = {"id": name, "shape": list(scan.hu.shape), "agatston_ref": a.score.agatston, "agatston": b.score.agatston,
           "d_agatston": b.score.agatston - a.score.agatston, "inference_s_ref": a.data["timings_s"]["inference"],
           "inference_s": b.data["timings_s"]["inference"]}
    diff = np.argwhere(a.labels != b.labels)
    row["d_artery_max"] = max(abs(b.data["arteries"][k]["agatston"] - a.data["arteries"][k]["agatston"])
                              for k in a.data["arteries"])
    row["label_voxels_differ"] = int(len(diff))
    row["mask_identical"] = bool(np.array_equal(a.labels > 0, b.labels > 0))
    row["labels_identical"] = row["label_voxels_differ"] == 0
    row["examples"] = [{"zyx": v.tolist(), "ref": int(a.labels[tuple(v)]), "test": int(b.labels[tuple(v)])}
                       for v in diff[:show]]
    graph_differ = test_logits.pop() if test_logits and isinstance(test_logits[-1], int) else 0
    max_logit = max_prob = 0.0
    argmax_differ, margins = 0, []
    if ref_logits and len(ref_logits) == len(test_logits):  # no candidates >= 130 HU: no model ran
        for la, lb in zip(ref_logits, test_logits):
            max_logit = max(max_logit, float(np.abs(la - lb).max()))
            max_prob = max(max_prob, float(np.abs(softmax(la) - softmax(lb)).max()))
            where = la.argmax(0) != lb.argmax(0)
            argmax_differ += int(where.sum())
            if where.any():
                top2 = np.sort(la[:, where], axis=0)[-2:]
                margins += (top2[1] - top2[0]).tolist()
    row.update({"max_abs_logit_diff": max_logit, "max_abs_prob_diff": max_prob,
                "coarse_argmax_differ": argmax_differ, "graph_argmax_differ": graph_differ,
                "max_ref_margin_where_argmax_differs": max(margins) if margins else None,
                "models_run": len(ref_logits)})
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100, help="held-out phantoms (0 for none)")
    parser.add_argument("--start", type=int, default=0)
    parser.add_argument("--cache", type=Path, default=None, help="held-out phantom cache (experiments.py --cache)")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--no-extra", action="store_true", help="skip the bundled example and the real-CT fixtures")
    parser.add_argument("--json", type=Path, default=None, help="write every row here")
    args = parser.parse_args()
    import tempfile

    ref = Ensemble(args.weights, device="cpu", backend="onnxruntime", threads=args.threads)
    test = Ensemble(args.weights, device="cpu", backend="openvino", precision=args.precision, threads=args.threads)
    print(f"reference: {ref.describe()}\ntested:    {test.describe()}", flush=True)
    ref_logits, test_logits = recording(ref), recording(test)
    sources: list = []
    if not args.no_extra:
        sources.append(("example", lambda: read_scan(ROOT / "examples/data/phantom_example.nii.gz")))
        for p in sorted((ROOT / "tests/data/real-ct").glob("*.nii.gz")):
            sources.append((p.name.removesuffix(".nii.gz"), lambda p=p: read_scan(p)))
    tmp = Path(tempfile.mkdtemp())
    for i in range(args.start, args.start + args.n):
        sources.append((f"held_out_{i:04d}", lambda i=i: scan_from_phantom(i, args.cache, tmp)))
    rows = []
    t0 = time.perf_counter()
    print(f"{'scan':<22}{'models':>7}{'argmax!=':>9}{'label!=':>8}{'dAgatston':>11}{'max|dlogit|':>12}"
          f"{'max|dprob|':>11}{'ort s':>7}{'ov s':>6}", flush=True)
    for name, load in sources:
        row = compare(name, load(), ref, test, ref_logits, test_logits)
        rows.append(row)
        print(f"{name:<22}{row['models_run']:>7}{row['coarse_argmax_differ']:>9}{row['label_voxels_differ']:>8}"
              f"{row['d_agatston']:>11.3f}{row['max_abs_logit_diff']:>12.2e}{row['max_abs_prob_diff']:>11.2e}"
              f"{row['inference_s_ref']:>7.2f}{row['inference_s']:>6.2f}", flush=True)
        for ex in row["examples"]:
            print(f"    voxel z,y,x={ex['zyx']}: onnxruntime {ex['ref']}, openvino {ex['test']}")
        if row["coarse_argmax_differ"]:
            print(f"    largest reference top-2 margin where a model's argmax differs: "
                  f"{row['max_ref_margin_where_argmax_differs']:.3g}")
    n = len(rows)
    same = sum(r["labels_identical"] for r in rows)
    same_mask = sum(r["mask_identical"] for r in rows)
    d = [abs(r["d_agatston"]) for r in rows]
    print(f"\n{n} scans ({sum(r['id'].startswith('held_out') for r in rows)} held-out phantoms), "
          f"OpenVINO {args.precision} vs onnxruntime fp32, {time.perf_counter() - t0:.0f} s:")
    print(f"  label maps identical: {same} of {n}; calcium masks identical: {same_mask} of {n}; "
          f"voxels differing in all: {sum(r['label_voxels_differ'] for r in rows)}")
    print(f"  coarse argmax differences (model x voxel): {sum(r['coarse_argmax_differ'] for r in rows)}")
    print(f"  OpenVINO's one-graph class maps against the argmax of its single models' logits, voxels "
          f"differing: {sum(r['graph_argmax_differ'] for r in rows)}")
    print(f"  |Agatston difference|: max {max(d):.3f}, mean {np.mean(d):.4f}; scans with any: "
          f"{sum(x > 0 for x in d)}; category changed: "
          f"{sum(_cat(r['agatston']) != _cat(r['agatston_ref']) for r in rows)}; largest per-artery |difference| "
          f"{max(r['d_artery_max'] for r in rows):.3f}")
    print(f"  largest |logit| difference {max(r['max_abs_logit_diff'] for r in rows):.3g}, "
          f"largest |probability| difference {max(r['max_abs_prob_diff'] for r in rows):.3g}")
    print(f"  inference: onnxruntime {sum(r['inference_s_ref'] for r in rows):.1f} s, "
          f"OpenVINO {sum(r['inference_s'] for r in rows):.1f} s in all (for fp32 OpenVINO's includes "
          "running its single models again for their logits; use benchmarks.bench_score for speed)")
    if args.json:
        args.json.write_text(json.dumps({"reference": ref.describe(), "tested": test.describe(), "rows": rows},
                                        indent=1))


def _cat(score: float) -> str:
    import agatston

    return agatston.category(score)


if __name__ == "__main__":
    main()
