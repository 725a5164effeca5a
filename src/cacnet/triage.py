"""Triage: is this a calcium-scoring scan? Checks from the image, not only the tags.

:func:`triage` measures a few things on a scan that has been read (hu_scale, heart, field_of_view,
contrast, noise, kernel, slices, kvp; most in the heart region it finds) and gives a verdict per check;
:func:`cacnet.pipeline.score_scan` refuses the scan (:class:`~cacnet.errors.UnsuitableScanError`,
exit 3) when a check says ``"refuse"``, unless ``force=True`` (``cac score --force``), and reports every
check in its result (``triage``) and, where not ok, in ``warnings``.

See docs/triage.md for how the heart region is found and each check's measure and thresholds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from itertools import product
from typing import Any, Optional

import numpy as np
from scipy import ndimage

from .io import UNRESCALED_AIR_HU, acquisition_flags, hu_levels, unrescaled_hu

__all__ = ["Triage", "triage", "find_heart", "chest_parts", "ChestParts", "kernel_is_sharp", "SHARP_KERNELS", "CONTRAST_THRESHOLD_HU",
           "NOISE_THRESHOLD_HU", "MIN_HEART_ML", "MAX_HEART_ML"]

#: Blood-pool HU (upper quartile of the heart region) at and above which a scan is contrast-enhanced.
CONTRAST_THRESHOLD_HU = 120.0
#: High-frequency noise (HU) at and above which the reconstruction is too sharp or too noisy.
NOISE_THRESHOLD_HU = 28.0
#: Smallest heart region (mL) that counts as a heart.
MIN_HEART_ML = 150.0
#: Largest heart region (mL): the heart with its fat is 250-900 mL (about 2 L in extreme cardiomegaly); the region
#: measured up to 1100 mL on real scans and 2350 mL on 200 synthetic phantoms. Larger: wrong spacing, or not a heart.
MAX_HEART_ML = 3000.0
#: Whole-body field of view: pixel larger than this (mm) ...
WHOLE_BODY_PIXEL_MM = 1.0
#: ... or an in-plane field of view larger than this (mm).
WHOLE_BODY_FOV_MM = 500.0
#: Smallest image (mm in-plane, mm along z) in which the heart is looked for.
MIN_FOV_MM, MIN_LENGTH_MM = 100.0, 30.0

#: Known sharp kernels, by manufacturer. Siemens: a name of one or two letters
#: and a number (B70f, Br64, Bl57, I70f, ...), sharp from 50 up; Toshiba/Canon:
#: FC50 and up (lung and high-resolution kernels); Philips: L (lung), D and E;
#: GE: LUNG, BONE, BONEPLUS, EDGE (any manufacturer).
SHARP_KERNELS = {
    "SIEMENS": "letters and a number >= 50 (B50f ... B80f, Br54 ... Br69, Bl57, I70f)",
    "TOSHIBA/CANON": "FC50 and up",
    "PHILIPS": "L, D, E",
    "GE": "LUNG, BONE, BONEPLUS, EDGE",
}
_GE_SHARP = {"LUNG", "BONE", "BONEPLUS", "EDGE"}
_GE_STANDARD = {"STANDARD", "SOFT"}
_PHILIPS_SHARP = {"L", "D", "E"}
_PHILIPS_STANDARD = {"A", "B"}

_TARGET_MM = 3.5  # block size of the smoothed copy
_AIR_HU, _TISSUE_HU, _BONE_HU, _OUTSIDE_HU = -400.0, -200.0, 150.0, -930.0
_LUNG_THICK_MM = 20.0
_S2 = np.zeros((3, 3, 3), bool)
_S2[1] = ndimage.generate_binary_structure(2, 1)  # in-plane connectivity on a (z, y, x) volume


@dataclass
class Triage:
    """The outcome of :func:`triage`.

    Attributes
    ----------
    verdict : str
        "ok", "warn" or "refuse" (the worst of the checks).
    checks : dict
        One entry per check (field_of_view, hu_scale, heart, contrast, noise,
        kernel, slices, kvp): what was measured, the threshold, and a ``verdict``
        ("ok", "warn", "refuse" or "unknown" where it could not be measured);
        ``message`` says why where the verdict is not ok.
    warnings : list of str
        Messages of the checks that warn (not the slice and kVp ones, which
        the reader already gives).
    refusals : list of str
        Messages of the checks that refuse.
    forced : bool
        Scored anyway despite refusals (set by ``score_scan(force=True)``).
    heart_mask : numpy.ndarray of bool, optional
        The heart region on the smoothed grid (``block`` voxels per cell).
    block : tuple of int
        Voxels per smoothed cell along (z, y, x).
    """

    verdict: str
    checks: dict[str, dict[str, Any]]
    warnings: list[str] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)
    forced: bool = False
    heart_mask: Optional[np.ndarray] = field(default=None, repr=False)
    block: tuple[int, int, int] = (1, 1, 1)
    #: Body, lungs and heart region on the smoothed grid (None when the image is too small to look).
    parts: Optional[ChestParts] = field(default=None, repr=False)
    #: The smoothed copy (block means of ``block`` voxels, float32 HU) the checks measured.
    smoothed: Optional[np.ndarray] = field(default=None, repr=False)
    #: The smoothed grid's cell size (mm, (z, y, x)).
    cell_mm: tuple[float, float, float] = (1.0, 1.0, 1.0)
    #: Which kind of CT it is (:func:`scan_kind`): gated calcium score or non-gated chest CT, and why.
    kind: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"verdict": self.verdict, "kind": self.kind, "checks": self.checks, "forced": self.forced}


def kernel_is_sharp(kernel: Optional[str], manufacturer: Optional[str] = None) -> Optional[bool]:
    """True for a known sharp kernel, False for a known standard one, None when unknown.

    See :data:`SHARP_KERNELS`; only the first value of a multi-valued tag
    (``"Br40d\\\\3"``) counts.
    """
    if not kernel:
        return None
    k = kernel.split("\\")[0].strip().upper()
    m = (manufacturer or "").upper()
    if k in _GE_SHARP:
        return True
    if k in _GE_STANDARD and ("GE" in m.split() or "GE MEDICAL" in m or not m):
        return False
    if "PHILIPS" in m:
        if k in _PHILIPS_SHARP:
            return True
        if k in _PHILIPS_STANDARD:
            return False
        return None
    if "TOSHIBA" in m or "CANON" in m:
        hit = re.fullmatch(r"FC(\d{2})", k)
        return None if hit is None else int(hit.group(1)) >= 50
    if "SIEMENS" in m:
        hit = re.fullmatch(r"[A-Z]{1,2}(\d{2})[A-Z]?", k)
        return None if hit is None else int(hit.group(1)) >= 50
    return None


def _smooth(hu: np.ndarray, spacing) -> tuple[np.ndarray, tuple[int, int, int]]:
    """Block means over about 3.5 mm (whole blocks), clipped to [-1024, 3071] HU."""
    f = tuple(max(1, int(round(_TARGET_MM / s))) for s in spacing)
    shape = tuple(n // k for n, k in zip(hu.shape, f))
    v = np.zeros(shape, np.float32)
    if min(shape) == 0:
        return v, f  # type: ignore[return-value]
    for a, b, c in product(range(f[0]), range(f[1]), range(f[2])):
        v += hu[a : shape[0] * f[0] : f[0], b : shape[1] * f[1] : f[1], c : shape[2] * f[2] : f[2]]
    v *= np.float32(1.0 / (f[0] * f[1] * f[2]))
    np.clip(v, -1024.0, 3071.0, out=v)
    return v, f  # type: ignore[return-value]


def _largest(mask: np.ndarray, structure=None) -> np.ndarray:
    lab, n = ndimage.label(mask, structure=structure)
    if n == 0:
        return mask
    return lab == (np.bincount(lab.ravel())[1:].argmax() + 1)


@dataclass
class ChestParts:
    """What the heart search finds on the smoothed grid (booleans of its shape; all may be empty).

    ``body``: the patient; ``lung``: both lungs, ``right``/``left`` each;
    ``heart``: the heart region (see docs/triage.md); ``spine_front``:
    the row (smoothed y index) of the front of the vertebral bodies, or the
    grid's height when no spine was found.
    """

    body: np.ndarray
    lung: np.ndarray
    right: np.ndarray
    left: np.ndarray
    heart: np.ndarray
    spine_front: int


def find_heart(v: np.ndarray, cell_mm) -> np.ndarray:
    """The heart region on the smoothed grid ``v`` (see docs/triage.md); may be empty."""
    return chest_parts(v, cell_mm).heart


def chest_parts(v: np.ndarray, cell_mm) -> ChestParts:
    """Body, lungs and heart region on the smoothed grid ``v`` (:class:`ChestParts`)."""
    nz, ny, nx = v.shape
    none = np.zeros(v.shape, bool)
    empty = ChestParts(none, none, none, none, none, ny)
    xs, ys = np.arange(nx), np.arange(ny)
    pad = v <= -1023.5  # outside the reconstruction circle (or air clipped at -1024)
    air = (v < _AIR_HU) & ~pad
    body = _largest(~air & ~pad)
    if not body.any():
        return empty
    filled = ndimage.binary_fill_holes(np.pad(body, ((1, 1), (0, 0), (0, 0))), structure=_S2)[1:-1]
    lab, n = ndimage.label(air, structure=_S2)
    if n == 0:
        return empty
    flat = lab.ravel()
    count = np.bincount(flat, minlength=n + 1)
    edge = pad.copy()
    edge[:, [0, -1], :] = True
    edge[:, :, [0, -1]] = True
    touching = np.zeros(n + 1, bool)
    touching[lab[ndimage.binary_dilation(edge, structure=_S2) & air]] = True
    hole = np.zeros(n + 1, bool)
    hole[lab[filled & air]] = True
    dark = np.bincount(lab[air & (v < _OUTSIDE_HU)], minlength=n + 1)
    # body behind (posterior, same column), as for a lung; not for the mattress under the patient
    behind = np.zeros(v.shape, bool)
    behind[:, :-1, :] = np.flip(np.logical_or.accumulate(np.flip(body[:, 1:, :], axis=1), axis=1), axis=1)
    backed = np.bincount(lab[air & behind], minlength=n + 1)
    at_back = np.zeros(n + 1, bool)
    at_back[lab[:, -1, :]] = True
    is_lung = hole | (touching & (dark < 0.5 * count) & ((backed >= 0.5 * count) | at_back))
    is_lung[0] = False
    lung = is_lung[lab]
    if not lung.any():
        return empty

    # right and left lung, per slice: the two largest lung regions (>= 5 cm2), split halfway between their centroids
    cz = np.bincount(flat, weights=np.broadcast_to(np.arange(nz)[:, None, None], v.shape).ravel(),
                     minlength=n + 1) / np.maximum(count, 1)
    cx = np.bincount(flat, weights=np.broadcast_to(xs, v.shape).ravel(), minlength=n + 1) / np.maximum(count, 1)
    big = np.flatnonzero(is_lung & (count * cell_mm[1] * cell_mm[2] >= 500.0))
    split = np.full(nz, np.nan)
    zs_of = np.rint(cz[big]).astype(int)
    for z in np.unique(zs_of):
        ids = big[zs_of == z]
        if ids.size >= 2:
            two = ids[np.argsort(count[ids])[-2:]]
            split[z] = cx[two].mean()
    if np.isnan(split).all():
        return ChestParts(body, lung, none, none, none, ny)
    is_right = np.zeros(n + 1, bool)
    is_right[1:] = is_lung[1:] & (cx[1:] < np.nan_to_num(split, nan=-1.0)[np.rint(cz[1:]).astype(int)])
    right = is_right[lab]
    left = lung & ~right & ~np.isnan(split)[:, None, None]

    # spine: near the midline (+-25 mm), the front of the most anterior run of bone (> 150 HU) along y that
    # starts behind the body's centre and is 20-50 mm long (a vertebral body; contrast-filled blood that
    # touches it makes a longer run, which does not count); median over the slices, when a third have one
    xm = float(np.nanmedian(split))
    reach = int(round(25.0 / cell_mm[2]))
    x0, x1 = max(int(xm) - reach, 0), min(int(xm) + reach + 1, nx)
    yc = float((body.sum(axis=(0, 2)) * ys).sum() / body.sum())
    along_y = np.zeros((3, 3, 3), bool)
    along_y[1, :, 1] = True
    runs, m = ndimage.label(v[:, :, x0:x1] > _BONE_HU, structure=along_y)
    yspine = ny
    if m:
        rflat = runs.ravel()
        size = np.bincount(rflat, minlength=m + 1)[1:]
        ysum = np.bincount(rflat, weights=np.broadcast_to(ys[None, :, None], runs.shape).ravel(), minlength=m + 1)[1:]
        zrun = np.bincount(rflat, weights=np.broadcast_to(np.arange(nz)[:, None, None], runs.shape).ravel(),
                           minlength=m + 1)[1:] / size
        run_front = ysum / size - (size - 1) / 2.0
        ok = (size * cell_mm[1] >= 20.0) & (size * cell_mm[1] <= 50.0) & (run_front > yc)
        fronts = np.full(nz, np.inf)
        np.minimum.at(fronts, np.rint(zrun[ok]).astype(int), run_front[ok])
        if np.isfinite(fronts).sum() >= max(3, nz // 3):
            yspine = int(np.median(fronts[np.isfinite(fronts)]))

    r = np.where(right, xs, -1).max(axis=2)  # (z, y): medial edge of the right lung
    l = np.where(left, xs, nx).min(axis=2)  # medial edge of the left lung
    k = max(1, int(round(_LUNG_THICK_MM / cell_mm[2])))
    need = 0.8 * k
    rc, lc = np.cumsum(right, axis=2), np.cumsum(left, axis=2)
    zz, yy = np.meshgrid(np.arange(nz), ys, indexing="ij")
    rr, ll = np.clip(r, 0, nx - 1), np.clip(l, 0, nx - 1)
    r_thick = rc[zz, yy, rr] - np.where(rr - k >= 0, rc[zz, yy, np.clip(rr - k, 0, nx - 1)], 0)
    l_thick = lc[zz, yy, np.clip(ll + k - 1, 0, nx - 1)] - np.where(ll >= 1, lc[zz, yy, np.clip(ll - 1, 0, nx - 1)], 0)
    front = ys[None, :] < yspine
    core = (r >= 0) & (l < nx) & (r_thick >= need) & (l_thick >= need) & front
    if not core.any():
        return ChestParts(body, lung, right, left, none, yspine)
    core_right = np.where(core, r, nx).min(axis=1)  # right edge of the core, per slice
    rows = core.any(axis=1)[:, None] & (l < nx) & (l_thick >= need) & front
    lo = np.where(core, r, np.maximum(r, core_right[:, None]))
    between = rows[:, :, None] & (xs > lo[:, :, None]) & (xs < l[:, :, None])
    cand = between & (v > _TISSUE_HU) & body
    cand = ndimage.binary_opening(cand, structure=_S2, iterations=2)
    heart = _largest(cand) if cand.any() else none
    return ChestParts(body, lung, right, left, heart, yspine)


def _noise(hu: np.ndarray, mask: np.ndarray, f, slices: int = 8) -> tuple[Optional[float], int]:
    """Robust SD (HU) of horizontal pixel differences inside ``mask`` (smoothed grid), and the pair count."""
    zs = np.flatnonzero(mask.any(axis=(1, 2)))
    if zs.size == 0:
        return None, 0
    diffs = []
    for zc in zs[np.linspace(0, zs.size - 1, min(slices, zs.size)).round().astype(int)]:
        m = mask[zc]
        yy, xx = np.nonzero(m)
        m = m[yy.min() : yy.max() + 1, xx.min() : xx.max() + 1]
        full = np.repeat(np.repeat(m, f[1], axis=0), f[2], axis=1)
        z = zc * f[0] + f[0] // 2
        sl = np.asarray(hu[z, yy.min() * f[1] : (yy.max() + 1) * f[1], xx.min() * f[2] : (xx.max() + 1) * f[2]],
                        dtype=np.float32)
        pair = full[:, 1:] & full[:, :-1]
        diffs.append(np.diff(sl, axis=1)[pair])
    d = np.concatenate(diffs)
    if d.size < 100:
        return None, int(d.size)
    mad = float(np.median(np.abs(d - np.median(d))))
    return round(float(1.4826 * mad / np.sqrt(2.0)), 1), int(d.size)


def triage(scan) -> Triage:
    """Check that ``scan`` (a :class:`cacnet.io.Scan`) looks like a non-contrast calcium-scoring CT.

    See docs/triage.md for each check and its threshold.
    """
    hu, spacing, meta = scan.hu, tuple(float(s) for s in scan.spacing), scan.meta or {}
    checks: dict[str, dict[str, Any]] = {}

    # field of view
    nz, ny, nx = hu.shape
    fov = (round(ny * spacing[1], 1), round(nx * spacing[2], 1))
    length = round(nz * spacing[0], 1)
    pixel = round(max(spacing[1], spacing[2]), 4)
    whole_body = pixel > WHOLE_BODY_PIXEL_MM or max(fov) > WHOLE_BODY_FOV_MM
    checks["field_of_view"] = {"pixel_mm": pixel, "fov_mm": list(fov), "length_mm": length,
                               "max_pixel_mm": WHOLE_BODY_PIXEL_MM, "max_fov_mm": WHOLE_BODY_FOV_MM,
                               "verdict": "warn" if whole_body else "ok"}
    if whole_body:
        msg = (f"whole-body field of view ({fov[1]:g} x {fov[0]:g} mm, {pixel:g} mm pixels; calcium scans use "
               f"<= {WHOLE_BODY_FOV_MM:g} mm and <= {WHOLE_BODY_PIXEL_MM:g} mm pixels): small calcium cannot be "
               "resolved and scores will be low.")
        checks["field_of_view"]["message"] = msg

    # heart region; first whether the image can hold a heart, and whether its values are HU (the search assumes HU)
    v, f = _smooth(hu, spacing)
    cell = tuple(s * k for s, k in zip(spacing, f))
    big_enough = min(fov) >= MIN_FOV_MM and length >= MIN_LENGTH_MM and min(v.shape) >= 3
    minimum, air = hu_levels(hu)
    unrescaled = unrescaled_hu(hu, (minimum, air)) if big_enough else None
    checks["hu_scale"] = {"minimum_hu": round(minimum, 1), "p1_hu": round(air, 1), "max_p1_hu": UNRESCALED_AIR_HU,
                          "verdict": "unknown" if not big_enough else "refuse" if unrescaled else "ok"}
    if unrescaled:
        checks["hu_scale"]["message"] = unrescaled
    checkable = big_enough and unrescaled is None
    parts = chest_parts(v, cell) if checkable else None
    heart = parts.heart if parts is not None else np.zeros(v.shape, bool)
    volume = float(heart.sum() * cell[0] * cell[1] * cell[2] / 1000.0)
    hc: dict[str, Any] = {"volume_ml": round(volume, 1), "min_volume_ml": MIN_HEART_ML,
                          "max_volume_ml": MAX_HEART_ML, "bbox_zyx": None}
    if heart.any():
        idx = np.nonzero(heart)
        hc["bbox_zyx"] = [[int(idx[a].min() * f[a]), int((idx[a].max() + 1) * f[a] - 1)] for a in range(3)]
    found = checkable and MIN_HEART_ML <= volume <= MAX_HEART_ML
    if not big_enough:
        hc["verdict"] = "refuse"
        hc["message"] = (f"too small to hold a heart: the image is {fov[1]:g} x {fov[0]:g} mm in-plane and "
                         f"{length:g} mm long ({nz} slice(s) of {spacing[0]:g} mm); a heart needs >= "
                         f"{MIN_FOV_MM:g} mm in-plane and >= {MIN_LENGTH_MM:g} mm along z. The heart was not looked "
                         "for, and a score of 0 (A) would claim no calcium in a heart the image does not show.")
    elif not checkable:
        hc["verdict"] = "unknown"
        hc["message"] = "not looked for: the values are not HU (hu_scale)."
    elif volume < MIN_HEART_ML:
        hc["verdict"] = "refuse"
        hc["message"] = (f"heart not found: no soft tissue between the lungs of at least {MIN_HEART_ML:g} mL "
                         f"(largest region {volume:.0f} mL); a calcium score needs a chest CT through the heart.")
    elif volume > MAX_HEART_ML:
        hc["verdict"] = "refuse"
        hc["message"] = (f"the heart region measures {volume:.0f} mL, more than any heart (the heart with its fat is "
                         f"250-900 mL; limit {MAX_HEART_ML:g} mL): the voxel spacing "
                         f"({spacing[0]:g} x {spacing[1]:g} x {spacing[2]:g} mm) is likely wrong, or the region is "
                         "not a heart.")
    else:
        hc["verdict"] = "ok"
    checks["heart"] = hc

    # contrast enhancement
    cc: dict[str, Any] = {"blood_pool_hu": None, "threshold_hu": CONTRAST_THRESHOLD_HU,
                          "contrast_agent_tag": meta.get("contrast_agent") or None}
    if found:
        vals = v[heart]
        vals = vals[(vals >= -50) & (vals <= 800)]
        bp = float(np.percentile(vals, 75)) if vals.size else None
        cc["blood_pool_hu"] = None if bp is None else round(bp, 1)
        if bp is not None and bp >= CONTRAST_THRESHOLD_HU:
            cc["verdict"] = "refuse"
            cc["message"] = (f"contrast-enhanced: the heart's blood pool measures {bp:.0f} HU (non-contrast blood is "
                             f"30-60 HU; threshold {CONTRAST_THRESHOLD_HU:g} HU); calcium scores need a non-contrast "
                             "scan, and contrast hides calcium.")
        else:
            cc["verdict"] = "ok" if bp is not None else "unknown"
    else:
        cc["verdict"] = "unknown"
    checks["contrast"] = cc

    # noise (heart region, else soft tissue) and kernel
    where = "heart" if heart.any() else "soft tissue"
    noise, pairs = _noise(hu, heart if heart.any() else (v > _TISSUE_HU) & (v < 300), f)
    nc: dict[str, Any] = {"noise_hu": noise, "threshold_hu": NOISE_THRESHOLD_HU, "region": where, "pairs": pairs}
    if noise is not None and noise >= NOISE_THRESHOLD_HU:
        nc["verdict"] = "refuse"
        nc["message"] = (f"sharp or very noisy reconstruction: high-frequency noise {noise:g} HU in the {where} "
                         f"(threshold {NOISE_THRESHOLD_HU:g} HU; soft calcium-scoring kernels give 5-20 HU): noise "
                         "over 130 HU would be scored as calcium. Use a soft-tissue (standard) reconstruction.")
    else:
        nc["verdict"] = "ok" if noise is not None else "unknown"
    checks["noise"] = nc

    kernel = meta.get("kernel") or None
    sharp = kernel_is_sharp(kernel, meta.get("manufacturer"))
    kc: dict[str, Any] = {"kernel": kernel, "manufacturer": meta.get("manufacturer") or None,
                          "sharp": sharp, "verdict": "unknown" if sharp is None else "refuse" if sharp else "ok"}
    if sharp:
        kc["message"] = (f"sharp reconstruction kernel {kernel!r} ({meta.get('manufacturer') or 'unknown maker'}): "
                         "calcium scores are defined on a soft-tissue kernel; a sharp kernel's noise and edge "
                         "overshoot inflate them.")
    checks["kernel"] = kc

    # slices and kVp: the reader's rule (and warnings), reported here as verdicts
    flags = acquisition_flags(spacing, meta)
    checks["slices"] = {"thickness_mm": meta.get("slice_thickness_mm"), "increment_mm": round(spacing[0], 4),
                        "range_mm": [2.5, 3.0], "verdict": "warn" if flags["thickness"] or flags["increment"] else "ok"}
    kvp = meta.get("kvp")
    checks["kvp"] = {"kvp": kvp, "expected": 120,
                     "verdict": "unknown" if kvp is None else "warn" if flags["kvp"] else "ok"}

    verdicts = [c["verdict"] for c in checks.values()]
    verdict = "refuse" if "refuse" in verdicts else "warn" if "warn" in verdicts else "ok"
    # the messages of the checks that refuse or warn (the slice and kVp checks carry none: the reader warns)
    refusals = [c["message"] for c in checks.values() if c["verdict"] == "refuse"]
    warnings = [c["message"] for c in checks.values() if c["verdict"] == "warn" and "message" in c]
    kind = scan_kind(spacing, hu.shape, meta)
    if "caveat" in kind:
        warnings.append(kind["caveat"])
    return Triage(verdict=verdict, checks=checks, warnings=warnings, refusals=refusals,
                  heart_mask=heart, block=f, parts=parts, smoothed=v, cell_mm=cell,  # type: ignore[arg-type]
                  kind=kind)


#: A gated calcium-score scan covers the heart only (about 100-180 mm along z) with a heart-sized field of view.
GATED_MAX_LENGTH_MM = 200.0
GATED_MAX_FOV_MM = 360.0
NON_GATED_CAVEAT = (
    "non-gated chest CT (whole-chest coverage): heart motion blurs and smears calcium, and slices are often "
    "thicker than 3 mm, so small and faint calcium is missed and density weights change; the score estimates a "
    "gated Agatston score and is not comparable with one value for value. Read the category, not the number.")


def scan_kind(spacing, shape, meta: Optional[dict] = None) -> dict[str, Any]:
    """Which kind of CT a scan is: ``"gated calcium score"`` or ``"non-gated chest CT"``.

    From the image geometry (rules in docs/anatomy.md): a calcium-score
    acquisition covers the heart only (length <= :data:`GATED_MAX_LENGTH_MM`)
    with a field of view of the heart (<= :data:`GATED_MAX_FOV_MM`
    in-plane); a chest CT covers the lungs. An ECG trigger time in the DICOM
    header (0018,1060) makes a scan gated whatever its length. Returns
    ``{"kind", "basis", "length_mm", "fov_mm"}`` and, for a non-gated scan,
    ``"caveat"``.

    Examples
    --------
    >>> scan_kind((3.0, 0.4, 0.4), (50, 512, 512))["kind"]
    'gated calcium score'
    >>> scan_kind((1.25, 0.7, 0.7), (280, 512, 512))["kind"]
    'non-gated chest CT'
    """
    meta = meta or {}
    length = float(shape[0]) * float(spacing[0])
    fov = max(float(shape[1]) * float(spacing[1]), float(shape[2]) * float(spacing[2]))
    out: dict[str, Any] = {"length_mm": round(length, 1), "fov_mm": round(fov, 1)}
    if meta.get("trigger_time_ms") is not None:
        out.update(kind="gated calcium score", basis="ECG trigger time in the DICOM header (0018,1060)")
    elif length <= GATED_MAX_LENGTH_MM and fov <= GATED_MAX_FOV_MM:
        out.update(kind="gated calcium score",
                   basis=f"heart coverage: {length:.0f} mm along z (<= {GATED_MAX_LENGTH_MM:g}), field of view "
                         f"{fov:.0f} mm (<= {GATED_MAX_FOV_MM:g})")
    else:
        why = []
        if length > GATED_MAX_LENGTH_MM:
            why.append(f"{length:.0f} mm along z (a calcium score covers <= {GATED_MAX_LENGTH_MM:g})")
        if fov > GATED_MAX_FOV_MM:
            why.append(f"field of view {fov:.0f} mm (a calcium score's is <= {GATED_MAX_FOV_MM:g})")
        out.update(kind="non-gated chest CT", basis="; ".join(why), caveat=NON_GATED_CAVEAT)
    return out
