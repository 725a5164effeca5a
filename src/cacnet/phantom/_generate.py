"""Generate one synthetic cardiac CT case with exact ground truth (private)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
from scipy import ndimage

import agatston

from ._anatomy import ARTERIES, draw_anatomy, sample_anatomy
from ._calcium import LOOKALIKES, Calcification, sample_lookalikes, sample_plaque
from ._canvas import Canvas

__all__ = ["PhantomCase", "Acquisition", "PhantomSteps", "generate_phantom", "ORIENTATIONS", "CATEGORY_TARGETS",
           "VARIANTS"]

#: How the case is stored on disk: (order of canonical axes, flipped written axes).
#: Canonical is (z, y, x) with identity direction; all keep slices axial.
ORIENTATIONS: dict[str, tuple[tuple[int, int, int], tuple[int, ...]]] = {
    "identity": ((0, 1, 2), ()),
    "flip_x": ((0, 1, 2), (2,)),
    "flip_y": ((0, 1, 2), (1,)),
    "flip_z": ((0, 1, 2), (0,)),
    "swap_xy": ((0, 2, 1), ()),
    "swap_xy_flip": ((0, 2, 1), (1, 0)),
}

#: Agatston ranges aimed at for each category (inside the category's interval).
CATEGORY_TARGETS = {"A": (0.0, 0.0), "B": (1.0, 10.0), "C": (12.0, 100.0), "D": (105.0, 400.0), "E": (420.0, 2500.0)}

_ZONE_HU = 20.0  # blurred coronary calcium contribution that makes a voxel "in a plaque"
_REACH_HU = 0.5  # smallest contribution that still counts a voxel to a plaque


@dataclass
class Acquisition:
    """Scanner settings of a case (mm and HU)."""

    pixel_mm: float
    thickness_mm: float
    increment_mm: float
    n_slices: int
    psf_mm: float  # Gaussian sigma of the in-plane point-spread function
    kernel: str  # "soft" or "sharp"
    sharpen: float  # edge overshoot of a sharp kernel
    noise_sd: float  # HU, after the kernel
    hu_offset: float  # calibration offset of the "vendor"
    orientation: str

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


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


def _sample_acquisition(rng: np.random.Generator) -> Acquisition:
    thickness = float(rng.choice([2.5, 3.0]))
    overlap = rng.random() < 0.2
    increment = thickness / 2 if overlap else thickness
    n = int(rng.integers(60, 71)) if overlap else int(rng.integers(40, 71))
    sharp = rng.random() < 0.3
    names = list(ORIENTATIONS)
    orientation = "identity" if rng.random() < 0.6 else str(rng.choice(names[1:]))
    return Acquisition(
        # NIfTI stores spacing as float32: use a float32 value so that the
        # written file carries exactly the spacing the truth was scored with.
        pixel_mm=float(np.float32(round(float(rng.uniform(0.3, 0.5)), 4))),
        thickness_mm=thickness,
        increment_mm=increment,
        n_slices=n,
        psf_mm=float(rng.uniform(0.3, 0.75)),
        kernel="sharp" if sharp else "soft",
        sharpen=float(rng.uniform(0.2, 0.5)) if sharp else 0.0,
        noise_sd=float(rng.uniform(10, 30)),
        hu_offset=float(rng.uniform(-6, 6)),
        orientation=orientation,
    )


def _blur(vol: np.ndarray, acq: Acquisition) -> np.ndarray:
    """The in-plane kernel: Gaussian PSF, with overshoot for a sharp kernel."""
    s = acq.psf_mm / acq.pixel_mm
    out = ndimage.gaussian_filter(vol, sigma=(0, s, s), truncate=3.5)
    if acq.sharpen:
        wide = ndimage.gaussian_filter(out, sigma=(0, 1.5 * s, 1.5 * s), truncate=3.0)
        out = out + np.float32(acq.sharpen) * (out - wide)
    return out


def _noise_gain(acq: Acquisition) -> float:
    """Standard deviation of the kernel's response to unit white noise."""
    impulse = np.zeros((1, 41, 41), dtype=np.float64)
    impulse[0, 20, 20] = 1.0
    return float(np.sqrt((_blur(impulse, acq) ** 2).sum()))


def _margin(acq: Acquisition) -> tuple[int, int, int]:
    m = int(math.ceil(3.5 * 1.5 * acq.psf_mm / acq.pixel_mm * (2 if acq.sharpen else 1))) + 3
    return (1, m, m)


def _grow(box, margin, shape):
    return tuple(slice(max(b.start - m, 0), min(b.stop + m, n)) for b, m, n in zip(box, margin, shape))


def _union(boxes):
    return tuple(slice(min(b[i].start for b in boxes), max(b[i].stop for b in boxes)) for i in range(3))


def _local(box, crop):
    return tuple(slice(b.start - c.start, b.stop - c.start) for b, c in zip(box, crop))


def reach_category(rng: np.random.Generator, target: str, goal: float, hi: float, chosen: list, add_plaque,
                   evaluate, score_of, rounds: int):
    """Add or remove plaques until the score lands in ``target`` near ``goal``; the last evaluated state.

    ``chosen`` holds ``(plaque, ...)`` pairs (``plaque.faint`` marks the hard
    case, never removed while others can be); ``add_plaque(size_class)`` adds
    one ("small", "medium" or "large", by how far the score is from the goal);
    ``evaluate()`` renders the current plaques and ``score_of(state)`` scores
    them. Used by the phantom generator and by calcium inserted into real scans
    (:mod:`cacnet.train._insert`).
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


class _Plaques:
    """Rendered coronary plaques: each one's blurred HU contribution, cached."""

    def __init__(self, canvas: Canvas, clean: np.ndarray, acq: Acquisition):
        self.canvas, self.clean, self.acq = canvas, clean, acq
        self.margin = _margin(acq)

    def render(self, plaque: Calcification):
        parts = [p for p in (self.canvas.ball_occupancy(c, r) for c, r in zip(plaque.centers, plaque.radii)) if p]
        if not parts:
            return None
        box = _grow(_union([b for b, _ in parts]), self.margin, self.canvas.shape)
        occ = np.zeros([s.stop - s.start for s in box], dtype=np.float32)
        for b, o in parts:
            loc = _local(b, box)
            np.maximum(occ[loc], o, out=occ[loc])
        contrib = occ * (np.float32(plaque.value_hu) - self.clean[box])
        return box, _blur(contrib, self.acq)


def _truth(final: np.ndarray, bc: np.ndarray, bl: np.ndarray):
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


class _CategoryNotReached(RuntimeError):
    pass


class PhantomSteps:
    """How a generator variant samples and draws a case, step by step.

    :func:`generate_phantom` calls the steps in this order with one random
    generator; everything after them (coronary plaques, the category loop,
    the truth rule, annotation points) is shared by all variants. This class
    is the default generator; :mod:`cacnet.phantom._varied` overrides steps.
    """

    name = "default"

    def acquisition(self, rng: np.random.Generator, size: int) -> Acquisition:
        """Scanner settings of the case (``size``: in-plane matrix)."""
        return _sample_acquisition(rng)

    def lookalike_kinds(self, rng: np.random.Generator, target: str, hard_fraction: float,
                        lookalike_rate: float) -> tuple[bool, bool, list[str]]:
        """(faint coronary lesion, mitral annulus calcification, look-alike kinds)."""
        faint = target != "A" and rng.random() < hard_fraction
        mac = rng.random() < hard_fraction
        kinds = [k for k in LOOKALIKES if k != "mitral_annulus" and rng.random() < lookalike_rate]
        if mac:
            kinds.append("mitral_annulus")
        return faint, mac, kinds

    def geometry(self, rng: np.random.Generator, acq: Acquisition,
                 size: int) -> tuple[tuple[int, int, int], tuple[float, float, float], tuple[float, float, float]]:
        """(shape, spacing, origin) of the volume; the heart is sampled near the origin."""
        spacing = (acq.increment_mm, acq.pixel_mm, acq.pixel_mm)
        shape = (acq.n_slices, size, size)
        center = np.array([rng.normal(-5, 6), rng.normal(0, 6), rng.normal(0, 6)])
        origin = tuple(float(np.float32(c - (n - 1) / 2 * s)) for c, n, s in zip(center, shape, spacing))
        return shape, spacing, origin  # type: ignore[return-value]

    def anatomy(self, rng: np.random.Generator, canvas: Canvas) -> Any:
        """Sample the anatomy and draw its tissues into ``canvas``."""
        anat = sample_anatomy(rng, (canvas.axes[0][0], canvas.axes[0][-1]))
        draw_anatomy(canvas, anat, rng)
        return anat

    def lookalikes(self, rng: np.random.Generator, anat: Any, kinds: list[str]) -> list[Calcification]:
        """The look-alike calcifications of ``kinds``."""
        return sample_lookalikes(rng, anat, kinds)

    def extra_meta(self, anat: Any, lookalikes: list[Calcification]) -> dict[str, Any]:
        """Variant-specific entries of ``PhantomCase.meta`` (none for the default)."""
        return {}

    def lookalike_id(self, kind: str) -> int:
        """The (negative) calcium-layer id of a look-alike kind (see :data:`LOOKALIKES`)."""
        return LOOKALIKES[kind]

    def background(self, rng: np.random.Generator, canvas: Canvas, clean: np.ndarray, acq: Acquisition,
                   anat: Any, lookalikes: list[Calcification]) -> np.ndarray:
        """The scanned image without coronary calcium: kernel, noise through the kernel, HU offset."""
        noise = rng.standard_normal(canvas.shape, dtype=np.float32)
        noise *= np.float32(acq.noise_sd / _noise_gain(acq))
        noise += clean
        base = _blur(noise, acq)
        base += np.float32(acq.hu_offset)
        return base


def _steps(variant: str) -> PhantomSteps:
    if variant == "default":
        return PhantomSteps()
    if variant == "varied":
        from ._varied import VariedSteps

        return VariedSteps()
    raise ValueError(f"variant must be one of {', '.join(VARIANTS)}; got {variant!r}.")


#: Generator variants (see :func:`generate_phantom`).
VARIANTS = ("default", "varied")


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
    steps = _steps(variant)
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
    plaques = _Plaques(canvas, clean, acq)
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
        crop = _union([r[0] for _, r in chosen])
        for attempt in range(6):
            bc = np.zeros((4,) + tuple(s.stop - s.start for s in crop), dtype=np.float32)
            for plaque, (box, contrib) in chosen:
                loc = _local(box, crop)
                bc[plaque.artery - 1][loc] += contrib
            final = np.clip(np.rint(base[crop] + bc.sum(axis=0)), -1024, 3071).astype(np.int16)
            bl = np.zeros(final.shape, dtype=np.float32)
            inside = np.ones(look_idx[0].shape, dtype=bool)
            for ax in range(3):
                inside &= (look_idx[ax] >= crop[ax].start) & (look_idx[ax] < crop[ax].stop)
            if inside.any():
                bl[tuple(look_idx[ax][inside] - crop[ax].start for ax in range(3))] = look_contrib[inside]
                bl = _blur(bl, acq)
            labels, merged, border = _truth(final, bc, bl)
            grow = [
                b and (crop[ax].start > 0 or crop[ax].stop < shape[ax]) for ax, b in enumerate(border)
            ]
            if not any(grow) or attempt == 5:
                break
            crop = _grow(crop, (2, 24, 24), shape)
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
