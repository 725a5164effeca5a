"""What the scripts of ``experiments/`` and ``benchmarks/`` share: where this checkout is, and its source tree.

Both folders are packages: run their scripts from the repository root as modules,
``python -m experiments.real_scans``, ``python -m benchmarks.bench_score``. The root
is then on ``sys.path`` (``-m`` puts the current folder there), so a script imports
another as ``from experiments.experiments import held_out_case`` or
``from benchmarks.plain_pipeline import plain``, and the test helpers as
``from tests.cacnet.orthanc_helpers import ...``; no script edits ``sys.path``
itself. The ``cacnet`` and ``agatston`` they import are the installed ones
(``pip install -e .``), except where a script calls :func:`use_source_tree`.
"""

from __future__ import annotations

import sys
from pathlib import Path

#: The repository root (the folder holding ``experiments/``, ``benchmarks/``, ``src/``, ``docs/``).
ROOT = Path(__file__).resolve().parents[1]
#: This checkout's source tree (``cacnet``, ``agatston``).
SRC = ROOT / "src"


def use_source_tree() -> None:
    """Import ``cacnet`` and ``agatston`` from this checkout's ``src/``, installed or not (put first on ``sys.path``).

    For the training scripts, which run on bare GPU machines where the package is not installed.
    """
    if str(SRC) not in sys.path:
        sys.path.insert(0, str(SRC))
