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

from .._files import sha256_file
from ..candidates import FEATURE_NAMES, SecondStage, TreeModel, candidate_features, find_candidates
from ..ensemble import Ensemble, load_manifest
from ..io import read_scan
from ..preprocess import preprocess
from ._backgrounds import Background
from ._insert import iter_inserted_scans
from ._joint import _write_atomic

__all__ = ["CLASSIFIER", "NEGATIVES_PER_CASE", "SECOND_STAGE_SEED", "SECOND_STAGE_FILE", "candidate_rows",
           "fit_second_stage", "train_second_stage"]

#: Seed base of the second stage's cases (backgrounds: SEED * 1000 + k; phantoms: case_seed(SEED, i)).
SECOND_STAGE_SEED = 7000
SECOND_STAGE_FILE = "second_stage.npz"
NEGATIVES_PER_CASE = 3000
#: The classifier's settings (fixed, not tuned on any test data). scikit-learn's early stopping is on by default
#: for more than 10,000 rows: it holds out a random 10 % of the rows and stops when their loss stops improving.
CLASSIFIER = {"max_iter": 300, "learning_rate": 0.05, "max_leaf_nodes": 15, "min_samples_leaf": 40,
              "class_weight": {0: 1.0, 1: 20.0}, "random_state": 0}
THRESHOLD = 0.5


def candidate_rows(ensemble: Ensemble, hu: np.ndarray, spacing: Sequence[float], labels: np.ndarray,
                   rng: np.random.Generator, negatives: int = NEGATIVES_PER_CASE) -> tuple[np.ndarray, np.ndarray]:
    """Features (n, len(FEATURE_NAMES)) and targets (1 coronary, 0 not) of one case's kept candidates."""
    hu = np.asarray(hu, dtype=np.float32)
    x, grid = preprocess(hu, spacing)
    probs, vote = ensemble.soft_vote(x)
    cands = find_candidates(hu)
    X = candidate_features(hu, spacing, grid, probs, vote.votes, cands)
    if cands.n == 0:
        return X, np.zeros(0, np.int8)
    nz = np.nonzero(cands.comps)
    ids = cands.comps[nz]
    labelled = np.bincount(ids, weights=(labels[nz] > 0), minlength=cands.n + 1)[1:]
    y = (labelled * 2 > cands.count).astype(np.int8)
    near = (X[:, FEATURE_NAMES.index("p_coronary_max13")] > 1e-3) | (X[:, FEATURE_NAMES.index("votes")] > 0)
    keep = (y == 1) | near | (rng.random(cands.n) < negatives / cands.n)
    return X[keep], y[keep]


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
                       cache: Optional[Path] = None, held_out: Sequence[str] = (),
                       emit: Callable[[str, dict], None] = lambda kind, info: None) -> dict:
    """Fit the second stage of the ensemble in ``weights_dir`` and add it to its manifest.

    ``cases`` inserted-calcium cases per background reconstruction
    (categories A-E in turn) and ``phantoms`` (default: ``cases``) phantoms
    of each generator variant, and every candidate-row of the real scans
    without coronary calcium in ``negatives`` (files or DICOM folders, as
    ``cac train --negatives``: every candidate is non-coronary; sampled as
    the cases' negatives). Each case's rows are cached in ``cache``
    (per ensemble: the rows depend on its output), so a rerun resumes.
    Returns the manifest entry.
    """
    from ..phantom import case_seed, generate_phantom

    weights_dir = Path(weights_dir)
    ensemble = Ensemble(weights_dir, second_stage=False)
    slot = Path(cache) / _weights_key(weights_dir) if cache is not None else None
    phantoms = cases if phantoms is None else phantoms
    t0 = time.perf_counter()
    parts: list[tuple[str, np.ndarray, np.ndarray]] = []

    def cached(case_id: str):
        path = slot / f"{case_id}.npz" if slot is not None else None
        if path is None or not path.exists():
            return None
        with np.load(path) as z:
            return z["X"], z["y"]

    def rows(case_id: str, hu, spacing, labels):
        X, y = candidate_rows(ensemble, hu, spacing, labels, np.random.default_rng(zlib.crc32(case_id.encode())))
        if slot is not None:
            slot.mkdir(parents=True, exist_ok=True)
            tmp = slot / f".{case_id}.tmp.npz"
            np.savez_compressed(tmp, X=X, y=y)
            tmp.replace(slot / f"{case_id}.npz")
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
    X = np.concatenate([p[1] for p in parts]) if parts else np.zeros((0, len(FEATURE_NAMES)))
    y = np.concatenate([p[2] for p in parts]) if parts else np.zeros(0, np.int8)
    data = {
        "backgrounds": sources, "cases_per_background": cases, "phantoms_per_variant": phantoms,
        "negatives": [str(n) for n in negatives],
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
    path = stage.save(weights_dir / SECOND_STAGE_FILE)
    entry = {"file": SECOND_STAGE_FILE, "sha256": sha256_file(path), "threshold": stage.threshold,
             "features": list(FEATURE_NAMES), "classifier": stage.meta["classifier"],
             "settings": stage.meta["settings"], "data": data,
             "numpy_vs_sklearn_max_prob_diff": stage.meta["numpy_vs_sklearn_max_prob_diff"],
             "seconds": round(time.perf_counter() - t0, 1)}
    manifest = load_manifest(weights_dir)
    manifest["second_stage"] = entry
    _write_atomic(weights_dir / "manifest.json", json.dumps(manifest, indent=1))
    emit("second_stage", {"file": str(path), "rows": data["rows"], "coronary": data["coronary_rows"]})
    return entry
