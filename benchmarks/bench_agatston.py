"""Speed of agatston.score against a naive per-slice, per-component loop.

A 512 x 512 x 64 volume (noise 40 +- 20 HU) with a few hundred calcified
lesions (3D ellipsoids of 150-900 HU, 0.5-3 mm radius) and an integer artery
label mask around them. Both implementations must give the same score; the
script prints the medians and the ratio.

Run:  python -m benchmarks.bench_agatston [--repeat 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from scipy import ndimage

import agatston


def make_volume(seed: int = 0, n_lesions: int = 300, shape=(64, 512, 512)):
    rng = np.random.default_rng(seed)
    spacing = (3.0, 0.45, 0.45)
    hu = rng.normal(40.0, 20.0, size=shape).astype(np.float32)
    labels = np.zeros(shape, np.uint8)
    zz, yy, xx = np.ogrid[: shape[0], : shape[1], : shape[2]]
    for _ in range(n_lesions):
        c = rng.uniform([2, 40, 40], [shape[0] - 2, shape[1] - 40, shape[2] - 40])
        r = rng.uniform(0.5, 3.0, size=3)
        z0, z1 = int(max(c[0] - 2, 0)), int(min(c[0] + 3, shape[0]))
        y0, y1 = int(c[1] - 10), int(c[1] + 11)
        x0, x1 = int(c[2] - 10), int(c[2] + 11)
        d = (((zz[z0:z1] - c[0]) * spacing[0] / max(r[0], 1.5)) ** 2
             + ((yy[:, y0:y1] - c[1]) * spacing[1] / r[1]) ** 2
             + ((xx[:, :, x0:x1] - c[2]) * spacing[2] / r[2]) ** 2)
        inside = d <= 1.0
        hu[z0:z1, y0:y1, x0:x1][inside] = rng.uniform(150, 900)
        grow = ndimage.binary_dilation(inside, iterations=2)
        labels[z0:z1, y0:y1, x0:x1][grow] = rng.integers(1, 5)
    return hu, spacing, labels


def naive_score(hu, spacing, mask=None, threshold_hu=130.0, min_area_mm2=1.0, connectivity=8):
    """The obvious implementation: per slice, per label, per component boolean masks."""
    dz, dy, dx = spacing
    structure = ndimage.generate_binary_structure(2, 1 if connectivity == 4 else 2)
    values = [1] if mask is None else [int(v) for v in np.unique(mask) if v]
    total = 0.0
    for z in range(hu.shape[0]):
        for value in values:
            region = hu[z] >= threshold_hu
            if mask is not None:
                region &= mask[z] == value
            lab, n = ndimage.label(region, structure=structure)
            for k in range(1, n + 1):
                comp = lab == k
                area = comp.sum() * dy * dx
                if area < min_area_mm2:
                    continue
                peak = hu[z][comp].max()
                factor = 1 + (peak >= 200) + (peak >= 300) + (peak >= 400)
                total += area * factor * dz / 3
    return total


def timed(fn, repeat):
    times, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    hu, spacing, labels = make_volume()
    print(f"volume {hu.shape[::-1]} (x, y, z), float32, spacing {spacing} mm")
    one_pass, _ = timed(lambda: hu.sum(), args.repeat)
    print(f"one pass over the array (hu.sum()): {one_pass * 1000:.1f} ms\n")
    print(f"{'case':<28}{'fragments':>10}{'agatston':>12}{'fast ms':>10}{'naive ms':>10}{'ratio':>8}{'x pass':>8}")
    for name, mask in [("artery labels (4 labels)", labels), ("boolean mask", labels > 0), ("no mask (noise too)", None)]:
        t_fast, res = timed(lambda: agatston.score(hu, spacing, mask), args.repeat)
        t_naive, ref = timed(lambda: naive_score(hu, spacing, mask), max(1, args.repeat // 2))
        assert abs(res.agatston - ref) <= 1e-6 * max(1.0, ref), (res.agatston, ref)
        print(f"{name:<28}{len(res.lesions):>10}{res.agatston:>12.1f}{t_fast * 1000:>10.1f}"
              f"{t_naive * 1000:>10.1f}{t_naive / t_fast:>8.1f}{t_fast / one_pass:>8.1f}")


if __name__ == "__main__":
    main()
