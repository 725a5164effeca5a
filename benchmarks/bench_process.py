"""`cac score` as a whole process against the plain pipeline as a whole process.

What a user waits for when running ``cac score scan.nii.gz`` once per scan is the
whole process: start-up, imports, loading (compiling) the models, reading,
triage, the anatomy, inference, the second stage, writing. This benchmark
starts every run as a fresh process and times it from outside (wall clock from
the start to the exit of the child, peak RSS from the kernel's accounting of the
finished child, ``os.wait4``):

* **plain**: ``python -m benchmarks.plain_pipeline SCAN`` - the plain version of
  the paper's pipeline (five onnxruntime sessions with default options on the
  2.5/3 mm grid, majority vote, 130 HU threshold, slice-loop Agatston);
* **cac score**: ``python -m cacnet score SCAN --json`` with the shipped default
  decision (second stage and anatomy), the OpenVINO model cache warm (one
  warm-up run before the timed ones fills it; the cache lives in a temporary
  folder, ``CAC_CACHE_DIR``, so the user's is not touched);
* **cac score --no-model-cache**: the same, compiling the models in the process.

The variants run in turn (plain, cac score, ..., plain, cac score, ...) ``--repeat``
times on each scan; the table gives the median, min and max wall seconds, the
speed-up of the medians against plain (and the median of the per-round ratios,
which is robust to the machine's speed drifting), and the largest peak RSS.

Scans: the 512 x 512 x 60 phantom of ``bench_score.py`` (3 mm slices), the same
phantom resampled to 2.5 mm slices (512 x 512 x 72), both written as .nii.gz, and
one real scan (default: Lung-PET-CT-Dx A0002, B40f kernel, 30 x 8 mm DICOM slices,
from ``../shared/data/real-ct``; scored as it comes: triage warns, it does not
refuse).

Then, for one `cac score` run per scan, the stage times its JSON reports
(``timings_s``) and what lies outside them (start-up, imports, loading the
models, writing the JSON), and the import time: ``python -X importtime -c
"import cacnet.cli"`` and the imports of a whole ``cac score`` process, summed by
top-level package.

The parent process imports no numpy and makes the scans in a child process, so
that the children's peak RSS (which counts the parent's resident set at the
fork) is theirs.

Run:  python -m benchmarks.bench_process [--repeat 5] [--weights DIR] [--real DICOM_DIR | --no-real]
          [--scans DIR (keep / reuse the phantom scans)] [--no-cold]
          [--baseline-src OLD/src (also `cac score` of another tree, e.g. from `git archive COMMIT src`)]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REAL_DEFAULT = HERE.parent.parent / "shared" / "data" / "real-ct" / "lung-pet-ct-dx" / "A0002-8mm-B40f"


def make_scans(folder: Path, seed: int) -> None:
    """Write scan_3mm.nii.gz (512 x 512 x 60) and scan_2.5mm.nii.gz (512 x 512 x 72) into ``folder`` (a child)."""
    import SimpleITK as sitk

    from benchmarks.bench_score import benchmark_case, thin_scan
    from cacnet.phantom import oriented_image

    folder.mkdir(parents=True, exist_ok=True)
    case = benchmark_case(seed)
    sitk.WriteImage(oriented_image(case.hu, case, "identity"), str(folder / "scan_3mm.nii.gz"))
    path, _ = thin_scan(case, 2.5, folder)
    path.replace(folder / "scan_2.5mm.nii.gz")


def run_process(cmd: list[str], env: dict, out_file: Path) -> tuple[float, float, int, str]:
    """Run ``cmd`` as a fresh process: (wall s, peak RSS MB, exit code, stdout)."""
    with open(out_file, "wb") as out:
        t = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t
    proc.returncode = os.waitstatus_to_exitcode(status)
    return wall, usage.ru_maxrss / 1024, proc.returncode, out_file.read_text()


def command(variant, scan: Path, env: dict) -> tuple[list[str], dict]:
    """A variant's command line for ``scan`` and its environment (a variant is a function, or one with its env)."""
    if isinstance(variant, tuple):
        return variant[0](scan), variant[1]
    return variant(scan), env


def load_average() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def importtime(cmd: list[str], env: dict) -> tuple[float, list[tuple[str, float]]]:
    """Total import seconds of a process (``-X importtime``) and the top-level packages by their share."""
    proc = subprocess.run([sys.executable, "-X", "importtime", *cmd], capture_output=True, text=True, env=env)
    by_pkg: dict[str, float] = {}
    total = 0.0
    for line in proc.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( +)(\S+)", line)
        if not m or len(m.group(3)) != 1:  # top-level imports only (nested ones are in their cumulative time)
            continue
        cum = int(m.group(2)) / 1e6
        total += cum
        pkg = m.group(4).split(".")[0]
        by_pkg[pkg] = by_pkg.get(pkg, 0.0) + cum
    return total, sorted(by_pkg.items(), key=lambda kv: -kv[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5, help="timed runs of each variant per scan (median)")
    parser.add_argument("--weights", type=Path, default=None, help="weights folder (default: the shipped ensemble)")
    parser.add_argument("--seed", type=int, default=4242)
    parser.add_argument("--real", type=Path, default=REAL_DEFAULT, help="a real scan (file or DICOM folder)")
    parser.add_argument("--no-real", action="store_true", help="phantom scans only")
    parser.add_argument("--no-cold", action="store_true", help="leave out cac score --no-model-cache")
    parser.add_argument("--scans", type=Path, default=None, help="folder for the phantom scans (kept, reused)")
    parser.add_argument("--baseline-src", type=Path, default=None,
                        help="also time `cac score` of another source tree (its src/ folder, e.g. an earlier commit "
                             "from `git archive`), same weights and scans")
    parser.add_argument("--make-scans", type=Path, default=None, help=argparse.SUPPRESS)  # the child's job
    args = parser.parse_args()
    if args.make_scans is not None:
        make_scans(args.make_scans, args.seed)
        return

    tmp = Path(tempfile.mkdtemp(prefix="bench_process_"))
    folder = args.scans or tmp / "scans"
    if not (folder / "scan_2.5mm.nii.gz").exists():
        subprocess.run([sys.executable, "-m", "benchmarks.bench_process", "--make-scans", str(folder), "--seed", str(args.seed)], check=True)
    scans = [("3 mm phantom", folder / "scan_3mm.nii.gz"), ("2.5 mm phantom", folder / "scan_2.5mm.nii.gz")]
    if not args.no_real:
        if args.real.exists():
            scans.append((f"real: {args.real.name}", args.real))
        else:
            print(f"(real scan {args.real} not found: left out)")

    env = {**os.environ, "CAC_CACHE_DIR": str(tmp / "cache")}
    env.pop("CAC_NO_MODEL_CACHE", None)
    weights = ["--weights", str(args.weights)] if args.weights else []
    variants = {
        "plain pipeline": lambda s: [sys.executable, "-m", "benchmarks.plain_pipeline", str(s), *weights],
        "cac score": lambda s: [sys.executable, "-m", "cacnet", "score", str(s), "--json", *weights],
    }
    if args.baseline_src is not None:
        base_env = {**env, "PYTHONPATH": str(args.baseline_src.resolve())}
        base_w = weights or ["--weights", str(HERE.parent / "weights")]  # this tree's weights, not the other's
        variants[f"cac score ({args.baseline_src})"] = (
            lambda s: [sys.executable, "-m", "cacnet", "score", str(s), "--json", *base_w], base_env)
    if not args.no_cold:
        variants["cac score --no-model-cache"] = lambda s: [sys.executable, "-m", "cacnet", "score", str(s), "--json",
                                                           "--no-model-cache", *weights]
    print(f"machine: {cpu_name()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; "
          f"load average at start {load_average()}")
    print(f"each process fresh, variants in turn, {args.repeat} timed runs each after one warm-up run\n")
    last_json: dict[str, dict] = {}
    summary = []
    for label, scan in scans:
        for name, cmd in variants.items():  # warm-up: page cache, and the model cache of `cac score`
            wall, _, rc, out = run_process(*command(cmd, scan, env), tmp / "out.txt")
            if rc != 0:
                sys.exit(f"{name} on {scan} failed (exit {rc}): {out[-2000:]}")
        walls: dict[str, list[float]] = {n: [] for n in variants}
        rss: dict[str, list[float]] = {n: [] for n in variants}
        loads = []
        for _ in range(args.repeat):
            for name, cmd in variants.items():
                wall, peak, rc, out = run_process(*command(cmd, scan, env), tmp / "out.txt")
                if rc != 0:
                    sys.exit(f"{name} on {scan} failed (exit {rc}): {out[-2000:]}")
                walls[name].append(wall)
                rss[name].append(peak)
                if name == "cac score":
                    last_json[label] = json.loads(out)
            loads.append(os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan"))
        med = {n: statistics.median(w) for n, w in walls.items()}
        base = "plain pipeline"
        meta = last_json[label].get("scan") or {}
        print(f"{label}: {scan.name}, {' x '.join(str(v) for v in meta.get('size_xyz', []))} voxels (x y z), "
              f"{meta.get('spacing_zyx_mm', ['?'])[0]} mm slices")
        print(f"  {'process':<30}{'median s':>10}{'min':>8}{'max':>8}{'speed-up':>10}{'paired':>8}{'peak RSS MB':>13}")
        for n in variants:
            paired = statistics.median(b / a for a, b in zip(walls[n], walls[base]))
            print(f"  {n:<30}{med[n]:>10.2f}{min(walls[n]):>8.2f}{max(walls[n]):>8.2f}"
                  f"{med[base] / med[n]:>9.2f}x{paired:>7.2f}x{max(rss[n]):>13.0f}")
        res = last_json[label]
        print(f"  cac score: Agatston {res['agatston']:.1f} ({res['category']}), decision "
              f"{res['models'].get('decision')}, {res['models'].get('backend')} {res['models'].get('precision')}; "
              f"1-min load average during the runs {min(loads):.2f}-{max(loads):.2f}\n")
        summary.append((label, med, {n: max(v) for n, v in rss.items()}))

    print("stages of one `cac score` run (its JSON's timings_s), and the rest of the process:")
    for label, med, _ in summary:
        t = dict(last_json[label]["timings_s"])
        total = t.pop("total", sum(t.values()))
        stages = ", ".join(f"{k} {v:.2f}" for k, v in t.items())
        print(f"  {label}: {stages}; stages {total:.2f} s of {med['cac score']:.2f} s (median process): "
              f"{med['cac score'] - total:.2f} s outside the stages (start-up, imports, loading the models, output)")

    total, pkgs = importtime(["-c", "import cacnet.cli"], env)
    print(f"\nimport time, python -X importtime -c 'import cacnet.cli': {total:.3f} s; "
          + ", ".join(f"{p} {s:.3f}" for p, s in pkgs[:8]))
    first_scan = scans[0][1]
    total, pkgs = importtime(["-m", "cacnet", "score", str(first_scan), "--json", *weights], env)
    print(f"import time of a whole `cac score` process: {total:.3f} s; "
          + ", ".join(f"{p} {s:.3f}" for p, s in pkgs[:12]))
    startup = statistics.median(run_process([sys.executable, "-c", "pass"], env, tmp / "out.txt")[0]
                                for _ in range(5))
    loads = {}
    for cache in (True, False):
        code = ("import sys, time; from pathlib import Path; from cacnet.cohort import EnsembleSpec; "
                "from cacnet.ensemble import DEFAULT_WEIGHTS; t = time.perf_counter(); "
                f"EnsembleSpec(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_WEIGHTS, model_cache={cache}).load(); "
                "print(time.perf_counter() - t)")
        runs = [float(run_process([sys.executable, "-c", code, *([str(args.weights)] if args.weights else [])], env,
                                  tmp / "out.txt")[3]) for _ in range(3)]
        loads[cache] = statistics.median(runs)
    print(f"interpreter start-up (python -c pass): {startup:.3f} s; loading the ensemble (sha256 of the weights, "
          f"building and compiling the graph the decision runs): {loads[True]:.3f} s from the model cache, "
          f"{loads[False]:.3f} s without it (median of 3 processes)")
    print(f"\nload average at the end {load_average()}")


if __name__ == "__main__":
    main()
