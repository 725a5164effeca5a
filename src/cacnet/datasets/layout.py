"""The training-data layout: the files and the columns of ``truth.csv`` and ``points.csv``, in one place.

A training folder (`cac train --data DIR`) holds ``images/<id>.nii.gz``, with
``labels/<id>.nii.gz`` (uint8: 0, then :data:`LABEL_NAMES`) or rows in
``points.csv``, and optionally ``truth.csv``. Written by `cac dataset`
(:mod:`cacnet.datasets`), `cac review apply` (:mod:`cacnet.review`) and, with
columns of its own, `cac phantom` (:mod:`cacnet.phantom`); read by `cac train
--data`, which needs :data:`ID` and :data:`LABEL` and either :data:`X_MM`,
:data:`Y_MM`, :data:`Z_MM` (LPS millimetres) or :data:`I`, :data:`J`,
:data:`K` (voxel indices of the image file) in ``points.csv``, and :data:`ID`
and :data:`CATEGORY` in ``truth.csv``.
"""

from __future__ import annotations

from agatston import ARTERY_NAMES

__all__ = [
    "TRUTH_FILE", "POINTS_FILE", "ID", "CATEGORY", "LABEL", "X_MM", "Y_MM", "Z_MM", "I", "J", "K", "ARTERIES",
    "LABEL_NAMES", "TRUTH_COLUMNS", "PHANTOM_TRUTH_COLUMNS", "POINTS_COLUMNS", "PHANTOM_POINTS_COLUMNS",
]

#: The scores (and, from `cac phantom`, the acquisition) of each case.
TRUTH_FILE = "truth.csv"
#: Annotation points: masks are grown from them by the paper's rule (:func:`agatston.mask_from_points`).
POINTS_FILE = "points.csv"

#: The case id (the image's file name without ``.nii.gz``), in both files.
ID = "id"
#: truth.csv: the annotated risk category (A to D), checked against the mask's.
CATEGORY = "category"
#: points.csv: the artery label of the point (:data:`LABEL_NAMES`).
LABEL = "label"
#: points.csv: the point in LPS millimetres.
X_MM, Y_MM, Z_MM = "x_mm", "y_mm", "z_mm"
#: points.csv: the point as voxel indices of the image file (``array[k, j, i]`` of ``SimpleITK.GetArrayFromImage``).
I, J, K = "i", "j", "k"

#: The labels of ``labels/<id>.nii.gz`` and ``points.csv``, and the artery columns of ``truth.csv``.
LABEL_NAMES = dict(ARTERY_NAMES)  # the one artery map: agatston's
ARTERIES = tuple(LABEL_NAMES.values())

#: truth.csv of `cac dataset` and `cac review apply`.
TRUTH_COLUMNS = [ID, "agatston", CATEGORY, *ARTERIES, "labels_note"]
#: truth.csv of `cac phantom`: the scores, then how each phantom was made.
PHANTOM_TRUTH_COLUMNS = [
    ID, "agatston", CATEGORY, "volume_mm3", *ARTERIES, "n_lesions", "cac_drs",
    "target_category", "pixel_mm", "thickness_mm", "increment_mm", "n_slices", "kernel", "noise_sd",
    "orientation", "lookalikes", "faint_lesion", "mitral_annulus", "noisy", "merged_with_lookalike", "seed",
    "variant",
]
#: points.csv of `cac review apply`: one point per part of the reviewed mask.
POINTS_COLUMNS = [ID, LABEL, "artery", X_MM, Y_MM, Z_MM, I, J, K, "component", "source"]
#: points.csv of `cac phantom`: one point per lesion.
PHANTOM_POINTS_COLUMNS = [ID, "lesion", "artery", LABEL, X_MM, Y_MM, Z_MM, K, J, I]
