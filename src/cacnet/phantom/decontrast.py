"""Turn a contrast-enhanced chest CT into a plausible non-contrast one.

:func:`decontrast` brings contrast-filled blood (the :data:`BLOOD_LABELS` of a TotalSegmentator label
map, and the contrast-dense components that belong to them) down to unenhanced blood with a monotone
map, keeping the scan's noise texture and leaving everything else as it is; :func:`decontrast_scan`
applies it to a :class:`cacnet.io.Scan` and a label-map file, for :mod:`cacnet.phantom.insertion`.

See docs/phantoms.md ("A contrast scan made non-contrast") for the method and what is not modelled.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence, Union

import numpy as np
from scipy import ndimage

__all__ = ["decontrast", "decontrast_scan", "read_mask", "BLOOD_LABELS", "SKELETON_LABELS", "LUNG_LABELS",
           "ORGAN_LABELS", "HEART_LABEL"]

#: TotalSegmentator (v1, 104 classes; ``structures.csv``) ids of the heart.
HEART_LABEL = 51
#: Contrast-filled cardiovascular structures: heart, aorta, pulmonary vein, brachiocephalic trunk, subclavian and
#: common carotid arteries, brachiocephalic veins, left atrial appendage, superior/inferior vena cava, portal and
#: splenic vein, iliac arteries and veins.
BLOOD_LABELS = tuple(range(51, 69))
#: Bone and cartilage: vertebrae and sacrum, humeri, scapulae, claviculae, femora, hips, skull, ribs, sternum,
#: carpal, costal cartilages.
SKELETON_LABELS = (*range(25, 51), *range(69, 79), 91, *range(92, 117), 117, 118)
#: The lung lobes (pulmonary vessels inside them are contrast-filled).
LUNG_LABELS = tuple(range(10, 15))
#: Organs whose vessels and enhancing parenchyma are mapped like blood (spleen, kidneys, gallbladder, liver, stomach,
#: pancreas, adrenals, lungs, oesophagus, trachea, thyroid, bowel, bladder, prostate, kidney cysts).
ORGAN_LABELS = tuple(range(1, 25))


def _dilate(mask: np.ndarray, spacing: Sequence[float], mm: float) -> np.ndarray:
    """Dilate by a box of half-width ``mm`` (at least one voxel in-plane; separable, fast)."""
    if mm <= 0:
        return mask.copy()
    size = [2 * max(int(round(mm / float(s))), 0) + 1 for s in spacing]
    size[1] = max(size[1], 3)
    size[2] = max(size[2], 3)
    out = mask.view(np.uint8) if mask.dtype == bool else mask.astype(np.uint8)
    for axis, n in enumerate(size):
        if n > 1:
            out = ndimage.maximum_filter1d(out, n, axis=axis, mode="constant", cval=0)
    return out.astype(bool)


def _member(mask: np.ndarray, labels: Sequence[int]) -> np.ndarray:
    """``mask`` in ``labels`` (runs of consecutive ids compared as ranges: fast on a whole volume)."""
    ids = sorted(set(int(v) for v in labels))
    out = np.zeros(mask.shape, bool)
    start = prev = ids[0]
    for v in ids[1:] + [None]:
        if v is not None and v == prev + 1:
            prev = v
            continue
        out |= (mask == start) if start == prev else ((mask >= start) & (mask <= prev))
        if v is not None:
            start = prev = v
    return out


def _box(mask: np.ndarray, spacing: Sequence[float], mm: float) -> tuple:
    """The bounding box of ``mask`` grown by ``mm`` (a tuple of slices)."""
    where = [np.nonzero(mask.any(axis=axes))[0] for axes in ((1, 2), (0, 2), (0, 1))]
    return tuple(slice(max(int(w.min()) - int(math.ceil(mm / s)) - 1, 0), int(w.max()) + int(math.ceil(mm / s)) + 2)
                 for w, s in zip(where, spacing))


def _laplacian(a: np.ndarray, sel: np.ndarray) -> np.ndarray:
    """The in-plane 4-neighbour Laplacian of ``a`` at the voxels ``sel`` (edges replicated), in ``sel``'s order."""
    nz, ny, nx = a.shape
    flat = np.flatnonzero(sel)
    rest, xi = np.divmod(flat, nx)
    yi = rest % ny
    r = a.ravel()
    out = -4.0 * r[flat]
    out += r[flat - nx * (yi > 0)] + r[flat + nx * (yi < ny - 1)]
    out += r[flat - (xi > 0)] + r[flat + (xi < nx - 1)]
    return out.astype(np.float32)


def _tone_map(h: np.ndarray, knee_hu: float, myocardium_hu: float, myocardium_out_hu: float, blood_hu: float,
              blood_out_hu: float, tail_hu: float = 400.0) -> np.ndarray:
    """The monotone map: identity to ``knee_hu``, piecewise linear to ``blood_hu``, then a saturating tail."""
    out = np.interp(h, [knee_hu, myocardium_hu, blood_hu], [knee_hu, myocardium_out_hu, blood_out_hu])
    out = np.where(h < knee_hu, h, out)
    tail = blood_out_hu + 15.0 * (1.0 - np.exp(-(h - blood_hu) / tail_hu))
    return np.where(h > blood_hu, tail, out).astype(np.float32)


def decontrast(hu: np.ndarray, mask: np.ndarray, spacing: Sequence[float], *, vessel_hu: float = 130.0,
               knee_hu: float = -50.0, myocardium_hu: float = 120.0, myocardium_out_hu: float = 38.0,
               blood_hu: float = 350.0, blood_out_hu: float = 45.0, rim_mm: float = 1.5, bone_mm: float = 3.0,
               pericardial_mm: float = 15.0, return_region: bool = False):
    """Replace contrast-filled blood by plausible non-contrast values (see docs/phantoms.md).

    Parameters
    ----------
    hu : numpy.ndarray
        (z, y, x) HU of a contrast-enhanced CT, canonical LPS orientation (as
        :func:`cacnet.io.read_scan` gives it); not modified.
    mask : numpy.ndarray of int
        TotalSegmentator (v1) label map on the same grid and orientation
        (:func:`read_mask`); ids as in :data:`BLOOD_LABELS`,
        :data:`SKELETON_LABELS`, :data:`ORGAN_LABELS`.
    spacing : sequence of float
        (dz, dy, dx) mm.
    vessel_hu : float
        HU (lightly smoothed in-plane, sigma 0.7 pixel; or unsmoothed HU from
        ``vessel_hu + 40``) from which unlabelled voxels count as
        contrast-filled vessel (components of >= 3 voxels).
    knee_hu, myocardium_hu, myocardium_out_hu, blood_hu, blood_out_hu : float
        Knots of the monotone map: ``knee_hu`` and below unchanged,
        enhanced myocardium ``myocardium_hu`` -> ``myocardium_out_hu``,
        contrast blood ``blood_hu`` -> ``blood_out_hu``; above, a
        saturating tail up to ``blood_out_hu + 15``.
    rim_mm : float
        Dilation of the blood regions for the partial-volume edge.
    bone_mm : float
        Dilation of the skeleton labels in which unlabelled dense voxels are
        taken for bone (never changed).
    pericardial_mm : float
        Distance from the heart label within which unlabelled dense
        components are taken for vessels (coronaries, pulmonary trunk).
    return_region : bool
        Also return the feathered weight (float32, 0 = unchanged, 1 = fully mapped).

    Returns
    -------
    numpy.ndarray of float32
        The de-contrasted HU, same shape (and the weight when ``return_region``).

    Raises
    ------
    ValueError
        When ``hu`` and ``mask`` differ in shape, or they are not 3-D.
    """
    hu = np.asarray(hu)
    mask = np.asarray(mask)
    if hu.ndim != 3 or hu.shape != mask.shape:
        raise ValueError(f"decontrast: hu {hu.shape} and mask {mask.shape} must be 3-D arrays of the same shape.")
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != 3 or not all(math.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(f"decontrast: spacing must be 3 positive numbers (dz, dy, dx) mm; got {spacing!r}.")
    h = hu.astype(np.float32, copy=False)
    px = spacing[2]

    blood, skel = _member(mask, BLOOD_LABELS), _member(mask, SKELETON_LABELS)
    organ = _member(mask, ORGAN_LABELS)
    heart = mask == HEART_LABEL

    # Unlabelled contrast-dense components: vessels if they touch the blood labels, lie mostly in the lungs,
    # or lie near the heart; never within bone_mm of the skeleton.
    light = ndimage.gaussian_filter(h, (0, 0.7, 0.7), truncate=3.0)  # small vessels keep their peak
    dense = ((light >= vessel_hu) | (h >= vessel_hu + 40.0)) & ~_dilate(skel, spacing, bone_mm) & ~blood
    comp, n = ndimage.label(dense, structure=np.ones((3, 3, 3), bool))
    keep = np.zeros(n + 1, bool)
    if n:
        size = np.bincount(comp.ravel(), minlength=n + 1)
        touch = np.bincount(comp[_dilate(blood, spacing, px) & dense], minlength=n + 1) > 0
        in_organ = 2 * np.bincount(comp[organ & dense], minlength=n + 1) >= size  # pulmonary, hepatic, ... vessels
        near = np.zeros(n + 1, bool)
        if heart.any():
            box = _box(heart, spacing, pericardial_mm)
            near = np.bincount(comp[box][_dilate(heart[box], spacing, pericardial_mm) & dense[box]],
                               minlength=n + 1) > 0
        keep = (touch | in_organ | near) & (size >= 3)  # not single noise voxels
        keep[0] = False
    region = blood | keep[comp]
    region = _dilate(region, spacing, rim_mm)
    region &= ~_dilate(skel, spacing, px) | blood
    hard = skel & ~blood  # bone, never changed (the rim of a vessel next to bone stays too)
    weight = ndimage.gaussian_filter(region.astype(np.float32), (0, 1.0, 1.0), truncate=3.0)
    weight[region] = 1.0
    weight[hard] = 0.0

    out = h.astype(np.float32, copy=True)
    sel = weight > 1e-3
    hv, wv = h[sel], weight[sel]
    # Local level: HU lightly smoothed in-plane (Gaussian, sigma 0.7 pixel: 2-3 pixel vessels keep most of their
    # peak, edges barely leak); the scan's noise is what is left.
    level = light[sel]
    resid = hv - level
    core = region & (light >= 150.0)
    core[:, :, -1] = False
    d = (h[:, :, 1:] - h[:, :, :-1])[core[:, :, :-1]] if core.any() else np.zeros(1, np.float32)
    sigma = 1.4826 * float(np.median(np.abs(d - np.median(d)))) / math.sqrt(2.0)
    lim = 2.5 * max(sigma, 1.0)
    # Small vessels and edges are structure, not noise: fade the residual where the level curves more than noise
    # makes it curve (in-plane Laplacian of the level against its robust SD in the blood).
    lap = _laplacian(light, sel)
    lap_core = _laplacian(light, core) if core.any() else lap
    lap_sd = 1.4826 * float(np.median(np.abs(lap_core - np.median(lap_core))))
    fade = 1.0 / (1.0 + (lap / max(2.5 * lap_sd, 1.0)) ** 2)
    # Each voxel is mapped; the noise the map flattens (1 - its slope at the local level) is added back, clipped.
    # Where the map is the identity (fat, lung) the voxel stays exactly as it was.
    knots = (knee_hu, myocardium_hu, myocardium_out_hu, blood_hu, blood_out_hu)
    slope = np.clip((_tone_map(level + 1.0, *knots) - _tone_map(level - 1.0, *knots)) / 2.0, 0.0, 1.0)
    new = _tone_map(hv, *knots) + (1.0 - slope) * np.clip(resid * fade, -lim, lim)
    out[sel] = hv + wv * (new - hv)
    return (out, weight) if return_region else out


def read_mask(path: Union[str, Path], image) -> np.ndarray:
    """A label map file brought onto a canonical image's grid: (z, y, x) uint8/int array, LPS like ``image``.

    Read with SimpleITK, oriented with ``DICOMOrient(mask, "LPS")`` as
    :func:`cacnet.io.read_scan` orients the scan, and resampled
    (nearest neighbour) onto ``image``'s grid when its geometry differs.

    Raises
    ------
    FileNotFoundError
        Naming the path, when there is no such file.
    """
    import SimpleITK as sitk

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"decontrast: no such label map {path}")
    lab = sitk.DICOMOrient(sitk.ReadImage(str(path)), "LPS")
    same = (lab.GetSize() == image.GetSize()
            and np.allclose(lab.GetOrigin(), image.GetOrigin(), atol=1e-3)
            and np.allclose(lab.GetSpacing(), image.GetSpacing(), atol=1e-4)
            and np.allclose(lab.GetDirection(), image.GetDirection(), atol=1e-4))
    if not same:
        lab = sitk.Resample(lab, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0, lab.GetPixelID())
    return sitk.GetArrayFromImage(lab)


def decontrast_scan(scan, mask_path: Union[str, Path], **kwargs):
    """A :class:`cacnet.io.Scan` with its contrast blood replaced (:func:`decontrast`); the scan is not modified.

    ``mask_path``: the TotalSegmentator label map of the scan (:func:`read_mask`).
    The copy's ``meta`` gains ``decontrast`` (the mask's path).
    """
    import dataclasses

    import SimpleITK as sitk

    mask = read_mask(mask_path, scan.image)
    out = decontrast(np.asarray(scan.hu), mask, scan.spacing, **kwargs)
    image = sitk.GetImageFromArray(out)
    image.CopyInformation(scan.image)
    meta = {**scan.meta, "decontrast": str(mask_path)}
    return dataclasses.replace(scan, hu=sitk.GetArrayViewFromImage(image), image=image, meta=meta)
