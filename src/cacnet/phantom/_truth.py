"""The truth rule, rendered plaques, the category loop and crop boxes (private).

Shared by both phantom generators and by calcium inserted into real scans
(:mod:`cacnet.phantom.insertion`): what counts as coronary calcium is decided in
one place.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

import agatston

from ._base import Acquisition, blur
from ._calcium import Calcification
from ._canvas import Canvas

__all__ = ["CATEGORY_TARGETS", "Plaques", "truth_labels", "reach_category", "grow_box", "union_box", "local_box"]

#: Agatston ranges aimed at for each category (inside the category's interval).
CATEGORY_TARGETS = {"A": (0.0, 0.0), "B": (1.0, 10.0), "C": (12.0, 100.0), "D": (105.0, 400.0), "E": (420.0, 2500.0)}

_ZONE_HU = 20.0  # blurred coronary calcium contribution that makes a voxel "in a plaque"
_REACH_HU = 0.5  # smallest contribution that still counts a voxel to a plaque


def _margin(acq: Acquisition) -> tuple[int, int, int]:
    m = int(math.ceil(3.5 * 1.5 * acq.psf_mm / acq.pixel_mm * (2 if acq.sharpen else 1))) + 3
    return (1, m, m)


def grow_box(box, margin, shape):
    """``box`` (a tuple of slices) grown by ``margin`` voxels per axis, inside ``shape``."""
    return tuple(slice(max(b.start - m, 0), min(b.stop + m, n)) for b, m, n in zip(box, margin, shape))


def union_box(boxes):
    """The smallest box holding all ``boxes``."""
    return tuple(slice(min(b[i].start for b in boxes), max(b[i].stop for b in boxes)) for i in range(3))


def local_box(box, crop):
    """``box`` in the coordinates of ``crop``, a box that holds it."""
    return tuple(slice(b.start - c.start, b.stop - c.start) for b, c in zip(box, crop))


def reach_category(rng: np.random.Generator, target: str, goal: float, hi: float, chosen: list, add_plaque,
                   evaluate, score_of, rounds: int):
    """Add or remove plaques until the score lands in ``target`` near ``goal``; the last evaluated state.

    ``chosen`` holds ``(plaque, ...)`` pairs (``plaque.faint`` marks the hard
    case, never removed while others can be); ``add_plaque(size_class)`` adds
    one ("small", "medium" or "large", by how far the score is from the goal);
    ``evaluate()`` renders the current plaques and ``score_of(state)`` scores
    them. Used by the phantom generator and by calcium inserted into real scans
    (:mod:`cacnet.phantom.insertion`).
    """
    state = evaluate()
    for _ in range(rounds):
        s = score_of(state)
        cat = agatston.category(s)
        if cat == target and (s >= min(goal, hi) * 0.5 or len(chosen) > 12):
            break
        if cat <= target and s < goal:
            gap = goal - s
            add_plaque("small" if gap < 12 else "medium" if gap < 80 else "large")
        elif cat > target and chosen:
            removable = [i for i, (p, _) in enumerate(chosen) if not p.faint] or list(range(len(chosen)))
            chosen.pop(int(rng.choice(removable)))
        else:
            break
        state = evaluate()
    return state


class Plaques:
    """Rendered coronary plaques: each one's blurred HU contribution, cached."""

    def __init__(self, canvas: Canvas, clean: np.ndarray, acq: Acquisition):
        self.canvas, self.clean, self.acq = canvas, clean, acq
        self.margin = _margin(acq)

    def render(self, plaque: Calcification):
        parts = [p for p in (self.canvas.ball_occupancy(c, r) for c, r in zip(plaque.centers, plaque.radii)) if p]
        if not parts:
            return None
        box = grow_box(union_box([b for b, _ in parts]), self.margin, self.canvas.shape)
        occ = np.zeros([s.stop - s.start for s in box], dtype=np.float32)
        for b, o in parts:
            loc = local_box(b, box)
            np.maximum(occ[loc], o, out=occ[loc])
        contrib = occ * (np.float32(plaque.value_hu) - self.clean[box])
        return box, blur(contrib, self.acq)


def truth_labels(final: np.ndarray, bc: np.ndarray, bl: np.ndarray):
    """Coronary calcium labels on a crop.

    A voxel is coronary calcium when it is >= 130 HU, belongs to a
    26-connected component that reaches a plaque (blurred plaque contribution
    >= _ZONE_HU), the plaques still reach it (contribution >= _REACH_HU) and
    they contribute at least as much HU to it as the look-alikes. Each truth lesion (26-connected) takes the artery that
    contributes most to it. Returns labels and the number of components
    shared with a look-alike.
    """
    cand = final >= 130
    comps, n = ndimage.label(cand, structure=np.ones((3, 3, 3), bool))
    total = bc.sum(axis=0)
    touched = np.zeros(n + 1, dtype=bool)
    touched[comps[cand & (total >= _ZONE_HU)]] = True
    touched[0] = False
    # Within those components, only voxels the plaques reach (a blurred
    # contribution of at least _REACH_HU) and where they outweigh look-alikes:
    # bone or a look-alike that a noise bridge joins to a plaque stays out.
    truth = touched[comps] & (total >= bl) & (total >= _REACH_HU)
    merged = np.unique(comps[touched[comps] & ~truth])
    lesions, m = ndimage.label(truth, structure=np.ones((3, 3, 3), bool))
    labels = np.zeros(final.shape, dtype=np.uint8)
    if m:
        idx = lesions[truth]
        weight = np.stack([np.bincount(idx, weights=bc[a][truth], minlength=m + 1) for a in range(4)])
        lut = np.concatenate([[0], weight[:, 1:].argmax(axis=0) + 1]).astype(np.uint8)
        labels = lut[lesions]
    touches_border = [
        bool(np.any(np.take(touched[comps], [0, -1], axis=ax))) for ax in range(3)
    ]
    return labels, int(merged.size), touches_border
