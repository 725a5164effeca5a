"""Scoring a scan end to end: read, preprocess, ensemble, post-process, score.

The CLI (`cac score`) is a thin layer over :func:`score_scan` (:func:`prepare_scan` for the reading and
triage part, :class:`ScanResult` for what comes back). Post-processing decides every 2D component of
>= 130 HU voxels as a whole, by the vote at the coarse voxel holding its densest voxel.

See docs/scoring.md ("How a scan is scored", step 4) for the post-processing rule.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
from scipy import ndimage

import agatston

from . import io
from ._deprecated import moved
from .anatomy import MIN_HEART_ML, AnatomyMap, anatomical_map
from .candidates import decide_candidates, densest, mean_probabilities
from .ensemble import Ensemble, Vote, combine_votes, weights_version
from .errors import UnsuitableScanError
from .io import Scan, read_scan
from .preprocess import CoarseGrid, coarse_grid, downsample, normalize
from .triage import triage

__all__ = ["PreparedScan", "ScanResult", "prepare_scan", "score_scan", "segment", "decide_components", "versions"]


@dataclass
class ScanResult:
    """What `cac score` reports for one scan.

    Made by :func:`score_scan`. ``data`` is the JSON report (``<id>.json``,
    ``cac score --json``) and the single source of what is reported: the
    read-only properties (:attr:`agatston`, :attr:`category`,
    :attr:`arteries`, :attr:`lesions`, :attr:`n_lesions`, :attr:`volume_mm3`,
    :attr:`mass_mg`, :attr:`warnings`) read their values from it.

    Attributes
    ----------
    id : str
        The scan's id (file name without extension, or folder name).
    labels : numpy.ndarray
        uint8 (z, y, x) mask in canonical (LPS) orientation: 0, 1 LM, 2 LAD, 3 LCX, 4 RCA.
    score : agatston.ScoreResult
        The scoring core's result on ``labels``.
    data : dict
        The JSON report.
    scan : Scan, optional
        The scan scored (None for a result without it).
    triage : Triage, optional
        The triage of the scan (:func:`cacnet.triage.triage`); its heart region serves the report's candidates.
    """

    id: str
    labels: np.ndarray  # uint8 (z, y, x) canonical: 0, 1 LM, 2 LAD, 3 LCX, 4 RCA
    score: agatston.ScoreResult
    data: dict[str, Any] = field(default_factory=dict)
    scan: Optional[Scan] = None
    #: The triage of the scan (:func:`cacnet.triage.triage`); its heart region serves the report's candidates.
    triage: Optional[Any] = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return self.data

    @property
    def agatston(self) -> float:
        """Total Agatston score of the scan (``data["agatston"]``)."""
        return float(self.data["agatston"])

    @property
    def category(self) -> str:
        """Risk category of the total score, ``"A"`` (0) to ``"E"`` (> 400) (``data["category"]``)."""
        return str(self.data["category"])

    @property
    def arteries(self) -> dict[str, float]:
        """Agatston score of each artery, ``{"LM": ..., "LAD": ..., "LCX": ..., "RCA": ...}``.

        From ``data["arteries"]``, which also holds each artery's volume,
        mass and lesion count.
        """
        return {name: float(artery["agatston"]) for name, artery in self.data["arteries"].items()}

    @property
    def lesions(self) -> list[dict[str, Any]]:
        """The lesions counted, one dict per 2D component (``data["lesions"]``; copies of its records).

        Each has ``lesion_id``, ``slice_index``, ``artery``, ``agatston``,
        ``volume_mm3``, the models' ``votes``, the ``review`` flag,
        ``position``, ...; see docs/output.md.
        """
        return [dict(lesion) for lesion in self.data["lesions"]]

    @property
    def n_lesions(self) -> int:
        """Number of 3D lesions (26-connected, per artery label) (``data["n_lesions"]``).

        :attr:`lesions` lists 2D components, one per slice; there are
        ``data["n_lesions_2d"]`` of them.
        """
        return int(self.data["n_lesions"])

    @property
    def volume_mm3(self) -> float:
        """Total calcium volume in mm^3 (``data["volume_mm3"]``)."""
        return float(self.data["volume_mm3"])

    @property
    def mass_mg(self) -> Optional[float]:
        """Total calcium mass in mg, None without a calibration factor (``data["mass_mg"]``)."""
        mass = self.data.get("mass_mg")
        return None if mass is None else float(mass)

    @property
    def warnings(self) -> list[str]:
        """What a reader should know about this result: reader, triage, model and early-stop warnings.

        A copy of ``data["warnings"]``.
        """
        return list(self.data.get("warnings", []))


def versions(manifest: Optional[dict] = None) -> dict[str, Optional[str]]:
    """Versions of the package, of the weights (with their ``manifest``) and of what it runs on.

    ``"weights"`` is the manifest's ``"version"`` (None when it has none, as `cac train`'s weights).
    """
    import sys

    import SimpleITK

    from . import __version__

    out: dict[str, Optional[str]] = {"cac-toolkit": __version__}
    if manifest is not None:
        out["weights"] = weights_version(manifest)
    # onnxruntime's version without importing it where OpenVINO ran the models (its import costs ~50 ms)
    ort = sys.modules.get("onnxruntime")
    out["onnxruntime"] = ort.__version__ if ort is not None else _distribution_version("onnxruntime", "onnxruntime-gpu")
    try:
        import openvino

        out["openvino"] = openvino.__version__.split("-")[0]
    except Exception:  # noqa: BLE001 - absent or broken: onnxruntime runs the models
        pass
    return {**out, "SimpleITK": SimpleITK.Version.VersionString(), "numpy": np.__version__}


def _distribution_version(*names: str) -> Optional[str]:
    """The installed version of the first of these distributions that is installed, or None."""
    from importlib import metadata

    for name in names:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def decide_components(hu: np.ndarray, vote: Vote, grid: CoarseGrid, threshold_hu: float = 130.0,
                      candidates: Optional[np.ndarray] = None):
    """Label the 2D candidate components of ``hu`` from the coarse vote.

    Returns the fine label volume (uint8) and one record per component whose
    densest voxel lies in a coarse voxel with at least one vote:
    ``(slice, centroid_y, centroid_x, votes, label, accepted)``.

    ``candidates`` (optional, boolean on the coarse grid) must hold every
    coarse voxel that has a fine voxel >= ``threshold_hu`` (e.g. the coarse
    HU of :func:`cacnet.preprocess.downsample` >= 130 for the default
    threshold). Votes elsewhere cannot decide a component, so the region
    labelled shrinks to the voted candidates, with the same result: on a
    512 x 512 x 72 phantom 0.2 s became ~0.01 s, because models give stray
    votes to soft tissue all over the volume.
    """
    labels = np.zeros(hu.shape, dtype=np.uint8)
    voted = np.nonzero(vote.votes if candidates is None else (vote.votes > 0) & candidates)
    if voted[0].size == 0:
        return labels, []
    # fine box of the voted coarse voxels, grown until no touched component is cut
    lo = [int(grid.starts[a][voted[a].min()]) for a in range(3)]
    hi = [int(grid.starts[a][voted[a].max() + 1]) if voted[a].max() + 1 < len(grid.starts[a]) else hu.shape[a]
          for a in range(3)]
    struct = np.zeros((3, 3, 3), bool)
    struct[1] = True
    while True:
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        cand = hu[box] >= threshold_hu
        comps, n = ndimage.label(cand, structure=struct)
        if n == 0:
            return labels, []
        where = np.nonzero(cand)
        ids = comps[where]
        # each component's densest voxel, the first in C order among equals (components 1..n, in order)
        first, _ = densest(ids, hu[box][where], n)
        peak = [where[a][first] + lo[a] for a in range(3)]
        cidx = tuple(grid.index[a][peak[a]] for a in range(3))
        v = vote.votes[cidx]
        comp_ids = ids[first]
        touched = comp_ids[v > 0]
        grow = False
        for a in (1, 2):
            edge_lo = np.isin(np.take(comps, 0, axis=a), touched).any() and lo[a] > 0
            edge_hi = np.isin(np.take(comps, -1, axis=a), touched).any() and hi[a] < hu.shape[a]
            if edge_lo:
                lo[a] = max(0, lo[a] - 32)
                grow = True
            if edge_hi:
                hi[a] = min(hu.shape[a], hi[a] + 32)
                grow = True
        if not grow:
            break
    accepted = v * 2 > vote.n_models
    lut = np.zeros(n + 1, dtype=np.uint8)
    lut[comp_ids[accepted]] = vote.artery[cidx][accepted]
    lab = lut[ids]  # only candidate voxels can be labelled; the rest of ``labels`` stays 0
    keep = lab != 0
    labels[tuple(where[a][keep] + lo[a] for a in range(3))] = lab[keep]
    counts = np.bincount(ids, minlength=n + 1)
    # centroids from file indices (exact integer sums), so that they do not depend on the box
    sy = np.bincount(ids, weights=where[1] + lo[1], minlength=n + 1) / np.maximum(counts, 1)
    sx = np.bincount(ids, weights=where[2] + lo[2], minlength=n + 1) / np.maximum(counts, 1)
    records = [
        (int(peak[0][i]), float(sy[c]), float(sx[c]), int(v[i]), int(vote.artery[cidx][i]), bool(accepted[i]))
        for i, c in enumerate(comp_ids) if v[i] > 0
    ]
    return labels, records


def deciding_any(hu: np.ndarray, coarse: np.ndarray, grid: CoarseGrid, threshold_hu: float = 130.0) -> bool:
    """Whether any 2D candidate component of ``hu`` is decided at a coarse voxel in ``coarse``.

    :func:`decide_components` reads the vote only at the coarse voxel that
    holds each component's densest voxel; disagreement anywhere else cannot
    change the mask. Used by the exact early stop.
    """
    marks = coarse.astype(np.uint8)
    _, records = decide_components(hu, Vote(marks, marks, 1, 1), grid, threshold_hu)
    return bool(records)


@dataclass
class PreparedScan:
    """A scan read, triaged and preprocessed: everything :func:`score_scan` does before the models.

    Made by :func:`prepare_scan`, e.g. in a background thread for the next scan
    of a batch while the current one runs through the models.
    """

    scan: Scan
    checked: Any  # triage.Triage
    grid: CoarseGrid
    coarse_hu: np.ndarray
    x: np.ndarray  # the models' input, in [0, 1]
    timings_s: dict[str, float]  # read, triage, anatomy, preprocess (unrounded)
    anatomy: Optional[AnatomyMap] = None  # where coronary calcium can be (:mod:`cacnet.anatomy`)


def prepare_scan(source: Path | str | Scan, *, series: Optional[str] = None, force: bool = False) -> PreparedScan:
    """Read, triage and preprocess a scan: the part of :func:`score_scan` before the models.

    Parameters
    ----------
    source : path or Scan
        A scan file or DICOM folder (see :func:`cacnet.io.read_scan`), or a scan already read.
    series : str, optional
        SeriesInstanceUID for DICOM folders with several series.
    force : bool
        Go on with a scan that triage refuses (the reasons become warnings).

    Returns
    -------
    PreparedScan
        To pass to :func:`score_scan` as its ``source``.

    Raises
    ------
    InvalidScanError
        When the scan cannot be read, or triage refuses it and ``force`` is False.
    """
    t = {"start": time.perf_counter()}
    scan = source if isinstance(source, Scan) else read_scan(Path(source), series=series)
    t["read"] = time.perf_counter()
    checked = triage(scan)
    if checked.refusals and not force:
        label = scan.id if isinstance(source, Scan) else str(source)
        raise UnsuitableScanError(f"{label}: not a calcium-scoring scan: " + " ".join(checked.refusals)
                                  + " Use --force (score_scan(force=True)) to score it anyway.")
    checked.forced = bool(checked.refusals)
    t["triage"] = time.perf_counter()
    anatomy = anatomical_map(checked)
    t["anatomy"] = time.perf_counter()
    grid = coarse_grid(scan.hu.shape, scan.spacing)
    coarse_hu = downsample(scan.hu, grid)
    x = normalize(coarse_hu)
    t["preprocess"] = time.perf_counter()
    timings = {k: t[k] - t[p] for p, k in (("start", "read"), ("read", "triage"), ("triage", "anatomy"),
                                           ("anatomy", "preprocess"))}
    return PreparedScan(scan=scan, checked=checked, grid=grid, coarse_hu=coarse_hu, x=x, timings_s=timings,
                        anatomy=anatomy)


def _source(scan: Scan) -> dict[str, Any]:
    """``{"path", "sha256"}`` of the file or folder a scan was read from (see :func:`cacnet.io.scan_sha256`).

    Both are None for a scan made in memory; the sha256 is None when the
    source is gone (deleted after reading): then, as for a scan in memory,
    its review cannot be applied.
    """
    if scan.source_path is None:
        return {"path": None, "sha256": None}
    try:
        digest = io.scan_sha256(scan.source_path)
    except FileNotFoundError:
        digest = None
    return {"path": str(scan.source_path), "sha256": digest}


def segment(hu: np.ndarray, spacing, grid: CoarseGrid, x: np.ndarray, coarse_hu: np.ndarray, ensemble: Ensemble,
            *, early_stop: bool = False, timings: Optional[dict] = None, logits: Optional[list] = None,
            anatomy: Optional[AnatomyMap] = None):
    """The calcium label volume of a scan: ``(labels, records, vote)``.

    With a second stage (``ensemble.stage``), every model runs and each
    2D candidate is decided by :func:`cacnet.candidates.decide_candidates`
    with the scan's ``anatomy`` (:func:`cacnet.anatomy.anatomical_map`;
    required then); records have a 7th field, P(coronary), and an 8th, why a
    candidate was rejected; ``early_stop`` has no effect.
    Otherwise the paper's majority vote decides (:func:`decide_components`).
    ``coarse_hu``: :func:`cacnet.preprocess.downsample` of ``hu`` on ``grid``;
    ``x`` the model input. ``timings``: a dict that gets the
    ``time.perf_counter()`` values at the end of ``inference`` and ``postprocess``.
    ``logits``: every model's output on ``x`` (:meth:`Ensemble.logits`) when
    the caller has it already (the models are then not run again).
    """
    timings = {} if timings is None else timings
    if logits is not None:
        classes = [lg.argmax(axis=0).astype(np.uint8) for lg in logits]
        vote = combine_votes(classes, len(classes))
        probs = mean_probabilities(logits) if ensemble.stage is not None else None
    if ensemble.stage is not None:
        if logits is None:
            probs, vote = ensemble.soft_vote(x)
        timings["inference"] = time.perf_counter()
        if anatomy is None:
            raise ValueError("segment: the second stage needs the scan's anatomy (cacnet.anatomy.anatomical_map)")
        labels, records = decide_candidates(hu, spacing, grid, probs, vote.votes, ensemble.stage, anatomy,
                                            n_models=vote.n_models)
        timings["postprocess"] = time.perf_counter()
        return labels, records, vote
    candidates = coarse_hu >= 130.0
    if logits is None:
        if candidates.any():
            vote = ensemble.vote(x, candidates=candidates, early_stop=early_stop,
                                 irrelevant=lambda undecided: not deciding_any(hu, undecided, grid))
        else:  # nothing >= 130 HU anywhere: no model can change the answer
            zeros = np.zeros(x.shape, dtype=np.uint8)
            vote = Vote(zeros, zeros, ensemble.n_models, 0)
    timings["inference"] = time.perf_counter()
    labels, records = decide_components(hu, vote, grid, candidates=candidates)
    timings["postprocess"] = time.perf_counter()
    return labels, records, vote


def score_scan(
    source: Path | str | Scan | PreparedScan,
    ensemble: Ensemble,
    *,
    calibration: Optional[float] = None,
    series: Optional[str] = None,
    early_stop: bool = False,
    force: bool = False,
) -> ScanResult:
    """Score one scan with the ensemble.

    Parameters
    ----------
    source : path, Scan or PreparedScan
        A scan file or DICOM folder (see :func:`cacnet.io.read_scan`), a
        scan already read, or one made ready by :func:`prepare_scan` (then
        ``series`` and ``force`` were applied there and are not used here).
    ensemble : Ensemble
        Loaded once, reused for every scan.
    calibration : float, optional
        Mass calibration factor (mg HA/cm^3/HU); mass is absent without it.
    series : str, optional
        SeriesInstanceUID for DICOM folders with several series.
    early_stop : bool
        See :meth:`Ensemble.vote` (same mask and scores, fewer vote counts);
        no effect when the weights have a second stage (see :func:`segment`).
    force : bool
        Score a scan that triage refuses (contrast-enhanced, no heart found,
        sharp kernel); the reasons become warnings.

    Returns
    -------
    ScanResult
        ``labels`` in canonical orientation; ``data`` is the JSON report,
        with the triage checks under ``triage``.

    Raises
    ------
    UnsuitableScanError
        When triage refuses the scan and ``force`` is False (see :mod:`cacnet.triage`).
    """
    prepared = source if isinstance(source, PreparedScan) else prepare_scan(source, series=series, force=force)
    scan, checked, grid, coarse_hu, x = prepared.scan, prepared.checked, prepared.grid, prepared.coarse_hu, prepared.x
    t = {"preprocess": time.perf_counter()}  # the models' stage starts now (a prepared scan may have waited)
    labels, records, vote = segment(scan.hu, scan.spacing, grid, x, coarse_hu, ensemble, early_stop=early_stop,
                                    timings=t, anatomy=prepared.anatomy)
    result = agatston.score(scan.hu, scan.spacing, labels, calibration=calibration)
    t["score"] = time.perf_counter()

    by_key = {(r[0], round(r[1], 3), round(r[2], 3)): r for r in records}
    lesions = []
    for les in result.lesions:
        rec = by_key.get((les.slice_index, round(les.centroid_yx[0], 3), round(les.centroid_yx[1], 3)))
        votes = rec[3] if rec else vote.models_run
        d = les.to_dict()
        d.update({"artery": agatston.ARTERY_NAMES.get(les.label, str(les.label)), "votes": votes,
                  "review": votes < vote.models_run,
                  "position": io.lesion_position(scan, les.slice_index, *les.centroid_yx)})
        if rec is not None and len(rec) > 6:
            d["p_coronary"] = round(rec[6], 4)
        lesions.append(d)
    # slice_index and centroid_yx are on the canonical LPS grid; "position" is on the input file's own grid
    rejected = [
        {"slice_index": r[0], "centroid_yx": [round(r[1], 2), round(r[2], 2)], "votes": r[3],
         "artery": agatston.ARTERY_NAMES.get(r[4], ""), "position": io.lesion_position(scan, r[0], r[1], r[2]),
         **({"p_coronary": round(r[6], 4)} if len(r) > 6 else {}),
         **({"reason": r[7]} if len(r) > 7 else {})}
        for r in records if not r[5]
    ]
    arteries = {}
    for lab, name in agatston.ARTERY_NAMES.items():
        s = result.by_label.get(lab)
        arteries[name] = {"agatston": s.agatston if s else 0.0, "volume_mm3": s.volume_mm3 if s else 0.0,
                          "mass_mg": (s.mass_mg if s else (0.0 if calibration else None)),
                          "n_lesions": s.n_lesions if s else 0}
    drs = agatston.cac_drs({k: v["agatston"] for k, v in arteries.items()})
    stages = {**prepared.timings_s, **{k: t[k] - t[p] for p, k in zip(
        ["preprocess", "inference", "postprocess"], ["inference", "postprocess", "score"])}}
    # a reader warning that a triage check refused with (un-rescaled HU) is given once, as "forced: ..."
    warnings = [w for w in scan.warnings if w not in checked.refusals]
    warnings += [f"forced: {w}" for w in checked.refusals] + checked.warnings
    warnings += list(ensemble.warnings)
    if ensemble.stage is not None and prepared.anatomy is not None and not prepared.anatomy.usable:
        warnings.append(f"anatomy: the map found no heart of at least {MIN_HEART_ML:g} mL "
                        f"({prepared.anatomy.heart_ml:.0f} mL): the pericardial-sac rule was not applied, and "
                        "calcium outside the heart may be reported. Check the lesions' positions.")
    if early_stop and ensemble.stage is not None:
        warnings.append("early stop: not used, the second stage needs every model's output (all models run).")
    if early_stop and vote.models_run < vote.n_models:
        warnings.append(f"early stop: {vote.models_run} of {vote.n_models} models run (vote counts cover those).")
    data = {
        "id": scan.id,
        "agatston": result.agatston,
        "category": result.category,
        "volume_mm3": result.volume_mm3,
        "mass_mg": result.mass_mg,
        "arteries": arteries,
        "cac_drs": drs.to_dict(),
        "n_lesions": result.n_lesions,  # 3D lesions (26-connected, per artery label)
        "n_lesions_2d": len(lesions),  # 2D components, one per slice: the records of "lesions"
        "lesions": lesions,
        "review": sorted({les["lesion_id"] for les in lesions if les["review"]}),
        "rejected_candidates": rejected,
        "warnings": warnings,
        "scan": scan.meta,
        # the scan's file and the sha256 of its bytes: `cac review apply` re-reads it and refuses another scan
        "source": _source(scan),
        "triage": checked.to_dict(),
        "anatomy": prepared.anatomy.summary() if prepared.anatomy is not None else None,
        "settings": {**result.settings, "calibration": calibration},
        "models": {"n_models": vote.n_models, "models_run": vote.models_run, **ensemble.describe(),
                   "weights_version": weights_version(ensemble.manifest),
                   "weights": [{"file": m["file"], "sha256": m["sha256"]} for m in ensemble.models]},
        "timings_s": {k: round(v, 4) for k, v in stages.items()},
        "versions": versions(ensemble.manifest),
    }
    data["timings_s"]["total"] = round(sum(stages.values()), 4)  # the stages' time, not any wait between them
    return ScanResult(id=scan.id, labels=labels, score=result, data=data, scan=scan, triage=checked)


#: Names that moved, with their new module: importable from here for one release, with a DeprecationWarning.
_MOVED = {"lesion_position": "cacnet.io"}
__getattr__ = moved(__name__, _MOVED)
