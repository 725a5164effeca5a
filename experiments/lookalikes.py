"""Which look-alikes the shipped decision takes for coronary calcium, kind by kind.

Generates N held-out look-alike-rich phantoms (every look-alike kind present:
``lookalike_rate`` 1.0; categories B-E in turn; seed base 9100, used by no
training or validation set), scores each with the full decision (anatomy,
second stage, thresholds: :func:`cacnet.pipeline.segment`) and counts, per
look-alike kind, the 2D candidates (>= 130 HU, >= 1 mm^2) of that kind and how
many of them were accepted as coronary; the coronary candidates likewise.
Phantom numbers: they describe our generator.

A candidate's kind (``--rule``): ``majority`` (the default, as in the tables of
v0.7 and v0.8): more than half of its voxels are that kind's; ``dominant``: that
kind (coronary counting as one) labels the most of its voxels and at least
10 % of them. The varied generator's metal leads blur into >= 130 HU
components three to four times larger than their labelled core, which the
majority rule never counts.

Run:  python -m experiments.lookalikes [--weights weights] [--n 16] [--variant default]
      [--rule majority] [--out docs/experiments/v0.8/lookalikes.json]
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from cacnet.anatomy import anatomical_map
from cacnet.candidates import find_candidates
from cacnet.ensemble import DEFAULT_WEIGHTS, Ensemble
from cacnet.phantom import LOOKALIKES, case_seed, generate_phantom
from cacnet.pipeline import segment
from cacnet.preprocess import coarse_grid, downsample, normalize
from cacnet.triage import triage

#: Seed base of these phantoms (no training or validation set uses it).
SEED = 9100


#: The least share of a candidate's voxels its kind must label under the ``dominant`` rule.
DOMINANT_SHARE = 0.1


def count_case(ensemble: Ensemble, case, rule: str = "majority") -> dict:
    """Per kind (look-alike kinds and "coronary"): [candidates >= 1 mm^2, accepted] of one phantom."""
    hu = case.hu.astype(np.float32)
    scan = SimpleNamespace(hu=hu, spacing=tuple(float(s) for s in case.spacing), meta={})  # what triage reads
    amap = anatomical_map(triage(scan))
    grid = coarse_grid(hu.shape, case.spacing)
    coarse = downsample(hu, grid)
    labels, _, _ = segment(hu, case.spacing, grid, normalize(coarse), coarse, ensemble, anatomy=amap)
    cands = find_candidates(hu)
    kind = np.zeros(hu.shape, np.int8)
    idx, ids = case.lookalike_voxels
    if len(idx):
        kind[tuple(np.asarray(idx).T)] = ids
    nz = np.nonzero(cands.comps)
    comp = cands.comps[nz]
    area = cands.count * case.spacing[1] * case.spacing[2]
    accepted = np.bincount(comp, weights=labels[nz] > 0, minlength=cands.n + 1)[1:] > 0
    out: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    kinds = dict(LOOKALIKES, coronary=None)
    shares = np.stack([np.bincount(comp, weights=(case.labels[nz] > 0) if kid is None else (kind[nz] == kid),
                                   minlength=cands.n + 1)[1:] for kid in kinds.values()])
    top = np.argmax(shares, axis=0)
    for k, name in enumerate(kinds):
        if rule == "majority":
            sel = shares[k] * 2 > cands.count
        else:
            sel = (top == k) & (shares[k] >= DOMINANT_SHARE * cands.count) & (shares[k] > 0)
        sel &= area >= 1.0
        out[name][0] += int(sel.sum())
        out[name][1] += int((sel & accepted).sum())
    return dict(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--variant", default="default", choices=["default", "varied"])
    parser.add_argument("--rule", default="majority", choices=["majority", "dominant"],
                        help="which candidates count as a kind's (see the module docstring)")
    parser.add_argument("--out", type=Path, default=None, help="write the counts here (JSON)")
    args = parser.parse_args()
    ens = Ensemble(args.weights)
    total: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    cases_with: dict[str, int] = defaultdict(int)
    for i in range(args.n):
        case = generate_phantom(case_seed(SEED, i), category="BCDE"[i % 4], lookalike_rate=1.0,
                                variant=args.variant)
        for name, (n, acc) in count_case(ens, case, args.rule).items():
            total[name][0] += n
            total[name][1] += acc
            cases_with[name] += bool(acc) if name != "coronary" else 0
        print(f"{i + 1}/{args.n}", flush=True)
    print(f"\n{args.n} look-alike-rich {args.variant} phantoms (seed {SEED}), weights {args.weights}, "
          f"rule {args.rule}:\n")
    print("| kind | candidates >= 1 mm^2 | accepted as coronary | phantoms with one accepted |")
    print("|---|---|---|---|")
    for name in sorted(total, key=lambda k: (k == "coronary", k)):
        n, acc = total[name]
        print(f"| {name} | {n} | {acc} | {cases_with[name] if name != 'coronary' else '-'} |")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"n": args.n, "variant": args.variant, "seed": SEED, "rule": args.rule,
                                        "weights": str(args.weights), "counts": total,
                                        "phantoms_with_an_accepted_lookalike": cases_with}, indent=1))


if __name__ == "__main__":
    main()
