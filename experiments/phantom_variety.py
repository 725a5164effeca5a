"""How much the phantom generator varies: ranges over seeds of what each variant draws, measured.

Generates N full-size cases of a variant in memory (balanced A-E), measures
each with :func:`cacnet.phantom._varied.describe_case` (field of view, slice,
noise and kernel sharpness measured from the image, epicardial fat, heart
size / axis / position, aortic calcification) and prints min / median / max
of each, the kernel families, thicknesses and look-alike kinds, and the
generation time per case.

Run:  OMP_NUM_THREADS=1 python -m experiments.phantom_variety --variant varied [--n 20] [--seed 7] [--size 512]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import Counter

import numpy as np

from cacnet.phantom import case_seed, generate_phantom
from cacnet.phantom._varied import describe_case


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", default="varied")
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--json", help="Also write the per-case measurements here.")
    args = parser.parse_args()
    rows, times = [], []
    kernels, thick, kinds, cats = Counter(), Counter(), Counter(), Counter()
    for i in range(args.n):
        t = time.perf_counter()
        case = generate_phantom(case_seed(args.seed, i), category="ABCDE"[i % 5], variant=args.variant, size=args.size)
        times.append(time.perf_counter() - t)
        d = describe_case(case)
        d["seconds"] = times[-1]
        d["shape"] = list(case.hu.shape)
        rows.append(d)
        kernels[case.acquisition.kernel] += 1
        thick[f"{case.acquisition.thickness_mm:g}/{case.acquisition.increment_mm:g}"] += 1
        kinds.update(list(case.meta.get("lookalike_detail") or case.meta["lookalikes"]))
        cats[case.truth.category] += 1
        assert case.truth.category == "ABCDE"[i % 5]
    print(f"variant {args.variant}: {args.n} cases, {args.size} x {args.size}; generation median "
          f"{statistics.median(times):.2f} s, mean {statistics.mean(times):.2f} s, max {max(times):.2f} s")
    print(f"{'measure':<22} {'min':>9} {'median':>9} {'max':>9}")
    for key in rows[0]:
        if key == "shape":
            continue
        v = np.array([r[key] for r in rows], float)
        v = v[np.isfinite(v)]
        if v.size:
            print(f"{key:<22} {v.min():9.2f} {np.median(v):9.2f} {v.max():9.2f}")
    print("slices (thickness/increment mm):", dict(sorted(thick.items())))
    print("kernels:", dict(kernels))
    print("cases with each look-alike kind:", dict(sorted(kinds.items())))
    print("categories:", dict(sorted(cats.items())))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
