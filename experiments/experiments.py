"""The paper's experiments on a held-out phantom set.

* a held-out set made with a seed never used in training (9999), balanced A-E;
* each single model (mean +- sd over the five) against the ensemble: C-index
  and category accuracy (the paper's Table 1), for the shipped weights and for
  every ``--compare`` weights folder (other training-set sizes);
* the ensemble's confusion matrix (the paper's figure 4) and example overlays
  (figure 5: truth outlined on the left, prediction on the right);
* two baselines on the same cases: everything >= 130 HU, and >= 130 HU inside
  a simple heart region (an ellipsoid around the centre of the field of view);
* the hard cases separately: small faint lesions, mitral annulus calcification;
* per-artery agreement: artery label of the calcium voxels found by both truth
  and ensemble, ICC of each artery's Agatston score, and the number of arteries
  with calcium (CAC-DRS N's count).

``--background NAME --backgrounds ROOT`` scores a held-out *real patient*
instead of phantoms: ``--n`` copies of that traced patient's reconstructions
under ROOT (``src/cacnet/train/anatomy/NAME.json``), augmented, with calcium
of categories A-E inserted along the traced coronaries and look-alikes on the
aortic wall, valve and annulus (``cacnet.train.iter_inserted_scans``; case i
is reconstruction i % R, with seed ``[HELD_OUT_SEED * 1000 + r, i // R]``).
Weights trained with ``--hold-out-background NAME`` never saw that patient:
the leave-one-background-out check. The cases are written to --cache (required).

``--variant varied`` draws the held-out phantoms from the varied generator
(``cac phantom --variant varied``) instead: for weights trained on the default
generator only, the cross-variant check.

Rows of an earlier run's Table 1 (other weights, scored on the same cases) can
be carried over with ``--keep-rows results.json``, so that one run need not
score every weight set again.

Run:  python -m experiments.experiments [--n 100] [--weights weights] [--label shipped]
             [--compare LABEL=DIR ...] [--keep-rows OLD/results.json] [--cache DIR] [--out docs/experiments]
             [--background NAME --backgrounds ROOT] [--variant varied]
Writes results.json, tables.md, confusion.png and overlays.png into --out.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

import agatston
from cacnet.anatomy import anatomical_map
from cacnet.ensemble import DEFAULT_WEIGHTS, Ensemble, combine_votes
from cacnet.outputs.preview import render_montage
from cacnet.phantom import case_seed, generate_phantom
from cacnet.pipeline import decide_components, segment
from cacnet.preprocess import coarse_grid, downsample, normalize
from cacnet.triage import triage

HELD_OUT_SEED = 9999
ARTERIES = {1: "LM", 2: "LAD", 3: "LCX", 4: "RCA"}


def heart_region(shape, spacing) -> np.ndarray:
    """An ellipsoid around the centre of the field of view (60 mm in-plane radius)."""
    z, y, x = (np.arange(n) * s - (n - 1) * s / 2 for n, s in zip(shape, spacing))
    rz = 0.45 * shape[0] * spacing[0]
    return (z[:, None, None] / rz) ** 2 + (y[None, :, None] / 60.0) ** 2 + (x[None, None, :] / 60.0) ** 2 <= 1


def metrics(pred_scores, true_cats) -> dict:
    pred_cats = [agatston.category(s) for s in pred_scores]
    return {"c_index": agatston.c_index(pred_cats, true_cats), "accuracy": agatston.accuracy(pred_cats, true_cats),
            "kappa": agatston.weighted_kappa(pred_cats, true_cats)}


def held_out_case(i: int, cache: Path | None, variant: str = "default") -> dict:
    """Held-out phantom ``i`` (seed HELD_OUT_SEED, category ABCDE[i % 5]) of a generator variant, from ``cache``."""
    prefix = "held_out" if variant == "default" else f"held_out_{variant}"
    path = cache / f"{prefix}_{i:04d}.npz" if cache else None
    if path is not None and path.exists():
        with np.load(path) as z:
            return {"hu": z["hu"], "labels": z["labels"], "spacing": tuple(z["spacing"].tolist()),
                    **json.loads(str(z["info"]))}
    case = generate_phantom(case_seed(HELD_OUT_SEED, i), category="ABCDE"[i % 5], variant=variant)
    info = {"id": case.case_id, "true": case.truth.agatston, "true_category": case.truth.category,
            **{k: case.meta[k] for k in ("faint_lesion", "mitral_annulus", "lookalikes")}}
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.tmp.npz")
        np.savez_compressed(tmp, hu=case.hu, labels=case.labels, spacing=np.array(case.spacing),
                            info=json.dumps(info))
        tmp.replace(path)
    return {"hu": case.hu, "labels": case.labels, "spacing": case.spacing, **info}


def background_case(i: int, n: int, name: str, root: Path, cache: Path) -> dict:
    """Case ``i`` of the held-out real patient ``name`` (see the module docstring), from ``cache`` when there.

    The first call makes and caches all ``n`` cases (each reconstruction is read once).
    """
    from cacnet.train import ANATOMY_DIR, find_backgrounds, iter_inserted_scans

    path = cache / f"{name}_{i:04d}.npz"
    if not path.exists():
        others = [json.loads(f.read_text())["name"] for f in sorted(ANATOMY_DIR.glob("*.json"))]
        found, _ = find_backgrounds(root, hold_out=[o for o in others if o != name])
        cache.mkdir(parents=True, exist_ok=True)
        for r, b in enumerate(found):
            indices = [k // len(found) for k in range(n) if k % len(found) == r]
            for j, ins, params in iter_inserted_scans(b.path, b.tracing_path, indices, HELD_OUT_SEED * 1000 + r):
                k = j * len(found) + r
                info = {"id": f"{b.slug}_held_out_{j:03d}", "true": ins.truth.agatston,
                        "true_category": ins.truth.category,
                        "faint_lesion": any(o["faint"] for o in ins.meta["objects"] if o["label"]),
                        "mitral_annulus": "mitral_annulus" in ins.meta["lookalikes"],
                        "lookalikes": ins.meta["lookalikes"], "source": b.scan}
                tmp = cache / f".{name}_{k:04d}.tmp.npz"
                np.savez_compressed(tmp, hu=ins.hu.astype(np.int16), labels=ins.labels,
                                    spacing=np.array(ins.spacing), info=json.dumps(info))
                tmp.replace(cache / f"{name}_{k:04d}.npz")
                print(f"made held-out case {k}: {info['id']} ({info['true_category']}, {info['true']:.1f})",
                      flush=True)
    with np.load(path) as z:
        return {"hu": z["hu"], "labels": z["labels"], "spacing": tuple(z["spacing"].tolist()),
                **json.loads(str(z["info"]))}


def model_scores(ens: Ensemble, hu, spacing, grid, x):
    """Ensemble labels (as ``cac score`` decides: second stage when the weights have one), ensemble Agatston and
    each single model's Agatston (its own coarse labels, the majority rule of one) of one case."""
    logits = list(ens.logits(x))
    anatomy = anatomical_map(triage(SimpleNamespace(hu=hu, spacing=tuple(float(s) for s in spacing), meta={})))
    labels, _, _ = segment(hu, spacing, grid, x, downsample(hu, grid), ens, logits=logits, anatomy=anatomy)
    singles = []
    for lg in logits:
        lab, _ = decide_components(hu, combine_votes([lg.argmax(axis=0).astype(np.uint8)], 1), grid)
        singles.append(agatston.score(hu, spacing, lab).agatston)
    return labels, agatston.score(hu, spacing, labels), singles


def describe_weights(path: Path) -> dict:
    """Training-set size, steps and batch of a weights folder, read from its manifest."""
    m = json.loads((Path(path) / "manifest.json").read_text())
    cfg = m["training"].get("config", {})
    n = m["training"].get("train_cases")
    if n is None:  # manifests written before train_cases existed say it in prose: "300 synthetic phantoms ..."
        n = int(m["training"]["data"].split()[0])
    steps = [e.get("best_step") for e in m["models"]]
    return {"training_cases": n, "batch": cfg.get("batch"), "patch": cfg.get("patch"), "best_steps": steps,
            "machine": m["training"].get("machine", "")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    parser.add_argument("--compare", action="append", default=[], metavar="LABEL=DIR",
                        help="another weights folder for the size table (Table 1); repeatable")
    parser.add_argument("--cache", type=Path, default=None, help="keep the held-out phantoms here (npz)")
    parser.add_argument("--out", type=Path, default=Path("docs/experiments"))
    parser.add_argument("--label", default="shipped", help="Table 1 label of --weights")
    parser.add_argument("--keep-rows", type=Path, default=None, metavar="RESULTS_JSON",
                        help="carry over Table 1 rows of an earlier run on the same cases (labels not scored now)")
    parser.add_argument("--background", default=None, metavar="NAME",
                        help="score inserted-calcium copies of this traced real patient instead of phantoms")
    parser.add_argument("--backgrounds", type=Path, default=None, metavar="ROOT",
                        help="the real-CT folder the tracings name (with --background)")
    parser.add_argument("--variant", default="default", choices=["default", "varied"],
                        help="generator variant of the held-out phantoms (cross-variant check: weights trained "
                             "without it)")
    args = parser.parse_args()
    if args.background is not None and (args.backgrounds is None or args.cache is None):
        parser.error("--background needs --backgrounds ROOT and --cache DIR")
    case_set = (f"background:{args.background}" if args.background
                else "phantoms" if args.variant == "default" else f"phantoms:{args.variant}")
    args.out.mkdir(parents=True, exist_ok=True)
    old = None
    if args.keep_rows is not None:  # checked before the long run
        old = json.loads(args.keep_rows.read_text())["summary"]
        if (old.get("n_cases") != args.n or old.get("held_out_seed") != HELD_OUT_SEED
                or old.get("set", "phantoms") != case_set):
            raise SystemExit(f"{args.keep_rows}: scored on other cases ({old.get('n_cases')} of seed "
                             f"{old.get('held_out_seed')}); its rows cannot be compared with {args.n} cases")
    ens = Ensemble(args.weights, device="cpu")
    n_models = ens.n_models
    others = {}
    for item in args.compare:
        label, _, folder = item.partition("=")
        others[label] = Ensemble(Path(folder), device="cpu")
    rows = []
    overlays = []
    t0 = time.perf_counter()
    for i in range(args.n):
        case = (background_case(i, args.n, args.background, args.backgrounds, args.cache) if args.background
                else held_out_case(i, args.cache, args.variant))
        hu, spacing, truth_labels = case["hu"].astype(np.float32), case["spacing"], case["labels"]
        grid = coarse_grid(hu.shape, spacing)
        x = normalize(downsample(hu, grid))
        labels, ens_score, singles = model_scores(ens, hu, spacing, grid, x)
        compared = {}
        for label, other in others.items():
            _, o_score, o_singles = model_scores(other, hu, spacing, grid, x)
            compared[label] = {"ensemble": o_score.agatston, "singles": o_singles}
        thr = agatston.score(hu, spacing).agatston
        heart = agatston.score(hu, spacing, heart_region(hu.shape, spacing)).agatston
        det = agatston.detection_report(labels, truth_labels, spacing)
        truth_score = agatston.score(hu, spacing, truth_labels)
        both = (labels > 0) & (truth_labels > 0)
        arteries = {
            "voxels_both": int(both.sum()), "voxels_same_artery": int((labels[both] == truth_labels[both]).sum()),
            "true": {name: truth_score.by_label[k].agatston if k in truth_score.by_label else 0.0
                     for k, name in ARTERIES.items()},
            "ensemble": {name: ens_score.by_label[k].agatston if k in ens_score.by_label else 0.0
                         for k, name in ARTERIES.items()},
        }
        rows.append({
            "id": case["id"], "true": case["true"], "true_category": case["true_category"],
            "ensemble": ens_score.agatston, "singles": singles, "threshold_130": thr, "heart_region_130": heart,
            "faint_lesion": case["faint_lesion"], "mitral_annulus": case["mitral_annulus"],
            "lookalikes": case["lookalikes"], "detection": det.to_dict(), "compared": compared,
            "arteries": arteries, **({"source": case["source"]} if "source" in case else {}),
        })
        if len(overlays) < 4 and case["true_category"] in "BCDE"[len(overlays)]:
            z = int(np.argmax((truth_labels > 0).sum(axis=(1, 2)) + (labels > 0).sum(axis=(1, 2))))
            overlays.append(np.concatenate([render_montage(hu, truth_labels, [z], columns=1),
                                            render_montage(hu, labels, [z], columns=1)], axis=1))
        print(f"{i + 1}/{args.n} {case['id']} truth {case['true']:7.1f} ({case['true_category']}) "
              f"ensemble {ens_score.agatston:7.1f} ({ens_score.category})", flush=True)
    seconds = time.perf_counter() - t0

    true_cats = [r["true_category"] for r in rows]
    single = [metrics([r["singles"][m] for r in rows], true_cats) for m in range(n_models)]
    res = {
        "n_cases": len(rows), "held_out_seed": HELD_OUT_SEED, "set": case_set, "seconds": round(seconds, 1),
        "ensemble": metrics([r["ensemble"] for r in rows], true_cats),
        "single_models": {k: {"mean": statistics.mean(s[k] for s in single),
                              "sd": statistics.stdev(s[k] for s in single) if len(single) > 1 else 0.0}
                          for k in ("c_index", "accuracy", "kappa")},
        "threshold_130": metrics([r["threshold_130"] for r in rows], true_cats),
        "heart_region_130": metrics([r["heart_region_130"] for r in rows], true_cats),
        "icc_ensemble": agatston.icc([r["ensemble"] for r in rows], [r["true"] for r in rows]),
        "confusion_ensemble": agatston.confusion_matrix([agatston.category(r["ensemble"]) for r in rows],
                                                        true_cats).tolist(),
    }
    def size_row(label, ens_scores, single_scores, weights_dir):
        singles = [metrics(s, true_cats) for s in single_scores]
        return {"label": label, **describe_weights(weights_dir), "n_models": len(singles),
                "ensemble": metrics(ens_scores, true_cats),
                "single_mean": {k: statistics.mean(m[k] for m in singles) for k in ("c_index", "accuracy")},
                "single_sd": {k: statistics.stdev(m[k] for m in singles) if len(singles) > 1 else 0.0
                              for k in ("c_index", "accuracy")}}

    table1 = [size_row(args.label, [r["ensemble"] for r in rows],
                       [[r["singles"][m] for r in rows] for m in range(n_models)], args.weights)]
    for item in args.compare:
        label, _, folder = item.partition("=")
        k = others[label].n_models
        table1.append(size_row(label, [r["compared"][label]["ensemble"] for r in rows],
                               [[r["compared"][label]["singles"][m] for r in rows] for m in range(k)], Path(folder)))
    kept = []
    if old is not None:
        scored = {t["label"] for t in table1}
        for t in old.get("table1", []):
            if t["label"] not in scored:
                kept.append({**t, "note": t.get("note", f"kept from {args.keep_rows}, scored on the same cases")})
    res["table1"] = table1 + kept
    n_both = sum(r["arteries"]["voxels_both"] for r in rows)
    res["arteries"] = {
        "voxels_both": n_both,
        "voxel_artery_agreement": sum(r["arteries"]["voxels_same_artery"] for r in rows) / max(n_both, 1),
        "icc": {name: agatston.icc([r["arteries"]["ensemble"][name] for r in rows],
                                   [r["arteries"]["true"][name] for r in rows]) for name in ARTERIES.values()},
        "n_arteries_agreement": statistics.mean(
            sum(v > 0 for v in r["arteries"]["ensemble"].values()) == sum(v > 0 for v in r["arteries"]["true"].values())
            for r in rows),
    }
    for name, key in (("faint_lesion", "faint_lesion"), ("mitral_annulus", "mitral_annulus")):
        sub = [r for r in rows if r[key]]
        if len(sub) >= 2:
            res[name] = {"n": len(sub), **metrics([r["ensemble"] for r in sub], [r["true_category"] for r in sub]),
                         "false_positive_cases": sum(r["true"] == 0 and r["ensemble"] > 0 for r in sub)}
    a_cases = [r for r in rows if r["true_category"] == "A"]
    res["category_A_false_positive_rate"] = (sum(r["ensemble"] > 0 for r in a_cases) / len(a_cases)) if a_cases else None
    tot = {k: sum(r["detection"][k] for r in rows) for k in ("n_true", "n_true_detected", "n_pred",
                                                                  "n_pred_true_positive")}
    res["lesions"] = {**tot, "sensitivity_count": tot["n_true_detected"] / max(tot["n_true"], 1),
                      "ppv_count": tot["n_pred_true_positive"] / max(tot["n_pred"], 1)}
    (args.out / "results.json").write_text(json.dumps({"summary": res, "cases": rows}, indent=1))

    def fmt(m):
        return f"{m['c_index']:.3f} | {m['accuracy']:.3f} | {m['kappa']:.3f}"

    sm = res["single_models"]
    lines = [
        (f"Held-out phantoms ({args.variant} generator): {len(rows)} cases (seed {HELD_OUT_SEED}, balanced A-E)"
         if not args.background else
         f"Held-out real patient {args.background}: {len(rows)} inserted-calcium cases on its reconstructions "
         f"(seed {HELD_OUT_SEED}, balanced A-E)"),
        "",
        "| method | C-index | accuracy | linear kappa |",
        "|---|---|---|---|",
        f"| single model (mean +- sd of {n_models}) | {sm['c_index']['mean']:.3f} +- {sm['c_index']['sd']:.3f} | "
        f"{sm['accuracy']['mean']:.3f} +- {sm['accuracy']['sd']:.3f} | {sm['kappa']['mean']:.3f} +- {sm['kappa']['sd']:.3f} |",
        f"| ensemble of {n_models} ({'second stage' if ens.stage is not None else 'majority vote'}) | "
        f"{fmt(res['ensemble'])} |",
        f"| baseline: everything >= 130 HU | {fmt(res['threshold_130'])} |",
        f"| baseline: >= 130 HU in a heart region | {fmt(res['heart_region_130'])} |",
        "",
        "Training-set size (the paper's Table 1): C-index and category accuracy of single models "
        "(mean +- sd) and of their ensemble:",
        "",
        "| weights | training phantoms | batch x patch | steps (best, per model) | single C-index | single accuracy "
        "| ensemble C-index | ensemble accuracy |",
        "|---|---|---|---|---|---|---|---|",
        *[f"| {t['label']} | {t['training_cases']} | {t['batch']} x {'x'.join(map(str, t['patch'] or []))} | "
          f"{', '.join(str(v) for v in t['best_steps'])} | {t['single_mean']['c_index']:.3f} +- "
          f"{t['single_sd']['c_index']:.3f} | {t['single_mean']['accuracy']:.3f} +- {t['single_sd']['accuracy']:.3f} | "
          f"{t['ensemble']['c_index']:.3f} | {t['ensemble']['accuracy']:.3f} |" for t in res["table1"]],
        *([""] + [f"Kept from an earlier run of this script on the same {len(rows)} cases (those weights did not "
                  f"change): {', '.join(t['label'] for t in kept)}."] if kept else []),
        "",
        "Confusion matrix of the ensemble (rows: truth A-E, columns: prediction A-E):",
        "",
        "| | A | B | C | D | E |",
        "|---|---|---|---|---|---|",
        *[f"| {c} | " + " | ".join(str(v) for v in row) + " |" for c, row in zip("ABCDE", res["confusion_ensemble"])],
        "",
    ]
    for name in ("faint_lesion", "mitral_annulus"):
        if name in res:
            r = res[name]
            lines.append(f"- {name.replace('_', ' ')} cases: n = {r['n']}, C-index {r['c_index']:.3f}, "
                         f"accuracy {r['accuracy']:.3f}")
    lines.append(f"- category A cases given a non-zero score: {res['category_A_false_positive_rate']:.0%}")
    lines.append(f"- lesions (26-connected): sensitivity {res['lesions']['sensitivity_count']:.3f}, "
                 f"PPV {res['lesions']['ppv_count']:.3f} by count")
    ar = res["arteries"]
    lines.append(f"- arteries: the ensemble's artery label agrees with the truth on {ar['voxel_artery_agreement']:.1%} "
                 f"of the {ar['voxels_both']} calcium voxels both found; ICC(A,1) of the per-artery Agatston score "
                 + ", ".join(f"{k} {v:.3f}" for k, v in ar["icc"].items())
                 + f"; number of arteries with calcium right in {ar['n_arteries_agreement']:.0%} of cases")
    (args.out / "tables.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    import SimpleITK as sitk

    cm = np.array(res["confusion_ensemble"], float)
    cell = 60
    img = np.full((5 * cell, 5 * cell, 3), 255, np.uint8)
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    for r in range(5):
        for c in range(5):
            img[r * cell:(r + 1) * cell - 2, c * cell:(c + 1) * cell - 2] = (255 * (1 - norm[r, c])).astype(np.uint8)
    sitk.WriteImage(sitk.GetImageFromArray(img, isVector=True), str(args.out / "confusion.png"))
    if overlays:
        sitk.WriteImage(sitk.GetImageFromArray(np.concatenate(overlays, axis=0), isVector=True),
                        str(args.out / "overlays.png"))


if __name__ == "__main__":
    main()
