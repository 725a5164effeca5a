"""Training the second stage (:mod:`cacnet.candidates`) on an exported ensemble (private).

The rows are the 2D candidate components of full-resolution cases with
exact labels: real backgrounds with inserted calcium (the traced scans,
:func:`iter_inserted_scans`, other seeds than the U-Nets' cases) and
phantoms of both generator variants (their own seed). A candidate is
coronary when more than half of its voxels are labelled. Every coronary
candidate is kept; of the others, those near the ensemble's coronary output
(``p_coronary_max13`` > 0.001, or a vote) and a random share of the rest
(about :data:`NEGATIVES_PER_CASE` per case; sharp kernels make 10^4-10^5
noise specks per scan). A ``HistGradientBoostingClassifier``
(scikit-learn, the ``train`` extra) is fitted with fixed settings
(:data:`CLASSIFIER`), converted to :class:`cacnet.candidates.TreeModel`
(checked equal on the training rows) and written next to the ONNX files,
with its manifest entry.
"""

from __future__ import annotations

import hashlib
import json
import time
import zlib
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from .._files import sha256_file, write_text_atomic
from types import SimpleNamespace

from ..anatomy import ANATOMY_FEATURES, MAP_VERSION, anatomical_map
from ..candidates import (FEATURE_NAMES, SecondStage, TreeModel, accepted_candidates, candidate_features,
                          find_candidates)
from ..triage import triage
from ..ensemble import Ensemble, load_manifest
from ..io import read_scan
from ..preprocess import preprocess
from ._backgrounds import Background
from ..phantom.insertion import iter_inserted_scans

__all__ = ["CLASSIFIER", "NEGATIVES_PER_CASE", "SECOND_STAGE_SEED", "VALIDATION_SEED", "SECOND_STAGE_FILE",
           "MAX_ZERO_SCANS_SCORED", "LOOKALIKE_RICH_RATE", "candidate_rows", "validation_rows", "choose_thresholds",
           "fit_second_stage", "train_second_stage"]

#: Seed base of the second stage's cases (backgrounds: SEED * 1000 + k; phantoms: case_seed(SEED, i)).
SECOND_STAGE_SEED = 7000
#: Seed base of the validation cases that choose the thresholds (never fitted on).
VALIDATION_SEED = 7500
SECOND_STAGE_FILE = "second_stage.npz"
NEGATIVES_PER_CASE = 3000
#: The classifier's settings (fixed, not tuned on any test data). scikit-learn's early stopping is on by default
#: for more than 10,000 rows: it holds out a random 10 % of the rows and stops when their loss stops improving.
CLASSIFIER = {"max_iter": 300, "learning_rate": 0.05, "max_leaf_nodes": 15, "min_samples_leaf": 40,
              "class_weight": {0: 1.0, 1: 20.0}, "random_state": 0}
THRESHOLD = 0.5


def _case_features(ensemble: Ensemble, hu: np.ndarray, spacing: Sequence[float], labels: np.ndarray):
    """Every candidate of one case: features, targets (1 coronary), area (mm^2), and what re-mapping needs.

    The last item holds the densest voxel of each candidate (``peaks``, (n, 3))
    and the triage's smoothed grid (``v``, ``block``, ``cell``): enough to
    recompute the anatomy columns (:func:`_remap`) without the models.
    """
    hu = np.asarray(hu, dtype=np.float32)
    x, grid = preprocess(hu, spacing)
    probs, vote = ensemble.soft_vote(x)
    checked = triage(SimpleNamespace(hu=hu, spacing=tuple(float(s) for s in spacing), meta={}))
    anatomy = anatomical_map(checked)
    cands = find_candidates(hu)
    X = candidate_features(hu, spacing, grid, probs, vote.votes, cands, anatomy)
    remap = {"peaks": np.stack(cands.peak, axis=1).astype(np.int32) if cands.n else np.zeros((0, 3), np.int32),
             "v": checked.smoothed, "block": np.asarray(checked.block), "cell": np.asarray(checked.cell_mm)}
    if cands.n == 0:
        return X, np.zeros(0, np.int8), np.zeros(0), remap
    nz = np.nonzero(cands.comps)
    ids = cands.comps[nz]
    labelled = np.bincount(ids, weights=(labels[nz] > 0), minlength=cands.n + 1)[1:]
    y = (labelled * 2 > cands.count).astype(np.int8)
    return X, y, cands.count * float(spacing[1]) * float(spacing[2]), remap


def _remap(X: np.ndarray, peaks: np.ndarray, v: np.ndarray, block, cell, n_anatomy: int) -> np.ndarray:
    """``X`` with its last ``n_anatomy`` (anatomy) columns replaced by this version's map's, from a cached grid."""
    from ..triage import chest_parts

    cell = tuple(float(c) for c in cell)
    checked = SimpleNamespace(smoothed=v, block=tuple(int(b) for b in block), cell_mm=cell,
                              parts=chest_parts(v, cell))
    amap = anatomical_map(checked)
    base = np.asarray(X, dtype=np.float64)[:, :X.shape[1] - n_anatomy]
    return np.concatenate([base, amap.at(peaks[:, 0], peaks[:, 1], peaks[:, 2])], axis=1)


def _save_rows(path: Path, X: np.ndarray, y: np.ndarray, keep: np.ndarray, remap: dict) -> None:
    tmp = path.with_name(f".{path.stem}.tmp.npz")
    np.savez_compressed(tmp, X=X[keep], y=y[keep], peaks=remap["peaks"][keep], v=remap["v"], block=remap["block"],
                        cell=remap["cell"], anatomy=np.array(ANATOMY_FEATURES), map_version=np.array(MAP_VERSION))
    tmp.replace(path)


def _load_rows(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Cached rows; their anatomy columns are recomputed when the map changed since they were cached."""
    with np.load(path) as z:
        X, y = z["X"], z["y"]
        old = list(z["anatomy"]) if "anatomy" in z else None
        if old is None or "v" not in z or X.shape[1] - len(old) != len(FEATURE_NAMES) - len(ANATOMY_FEATURES):
            raise ValueError(f"{path}: cached rows of another feature set; delete the cache folder to redo them")
        if str(z["map_version"]) != MAP_VERSION or old != list(ANATOMY_FEATURES):
            X = _remap(X, z["peaks"], z["v"], z["block"], z["cell"], len(old))
    return X, y


def candidate_rows(ensemble: Ensemble, hu: np.ndarray, spacing: Sequence[float], labels: np.ndarray,
                   rng: np.random.Generator, negatives: int = NEGATIVES_PER_CASE,
                   cache: Optional[Path] = None) -> tuple[np.ndarray, np.ndarray]:
    """Features (n, len(FEATURE_NAMES)) and targets (1 coronary, 0 not) of one case's kept candidates.

    ``cache``: an ``.npz`` file to write them to (with what :func:`_remap` needs).
    """
    X, y, _, remap = _case_features(ensemble, hu, spacing, labels)
    keep = np.zeros(len(y), bool)
    if len(y):
        near = (X[:, FEATURE_NAMES.index("p_coronary_max13")] > 1e-3) | (X[:, FEATURE_NAMES.index("votes")] > 0)
        keep = (y == 1) | near | (rng.random(len(y)) < negatives / len(y))
    if cache is not None:
        _save_rows(cache, X, y, keep, remap)
    return X[keep], y[keep]


def validation_rows(ensemble: Ensemble, hu: np.ndarray, spacing: Sequence[float], labels: np.ndarray,
                    cache: Optional[Path] = None) -> tuple[np.ndarray, np.ndarray]:
    """The candidates of a validation case that can change its score: area >= 1 mm^2, or coronary."""
    X, y, area, remap = _case_features(ensemble, hu, spacing, labels)
    keep = (area >= 1.0) | (y == 1)
    if cache is not None:
        _save_rows(cache, X, y, keep, remap)
    return X[keep], y[keep]


#: Look-alike rate of the second stage's look-alike-rich phantoms and of its category-A validation phantoms
#: (every kind present: aortic wall and valve, pericardium, costal cartilage, pacing lead).
LOOKALIKE_RICH_RATE = 1.0

#: The operating point: at most this share of the zero-calcium validation scans may get any score.
MAX_ZERO_SCANS_SCORED = 0.02
_GRID = np.round(np.concatenate([np.arange(0.05, 0.95, 0.05), [0.95, 0.97, 0.98, 0.99, 0.995, 0.998, 0.999]]), 3)


def choose_thresholds(stage: SecondStage, cases: Sequence[tuple[str, bool, np.ndarray, np.ndarray]],
                      max_zero_scored: float = MAX_ZERO_SCANS_SCORED, n_models: int = 5) -> dict:
    """Pick the three thresholds (a majority of the U-Nets voted / a minority / none) on validation cases.

    ``cases``: ``(id, zero_calcium, X, y)``. Among the threshold triples of a
    fixed grid (majority <= minority <= no vote) for which at most
    ``max_zero_scored`` of the zero-calcium cases have an accepted candidate
    inside the sac, the triple that accepts the most coronary candidates of
    the calcium cases (then the fewest non-coronary ones, then the higher
    thresholds). Sets the thresholds on ``stage`` and returns what was measured.
    """
    a0 = len(FEATURE_NAMES) - len(ANATOMY_FEATURES)
    rows = []
    for cid, zero, X, y in cases:
        p = stage.predict(X) if len(y) else np.zeros(0)
        inside = X[:, a0 + 1] <= 0 if len(y) else np.zeros(0, bool)
        votes = X[:, FEATURE_NAMES.index("votes")] if len(y) else np.zeros(0)
        rows.append((cid, zero, p, inside, votes, np.asarray(y)))
    zero_cases = [r for r in rows if r[1]]
    calc = [r for r in rows if not r[1]]
    n_pos = sum(int(r[5].sum()) for r in calc)
    best = None
    for tm in _GRID:
        for t in _GRID[_GRID >= tm]:
            for t0 in _GRID[_GRID >= t]:
                def acc(r):
                    return accepted_candidates(r[2], r[4], r[3], n_models, tm, t, t0)
                scored = 0
                for r in zero_cases:
                    scored += bool(acc(r).any())
                    if scored / max(len(zero_cases), 1) > max_zero_scored:
                        break
                share = scored / max(len(zero_cases), 1)
                if share > max_zero_scored:
                    continue
                tp = fp = 0
                for r in calc:
                    a = acc(r)
                    tp += int((a & (r[5] == 1)).sum())
                    fp += int((a & (r[5] == 0)).sum())
                key = (tp, -fp, t, t0, tm)
                if best is None or key > best[0]:
                    best = (key, tm, t, t0, scored, share, fp)
    if best is None:  # nothing meets the operating point: the top threshold for every tier
        tm = t = t0 = float(_GRID[-1])
        best = ((0, 0, t, t0, tm), tm, t, t0, None, None, None)
    _, tm, t, t0, scored, share, fp = best
    stage.threshold_majority, stage.threshold, stage.threshold_no_vote = float(tm), float(t), float(t0)
    out = {"threshold_majority": float(tm), "threshold": float(t), "threshold_no_vote": float(t0),
           "n_models": n_models, "max_zero_scans_scored": max_zero_scored,
           "zero_calcium_cases": len(zero_cases), "zero_calcium_scored": scored,
           "calcium_cases": len(calc), "coronary_candidates": n_pos,
           "coronary_accepted": int(best[0][0]), "non_coronary_accepted_in_calcium_cases": fp,
           "zero_case_ids": [r[0] for r in zero_cases], "calcium_case_ids": [r[0] for r in calc]}
    stage.meta["validation"] = out
    return out


def fit_second_stage(X: np.ndarray, y: np.ndarray, meta: Optional[dict] = None) -> SecondStage:
    """Fit the classifier (:data:`CLASSIFIER`) and convert it; raises ValueError without both classes."""
    try:
        from sklearn.ensemble import HistGradientBoostingClassifier
    except ImportError:  # pragma: no cover - the train extra installs it
        raise ImportError("the second stage needs scikit-learn: pip install 'cacnet[train]'") from None
    y = np.asarray(y).astype(int)
    if len(np.unique(y)) < 2:
        raise ValueError("second stage: the cases gave no coronary candidate, or only coronary ones; "
                         "give more cases (--second-stage-cases).")
    clf = HistGradientBoostingClassifier(**CLASSIFIER).fit(X, y)
    model = TreeModel.from_sklearn(clf)
    diff = float(np.abs(model.predict_proba(X) - clf.predict_proba(X)[:, 1]).max())
    if diff > 1e-9:
        raise RuntimeError(f"second stage: the numpy trees differ from scikit-learn by {diff:g}")
    return SecondStage(model, THRESHOLD, {**(meta or {}), "numpy_vs_sklearn_max_prob_diff": diff})


def _weights_key(weights_dir: Path) -> str:
    """A key of the ensemble (its models' sha256): cached rows belong to the ensemble that made them."""
    shas = [m["sha256"] for m in load_manifest(weights_dir)["models"]]
    return hashlib.sha256("".join(shas).encode()).hexdigest()[:12]


def train_second_stage(weights_dir: Path, backgrounds: Sequence[Background], cases: int, *,
                       negatives: Sequence[Path] = (), phantoms: Optional[int] = None,
                       variants: Sequence[str] = ("default", "varied"),
                       lookalike_phantoms: Optional[int] = None,
                       cache: Optional[Path] = None, held_out: Sequence[str] = (),
                       validation: int = 0, validation_scans: Sequence[Path] = (),
                       emit: Callable[[str, dict], None] = lambda kind, info: None) -> dict:
    """Fit the second stage of the ensemble in ``weights_dir`` and add it to its manifest.

    ``cases`` inserted-calcium cases per background reconstruction
    (categories A-E in turn) and ``phantoms`` (default: ``cases``) phantoms
    of each generator variant, ``lookalike_phantoms`` (default: half of
    ``phantoms``) more per variant with every look-alike kind present
    (:data:`LOOKALIKE_RICH_RATE`: pericardium, costal cartilage, aortic wall
    and valve, pacing lead; the hard negatives next to the heart), and every candidate-row of the real scans
    without coronary calcium in ``negatives`` (files or DICOM folders, as
    ``cac train --negatives``: every candidate is non-coronary; sampled as
    the cases' negatives). Each case's rows are cached in ``cache``
    (per ensemble: the rows depend on its output), so a rerun resumes.

    With ``validation`` > 0 the two thresholds are then chosen
    (:func:`choose_thresholds`) on cases the trees never saw: ``validation``
    inserted-calcium cases per background (other seeds; category A ones hold
    look-alikes only), ``2 * validation`` phantoms per generator (half of
    them category A, full of look-alikes), and the real scans without coronary calcium in
    ``validation_scans`` (zero-calcium cases). Returns the manifest entry.
    """
    from ..phantom import case_seed, generate_phantom

    weights_dir = Path(weights_dir)
    ensemble = Ensemble(weights_dir, second_stage=False)
    slot = Path(cache) / _weights_key(weights_dir) if cache is not None else None
    phantoms = cases if phantoms is None else phantoms
    lookalike_phantoms = phantoms // 2 if lookalike_phantoms is None else lookalike_phantoms
    t0 = time.perf_counter()
    parts: list[tuple[str, np.ndarray, np.ndarray]] = []

    def cached(case_id: str):
        path = slot / f"{case_id}.npz" if slot is not None else None
        if path is None or not path.exists():
            return None
        return _load_rows(path)

    def rows(case_id: str, hu, spacing, labels):
        if slot is not None:
            slot.mkdir(parents=True, exist_ok=True)
        X, y = candidate_rows(ensemble, hu, spacing, labels, np.random.default_rng(zlib.crc32(case_id.encode())),
                              cache=slot / f"{case_id}.npz" if slot is not None else None)
        emit("second_stage_case", {"case": case_id, "rows": len(y), "coronary": int(y.sum())})
        return X, y

    sources = []
    for k, b in enumerate(backgrounds):
        ids = [f"{b.slug}_{i:03d}" for i in range(cases)]
        got = {i: cached(ids[i]) for i in range(cases)}
        todo = [i for i in range(cases) if got[i] is None]
        if todo:
            for i, ins, _ in iter_inserted_scans(b.path, b.tracing_path, todo, SECOND_STAGE_SEED * 1000 + k):
                got[i] = rows(ids[i], ins.hu, ins.spacing, ins.labels)
        parts += [(b.slug, *got[i]) for i in range(cases)]
        sources.append(b.scan)
    for neg in map(Path, negatives):
        case_id = "negative_" + hashlib.sha256(str(neg.resolve()).encode()).hexdigest()[:12]
        got_neg = cached(case_id)
        if got_neg is None:
            scan = read_scan(neg)
            got_neg = rows(case_id, scan.hu, scan.spacing, np.zeros(scan.hu.shape, np.uint8))
        parts.append(("negatives", *got_neg))
    for variant in variants:
        for i in range(phantoms):
            case_id = f"phantom-{variant}_{i:03d}"
            got_one = cached(case_id)
            if got_one is None:
                c = generate_phantom(case_seed(SECOND_STAGE_SEED, i), category="ABCDE"[i % 5], variant=variant)
                got_one = rows(case_id, c.hu, c.spacing, c.labels)
            parts.append((f"phantom-{variant}", *got_one))
        for i in range(lookalike_phantoms):
            case_id = f"phantom-{variant}-lookalikes_{i:03d}"
            got_one = cached(case_id)
            if got_one is None:
                c = generate_phantom(case_seed(SECOND_STAGE_SEED + 1, i), category="ABCDE"[i % 5], variant=variant,
                                     lookalike_rate=LOOKALIKE_RICH_RATE)
                got_one = rows(case_id, c.hu, c.spacing, c.labels)
            parts.append((f"phantom-{variant}-lookalikes", *got_one))
    vcases: list[tuple[str, bool, np.ndarray, np.ndarray]] = []

    def vrows(case_id: str, zero: bool, make):
        path = slot / f"{case_id}.npz" if slot is not None else None
        if path is not None and path.exists():
            vcases.append((case_id, zero, *_load_rows(path)))
            return
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        hu, spacing, labels = make()
        X, y = validation_rows(ensemble, hu, spacing, labels, cache=path)
        emit("second_stage_validation_case", {"case": case_id, "zero_calcium": zero, "rows": len(y)})
        vcases.append((case_id, zero, X, y))

    if validation:
        for k, b in enumerate(backgrounds):
            ids = [f"val_{b.slug}_{i:03d}" for i in range(validation)]
            todo = [i for i in range(validation) if slot is None or not (slot / f"{ids[i]}.npz").exists()]
            made = {}
            if todo:
                for i, ins, _ in iter_inserted_scans(b.path, b.tracing_path, todo, VALIDATION_SEED * 1000 + k):
                    made[i] = (ins.hu, ins.spacing, ins.labels)
            for i in range(validation):
                vrows(ids[i], i % 5 == 0, lambda i=i: made[i])
        for variant in variants:
            for i in range(2 * validation):
                cat = "A" if i % 2 == 0 else "BCDE"[(i // 2) % 4]

                def make(i=i, cat=cat, variant=variant):
                    rich = {"lookalike_rate": LOOKALIKE_RICH_RATE} if cat == "A" else {}  # else the default
                    c = generate_phantom(case_seed(VALIDATION_SEED, i), category=cat, variant=variant, **rich)
                    return c.hu, c.spacing, c.labels
                vrows(f"val_phantom-{variant}{'-lookalikes' if cat == 'A' else ''}_{i:03d}", cat == "A", make)
        for scan_path in map(Path, validation_scans):
            def make_real(scan_path=scan_path):
                scan = read_scan(scan_path)
                return scan.hu, scan.spacing, np.zeros(scan.hu.shape, np.uint8)
            vrows("val_real_" + hashlib.sha256(str(scan_path.resolve()).encode()).hexdigest()[:12], True, make_real)
    X = np.concatenate([p[1] for p in parts]) if parts else np.zeros((0, len(FEATURE_NAMES)))
    y = np.concatenate([p[2] for p in parts]) if parts else np.zeros(0, np.int8)
    data = {
        "backgrounds": sources, "cases_per_background": cases, "phantoms_per_variant": phantoms,
        "negatives": [str(n) for n in negatives],
        "lookalike_phantoms_per_variant": lookalike_phantoms, "lookalike_rich_rate": LOOKALIKE_RICH_RATE,
        "variants": list(variants), "held_out_backgrounds": list(held_out), "seed": SECOND_STAGE_SEED,
        "rows": int(len(y)), "coronary_rows": int(y.sum()),
        "rows_by_source": {s: [int(sum(len(p[2]) for p in parts if p[0] == s)),
                               int(sum(p[2].sum() for p in parts if p[0] == s))]
                           for s in dict.fromkeys(p[0] for p in parts)},
    }
    stage = fit_second_stage(X, y, {"classifier": "sklearn HistGradientBoostingClassifier",
                                    "settings": {k: (v if k != "class_weight" else {str(a): b for a, b in v.items()})
                                                 for k, v in CLASSIFIER.items()},
                                    "data": data, "ensemble": _weights_key(weights_dir)})
    if vcases:
        chosen = choose_thresholds(stage, vcases, n_models=ensemble.n_models)
        chosen["real_scans"] = [str(p) for p in validation_scans]
        emit("second_stage_thresholds", {k: v for k, v in chosen.items() if not k.endswith("_ids")})
    path = stage.save(weights_dir / SECOND_STAGE_FILE)
    entry = {"file": SECOND_STAGE_FILE, "sha256": sha256_file(path), "threshold": stage.threshold,
             "threshold_no_vote": stage.threshold_no_vote, "threshold_majority": stage.threshold_majority,
             "validation": stage.meta.get("validation"),
             "features": list(FEATURE_NAMES), "classifier": stage.meta["classifier"],
             "settings": stage.meta["settings"], "data": data,
             "numpy_vs_sklearn_max_prob_diff": stage.meta["numpy_vs_sklearn_max_prob_diff"],
             "seconds": round(time.perf_counter() - t0, 1)}
    manifest = load_manifest(weights_dir)
    manifest["second_stage"] = entry
    write_text_atomic(weights_dir / "manifest.json", json.dumps(manifest, indent=1))
    emit("second_stage", {"file": str(path), "rows": data["rows"], "coronary": data["coronary_rows"]})
    return entry
