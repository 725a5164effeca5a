"""Sampled anatomy of a cardiac CT phantom and how to draw it (private).

All positions are patient LPS millimetres in (z, y, x) order: x grows to the
patient's left, y to the back, z to the head. The heart is an oriented
ellipsoid; its long axis points from the base (back, right, up) to the apex
(front, left, down). Coronary arteries run in the epicardial fat: the LAD
along the anterior interventricular groove, the LCX and RCA along the left
and right atrioventricular groove, the LM from the left sinus of the aortic
root to the LAD/LCX bifurcation, the RCA from the right sinus.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

import agatston

from ._canvas import Canvas

__all__ = ["Heart", "Anatomy", "sample_anatomy", "sample_coronaries", "sample_ribs", "draw_anatomy", "draw_ribs",
           "resample_polyline", "unit"]

#: Label -> artery (1 LM, 2 LAD, 3 LCX, 4 RCA): the scoring core's one artery constant.
ARTERIES = agatston.ARTERY_NAMES


def unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=float)
    return v / np.linalg.norm(v)


def resample_polyline(points: np.ndarray, step: float) -> tuple[np.ndarray, np.ndarray]:
    """Points every ``step`` mm along a polyline, and their arc length."""
    pts = np.asarray(points, dtype=float)
    seg = np.linalg.norm(np.diff(pts, axis=0), axis=1)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    t = np.arange(0.0, s[-1] + 1e-9, step)
    out = np.column_stack([np.interp(t, s, pts[:, i]) for i in range(3)])
    return out, t


@dataclass
class Heart:
    """Oriented ellipsoid; rows of ``axes`` are unit vectors (z, y, x)."""

    center: np.ndarray
    axes: np.ndarray  # u (base -> apex), v (anterior), w (patient left)
    radii: np.ndarray  # along u, v, w

    def surface(self, s, phi, offset=0.0) -> np.ndarray:
        """Point(s) on the ellipsoid grown by ``offset`` mm.

        ``s`` in [-1, 1] runs from base to apex; ``phi`` (radians) is 0 at the
        front, +pi/2 on the patient's left, -pi/2 on the right.
        """
        s = np.asarray(s, dtype=float)
        phi = np.asarray(phi, dtype=float)
        a, b, c = self.radii + offset
        ring = np.sqrt(np.clip(1 - s * s, 0, 1))
        u, v, w = self.axes
        return (
            self.center
            + (a * s)[..., None] * u
            + (ring * b * np.cos(phi))[..., None] * v
            + (ring * c * np.sin(phi))[..., None] * w
        )


@dataclass
class Anatomy:
    """Everything sampled for one case (mm, LPS, (z, y, x))."""

    heart: Heart
    fat: float  # epicardial fat thickness
    torso_center: np.ndarray  # (y, x)
    torso_radii: np.ndarray  # (ry, rx)
    subcut: float
    muscle: float
    spine_yx: np.ndarray
    aortic_root: np.ndarray
    root_radius: float
    asc_aorta: np.ndarray  # polyline
    asc_radius: float
    desc_aorta_yx: np.ndarray
    desc_radius: float
    pulmonary: np.ndarray
    svc: np.ndarray
    ribs: list = field(default_factory=list)  # (points, cartilage points)
    sternum_yx: np.ndarray = None  # type: ignore[assignment]
    coronaries: dict = field(default_factory=dict)  # label -> (points (n,3), radii (n,))
    s_av: float = -0.4
    tissue: dict = field(default_factory=dict)


def _rotation(rng, max_deg) -> np.ndarray:
    """A random small rotation matrix (acts on (z, y, x) vectors)."""
    axis = unit(rng.normal(size=3))
    ang = np.deg2rad(rng.uniform(-max_deg, max_deg))
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(ang) * k + (1 - np.cos(ang)) * (k @ k)


def sample_anatomy(rng: np.random.Generator, z_range: tuple[float, float]) -> Anatomy:
    """Sample one patient's anatomy around a heart centred near the origin."""
    # Heart: long axis to the front, left and down, with variation.
    u = unit(_rotation(rng, 12) @ unit([-0.45, -0.5, 0.72]))
    front = np.array([0.0, -1.0, 0.0])
    v = unit(front - front.dot(u) * u)
    w = np.cross(u, v)
    if w[2] < 0:  # w must point to the patient's left (+x)
        w = -w
    scale = rng.uniform(0.88, 1.15)
    radii = np.array([rng.uniform(48, 57), rng.uniform(33, 40), rng.uniform(36, 43)]) * scale
    center = rng.normal(0, 4, size=3)
    heart = Heart(center=center, axes=np.stack([u, v, w]), radii=radii)
    fat = rng.uniform(3.5, 8.0)

    torso_center = np.array([center[1] + rng.uniform(25, 45), center[2] - rng.uniform(20, 40)])
    torso_radii = np.array([rng.uniform(100, 130), rng.uniform(150, 185)])
    subcut = rng.uniform(8, 28)
    muscle = rng.uniform(9, 16)
    spine_yx = np.array([torso_center[0] + torso_radii[0] - subcut - muscle - 45, torso_center[1] + rng.normal(0, 4)])

    # Aortic root at the base, a little to the front and right of the long axis.
    root = heart.center - 0.78 * radii[0] * u + 0.18 * radii[1] * v - 0.12 * radii[2] * w
    root_radius = rng.uniform(13, 16)
    top = z_range[1] + 20
    asc_top = np.array([top, root[1] - rng.uniform(0, 10), root[2] - rng.uniform(0, 12)])
    asc = np.array([root, root + [15, 0, 0], asc_top])
    asc_radius = rng.uniform(13, 17)
    desc = np.array([spine_yx[0] - rng.uniform(18, 28), spine_yx[1] + rng.uniform(22, 32)])
    desc_radius = rng.uniform(10, 13)
    p0 = root + 0.9 * radii[1] * v * 0.6 + 18 * w
    pulmonary = np.array([p0, p0 + [25, 10, 8], p0 + [55, 30, 14]])
    svc_x = asc_top[2] - asc_radius - rng.uniform(6, 12)
    svc = np.array([[top, root[1] + 5, svc_x], [root[0] - 10, root[1] + 10, svc_x - 5]])

    anat = Anatomy(
        heart=heart, fat=fat, torso_center=torso_center, torso_radii=torso_radii, subcut=subcut,
        muscle=muscle, spine_yx=spine_yx, aortic_root=root, root_radius=root_radius, asc_aorta=asc,
        asc_radius=asc_radius, desc_aorta_yx=desc, desc_radius=desc_radius, pulmonary=pulmonary, svc=svc,
    )
    anat.tissue = {
        "fat": rng.uniform(-110, -85),
        "blood": rng.uniform(32, 48),
        "muscle": rng.uniform(40, 55),
        "lung": rng.uniform(-870, -820),
        "cortical": rng.uniform(700, 1300),
        "cancellous": rng.uniform(160, 280),
        "cartilage": rng.uniform(80, 125),
    }
    anat.sternum_yx = np.array([torso_center[0] - torso_radii[0] + subcut + muscle * 0.3 + 8, torso_center[1]])
    anat.ribs = sample_ribs(rng, anat, z_range)
    sample_coronaries(rng, anat)
    return anat


def sample_ribs(rng, anat: Anatomy, z_range) -> list:
    cy, cx = anat.torso_center
    ry = anat.torso_radii[0] - anat.subcut - anat.muscle * 0.5
    rx = anat.torso_radii[1] - anat.subcut - anat.muscle * 0.5
    ribs = []
    z = z_range[1] + rng.uniform(0, 25)
    gap = rng.uniform(22, 30)
    while z > z_range[0] - 80:
        drop = rng.uniform(35, 60)
        for side in (-1, 1):
            theta = np.linspace(np.deg2rad(155), np.deg2rad(30), 60)
            zz = z - drop * (np.deg2rad(155) - theta) / np.deg2rad(125)
            pts = np.column_stack([zz, cy - ry * np.cos(theta), cx + side * rx * np.sin(theta)])
            t2 = np.linspace(np.deg2rad(30), np.deg2rad(7), 12)
            zc = zz[-1] - rng.uniform(3, 10) * (np.deg2rad(30) - t2) / np.deg2rad(23)
            cart = np.column_stack([zc, cy - (ry - 4) * np.cos(t2), cx + side * rx * np.sin(t2)])
            ribs.append((pts, cart))
        z -= gap
    return ribs


def _wiggle(rng, n, amp) -> np.ndarray:
    t = np.linspace(0, 1, n)
    out = np.zeros((n, 3))
    for i in range(3):
        f = rng.uniform(1.5, 4.0)
        out[:, i] = amp * np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi))
    return out


def sample_coronaries(rng, anat: Anatomy) -> None:
    h = anat.heart
    off = anat.fat * 0.5
    s_av = rng.uniform(-0.48, -0.36)
    anat.s_av = s_av
    phi_lad = np.deg2rad(rng.uniform(12, 32))
    bif = h.surface(s_av, phi_lad, off)

    # LAD: down the anterior interventricular groove to the apex.
    s = np.linspace(s_av, rng.uniform(0.85, 0.97), 80)
    lad = h.surface(s, phi_lad + np.deg2rad(rng.uniform(-8, 8)) * (s - s_av), off) + _wiggle(rng, 80, 1.0)
    # LCX: along the left AV groove to the back.
    phi = phi_lad + np.deg2rad(np.linspace(12, rng.uniform(110, 160), 70))
    lcx = h.surface(s_av + 0.04 * np.sin(np.linspace(0, np.pi, 70)), phi, off) + _wiggle(rng, 70, 0.8)
    lcx = np.vstack([bif, lcx])
    # RCA: from the right sinus along the right AV groove to the back.
    phi = np.deg2rad(np.linspace(-18, -rng.uniform(150, 195), 90))
    rca_groove = h.surface(s_av + 0.06 * np.sin(np.linspace(0, np.pi, 90)), phi, off) + _wiggle(rng, 90, 0.8)
    root, rr = anat.aortic_root, anat.root_radius
    right_ostium = root + rr * unit(rca_groove[0] - root)
    left_ostium = root + rr * unit(bif - root)
    rca = np.vstack([right_ostium, rca_groove])
    lm = np.vstack([left_ostium, 0.5 * (left_ostium + bif) + unit(h.axes[1]) * 2.0, bif])

    def tapered(points, r0, r1, step=0.6):
        pts, t = resample_polyline(points, step)
        frac = t / max(t[-1], 1e-6)
        return pts, r0 + (r1 - r0) * frac

    r_lm = rng.uniform(1.6, 2.0)
    anat.coronaries = {
        1: tapered(lm, r_lm, r_lm * 0.95),
        2: tapered(np.vstack([bif, lad]), r_lm * 0.9, rng.uniform(0.7, 0.9)),
        3: tapered(lcx, r_lm * 0.85, rng.uniform(0.8, 1.0)),
        4: tapered(rca, rng.uniform(1.5, 2.0), rng.uniform(0.9, 1.1)),
    }


def draw_ribs(canvas: Canvas, ribs, t) -> None:
    """Ribs (cortex and marrow tubes) and their costal cartilage, in the order both variants draw them."""
    for rib, cart in ribs:
        pts, _ = resample_polyline(rib, 3.0)
        canvas.tube(pts, 5.0, t["cortical"] * 0.85)
        canvas.tube(pts, 3.2, t["cancellous"])
        cpts, _ = resample_polyline(cart, 3.0)
        canvas.tube(cpts, 4.0, t["cartilage"])


def draw_anatomy(canvas: Canvas, anat: Anatomy, rng: np.random.Generator) -> None:
    """Draw the tissues (no calcium) into ``canvas.hu``, back to front."""
    t = anat.tissue
    cy, cx = anat.torso_center
    ry, rx = anat.torso_radii
    # Body: subcutaneous fat, muscle, then the thoracic cavity (lung).
    canvas.ellipse_cylinder((cy, cx), (ry, rx), t["fat"])
    canvas.ellipse_cylinder((cy, cx), (ry - anat.subcut, rx - anat.subcut), t["muscle"])
    inner = (ry - anat.subcut - anat.muscle, rx - anat.subcut - anat.muscle)
    canvas.ellipse_cylinder((cy, cx), inner, t["lung"])
    # Lung vessels: small soft blobs.
    for _ in range(300):
        p = np.array([rng.uniform(*canvas.axes[0][[0, -1]]), cy + rng.uniform(-1, 1) * inner[0] * 0.8,
                      cx + rng.uniform(-1, 1) * inner[1] * 0.85])
        canvas.tube(p[None], rng.uniform(0.8, 2.5), rng.uniform(-150, 40))

    h = anat.heart
    # Liver and diaphragm dome under the heart, on the right.
    canvas.ellipsoid_layers(
        np.array([h.center[0] - h.radii[0] - 45, cy + 5, cx - 35]), np.eye(3), np.array([75.0, 95.0, 120.0]),
        [(0.0, t["muscle"] + 10)],
    )
    # Mediastinum: fat from the sternum to the spine around heart and vessels.
    med_y = 0.5 * (anat.sternum_yx[0] + anat.spine_yx[0])
    canvas.ellipse_cylinder((med_y, h.center[2] - 12), ((anat.spine_yx[0] - anat.sternum_yx[0]) * 0.5 + 4,
                                                             h.radii[2] - 2), t["fat"])
    # Paraspinal muscles and spine.
    sy, sx = anat.spine_yx
    for side in (-1, 1):
        canvas.ellipse_cylinder((sy + 32, sx + side * 28), (20, 17), t["muscle"])
    canvas.ellipse_cylinder((sy + 26, sx), (13, 12), t["cortical"] * 0.8)  # posterior arch
    canvas.ellipse_cylinder((sy + 48, sx), (14, 4.5), t["cortical"] * 0.8)  # spinous process
    canvas.ellipse_cylinder((sy + 26, sx), (8, 7.5), 15.0)  # spinal canal (CSF)
    canvas.ellipse_cylinder((sy, sx), (15, 19), t["cortical"])
    canvas.ellipse_cylinder((sy, sx), (13.5, 17.5), t["cancellous"])
    z0 = canvas.axes[0][0] - rng.uniform(0, 28)
    for zd in np.arange(z0, canvas.axes[0][-1] + 30, rng.uniform(26, 31)):
        canvas.ellipse_cylinder((sy, sx), (15.5, 19.5), 85.0, z_range=(zd, zd + 6))

    # Great vessels (blood, with a thin fat margin) and the heart.
    desc = anat.desc_aorta_yx
    canvas.ellipse_cylinder((desc[0], desc[1]), (anat.desc_radius + 2, anat.desc_radius + 2), t["fat"])
    canvas.ellipse_cylinder((desc[0], desc[1]), (anat.desc_radius, anat.desc_radius), t["blood"])
    # Pericardium (thin, soft tissue), epicardial fat, then the heart itself.
    canvas.ellipsoid_layers(h.center, h.axes, h.radii,
                            [(anat.fat + 1.2, 25.0), (anat.fat, t["fat"]), (0.0, t["blood"])])
    asc, _ = resample_polyline(anat.asc_aorta, 4.0)
    canvas.tube(asc, anat.asc_radius, t["blood"])
    canvas.tube(anat.aortic_root[None], anat.root_radius, t["blood"])
    pul, _ = resample_polyline(anat.pulmonary, 4.0)
    canvas.tube(pul, 12.0, t["blood"])
    svc, _ = resample_polyline(anat.svc, 4.0)
    canvas.tube(svc, 9.0, t["blood"])

    # Coronary arteries (blood in the epicardial fat).
    for pts, radii in anat.coronaries.values():
        canvas.small_tube(pts, radii, t["blood"])

    # Ribs (cortex and marrow), costal cartilage and the sternum.
    draw_ribs(canvas, anat.ribs, t)
    st_y, st_x = anat.sternum_yx
    canvas.ellipse_cylinder((st_y, st_x), (7, 16), t["cortical"] * 0.8)
    canvas.ellipse_cylinder((st_y, st_x), (5.5, 14.5), t["cancellous"])
