"""Cost and make-up of generated phantoms.

Generates N full-size (512 x 512) cases in memory (no disk), balanced A-E, and
prints the generation time per case and the share of cases holding each
look-alike and hard case.

Run:  OMP_NUM_THREADS=1 python -m benchmarks.bench_phantom [--n 40] [--seed 2024]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import Counter

from cacnet.phantom import LOOKALIKES, case_seed, generate_phantom


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=40)
    parser.add_argument("--seed", type=int, default=2024)
    args = parser.parse_args()
    times, present, above, cats, orient = [], Counter(), Counter(), Counter(), Counter()
    faint = mac = noisy = merged = sharp = overlap = 0
    for i in range(args.n):
        target = "ABCDE"[i % 5]
        t = time.perf_counter()
        case = generate_phantom(case_seed(args.seed, i), category=target)
        times.append(time.perf_counter() - t)
        m = case.meta
        present.update(m["lookalikes"])
        above.update(m["lookalikes_above_130"])
        cats[case.truth.category] += 1
        orient[case.acquisition.orientation] += 1
        faint += m["faint_lesion"]
        mac += m["mitral_annulus"]
        noisy += m["noisy"]
        merged += m["merged_with_lookalike"] > 0
        sharp += case.acquisition.kernel == "sharp"
        overlap += case.acquisition.increment_mm < case.acquisition.thickness_mm
    n = args.n
    print(f"{n} cases, 512 x 512 x 40-70: generation median {statistics.median(times):.2f} s, "
          f"mean {statistics.mean(times):.2f} s, max {max(times):.2f} s")
    print("categories:", dict(sorted(cats.items())))
    print("\nshare of cases with each look-alike (present / with voxels >= 130 HU):")
    for kind in LOOKALIKES:
        print(f"  {kind:<18} {present[kind] / n:5.0%} / {above[kind] / n:5.0%}")
    print(f"  {'noise SD >= 22 HU':<18} {noisy / n:5.0%}")
    non_a = n - cats["A"]
    print(f"\nhard cases: visible small faint lesion {faint}/{non_a} non-A cases ({faint / max(non_a, 1):.0%}), "
          f"mitral annulus calcification {mac / n:.0%} of cases")
    print(f"coronary lesion merged with a look-alike: {merged / n:.0%} of cases")
    print(f"sharp kernel {sharp / n:.0%}, overlapping slices {overlap / n:.0%}, orientations {dict(orient)}")


if __name__ == "__main__":
    main()
