"""Training the ensemble end to end: data, the joint loop, ONNX export and manifest (private)."""

from __future__ import annotations

import hashlib
import json
import platform
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import torch

from ._backgrounds import describe_backgrounds, find_backgrounds, make_background_cases, validation_backgrounds
from ._data import Case, PhantomStream, dataset_cases, load_case, negative_case, phantom_cases, save_case, split_by_id
from ._export import export_onnx, write_manifest
from ._joint import TrainData, train_models
from ._loop import TrainConfig
from ._second_stage import train_second_stage

__all__ = ["TRAIN_SET_SEED", "VAL_SET_SEED", "default_mix", "negative_cases", "train_ensemble"]

#: Seeds of the phantom sets: training, validation. The held-out test set of
#: the experiments uses a seed never used here (experiments/experiments.py).
TRAIN_SET_SEED = 1000
VAL_SET_SEED = 1001

SELECTION = ("per model, the validated step with the best calcium Dice over all validation cases "
             "(phantom and real validation cases pooled: 2|P&T| / (|P| + |T|) over their candidate coarse "
             "voxels >= 130 HU)")


def default_mix(batch: int, phantoms: bool, real: bool, negatives: bool) -> tuple[int, int]:
    """``(real_per_batch, neg_per_batch)`` when not given.

    Hard negatives: a quarter of the batch (at least 1). Real cases: the rest
    when there are no phantoms, else half of the rest (at least 1).
    """
    neg = max(1, batch // 4) if negatives else 0
    rest = batch - neg
    real_n = (rest if not phantoms else max(1, rest // 2)) if real else 0
    return real_n, neg


def negative_cases(paths: Sequence[Path], cache: Optional[Path] = None) -> list[Case]:
    """Hard negatives: each path a scan (file or DICOM folder) read by :func:`negative_case`.

    A ``.npz`` file (:func:`save_case`) or a folder of them is read as is.
    Scans are cached in ``cache`` (keyed by their resolved path).
    """
    out = []
    for p in map(Path, paths):
        if p.suffix == ".npz":
            out.append(load_case(p))
            continue
        if p.is_dir() and any(p.glob("*.npz")):
            out.extend(load_case(f) for f in sorted(p.glob("*.npz")))
            continue
        slot = cache / hashlib.sha256(str(p.resolve()).encode()).hexdigest()[:16] if cache else None
        if slot is not None and any(slot.glob("*.npz")):
            out.append(load_case(next(slot.glob("*.npz"))))
            continue
        case = negative_case(p)
        if slot is not None:
            save_case(case, slot)
        out.append(case)
    return out


def train_ensemble(
    outdir: Path,
    *,
    data: Union[None, Path, Sequence[Path]] = None,
    negatives: Sequence[Path] = (),
    phantoms: int = 300,
    val_phantoms: int = 20,
    models: int = 5,
    config: Optional[TrainConfig] = None,
    init: Optional[Path] = None,
    val_fraction: Optional[float] = None,
    exclude_start: bool = False,
    stream: bool = False,
    workers: int = 2,
    backgrounds: Optional[Path] = None,
    background_cases: int = 40,
    val_background_cases: int = 0,
    hold_out_backgrounds: Sequence[str] = (),
    tracings_dir: Optional[Path] = None,
    on_event: Optional[Callable[[str, dict], None]] = None,
    phantom_variant: str = "default",
    second_stage_cases: int = 0,
    second_stage_validation: int = 0,
    second_stage_validation_scans: Sequence[Path] = (),
) -> Path:
    """Train ``models`` U-Nets together (:func:`train_models`) and export them to ``outdir/weights``.

    Training data: ``phantoms`` synthetic cases (balanced A-E, seed
    TRAIN_SET_SEED), the training split of each user data set in ``data``
    (:func:`dataset_cases`; split by case id, ``val_fraction`` of each set
    validates, 0.2 by default) and the hard negatives ``negatives``
    (:func:`negative_cases`), and with ``backgrounds`` (a folder of real CT
    scans) ``background_cases`` inserted-calcium cases per traced
    reconstruction found there (:func:`find_backgrounds`: the shipped
    tracings, or those in ``tracings_dir``; :func:`make_background_cases`,
    cached in ``outdir/cache/backgrounds``), less the traced patients named
    in ``hold_out_backgrounds``; they join the real training cases (the
    ``real_per_batch`` patches). ``val_background_cases`` > 0 adds that many
    other cases per reconstruction (:func:`validation_backgrounds`: other
    seeds) to the validation cases; otherwise backgrounds never validate. Each batch mixes them as
    ``config`` says (``real_per_batch``, ``neg_per_batch``;
    :func:`default_mix` when 0 and such cases are given). Validation: ``val_phantoms`` phantoms (seed
    VAL_SET_SEED) and the real validation split, pooled; each model keeps the
    step with the best Dice over all of them. ``init``: start weights
    (:func:`load_start_state`). ``stream``: make the training phantoms that
    are not cached yet on ``workers`` processes while training starts (a
    resumed run is then not a bit-exact replay: the cases present at each
    step depend on timing); otherwise they are all made (and cached) first.

    ``phantom_variant`` is the generator of the training and validation
    phantoms (:func:`cacnet.phantom.generate_phantom`; ``"varied"``: far more
    anatomy and scanner variety), recorded in the manifest; a variant other
    than the default caches its phantoms in ``cache/train-<variant>`` and
    ``cache/val-<variant>``.

    ``second_stage_cases`` > 0 then fits the second stage on the exported
    ensemble (:func:`train_second_stage`: that many inserted-calcium cases per
    background reconstruction, other seeds, that many phantoms of each
    generator variant, and the ``negatives``; needs ``backgrounds``) and adds
    it to the manifest; ``second_stage_validation`` > 0 chooses its thresholds
    on validation cases (:func:`train_second_stage`'s ``validation``, with the
    real zero-calcium scans ``second_stage_validation_scans``).

    Everything is cached and checkpointed under ``outdir``: run it again to
    resume. Returns the manifest's path.
    """
    outdir = Path(outdir)
    config = config or TrainConfig()
    emit = on_event or (lambda kind, info: None)
    data_dirs = [] if data is None else [Path(data)] if isinstance(data, (str, Path)) else [Path(d) for d in data]
    t0 = time.perf_counter()
    if second_stage_cases and backgrounds is None:
        raise ValueError("--second-stage-cases needs --backgrounds (the real scans its cases are made from).")
    bgs, bg_record = (find_backgrounds(backgrounds, tracings_dir=tracings_dir, hold_out=hold_out_backgrounds)
                      if backgrounds is not None else ([], {}))
    emit("data_start", {"phantoms": phantoms, "val": val_phantoms, "data": [str(d) for d in data_dirs],
                        "negatives": len(negatives), "backgrounds": [b.scan for b in bgs],
                        "background_cases": background_cases if bgs else 0})
    suffix = "" if phantom_variant == "default" else f"-{phantom_variant}"
    val = phantom_cases(VAL_SET_SEED, val_phantoms, cache=outdir / "cache" / f"val{suffix}", workers=workers,
                        variant=phantom_variant)
    more = None
    if stream and phantoms:
        more = PhantomStream(TRAIN_SET_SEED, phantoms, cache=outdir / "cache" / f"train{suffix}", workers=workers,
                             variant=phantom_variant)
        train = more.cached
    else:
        train = phantom_cases(TRAIN_SET_SEED, phantoms, cache=outdir / "cache" / f"train{suffix}", workers=workers,
                              variant=phantom_variant)
    fraction = 0.2 if val_fraction is None else val_fraction
    real, real_val, sets = [], [], []
    for d in data_dirs:
        cases = dataset_cases(d)
        tr, va = split_by_id(cases, fraction)
        real += tr
        real_val += va
        sets.append({"path": str(d), "name": d.name, "cases": len(cases),
                     "train_ids": [c.case_id for c in tr], "val_ids": [c.case_id for c in va]})
    negs = negative_cases(negatives, cache=outdir / "cache" / "negatives")
    bg_cases = (make_background_cases(bgs, background_cases, cache=outdir / "cache" / "backgrounds", workers=workers)
                if bgs else [])
    real += bg_cases  # the same patches of each batch as the --data training cases
    bg_val = (make_background_cases(validation_backgrounds(bgs), val_background_cases,
                                    cache=outdir / "cache" / "backgrounds", workers=workers)
              if bgs and val_background_cases > 0 else [])
    real_val += bg_val
    real_n, neg_n = default_mix(config.batch, phantoms > 0, bool(real), bool(negs))
    config = replace(config, real_per_batch=config.real_per_batch or real_n,
                     neg_per_batch=config.neg_per_batch or neg_n)
    emit("data", {"phantoms": len(train) + (more.pending if more else 0), "val": len(val), "real": len(real),
                  "real_val": len(real_val),
                  "negatives": len(negs), "backgrounds": len(bg_cases), "config": asdict(config)})
    data_seconds = time.perf_counter() - t0
    summaries = train_models(outdir, TrainData(train, val, real, real_val, negs, more_train=more), config,
                             models=models, init=init, exclude_start=exclude_start, on_event=on_event)
    weights = outdir / "weights"
    entries = []
    for s in summaries:
        best = torch.load(outdir / f"model_{s['seed']}" / "best.pt", weights_only=False, map_location="cpu")
        name = f"unet_{s['seed']}.onnx"
        diff = export_onnx(best["model"], weights / name)
        v = s["best_val"]
        entries.append({"file": name, "seed": s["seed"], "best_step": s["best_step"], "steps_done": s["steps_done"],
                        "val_dice": round(s["best_val_dice"], 4),
                        "val": {k: (round(x, 4) if isinstance(x, float) else x) for k, x in v.items()},
                        "start_val_dice": None if s["start_val"] is None else round(s["start_val"]["dice"], 4),
                        "onnx_vs_torch_max_prob_diff": diff,
                        **({"selection_note": s["selection_note"]} if s.get("selection_note") else {})})
    n_train = summaries[0]["n_train_phantoms"]
    described = [f"{n_train} synthetic phantoms (cacnet.phantom, variant {phantom_variant}, seed {TRAIN_SET_SEED}, "
                 "balanced A-E)"]
    described += [f"user data set {s['name']} ({len(s['train_ids'])} of {s['cases']} cases)" for s in sets]
    described += [f"{len(bg_cases)} real backgrounds with inserted calcium ({background_cases} per reconstruction "
                  f"of {', '.join(b.scan for b in bgs)}; balanced A-E)"] if bgs else []
    described += [f"{len(negs)} hard negatives (real scans without coronary calcium, every label background)"] \
        if negs else []
    n_ph = config.batch - config.real_per_batch - config.neg_per_batch
    training = {
        "data": " + ".join(described),
        "validation": " + ".join([f"{len(val)} synthetic phantoms (variant {phantom_variant}, seed {VAL_SET_SEED})"]
                                 + [f"{len(s['val_ids'])} cases of {s['name']}" for s in sets if s["val_ids"]]
                                 + ([f"{len(bg_val)} real backgrounds with other inserted calcium (training "
                                     "patients, other seeds)"] if bg_val else [])),
        "selection": SELECTION + (f"; only steps with at most {config.max_negative_voxels} coarse voxels of the hard "
                                  "negatives labelled calcium" if config.max_negative_voxels is not None else "")
                     + ("; the start weights are not a candidate (exclude_start)" if exclude_start
                                  else "; the start weights (step 0) are a candidate" if init else ""),
        "phantom_variant": phantom_variant,
        "train_cases": n_train + len(real),
        "val_cases": len(val) + len(real_val),
        "data_sets": sets,
        "val_fraction": fraction if sets else None,
        "negatives": [{"id": c.case_id, "source": c.meta.get("source"), "coarse_shape": list(c.x.shape)}
                      for c in negs],
        "backgrounds": (describe_backgrounds(bgs, bg_cases, background_cases, bg_record, bg_val,
                                             val_background_cases if bg_val else 0) if bgs else None),
        "real_scans": "none" if not (sets or negs or bgs) else
        ", ".join((["user data sets"] if sets else []) + (["hard negatives"] if negs else [])
                  + (["backgrounds with inserted calcium"] if bgs else [])),
        "batch": f"{n_ph} phantom + {config.real_per_batch} real + {config.neg_per_batch} hard-negative patches"
                 + (" (real: --data training cases and inserted-calcium backgrounds, drawn alike)" if bgs else ""),
        "init": str(init) if init else "none (from scratch)",
        "config": {k: v for k, v in asdict(config).items() if k != "seed"},
        "loss": ("cross-entropy (calcium classes x8) + (1 - soft Dice of calcium vs background), both over "
                 "the candidate coarse voxels (>= 130 HU)"),
        "optimizer": (f"Adam, lr {config.lr:g}"
                      + (f", warm-up over {config.warmup * 100:g} % of the run" if config.warmup else "")
                      + ", x0.3 at 70 % and 90 % of the run, gradient norm clipped at 10"),
        "seeds": [s["seed"] for s in summaries],
        "phantoms_streamed": bool(more),
        "phantoms_left_out_too_big": summaries[0]["too_big"],
        "steps_per_second_per_model": summaries[0]["steps_per_second"],
        "train_seconds_total": summaries[0]["train_seconds"],
        "data_seconds": round(data_seconds, 1),
        "machine": (f"{platform.machine()}, torch {torch.__version__}, "
                    + (torch.cuda.get_device_name(0) if summaries[0]["device"] == "cuda"
                       else f"CPU, {config.threads} threads")
                    + (", bf16 autocast" if summaries[0]["bf16"] else ", fp32")
                    + f", {len(summaries)} models in one process"),
    }
    path = write_manifest(weights, entries, training, metrics={})
    if second_stage_cases:
        train_second_stage(weights, bgs, second_stage_cases, negatives=negatives,
                           validation=second_stage_validation, validation_scans=second_stage_validation_scans,
                           cache=outdir / "cache" / "second_stage", held_out=hold_out_backgrounds, emit=emit)
    (outdir / "training.json").write_text(json.dumps({"summaries": summaries, "training": training}, indent=2))
    emit("done", {"manifest": str(path)})
    return path
