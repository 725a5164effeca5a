"""cacnet.datasets.layout is the one home of the training-data layout: every writer of truth.csv and points.csv
uses its columns, and each writer's columns hold what `cac train --data` reads."""

from __future__ import annotations

import cacnet.datasets as datasets
from cacnet.datasets import layout


def test_the_writers_use_the_layout_columns():
    from cacnet import review
    from cacnet.phantom import _write

    assert datasets.TRUTH_COLUMNS is layout.TRUTH_COLUMNS
    assert review.POINTS_COLUMNS is layout.POINTS_COLUMNS
    assert _write.TRUTH_COLUMNS is layout.PHANTOM_TRUTH_COLUMNS
    assert _write.POINT_COLUMNS is layout.PHANTOM_POINTS_COLUMNS


def test_every_writer_writes_what_the_reader_reads():
    for columns in (layout.POINTS_COLUMNS, layout.PHANTOM_POINTS_COLUMNS):
        assert {layout.ID, layout.LABEL, layout.X_MM, layout.Y_MM, layout.Z_MM} <= set(columns)
        assert {layout.I, layout.J, layout.K} <= set(columns)
    for columns in (layout.TRUTH_COLUMNS, layout.PHANTOM_TRUTH_COLUMNS):
        assert {layout.ID, layout.CATEGORY, *layout.ARTERIES} <= set(columns)


def test_the_columns_are_unchanged():
    """The files keep their columns, in their order, as before the layout had a home."""
    assert layout.TRUTH_COLUMNS == ["id", "agatston", "category", "LM", "LAD", "LCX", "RCA", "labels_note"]
    assert layout.POINTS_COLUMNS == ["id", "label", "artery", "x_mm", "y_mm", "z_mm", "i", "j", "k", "component",
                                     "source"]
    assert layout.PHANTOM_POINTS_COLUMNS == ["id", "lesion", "artery", "label", "x_mm", "y_mm", "z_mm", "k", "j", "i"]
    assert layout.PHANTOM_TRUTH_COLUMNS[:9] == ["id", "agatston", "category", "volume_mm3", "LM", "LAD", "LCX", "RCA",
                                                "n_lesions"]


def test_the_package_loads_its_modules_on_first_use():
    """The names of cacnet.datasets are its modules' own objects, loaded when used (importing layout loads no
    converter)."""
    import importlib
    import subprocess
    import sys

    code = ("import sys, cacnet.datasets.layout; "
            "print(sorted(m for m in sys.modules if m.startswith('cacnet.datasets')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['cacnet.datasets', 'cacnet.datasets.layout']"
    homes = {"convert_coca": "coca", "convert_orcascore": "orcascore", "fill_polygon": "_polygons",
             "DatasetLayoutError": "_output", "TRUTH_COLUMNS": "layout"}
    for name, home in homes.items():
        assert getattr(datasets, name) is getattr(importlib.import_module(f"cacnet.datasets.{home}"), name)
    assert set(datasets.__all__) <= set(dir(datasets))
