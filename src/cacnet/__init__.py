"""cacnet: reading scans, synthetic phantoms, the U-Net ensemble and the `cac` command.

Scores always come from the :mod:`agatston` package. The names of ``__all__`` are the public
face, each loaded on first use (PEP 562) so that ``import cacnet`` stays cheap::

    from cacnet import Ensemble, score_scan

    result = score_scan("scan.nii.gz", Ensemble())
    result.agatston, result.category, result.arteries

See docs/python-api.md for every name, its home module and the rest of the API.
"""

from __future__ import annotations

import sys
import types
from typing import TYPE_CHECKING, Any

from ._lazy import attach

_NAMES = {
    "io": ["Scan", "read_scan"],
    "pipeline": ["ScanResult", "prepare_scan", "score_scan"],
    "ensemble": ["Ensemble"],
    "triage": ["triage"],
    "phantom": ["generate_phantom"],
    "errors": ["CacError", "ClusterUnavailableError", "DeviceUnavailableError", "InvalidScanError", "OutputError",
               "ReviewError", "SendError", "SeriesSelectionError", "UnsuitableScanError", "UsageError",
               "WeightsError"],
}
_served_getattr, _served_dir, _served = attach(__name__, _NAMES, globals())

__all__: list[str] = _served + ["__version__"]


def __getattr__(name: str) -> Any:
    if name == "__version__":
        # the distribution's release, written once in agatston/_version.py (agatston never imports cacnet)
        from agatston._version import __version__

        return __version__
    return _served_getattr(name)


def __dir__() -> list[str]:
    return sorted(set(_served_dir()) | {"__version__"})


class _Face(types.ModuleType):
    """The package module: a name of the face that is also a submodule's name stays the face's object.

    The import system binds each submodule imported to its name on the
    package; for ``triage`` (function and module) that would make
    ``cacnet.triage`` the function or the module depending on what was
    imported before. It stays the function.
    """

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and name in _NAMES.get(name, ()):
            return  # not bound: the face's object (cached, or given by __getattr__ on first use) stays
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Face

if TYPE_CHECKING:  # pragma: no cover - what type checkers and editors see
    from .ensemble import Ensemble
    from .errors import (CacError, ClusterUnavailableError, DeviceUnavailableError, InvalidScanError, OutputError,
                         ReviewError, SendError, SeriesSelectionError, UnsuitableScanError, UsageError, WeightsError)
    from .io import Scan, read_scan
    from .phantom import generate_phantom
    from .pipeline import ScanResult, prepare_scan, score_scan
    from .triage import triage
