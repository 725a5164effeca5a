"""End-to-end `cac score` speed and memory against the plain pipeline.

On a 512 x 512 x 60 synthetic scan (written as .nii.gz), in one run:

* plain: read, preprocess, five onnxruntime sessions created with default
  options and run in turn on the whole volume, the same component decision,
  and the naive per-slice, per-component Agatston loop;
* cac score (default): sessions created once and reused, every model run,
  vectorised scoring;
* cac score --early-stop: stops after 3 or 4 of the 5 models once the rest
  cannot change the vote at any coarse voxel that decides a component (same
  mask and scores).

Both results are checked to be identical. Peak RSS of a `cac score` process
is its VmHWM (Linux), read in a child process at its end.

Then, since one scan says little about how often early stop fires, the first
``--early-stop-cases`` held-out phantoms of benchmarks/experiments.py are
scored with and without it: how many models ran, the time, and a check that
the masks are identical.

Run:  python benchmarks/bench_score.py [--weights weights] [--repeat 3]
          [--early-stop-cases 20] [--cache DIR (held-out phantoms, as experiments.py)]
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

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_agatston import naive_score  # noqa: E402

from cacnet.ensemble import DEFAULT_WEIGHTS, Ensemble, combine_votes, verify_weights  # noqa: E402
from cacnet.io import read_scan  # noqa: E402
from cacnet.phantom import generate_phantom, oriented_image  # noqa: E402
from cacnet.pipeline import decide_components, score_scan  # noqa: E402
from cacnet.preprocess import coarse_grid, downsample, normalize, pad_to_multiple  # noqa: E402


def plain(path: Path, weights: Path) -> tuple[float, np.ndarray]:
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
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=4242)
    parser.add_argument("--early-stop-cases", type=int, default=20)
    parser.add_argument("--cache", type=Path, default=None, help="held-out phantom cache (experiments.py --cache)")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp())
    from cacnet.phantom._generate import _sample_acquisition

    case = None
    for s in range(args.seed, args.seed + 5000):  # the first seed that gives 512 x 512 x 60
        # with a category given, the acquisition is the seed's first draw
        if _sample_acquisition(np.random.default_rng(s)).n_slices == 60:
            case = generate_phantom(s, category="D")
            if case.hu.shape[0] == 60:
                break
    assert case is not None and case.hu.shape == (60, 512, 512)
    path = tmp / "scan.nii.gz"
    sitk.WriteImage(oriented_image(case.hu, case, "identity"), str(path))
    print(f"scan {case.hu.shape[::-1]} (x, y, z), truth Agatston {case.truth.agatston:.1f} ({case.truth.category})")

    t_plain, t_fast, t_early = [], [], []
    ens = Ensemble(args.weights, device="cpu")
    for _ in range(args.repeat):
        t = time.perf_counter()
        ref_score, ref_labels = plain(path, args.weights)
        t_plain.append(time.perf_counter() - t)
        t = time.perf_counter()
        res = score_scan(path, ens)
        t_fast.append(time.perf_counter() - t)
        t = time.perf_counter()
        early = score_scan(path, ens, early_stop=True)
        t_early.append(time.perf_counter() - t)
        assert np.array_equal(res.labels, ref_labels) and np.array_equal(early.labels, ref_labels)
        assert abs(res.score.agatston - ref_score) < 1e-6 * max(1, ref_score)
        assert early.score.agatston == res.score.agatston
    timings = res.data["timings_s"]
    print(f"prediction: Agatston {res.score.agatston:.1f} ({res.score.category}); identical in all three pipelines")
    print(f"models run with --early-stop: {early.data['models']['models_run']} of 5")
    med = statistics.median
    print(f"\n{'pipeline':<28}{'median s':>10}{'speed-up':>10}")
    print(f"{'plain':<28}{med(t_plain):>10.2f}{1.0:>10.2f}")
    print(f"{'cac score':<28}{med(t_fast):>10.2f}{med(t_plain) / med(t_fast):>10.2f}")
    print(f"{'cac score --early-stop':<28}{med(t_early):>10.2f}{med(t_plain) / med(t_early):>10.2f}")
    print("\nstages of cac score (last run):", json.dumps(timings))

    # VmHWM, not ru_maxrss: ru_maxrss survives exec, so a child forked from this
    # (large) benchmark process would report the parent's resident set.
    code = ("import resource, sys; from cacnet.cli import main; "
            "sys.argv=['cac','score',sys.argv[1],'--json','--weights',sys.argv[2]] + sys.argv[3:]; "
            "\ntry:\n main()\nexcept SystemExit: pass\n"
            "hwm = [ln for ln in open('/proc/self/status') if ln.startswith('VmHWM')]\n"
            "print(int(hwm[0].split()[1]) if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "
            "file=sys.stderr)")
    for extra in ([], ["--early-stop"]):
        out = subprocess.run([sys.executable, "-c", code, str(path), str(args.weights), *extra],
                             capture_output=True, text=True)
        rss_mb = int(out.stderr.strip().splitlines()[-1]) / 1024
        print(f"peak RSS of `cac score {' '.join(extra)}` process: {rss_mb:.0f} MB")
    if args.early_stop_cases:
        early_stop_frequency(ens, args.early_stop_cases, args.cache, tmp)


def early_stop_frequency(ens: Ensemble, n: int, cache: Path | None, tmp: Path) -> None:
    """Models run and time with --early-stop on the first ``n`` held-out phantoms; masks must be identical."""
    from experiments import held_out_case

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
