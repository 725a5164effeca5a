"""Preview montages: axial slices with calcium outlined by artery (PNG)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from scipy import ndimage

from ._files import atomic_path

__all__ = ["ARTERY_COLORS", "choose_slices", "render_montage", "write_preview"]

#: Outline colours (RGB) by label: LM yellow, LAD red, LCX green, RCA blue.
ARTERY_COLORS = {1: (255, 220, 0), 2: (255, 40, 40), 3: (40, 220, 40), 4: (40, 140, 255)}


def choose_slices(labels: np.ndarray, n: int = 6) -> list[int]:
    """Slices through the most calcium, one per lesion first, then spread evenly."""
    counts = (labels > 0).sum(axis=(1, 2))
    chosen: list[int] = []
    if counts.any():
        lesions, m = ndimage.label(labels > 0, structure=np.ones((3, 3, 3), bool))
        best = []
        for k, sl in enumerate(ndimage.find_objects(lesions), start=1):
            per_slice = (lesions[sl] == k).sum(axis=(1, 2))
            best.append((int(per_slice.sum()), sl[0].start + int(per_slice.argmax())))
        for _, z in sorted(best, reverse=True):
            if z not in chosen:
                chosen.append(z)
            if len(chosen) == n:
                break
    for z in np.linspace(0, labels.shape[0] - 1, n + 2)[1:-1].round().astype(int):
        if len(chosen) >= n:
            break
        if int(z) not in chosen:
            chosen.append(int(z))
    return sorted(chosen)


def render_montage(hu: np.ndarray, labels: np.ndarray, slices: Sequence[int], columns: int = 3,
                   window: tuple[float, float] = (-300.0, 700.0)) -> np.ndarray:
    """RGB uint8 montage of axial slices with label outlines (arrays (z, y, x))."""
    lo, hi = window
    tiles = []
    for z in slices:
        gray = np.clip((hu[z].astype(np.float32) - lo) / (hi - lo) * 255, 0, 255).astype(np.uint8)
        rgb = np.repeat(gray[..., None], 3, axis=2)
        for lab, color in ARTERY_COLORS.items():
            m = labels[z] == lab
            if m.any():
                edge = m & ~ndimage.binary_erosion(m)
                rgb[ndimage.binary_dilation(edge)] = color
        tiles.append(rgb)
    while len(tiles) % columns:
        tiles.append(np.zeros_like(tiles[0]))
    rows = [np.concatenate(tiles[i : i + columns], axis=1) for i in range(0, len(tiles), columns)]
    return np.concatenate(rows, axis=0)


def write_preview(hu: np.ndarray, labels: np.ndarray, path: Path, slices: Optional[Sequence[int]] = None) -> Path:
    """Write a PNG montage through the lesions of ``labels`` (canonical (z, y, x) arrays)."""
    import SimpleITK as sitk

    picked = list(slices) if slices is not None else choose_slices(labels)
    img = sitk.GetImageFromArray(render_montage(hu, labels, picked), isVector=True)
    with atomic_path(Path(path)) as tmp:
        sitk.WriteImage(img, str(tmp))
    return Path(path)
