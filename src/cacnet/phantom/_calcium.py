"""Coronary plaques and the calcified look-alikes around them (private).

A calcification is a set of balls (centres, radii in mm) of solid calcium
with one HU value, drawn supersampled into the canvas' calcium layer.
Coronary plaques carry their artery label; look-alikes carry a negative id
per kind (see :data:`LOOKALIKES`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._anatomy import Anatomy, resample_polyline, unit

__all__ = ["Calcification", "LOOKALIKES", "sample_plaque", "sample_lookalikes", "perpendicular"]

#: Look-alike kinds and their (negative) source ids in the calcium layer.
LOOKALIKES = {
    "aortic_wall": -1,
    "aortic_valve": -2,
    "mitral_annulus": -3,
    "pericardium": -4,
    "costal_cartilage": -5,
    "pacing_lead": -6,
}


@dataclass
class Calcification:
    """Balls of one calcification."""

    kind: str
    centers: np.ndarray  # (n, 3) mm (z, y, x)
    radii: np.ndarray  # (n,)
    value_hu: float
    artery: int = 0  # 1-4 for coronary plaques, 0 for look-alikes
    faint: bool = False  # a small, low-density (hard) coronary lesion


def perpendicular(rng, tangent) -> np.ndarray:
    n = rng.normal(size=3)
    n -= n.dot(tangent) * tangent
    return unit(n)


def _tangent(points, i) -> np.ndarray:
    a, b = max(i - 1, 0), min(i + 1, len(points) - 1)
    return unit(points[b] - points[a])


def sample_plaque(rng: np.random.Generator, anat: Anatomy, size: str, *, faint: bool = False,
                  artery: int | None = None) -> Calcification:
    """One coronary plaque on the vessel wall.

    ``size`` is "small", "medium" or "large"; ``faint`` makes a sub-mm,
    low-density speck (the paper's missed lesions). Only ``anat.coronaries``
    (label -> (points every 0.6 mm, vessel radii)) is used, so any object
    with that attribute works (traced arteries of a real scan). ``artery``
    (1-4) fixes the artery; by default it is drawn (LAD most often).
    """
    if artery is None:
        artery = int(rng.choice([1, 2, 3, 4], p=[0.12, 0.4, 0.2, 0.28]))
    pts, vessel_r = anat.coronaries[artery]
    # Proximal segments and the bifurcation are favoured.
    frac = rng.beta(1.2, 3.2) if artery != 1 else rng.uniform(0.2, 1.0)
    i = min(int(frac * (len(pts) - 1)), len(pts) - 1)
    tangent = _tangent(pts, i)
    normal = perpendicular(rng, tangent)
    wall = vessel_r[i] * 0.85
    if faint:
        r = rng.uniform(0.35, 0.7)
        value = rng.uniform(180, 330)
        c = pts[i] + normal * wall
        return Calcification("spotty", c[None], np.array([r]), value, artery, faint=True)
    value = float(np.clip(np.exp(rng.normal(np.log(480), 0.45)), 170, 1700))
    r_lo, r_hi = {"small": (0.45, 0.9), "medium": (0.7, 1.4), "large": (1.0, 1.9)}[size]
    kind = rng.choice(["spotty", "elongated", "ring"], p=[0.45, 0.4, 0.15])
    if kind == "spotty":
        n = int(rng.integers(1, 4))
        r = rng.uniform(r_lo, r_hi)
        centers = pts[i] + normal * wall + rng.normal(0, 0.35 * r, size=(n, 3))
        radii = r * rng.uniform(0.7, 1.0, size=n)
    elif kind == "elongated":
        length = rng.uniform(*{"small": (1.5, 4), "medium": (3, 8), "large": (6, 16)}[size])
        span = max(int(length / 0.6), 2)
        idx = np.arange(i, min(i + span, len(pts)))
        twist = rng.uniform(-0.5, 0.5)
        centers, radii = [], []
        r = rng.uniform(r_lo, r_hi)
        for k, j in enumerate(idx):
            t = _tangent(pts, j)
            nn = unit(normal + twist * k / max(len(idx), 1) * np.cross(t, normal))
            nn = unit(nn - nn.dot(t) * t)
            centers.append(pts[j] + nn * vessel_r[j] * 0.85)
            radii.append(r * (0.75 + 0.25 * np.sin(np.pi * (k + 0.5) / len(idx))))
        centers, radii = np.array(centers), np.array(radii)
    else:  # ring-like: around the circumference
        arc = rng.uniform(np.pi * 0.7, 2 * np.pi)
        other = np.cross(tangent, normal)
        ang = np.arange(0, arc, 0.5 / max(wall, 0.5))
        centers = pts[i] + wall * (np.cos(ang)[:, None] * normal + np.sin(ang)[:, None] * other)
        radii = np.full(len(centers), rng.uniform(r_lo * 0.7, r_hi * 0.7))
    return Calcification(str(kind), np.asarray(centers), np.asarray(radii), value, artery)


def _arc(center, e1, e2, radius, a0, a1, step=0.7) -> np.ndarray:
    ang = np.arange(a0, a1, step / max(radius, 1.0))
    return center + radius * (np.cos(ang)[:, None] * e1 + np.sin(ang)[:, None] * e2)


def sample_lookalikes(rng: np.random.Generator, anat: Anatomy, kinds: list[str]) -> list[Calcification]:
    """Calcifications that are not coronary calcium, of the requested kinds."""
    out: list[Calcification] = []
    h = anat.heart
    up = np.array([1.0, 0.0, 0.0])
    for kind in kinds:
        if kind == "aortic_wall":
            for _ in range(int(rng.integers(1, 5))):
                if rng.random() < 0.5:  # ascending aorta, above the root
                    c = anat.aortic_root + up * rng.uniform(15, 60)
                    r_v = anat.asc_radius
                else:
                    c = np.array([rng.uniform(h.center[0] - 50, h.center[0] + 50), *anat.desc_aorta_yx])
                    r_v = anat.desc_radius
                a0 = rng.uniform(0, 2 * np.pi)
                pts = _arc(c, np.array([0, 1.0, 0]), np.array([0, 0, 1.0]), r_v, a0, a0 + rng.uniform(0.3, 1.6))
                out.append(Calcification(kind, pts, np.full(len(pts), rng.uniform(0.7, 1.8)),
                                         rng.uniform(300, 1100)))
        elif kind == "aortic_valve":
            axis = unit(anat.asc_aorta[1] - anat.asc_aorta[0])
            e1 = perpendicular(rng, axis)
            e2 = np.cross(axis, e1)
            for _ in range(int(rng.integers(1, 4))):
                a = rng.uniform(0, 2 * np.pi)
                rr = anat.root_radius * rng.uniform(0.2, 0.75)
                c = anat.aortic_root + rr * (np.cos(a) * e1 + np.sin(a) * e2) + axis * rng.uniform(-3, 3)
                n = int(rng.integers(1, 4))
                out.append(Calcification(kind, c + rng.normal(0, 1.0, size=(n, 3)),
                                         rng.uniform(1.0, 2.8, size=n), rng.uniform(350, 1200)))
        elif kind == "mitral_annulus":
            # An arc a few mm inside the left AV groove, next to the LCX.
            phi0 = np.deg2rad(rng.uniform(40, 90))
            phi = np.arange(phi0, phi0 + np.deg2rad(rng.uniform(40, 130)), 0.02)
            pts = h.surface(anat.s_av + 0.03, phi, -rng.uniform(5.0, 9.0))
            pts, _ = resample_polyline(pts, 0.8)
            radii = rng.uniform(1.0, 2.4) * (0.75 + 0.25 * np.sin(np.linspace(0, np.pi, len(pts))))
            out.append(Calcification(kind, pts, radii, rng.uniform(400, 1200)))
        elif kind == "pericardium":
            for _ in range(int(rng.integers(1, 3))):
                s0, p0 = rng.uniform(-0.2, 0.8), rng.uniform(-np.pi, np.pi)
                s = s0 + np.linspace(0, rng.uniform(0.05, 0.25), 12)
                pts = h.surface(s, p0 + np.linspace(0, rng.uniform(-0.3, 0.3), 12), anat.fat + 0.6)
                pts, _ = resample_polyline(pts, 0.8)
                out.append(Calcification(kind, pts, np.full(len(pts), rng.uniform(0.6, 1.5)),
                                         rng.uniform(250, 800)))
        elif kind == "costal_cartilage":
            for rib, cart in anat.ribs:
                if rng.random() < 0.35:
                    pts, _ = resample_polyline(cart, 1.0)
                    k = rng.choice(len(pts), size=min(len(pts), int(rng.integers(2, 9))), replace=False)
                    out.append(Calcification(kind, pts[k] + rng.normal(0, 1.2, size=(len(k), 3)),
                                             rng.uniform(0.8, 2.2, size=len(k)), rng.uniform(250, 650)))
        elif kind == "pacing_lead":
            top = np.array([h.center[0] + 120, *anat.svc[0][1:]])
            ra = h.surface(-0.6, -np.pi / 2, -6.0)  # right atrium
            rv = h.surface(rng.uniform(0.6, 0.85), np.deg2rad(rng.uniform(-40, -10)), -7.0)  # RV apex
            mid = 0.5 * (ra + rv) + h.axes[1] * 8
            pts, _ = resample_polyline(np.array([top, anat.svc[1], ra, mid, rv]), 0.5)
            out.append(Calcification(kind, pts, np.full(len(pts), rng.uniform(0.8, 1.1)),
                                     rng.uniform(2200, 3000)))
        else:  # pragma: no cover - guarded by the caller
            raise ValueError(f"unknown look-alike {kind!r}")
    return out
