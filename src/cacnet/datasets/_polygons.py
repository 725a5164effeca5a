"""Rasterising the polygons of ROI annotations on a 2D pixel grid."""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

__all__ = ["fill_polygon", "polygon_area"]


def _segment_pixels(p0: np.ndarray, p1: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(x, y) indices of every pixel a segment passes through (pixels half-open, centres at integers).

    The parameters where the segment crosses a pixel border (x or y at
    ``k + 0.5``) split it into pieces that each lie in one pixel; the pixel of
    every crossing point, every piece's midpoint and both ends is taken.
    """
    d = p1 - p0
    ts = [np.array([0.0, 1.0])]
    for a in (0, 1):
        if d[a] != 0:
            lo, hi = sorted((float(p0[a]), float(p1[a])))
            size = shape[1 - a]  # x runs along columns (shape[1]), y along rows (shape[0])
            k = np.arange(max(math.ceil(lo - 0.5), -2), min(math.floor(hi - 0.5), size) + 1, dtype=np.float64)
            ts.append((k + 0.5 - p0[a]) / d[a])
    t = np.unique(np.clip(np.concatenate(ts), 0.0, 1.0))
    t = np.concatenate([t, (t[:-1] + t[1:]) / 2])
    return np.floor(p0[None, :] + t[:, None] * d[None, :] + 0.5).astype(np.int64)


def fill_polygon(points_xy: Any, shape: Sequence[int], outline: bool = True) -> np.ndarray:
    """Pixels of a polygon on a 2D grid: centre inside (even-odd rule), or touched by the outline.

    Parameters
    ----------
    points_xy : array_like, shape (n, 2)
        Vertices as (x, y) = (column, row) in index coordinates: the centre
        of pixel ``[r, c]`` is at (c, r) and the pixel covers
        ``[c - 0.5, c + 0.5) x [r - 0.5, r + 0.5)``. One point: its pixel; two
        points: the pixels of the segment; three or more: a closed polygon.
    shape : (rows, columns)
        Size of the grid; pixels outside it are dropped.
    outline : bool, default True
        Include the pixels the outline passes through. With False only the
        pixels whose centre is inside (none for one or two points).

    Returns
    -------
    numpy.ndarray of bool, shape ``shape``

    Examples
    --------
    >>> fill_polygon([(1, 1), (3, 1), (3, 3), (1, 3)], (5, 5)).sum()
    9
    """
    pts = np.asarray(points_xy, dtype=np.float64).reshape(-1, 2)
    rows, cols = int(shape[0]), int(shape[1])
    mask = np.zeros((rows, cols), dtype=bool)
    if pts.shape[0] == 0:
        return mask
    if not np.isfinite(pts).all():
        raise ValueError("polygon vertices must be finite numbers")
    n = pts.shape[0]
    if outline:
        ends = [(pts[i], pts[(i + 1) % n]) for i in range(n)] if n >= 3 else [(pts[0], pts[-1])]
        for p0, p1 in ends:
            xy = _segment_pixels(p0, p1, (rows, cols))
            ok = (xy[:, 0] >= 0) & (xy[:, 0] < cols) & (xy[:, 1] >= 0) & (xy[:, 1] < rows)
            mask[xy[ok, 1], xy[ok, 0]] = True
    if n >= 3:
        c0, c1 = max(math.ceil(pts[:, 0].min()), 0), min(math.floor(pts[:, 0].max()), cols - 1)
        r0, r1 = max(math.ceil(pts[:, 1].min()), 0), min(math.floor(pts[:, 1].max()), rows - 1)
        if c0 <= c1 and r0 <= r1:
            yy, xx = np.mgrid[r0:r1 + 1, c0:c1 + 1].astype(np.float64)
            inside = np.zeros(yy.shape, dtype=bool)
            xj, yj = pts[-1]
            for xi, yi in pts:
                crosses = (yi > yy) != (yj > yy)
                if crosses.any():
                    x_at = xi + (yy - yi) * (xj - xi) / (yj - yi) if yj != yi else np.full_like(yy, np.inf)
                    inside ^= crosses & (xx < x_at)
                xj, yj = xi, yi
            mask[r0:r1 + 1, c0:c1 + 1] |= inside
    return mask


def polygon_area(points_xy: Any) -> float:
    """Geometric (shoelace) area of a closed polygon, in square index units (0 for fewer than 3 points)."""
    pts = np.asarray(points_xy, dtype=np.float64).reshape(-1, 2)
    if pts.shape[0] < 3:
        return 0.0
    x, y = pts[:, 0], pts[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2)
