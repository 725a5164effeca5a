"""A small, obviously correct Agatston implementation to check the fast one.

Pure Python flood fill per slice and per label, no scipy, no vectorisation.
"""

from __future__ import annotations

from collections import deque

import numpy as np


def _neighbours(connectivity: int):
    if connectivity == 4:
        return [(-1, 0), (1, 0), (0, -1), (0, 1)]
    return [(a, b) for a in (-1, 0, 1) for b in (-1, 0, 1) if (a, b) != (0, 0)]


def components_2d(region: np.ndarray, connectivity: int) -> list[list[tuple[int, int]]]:
    """Connected components of a 2D boolean array, by breadth-first search."""
    seen = np.zeros(region.shape, bool)
    comps = []
    steps = _neighbours(connectivity)
    for y in range(region.shape[0]):
        for x in range(region.shape[1]):
            if region[y, x] and not seen[y, x]:
                comp, queue = [], deque([(y, x)])
                seen[y, x] = True
                while queue:
                    cy, cx = queue.popleft()
                    comp.append((cy, cx))
                    for dy, dx in steps:
                        ny, nx = cy + dy, cx + dx
                        if 0 <= ny < region.shape[0] and 0 <= nx < region.shape[1] and region[ny, nx] and not seen[ny, nx]:
                            seen[ny, nx] = True
                            queue.append((ny, nx))
                comps.append(comp)
    return comps


def factor(max_hu: float) -> int:
    if max_hu >= 400:
        return 4
    if max_hu >= 300:
        return 3
    if max_hu >= 200:
        return 2
    return 1


def naive_score(hu, spacing, mask=None, threshold_hu=130.0, min_area_mm2=1.0, min_voxels=1,
                connectivity=8, calibration=None):
    """Return {'agatston', 'volume', 'mass', 'n_fragments', 'by_label': {label: agatston}}."""
    dz, dy, dx = spacing
    hu = np.asarray(hu, dtype=float)
    if mask is None:
        groups = [(1, np.ones(hu.shape, bool))]
    elif mask.dtype == bool:
        groups = [(1, mask)]
    else:
        groups = [(int(v), mask == v) for v in np.unique(mask) if v != 0]
    out = {"agatston": 0.0, "volume": 0.0, "mass": 0.0, "n_fragments": 0, "by_label": {}}
    for label, sel in groups:
        label_score = 0.0
        for z in range(hu.shape[0]):
            region = (hu[z] >= threshold_hu) & sel[z]
            for comp in components_2d(region, connectivity):
                n = len(comp)
                area = n * dy * dx
                if n < min_voxels or area < min_area_mm2 * (1 - 1e-9):
                    continue
                values = [hu[z, y, x] for y, x in comp]
                a = area * factor(max(values)) * dz / 3
                out["agatston"] += a
                label_score += a
                out["volume"] += area * dz
                if calibration is not None:
                    out["mass"] += calibration * area * dz * (sum(values) / n) / 1000
                out["n_fragments"] += 1
        if mask is not None and mask.dtype != bool:
            out["by_label"][label] = label_score
    return out
