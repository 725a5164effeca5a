"""Generate one synthetic cardiac CT case with exact ground truth (private)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
from scipy import ndimage

import agatston

from ._anatomy import ARTERIES
from ._base import Acquisition, blur
from ._calcium import LOOKALIKES, Calcification, sample_plaque
from ._canvas import Canvas
from ._truth import CATEGORY_TARGETS, Plaques, grow_box, local_box, reach_category, truth_labels, union_box
from ._variants import variant_steps

__all__ = ["PhantomCase", "generate_phantom"]


@dataclass
class PhantomCase:
    """A generated case in canonical orientation ((z, y, x), identity direction).

    Attributes
    ----------
    hu : numpy.ndarray of int16
        The CT volume in HU.
    labels : numpy.ndarray of uint8
        Coronary calcium voxels >= 130 HU of ``hu``: 1 LM, 2 LAD, 3 LCX, 4 RCA.
    spacing, origin : tuple of float
        (dz, dy, dx) and the (z, y, x) position of voxel 0, mm.
    points : list of dict
        One annotation point per 3D lesion: ``lesion``, ``label``, ``artery``,
        ``index_zyx`` (canonical voxel) and ``mm_zyx``.
    truth : agatston.ScoreResult
        ``agatston.score(hu, spacing, labels)``.
    acquisition : Acquisition
    meta : dict
        Target category, look-alikes present, hard cases, counts.
    anatomy : Anatomy
        The sampled anatomy (positions in mm), for tests and figures.
    lookalike_voxels : tuple of (numpy.ndarray, numpy.ndarray)
        (n, 3) canonical voxel indices that are at least half look-alike
        calcium, and the kind id of each (see ``LOOKALIKES``).
    """

    case_id: str
    seed: int
    hu: np.ndarray
    labels: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    points: list[dict[str, Any]]
    truth: agatston.ScoreResult
    acquisition: Acquisition
    meta: dict[str, Any] = field(default_factory=dict)
    anatomy: Any = None
    lookalike_voxels: Any = None


class _CategoryNotReached(RuntimeError):
    pass


def generate_phantom(
    seed: int,
    *,
    category: Optional[str] = None,
    hard_fraction: float = 0.3,
    lookalike_rate: float = 0.4,
    case_id: Optional[str] = None,
    size: int = 512,
    variant: str = "default",
) -> PhantomCase:
    """Generate one synthetic non-contrast cardiac CT with exact ground truth.

    Parameters
    ----------
    seed : int
        Makes the case bit-for-bit reproducible.
    category : {"A", "B", "C", "D", "E"}, optional
        Risk category the truth score must fall in; drawn uniformly from the
        seed when None.
    hard_fraction : float, default 0.3
        Probability that a case holds a small faint coronary lesion (sub-mm,
        180-330 HU; not in category A) and, independently, mitral annulus
        calcification next to the LCX.
    lookalike_rate : float, default 0.4
        Probability of each other look-alike (aortic wall, aortic valve,
        pericardium, costal cartilage, pacing lead), drawn independently of
        the category.
    case_id : str, optional
    size : int, default 512
        In-plane matrix size (smaller only for quick tests).
    variant : {"default", "varied"}, default "default"
        Which generator. ``"default"`` is the generator the shipped models
        were trained on (bit-for-bit stable). ``"varied"``
        (:mod:`cacnet.phantom._varied`) varies far more: a heart with
        chambers, septum and fat-filled grooves, epicardial and pericardial
        fat of varying thickness, heart size, position and axis, heart-zoomed
        and whole-chest fields of view, very soft to sharp lung kernels with
        CT-like noise texture, 2.5-5 mm slices, vendor HU offsets, beam
        hardening and streaks, frequent aortic wall and root calcification,
        sternal wires. Its look-alikes reuse the ids of :data:`LOOKALIKES`
        (``meta["lookalike_detail"]`` names them); the aortic ones follow a
        drawn "vascular age", ``lookalike_rate`` scales the rarer kinds
        (pericardium, costal cartilage, pacing lead, sternal wire) and
        ``hard_fraction`` sets the faint lesion (and a floor for mitral
        annulus calcification).

    Returns
    -------
    PhantomCase
    """
    steps = variant_steps(variant)  # the registry: cacnet.phantom._variants
    for attempt in range(8):
        try:
            return _generate(seed, attempt, category=category, hard_fraction=hard_fraction,
                             lookalike_rate=lookalike_rate, case_id=case_id, size=size, steps=steps)
        except _CategoryNotReached:
            continue
    raise RuntimeError(f"phantom seed {seed}: category {category} not reached in 8 attempts")


def _generate(seed, attempt, *, category, hard_fraction, lookalike_rate, case_id, size, steps) -> PhantomCase:
    if category is not None and category not in CATEGORY_TARGETS:
        raise ValueError(f"category must be one of A-E; got {category!r}.")
    if not 0 <= hard_fraction <= 1 or not 0 <= lookalike_rate <= 1:
        raise ValueError("hard_fraction and lookalike_rate must lie in [0, 1].")
    rng = np.random.default_rng([seed, attempt] if attempt else seed)
    target = category or str(rng.choice(list(CATEGORY_TARGETS)))
    acq = steps.acquisition(rng, size)
    faint, mac, kinds = steps.lookalike_kinds(rng, target, hard_fraction, lookalike_rate)

    shape, spacing, origin = steps.geometry(rng, acq, size)
    canvas = Canvas(shape=shape, spacing=spacing, origin=origin, thickness=acq.thickness_mm)
    anat = steps.anatomy(rng, canvas)

    # Look-alikes into the calcium layer, composited into the clean image.
    lookalikes = steps.lookalikes(rng, anat, kinds)
    for calc in lookalikes:
        canvas.calcium(calc.centers, calc.radii, calc.value_hu, steps.lookalike_id(calc.kind))
    look_idx = np.nonzero(canvas.cal_occ)
    look_contrib = canvas.cal_occ[look_idx] * (canvas.cal_hu[look_idx] - canvas.hu[look_idx])
    look_kind = canvas.cal_id[look_idx]
    look_core = canvas.cal_occ[look_idx] >= 0.5
    canvas.composite_calcium()
    clean = canvas.hu
    del canvas.cal_occ, canvas.cal_hu, canvas.cal_id

    # Kernel and noise: noise through the same kernel as the image.
    base = steps.background(rng, canvas, clean, acq, anat, lookalikes)

    # Coronary plaques, adjusted until the truth score is in the target category.
    plaques = Plaques(canvas, clean, acq)
    chosen: list[tuple[Calcification, Any]] = []
    lo, hi = CATEGORY_TARGETS[target]
    goal = float(np.exp(rng.uniform(np.log(lo), np.log(hi)))) if hi > 0 else 0.0

    def add(plaque):
        rendered = plaques.render(plaque)
        if rendered is not None:
            chosen.append((plaque, rendered))

    def evaluate():
        if not chosen:
            return None
        crop = union_box([r[0] for _, r in chosen])
        for attempt in range(6):
            bc = np.zeros((4,) + tuple(s.stop - s.start for s in crop), dtype=np.float32)
            for plaque, (box, contrib) in chosen:
                loc = local_box(box, crop)
                bc[plaque.artery - 1][loc] += contrib
            final = np.clip(np.rint(base[crop] + bc.sum(axis=0)), -1024, 3071).astype(np.int16)
            bl = np.zeros(final.shape, dtype=np.float32)
            inside = np.ones(look_idx[0].shape, dtype=bool)
            for ax in range(3):
                inside &= (look_idx[ax] >= crop[ax].start) & (look_idx[ax] < crop[ax].stop)
            if inside.any():
                bl[tuple(look_idx[ax][inside] - crop[ax].start for ax in range(3))] = look_contrib[inside]
                bl = blur(bl, acq)
            labels, merged, border = truth_labels(final, bc, bl)
            grow = [
                b and (crop[ax].start > 0 or crop[ax].stop < shape[ax]) for ax, b in enumerate(border)
            ]
            if not any(grow) or attempt == 5:
                break
            crop = grow_box(crop, (2, 24, 24), shape)
        return crop, final, bc, labels, merged

    def score_of(state):
        if state is None:
            return 0.0
        crop, final, _, labels, _ = state
        return agatston.score(final, spacing, labels).agatston

    if target != "A":
        if faint:
            add(sample_plaque(rng, anat, "small", faint=True))
        state = reach_category(rng, target, goal, hi, chosen, lambda size: add(sample_plaque(rng, anat, size)),
                               evaluate, score_of, rounds=80)
    else:
        state = None

    final = np.clip(np.rint(base), -1024, 3071).astype(np.int16)
    labels = np.zeros(shape, dtype=np.uint8)
    merged = 0
    if state is not None:
        crop, final_crop, _, labels_crop, merged = state
        final[crop] = final_crop
        labels[crop] = labels_crop
    truth = agatston.score(final, spacing, labels)
    if agatston.category(truth.agatston) != target:
        # Rare (merged plaques); the caller retries with the next sub-seed.
        raise _CategoryNotReached(target)

    points = _points(final, labels, spacing, origin)
    core_idx = tuple(i[look_core] for i in look_idx)
    core_kind = look_kind[look_core]
    faint_visible = any(p.faint for p, _ in chosen) and bool(labels.any())
    meta = {
        "target_category": target,
        "lookalikes": sorted(kinds),
        "lookalikes_above_130": sorted(
            k for k, v in LOOKALIKES.items() if np.any(final[core_idx][core_kind == v] >= 130)
        ),
        "faint_lesion": bool(faint and faint_visible),
        "mitral_annulus": bool(mac),
        "noisy": bool(acq.noise_sd >= 22),
        "n_plaques": len(chosen),
        "merged_with_lookalike": merged,
        "thickness_mm": acq.thickness_mm,
        "attempt": attempt,
        "variant": steps.name,
    }
    meta.update(steps.extra_meta(anat, lookalikes))
    return PhantomCase(
        case_id=case_id or f"phantom_{seed}",
        seed=seed,
        hu=final,
        labels=labels,
        spacing=spacing,
        origin=origin,
        points=points,
        truth=truth,
        acquisition=acq,
        meta=meta,
        anatomy=anat,
        lookalike_voxels=(np.stack(core_idx, axis=1), core_kind),
    )


def _points(final, labels, spacing, origin) -> list[dict[str, Any]]:
    """One annotation point per truth lesion (26-connected): its densest voxel."""
    where = np.nonzero(labels)
    if where[0].size == 0:
        return []
    box = tuple(slice(int(w.min()), int(w.max()) + 1) for w in where)
    lesions, n = ndimage.label(labels[box] > 0, structure=np.ones((3, 3, 3), bool))
    local = tuple(w - b.start for w, b in zip(where, box))
    ids = lesions[local]
    order = np.lexsort((-final[where].astype(np.int32), ids))  # by lesion, densest first
    first = order[np.r_[True, ids[order][1:] != ids[order][:-1]]]
    out = []
    for k, i in enumerate(first, start=1):
        pos = tuple(int(w[i]) for w in where)
        lab = int(labels[pos])
        out.append({
            "lesion": k,
            "label": lab,
            "artery": ARTERIES[lab],
            "index_zyx": pos,
            "mm_zyx": tuple(float(o + p * s) for o, p, s in zip(origin, pos, spacing)),
        })
    return out
