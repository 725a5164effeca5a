"""Real backgrounds with inserted calcium as training data (private).

Every traced scan (``anatomy/<name>.json``: ``scan`` and ``also_valid_for``,
paths relative to a folder of real CT scans) that exists under a root folder
gives ``n`` training cases per reconstruction (:func:`iter_inserted_cases`:
augmented copies of the scan with calcium of categories A-E in turn),
cached as ``.npz`` files so reruns reuse them. ``cac train --backgrounds``
and :func:`cacnet.train.train_ensemble` mix them into each batch with the
``--data`` training cases (the "real" patches).
"""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional, Sequence, Union

from ._data import Case, load_case, save_case
from ..phantom.insertion import decontrast_mask_of, iter_inserted_scans, load_tracing

__all__ = ["ANATOMY_DIR", "BACKGROUND_SEED", "VAL_BACKGROUND_SEED", "Background", "describe_backgrounds",
           "find_backgrounds", "inserted_cases", "iter_inserted_cases", "make_background_cases",
           "validation_backgrounds"]

#: The shipped tracings (package data of cacnet.train).
ANATOMY_DIR = Path(__file__).resolve().parent / "anatomy"
#: Base of the per-reconstruction seeds (see :func:`find_backgrounds`).
BACKGROUND_SEED = 2000
#: Base of the seeds of the validation cases made on the same reconstructions (:func:`validation_backgrounds`).
VAL_BACKGROUND_SEED = 3000


@dataclass(frozen=True)
class Background:
    """One reconstruction of a traced scan that exists under the root."""

    tracing: str  #: the tracing's name (what ``hold_out`` names)
    tracing_path: Path
    scan: str  #: relative to the root, as the tracing says
    path: Path  #: root / scan
    seed: int  #: the cases' seed: ``numpy.random.default_rng([seed, i])`` for case i

    @property
    def slug(self) -> str:
        return self.scan.strip("/").replace("/", "_")


def _seed(scan: str, base: int = BACKGROUND_SEED) -> int:
    """A stable seed per reconstruction (differs between the reconstructions of one patient)."""
    return base * 1000 + zlib.crc32(scan.strip("/").encode()) % 1000


def validation_backgrounds(backgrounds: Sequence[Background]) -> list[Background]:
    """The same reconstructions with the validation seeds (base :data:`VAL_BACKGROUND_SEED`).

    Their cases (:func:`make_background_cases`) are other augmentations and
    other inserted calcium on the training patients: they check that the
    models find calcium in real anatomy, not how they do on a patient never
    seen (that is ``--hold-out-background``).
    """
    return [replace(b, seed=_seed(b.scan, VAL_BACKGROUND_SEED)) for b in backgrounds]


def find_backgrounds(root: Union[str, Path], *, tracings_dir: Optional[Path] = None,
                     hold_out: Sequence[str] = ()) -> tuple[list[Background], dict]:
    """The traced reconstructions found under ``root``, less the patients named in ``hold_out``.

    ``tracings_dir``: the folder of tracing JSON files (default: the shipped
    ones, :data:`ANATOMY_DIR`). A tracing's ``scan`` and each of its
    ``also_valid_for`` that exists under ``root`` (file or folder) is one
    background (a tracing with ``decontrast`` is de-contrasted with the
    label map it names under ``root`` when its cases are made). ``hold_out`` names tracings (their ``name``, e.g.
    ``lung_pet_ct_dx_a0001``) whose reconstructions are left out entirely.

    Returns the backgrounds and a record: ``root``, ``tracings_dir``,
    ``looked_for`` (every path), ``not_found``, ``held_out``.

    Raises
    ------
    FileNotFoundError
        ``root`` is not a folder, there is no tracing, no traced scan is under ``root``, or the
        label map a tracing's ``decontrast`` names (relative to ``root``) is missing.
    ValueError
        A ``hold_out`` name is not a tracing, or every background found is held out.
    """
    root = Path(root)
    tdir = Path(tracings_dir) if tracings_dir is not None else ANATOMY_DIR
    if not root.is_dir():
        raise FileNotFoundError(f"backgrounds: no such folder {root} (expected the folder of real CT scans that "
                                f"the tracings in {tdir} name, e.g. shared/data/real-ct)")
    files = sorted(tdir.glob("*.json"))
    if not files:
        raise FileNotFoundError(f"backgrounds: no tracing (*.json) in {tdir}")
    tracings = [(f, load_tracing(f)) for f in files]
    names = [t["name"] for _, t in tracings]
    unknown = [h for h in hold_out if h not in names]
    if unknown:
        raise ValueError(f"hold-out background(s) {', '.join(map(repr, unknown))} not among the tracings in {tdir}: "
                         f"{', '.join(names)}")
    found, looked, missing = [], [], []
    for f, t in tracings:
        if "scan" not in t:
            raise ValueError(f"{f}: missing key 'scan' (the scan's path relative to the real-CT folder).")
        for rel in [t["scan"], *t.get("also_valid_for", [])]:
            path = root / rel
            looked.append(str(path))
            if not path.exists():
                missing.append(rel)
            else:
                decontrast_mask_of(t, path, str(f))  # a contrast scan's label map must be there too
                found.append(Background(t["name"], f, rel, path, _seed(rel)))
    if not found:
        raise FileNotFoundError(f"backgrounds: no traced scan under {root}: looked for {', '.join(looked)} "
                                f"(the scans of the tracings in {tdir})")
    used = [b for b in found if b.tracing not in hold_out]
    if not used:
        raise ValueError(f"backgrounds: every traced scan under {root} is held out ({', '.join(hold_out)})")
    record = {"root": str(root), "tracings_dir": str(tdir), "looked_for": looked, "not_found": missing,
              "held_out": list(hold_out),
              "held_out_scans": [b.scan for b in found if b.tracing in hold_out]}
    return used, record


# -- training cases of one traced scan (the insertion itself: cacnet.phantom.insertion) ---------------------

def inserted_cases(scan_path, tracing_path, n: int, seed: int, *, augment: bool = True,
                   resample: Optional[tuple[float, float]] = None, lookalikes: Union[bool, float] = True
                   ) -> list:
    """``n`` preprocessed training cases from one real scan and its tracing (categories A-E in turn).

    Case ``i`` uses ``numpy.random.default_rng([seed, i])``: an augmented copy
    of the scan (:func:`cacnet.phantom.insertion.augment_scan`, when ``augment``), calcium inserted
    for category ``"ABCDE"[i % 5]`` (:func:`cacnet.phantom.insertion.insert_calcium`), then the
    coarse model input and labels (:func:`cacnet.preprocess.preprocess`,
    ``downsample_labels``), like :func:`cacnet.train.negative_case`. ``resample`` =
    (slice_mm, pixel_mm) first brings the scan to calcium-score geometry
    (:func:`cacnet.phantom.insertion.resample_for_cac`). :func:`iter_inserted_cases` makes any subset
    of the indices, one at a time.
    """
    return list(iter_inserted_cases(scan_path, tracing_path, range(n), seed, augment=augment, resample=resample,
                                    lookalikes=lookalikes))


def iter_inserted_cases(scan_path, tracing_path, indices: Sequence[int], seed: int, *, augment: bool = True,
                        resample: Optional[tuple[float, float]] = None, lookalikes: Union[bool, float] = True,
                        name: Optional[str] = None, decontrast_mask: Optional[Union[str, Path]] = None):
    """The cases ``indices`` of :func:`inserted_cases` (the same cases), yielded as they are made.

    The scan is read once (:func:`cacnet.phantom.insertion.iter_inserted_scans`). Case ids are
    ``<name>_ins<seed>_<i:03d>``; ``name`` defaults to the tracing's name.
    ``decontrast_mask``: see :func:`cacnet.phantom.insertion.iter_inserted_scans`.
    """
    from ..preprocess import downsample_labels, preprocess

    name = name or load_tracing(tracing_path).get("name") or Path(str(scan_path)).name
    for i, ins, params in iter_inserted_scans(scan_path, tracing_path, indices, seed, augment=augment,
                                              resample=resample, lookalikes=lookalikes,
                                              decontrast_mask=decontrast_mask):
        x, grid = preprocess(ins.hu, ins.spacing)
        y = downsample_labels(ins.labels, grid)
        meta = {"category": ins.truth.category, "agatston": ins.truth.agatston, "inserted": True,
                "source": str(scan_path), "tracing": str(tracing_path), "augment": params,
                "n_plaques": ins.meta["n_plaques"], "lookalikes": ins.meta["lookalikes"],
                "psf_sigma_mm": ins.meta["psf_sigma_mm"]}
        yield Case(f"{name}_ins{seed}_{i:03d}", x, y, meta)


def _slot(cache: Path, b: Background) -> Path:
    """The cache folder of a background: its name and a hash of the tracing (an edited tracing makes new cases)."""
    digest = hashlib.sha256(b.tracing_path.read_bytes()).hexdigest()[:10]
    return cache / f"{b.slug}-{digest}"


def _make_some(args) -> list[Case]:
    path, tracing_path, seed, indices, name = args
    return list(iter_inserted_cases(path, tracing_path, indices, seed, name=name))


def make_background_cases(backgrounds: Sequence[Background], n: int, cache: Optional[Path] = None,
                          workers: int = 2) -> list[Case]:
    """``n`` inserted cases per background (:func:`iter_inserted_cases`: augmented, categories A-E in turn).

    Case ``i`` of a background is ``<scan path with _>_ins<seed>_<i:03d>``.
    Cached in ``cache/<scan>-<tracing hash>/`` as they are made (an
    interrupted run resumes); the missing ones are made on ``workers``
    processes, in jobs of up to 4 cases of one background.
    """
    if n < 1:
        raise ValueError(f"background cases per reconstruction must be >= 1, not {n}")
    cases: dict[tuple[int, int], Case] = {}
    todo = []
    for k, b in enumerate(backgrounds):
        slot = _slot(cache, b) if cache is not None else None
        for i in range(n):
            f = slot / f"{b.slug}_ins{b.seed}_{i:03d}.npz" if slot is not None else None
            if f is not None and f.exists():
                cases[k, i] = load_case(f)
            else:
                todo.append((k, i))
    if todo:
        # Jobs of up to 4 cases of one background (the scan is read once per job: ~0.7 s against ~9 s a case).
        jobs: list[tuple[int, list[int]]] = []
        for k, i in todo:
            if jobs and jobs[-1][0] == k and len(jobs[-1][1]) < 4:
                jobs[-1][1].append(i)
            else:
                jobs.append((k, [i]))
        args = [(str(backgrounds[k].path), str(backgrounds[k].tracing_path), backgrounds[k].seed, idx,
                 backgrounds[k].slug) for k, idx in jobs]
        pool = mp.get_context("spawn").Pool(min(workers, len(jobs))) if workers > 1 and len(jobs) > 1 else None
        try:
            made = pool.imap(_make_some, args, chunksize=1) if pool else map(_make_some, args)
            for (k, idx), some in zip(jobs, made):  # cached as they come: an interrupted run resumes
                for i, case in zip(idx, some):
                    cases[k, i] = case
                    if cache is not None:
                        save_case(case, _slot(cache, backgrounds[k]))
        finally:
            if pool:  # every result asked for has come
                pool.terminate()
                pool.join()
    return [cases[k, i] for k in range(len(backgrounds)) for i in range(n)]


def _per_reconstruction(backgrounds: Sequence[Background], cases: Sequence[Case], n: int) -> list[dict]:
    per = []
    for k, b in enumerate(backgrounds):
        mine = cases[k * n:(k + 1) * n]
        cats: dict[str, int] = {}
        for c in mine:
            cats[c.meta.get("category", "?")] = cats.get(c.meta.get("category", "?"), 0) + 1
        per.append({"tracing": b.tracing, "tracing_file": b.tracing_path.name, "scan": b.scan, "seed": b.seed,
                    "cases": len(mine), "categories": dict(sorted(cats.items())),
                    "ids": [c.case_id for c in mine]})
    return per


def describe_backgrounds(backgrounds: Sequence[Background], cases: Sequence[Case], n: int, record: dict,
                         val_cases: Sequence[Case] = (), n_val: int = 0) -> dict:
    """The manifest's record of the backgrounds used (and of their validation cases, when ``n_val`` > 0)."""
    per = _per_reconstruction(backgrounds, cases, n)
    val = _per_reconstruction(validation_backgrounds(backgrounds), val_cases, n_val) if n_val else []
    return {**{k: v for k, v in record.items() if k != "looked_for"},
            "cases_per_reconstruction": n, "base_seed": BACKGROUND_SEED,
            "seeds": "per reconstruction: base_seed * 1000 + crc32(scan) % 1000; case i uses "
                     "numpy.random.default_rng([seed, i]), category 'ABCDE'[i % 5]",
            "augment": "augment_scan (rotation +-10 deg, scale 0.9-1.1, elastic 2 mm, HU offset +-15, gain +-3 %)",
            "resample": "none (each scan's own geometry)",
            "validation": (f"{n_val} other case(s) per reconstruction (seed base {VAL_BACKGROUND_SEED}: other "
                           "augmentations and calcium on the training patients) validate with the phantoms"
                           if n_val else "none: background cases only train (validation: phantoms + --data "
                           "validation splits)"),
            "reconstructions": per, **({"validation_reconstructions": val} if val else {})}

