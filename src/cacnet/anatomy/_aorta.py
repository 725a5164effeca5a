"""The ascending and the descending aorta on triage's smoothed grid, as tubes followed slice by slice."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np
from scipy import ndimage

__all__ = ["AortaTrack", "find_aortas", "AORTA_RADII_MM"]

#: Smoothed HU of the aorta's blood and wall on non-contrast CT (fat is below, calcium and bone above).
_BLOOD_HU = (-40.0, 140.0)
#: Radii (mm) of the circles tried: the descending aorta 10-16 mm, the ascending 12-20 mm.
AORTA_RADII_MM = (8.0, 10.0, 12.0, 14.0, 16.0, 18.0, 20.0)
_DESC_RADII = (1, 2, 3, 4)  # indices into AORTA_RADII_MM
_ASC_RADII = (2, 3, 4, 5, 6)
_ASC_START_RADII = (3, 4, 5, 6)  # it starts as a circle of at least 14 mm: the superior vena cava is smaller
#: Width (mm) of the ring around a circle that must be fat or lung for the circle to be a vessel.
_RING_MM = 5.0
#: A circle's score: the share of blood inside times twice the share of not-blood in its ring, at most 1
#: (a vessel may touch another structure over half its circumference). A track starts and goes on at this:
_START_SCORE = 0.3
_FOLLOW_SCORE = 0.3
#: Per slice the centre may move at most this far (mm) and the radius by one step.
_STEP_MM = 6.0
#: Circles tried as the start of the ascending aorta (the best ones, at least this far apart in plane, mm).
_STARTS = 8
_APART_MM = 15.0
#: Of the tracks that weigh (sum of radius x score) at least this share of the heaviest, the most anterior is
#: the ascending aorta (the left atrium, the right pulmonary artery and the trachea lie behind it).
_LONG = 0.5
#: The ascending aorta's centre lies at least this deep (mm) behind the body's front surface.
_WALL_MM = 25.0
#: Followed down to its root, the ascending aorta ends where its circle's score falls under _DOWN_SCORE (no
#: longer a clear vessel), where its radius falls under _ROOT_SHRINK of the median radius above, or
#: _BELOW_CENTRE_MM under the heart's centre (the valve lay 5 mm below to 20 mm above it on the traced scans);
#: its centre moves at most _ROOT_DRIFT_MM forward or rightward and _ROOT_BACK_MM backward or leftward.
_DOWN_SCORE = 0.5
_ROOT_SHRINK = 0.8
_BELOW_CENTRE_MM = 10.0
_ROOT_DRIFT_MM = 4.0
_ROOT_BACK_MM = 12.0


@dataclass
class AortaTrack:
    """Circles (one per slice) of one aortic segment on the smoothed grid.

    ``z``, ``y``, ``x``: cell indices; ``radius_mm``; ``score``: how clearly
    the circle is a vessel (0..1). Empty when not found.
    """

    z: np.ndarray
    y: np.ndarray
    x: np.ndarray
    radius_mm: np.ndarray
    score: np.ndarray

    @classmethod
    def empty(cls) -> "AortaTrack":
        e = np.zeros(0)
        return cls(e.astype(int), e.astype(int), e.astype(int), e, e)

    @property
    def found(self) -> bool:
        return bool(self.z.size)

    def mask(self, shape: Sequence[int], cell: Sequence[float]) -> np.ndarray:
        """The tube: per tracked slice, the cells within the circle."""
        out = np.zeros(tuple(shape), bool)
        yy, xx = np.mgrid[:shape[1], :shape[2]]
        for z, y, x, r in zip(self.z, self.y, self.x, self.radius_mm):
            out[z] = np.hypot((yy - y) * cell[1], (xx - x) * cell[2]) <= r
        return out


def _circle_scores(blood: np.ndarray, cell: Sequence[float]) -> np.ndarray:
    """(len(AORTA_RADII_MM), z, y, x): the score of a circle of each radius centred at each cell."""
    outer = max(AORTA_RADII_MM) + _RING_MM
    ky, kx = int(np.ceil(outer / cell[1])), int(np.ceil(outer / cell[2]))
    shape = (blood.shape[1] + 2 * ky + 1, blood.shape[2] + 2 * kx + 1)  # no wrap-around: zero padding
    spectrum = np.fft.rfft2(blood.astype(np.float32), s=shape)
    yy, xx = np.mgrid[-ky:ky + 1, -kx:kx + 1]
    d = np.hypot(yy * cell[1], xx * cell[2])

    def mean_over(kernel: np.ndarray) -> np.ndarray:
        k = np.fft.rfft2((kernel / kernel.sum()).astype(np.float32), s=shape)
        full = np.fft.irfft2(spectrum * k[None], s=shape)
        return full[:, ky:ky + blood.shape[1], kx:kx + blood.shape[2]]

    out = []
    for r in AORTA_RADII_MM:
        inside, around = mean_over(d <= r), mean_over((d > r) & (d <= r + _RING_MM))
        out.append(np.clip(inside, 0, 1) * np.clip(2.0 * (1.0 - around), 0, 1))
    return np.round(np.stack(out), 4).astype(np.float32)  # rounded: ties (plateaus at 1) break the same way everywhere


def _follow(scores: np.ndarray, start: tuple[int, int, int, int], zs: Sequence[int], allowed: np.ndarray,
            cell: Sequence[float], radii: Sequence[int], shrink_below: Optional[float] = None,
            back_left: bool = False, stop: float = _FOLLOW_SCORE) -> list[tuple]:
    """From ``start`` (radius index, z, y, x), the best circle of each slice of ``zs`` near the previous one.

    ``back_left``: the centre never moves in front of or to the right of ``start`` by more than
    :data:`_ROOT_DRIFT_MM`, nor behind or to the left by more than :data:`_ROOT_BACK_MM` (the aortic
    root lies a little behind and left of the ascending aorta; the right atrial appendage and the right
    ventricle's outflow are in front and to the right, the atria and the left ventricle further back).
    """
    ri, _, y, x = start
    y_min, y_max = (y - _ROOT_DRIFT_MM / cell[1], y + _ROOT_BACK_MM / cell[1]) if back_left else (-np.inf, np.inf)
    x_min, x_max = (x - _ROOT_DRIFT_MM / cell[2], x + _ROOT_BACK_MM / cell[2]) if back_left else (-np.inf, np.inf)
    ry, rx = max(1, int(np.ceil(_STEP_MM / cell[1]))), max(1, int(np.ceil(_STEP_MM / cell[2])))
    out = []
    for z in zs:
        ylo, yhi = max(0, y - ry), min(scores.shape[2], y + ry + 1)
        xlo, xhi = max(0, x - rx), min(scores.shape[3], x + rx + 1)
        rs = [r for r in radii if abs(r - ri) <= 1]
        ys, xs = np.arange(ylo, yhi)[:, None], np.arange(xlo, xhi)
        ok = allowed[z, ylo:yhi, xlo:xhi] & (ys >= y_min) & (ys <= y_max) & (xs >= x_min) & (xs <= x_max)
        sub = scores[rs, z, ylo:yhi, xlo:xhi] * ok[None]
        k = np.unravel_index(int(np.argmax(sub)), sub.shape)
        s = float(sub[k])
        if s < stop:
            break
        if shrink_below is not None and AORTA_RADII_MM[rs[k[0]]] < shrink_below:
            break
        ri, y, x = rs[k[0]], ylo + k[1], xlo + k[2]
        out.append((z, y, x, AORTA_RADII_MM[ri], s))
    return out


def _starts(best: np.ndarray, scores: np.ndarray, radii: Sequence[int], cell: Sequence[float],
            n: int = _STARTS) -> list[tuple[int, int, int, int]]:
    """Up to ``n`` circles to start from: the best-scoring ones of ``best`` (z, y, x), each at least
    :data:`_APART_MM` in plane from those before it; as (radius index, z, y, x)."""
    out: list[tuple[int, int, int, int]] = []
    order = np.argsort(best, axis=None)[::-1]
    for flat in order[:4096]:
        if best.flat[flat] < _START_SCORE or len(out) >= n:
            break
        z, y, x = np.unravel_index(int(flat), best.shape)
        if any(np.hypot((y - o[2]) * cell[1], (x - o[3]) * cell[2]) < _APART_MM for o in out):
            continue
        ri = radii[int(np.argmax([scores[r, z, y, x] for r in radii]))]
        out.append((ri, int(z), int(y), int(x)))
    return out


def _track(rows: list[tuple]) -> AortaTrack:
    if not rows:
        return AortaTrack.empty()
    rows = sorted(rows)
    a = np.array(rows, dtype=np.float64)
    return AortaTrack(a[:, 0].astype(int), a[:, 1].astype(int), a[:, 2].astype(int), a[:, 3], a[:, 4])


def find_aortas(v: np.ndarray, parts: Any, heart: np.ndarray, region: np.ndarray, midline_x: np.ndarray,
                cell: Sequence[float]) -> tuple[AortaTrack, AortaTrack]:
    """The ascending aorta (with its root) and the descending aorta, followed as circles slice by slice.

    ``v``: the smoothed grid (HU); ``parts``: :class:`cacnet.triage.ChestParts`;
    ``heart``: the map's heart; ``region``: where the mediastinum is (triage's
    heart region and the tissue between the lungs); ``midline_x``: per slice,
    the column of the body's midline; ``cell``: (dz, dy, dx) mm.
    See docs/anatomy.md for the rules and what they were measured against.
    """
    nz, ny, nx = v.shape
    none = (AortaTrack.empty(), AortaTrack.empty())
    body, lung = parts.body, parts.lung
    if not body.any() or not region.any():
        return none
    blood = body & ~lung & (v > _BLOOD_HU[0]) & (v < _BLOOD_HU[1])
    near = ndimage.binary_dilation(region, structure=np.ones((1, 3, 3), bool), iterations=2)
    scores = _circle_scores(blood, cell) * near[None]
    mid = np.asarray(midline_x, dtype=np.float64)
    front = parts.spine_front if parts.spine_front < ny else int(0.7 * ny)
    hz = np.flatnonzero(heart.any(axis=(1, 2)))
    zlo, zhi = (int(hz[0]), int(hz[-1])) if hz.size else (0, nz - 1)
    yy, xx = np.mgrid[:ny, :nx]
    # the descending aorta: left of the midline, just in front of (and beside) the vertebral bodies
    mid = mid[:, None, None]
    desc_ok = (((yy >= front - 45.0 / cell[1]) & (yy <= front + 12.0 / cell[1]))[None]
               & (xx >= mid - 8.0 / cell[2]) & (xx <= mid + 55.0 / cell[2]))
    s = scores[list(_DESC_RADII)] * desc_ok[None]
    s[:, :(zlo + zhi) // 2] = 0.0  # start where it is free of the heart: the upper half and above
    k = np.unravel_index(int(np.argmax(s)), s.shape)
    desc = AortaTrack.empty()
    if s[k] >= _START_SCORE:
        start = (_DESC_RADII[k[0]], int(k[1]), int(k[2]), int(k[3]))
        rows = (_follow(scores, start, range(start[1], nz), desc_ok, cell, _DESC_RADII)
                + _follow(scores, start, range(start[1] - 1, -1, -1), desc_ok, cell, _DESC_RADII))
        desc = _track(rows)
    # the ascending aorta: in front of the descending one, at or right of the midline, started at the heart's
    # top (the great vessels) and followed down to its root
    back = float(np.median(desc.y)) if desc.found else front - 40.0 / cell[1]
    # ... inside the mediastinum itself and behind the chest wall (not in the breast or the pectoral muscles)
    first = np.where(body.any(axis=1), np.argmax(body, axis=1), ny)  # (z, x): the body's front row
    deep = yy[None] >= first[:, None, :] + _WALL_MM / cell[1]
    asc_ok = (region & deep & (yy <= back - 25.0 / cell[1])[None]
              & (xx >= mid - 60.0 / cell[2]) & (xx <= mid + 20.0 / cell[2]))
    s = (scores[list(_ASC_START_RADII)] * asc_ok[None]).max(axis=0)
    s[:(zlo + zhi) // 2] = 0.0
    # the aortic valve lies near the heart's centre (within about 20 mm on the traced scans): the root is
    # followed down to at most _BELOW_CENTRE_MM under it, never into the ventricles
    centre = float(np.nonzero(heart)[0].mean()) if heart.any() else (zlo + zhi) / 2.0
    floor = max(0, int(np.ceil(centre - _BELOW_CENTRE_MM / cell[0])))
    tracks = []
    for start in _starts(s, scores, _ASC_START_RADII, cell):
        up = _follow(scores, start, range(start[1], nz), asc_ok, cell, _ASC_RADII)
        median_r = float(np.median([r[3] for r in up])) if up else AORTA_RADII_MM[start[0]]
        down = _follow(scores, start, range(start[1] - 1, floor - 1, -1), asc_ok, cell, _ASC_RADII,
                       shrink_below=_ROOT_SHRINK * median_r, back_left=True, stop=_DOWN_SCORE)
        tracks.append((sum(r[3] * r[4] for r in up + down), _track(up + down)))
    # the aorta is a long, large tube (the pulmonary trunk divides, the superior vena cava is smaller): of the
    # tracks that weigh at least _LONG of the heaviest, the most anterior (the left atrium and the right
    # pulmonary artery lie behind it)
    asc = AortaTrack.empty()
    if tracks:
        heaviest = max(w for w, _ in tracks)
        asc = min((t for w, t in tracks if w >= _LONG * heaviest), key=lambda t: float(np.median(t.y)))
    return asc, desc
