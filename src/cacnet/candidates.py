"""The second stage: one decision per 2D calcium candidate (>= 130 HU) from the ensemble's soft output and anatomy.

:func:`find_candidates` finds the components, :func:`candidate_features` measures them
(:data:`FEATURE_NAMES`: the candidate, the U-Nets' probabilities and votes, the HU bands
around it, the anatomical map), :class:`SecondStage` holds the trained tree model
(:class:`TreeModel`, numpy, equal to the scikit-learn model that fitted it) and its three
thresholds, and :func:`decide_candidates` applies the rule (:func:`needed_probability`).
See docs/validation.md ("The second stage") and docs/anatomy.md for the features, the
training and the thresholds.

Examples
--------
>>> import numpy as np
>>> m = TreeModel(feature=np.array([0, -1, -1]), threshold=np.array([0.5, 0, 0]),
...               left=np.array([1, 0, 0]), right=np.array([2, 0, 0]), value=np.array([0.0, -2.0, 2.0]),
...               roots=np.array([0]), baseline=0.0)
>>> m.predict_proba(np.array([[0.2], [0.9]])).round(3).tolist()
[0.119, 0.881]
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
from scipy import ndimage

from .anatomy import ANATOMY_FEATURES, AnatomyMap
from .preprocess import CoarseGrid

__all__ = ["FEATURE_NAMES", "HU_BANDS", "Candidates", "TreeModel", "SecondStage", "find_candidates",
           "candidate_features", "accepted_candidates", "needed_probability", "decide_candidates", "densest",
           "mean_probabilities"]

#: HU bands of the context features: [low, high).
HU_BANDS = ((-np.inf, -500.0), (-500.0, -200.0), (-200.0, -30.0), (-30.0, 100.0), (100.0, 130.0), (130.0, np.inf))
_BAND_NAMES = ("air", "lung_edge", "fat", "soft", "dense_soft", "calcium_bone")
#: Cube sizes (coarse voxels) of the context shares, and of the neighbourhood maxima of the coronary probability.
CONTEXT_SIZES = (3, 5, 9)
NEIGHBOURHOOD_SIZES = (3, 7, 13)
#: Per-candidate features, in the order of the feature matrix.
FEATURE_NAMES = (
    ["peak_hu", "mean_hu", "log_area_mm2", "p_coronary"]
    + [f"p_coronary_max{s}" for s in NEIGHBOURHOOD_SIZES]
    + ["votes", "p_LM", "p_LAD", "p_LCX", "p_RCA"]
    + [f"share_{b}_{s}" for b in _BAND_NAMES for s in CONTEXT_SIZES]
    + list(ANATOMY_FEATURES)
)
#: 2D components: 8-connected within a slice, never across slices (the Agatston convention).
_STRUCT = np.zeros((3, 3, 3), bool)
_STRUCT[1] = True


def mean_probabilities(logits: Sequence[np.ndarray]) -> np.ndarray:
    """Mean softmax over the models: float32 (classes, z, y, x) from each model's logits (classes, z, y, x)."""
    acc: Optional[np.ndarray] = None
    for lg in logits:
        e = np.exp(lg - lg.max(axis=0, keepdims=True))
        p = e / e.sum(axis=0, keepdims=True)
        acc = p if acc is None else acc + p
    if acc is None:
        raise ValueError("mean_probabilities: no model output given")
    return (acc / len(logits)).astype(np.float32)


@dataclass
class Candidates:
    """The 2D candidate components of a volume (>= threshold HU, 8-connected within each slice).

    ``comps`` labels them 1..n on the fine grid; per component (index
    ``i`` = label ``i + 1``): the fine index of its densest voxel (the first
    in C order among equals), voxel count, HU sum and centroid (y, x) in
    file indices of the canonical grid.
    """

    comps: np.ndarray
    n: int
    peak: tuple[np.ndarray, np.ndarray, np.ndarray]
    peak_hu: np.ndarray
    count: np.ndarray
    hu_sum: np.ndarray
    centroid_yx: np.ndarray


def densest(ids: np.ndarray, vals: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Per component 1..n: the position in ``ids``/``vals`` of its densest voxel and that value.

    ``ids`` (labels 1..n, each present) and ``vals`` list the voxels in C order;
    among equal maxima the first in C order is taken.
    """
    peak = np.zeros(n + 1, dtype=vals.dtype)
    peak[ids] = vals  # some value of each component, then its maximum
    np.maximum.at(peak, ids, vals)
    at_peak = np.flatnonzero(vals == peak[ids])
    first = np.full(n + 1, ids.size, dtype=np.intp)
    np.minimum.at(first, ids[at_peak], at_peak)
    return first[1:], peak[1:]


def find_candidates(hu: np.ndarray, threshold_hu: float = 130.0) -> Candidates:
    """Label the 2D candidate components of ``hu`` (see :class:`Candidates`)."""
    comps, n = ndimage.label(hu >= threshold_hu, structure=_STRUCT)
    where = np.nonzero(comps)
    ids = comps[where]
    vals = np.asarray(hu[where], dtype=np.float64)
    first, peak_hu = densest(ids, vals, n)
    peak = tuple(w[first] for w in where) if n else tuple(np.zeros(0, np.intp) for _ in range(3))
    count = np.bincount(ids, minlength=n + 1)[1:].astype(np.float64)
    hu_sum = np.bincount(ids, weights=vals, minlength=n + 1)[1:]
    cy = np.bincount(ids, weights=where[1], minlength=n + 1)[1:] / np.maximum(count, 1)
    cx = np.bincount(ids, weights=where[2], minlength=n + 1)[1:] / np.maximum(count, 1)
    return Candidates(comps, int(n), peak, peak_hu, count, hu_sum,  # type: ignore[arg-type]
                      np.stack([cy, cx], axis=1) if n else np.zeros((0, 2)))


#: Fine voxels per piece of :func:`_band_shares` (2 MB of int64 keys: cache-sized, below the process's mmap threshold).
_BAND_CHUNK = 1 << 18


def _band_shares(hu: np.ndarray, grid: CoarseGrid) -> list[np.ndarray]:
    """Per coarse voxel, the share (float32) of its fine voxels in each HU band.

    One pass over the volume, a slice (or a few rows) at a time: the band of
    every fine voxel (the number of band edges it reaches, ``hu >= low``) plus
    its coarse (y, x) bin gives a key, and a bincount of the keys is added to
    the counts of the slice's coarse z. Every temporary is the size of one
    piece (:data:`_BAND_CHUNK` voxels), none the size of the volume. Shares
    are the exact integer counts divided in float32.
    """
    nz, ny, nx = grid.coarse_shape
    nb = len(HU_BANDS)
    lows = [lo for lo, _ in HU_BANDS[1:]]
    nbins = ny * nx * nb
    # per fine (y, x): the first key of its coarse (y, x) bin; a voxel's key adds its band (0-5)
    base = (grid.index[1][:, None] * (nx * nb) + grid.index[2][None, :] * nb).astype(np.intp)
    counts = np.zeros((nz, nbins), dtype=np.int64)
    rows = min(hu.shape[1], max(1, _BAND_CHUNK // max(1, hu.shape[2])))
    reached = np.empty((rows, hu.shape[2]), dtype=bool)
    band = np.empty((rows, hu.shape[2]), dtype=np.uint8)
    key = np.empty((rows, hu.shape[2]), dtype=np.intp)
    for z in range(hu.shape[0]):
        acc = counts[grid.index[0][z]]
        for y0 in range(0, hu.shape[1], rows):
            h = hu[z, y0:y0 + rows]
            n = h.shape[0]
            b, r, k = band[:n], reached[:n], key[:n]
            np.greater_equal(h, lows[0], out=r)
            b[...] = r
            for lo in lows[1:]:
                np.greater_equal(h, lo, out=r)
                b += r
            np.add(base[y0:y0 + n], b, out=k)
            acc += np.bincount(k.ravel(), minlength=nbins)
    shares = counts.reshape(nz, ny, nx, nb).astype(np.float32)
    total = shares.sum(axis=-1)
    return [shares[..., k] / total for k in range(nb)]


def candidate_features(hu: np.ndarray, spacing: Sequence[float], grid: CoarseGrid, probs: np.ndarray,
                       votes: np.ndarray, cands: Candidates, anatomy: AnatomyMap) -> np.ndarray:
    """The feature matrix (n, len(FEATURE_NAMES)) float64 of the candidates (see docs/validation.md).

    ``probs``: the ensemble's mean class probabilities (5, z, y, x) on the
    coarse grid (:func:`mean_probabilities`); ``votes``: models voting coronary
    per coarse voxel; ``anatomy``: the scan's :class:`cacnet.anatomy.AnatomyMap`
    (the last :data:`cacnet.anatomy.ANATOMY_FEATURES` columns, read at each
    candidate's densest voxel).
    """
    n = cands.n
    if n == 0:
        return np.zeros((0, len(FEATURE_NAMES)))
    ci = tuple(grid.index[a][cands.peak[a]] for a in range(3))
    pc = 1.0 - probs[0]
    cols: list[np.ndarray] = [cands.peak_hu, cands.hu_sum / cands.count,
                              np.log1p(cands.count * float(spacing[1]) * float(spacing[2])), pc[ci]]
    cols += [ndimage.maximum_filter(pc, size=s, mode="constant")[ci] for s in NEIGHBOURHOOD_SIZES]
    cols += [votes[ci]] + [probs[k][ci] for k in range(1, 5)]
    for share in _band_shares(hu, grid):
        cols += [ndimage.uniform_filter(share, size=s, mode="constant")[ci] for s in CONTEXT_SIZES]
    base = np.stack([np.asarray(c, dtype=np.float64) for c in cols], axis=1)
    return np.concatenate([base, anatomy.at(*cands.peak)], axis=1)


@dataclass
class TreeModel:
    """Gradient-boosted binary trees in flat arrays; ``P = sigmoid(baseline + sum of the trees' leaf values)``.

    Node ``j``: leaf when ``feature[j] < 0`` (value ``value[j]``), else go to
    ``left[j]`` when ``x[feature[j]] <= threshold[j]`` and to ``right[j]``
    otherwise (scikit-learn's rule for numeric features without missing
    values). ``roots``: each tree's first node. Children are global node
    indices.
    """

    feature: np.ndarray
    threshold: np.ndarray
    left: np.ndarray
    right: np.ndarray
    value: np.ndarray
    roots: np.ndarray
    baseline: float

    def raw(self, X: np.ndarray) -> np.ndarray:
        """The sum of ``baseline`` and every tree's leaf value, per row of ``X`` (n, features)."""
        X = np.asarray(X, dtype=np.float64)
        out = np.full(X.shape[0], float(self.baseline))
        if X.shape[0] == 0:
            return out
        rows = np.arange(X.shape[0])
        leaf = self.feature < 0
        for root in self.roots:
            node = np.full(X.shape[0], root, dtype=np.int64)
            while True:
                inner = ~leaf[node]
                if not inner.any():
                    break
                ni, ri = node[inner], rows[inner]
                go_left = X[ri, self.feature[ni]] <= self.threshold[ni]
                node[inner] = np.where(go_left, self.left[ni], self.right[ni])
            out += self.value[node]
        return out

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """P(coronary) per row of ``X``."""
        return 1.0 / (1.0 + np.exp(-self.raw(X)))

    @classmethod
    def from_sklearn(cls, clf: Any) -> "TreeModel":
        """From a fitted binary ``sklearn.ensemble.HistGradientBoostingClassifier`` (numeric features)."""
        feats, thr, left, right, val, roots = [], [], [], [], [], []
        offset = 0
        for (pred,) in clf._predictors:  # one tree per iteration (binary)
            nodes = pred.nodes
            if nodes["is_categorical"].any():
                raise ValueError("TreeModel: categorical splits are not supported")
            roots.append(offset)
            feats.append(np.where(nodes["is_leaf"] == 1, -1, nodes["feature_idx"]).astype(np.int64))
            thr.append(nodes["num_threshold"].astype(np.float64))
            left.append(nodes["left"].astype(np.int64) + offset)
            right.append(nodes["right"].astype(np.int64) + offset)
            val.append(nodes["value"].astype(np.float64))
            offset += len(nodes)
        return cls(np.concatenate(feats), np.concatenate(thr), np.concatenate(left), np.concatenate(right),
                   np.concatenate(val), np.asarray(roots, dtype=np.int64),
                   float(np.ravel(clf._baseline_prediction)[0]))


@dataclass
class SecondStage:
    """A trained second stage: the tree model, its acceptance threshold and provenance.

    Saved as one ``.npz`` (arrays, and the JSON ``meta`` with
    ``feature_names``, ``threshold`` and how it was trained); loading
    checks that this version computes every feature the model uses (a
    model trained on fewer features, e.g. v0.6's without the anatomy,
    still loads: :meth:`predict` picks its columns by name).
    """

    model: TreeModel
    threshold: float = 0.5
    meta: dict = field(default_factory=dict)
    #: P(coronary) needed by a candidate that no U-Net voted for (stronger evidence); None: ``threshold``.
    threshold_no_vote: Optional[float] = None
    #: P(coronary) needed by a candidate that a majority of the U-Nets voted for (the paper's own rule already
    #: accepts it); None: ``threshold``. ``threshold`` then applies to a minority's vote.
    threshold_majority: Optional[float] = None
    #: The model's input columns, by name (a subset of :data:`FEATURE_NAMES`, in the model's order).
    feature_names: list = field(default_factory=lambda: list(FEATURE_NAMES))

    def predict(self, X: np.ndarray) -> np.ndarray:
        """P(coronary) per row of a :func:`candidate_features` matrix (every column of :data:`FEATURE_NAMES`)."""
        cols = [FEATURE_NAMES.index(n) for n in self.feature_names]
        return self.model.predict_proba(np.asarray(X)[:, cols])

    def tier_thresholds(self) -> tuple[float, float, float]:
        """The P(coronary) needed with a majority's vote, a minority's, none; an unset tier needs ``threshold``."""
        t = self.threshold
        return (t if self.threshold_majority is None else self.threshold_majority, t,
                t if self.threshold_no_vote is None else self.threshold_no_vote)

    def save(self, path: Path | str) -> Path:
        """Write atomically; returns the path."""
        path = Path(path)
        meta = {**self.meta, "feature_names": list(self.feature_names), "threshold": self.threshold,
                "threshold_no_vote": self.threshold_no_vote, "threshold_majority": self.threshold_majority,
                "format": "cac-toolkit second stage v1"}
        tmp = path.with_name(f".{path.name}.tmp.npz")
        m = self.model
        np.savez_compressed(tmp, feature=m.feature, threshold=m.threshold, left=m.left, right=m.right,
                            value=m.value, roots=m.roots, baseline=np.array(m.baseline), meta=np.array(json.dumps(meta)))
        return tmp.replace(path)

    @classmethod
    def load(cls, path: Path | str) -> "SecondStage":
        """Read a file written by :meth:`save`.

        Raises
        ------
        ValueError
            The file is not a second stage of this format, or uses features this version does not compute.
        """
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                model = TreeModel(z["feature"], z["threshold"], z["left"], z["right"], z["value"], z["roots"],
                                  float(z["baseline"]))
        except (OSError, KeyError, ValueError) as exc:
            raise ValueError(f"{path}: not a readable second-stage file ({exc}); restore it from the release "
                             f"or score without it (cac score --no-second-stage).") from exc
        names = meta.get("feature_names")
        unknown = [n for n in names or [] if n not in FEATURE_NAMES]
        if not names or unknown:
            raise ValueError(f"{path}: trained on other features than this cacnet version computes "
                             f"({', '.join(unknown) or 'none named'}); use the weights released with this version "
                             f"or retrain (cac train --second-stage-cases).")
        no_vote = meta.get("threshold_no_vote")
        majority = meta.get("threshold_majority")
        return cls(model, float(meta["threshold"]), meta, threshold_no_vote=None if no_vote is None else float(no_vote),
                   threshold_majority=None if majority is None else float(majority), feature_names=list(names))


#: Candidates with at least this P(coronary) that are not accepted are recorded (``rejected_candidates``).
RECORD_PROBABILITY = 0.1


def needed_probability(votes: np.ndarray, n_models: int, majority: float, minority: float,
                       no_vote: float) -> np.ndarray:
    """P(coronary) each candidate needs, by how many of the ``n_models`` U-Nets voted for it.

    ``majority`` with a majority's vote, ``minority`` with a minority's, ``no_vote``
    (the stronger evidence) with none: :meth:`SecondStage.tier_thresholds`.

    Examples
    --------
    >>> needed_probability(np.array([5, 2, 0]), 5, 0.4, 0.8, 0.9).tolist()
    [0.4, 0.8, 0.9]
    """
    v = np.asarray(votes)
    return np.where(v * 2 > n_models, majority, np.where(v > 0, minority, no_vote)).astype(np.float64)


def accepted_candidates(p: np.ndarray, votes: np.ndarray, inside: np.ndarray, n_models: int, majority: float,
                        minority: float, no_vote: float) -> np.ndarray:
    """The decision rule: inside the sac, and P(coronary) at least :func:`needed_probability`. Boolean.

    Examples
    --------
    >>> accepted_candidates(np.array([0.6, 0.6, 0.9]), np.array([2, 0, 0]), np.array([True, True, False]), 5,
    ...                     0.5, 0.5, 0.7)
    array([ True, False, False])
    """
    return np.asarray(inside, bool) & (np.asarray(p) >= needed_probability(votes, n_models, majority, minority,
                                                                           no_vote))


def decide_candidates(hu: np.ndarray, spacing: Sequence[float], grid: CoarseGrid, probs: np.ndarray,
                      votes: np.ndarray, stage: SecondStage, anatomy: AnatomyMap, threshold_hu: float = 130.0,
                      n_models: int = 5):
    """Label the 2D candidate components of ``hu`` with the anatomy and the second stage.

    A component is coronary when its densest voxel lies inside the
    pericardial sac (:meth:`cacnet.anatomy.AnatomyMap.outside_reason`) and
    its P(coronary) reaches ``stage.threshold_majority`` when a majority of the
    ``n_models`` U-Nets voted for it, ``stage.threshold`` when a minority did,
    ``stage.threshold_no_vote`` when none did (:func:`needed_probability`); its artery is the most
    probable one (mean probabilities of LM, LAD, LCX, RCA) at the coarse
    voxel of its densest voxel.

    Returns the fine label volume (uint8) and one record per component that
    is accepted, has a model's vote, has P >= :data:`RECORD_PROBABILITY`, or
    was rejected by the anatomy with P >= :data:`RECORD_PROBABILITY` or a vote:
    ``(slice, centroid_y, centroid_x, votes, label, accepted, p, reason)``
    (``reason``: None when accepted; why not otherwise).
    """
    cands = find_candidates(hu, threshold_hu)
    labels = np.zeros(hu.shape, dtype=np.uint8)
    if cands.n == 0:
        return labels, []
    X = candidate_features(hu, spacing, grid, probs, votes, cands, anatomy)
    p = stage.predict(X)
    ci = tuple(grid.index[a][cands.peak[a]] for a in range(3))
    artery = (np.argmax(probs[1:], axis=0) + 1).astype(np.uint8)[ci]
    v = votes[ci]
    outside = anatomy.outside_reason(X[:, len(FEATURE_NAMES) - len(ANATOMY_FEATURES):])
    inside = np.array([r is None for r in outside], dtype=bool)
    needed = needed_probability(v, n_models, *stage.tier_thresholds())
    accepted = inside & (p >= needed)
    lut = np.zeros(cands.n + 1, dtype=np.uint8)
    lut[1:][accepted] = artery[accepted]
    nz = np.nonzero(cands.comps)
    labels[nz] = lut[cands.comps[nz]]
    keep = np.flatnonzero(accepted | (v > 0) | (p >= RECORD_PROBABILITY))

    def why(i: int) -> Optional[str]:
        if accepted[i]:
            return None
        if outside[i] is not None:
            return str(outside[i])
        return (f"P(coronary) {p[i]:.3f} below {needed[i]:g}"
                + (" (no U-Net voted for it: stronger evidence needed)" if v[i] == 0 and needed[i] > stage.threshold
                   else ""))

    records = [(int(cands.peak[0][i]), float(cands.centroid_yx[i, 0]), float(cands.centroid_yx[i, 1]), int(v[i]),
                int(artery[i]), bool(accepted[i]), float(p[i]), why(i)) for i in keep]
    return labels, records
