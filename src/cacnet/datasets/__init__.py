"""Converting public coronary calcium data sets (COCA, orCaScore) into the layout `cac train --data` reads."""

# coca.py: `cac dataset coca` (convert_coca); orcascore.py: `cac dataset orcascore` (convert_orcascore);
# layout.py: the training-data layout (truth.csv and points.csv columns), shared with cacnet.phantom,
# cacnet.review and cacnet.train; _output.py: the output folder (images/, labels/, truth.csv, report.csv)
# and what both converters share; _polygons.py: rasterising ROI polygons. The names below are loaded on
# first use (PEP 562), so that importing layout.py (from the phantom, review and train modules) loads no
# converter.

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import attach

_NAMES = {
    "_output": ["DatasetLayoutError", "REPORT_COLUMNS", "THRESHOLD_HU"],
    "_polygons": ["fill_polygon", "polygon_area"],
    "coca": ["COCA_VESSELS", "MAX_HU_TOLERANCE", "PX_MM_TOLERANCE_PX", "convert_coca"],
    "layout": ["TRUTH_COLUMNS"],
    "orcascore": ["convert_orcascore"],
}
__all__ = [
    "DatasetLayoutError", "convert_coca", "convert_orcascore", "fill_polygon", "polygon_area",
    "TRUTH_COLUMNS", "REPORT_COLUMNS", "COCA_VESSELS", "MAX_HU_TOLERANCE", "PX_MM_TOLERANCE_PX",
    "THRESHOLD_HU",
]


__getattr__, __dir__, _served = attach(__name__, _NAMES, globals())
assert sorted(__all__) == _served, "datasets: __all__ and the served names differ"


if TYPE_CHECKING:  # pragma: no cover - what type checkers and editors see
    from ._output import REPORT_COLUMNS, THRESHOLD_HU, DatasetLayoutError
    from ._polygons import fill_polygon, polygon_area
    from .coca import COCA_VESSELS, MAX_HU_TOLERANCE, PX_MM_TOLERANCE_PX, convert_coca
    from .layout import TRUTH_COLUMNS
    from .orcascore import convert_orcascore
