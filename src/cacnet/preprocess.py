"""The paper's preprocessing, shared by inference and training.

:func:`preprocess` reduces a CT volume (z, y, x) in HU to a coarse, nearly isotropic 2.5 or 3 mm grid
(:class:`CoarseGrid`): footprint means, the footprint's maximum where it holds a voxel >= 130 HU,
clipped to [-300, 800] HU and scaled to [0, 1]. :func:`upsample` maps a coarse prediction back to the
fine grid; :func:`downsample_labels` reduces label volumes. See docs/scoring.md (step 2).

>>> import numpy as np
>>> hu = np.zeros((6, 30, 30), np.float32); hu[2, 10, 10] = 400.0
>>> x, grid = preprocess(hu, (3.0, 0.5, 0.5))
>>> grid.coarse_shape, grid.coarse_spacing
((6, 5, 5), (3.0, 3.0, 3.0))
>>> round(float(x.max() * 1100 - 300))  # the 400 HU voxel survives downsampling
400
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

__all__ = [
    "CLIP_HU",
    "ENHANCE_HU",
    "CoarseGrid",
    "target_spacing",
    "coarse_grid",
    "downsample",
    "normalize",
    "preprocess",
    "downsample_labels",
    "upsample",
    "PREPROCESSING",
    "pad_to_multiple",
]

CLIP_HU = (-300.0, 800.0)
ENHANCE_HU = 130.0

#: Parameters recorded in the weights manifest.
PREPROCESSING = {
    "target_spacing_mm": "2.5 if slice increment < 2.75 mm else 3.0 (never finer than the input)",
    "downsampling": "block mean over the fine voxels whose centres fall in each coarse voxel",
    "enhancement": "coarse voxels whose footprint holds a voxel >= 130 HU take the footprint maximum",
    "clip_hu": list(CLIP_HU),
    "scale": "(clip(hu) + 300) / 1100 -> [0, 1]",
    "orientation": "LPS, identity direction (SimpleITK.DICOMOrient(image, 'LPS'))",
}


def target_spacing(dz: float) -> float:
    """Isotropic coarse spacing for a slice increment ``dz`` (mm)."""
    return 2.5 if dz < 2.75 else 3.0


@dataclass(frozen=True)
class CoarseGrid:
    """Mapping between a fine grid and its coarse grid.

    Attributes
    ----------
    fine_shape : tuple of int
    fine_spacing, coarse_spacing : tuple of float
        (dz, dy, dx) mm.
    starts : tuple of numpy.ndarray
        Per axis, the first fine index of each coarse voxel's footprint.
    index : tuple of numpy.ndarray
        Per axis, the coarse index of each fine index.
    """

    fine_shape: tuple[int, int, int]
    fine_spacing: tuple[float, float, float]
    coarse_spacing: tuple[float, float, float]
    starts: tuple[np.ndarray, np.ndarray, np.ndarray]
    index: tuple[np.ndarray, np.ndarray, np.ndarray]

    @property
    def coarse_shape(self) -> tuple[int, int, int]:
        return tuple(len(s) for s in self.starts)  # type: ignore[return-value]


def coarse_grid(shape: Sequence[int], spacing: Sequence[float], iso: float | None = None) -> CoarseGrid:
    """The coarse grid of a volume; ``iso`` defaults to :func:`target_spacing`.

    Along an axis whose spacing is already coarser than ``iso`` (e.g. 5 mm
    slices) the fine spacing is kept.
    """
    iso = target_spacing(spacing[0]) if iso is None else float(iso)
    starts, index, coarse = [], [], []
    for n, s in zip(shape, spacing):
        step = max(iso, float(s))
        n_c = max(1, int(round(n * s / step)))
        idx = np.minimum(((np.arange(n) + 0.5) * s / step).astype(np.int64), n_c - 1)
        st = np.flatnonzero(np.r_[True, idx[1:] != idx[:-1]])
        # every coarse voxel must own at least one fine voxel: renumber densely
        idx = np.cumsum(np.r_[0, (idx[1:] != idx[:-1]).astype(np.int64)])
        starts.append(st)
        index.append(idx)
        coarse.append(n * s / len(st))
    return CoarseGrid(tuple(int(n) for n in shape), tuple(float(s) for s in spacing),  # type: ignore[arg-type]
                      tuple(coarse), tuple(starts), tuple(index))  # type: ignore[arg-type]


def _reduce(vol: np.ndarray, grid: CoarseGrid, ufunc) -> np.ndarray:
    out = vol
    for axis in (2, 1, 0):  # x first: the largest reduction, ~7x faster than z first
        out = ufunc.reduceat(out, grid.starts[axis], axis=axis)
    return out


def downsample(hu: np.ndarray, grid: CoarseGrid) -> np.ndarray:
    """Coarse HU: footprint mean, or footprint max where it reaches 130 HU."""
    vol = np.asarray(hu, dtype=np.float32)
    sums = _reduce(vol, grid, np.add)
    counts = np.ones(1, dtype=np.float32)
    for axis in range(3):
        c = np.diff(np.r_[grid.starts[axis], grid.fine_shape[axis]]).astype(np.float32)
        counts = counts[..., None] * c if axis else c
    mean = sums / counts
    peak = _reduce(vol, grid, np.maximum)
    return np.where(peak >= ENHANCE_HU, peak, mean).astype(np.float32)


def normalize(coarse_hu: np.ndarray) -> np.ndarray:
    """Clip to [-300, 800] HU and scale to [0, 1]."""
    lo, hi = CLIP_HU
    return ((np.clip(coarse_hu, lo, hi) - lo) / (hi - lo)).astype(np.float32)


def preprocess(hu: np.ndarray, spacing: Sequence[float], iso: float | None = None) -> tuple[np.ndarray, CoarseGrid]:
    """Model input in [0, 1] on the coarse grid, and the grid.

    ``hu`` must be in canonical orientation (see :data:`PREPROCESSING`).
    """
    grid = coarse_grid(hu.shape, spacing, iso)
    return normalize(downsample(hu, grid)), grid


def downsample_labels(labels: np.ndarray, grid: CoarseGrid, n_labels: int = 4) -> np.ndarray:
    """Coarse labels: the most frequent non-zero label of each footprint (ties: lowest)."""
    where = np.nonzero(labels)
    out = np.zeros(grid.coarse_shape, dtype=np.uint8)
    if where[0].size == 0:
        return out
    flat = np.ravel_multi_index(tuple(grid.index[a][where[a]] for a in range(3)), grid.coarse_shape)
    lab = labels[where].astype(np.int64)
    counts = np.zeros((n_labels + 1, out.size), dtype=np.int64)
    np.add.at(counts, (lab, flat), 1)
    counts[0] = 0
    has = counts.max(axis=0) > 0
    out.ravel()[has] = counts[:, has].argmax(axis=0)
    return out


def upsample(coarse: np.ndarray, grid: CoarseGrid) -> np.ndarray:
    """Nearest assignment of a coarse volume back to the fine grid."""
    return coarse[np.ix_(grid.index[0], grid.index[1], grid.index[2])]


def pad_to_multiple(x: np.ndarray, multiple: int = 8) -> np.ndarray:
    """Pad the last three axes at the end with 0 (= -300 HU) to multiples of ``multiple``.

    The U-Net pools three times, so its input sizes must be multiples of 8.
    """
    pad = [(0, 0)] * (x.ndim - 3) + [(0, (-n) % multiple) for n in x.shape[-3:]]
    return np.pad(x, pad, constant_values=0.0)
