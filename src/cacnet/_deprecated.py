"""Old import paths of names and modules that moved: served for one release, with a DeprecationWarning."""

from __future__ import annotations

import importlib
import warnings
from typing import Any, Callable, Mapping, Union

__all__ = ["moved"]


def moved(old: str, new: Union[str, Mapping[str, str]]) -> Callable[[str], Any]:
    """A module ``__getattr__`` (PEP 562) that serves names from where they moved, with a DeprecationWarning.

    Parameters
    ----------
    old : str
        The old module's name (its ``__name__``).
    new : str or mapping
        Where the names went: a mapping of name -> new module for some of
        the old module's names (the module keeps the rest), or one module
        name when the whole module moved (a thin module at the old path
        then serves every name that the new module has, and its ``__all__``).

    Returns
    -------
    callable
        To assign to the old module's ``__getattr__``: each name it serves
        warns "``old.name`` moved to ``new.name``; the old name goes in the
        next release." and is the very object of the new module. Unknown
        names raise AttributeError, as usual.

    Examples
    --------
    In ``cacnet/pipeline.py``: ``__getattr__ = moved(__name__, {"lesion_position": "cacnet.io"})``;
    in the thin ``cacnet/report.py``: ``__getattr__ = moved(__name__, "cacnet.outputs.report")``.
    """

    def __getattr__(name: str) -> Any:
        if isinstance(new, str):
            target = importlib.import_module(new)
            if name == "__all__":  # ``from old import *`` asks for it; then each name warns as it is fetched
                return list(getattr(target, "__all__", ()))
            if name.startswith("__") or not hasattr(target, name):
                raise AttributeError(f"module {old!r} has no attribute {name!r}")
            where = new
        else:
            where = new.get(name)  # type: ignore[assignment]
            if where is None:
                raise AttributeError(f"module {old!r} has no attribute {name!r}")
            target = importlib.import_module(where)
        warnings.warn(f"{old}.{name} moved to {where}.{name}; the old name goes in the next release.",
                      DeprecationWarning, stacklevel=2)
        return getattr(target, name)

    return __getattr__
