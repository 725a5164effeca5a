"""Making a folder of phantom cases (private; the `cac phantom` command)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import numpy as np

from .._files import write_csv_atomic
from ..datasets.layout import POINTS_FILE, TRUTH_FILE
from ._generate import generate_phantom
from ._truth import CATEGORY_TARGETS
from ._write import POINT_COLUMNS, TRUTH_COLUMNS, write_case

__all__ = ["case_seed", "plan_categories", "make_phantoms"]


def case_seed(seed: int, index: int) -> int:
    """Seed of case ``index`` of a set made with ``seed`` (stable, independent streams)."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0])


def plan_categories(n: int, category: Optional[str], balanced: bool) -> list[Optional[str]]:
    """Target category of each case: fixed, balanced A-E in turn, or free (None)."""
    if category is not None:
        return [category] * n
    if balanced:
        cats = list(CATEGORY_TARGETS)
        return [cats[i % len(cats)] for i in range(n)]
    return [None] * n


def make_phantoms(
    outdir: Path,
    n: int,
    seed: int,
    *,
    category: Optional[str] = None,
    balanced: bool = False,
    hard_fraction: float = 0.3,
    lookalike_rate: float = 0.4,
    preview: bool = False,
    size: int = 512,
    on_case: Optional[Callable[[str], None]] = None,
    variant: str = "default",
) -> list[dict]:
    """Generate ``n`` cases into ``outdir``; write truth.csv and points.csv.

    Returns the truth rows. Case ``i`` is ``phantom_<seed>_<i>`` and is the
    same whatever ``n`` is. ``variant`` picks the generator
    (:func:`cacnet.phantom.generate_phantom`); truth.csv records it.
    """
    outdir = Path(outdir)
    truth_rows, point_rows = [], []
    for i, cat in enumerate(plan_categories(n, category, balanced)):
        case_id = f"phantom_{seed}_{i:04d}"
        case = generate_phantom(case_seed(seed, i), category=cat, hard_fraction=hard_fraction,
                                lookalike_rate=lookalike_rate, case_id=case_id, size=size, variant=variant)
        row, points = write_case(case, outdir, preview=preview)
        truth_rows.append(row)
        point_rows.extend(points)
        if on_case is not None:
            on_case(case_id)
    write_csv_atomic(outdir / TRUTH_FILE, TRUTH_COLUMNS, truth_rows)
    write_csv_atomic(outdir / POINTS_FILE, POINT_COLUMNS, point_rows)
    return truth_rows
