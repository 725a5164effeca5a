"""The "varied" phantom generator: far more anatomy and scanner variety (private).

``generate_phantom(seed, variant="varied")`` uses the steps of this module (:class:`VariedSteps`,
registered in :mod:`cacnet.phantom._variants`) instead of the default ones: heart, fat, body and field
of view, scanner and look-alikes all drawn from the case's seed. Plaques, the category loop, the exact
truth rule and the annotation points are shared (:mod:`cacnet.phantom._truth`,
:mod:`cacnet.phantom._generate`), so the labels follow the same rule (1 LM, 2 LAD, 3 LCX, 4 RCA).

See docs/phantoms.md ("A generator that varies far more") for what varies and by how much.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
from scipy import fft as sfft
from scipy import ndimage, sparse

from ._anatomy import Anatomy, Heart, draw_ribs, resample_polyline, sample_coronaries, sample_ribs, unit
from ._base import ORIENTATIONS, Acquisition, PhantomSteps, blur
from ._calcium import LOOKALIKES, Calcification, perpendicular, sample_lookalikes
from ._canvas import Canvas, Grid

__all__ = ["VariedAcquisition", "VariedAnatomy", "VariedSteps", "KERNELS", "VARIED_LOOKALIKES",
           "sample_varied_acquisition", "sample_varied_anatomy", "draw_varied_anatomy",
           "sample_varied_lookalikes", "shaped_noise", "streak_image", "heart_fields", "describe_case"]

#: Kernel families: (probability, PSF sigma mm, edge overshoot, noise SD HU), ranges drawn uniformly.
#: Noise ranges bracket the local SD measured in soft tissue of the real scans in shared/data/real-ct
#: (B10f 7 HU, B20f 8, B40f 12, STANDARD 10-18, FC17 19-26, B70f 43 at 8 mm, Philips "L" 63 at 5 mm)
#: and the 10-30 HU of low-dose calcium-score protocols.
KERNELS: dict[str, tuple[float, tuple[float, float], tuple[float, float], tuple[float, float]]] = {
    "very_soft": (0.12, (0.85, 1.3), (0.0, 0.0), (5.0, 15.0)),  # B10f, FC02, SOFT
    "soft": (0.28, (0.6, 0.9), (0.0, 0.2), (7.0, 25.0)),  # B20f-B30f, FC12-FC17, Qr32
    "standard": (0.30, (0.45, 0.65), (0.2, 0.5), (10.0, 32.0)),  # B35f, STANDARD, "B"
    "sharp": (0.15, (0.35, 0.5), (0.5, 0.9), (20.0, 50.0)),  # B45f-B50f, BONE
    "lung": (0.15, (0.25, 0.4), (0.9, 1.6), (35.0, 70.0)),  # B60f-B70f, LUNG, "L"
}

#: Look-alike kinds of this variant and the :data:`LOOKALIKES` id each is stored with.
VARIED_LOOKALIKES: dict[str, int] = {
    "aortic_wall": LOOKALIKES["aortic_wall"],
    "aortic_root": LOOKALIKES["aortic_wall"],
    "aortic_valve": LOOKALIKES["aortic_valve"],
    "mitral_annulus": LOOKALIKES["mitral_annulus"],
    "pericardium": LOOKALIKES["pericardium"],
    "costal_cartilage": LOOKALIKES["costal_cartilage"],
    "pacing_lead": LOOKALIKES["pacing_lead"],
    "sternal_wire": LOOKALIKES["pacing_lead"],
}

_MU_WATER = 0.019  # 1/mm, water at the effective energy of a 120 kVp beam
_METAL_HU = 2000.0  # calcium-layer values above this are metal (pacing leads, wires)
_METAL_MU = 12.0  # metal attenuation above soft tissue, in units of water


@dataclass
class VariedAcquisition(Acquisition):
    """Scanner settings of a varied case (adds to :class:`Acquisition`).

    ``kernel`` is a :data:`KERNELS` family; ``fov`` is ``"heart"`` or
    ``"chest"`` and ``fov_mm`` the width of the field of view;
    ``noise_exponent`` the slope of the noise power spectrum before the
    kernel (1 = the ramp of filtered back-projection); ``beam_hardening`` and
    ``starvation`` scale the streak model (:func:`streak_image`).
    """

    fov: str
    fov_mm: float
    noise_exponent: float
    beam_hardening: float
    starvation: float


def sample_varied_acquisition(rng: np.random.Generator, size: int) -> VariedAcquisition:
    """Draw the scanner settings of a varied case.

    Parameters
    ----------
    rng : numpy.random.Generator
    size : int
        In-plane matrix; the pixel is the field of view over it.

    Returns
    -------
    VariedAcquisition
    """
    chest = rng.random() < 0.4
    fov_mm = float(rng.uniform(340, 480) if chest else rng.uniform(150, 250))
    thickness = float(rng.choice([2.5, 3.0, 4.0, 5.0], p=[0.3, 0.3, 0.1, 0.3]))
    if thickness <= 3.0 and rng.random() < 0.15:
        increment = thickness / 2
    elif thickness == 5.0 and rng.random() < 0.15:
        increment = 4.0
    else:
        increment = thickness
    coverage = float(rng.uniform(110, 175))
    n = int(min(coverage / increment, 96)) + 1
    names = list(KERNELS)
    kernel = str(rng.choice(names, p=[KERNELS[k][0] for k in names]))
    _, psf, sharpen, noise = KERNELS[kernel]
    orient = list(ORIENTATIONS)
    return VariedAcquisition(
        pixel_mm=float(np.float32(round(fov_mm / size, 4))),
        thickness_mm=thickness,
        increment_mm=increment,
        n_slices=n,
        psf_mm=float(rng.uniform(*psf)),
        kernel=kernel,
        sharpen=float(rng.uniform(*sharpen)),
        noise_sd=float(rng.uniform(*noise)),
        hu_offset=float(np.clip(rng.normal(0, 9), -22, 22)),
        orientation="identity" if rng.random() < 0.6 else str(rng.choice(orient[1:])),
        fov="chest" if chest else "heart",
        fov_mm=fov_mm,
        noise_exponent=float(rng.uniform(0.6, 1.0)),
        beam_hardening=float(rng.uniform(0, 1)) if rng.random() < 0.85 else 0.0,
        starvation=float(rng.uniform(0, 1)) if rng.random() < 0.85 else 0.0,
    )


# -- anatomy ----------------------------------------------------------------------------

@dataclass
class VariedAnatomy(Anatomy):
    """A varied patient (adds to :class:`cacnet.phantom._anatomy.Anatomy`; mm, LPS, (z, y, x)).

    ``heart`` is the ventricular envelope; ``bulges`` the atria (center,
    axes, radii); ``cavities`` the blood pools; ``fat_field`` the parameters
    of the epicardial fat and groove fields (:func:`heart_fields`).
    """

    bulges: list = field(default_factory=list)
    cavities: list = field(default_factory=list)
    fat_field: dict = field(default_factory=dict)
    fat_pads: list = field(default_factory=list)
    midline_x: float = 0.0
    adiposity: float = 0.5
    vascular_age: float = 0.5
    arch: Any = None  # polyline over the arch and the descending aorta
    pulmonary_branches: list = field(default_factory=list)
    pulmonary_veins: list = field(default_factory=list)
    trachea: Any = None  # (trachea polyline, [bronchus polylines])
    esophagus: Any = None  # (polyline, radius, air radius)
    azygos: Any = None
    ivc: Any = None
    liver: Any = None
    stomach: Any = None
    breasts: list = field(default_factory=list)
    arms: list = field(default_factory=list)
    scapulae: list = field(default_factory=list)
    couch: Any = None
    spine: dict = field(default_factory=dict)
    sternum_radii: Any = None
    sternal_wires: bool = False
    lung_gradient: float = 0.0
    draw_seed: int = 0
    z_range: tuple = (0.0, 0.0)


def _heart_axes(rng: np.random.Generator) -> np.ndarray:
    """Rows u (base -> apex), v (anterior), w (patient left) of a sampled heart orientation."""
    alpha = np.deg2rad(rng.uniform(35, 70))  # from the sagittal plane towards the left
    beta = np.deg2rad(rng.uniform(12, 45))  # below the axial plane
    u = np.array([-np.sin(beta), -np.cos(beta) * np.cos(alpha), np.cos(beta) * np.sin(alpha)])
    front = np.array([0.0, -1.0, 0.0])
    v0 = unit(front - front.dot(u) * u)
    w0 = np.cross(u, v0)
    if w0[2] < 0:
        w0 = -w0
    g = np.deg2rad(rng.uniform(-20, 20))
    v = np.cos(g) * v0 + np.sin(g) * w0
    w = -np.sin(g) * v0 + np.cos(g) * w0
    return np.stack([u, v, w])


def _heart_coords(h: Heart, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(s, phi) of points projected radially on the heart ellipsoid (see :meth:`Heart.surface`)."""
    t = ((np.asarray(points) - h.center) @ h.axes.T) / h.radii
    rho = np.maximum(np.linalg.norm(t, axis=-1), 1e-6)
    return t[..., 0] / rho, np.arctan2(t[..., 2], t[..., 1])


def _frame(h: Heart, s: float, phi: float, radial: float) -> np.ndarray:
    """A point inside the heart: ``radial`` of the way from the long axis to the surface at (s, phi)."""
    ring = math.sqrt(max(1 - s * s, 0.0))
    u, v, w = h.axes
    a, b, c = h.radii
    return h.center + a * s * u + radial * ring * (b * math.cos(phi) * v + c * math.sin(phi) * w)


def _dphi(a, b):
    return (a - b + np.pi) % (2 * np.pi) - np.pi


def heart_fields(ff: dict, s: np.ndarray, phi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Groove depth and epicardial fat thickness at heart coordinates.

    The grooves (atrioventricular ring at ``s_av``, anterior interventricular
    groove along the LAD, posterior one opposite) indent the myocardium; the
    fat is thicker in them, over the RV and at the apex, thin over the LV
    lateral wall, and uneven.

    Parameters
    ----------
    ff : dict
        ``VariedAnatomy.fat_field``.
    s, phi : numpy.ndarray
        Position along the long axis (-1 base, 1 apex) and around it
        (radians, 0 in front, +pi/2 on the patient's left), as in
        :meth:`cacnet.phantom._anatomy.Heart.surface`.

    Returns
    -------
    dent, fat : numpy.ndarray of float32
        Millimetres, the shape of ``s``.
    """
    av = np.exp(-((s - ff["s_av"]) / ff["sigma_s"]) ** 2)
    ventricle = np.clip((s - ff["s_av"]) / 0.1 + 0.5, 0.0, 1.0)
    lad_phi = np.interp(s, ff["lad_s"], ff["lad_phi"])
    iv = np.exp(-(_dphi(phi, lad_phi) / ff["sigma_phi"]) ** 2) * ventricle
    piv = np.exp(-(_dphi(phi, ff["piv_phi"]) / ff["sigma_phi"]) ** 2) * ventricle * np.clip((0.9 - s) / 0.3, 0, 1)
    groove = np.maximum(av, np.maximum(iv, piv))
    dent = ff["dent_av"] * av + ff["dent_iv"] * np.maximum(iv, piv)
    uneven = 1.0 + sum(a * np.sin(fs * np.pi * s + fp * phi + ph) for a, fs, fp, ph in ff["waves"])
    uneven *= 1.0 - ff["lateral_thin"] * np.exp(-(_dphi(phi, ff["lateral_phi"]) / 0.8) ** 2)  # thin over the LV
    fat = (ff["base"] * np.clip(uneven, 0.0, None) + ff["apex"] * np.clip((s - 0.55) / 0.45, 0, 1)
           + ff["rv"] * np.exp(-(_dphi(phi, ff["rv_phi"]) / 0.9) ** 2) * ventricle + ff["groove"] * groove)
    return dent.astype(np.float32), fat.astype(np.float32)


def sample_varied_anatomy(rng: np.random.Generator, z_range: tuple[float, float],
                          vascular_age: float = 0.5) -> VariedAnatomy:
    """Sample one varied patient around a heart centred near the origin.

    Parameters
    ----------
    rng : numpy.random.Generator
    z_range : tuple of float
        (first, last) slice position of the scan, mm.
    vascular_age : float, default 0.5
        In [0, 1]: widens the aorta (and, in :func:`sample_varied_lookalikes`,
        calcifies it more).

    Returns
    -------
    VariedAnatomy
        Positions in patient LPS mm, (z, y, x).
    """
    adip = float(rng.beta(2.0, 2.2))
    age = float(vascular_age)
    axes = _heart_axes(rng)
    scale = float(np.clip(rng.lognormal(0.02, 0.1), 0.82, 1.35))
    radii = np.array([rng.uniform(50, 62), rng.uniform(35, 44), rng.uniform(39, 49)]) * scale
    heart = Heart(center=rng.normal(0, 5, size=3), axes=axes, radii=radii)
    u, v, w = axes
    off = float(rng.uniform(0.6, 2.4))  # coronary centre outside the myocardial envelope (mm)

    root = heart.center - 0.78 * radii[0] * u + 0.18 * radii[1] * v - 0.12 * radii[2] * w + rng.normal(0, 2, 3)
    root_radius = float(rng.uniform(12.5, 16.5))
    asc_radius = float(rng.uniform(13, 16) + 6 * age * rng.random())
    top = z_range[1]
    # Atria: LA at the back, RA on the right, both above the AV plane.
    la_c = _frame(heart, -0.72 + rng.uniform(-0.05, 0.05), np.pi + np.deg2rad(rng.uniform(-15, 15)), 0.9)
    la_r = np.array([0.3 * radii[0], 0.45 * radii[1], 0.55 * radii[2]]) * rng.uniform(0.85, 1.25)
    ra_c = _frame(heart, -0.55 + rng.uniform(-0.05, 0.05), np.deg2rad(-100 + rng.uniform(-15, 15)), 0.85)
    ra_r = np.array([0.32 * radii[0], 0.42 * radii[1], 0.4 * radii[2]]) * rng.uniform(0.85, 1.25)
    bulges = [(la_c, axes, la_r), (ra_c, axes, ra_r)]

    # The heart's extent, for placing what is around it.
    grid = np.meshgrid(np.linspace(-1, 1, 21), np.linspace(-np.pi, np.pi, 36))
    pts = np.concatenate([heart.surface(*grid).reshape(-1, 3)] + [_ellipsoid_points(c, ax, r) for c, ax, r in bulges])
    fat_base = 0.5 + 6.0 * adip * rng.uniform(0.5, 1.3)
    y_back = float(pts[:, 1].max()) + 2.0
    y_front = float(pts[:, 1].min()) - fat_base - 2.0
    midline = float(heart.center[2] - rng.uniform(10, 45))

    # Behind the heart: esophagus, descending aorta, spine; in front: sternum and chest wall.
    desc_radius = float(rng.uniform(10, 13) + 3 * age * rng.random())
    desc_yx = np.array([y_back + rng.uniform(2, 12) + desc_radius, midline + rng.uniform(15, 32)])
    body_r = np.array([rng.uniform(13, 17), rng.uniform(16, 21)])
    spine_yx = np.array([max(y_back + rng.uniform(10, 28), desc_yx[0] - 6) + body_r[0], midline + rng.normal(0, 3)])
    sternum_r = np.array([rng.uniform(5.5, 8.0), rng.uniform(12, 18)])
    sternum_yx = np.array([y_front - rng.uniform(3, 25) - sternum_r[0], midline + rng.normal(0, 4)])
    subcut = float(5 + 38 * adip * rng.uniform(0.6, 1.3))
    muscle = float(rng.uniform(7, 16))
    back = spine_yx[0] + body_r[0] + 45 + rng.uniform(10, 25) + subcut
    front = sternum_yx[0] - sternum_r[0] - muscle * 0.6 - subcut
    torso_center = np.array([(back + front) / 2, midline])
    half_width = max((back - front) / 2 * rng.uniform(1.2, 1.5),
                     float(np.abs(pts[:, 2] - midline).max()) + 25 + subcut + muscle)
    torso_radii = np.array([(back - front) / 2, half_width])

    asc_top = np.array([top + 20, root[1] - rng.uniform(-4, 10), root[2] - rng.uniform(0, 14)])
    asc = np.array([root, root + [15, rng.normal(0, 2), rng.normal(-2, 2)], asc_top])
    # The arch: over the top of the ascending aorta to the descending one, when it is in the field.
    z_arch = float(root[0] + rng.uniform(45, 80))
    desc_top = np.array([z_arch - 10, desc_yx[0], desc_yx[1]])
    bottom = z_range[0] - 40
    desc = np.array([desc_top, [0.5 * (z_arch + bottom), desc_yx[0] + rng.normal(0, 3), desc_yx[1] + rng.normal(0, 3)],
                     [bottom, desc_yx[0] + rng.normal(0, 4), desc_yx[1] - rng.uniform(0, 12)]])
    if z_arch < top + 30:
        a_top = np.array([z_arch, *asc_top[1:]])
        asc = np.array([root, root + [15, 0, 0], a_top])
        mid = np.array([z_arch + rng.uniform(8, 15), 0.5 * (a_top[1] + desc_top[1]), 0.5 * (a_top[2] + desc_top[2])])
        arch = np.vstack([resample_polyline(np.array([a_top, mid, desc_top]), 4.0)[0], desc[1:]])
    else:
        arch = desc

    p0 = root + 0.55 * radii[1] * v + rng.uniform(12, 22) * w
    bif = p0 + [rng.uniform(35, 50), rng.uniform(15, 30), rng.uniform(5, 15)]
    pulmonary = np.array([p0, p0 + [20, 6, 6], bif])
    lpa = np.array([bif, bif + [rng.uniform(0, 10), rng.uniform(20, 35), rng.uniform(25, 40)]])
    rpa = np.array([bif, [bif[0] - rng.uniform(0, 8), asc_top[1] + asc_radius + 8, root[2] - rng.uniform(45, 65)]])
    svc_x = root[2] - asc_radius - rng.uniform(8, 16)
    svc = np.array([[top + 20, root[1] + rng.uniform(0, 10), svc_x], [ra_c[0] + 5, ra_c[1], ra_c[2]]])
    veins = []
    for side, sign in ((la_c, 1), (la_c, -1)):
        for dz in (-8, 8):
            start = side + [dz, 0, sign * la_r[2] * 0.6]
            veins.append(np.array([start, start + [rng.normal(0, 5), rng.uniform(0, 12), sign * rng.uniform(20, 35)]]))

    carina = np.array([root[0] + rng.uniform(30, 55), asc_top[1] + asc_radius + rng.uniform(5, 15), midline])
    bronchi = [np.array([carina, carina + [-15, 5, sign * 20], carina + [-30, 10, sign * 40]]) for sign in (-1, 1)]
    trachea = (np.array([[top + 30, carina[1] - 5, midline], carina]), bronchi)

    anat = VariedAnatomy(
        heart=heart, fat=2 * off, torso_center=torso_center, torso_radii=torso_radii, subcut=subcut,
        muscle=muscle, spine_yx=spine_yx, aortic_root=root, root_radius=root_radius, asc_aorta=asc,
        asc_radius=asc_radius, desc_aorta_yx=desc_yx, desc_radius=desc_radius, pulmonary=pulmonary, svc=svc,
    )
    anat.bulges = bulges
    anat.midline_x, anat.adiposity, anat.vascular_age = midline, adip, age
    anat.arch = arch
    anat.pulmonary_branches = [lpa, rpa]
    anat.pulmonary_veins = veins
    anat.trachea = trachea
    e_y = y_back + rng.uniform(1, 6) + 8
    anat.esophagus = (np.array([[top + 30, e_y, midline + rng.uniform(0, 12)],
                                [bottom, e_y + rng.normal(0, 3), midline + rng.uniform(5, 25)]]),
                      float(rng.uniform(6, 9)), float(rng.uniform(0, 3.5)) if rng.random() < 0.5 else 0.0)
    anat.azygos = (np.array([[top + 20, spine_yx[0] - body_r[0] + 2, midline - rng.uniform(8, 16)],
                             [bottom, spine_yx[0] - body_r[0] + 2, midline - rng.uniform(8, 16)]]),
                   float(rng.uniform(3, 5)))
    z_diaph = float(heart.center[0] - rng.uniform(15, 45))
    anat.liver = (np.array([z_diaph - 85, torso_center[0] + 5, midline - rng.uniform(20, 50)]),
                  np.array([90.0, torso_radii[0] * 0.8, torso_radii[1] * 0.75]))
    anat.ivc = np.array([[z_diaph - 60, ra_c[1] + 10, ra_c[2] + 5], ra_c])
    anat.stomach = (np.array([z_diaph - 40 - rng.uniform(0, 30), torso_center[0] - 10, midline + rng.uniform(50, 90)]),
                    np.array([40.0, 45.0, 40.0]) * rng.uniform(0.7, 1.2), bool(rng.random() < 0.6))
    anat.spine = {"body_r": body_r, "disc_gap": float(rng.uniform(26, 31)), "disc_z0": float(rng.uniform(0, 28)),
                  "arch_r": np.array([rng.uniform(11, 14), rng.uniform(10, 13)])}
    anat.sternum_yx = sternum_yx
    anat.sternum_radii = sternum_r
    anat.tissue = {
        "fat": rng.uniform(-120, -80),
        "blood": rng.uniform(28, 50),
        "muscle": rng.uniform(35, 60),
        "lung": rng.uniform(-900, -790),
        "cortical": rng.uniform(600, 1400),
        "cancellous": rng.uniform(120, 320),
        "cartilage": rng.uniform(70, 130),
        "pericardium": rng.uniform(15, 45),
        "liver": rng.uniform(45, 70),
    }
    anat.tissue["myocardium"] = anat.tissue["blood"] + rng.uniform(-2, 12)
    anat.lung_gradient = float(rng.uniform(0, 120))
    # The default's ribs, sloping more steeply (about 2x) down towards the front, as real ribs do:
    # an axial slice cuts several short rib sections per side instead of long arcs.
    ribs = sample_ribs(rng, anat, (z_range[0], z_range[1] + 120))
    steep = float(rng.uniform(1.8, 2.6))
    anat.ribs = []
    for rib, cart in ribs:
        z0 = rib[0, 0]
        anat.ribs.append((np.column_stack([z0 - (z0 - rib[:, 0]) * steep, rib[:, 1:]]),
                          np.column_stack([z0 - (z0 - cart[:, 0]) * steep, cart[:, 1:]])))

    # Coronaries: the default's paths on this heart, then the fields that put them in fat-filled grooves.
    sample_coronaries(rng, anat)
    lad_pts = anat.coronaries[2][0]
    s_l, phi_l = _heart_coords(heart, lad_pts)
    order = np.argsort(s_l)
    lad_phi = np.unwrap(phi_l[order])
    r_max = max(float(r.max()) for _, r in anat.coronaries.values())
    sleeve = float(rng.uniform(0.8, 2.0) + 1.5 * adip)
    need = off + r_max + sleeve + 0.5
    anat.fat_field = {
        "s_av": anat.s_av, "sigma_s": float(rng.uniform(0.08, 0.12)), "lad_s": s_l[order], "lad_phi": lad_phi,
        "piv_phi": float(np.median(phi_l) + np.pi + np.deg2rad(rng.uniform(-20, 20))),
        "sigma_phi": float(rng.uniform(0.18, 0.3)), "dent_av": float(rng.uniform(2.5, 6.0)),
        "dent_iv": float(rng.uniform(2.0, 5.0)), "base": fat_base,
        "waves": [(float(rng.uniform(0, 0.6)), float(rng.uniform(0.5, 3)), float(rng.integers(1, 4)),
                   float(rng.uniform(0, 2 * np.pi))) for _ in range(3)],
        "apex": float(rng.uniform(0, 10) * adip), "rv": float(rng.uniform(0, 6) * adip),
        "rv_phi": float(np.deg2rad(rng.uniform(-90, -30))),
        "lateral_phi": float(np.median(phi_l) + np.deg2rad(rng.uniform(80, 120))),
        "lateral_thin": float(rng.uniform(0.4, 1.0)),
        "groove": float(max(need / 0.8 - fat_base, 0) + rng.uniform(0, 5) * adip),
        "pericardium": float(rng.uniform(0.8, 2.2)), "blend": float(rng.uniform(4, 12)), "sleeve": sleeve,
        "vessel_fat": float(rng.uniform(2, 6) + 10 * adip),
    }
    # Cavities: LV (thick wall), crescent RV against the septum, atria inside their bulges.
    phi_sept = float(np.median(lad_phi))
    phi_lv = phi_sept + np.deg2rad(rng.uniform(80, 100))
    phi_rv = phi_sept - np.deg2rad(rng.uniform(80, 100))
    bc = 0.5 * (radii[1] + radii[2])
    lv_scale = rng.uniform(0.88, 1.12)
    cav = [(_frame(heart, 0.15, phi_lv, 0.22), axes, np.array([0.6 * radii[0], 0.46 * radii[1], 0.46 * radii[2]]) * lv_scale)]
    radial = unit(math.cos(phi_rv) * radii[1] * v + math.sin(phi_rv) * radii[2] * w)
    rv_axes = np.stack([u, radial, unit(np.cross(u, radial))])
    cav.append((_frame(heart, 0.05, phi_rv, 0.64), rv_axes,
                np.array([0.5 * radii[0], 0.19 * bc, 0.55 * bc]) * rng.uniform(0.9, 1.1)))
    for c, ax, r in bulges:
        cav.append((c, ax, np.maximum(r - rng.uniform(2, 3.5), 3.0)))
    anat.cavities = cav
    # Paracardiac fat pads at the cardiophrenic angles and in front of the RV.
    pads = []
    for _ in range(int(rng.integers(0, 4))):
        r = np.array([rng.uniform(10, 35), rng.uniform(8, 25), rng.uniform(15, 45)]) * (0.3 + adip)
        s = float(rng.uniform(0.1, 0.8))
        phi = float(np.deg2rad(rng.choice([rng.uniform(-100, -30), rng.uniform(30, 100)])))
        pads.append((heart.surface(s, phi, fat_base + r[1] * 0.4), r))
    anat.fat_pads = pads

    # Body: breasts, arms, scapulae, couch.
    cy, cx = torso_center
    ry, rx = torso_radii
    if rng.random() < 0.45:
        size = rng.uniform(0.5, 1.3) * (0.6 + adip)
        for sign in (-1, 1):
            bx = cx + sign * rx * rng.uniform(0.35, 0.55)
            anat.breasts.append((np.array([heart.center[0] + rng.uniform(-20, 20), cy - ry * 0.8, bx]),
                                 np.array([55.0, 40.0, 55.0]) * size, float(rng.uniform(0.3, 0.7))))
    if rng.random() < 0.3:
        for sign in (-1, 1):
            r_arm = float(rng.uniform(38, 55) * (0.8 + 0.4 * adip))
            anat.arms.append((np.array([cy + rng.uniform(-20, 20), cx + sign * (rx + r_arm + rng.uniform(-5, 20))]),
                              r_arm, float(rng.uniform(10, 13))))
    for sign in (-1, 1):
        # On the back of the rib cage, in muscle that bulges the back; tangent to the body's outline.
        th = np.deg2rad(rng.uniform(35, 60))
        on = np.array([cy + ry * np.cos(th), cx + sign * rx * np.sin(th)])
        normal = unit([np.cos(th) / ry, sign * np.sin(th) / rx])
        anat.scapulae.append((on - normal * (subcut * 0.5 + 6), float(np.arctan2(-ry * np.sin(th), sign * rx * np.cos(th))),
                              float(heart.center[0] + rng.uniform(10, 40))))
    anat.couch = (back + rng.uniform(5, 40), float(rng.uniform(500, 900)), float(rng.uniform(2, 4)),
                  float(rng.uniform(35, 60)), float(rng.uniform(150, 400)))
    anat.draw_seed = int(rng.integers(2**62))
    anat.z_range = (float(z_range[0]), float(z_range[1]))
    return anat


def _ellipsoid_points(center, axes, radii, n: int = 24) -> np.ndarray:
    """Points on an oriented ellipsoid's surface."""
    th, ph = np.meshgrid(np.linspace(0, np.pi, n // 2), np.linspace(-np.pi, np.pi, n))
    local = np.stack([np.cos(th), np.sin(th) * np.cos(ph), np.sin(th) * np.sin(ph)], axis=-1).reshape(-1, 3)
    return center + (local * radii) @ axes


# -- drawing ----------------------------------------------------------------------------

def _smin(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    """Polynomial smooth minimum (<= min): fills the creases between shapes."""
    h = np.clip(0.5 + 0.5 * (b - a) / k, 0.0, 1.0)
    return b * (1 - h) + a * h - k * h * (1 - h)


def _draw_heart(canvas: Canvas, anat: VariedAnatomy) -> None:
    """Pericardium, epicardial fat and myocardium of the envelope and atria, in z slabs."""
    h, ff, t = anat.heart, anat.fat_field, anat.tissue
    shapes = [(h.center, h.axes, h.radii)] + list(anat.bulges)
    pts = np.concatenate([_ellipsoid_points(c, a, r, 36) for c, a, r in shapes])
    grow = (ff["base"] * (1 + sum(w[0] for w in ff["waves"])) + ff["apex"] + ff["rv"] + ff["groove"]
            + ff["pericardium"] + 4)
    b = canvas.box(pts.min(axis=0) - grow, pts.max(axis=0) + grow, (canvas.thickness, 2, 2))
    if b is None:
        return
    step = 8
    for z0 in range(b[0].start, b[0].stop, step):
        box = (slice(z0, min(z0 + step, b[0].stop)), b[1], b[2])
        sd_e, width, (tu, tv, tw) = canvas.ellipsoid_distance(h.center, h.axes, h.radii, box, coords=True)
        rho = np.maximum(np.sqrt(tu * tu + tv * tv + tw * tw), 1e-6)
        dent, fat = heart_fields(ff, tu / rho, np.arctan2(tw, tv))
        del tu, tv, tw, rho
        hard, soft = sd_e, sd_e
        for c, ax, r in anat.bulges:
            sd_b, _, _ = canvas.ellipsoid_distance(c, ax, r, box)
            hard = np.minimum(hard, sd_b)
            soft = _smin(soft, sd_b, ff["blend"])
        for sd, value in ((soft - fat - ff["pericardium"], t["pericardium"]), (soft - fat, t["fat"]),
                          (hard + dent, t["myocardium"])):
            occ = np.clip(0.5 - sd / width, 0.0, 1.0)
            if occ.any():
                canvas.paint(box, occ, value)


def _paint_arc(canvas: Canvas, center_yx, radius: float, thickness: float, half_width: float, value: float) -> None:
    """A curved plate (the couch): a band of a circle's lower arc, ``half_width`` mm either side."""
    y = canvas.axes[1][:, None] - center_yx[0]
    x = canvas.axes[2][None, :] - center_yx[1]
    d = np.sqrt(y * y + x * x) - radius
    px = canvas.spacing[2]
    occ = np.clip(0.5 - (np.abs(d - thickness / 2) - thickness / 2) / px, 0, 1)
    occ *= np.clip(0.5 + (half_width - np.abs(x)) / px, 0, 1) * (y > 0)
    rows = np.flatnonzero(occ.any(axis=1))
    if rows.size:
        occ = occ[rows[0]: rows[-1] + 1].astype(np.float32)
        canvas.paint((slice(None), slice(rows[0], rows[-1] + 1), slice(None)), occ[None], value)


def _lung_vessels(rng: np.random.Generator, anat: VariedAnatomy, z_lo: float, z_hi: float) -> list:
    """Branching vessel trees from the hila: [(points, radii)]."""
    cy, cx = anat.torso_center
    ry, rx = anat.torso_radii - anat.subcut - anat.muscle
    trees = []
    for sign in (-1, 1):
        hilum = np.array([anat.aortic_root[0] + rng.uniform(0, 25), anat.heart.center[1] + rng.uniform(0, 25),
                          anat.midline_x + sign * rng.uniform(35, 55)])
        for _ in range(int(rng.integers(25, 40))):
            p = hilum + rng.normal(0, 8, 3)
            d = unit([rng.normal(0, 0.7), rng.normal(0, 0.6), sign * 1.0])
            r0 = rng.uniform(2.0, 4.5)
            length = rng.uniform(50, 140)
            pts, rads = [], []
            for k in range(int(length / 3)):
                ell = ((p[1] - cy) / ry) ** 2 + ((p[2] - cx) / rx) ** 2
                if ell > 0.85 or not z_lo - 30 < p[0] < z_hi + 30:
                    break
                pts.append(p.copy())
                rads.append(max(r0 * (1 - k * 3 / length), 0.7))
                d = unit(d + rng.normal(0, 0.12, 3))
                p = p + 3 * d
                if k == int(length / 9) and rng.random() < 0.7:  # one side branch
                    d = unit(d + rng.normal(0, 0.5, 3))
            if len(pts) > 1:
                trees.append((np.array(pts), np.array(rads)))
    return trees


def draw_varied_anatomy(canvas: Canvas, anat: VariedAnatomy, rng: np.random.Generator, coarse: bool = False) -> None:
    """Draw the tissues of a varied patient (no calcium) into ``canvas.hu``, back to front.

    Parameters
    ----------
    canvas : Canvas
    anat : VariedAnatomy
    rng : numpy.random.Generator
        For the lung vessels and small texture (seeded from
        ``anat.draw_seed`` by :class:`VariedSteps`).
    coarse : bool, default False
        Leave out what is too small to matter on a coarse grid (lung
        vessels, coronaries, bone texture), for :func:`streak_image`.
    """
    t = anat.tissue
    cy, cx = anat.torso_center
    ry, rx = anat.torso_radii
    z_lo, z_hi = anat.z_range
    back_y, r_couch, thick, gap, couch_hu = anat.couch
    for dy, hu in ((0.0, couch_hu), (gap, couch_hu * 0.7)):
        _paint_arc(canvas, (back_y + dy - r_couch, cx), r_couch, thick, 240.0, hu)
    for yx, r_arm, r_bone in anat.arms:
        canvas.ellipse_cylinder(yx, (r_arm, r_arm * 0.9), t["fat"])
        canvas.ellipse_cylinder(yx, (r_arm - 8, r_arm * 0.9 - 8), t["muscle"])
        canvas.ellipse_cylinder(yx, (r_bone, r_bone), t["cortical"])
        canvas.ellipse_cylinder(yx, (r_bone - 2.5, r_bone - 2.5), t["fat"] + 60)
    for c, r, gland in anat.breasts:
        canvas.ellipsoid_layers(c, np.eye(3), r, [(0.0, t["fat"]), (-r.min() * (1 - gland), t["fat"] + 90)], tight=True)
    # Body wall, pectoral muscles, thoracic cavity.
    canvas.ellipse_cylinder((cy, cx), (ry, rx), t["fat"])
    canvas.ellipse_cylinder((cy, cx), (ry - anat.subcut, rx - anat.subcut), t["muscle"])
    for sign in (-1, 1):
        canvas.ellipse_cylinder((cy - ry + anat.subcut + 8, cx + sign * rx * 0.45), (12, rx * 0.35), t["muscle"],
                                angle=sign * 0.25)
    for yx, ang, z0 in anat.scapulae:
        canvas.ellipse_cylinder(yx, (14.0, 58.0), t["muscle"], z_range=(z0, z_hi + 60), angle=ang)
        canvas.ellipse_cylinder(yx, (3.5, 45.0), t["cortical"] * 0.7, z_range=(z0 + 5, z_hi + 60), angle=ang)
    inner = (ry - anat.subcut - anat.muscle, rx - anat.subcut - anat.muscle)
    canvas.ellipse_cylinder((cy, cx), inner, t["lung"])
    # Dependent lung density: denser towards the back.
    rows = canvas.index_range(1, cy - inner[0], cy + inner[0])
    if anat.lung_gradient and rows.stop > rows.start:
        view = canvas.hu[:, rows]
        yy = (canvas.axes[1][rows] - cy)[:, None]
        xx = (canvas.axes[2] - cx)[None, :]
        ramp = (np.clip((yy + inner[0]) / (2 * inner[0]), 0, 1) ** 2 * anat.lung_gradient
                * ((yy / inner[0]) ** 2 + (xx / inner[1]) ** 2 < 1)).astype(np.float32)
        view += np.where(view < -600, ramp[None], np.float32(0))
    for pts, rads in ([] if coarse else _lung_vessels(rng, anat, z_lo, z_hi)):
        canvas.tube(pts, rads, t["blood"])
    for _ in range(0 if coarse else 300):
        p = np.array([rng.uniform(z_lo, z_hi), cy + rng.uniform(-1, 1) * inner[0] * 0.8,
                      cx + rng.uniform(-1, 1) * inner[1] * 0.85])
        if ((p[1] - cy) / inner[0]) ** 2 + ((p[2] - cx) / inner[1]) ** 2 < 0.8:
            canvas.tube(p[None], rng.uniform(0.6, 2.0), rng.uniform(-200, 40))
    # Below the diaphragm.
    lc, lr = anat.liver
    canvas.ellipsoid_layers(lc, np.eye(3), lr, [(0.0, t["liver"])], tight=True)
    sc, sr, air = anat.stomach
    canvas.ellipsoid_layers(sc, np.eye(3), sr, [(0.0, t["muscle"]), (-4.0, 20.0)], tight=True)
    if air:
        canvas.ellipsoid_layers(sc + [sr[0] * 0.5, -sr[1] * 0.4, 0], np.eye(3), sr * 0.45, [(0.0, -1000.0)], tight=True)
    # Mediastinum: fat in front of the spine (around the descending aorta and esophagus) and,
    # above the heart, around the great vessels; lower down the heart meets the lungs.
    h = anat.heart
    sy, sx = anat.spine_yx
    front_spine = sy - anat.spine["body_r"][0]
    post_y = 0.5 * (anat.esophagus[0][0][1] + front_spine)
    canvas.ellipse_cylinder((post_y, 0.5 * (anat.midline_x + anat.desc_aorta_yx[1])),
                            (max(front_spine - post_y, 8) + 12, 22 + anat.desc_radius + 8 * anat.adiposity), t["fat"])
    # Anterior (thymic) fat behind the sternum, above the heart.
    st_y = anat.sternum_yx[0] + anat.sternum_radii[0]
    canvas.ellipse_cylinder((st_y + 12 + 8 * anat.adiposity, anat.midline_x + 5),
                            (12 + 10 * anat.adiposity, 22 + 15 * anat.adiposity), t["fat"],
                            z_range=(anat.aortic_root[0] + 5, z_hi + 60))
    # Spine: body (cortex, marrow, discs), arch, canal, paraspinal muscles.
    br, ar = anat.spine["body_r"], anat.spine["arch_r"]
    for side in (-1, 1):
        canvas.ellipse_cylinder((sy + br[0] + 18, sx + side * 27), (20, 16), t["muscle"])
    canvas.ellipse_cylinder((sy + br[0] + 12, sx), ar, t["cortical"] * 0.8)
    canvas.ellipse_cylinder((sy + br[0] + 34, sx), (14, 4.5), t["cortical"] * 0.8)
    canvas.ellipse_cylinder((sy + br[0] + 12, sx), (ar[0] - 4, ar[1] - 4), 15.0)
    canvas.ellipse_cylinder((sy, sx), br, t["cortical"])
    canvas.ellipse_cylinder((sy, sx), br - 1.5, t["cancellous"])
    for _ in range(0 if coarse else 150):  # trabecular texture of the marrow
        a, r = rng.uniform(0, 2 * np.pi), np.sqrt(rng.random()) * 0.8
        p = np.array([rng.uniform(z_lo, z_hi), sy + r * (br[0] - 2) * np.sin(a), sx + r * (br[1] - 2) * np.cos(a)])
        canvas.tube(p[None], rng.uniform(0.8, 2.2), t["cancellous"] + rng.uniform(-90, 150))
    for zd in np.arange(z_lo - anat.spine["disc_z0"], z_hi + 30, anat.spine["disc_gap"]):
        canvas.ellipse_cylinder((sy, sx), br + 0.5, 85.0, z_range=(zd, zd + 6))
    # Posterior mediastinum: descending aorta, esophagus, azygos; airways.
    arch, _ = resample_polyline(anat.arch, 4.0)
    canvas.tube(arch, anat.desc_radius + 2.5, t["fat"])
    canvas.tube(arch, anat.desc_radius, t["blood"])
    eso, r_e, air_e = anat.esophagus
    ep, _ = resample_polyline(eso, 4.0)
    canvas.tube(ep, r_e, t["muscle"])
    if air_e:
        canvas.tube(ep, air_e, -1000.0)
    az, r_az = anat.azygos
    canvas.tube(resample_polyline(az, 4.0)[0], r_az, t["blood"])
    trachea, bronchi = anat.trachea
    for line, r in [(trachea, 10.0)] + [(b, 7.0) for b in bronchi]:
        pts, _ = resample_polyline(line, 3.0)
        canvas.tube(pts, r + 1.5, t["muscle"])
        canvas.tube(pts, r, -1000.0)
    # The heart: fat pads, pericardium, epicardial fat, myocardium, cavities.
    for pv in anat.pulmonary_veins:
        canvas.tube(resample_polyline(pv, 3.0)[0], 5.5, t["blood"])
    for c, r in anat.fat_pads:
        canvas.ellipsoid_layers(c, h.axes, r, [(0.0, t["fat"])], tight=True)
    _draw_heart(canvas, anat)
    for c, ax, r in anat.cavities:
        canvas.ellipsoid_layers(c, ax, r, [(0.0, t["blood"])], tight=True)
    # Fat sleeves around the coronaries (the LM and proximal RCA leave the root through fat).
    sleeve = anat.fat_field["sleeve"]
    for pts, radii in ([] if coarse else anat.coronaries.values()):
        p, _ = resample_polyline(pts, 1.5)
        canvas.tube(p, float(radii.max()) + sleeve, t["fat"])
    # Great vessels (blood), in mediastinal fat.
    asc, _ = resample_polyline(anat.asc_aorta, 4.0)
    vessel_fat = anat.fat_field["vessel_fat"]
    above = asc[asc[:, 0] > anat.aortic_root[0] + 10]
    if len(above):
        canvas.tube(above, anat.asc_radius + vessel_fat, t["fat"])
    for line, r in [(anat.pulmonary, 13.0)] + [(b, 9.5) for b in anat.pulmonary_branches] + [(anat.svc, 9.0)]:
        pts, _ = resample_polyline(line, 3.0)
        canvas.tube(pts[1:], r + vessel_fat * 0.6, t["fat"])
    canvas.tube(asc, anat.asc_radius, t["blood"])
    canvas.tube(anat.aortic_root[None], anat.root_radius, t["blood"])
    for line, r in ([(anat.pulmonary, 13.0)] + [(b, 9.5) for b in anat.pulmonary_branches]
                    + [(anat.svc, 9.0), (anat.ivc, 12.0)]):
        pts, _ = resample_polyline(line, 3.0)
        canvas.tube(pts, r, t["blood"])
    for pts, radii in ([] if coarse else anat.coronaries.values()):
        canvas.small_tube(pts, radii, t["blood"])
    # Bones of the chest wall: ribs, cartilage, sternum, scapulae.
    draw_ribs(canvas, anat.ribs, t)
    st_y, st_x = anat.sternum_yx
    sr_ = anat.sternum_radii
    canvas.ellipse_cylinder((st_y, st_x), sr_, t["cortical"] * 0.8)
    canvas.ellipse_cylinder((st_y, st_x), sr_ - 1.5, t["cancellous"])



# -- look-alikes ------------------------------------------------------------------------

def _wall_patch(rng, center, tangent, radius, kind, bulky_p=0.25) -> Calcification:
    """A calcification on a vessel wall: an arc, ring or bulky plaque spanning some length."""
    e1 = perpendicular(rng, tangent)
    e2 = np.cross(tangent, e1)
    a0 = rng.uniform(0, 2 * np.pi)
    if rng.random() < 0.1:
        span = rng.uniform(3.5, 2 * np.pi)  # (near) ring
    else:
        span = rng.uniform(0.15, 2.0)
    length = rng.uniform(0.5, 12)
    bulky = rng.random() < bulky_p
    r_ball = rng.uniform(1.4, 2.6) if bulky else rng.uniform(0.5, 1.5)
    step = max(0.7 * r_ball, 0.5)
    angles = np.arange(a0, a0 + span, step / radius)
    along = np.arange(-length / 2, length / 2 + 1e-6, step)
    aa, ll = np.meshgrid(angles, along)
    depth = radius - r_ball * 0.3
    pts = (center + ll.reshape(-1, 1) * tangent
           + depth * (np.cos(aa).reshape(-1, 1) * e1 + np.sin(aa).reshape(-1, 1) * e2))
    radii = r_ball * rng.uniform(0.7, 1.0, size=len(pts))
    value = float(np.clip(np.exp(rng.normal(np.log(600), 0.5)), 200, 1800))
    return Calcification(kind, pts, radii, value)


def sample_varied_lookalikes(rng: np.random.Generator, anat: VariedAnatomy, kinds: list[str]) -> list[Calcification]:
    """Calcifications that are not coronary calcium.

    Parameters
    ----------
    rng : numpy.random.Generator
    anat : VariedAnatomy
    kinds : list of str
        Keys of :data:`VARIED_LOOKALIKES`.

    Returns
    -------
    list of Calcification
    """
    out: list[Calcification] = []
    age = anat.vascular_age
    for kind in kinds:
        if kind == "aortic_wall":
            n = 1 + int(rng.poisson(1 + 10 * age))
            asc, _ = resample_polyline(anat.asc_aorta, 2.0)
            arch, _ = resample_polyline(anat.arch, 2.0)
            for _ in range(n):
                use_asc = rng.random() < 0.35
                line, r_v = (asc, anat.asc_radius) if use_asc else (arch, anat.desc_radius)
                i = int(rng.integers(2 if use_asc else 0, len(line)))
                tangent = unit(line[min(i + 1, len(line) - 1)] - line[max(i - 1, 0)])
                out.append(_wall_patch(rng, line[i], tangent, r_v, kind))
        elif kind == "aortic_root":
            # The root is a ball: patches on its wall (sinuses, annulus, sinotubular junction) and
            # clumps next to the coronary ostia (LM, RCA), the look-alikes closest to coronary calcium.
            axis = unit(anat.asc_aorta[1] - anat.asc_aorta[0])
            ostia = [pts[0] for lab, (pts, _) in anat.coronaries.items() if lab in (1, 4)]
            big_r = anat.root_radius
            for _ in range(int(rng.integers(1, 3 + int(6 * age)))):
                if rng.random() < 0.4:
                    d = unit(ostia[int(rng.integers(len(ostia)))] - anat.aortic_root + rng.normal(0, 4, 3))
                    c = anat.aortic_root + d * (big_r - 0.8)
                    n = int(rng.integers(1, 4))
                    out.append(Calcification(kind, c + rng.normal(0, 1.2, size=(n, 3)), rng.uniform(0.7, 2.0, n),
                                             float(np.clip(np.exp(rng.normal(np.log(600), 0.5)), 200, 1800))))
                else:
                    h_ = rng.uniform(-0.6, 0.6) * big_r
                    out.append(_wall_patch(rng, anat.aortic_root + axis * h_, axis,
                                           math.sqrt(big_r * big_r - h_ * h_), kind, bulky_p=0.35))
        elif kind == "sternal_wire":
            st_y, st_x = anat.sternum_yx
            sr_ = anat.sternum_radii
            z0 = anat.heart.center[0] + rng.uniform(-30, 10)
            for k in range(int(rng.integers(4, 8))):
                z = z0 + k * rng.uniform(12, 22)
                ang = np.linspace(0, 2 * np.pi, 60)
                ring = np.column_stack([z + 2.0 * np.sin(ang) * rng.uniform(0.2, 1.0),
                                        st_y + (sr_[0] + 2) * np.cos(ang), st_x + (sr_[1] * 0.7) * np.sin(ang)])
                pts, _ = resample_polyline(ring, 0.5)
                out.append(Calcification(kind, pts, np.full(len(pts), rng.uniform(0.5, 0.8)),
                                         float(rng.uniform(2500, 3000))))
        elif kind == "pericardium":
            ff = anat.fat_field
            for _ in range(int(rng.integers(1, 4))):
                s0, p0 = rng.uniform(-0.2, 0.85), rng.uniform(-np.pi, np.pi)
                s = s0 + np.linspace(0, rng.uniform(0.05, 0.3), 14)
                phi = p0 + np.linspace(0, rng.uniform(-0.4, 0.4), 14)
                _, fat = heart_fields(ff, s, phi)
                pts = np.stack([anat.heart.surface(si, pi, fi + ff["pericardium"] * 0.5)
                                for si, pi, fi in zip(s, phi, fat)])
                pts, _ = resample_polyline(pts, 0.8)
                out.append(Calcification(kind, pts, np.full(len(pts), rng.uniform(0.6, 1.6)),
                                         float(rng.uniform(250, 900))))
        else:  # the default's shapes: aortic valve, mitral annulus, costal cartilage, pacing lead
            out.extend(sample_lookalikes(rng, anat, [kind]))
    return out


# -- scanner: noise texture and streaks ---------------------------------------------------

def shaped_noise(white: np.ndarray, exponent: float) -> np.ndarray:
    """Noise whose in-plane power spectrum rises as ``|f| ** exponent`` (before the kernel).

    Filtered back-projection gives noise a ramp-shaped spectrum (exponent
    1): fine-grained, with little low-frequency mottle; the reconstruction
    kernel (:func:`cacnet.phantom._base.blur`, applied afterwards with
    the image) then cuts the high frequencies.

    Parameters
    ----------
    white : numpy.ndarray
        White noise, (..., y, x); filtered over the last two axes.
    exponent : float
        Slope of the power spectrum (0 white, 1 ramp).

    Returns
    -------
    numpy.ndarray of float32
    """
    ny, nx = white.shape[-2:]
    fy = np.fft.fftfreq(ny)[:, None]
    fx = np.fft.rfftfreq(nx)[None, :]
    filt = np.power(np.maximum(np.sqrt(fy * fy + fx * fx) / 0.5, 0.5 / max(ny, nx)), exponent / 2).astype(np.float32)
    spec = sfft.rfft2(white, axes=(-2, -1), workers=1)
    spec *= filt
    return sfft.irfft2(spec, s=(ny, nx), axes=(-2, -1), workers=1).astype(np.float32)


def _shaped_gain(acq: VariedAcquisition) -> float:
    """Standard deviation of shaped unit white noise after the kernel."""
    n = 96
    impulse = np.zeros((1, n, n), dtype=np.float64)
    impulse[0, n // 2, n // 2] = 1.0
    return float(np.sqrt((blur(shaped_noise(impulse, acq.noise_exponent).astype(np.float64), acq) ** 2).sum()))


@lru_cache(maxsize=2)
def _projector(n: int, n_angles: int) -> sparse.csr_matrix:
    """Pixel-driven parallel-beam projector of an n x n image onto n_angles x n detector bins."""
    c = (np.arange(n) - (n - 1) / 2).astype(np.float64)
    yy, xx = np.meshgrid(c, c, indexing="ij")
    rows, cols, vals = [], [], []
    pix = np.arange(n * n)
    for a, th in enumerate(np.linspace(0, np.pi, n_angles, endpoint=False)):
        tt = xx.ravel() * np.cos(th) + yy.ravel() * np.sin(th) + (n - 1) / 2
        i0 = np.floor(tt).astype(int)
        f = tt - i0
        for idx, wgt in ((i0, 1 - f), (i0 + 1, f)):
            ok = (idx >= 0) & (idx < n)
            rows.append(a * n + idx[ok])
            cols.append(pix[ok])
            vals.append(wgt[ok])
    return sparse.csr_matrix((np.concatenate(vals).astype(np.float32), (np.concatenate(rows), np.concatenate(cols))),
                             shape=(n_angles * n, n * n))


def streak_image(rng: np.random.Generator, canvas: Canvas, anat: VariedAnatomy, lookalikes: list[Calcification],
                 acq: VariedAcquisition, n: int = 160, n_angles: int = 72) -> np.ndarray | None:
    """Beam hardening and streaks (HU) on ``canvas``'s grid, or None when the case has none.

    The whole body (not only the field of view) is drawn again on a coarse
    grid (``n`` x ``n`` pixels over 560 mm, slabs of at least 5 mm) with the
    metal and bone look-alikes, projected, and the errors of a real scan are
    reconstructed by filtered back-projection: beam hardening
    (``-beta * D**2``, D the line integral of the attenuation above soft
    tissue, metal weighted up: dark bands between dense objects) and photon
    starvation (noise that grows with ``exp(P)`` on rays of high total
    attenuation P: streaks through shoulders, arms, dense bone and metal).

    Parameters
    ----------
    rng : numpy.random.Generator
    canvas : Canvas
        The case's grid (its image is not read).
    anat : VariedAnatomy
    lookalikes : list of Calcification
        Drawn too (metal: value >= 2000 HU, counted as much denser).
    acq : VariedAcquisition
        ``beam_hardening`` and ``starvation`` scale the two errors.
    n, n_angles : int
        Coarse grid size and number of projection angles.

    Returns
    -------
    numpy.ndarray of float32 or None
        HU to add before the kernel, on ``canvas``'s grid.
    """
    if not acq.beam_hardening and not acq.starvation:
        return None
    fov = 560.0
    px = fov / n
    dz = max(acq.increment_mm, 5.0)
    z0, z1 = float(canvas.axes[0][0]), float(canvas.axes[0][-1])
    nz = int(math.ceil((z1 - z0) / dz)) + 1
    cy, cx = anat.torso_center
    origin = (z0, cy - fov / 2 + px / 2, cx - fov / 2 + px / 2)
    coarse = Canvas(shape=(nz, n, n), spacing=(dz, px, px), origin=origin, thickness=max(dz, acq.thickness_mm))
    draw_varied_anatomy(coarse, anat, np.random.default_rng(anat.draw_seed), coarse=True)
    for calc in lookalikes:
        coarse.calcium(calc.centers, calc.radii, calc.value_hu, -2 if calc.value_hu >= _METAL_HU else -1)
    metal = (coarse.cal_occ * (coarse.cal_id == -2)).reshape(nz, -1).T
    coarse.composite_calcium()
    hu = coarse.hu.reshape(nz, -1).T  # (pixels, slabs)
    mu = _MU_WATER * np.clip(1 + hu / 1000, 0, None)
    # Attenuation above soft tissue; metal (drawn at the clipped HU of a scan) counts as much denser.
    dense = _MU_WATER * (np.clip(hu - 150, 0, None) / 1000 + _METAL_MU * metal)
    a = _projector(n, n_angles)
    p_all = (a @ (mu + dense * 0.5)) * px  # line integrals (metal counts extra)
    d = (a @ dense) * px
    # Tube current follows each slab's attenuation (AEC): starvation only on its most attenuated rays.
    body = np.where(p_all > 0.5, p_all, np.nan)
    p_ref = np.nan_to_num(np.nanpercentile(body, 80, axis=0), nan=0.0)[None, :] + 0.3
    err = -0.4 * acq.beam_hardening * d * d
    starv = np.sqrt(np.expm1(np.clip(p_all - p_ref, 0, 10)))
    err += 0.02 * acq.starvation * starv * rng.standard_normal(err.shape).astype(np.float32)
    # Filtered back-projection (ramp with a Hann window) of the errors.
    sino = err.reshape(n_angles, n, nz)
    m = 2 * n
    f = np.abs(np.fft.rfftfreq(m))
    ramp = (f * (0.5 + 0.5 * np.cos(np.pi * f / 0.5))).astype(np.float32)[None, :, None]
    filt = np.fft.irfft(np.fft.rfft(sino, n=m, axis=1) * ramp, n=m, axis=1)[:, :n].astype(np.float32)
    img = (a.T @ filt.reshape(n_angles * n, nz)) * (np.pi / n_angles) / px
    img = (img.T.reshape(nz, n, n) / _MU_WATER * 1000).astype(np.float32)
    return _resample_linear(img, coarse, canvas)


def _interp_matrix(src: np.ndarray, dst: np.ndarray) -> sparse.csr_matrix:
    """(len(dst), len(src)) linear interpolation weights between regular positions (clamped at the ends)."""
    f = np.clip((dst - src[0]) / (src[1] - src[0]) if len(src) > 1 else np.zeros(len(dst)), 0, len(src) - 1)
    i0 = np.minimum(np.floor(f).astype(int), len(src) - 1)
    i1 = np.minimum(i0 + 1, len(src) - 1)
    w = (f - i0).astype(np.float32)
    rows = np.arange(len(dst))
    return sparse.csr_matrix((np.concatenate([1 - w, w]), (np.concatenate([rows, rows]), np.concatenate([i0, i1]))),
                             shape=(len(dst), len(src)))


def _resample_linear(img: np.ndarray, src: Canvas, dst: Canvas) -> np.ndarray:
    """Trilinear resampling of ``img`` (on ``src``'s grid) onto ``dst``'s grid, axis by axis."""
    out = img
    for ax in range(3):
        m = _interp_matrix(src.axes[ax], dst.axes[ax])
        moved = np.moveaxis(out, ax, 0)
        flat = m @ moved.reshape(moved.shape[0], -1)
        out = np.moveaxis(np.asarray(flat, dtype=np.float32).reshape((m.shape[0],) + moved.shape[1:]), 0, ax)
    return np.ascontiguousarray(out)


# -- the variant's steps ------------------------------------------------------------------

class VariedSteps(PhantomSteps):
    """The steps of the ``"varied"`` generator (see docs/phantoms.md)."""

    name = "varied"
    vascular_age = 0.5

    def acquisition(self, rng: np.random.Generator, size: int) -> Acquisition:
        return sample_varied_acquisition(rng, size)

    def lookalike_kinds(self, rng: np.random.Generator, target: str, hard_fraction: float,
                        lookalike_rate: float) -> tuple[bool, bool, list[str]]:
        """Faint lesion and mitral annulus as in the default; aortic kinds by a "vascular age" drawn here.

        ``lookalike_rate`` scales the rarer kinds (pericardium, costal
        cartilage, pacing lead, sternal wire).
        """
        faint = target != "A" and rng.random() < hard_fraction
        age = float(rng.beta(1.4, 1.2))
        self.vascular_age = age  # read by :meth:`anatomy` of the same attempt
        p = {
            "aortic_wall": 0.25 + 0.65 * age, "aortic_root": 0.15 + 0.6 * age, "aortic_valve": 0.08 + 0.35 * age,
            "mitral_annulus": max(hard_fraction * 0.5, 0.05 + 0.35 * age),
            "pericardium": 0.5 * lookalike_rate, "costal_cartilage": lookalike_rate * (0.5 + age),
            "pacing_lead": 0.35 * lookalike_rate, "sternal_wire": 0.35 * lookalike_rate,
        }
        kinds = [k for k in VARIED_LOOKALIKES if rng.random() < p[k]]
        return faint, "mitral_annulus" in kinds, kinds

    def geometry(self, rng: np.random.Generator, acq: Acquisition,
                 size: int) -> tuple[tuple[int, int, int], tuple[float, float, float], tuple[float, float, float]]:
        spacing = (acq.increment_mm, acq.pixel_mm, acq.pixel_mm)
        shape = (acq.n_slices, size, size)
        if getattr(acq, "fov", "heart") == "chest":  # centred on the chest: behind and right of the heart
            center = np.array([rng.normal(-8, 8), rng.normal(30, 8), rng.normal(-25, 8)])
        else:
            center = np.array([rng.normal(-8, 8), rng.normal(6, 8), rng.normal(-4, 8)])
        origin = tuple(float(np.float32(c - (n - 1) / 2 * s)) for c, n, s in zip(center, shape, spacing))
        return shape, spacing, origin  # type: ignore[return-value]

    def anatomy(self, rng: np.random.Generator, canvas: Canvas) -> Any:
        anat = sample_varied_anatomy(rng, (float(canvas.axes[0][0]), float(canvas.axes[0][-1])), self.vascular_age)
        draw_varied_anatomy(canvas, anat, np.random.default_rng(anat.draw_seed))
        return anat

    def lookalikes(self, rng: np.random.Generator, anat: Any, kinds: list[str]) -> list[Calcification]:
        return sample_varied_lookalikes(rng, anat, kinds)

    def lookalike_id(self, kind: str) -> int:
        return VARIED_LOOKALIKES[kind]

    def background(self, rng: np.random.Generator, canvas: Canvas, clean: np.ndarray, acq: Acquisition,
                   anat: Any, lookalikes: list[Calcification]) -> np.ndarray:
        """Shaped noise (correlated along z when slices overlap), streaks, the kernel and the HU offset."""
        noise = rng.standard_normal(canvas.shape, dtype=np.float32)
        overlap = acq.thickness_mm / acq.increment_mm
        if overlap > 1.01:
            k = int(round(overlap))
            noise = ndimage.uniform_filter1d(noise, k, axis=0, mode="reflect") * np.float32(math.sqrt(k))
        noise = shaped_noise(noise, acq.noise_exponent)  # type: ignore[attr-defined]
        noise *= np.float32(acq.noise_sd / _shaped_gain(acq))  # type: ignore[arg-type]
        noise += clean
        streaks = streak_image(rng, canvas, anat, lookalikes, acq)  # type: ignore[arg-type]
        if streaks is not None:
            noise += streaks
        base = blur(noise, acq)
        base += np.float32(acq.hu_offset)
        return base

    def extra_meta(self, anat: Any, lookalikes: list[Calcification]) -> dict[str, Any]:
        """Adiposity, vascular age and the number of calcifications of each look-alike kind."""
        return {
            "adiposity": round(anat.adiposity, 3),
            "vascular_age": round(anat.vascular_age, 3),
            "lookalike_detail": {k: sum(c.kind == k for c in lookalikes) for k in sorted({c.kind for c in lookalikes})},
        }


# -- measuring a case -------------------------------------------------------------------

def describe_case(case: Any) -> dict[str, float]:
    """What a generated case (either variant) looks like, measured from its image and its anatomy.

    Parameters
    ----------
    case : PhantomCase

    Returns
    -------
    dict
        ``fov_mm``, ``pixel_mm``, ``thickness_mm``, ``increment_mm``,
        ``noise_sd_measured`` (HU, SD of a 12 mm square in the blood pool of
        the LV, or the heart centre for the default), ``sharpness``
        (cycles/mm: power-weighted mean spatial frequency of that square, the
        noise texture of the kernel), ``blood_hu`` (its median), ``hu_offset``
        (set), ``fat_fraction`` (share of fat-density voxels, -200 to -30 HU
        after a 1.5 mm smoothing, in a shell 1-8 mm outside the ventricular
        envelope within 20 mm of the heart centre), ``epicardial_fat_mm``
        (mean modelled thickness over the heart surface; NaN for the default),
        ``heart_length_mm`` / ``heart_width_mm`` (2 x the long / largest short
        semi-axis), ``heart_azimuth_deg`` (long axis from the front towards
        the left), ``heart_elevation_deg`` (below the axial plane),
        ``heart_left_mm`` (heart centre left of the body's midline),
        ``aortic_calcium_mm3`` (look-alike volume >= 130 HU stored as aortic
        wall, root included) and ``lookalike_mm3`` (all look-alikes >= 130 HU).
    """
    from scipy import ndimage as ndi

    acq, anat, hu = case.acquisition, case.anatomy, case.hu
    sp, org = np.asarray(case.spacing), np.asarray(case.origin)
    h = anat.heart
    varied = isinstance(anat, VariedAnatomy)
    center = anat.cavities[0][0] if varied else h.center
    iz, iy, ix = np.clip(np.rint((center - org) / sp).astype(int), 0, np.array(hu.shape) - 1)
    k = max(int(6.0 / sp[1]), 4)
    patch = hu[iz, max(iy - k, 0): iy + k, max(ix - k, 0): ix + k].astype(np.float64)
    dev = patch - patch.mean()
    power = np.abs(np.fft.fft2(dev)) ** 2
    fy = np.fft.fftfreq(patch.shape[0])[:, None]
    fx = np.fft.fftfreq(patch.shape[1])[None, :]
    freq = np.sqrt(fy * fy + fx * fx) / sp[1]
    grid = Grid(shape=hu.shape, spacing=tuple(sp), origin=tuple(org), thickness=acq.thickness_mm)
    zs = grid.index_range(0, h.center[0] - 20, h.center[0] + 20)
    reach = float(h.radii.max()) + 12
    box = grid.box(h.center - reach, h.center + reach)
    fat_fraction = float("nan")
    if box is not None and zs.stop > zs.start:
        box = (zs, box[1], box[2])
        sd, _, _ = grid.ellipsoid_distance(h.center, h.axes, h.radii, box)
        smooth = ndi.gaussian_filter(hu[box].astype(np.float32), (0, 1.5 / sp[1], 1.5 / sp[2]))
        shell = (sd > 1) & (sd < 8)
        if shell.any():
            fat_fraction = float(((smooth > -200) & (smooth < -30))[shell].mean())
    fat_mm = float("nan")
    if varied:
        ss, pp = np.meshgrid(np.linspace(-0.3, 0.95, 26), np.linspace(-np.pi, np.pi, 48))
        fat_mm = float(heart_fields(anat.fat_field, ss, pp)[1].mean())
    u = h.axes[0]
    midline = anat.midline_x if varied else float(anat.torso_center[1])
    idx, kinds = case.lookalike_voxels
    above = hu[tuple(idx.T)] >= 130 if len(idx) else np.zeros(0, bool)
    vox = float(np.prod(sp))
    return {
        "fov_mm": float(hu.shape[2] * sp[2]),
        "pixel_mm": float(sp[2]),
        "thickness_mm": float(acq.thickness_mm),
        "increment_mm": float(acq.increment_mm),
        "noise_sd_measured": float(patch.std()),
        "sharpness": float((freq * power).sum() / max(power.sum(), 1e-12)),
        "blood_hu": float(np.median(patch)),
        "hu_offset": float(acq.hu_offset),
        "fat_fraction": fat_fraction,
        "epicardial_fat_mm": fat_mm,
        "heart_length_mm": float(2 * h.radii[0]),
        "heart_width_mm": float(2 * h.radii[1:].max()),
        "heart_azimuth_deg": float(np.degrees(np.arctan2(u[2], -u[1]))),
        "heart_elevation_deg": float(np.degrees(np.arcsin(-u[0]))),
        "heart_left_mm": float(h.center[2] - midline),
        "aortic_calcium_mm3": float((above & (kinds == LOOKALIKES["aortic_wall"])).sum() * vox),
        "lookalike_mm3": float(above.sum() * vox),
    }
