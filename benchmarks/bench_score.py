"""End-to-end `cac score` speed and memory against the plain pipeline.

On a 512 x 512 x 60 synthetic scan (written as .nii.gz), in one run:

* plain: read, preprocess, five onnxruntime sessions created with default
  options and run in turn on the whole volume, the same component decision,
  and the naive per-slice, per-component Agatston loop;
* cac score --backend onnxruntime: sessions created once and reused, every
  model run, vectorised scoring;
* cac score --backend openvino (the default on the CPU when OpenVINO is
  installed): the same ONNX files compiled once by OpenVINO, fp32;
* cac score --early-stop (default backend): stops after 3 or 4 of the 5
  models once the rest cannot change the vote at any coarse voxel that
  decides a component (same mask and scores);
* cac score --precision bf16 (OpenVINO, where the CPU has bf16): not exact,
  its mask is compared, not asserted.

Results are checked to be identical (bf16 excepted). Peak RSS of a `cac score`
process is its VmHWM (Linux), read in a child process at its end. With
``--thin 2.5`` a second scan is made with 2.5 mm slices (more of them) and
timed the same way.

Then, since one scan says little about how often early stop fires, the first
``--early-stop-cases`` held-out phantoms of experiments/experiments.py are
scored with and without it: how many models ran, the time, and a check that
the masks are identical.

Run:  python -m benchmarks.bench_score [--weights weights] [--repeat 3]
          [--early-stop-cases 20] [--cache DIR (held-out phantoms, as experiments.py)] [--thin 2.5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from benchmarks.plain_pipeline import plain  # noqa: F401  (the plain pipeline; also a process of its own there)
from cacnet.ensemble import DEFAULT_WEIGHTS, Ensemble, cpu_supports_bf16, load_second_stage
from cacnet.phantom import generate_phantom, oriented_image
from cacnet.pipeline import score_scan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=4242)
    parser.add_argument("--early-stop-cases", type=int, default=20)
    parser.add_argument("--cache", type=Path, default=None, help="held-out phantom cache (experiments.py --cache)")
    parser.add_argument("--thin", type=float, default=None, help="also time a scan with slices this thick (mm)")
    parser.add_argument("--skip-memory", action="store_true", help="no peak-RSS child processes")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp())
    case = benchmark_case(args.seed)
    path = tmp / "scan.nii.gz"
    sitk.WriteImage(oriented_image(case.hu, case, "identity"), str(path))
    print(f"scan {case.hu.shape[::-1]} (x, y, z), truth Agatston {case.truth.agatston:.1f} ({case.truth.category})")
    # the paper's majority vote (what the plain pipeline does); a second stage, when the weights have one, is
    # timed besides (its masks differ from the vote's by design; onnxruntime and OpenVINO must agree)
    ensembles = {"onnxruntime": Ensemble(args.weights, device="cpu", backend="onnxruntime", second_stage=False),
                 "openvino": Ensemble(args.weights, device="cpu", backend="openvino", second_stage=False)}
    if cpu_supports_bf16():
        ensembles["bf16"] = Ensemble(args.weights, device="cpu", backend="openvino", precision="bf16",
                                     second_stage=False)
    if load_second_stage(args.weights) is not None:
        for k in ("onnxruntime", "openvino"):
            ensembles[f"second stage, {k}"] = Ensemble(args.weights, device="cpu", backend=k)
    ens = ensembles["openvino"]
    time_scan(path, args, ensembles)
    if args.thin:
        thin = thin_scan(case, args.thin, tmp)
        print(f"\nscan {thin[1]} (x, y, z), {args.thin} mm slices")
        time_scan(thin[0], args, ensembles, early=False)

    # VmHWM, not ru_maxrss: ru_maxrss survives exec, so a child forked from this
    # (large) benchmark process would report the parent's resident set.
    # (what cacnet.cli.main does before app(); main itself ends the process at once after `cac score`)
    code = ("import resource, sys; from cacnet._memory import return_large_buffers_to_os; "
            "return_large_buffers_to_os(); from cacnet.cli import app; "
            "sys.argv=['cac','score',sys.argv[1],'--json','--weights',sys.argv[2]] + sys.argv[3:]; "
            "\ntry:\n app()\nexcept SystemExit: pass\n"
            "hwm = [ln for ln in open('/proc/self/status') if ln.startswith('VmHWM')]\n"
            "print(int(hwm[0].split()[1]) if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "
            "file=sys.stderr)")
    extras = [["--backend", "onnxruntime"], ["--backend", "openvino"], ["--early-stop"]]
    if "bf16" in ensembles:
        extras.append(["--precision", "bf16"])
    for extra in [] if args.skip_memory else extras:
        out = subprocess.run([sys.executable, "-c", code, str(path), str(args.weights), *extra],
                             capture_output=True, text=True)
        rss_mb = int(out.stderr.strip().splitlines()[-1]) / 1024
        print(f"peak RSS of `cac score {' '.join(extra)}` process: {rss_mb:.0f} MB")
    if args.early_stop_cases:
        early_stop_frequency(ens, args.early_stop_cases, args.cache, tmp)


def benchmark_case(seed: int = 4242):
    """The benchmark phantom: the first seed from ``seed`` that gives a 512 x 512 x 60 scan (3 mm), category D."""
    from cacnet.phantom._base import sample_acquisition

    case = None
    for s in range(seed, seed + 5000):  # the first seed that gives 512 x 512 x 60
        # with a category given, the acquisition is the seed's first draw
        if sample_acquisition(np.random.default_rng(s)).n_slices == 60:
            case = generate_phantom(s, category="D")
            if case.hu.shape[0] == 60:
                break
    assert case is not None and case.hu.shape == (60, 512, 512)
    return case


def thin_scan(case, thickness: float, tmp: Path) -> tuple[Path, tuple]:
    """The same phantom resampled to ``thickness`` mm slices (linear in z), written as .nii.gz."""
    from scipy import ndimage

    dz = float(case.spacing[0])
    n = int(round(case.hu.shape[0] * dz / thickness))
    hu = ndimage.zoom(case.hu, (n / case.hu.shape[0], 1, 1), order=1).astype(case.hu.dtype)
    img = oriented_image(hu, case, "identity")
    img.SetSpacing((img.GetSpacing()[0], img.GetSpacing()[1], thickness))
    path = tmp / "thin.nii.gz"
    sitk.WriteImage(img, str(path))
    return path, hu.shape[::-1]


def time_scan(path: Path, args, ensembles: dict, early: bool = True) -> None:
    """Median time of the plain pipeline and of score_scan with each backend, in one run."""
    t: dict[str, list[float]] = {"plain": []}
    res: dict = {}
    for _ in range(args.repeat):
        s = time.perf_counter()
        ref_score, ref_labels = plain(path, args.weights)
        t["plain"].append(time.perf_counter() - s)
        runs = [(f"cac score --backend {k}" if k in ("onnxruntime", "openvino") else "cac score --precision bf16"
                 if k == "bf16" else f"cac score ({k})", e, False) for k, e in ensembles.items()]
        if early:
            runs.insert(2, ("cac score --early-stop", ensembles["openvino"], True))
        for name, e, stop in runs:
            s = time.perf_counter()
            res[name] = score_scan(path, e, early_stop=stop)
            t.setdefault(name, []).append(time.perf_counter() - s)
            if "bf16" in name:
                continue
            if "second stage" in name:
                first = res.get("cac score (second stage, onnxruntime)")
                assert first is None or np.array_equal(res[name].labels, first.labels), name
                continue
            assert np.array_equal(res[name].labels, ref_labels), name
            assert abs(res[name].score.agatston - ref_score) < 1e-6 * max(1, ref_score), name
    fp32 = res["cac score --backend openvino"]
    print(f"prediction: Agatston {fp32.score.agatston:.1f} ({fp32.score.category}); identical in every fp32 pipeline"
          " of the majority vote")
    staged = res.get("cac score (second stage, openvino)")
    if staged is not None:
        print(f"second stage: Agatston {staged.score.agatston:.1f} ({staged.score.category}); identical with "
              "onnxruntime and OpenVINO")
    if early:
        print(f"models run with --early-stop: {res['cac score --early-stop'].data['models']['models_run']} of 5")
    for name, r in res.items():
        if "bf16" in name:
            n_diff = int((r.labels != ref_labels).sum())
            print(f"bf16: Agatston {r.score.agatston:.1f} ({r.score.category}); {n_diff} voxels labelled differently")
    med = statistics.median
    print(f"\n{'pipeline':<32}{'median s':>10}{'speed-up':>10}{'inference s':>13}")
    print(f"{'plain (onnxruntime)':<32}{med(t['plain']):>10.2f}{1.0:>10.2f}")
    for name, r in res.items():
        print(f"{name:<32}{med(t[name]):>10.2f}{med(t['plain']) / med(t[name]):>10.2f}"
              f"{r.data['timings_s']['inference']:>13.2f}")
    print("\nstages of cac score (default backend, last run):", json.dumps(fp32.data["timings_s"]))


def early_stop_frequency(ens: Ensemble, n: int, cache: Path | None, tmp: Path) -> None:
    """Models run and time with --early-stop on the first ``n`` held-out phantoms; masks must be identical."""
    from experiments.experiments import held_out_case

    runs, t_full, t_early = [], 0.0, 0.0
    for i in range(n):
        case = held_out_case(i, cache)
        img = sitk.GetImageFromArray(case["hu"])
        img.SetSpacing(tuple(float(v) for v in case["spacing"][::-1]))
        path = tmp / f"held_out_{i}.nii.gz"
        sitk.WriteImage(img, str(path))
        t = time.perf_counter()
        full = score_scan(path, ens)
        t_full += time.perf_counter() - t
        t = time.perf_counter()
        early = score_scan(path, ens, early_stop=True)
        t_early += time.perf_counter() - t
        assert np.array_equal(full.labels, early.labels), f"held-out case {i}: early stop changed the mask"
        runs.append(early.data["models"]["models_run"])
    counts = {k: runs.count(k) for k in sorted(set(runs))}
    print(f"\n--early-stop on {n} held-out phantoms: models run {counts} (cases per count); masks identical; "
          f"total {t_full:.1f} s without, {t_early:.1f} s with ({t_full / t_early:.2f}x)")


if __name__ == "__main__":
    main()
