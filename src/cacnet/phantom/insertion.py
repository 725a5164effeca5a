"""Synthetic coronary calcium inserted into real non-contrast CT along traced anatomy.

:func:`load_tracing` / :func:`validate_tracing` read a tracing (``src/cacnet/train/anatomy/<name>.json``:
the coronaries, the aortic rings, the valve and annulus, LPS mm); :func:`insert_calcium` draws plaques
on the traced coronaries and look-alikes on the rings and renders them with the phantom's physics and
exact truth rule; :func:`estimate_psf_sigma` matches the scan's sharpness; :func:`augment_scan` moves
scan and tracing together before insertion; :func:`iter_inserted_scans` yields the cases.

See docs/phantoms.md ("Calcium inserted into real scans") for the physics, what is not modelled and
the augmentation.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Optional, Sequence, Union

import numpy as np
from scipy import ndimage

import agatston

from ._anatomy import resample_polyline, unit
from ._calcium import Calcification, perpendicular, sample_plaque
from ._canvas import Grid
from ._truth import CATEGORY_TARGETS, Plaques, grow_box, local_box, reach_category, truth_labels, union_box

__all__ = ["InsertedCase", "insert_calcium", "load_tracing", "validate_tracing", "augment_scan", "resample_for_cac",
           "estimate_psf_sigma", "iter_inserted_scans", "decontrast_mask_of", "CORONARIES", "STRUCTURES"]

#: Traced coronary polylines and their labels (LM 1, LAD 2, LCX 3, RCA 4: agatston.ARTERY_NAMES turned round).
CORONARIES = {name: label for label, name in agatston.ARTERY_NAMES.items()}
_RINGS = ("aortic_root_wall", "ascending_aorta_wall")  # lists of closed rings
_CLOSED = ("aortic_valve_plane", "mitral_annulus")  # one closed ring each
#: Every structure a tracing may hold.
STRUCTURES = (*CORONARIES, *_RINGS, *_CLOSED)
#: Vessel radius (mm) at the ostium and from 120 mm on; plaques sit at 0.85 x radius from the centreline.
_VESSEL_R = {1: (2.0, 1.9), 2: (1.8, 1.2), 3: (1.7, 1.2), 4: (1.9, 1.2)}
_ARTERY_P = {1: 0.12, 2: 0.4, 3: 0.2, 4: 0.28}  # the phantom's artery frequencies
_BACKGROUND_SIGMA_MM = 1.0
_DEFAULT_PSF_SIGMA_MM = 0.45
_PSF_RANGE_MM = (0.3, 0.55)
_LOOKALIKE_RATE = 0.5


@dataclass
class InsertedCase:
    """A real scan with inserted calcium and its exact labels (canonical (z, y, x), LPS, identity direction).

    Attributes
    ----------
    hu : numpy.ndarray of float32
        The scan with the calcium added (whole HU, clipped to [-1024, 3071]).
    labels : numpy.ndarray of uint8
        Coronary calcium: 1 LM, 2 LAD, 3 LCX, 4 RCA; 0 elsewhere (look-alikes too).
    spacing, origin : tuple of float
        (dz, dy, dx) mm and the (z, y, x) LPS mm of voxel 0.
    truth : agatston.ScoreResult
        ``agatston.score(hu, spacing, labels)``.
    meta : dict
        ``objects`` (every inserted object: ``kind``, ``label`` (0 look-alike),
        ``artery`` or ``structure``, ``position_mm`` (LPS x, y, z of its
        centre), ``length_mm``, ``radius_mm``, ``value_hu`` (density of the
        solid calcium), ``peak_hu`` (highest HU of the final image on it),
        ``above_130`` voxels), ``target_category``, ``psf_sigma_mm`` and how
        it was found, ``thickness_mm``, ``agatston``, ``category``.
    """

    case_id: str
    hu: np.ndarray
    labels: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    truth: Any
    meta: dict = field(default_factory=dict)


# -- tracings -----------------------------------------------------------------

def _check_points(value, label: str, key: str, min_points: int) -> None:
    if not isinstance(value, list) or len(value) < min_points:
        raise ValueError(f"{label}: structures.{key} must be a list of at least {min_points} [x, y, z] points.")
    for i, p in enumerate(value):
        if (not isinstance(p, (list, tuple)) or len(p) != 3
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in p)):
            raise ValueError(f"{label}: structures.{key}[{i}] must be [x, y, z] (3 finite numbers, LPS mm); got {p!r}.")


def validate_tracing(doc: Any, label: str = "tracing") -> dict:
    """Check a tracing (the parsed JSON); returns it. ValueError naming ``label`` and the bad key.

    Required: ``structures`` (an object) with at least one coronary polyline;
    every structure present must be well formed: ``LM``/``LAD``/``LCX``/``RCA``
    lists of >= 2 ``[x, y, z]`` points, ``aortic_root_wall``/``ascending_aorta_wall``
    lists of rings of >= 3 points, ``aortic_valve_plane``/``mitral_annulus``
    one ring of >= 3 points. ``frame``, when present, must say LPS.
    ``decontrast``, when present (a contrast-enhanced scan), must be
    ``{"mask": "<path relative to the real-CT folder>"}``: the scan's
    TotalSegmentator label map (:func:`decontrast_mask_of`).
    """
    if not isinstance(doc, dict):
        raise ValueError(f"{label}: the tracing must be a JSON object; got {type(doc).__name__}.")
    if "frame" in doc and "LPS" not in str(doc["frame"]):
        raise ValueError(f"{label}: frame must be LPS patient coordinates in mm; got {doc['frame']!r}.")
    st = doc.get("structures")
    if not isinstance(st, dict):
        raise ValueError(f"{label}: missing key 'structures' (an object of traced structures).")
    for key, value in st.items():
        if key not in STRUCTURES:
            raise ValueError(f"{label}: unknown structure {key!r} in structures; expected some of {', '.join(STRUCTURES)}.")
        if key in CORONARIES:
            _check_points(value, label, key, 2)
        elif key in _RINGS:
            if not isinstance(value, list) or not value:
                raise ValueError(f"{label}: structures.{key} must be a list of rings (lists of [x, y, z] points).")
            for i, ring in enumerate(value):
                _check_points(ring, label, f"{key}[{i}]", 3)
        else:
            _check_points(value, label, key, 3)
    if not any(k in st for k in CORONARIES):
        raise ValueError(f"{label}: structures has no coronary polyline (need at least one of LM, LAD, LCX, RCA).")
    if "decontrast" in doc:
        dc = doc["decontrast"]
        if (not isinstance(dc, dict) or set(dc) != {"mask"} or not isinstance(dc["mask"], str)
                or not dc["mask"].strip() or Path(dc["mask"]).is_absolute()):
            raise ValueError(f"{label}: decontrast must be {{\"mask\": \"<label map path relative to the real-CT "
                             f"folder>\"}} (the scan's TotalSegmentator label map); got {dc!r}.")
    return doc


def decontrast_mask_of(tracing: dict, scan_path: Union[str, Path], label: str = "tracing") -> Optional[Path]:
    """The label map that de-contrasts a tracing's scan (its ``decontrast.mask``), or None when it has none.

    The mask path is relative to the real-CT folder, as ``scan`` is: the
    folder is ``scan_path`` less the tracing's ``scan`` (or the one of its
    ``also_valid_for``) that ``scan_path`` ends with.

    Raises
    ------
    ValueError
        ``scan_path`` does not end with the tracing's ``scan`` or one of its ``also_valid_for``.
    FileNotFoundError
        Naming the mask path, when it is missing.
    """
    dc = tracing.get("decontrast")
    if not dc:
        return None
    scan_path = Path(scan_path)
    for rel in [tracing.get("scan", ""), *tracing.get("also_valid_for", [])]:
        parts = Path(rel).parts
        if parts and scan_path.parts[-len(parts):] == parts:
            root = scan_path.parents[len(parts) - 1]
            break
    else:
        raise ValueError(f"{label}: cannot place decontrast.mask {dc['mask']!r}: the scan {scan_path} is not the "
                         f"tracing's scan {tracing.get('scan')!r} under a real-CT folder; pass decontrast_mask.")
    mask = root / dc["mask"]
    if not mask.is_file():
        raise FileNotFoundError(f"{label}: decontrast mask {mask} not found (decontrast.mask {dc['mask']!r} "
                                f"relative to the real-CT folder {root}).")
    return mask


def load_tracing(path: Union[str, Path]) -> dict:
    """Read and check a tracing JSON file (see ``src/cacnet/train/anatomy/README.md``).

    Raises
    ------
    ValueError
        Naming the file and the missing or malformed key.
    """
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{path}: no such tracing file.") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc}).") from None
    validate_tracing(doc, str(path))
    doc.setdefault("name", path.stem)
    return doc


def _structures(tracing: dict) -> dict:
    return tracing["structures"] if "structures" in tracing else tracing


def _zyx(points) -> np.ndarray:
    """LPS [x, y, z] points -> (n, 3) (z, y, x) mm."""
    return np.asarray(points, dtype=float)[..., ::-1].copy()


def _smooth_polyline(pts: np.ndarray, step: float, closed: bool = False) -> np.ndarray:
    """A chord-length cubic spline through the points, resampled every ``step`` mm."""
    from scipy.interpolate import CubicSpline

    pts = np.asarray(pts, dtype=float)
    if closed:
        pts = np.vstack([pts, pts[:1]])
    keep = np.r_[True, np.linalg.norm(np.diff(pts, axis=0), axis=1) > 1e-6]
    pts = pts[keep]
    if len(pts) >= 3 + closed:
        t = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(pts, axis=0), axis=1))])
        spline = CubicSpline(t, pts, bc_type="periodic" if closed else "natural")
        pts = spline(np.linspace(0, t[-1], max(int(t[-1] / 0.2), 2)))
    out, _ = resample_polyline(pts, step)
    return out


class _TracedAnatomy:
    """What :func:`sample_plaque` needs of an anatomy: ``coronaries`` label -> (points, vessel radii)."""

    def __init__(self, structures: dict):
        self.coronaries = {}
        for name, lab in CORONARIES.items():
            if name in structures:
                pts = _smooth_polyline(_zyx(structures[name]), 0.6)
                if len(pts) < 2:
                    continue
                s = 0.6 * np.arange(len(pts))
                r0, r1 = _VESSEL_R[lab]
                self.coronaries[lab] = (pts, r0 + (r1 - r0) * np.minimum(s / 120.0, 1.0))


# -- the scan -------------------------------------------------------------------

def _canonical(scan, thickness_mm: Optional[float]):
    """(hu copy float32, spacing, origin zyx, thickness, id, meta) of a Scan, a SimpleITK image or a path."""
    import SimpleITK as sitk

    if isinstance(scan, (str, Path)):
        from ..io import read_scan

        scan = read_scan(scan)
    meta: dict = {}
    if isinstance(scan, sitk.Image):
        image, sid = scan, "image"
    else:
        image, sid, meta = scan.image, scan.id, dict(scan.meta)
    image = sitk.DICOMOrient(image, "LPS")
    if not np.allclose(image.GetDirection(), np.eye(3).ravel(), atol=1e-4):
        raise ValueError("insert_calcium: the scan must be axis-aligned (oblique directions are not supported).")
    hu = sitk.GetArrayFromImage(image).astype(np.float32)
    sx, sy, sz = image.GetSpacing()
    spacing = (float(sz), float(sy), float(sx))
    origin = tuple(float(v) for v in image.GetOrigin()[::-1])
    thick = thickness_mm or meta.get("slice_thickness_mm") or spacing[0]
    return hu, spacing, origin, float(thick), sid, meta


def estimate_psf_sigma(hu: np.ndarray, spacing: Sequence[float], *, default: float = _DEFAULT_PSF_SIGMA_MM
                       ) -> tuple[float, int]:
    """Gaussian in-plane PSF sigma (mm) that matches a scan's sharpness, and the edges it came from.

    The skin-air edge at the body's left and right sides (rows where the
    body outline is locally vertical, middle half of the slices; profiles
    with flat air and a flat soft-tissue plateau only) is a near-ideal
    step. The 20 % to 50 % rise distance of each edge profile (from the air
    plateau to the subcutaneous plateau 3-6 pixels inside) is 0.8416 sigma
    of the total blur. The body outline lies at the edge of the field of
    view, where CT resolution is worse than at the heart, and thick slices
    cut it obliquely, so most profiles are broader than the kernel: the
    10th percentile is taken, less the pixel's own box blur (variance
    px^2 / 12, which the supersampled rendering adds itself), and clipped
    to sigma 0.3-0.55 mm (FWHM 0.7-1.3 mm, soft to standard kernels).
    Measured: A0001 5 mm "B" (Philips standard) 10th percentile FWHM 1.43
    -> 1.3 mm; "L" (lung) -> 0.7 mm; A0002 B40f 1.41 -> 1.3 mm; B70f 0.96 mm
    (its overshoot is not modelled). ``default`` (FWHM 1.06 mm) is returned
    with 0 edges when fewer than 10 profiles qualify.
    """
    nz, ny, nx = hu.shape
    px = float(spacing[2])
    zs = np.unique(np.linspace(nz * 0.25, nz * 0.75, 8).astype(int)) if nz > 1 else np.array([0])
    widths = []
    k = np.arange(-10, 11)
    for z in zs:
        sl = hu[z]
        body = sl > -500
        rows = np.flatnonzero(body.sum(axis=1) > 20)
        if rows.size < 10:
            continue
        first = np.argmax(body, axis=1)
        last = nx - 1 - np.argmax(body[:, ::-1], axis=1)
        for side, edge in ((1, first), (-1, last)):
            # Rows where the outline is locally vertical (the edge runs along y).
            vertical = rows[(rows >= 2) & (rows < ny - 2)]
            vertical = vertical[np.abs(edge[vertical + 2] - edge[vertical - 2]) <= 1]
            for r in vertical:
                cols = edge[r] + side * k
                if cols.min() < 0 or cols.max() >= nx:
                    continue
                p = sl[r, cols].astype(float)  # air -> body
                lo, hi = np.median(p[:5]), np.median(p[13:17])
                # A clean step: flat air, then a flat soft-tissue/fat plateau.
                if lo > -800 or hi < -300 or np.ptp(p[:5]) > 100 or np.ptp(p[13:17]) > 150:
                    continue
                f = (p - lo) / (hi - lo)
                xs = []
                for level in (0.2, 0.5):
                    i = int(np.argmax(f >= level))
                    if i == 0:
                        break
                    xs.append(i - 1 + (level - f[i - 1]) / max(f[i] - f[i - 1], 1e-6))
                if len(xs) == 2 and xs[1] > xs[0]:
                    widths.append((xs[1] - xs[0]) * px)
    if len(widths) < 10:
        return float(default), 0
    sigma_edge = float(np.percentile(widths, 10)) / 0.8416
    sigma = math.sqrt(max(sigma_edge ** 2 - px * px / 12.0, 0.0))
    return float(np.clip(sigma, *_PSF_RANGE_MM)), len(widths)


class _LocalBackground:
    """The scan smoothed in-plane, computed on demand for a box (the tissue a plaque replaces)."""

    def __init__(self, hu: np.ndarray, spacing):
        self.hu, self.sigma = hu, _BACKGROUND_SIGMA_MM / float(spacing[2])
        self.pad = int(math.ceil(3 * self.sigma)) + 1

    def __getitem__(self, box):
        ny, nx = self.hu.shape[1:]
        big = (box[0], slice(max(box[1].start - self.pad, 0), min(box[1].stop + self.pad, ny)),
               slice(max(box[2].start - self.pad, 0), min(box[2].stop + self.pad, nx)))
        sm = ndimage.gaussian_filter(self.hu[big], sigma=(0, self.sigma, self.sigma), truncate=3.0)
        return sm[:, box[1].start - big[1].start: box[1].stop - big[1].start,
                  box[2].start - big[2].start: box[2].stop - big[2].start]


# -- look-alikes on the traced rings -------------------------------------------------

def _arc_along(ring: np.ndarray, rng: np.random.Generator, fraction: float, step: float) -> np.ndarray:
    """A piece of a closed ring: ``fraction`` of its length from a random start, every ``step`` mm."""
    dense = _smooth_polyline(ring, 0.2, closed=True)
    n = len(dense)
    start = int(rng.integers(n))
    m = max(int(round(fraction * n)), 2)
    piece = dense[(start + np.arange(m)) % n]
    out, _ = resample_polyline(piece, step)
    return out if len(out) else piece[:1]


def _sample_lookalikes(rng: np.random.Generator, structures: dict, kinds: list[str]) -> list[tuple[str, Calcification]]:
    """(structure, calcification) pairs: the phantom's look-alike shapes on the traced structures."""
    out = []
    for kind in kinds:
        if kind == "aortic_wall":
            rings = [(name, _zyx(r)) for name in _RINGS for r in structures.get(name, [])]
            for _ in range(int(rng.integers(1, 5))):
                name, ring = rings[int(rng.integers(len(rings)))]
                frac = rng.uniform(0.3, 1.6) / (2 * np.pi)  # the phantom's arc angle, as a fraction of the ring
                pts = _arc_along(ring, rng, frac, 0.7)
                out.append((name, Calcification(kind, pts, np.full(len(pts), rng.uniform(0.7, 1.8)),
                                                rng.uniform(300, 1100))))
        elif kind == "aortic_valve":
            ring = _zyx(structures["aortic_valve_plane"])
            c = ring.mean(axis=0)
            axis = unit(np.linalg.svd(ring - c)[2][-1])  # normal of the valve plane
            radius = float(np.linalg.norm(ring - c, axis=1).mean())
            for _ in range(int(rng.integers(1, 4))):
                e1 = perpendicular(rng, axis)
                cc = c + radius * rng.uniform(0.2, 0.75) * e1 + axis * rng.uniform(-3, 3)
                n = int(rng.integers(1, 4))
                out.append(("aortic_valve_plane", Calcification(kind, cc + rng.normal(0, 1.0, size=(n, 3)),
                                                                rng.uniform(1.0, 2.8, size=n), rng.uniform(350, 1200))))
        elif kind == "mitral_annulus":
            ring = _zyx(structures["mitral_annulus"])
            pts = _arc_along(ring, rng, rng.uniform(40, 130) / 360.0, 0.8)
            radii = rng.uniform(1.0, 2.4) * (0.75 + 0.25 * np.sin(np.linspace(0, np.pi, len(pts))))
            out.append(("mitral_annulus", Calcification(kind, pts, radii, rng.uniform(400, 1200))))
    return out


def _lookalike_kinds(rng, structures: dict, lookalikes) -> list[str]:
    available = []
    if any(structures.get(n) for n in _RINGS):
        available.append("aortic_wall")
    if "aortic_valve_plane" in structures:
        available.append("aortic_valve")
    if "mitral_annulus" in structures:
        available.append("mitral_annulus")
    if lookalikes is False or lookalikes is None:
        return []
    if isinstance(lookalikes, (list, tuple)):
        missing = [k for k in lookalikes if k not in available]
        if missing:
            raise ValueError(f"insert_calcium: look-alike(s) {missing} need a traced structure the tracing lacks.")
        return list(lookalikes)
    rate = _LOOKALIKE_RATE if lookalikes is True else float(lookalikes)
    return [k for k in available if rng.random() < rate]


# -- insertion ----------------------------------------------------------------------

def _add_boxes(dst: np.ndarray, crop, items) -> None:
    """Add rendered (box, contribution) items into ``dst`` (the crop), where they overlap."""
    for box, contrib in items:
        inter = tuple(slice(max(b.start, c.start), min(b.stop, c.stop)) for b, c in zip(box, crop))
        if any(s.stop <= s.start for s in inter):
            continue
        dst[local_box(inter, crop)] += contrib[local_box(inter, box)]


def _describe(calc: Calcification, label: int, where: str, final: np.ndarray, box, contrib) -> dict:
    c = calc.centers
    ext = float(np.linalg.norm(c.max(axis=0) - c.min(axis=0))) + 2 * float(np.max(calc.radii))
    core = contrib >= 0.5 * contrib.max() if contrib.max() > 0 else np.zeros(contrib.shape, bool)
    vals = final[box][core]
    return {
        "kind": calc.kind,
        "label": label,
        ("artery" if label else "structure"): where,
        "position_mm": [round(float(v), 2) for v in c.mean(axis=0)[::-1]],
        "length_mm": round(ext, 2),
        "radius_mm": round(float(np.max(calc.radii)), 2),
        "value_hu": round(float(calc.value_hu), 1),
        "peak_hu": round(float(vals.max()), 1) if vals.size else None,
        "above_130": int((final[box][contrib > 0.5] >= 130).sum()),
        "faint": bool(calc.faint),
    }


def insert_calcium(
    scan,
    tracing: dict,
    rng: np.random.Generator,
    *,
    n_plaques: Optional[int] = None,
    lookalikes: Union[bool, float, Sequence[str]] = True,
    target_category: Optional[str] = None,
    thickness_mm: Optional[float] = None,
    psf_sigma_mm: Optional[float] = None,
    hard_fraction: float = 0.3,
    plaque_noise: float = 0.0,
    case_id: Optional[str] = None,
) -> InsertedCase:
    """Insert synthetic coronary calcium and look-alikes into a real scan along its traced anatomy.

    Parameters
    ----------
    scan : cacnet.io.Scan, SimpleITK.Image or path
        A non-contrast CT without coronary calcium (it is brought to
        canonical LPS; oblique scans are refused).
    tracing : dict
        A tracing (:func:`load_tracing`) or its ``structures``; LPS mm.
    rng : numpy.random.Generator
        Every random choice; the same generator state gives the same case.
    n_plaques : int, optional
        Exactly this many coronary plaques (sizes drawn), instead of aiming
        at a category.
    lookalikes : bool, float or list of str, default True
        True: each look-alike kind the tracing allows ("aortic_wall",
        "aortic_valve", "mitral_annulus") with probability 0.5; a float: that
        probability; a list: exactly those kinds; False: none.
    target_category : {"A", "B", "C", "D", "E"}, optional
        Risk category the truth score must fall in (the phantom's
        adjust-until-reached loop). Drawn uniformly when both it and
        ``n_plaques`` are None.
    thickness_mm : float, optional
        Slice thickness; default the scan's meta ``slice_thickness_mm``,
        else the slice increment.
    psf_sigma_mm : float, optional
        In-plane Gaussian PSF sigma; default :func:`estimate_psf_sigma`.
    hard_fraction : float, default 0.3
        Probability of one faint sub-mm speck (180-330 HU) among the plaques.
    plaque_noise : float, default 0.0
        Extra white noise on the plaques, sd = this fraction of the added HU.
    case_id : str, optional

    Returns
    -------
    InsertedCase

    Raises
    ------
    ValueError
        A bad tracing or category, or both ``n_plaques`` and ``target_category``.
    RuntimeError
        When the category cannot be reached (e.g. the traced arteries lie
        outside the volume).
    """
    structures = _structures(validate_tracing({"structures": _structures(tracing)}))
    if n_plaques is not None and target_category is not None:
        raise ValueError("insert_calcium: give n_plaques or target_category, not both.")
    if target_category is not None and target_category not in CATEGORY_TARGETS:
        raise ValueError(f"insert_calcium: target_category must be one of A-E; got {target_category!r}.")
    hu0, spacing, origin, thick, sid, _ = _canonical(scan, thickness_mm)
    if psf_sigma_mm is None:
        psf, n_edges = estimate_psf_sigma(hu0, spacing)
        psf_how = f"estimated from {n_edges} skin-air edge profiles" if n_edges else "default (too few edges)"
    else:
        psf, psf_how = float(psf_sigma_mm), "given"
    if n_plaques is None and target_category is None:
        target_category = str(rng.choice(list(CATEGORY_TARGETS)))

    grid = Grid(shape=hu0.shape, spacing=spacing, origin=origin, thickness=thick)  # type: ignore[arg-type]
    kernel = SimpleNamespace(psf_mm=psf, pixel_mm=float(spacing[2]), sharpen=0.0)
    render = Plaques(grid, _LocalBackground(hu0, spacing), kernel)  # type: ignore[arg-type]
    anat = _TracedAnatomy(structures)
    arteries = sorted(anat.coronaries)
    p = np.array([_ARTERY_P[a] for a in arteries])
    p = p / p.sum()

    # Look-alikes go into the background (base); their contribution is kept for the truth rule.
    looks = []
    for where, calc in _sample_lookalikes(rng, structures, _lookalike_kinds(rng, structures, lookalikes)):
        r = render.render(calc)
        if r is not None:
            looks.append((where, calc, r))
    base = hu0.copy()
    for _, _, (box, contrib) in looks:
        base[box] += contrib

    chosen: list = []

    def add(size: str, faint: bool = False) -> None:
        artery = int(arteries[int(rng.choice(len(arteries), p=p))])
        plaque = sample_plaque(rng, anat, size, faint=faint, artery=artery)
        r = render.render(plaque)
        if r is not None:
            chosen.append((plaque, r))

    def evaluate():
        if not chosen:
            return None
        crop = grow_box(union_box([r[0] for _, r in chosen]), (1, 16, 16), hu0.shape)
        for attempt in range(6):
            shp = tuple(s.stop - s.start for s in crop)
            bc = np.zeros((4,) + shp, dtype=np.float32)
            for plaque, r in chosen:
                _add_boxes(bc[plaque.artery - 1], crop, [r])
            b = base[crop]
            total = bc.sum(axis=0)
            if plaque_noise:
                noise_rng = np.random.default_rng(len(chosen))
                total = total + noise_rng.standard_normal(shp).astype(np.float32) * np.float32(plaque_noise) * total
            final = np.clip(np.rint(b + total), -1024, 3071).astype(np.float32)
            bl = np.zeros(shp, dtype=np.float32)
            _add_boxes(bl, crop, [r for _, _, r in looks])
            # "Other things": look-alikes, and the whole HU of voxels that were bright before insertion.
            bl += np.where(b >= 130, b, 0).astype(np.float32)
            labels, merged, border = truth_labels(final, bc, bl)
            grow = [bd and (crop[ax].start > 0 or crop[ax].stop < hu0.shape[ax]) for ax, bd in enumerate(border)]
            if not any(grow) or attempt == 5:
                break
            crop = grow_box(crop, (2, 24, 24), hu0.shape)
        return crop, final, labels, merged

    def score_of(state) -> float:
        return 0.0 if state is None else agatston.score(state[1], spacing, state[2]).agatston

    state = None
    if n_plaques is not None:
        for i in range(int(n_plaques)):
            faint = i == 0 and rng.random() < hard_fraction
            add("small" if faint else str(rng.choice(["small", "medium", "large"], p=[0.45, 0.35, 0.2])), faint)
        state = evaluate()
    elif target_category != "A":
        lo, hi = CATEGORY_TARGETS[target_category]
        goal = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
        if rng.random() < hard_fraction:
            add("small", faint=True)
        state = reach_category(rng, target_category, goal, hi, chosen, add, evaluate, score_of, rounds=120)

    final = np.clip(np.rint(base), -1024, 3071).astype(np.float32)
    labels = np.zeros(hu0.shape, dtype=np.uint8)
    merged = 0
    if state is not None:
        crop, final_crop, labels_crop, merged = state
        final[crop] = final_crop
        labels[crop] = labels_crop
    truth = agatston.score(final, spacing, labels)
    if target_category is not None and agatston.category(truth.agatston) != target_category:
        raise RuntimeError(f"insert_calcium: category {target_category} not reached (score {truth.agatston:.1f}); "
                           "do the traced arteries lie inside the scan?")
    names = {v: k for k, v in CORONARIES.items()}
    objects = [_describe(pl, pl.artery, names[pl.artery], final, r[0], r[1]) for pl, r in chosen]
    objects += [_describe(calc, 0, where, final, r[0], r[1]) for where, calc, r in looks]
    meta = {
        "source": sid,
        "target_category": target_category,
        "n_plaques": len(chosen),
        "objects": objects,
        "lookalikes": sorted({o["kind"] for o in objects if o["label"] == 0}),
        "merged_with_lookalike": merged,
        "psf_sigma_mm": round(psf, 3),
        "psf_fwhm_mm": round(2.3548 * psf, 3),
        "psf": psf_how,
        "thickness_mm": thick,
        "agatston": truth.agatston,
        "category": truth.category,
    }
    return InsertedCase(case_id or f"{sid}_inserted", final, labels, spacing, origin, truth, meta)


# -- augmentation and resampling ----------------------------------------------------

def _transform_tracing(structures: dict, inverse_point) -> dict:
    out = {}
    for key, value in structures.items():
        if key in _RINGS:
            out[key] = [[list(inverse_point(p)) for p in ring] for ring in value]
        else:
            out[key] = [list(inverse_point(p)) for p in value]
    return out


def augment_scan(scan, tracing: dict, rng: np.random.Generator, *, rotation_deg: float = 10.0,
                 scale: tuple[float, float] = (0.9, 1.1), elastic_mm: float = 2.0, hu_offset: float = 15.0,
                 hu_gain: float = 0.03):
    """A randomly deformed copy of a scan and its tracing moved with it (before insertion).

    In-plane rotation about z (uniform +-``rotation_deg``) and scaling
    (uniform in ``scale``) about the traced coronaries' centroid, then a
    smooth in-plane elastic deformation (cubic B-spline on a 4 x 4 x 3
    control mesh, control displacements N(0, ``elastic_mm``); 0 turns it
    off), resampled linearly on the scan's own grid (-1024 outside); HU
    ``offset + gain x HU`` of the background (``hu_offset``, ``hu_gain``
    uniform +-). Tracing points move by the inverse mapping (solved
    iteratively to < 0.01 mm), so they stay on the same anatomy.
    Estimate the PSF on the original scan and pass it to
    :func:`insert_calcium` (the -1024 fill where the field of view is cut
    makes artificially sharp edges in the copy).

    Returns
    -------
    (SimpleITK.Image, dict, dict)
        The canonical float32 image (carrying the scan's slice thickness as
        ``thickness_mm`` in the returned parameters), the moved tracing
        (``structures`` replaced) and the drawn parameters.
    """
    import SimpleITK as sitk

    if isinstance(scan, (str, Path)):
        from ..io import read_scan

        scan = read_scan(scan)
    image = scan if isinstance(scan, sitk.Image) else scan.image
    thick = None if isinstance(scan, sitk.Image) else scan.meta.get("slice_thickness_mm")
    image = sitk.DICOMOrient(sitk.Cast(image, sitk.sitkFloat32), "LPS")
    structures = _structures(tracing)
    cor = np.concatenate([np.asarray(structures[k], float) for k in CORONARIES if k in structures])
    center = cor.mean(axis=0)
    ang = np.deg2rad(rng.uniform(-rotation_deg, rotation_deg))
    sc = float(rng.uniform(*scale))
    # Output point p samples the input at A (p - c) + c: the image content scales by 1 / sc.
    mat = np.array([[np.cos(ang), -np.sin(ang), 0], [np.sin(ang), np.cos(ang), 0], [0, 0, 1]]) / np.array([sc, sc, 1])
    aff = sitk.AffineTransform(3)
    aff.SetCenter([float(v) for v in center])
    aff.SetMatrix([float(v) for v in mat.ravel()])
    transforms = [aff]
    if elastic_mm > 0:
        bsp = sitk.BSplineTransformInitializer(image, [4, 4, 3], 3)
        n = bsp.GetNumberOfParameters() // 3
        disp = np.concatenate([rng.normal(0, elastic_mm, n), rng.normal(0, elastic_mm, n), np.zeros(n)])
        bsp.SetParameters([float(v) for v in disp])
        transforms.append(bsp)
    composite = sitk.CompositeTransform(transforms)  # applies the B-spline first, then the affine
    inv_mat = np.linalg.inv(mat)

    def inverse_point(q):
        q = np.asarray(q, float)
        x = inv_mat @ (q - center) + center
        for _ in range(50):
            r = q - np.asarray(composite.TransformPoint([float(v) for v in x]))
            x = x + inv_mat @ r
            if np.abs(r).max() < 1e-3:
                break
        return [round(float(v), 4) for v in x]

    out = sitk.Resample(image, image, composite, sitk.sitkLinear, -1024.0, sitk.sitkFloat32)
    gain = float(1 + rng.uniform(-hu_gain, hu_gain))
    offset = float(rng.uniform(-hu_offset, hu_offset))
    arr = sitk.GetArrayFromImage(out)
    arr = np.clip(arr * np.float32(gain) + np.float32(offset), -1024, 3071).astype(np.float32)
    res = sitk.GetImageFromArray(arr)
    res.CopyInformation(out)
    moved = dict(tracing) if "structures" in tracing else {}
    moved["structures"] = _transform_tracing(structures, inverse_point)
    params = {"rotation_deg": round(float(np.rad2deg(ang)), 3), "scale": round(sc, 4), "elastic_mm": elastic_mm,
              "hu_gain": round(gain, 4), "hu_offset": round(offset, 2), "thickness_mm": thick}
    return res, moved, params


def resample_for_cac(scan, slice_mm: float = 3.0, pixel_mm: float = 0.5):
    """A scan resampled to calcium-score geometry where the source allows.

    Slices become ``slice_mm`` (2.5 or 3) thick and apart, or stay the
    source's when it is coarser (never finer in z); in-plane pixels become
    ``pixel_mm`` (0.3-0.5) when the source's are finer, else stay the
    source's. Thicker slices average the source through a box of
    ``slice_mm`` along z; coarser pixels average with a Gaussian of the
    extra width; then linear resampling (SimpleITK). Returns a
    :class:`cacnet.io.Scan` whose meta ``slice_thickness_mm`` is the new
    slice thickness.
    """
    import SimpleITK as sitk

    from ..io import Scan, read_scan

    if isinstance(scan, (str, Path)):
        scan = read_scan(scan)
    image = scan.image
    dz, dy, dx = scan.spacing
    src_thick = float(scan.meta.get("slice_thickness_mm") or dz)
    new_dz = max(dz, float(slice_mm))
    new_px = max(dx, float(pixel_mm))
    arr = sitk.GetArrayFromImage(image).astype(np.float32)
    if new_dz > dz + 1e-6:
        width = max(float(slice_mm) - src_thick, 0.0) / dz  # the source slices already cover their own thickness
        if width > 0:
            arr = ndimage.uniform_filter1d(arr, size=max(int(round(width)) + 1, 1), axis=0, mode="nearest")
    if new_px > dx + 1e-6:
        s = math.sqrt(max(new_px ** 2 - dx ** 2, 0.0)) / math.sqrt(12) / dx
        arr = ndimage.gaussian_filter(arr, sigma=(0, s, s), truncate=3.0)
    smooth = sitk.GetImageFromArray(arr)
    smooth.CopyInformation(image)
    size = [int(math.floor((n - 1) * s / t)) + 1 for n, s, t in zip(image.GetSize(), image.GetSpacing(),
                                                                      (new_px, new_px, new_dz))]
    out = sitk.Resample(smooth, size, sitk.Transform(), sitk.sitkLinear, image.GetOrigin(), (new_px, new_px, new_dz),
                        image.GetDirection(), -1024.0, sitk.sitkFloat32)
    meta = dict(scan.meta)
    meta.update({"slice_thickness_mm": max(src_thick, float(slice_mm)) if new_dz > dz + 1e-6 else src_thick,
                 "slice_increment_mm": new_dz, "resampled_from_zyx_mm": list(scan.spacing)})
    hu = sitk.GetArrayViewFromImage(out)
    return Scan(id=scan.id, hu=hu, spacing=(new_dz, new_px, new_px), image=out, source_image=out, meta=meta)


# -- inserted scans ----------------------------------------------------------------------

def iter_inserted_scans(scan_path, tracing_path, indices: Sequence[int], seed: int, *, augment: bool = True,
                        resample: Optional[tuple[float, float]] = None, lookalikes: Union[bool, float] = True,
                        decontrast_mask: Optional[Union[str, Path]] = None):
    """The full-resolution scans behind :func:`cacnet.train.iter_inserted_cases`: ``(i, InsertedCase, params)``.

    The scan is read once; case ``i`` uses ``numpy.random.default_rng([seed, i])``
    and category ``"ABCDE"[i % 5]``. Evaluation on a held-out patient scores
    these on their own grid (``experiments/experiments.py --background``).
    A contrast-enhanced scan whose tracing has ``decontrast`` is de-contrasted
    first (:func:`cacnet.phantom.decontrast.decontrast_scan`) with that label
    map (:func:`decontrast_mask_of`; ``decontrast_mask`` overrides the path).
    """
    from ..io import read_scan

    tracing = load_tracing(tracing_path)
    if decontrast_mask is None:
        decontrast_mask = decontrast_mask_of(tracing, scan_path, str(tracing_path))
    scan = read_scan(scan_path)
    if decontrast_mask is not None:
        from .decontrast import decontrast_scan

        scan = decontrast_scan(scan, decontrast_mask)
    if resample is not None:
        scan = resample_for_cac(scan, *resample)
    thick = scan.meta.get("slice_thickness_mm")
    # The sharpness of the original: resampled copies have artificial edges where the field of view was cut.
    psf, _ = estimate_psf_sigma(scan.hu, scan.spacing)
    for i in indices:
        rng = np.random.default_rng([seed, i])
        target = "ABCDE"[i % 5]
        src, tr, params = (augment_scan(scan, tracing, rng) if augment else (scan, tracing, {}))
        for attempt in range(4):
            try:
                ins = insert_calcium(src, tr, rng, target_category=target, lookalikes=lookalikes, thickness_mm=thick,
                                     psf_sigma_mm=psf)
                break
            except RuntimeError:
                if attempt == 3:
                    raise
        yield i, ins, params
